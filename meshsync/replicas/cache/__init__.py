"""The node's OpenClaw cache: mesh-memory.json, mesh/skills/, skill mirrors."""
