"""Detect: which items a pass looks at, and what the share, index and cache hold for them.

Each replica has its own detector (replicas/share/detect.py, replicas/index/detect.py,
replicas/cache/detect.py); this module decides what a pass asks of them:

* every pass: the index's outbox (foreign SQLite writes) and the cache's Phase 1 writes;
* a full pass: the stat walk of the share, then the files it did not find unchanged
  (a first import applies its items as it reads them, see ShareDetector.changed), then
  the tombstones;
* a targeted pass (the daemon's events): the share side of the named items only.

The share is checked before and after (R5: an unmount during the walk must not read as
deletes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import orjson

from meshsync.layout import MEM
from meshsync.model import ItemId, Obs, Pass, PassStats
from meshsync.replicas.cache import detect as cacheside
from meshsync.replicas.index.store import StateView
from meshsync.replicas.share.store import Walk, sweep_temporaries

from . import intents

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("meshsync")


def begin(node: Node, only: set[ItemId] | None) -> Pass:
    """A pass's start: the share is there (else ShareUnavailable, nothing changed),
    a killed pass's exports are recovered, the clock is read once."""
    t0 = time.monotonic()
    stats = PassStats(started=time.time(), full=only is None)
    node.share.check()  # also refuses a share of a newer format than this node knows
    node.share.forget_dirs()
    if node.share.format_missing:  # a share made before .meshsync/format existed
        node.share.write_format()
    intents.recover(node.index, node.share, node.node, node.policy.max_json_depth)
    return Pass(now_ms=int(time.time() * 1000), now_ns=time.time_ns(), t0=t0, stats=stats,
                state=StateView(node.index), full=only is None)


def local_changes(node: Node, p: Pass, only: set[ItemId] | None, full_index: bool) -> set[ItemId]:
    """Items other programs changed in the index (its outbox) and in the cache."""
    idx = node.index
    p.seq, outbox = idx.outbox()
    if full_index or idx.meta("index_scanned") != "1":
        outbox |= idx.all_items()
    if only is not None:
        p.state.prefetch(only | outbox)
    # R7: a pass killed after its index writes but before it refreshed the cache leaves
    # cache_owed set.  The cache then lags behind the index because of us: its
    # differences are not a tool's writes (a half-refreshed mesh/skills/ was taken as
    # deletes and wiped skills everywhere), and this pass refreshes the whole cache.
    p.owed = idx.meta("cache_owed") == "1"
    look = node.s.cache.writable and not p.owed
    # What mesh/skills/ holds as this pass looks at it (see commit.py: files a tool
    # writes after this are left for the next pass).
    p.cache_skills_before = node.cache_writer.skill_stats() if look else None
    p.cache_side = detect_cache(node, p.state) if look else cacheside.CacheSide()
    # Items Phase 1 tools changed in the cache join the pass (and, in a targeted
    # pass, get their share side observed like any other).
    return outbox | set(p.cache_side.obs)


def detect_cache(node: Node, state: StateView) -> cacheside.CacheSide:
    """What Phase 1 tools changed in the cache since our last write (see
    cache/detect.py).  Costs one stat of mesh-memory.json and one listing of
    mesh/skills/ when nothing changed."""
    side = cacheside.CacheSide()
    idx = node.index
    sig = node.cache.memory_sig()
    if sig is not None and sig != idx.meta("cache_sig"):
        full = idx.load_state()
        live = {cacheside.cache_key(it): it for it, st in full.items()
                if it.kind == MEM and not st.deleted and node.policy.readable(it)}
        young = set(orjson.loads(idx.meta("cache_young") or "[]"))
        replaced = orjson.loads(idx.meta("cache_prev") or "{}")
        side = cacheside.detect_memory(node.cache, full, live, young, node.node, node.policy.readable, replaced)
        for it in side.obs:
            if it in full:
                state[it] = full[it]
    ssig = node.cache_writer.skills_sig()
    if ssig is not None and ssig != idx.meta("cache_skills_sig"):
        contents = {name: content for name, content, _p, _n, _u in idx.all_skill_rows()}
        sk = cacheside.detect_skills(node.cache, state, contents, node.node)
        for it in sk.obs:
            if it not in state:
                state.update(idx.load_state([it]))
        side.obs.update(sk.obs)
        side.problems.extend(sk.problems)
    return side


def full(node: Node, p: Pass, outbox: set[ItemId],
         settle_early: Callable[[dict[ItemId, Obs]], None] | None) -> set[ItemId]:
    """A full pass: walk the share and gather every item that changed anywhere."""
    walk = p.walk = Walk()
    det = node.share_detector
    # What the last pass recorded for each share file: the walk sets aside the memory
    # files that still have that signature, without a State for each.
    walk.known = node.index.share_sigs()
    first = not walk.known
    if first and node.index.meta("index_scanned") != "1":
        det.start_helper_early()
    det.walk(walk, p.now_ns)
    p.stats.scanned = len(walk.memory) + walk.same_count() + len(walk.skills)
    candidates = det.changed(p, node.index, settle_early if first else None)
    candidates |= det.tombstones(p)
    candidates |= outbox  # foreign writes to the index (other SQLite clients, the CLI)
    candidates -= p.early
    p.state.want(outbox, len(walk.known))  # not one query per item when 10k rows were written
    return candidates


def targeted(node: Node, p: Pass, items: Iterable[ItemId]) -> set[ItemId]:
    """A targeted pass: the share side of ``items`` only."""
    p.walk = Walk()
    candidates = set(items)
    for item in candidates:
        node.share_detector.observe(p, item, p.state.get(item))
    return candidates


def end(node: Node, p: Pass) -> None:
    """After detection: the share check again, then the sweep of a full pass."""
    # The share check again: an unmount during the walk must not read as deletes (R5).
    # (What a first import applied early came from files it read: no deletes.)
    node.share.check()
    if p.full and p.walk is not None:
        sweep(node, p.walk)
    p.problems.extend(p.cache_side.problems if p.cache_side is not None else ())


def sweep(node: Node, walk: Walk) -> None:
    """Remove the temporary files of writes killed midway (R7) once they are stale
    (STALE_TEMP_S): those the walk saw in the share, and the cache's.  They are never
    imported; this only keeps them from piling up."""
    n = node.share.sweep_walked(walk)
    for d in (node.cache.home, node.cache.skills_dir):
        n += sweep_temporaries(d)
    if n:
        log.info("removed %d stale temporary file(s) left by interrupted writes", n)
