"""Two indexes writing under one node id on one share are caught (R11).

After a pass that wrote to the share (and after every full pass) the node reads its node
file (replicas/share/nodes.py).  A token there that is not the one this index wrote last
is a *sighting* of another writer.  A sighting of another index (or of this one under
another path or host) is a clash at once.  A mark of this very index (same index_id, path
and host) is what an index restored from a backup finds once, and is taken over; seen a
second time within CLASH_WINDOW_S, after this node wrote its own mark in between, two
copies of one index take turns (a cloned VM).  A new index (no mark of its own yet) takes
over whatever it finds.  A clash is recorded (meta ``node_clash``), reported by
``status`` and ``doctor`` as a failure and logged at ERROR once; it clears once no other
writer has been seen for CLASH_WINDOW_S.

The mark is written when a pass wrote something or another writer's mark is there, at
most once a minute otherwise: an idle node writes nothing (R8).
"""

from __future__ import annotations

import logging
import socket
import time
from typing import TYPE_CHECKING, Any

import orjson

from meshsync.model import Pass
from meshsync.replicas.share import nodes
from meshsync.replicas.share.store import FileRefused

if TYPE_CHECKING:
    from .wiring import Replicas

log = logging.getLogger("meshsync")

CLASH_WINDOW_S = 900.0
MARK_EVERY_S = 60.0


def _meta(node: Replicas, key: str) -> Any:
    return orjson.loads(node.index.meta(key) or "null")


def describe(clash: dict[str, Any]) -> str:
    return (f"two machines use node id {clash['node_id']}: another index ({clash.get('index', '?')} on host "
            f"{clash.get('host', '?')}, pid {clash.get('pid', '?')}) writes under it on this share")


FIX = "give each its own node_id (MESHSYNC_NODE_ID, or node_id: in its configuration) and its own index"


def _another(node: Replicas, other: dict[str, Any]) -> bool:
    """The mark is surely not an earlier copy of this index: another index, or this index
    under another path or on another host.  (An exact copy of it, as on a cloned VM,
    needs the second sighting.)"""
    return (other.get("index_id") != node.index_id or other.get("index") != str(node.index.path)
            or other.get("host") != socket.gethostname())


def check(node: Replicas, p: Pass) -> None:
    """Read the node file, count another writer's marks, leave ours (see the docstring)."""
    if not (p.full or p.written):
        return
    now = time.time()
    other = nodes.read(node.share, node.node)
    mine = _meta(node, "node_mark")
    seen = _meta(node, "node_sightings")
    if seen is not None and now - seen["last"] > CLASH_WINDOW_S:
        seen = None
    foreign = other is not None and mine is not None and other["token"] != mine["token"]
    meta: dict[str, Any] = {}
    if foreign:
        seen = {"n": (seen["n"] if seen else 0) + 1, "last": now, "other": other}
        meta["node_sightings"] = seen
    old = _meta(node, "node_clash")
    clash = None
    if seen is not None and (seen["n"] >= 2 or _another(node, seen["other"])):
        clash = dict(seen["other"], node_id=node.node, seen_at=seen["last"])
    if clash is None and old is not None and now - old["seen_at"] <= CLASH_WINDOW_S:
        clash = old
    if clash != old:
        meta["node_clash"] = clash
    # Refreshed at most once a minute, and only by a pass that wrote: an idle node writes
    # nothing (R8); one that finds no mark, or another's, leaves its own at once.
    if (other is None or mine is None or other["token"] != mine["token"]
            or (p.written and now - mine["at"] >= MARK_EVERY_S)):
        try:
            meta["node_mark"] = nodes.write(node.share, node.node, node.index_id, str(node.index.path))
        except (OSError, FileRefused) as exc:
            log.debug("cannot write the node file %s: %s", nodes.path_of(node.node), exc)
    if meta:
        with node.index.write() as db:
            node.index.set_meta(db, **{k: orjson.dumps(v).decode() for k, v in meta.items()})
    if clash is not None and old is None:
        log.error("%s; %s", describe(clash), FIX)
    elif clash is None and old is not None:
        log.info("no other index has written under node id %s for %g minutes: the clash is over",
                 node.node, CLASH_WINDOW_S / 60)
