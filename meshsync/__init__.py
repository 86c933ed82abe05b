"""meshsync: keep a shared folder, a per-node SQLite index and the OpenClaw cache in step."""

__version__ = "0.1.0"
