"""Which index writes under each node id: ``.meshsync/nodes/<node>.json`` (R11).

Two machines that run with one node id (a cloned VM, a configuration copied with its
``node_id``) skip each other's journal and overwrite each other's private items; nothing
else would tell.  So each node, when a pass writes to the share (and on full passes),
leaves a small file naming its index, host, process and a random token that changes at
every write, and remembers (in its index) the token it wrote last.  Finding another token
there means another writer uses the node id; engine/identity.py decides when that is a
clash (seen twice, with our own write in between) rather than a take-over (an index made
again, or restored from a backup).
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from typing import Any

import orjson

from meshsync import layout
from meshsync.layout import META
from meshsync.replicas.share.store import FileRefused, Share

DIR = f"{META}/nodes"


def path_of(node: str) -> str:
    return f"{DIR}/{layout.encode(node)}.json"


def read(share: Share, node: str) -> dict[str, Any] | None:
    """The node file of ``node`` (None: none, or not readable as one)."""
    try:
        data, _ = share.read(path_of(node), 64 * 1024)
        doc = orjson.loads(data)
    except (FileNotFoundError, FileRefused, OSError, orjson.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("token"), str) else None


def write(share: Share, node: str, index_id: str, index_path: str) -> dict[str, Any]:
    """Leave this process's mark under ``node``; returns what was written."""
    doc = {"node_id": node, "index_id": index_id, "index": index_path, "host": socket.gethostname(),
           "pid": os.getpid(), "at": time.time(), "token": secrets.token_hex(8)}
    share.write(path_of(node), orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    return doc
