"""The `meshsync` command line."""
