"""The node's SQLite index: every SQL statement meshsync runs."""
