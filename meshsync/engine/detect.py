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
    from .wiring import Replicas

log = logging.getLogger("meshsync")


def begin(node: Replicas, only: set[ItemId] | None) -> Pass:
    """A pass's start: the share is there (else ShareUnavailable, nothing changed),
    a killed pass's exports are recovered, the clock is read once."""
    t0 = time.monotonic()
    stats = PassStats(started=time.time(), full=only is None)
    if node.index.check_file():  # deleted or replaced under us: IndexGone, nothing written (R12)
        wal_repaired(node)
    node.share.check()  # also refuses a share of a newer format than this node knows
    node.share.forget_dirs()
    if node.share.format_missing:  # a share made before .meshsync/format existed
        node.share.write_format()
    intents.recover(node.index, node.share, node.node, node.policy.max_json_depth)
    p = Pass(now_ms=int(time.time() * 1000), now_ns=time.time_ns(), t0=t0, stats=stats,
             state=StateView(node.index), full=only is None)
    if not node.clock.stale():  # a clock known to be far ahead: the file server's time (R12)
        guard_clock(node, p, measure=False)
    return p


def wal_repaired(node: Replicas) -> None:
    log.warning("the index's -wal file was deleted while meshsync had it open: what it held was written into "
                "the index, which was opened again (nothing is lost; do not delete -wal or -shm files of a live "
                "index)")


def guard_clock(node: Replicas, p: Pass, measure: bool = True) -> None:
    """The pass's clock is the file server's when this node's is far ahead of it (R12):
    measured once per pass that has items to stamp (engine/clock.py), never on an idle
    pass."""
    if measure:
        if p.clock_checked:
            return
        p.clock_checked = True
        if node.clock.stale():
            node.clock.measure(node.share)
        node.clock.report()
    far = node.clock.far_ahead_ms()
    delta, p.clock_far = far - p.clock_far, far
    p.now_ms -= delta
    p.now_ns -= delta * 1_000_000


def local_changes(node: Replicas, p: Pass, only: set[ItemId] | None, full_index: bool) -> set[ItemId]:
    """Items other programs changed in the index (its outbox) and in the cache."""
    idx = node.index
    p.seq, outbox = idx.outbox()
    new_index = idx.meta("index_scanned") != "1"
    if full_index or new_index:
        outbox |= idx.all_items()
    if only is not None:
        p.state.prefetch(only | outbox)
    # R7: a pass killed after its index writes but before it refreshed the cache leaves
    # cache_owed set.  The cache then lags behind the index because of us: its
    # differences are not a tool's writes (a half-refreshed mesh/skills/ was taken as
    # deletes and wiped skills everywhere), and this pass refreshes the whole cache.
    # A new index's first pass (the documented rebuild, R12) refreshes all of it too:
    # with no synced state there is no base to tell a tool's write from the copy the old
    # index left, and every entry was imported as a new write stamped with the file's
    # mtime (the whole share rewritten, every updated_at moved).  Its entries are taken
    # at their word instead (the version they claim: ts, nodeId), so a cache that
    # mirrors the share changes nothing and an entry only the cache has still comes in.
    p.owed = new_index or idx.meta("cache_owed") == "1"
    look = node.s.cache.writable and (new_index or not p.owed)
    # What mesh/skills/ holds as this pass looks at it (see commit.py: files a tool
    # writes after this are left for the next pass).
    p.cache_skills_before = node.cache_writer.skill_stats() if look else None
    p.cache_side = (detect_cache(node, p.state, new_index, p.cache_skills_before) if look
                    else cacheside.CacheSide(looked=False))
    # Items Phase 1 tools changed in the cache join the pass (and, in a targeted
    # pass, get their share side observed like any other).
    return outbox | set(p.cache_side.obs)


def detect_cache(node: Replicas, state: StateView, claims: bool = False,
                 skill_stats: dict[str, tuple[int, int, int]] | None = None) -> cacheside.CacheSide:
    """What Phase 1 tools changed in the cache since our last write (see
    cache/detect.py).  Costs one stat of mesh-memory.json and one listing of
    mesh/skills/ when nothing changed (``skill_stats``: the pass's own listing, made just
    before; a tool's write after it is caught by commit.py's check, R2).  ``claims`` (a
    new index): entries are the versions they claim, and skill files (which claim none)
    wait for the next pass."""
    side = cacheside.CacheSide()
    idx = node.index
    sig = node.cache.memory_sig()
    if sig is not None and sig != idx.meta("cache_sig"):
        full = idx.load_state()
        live = {cacheside.cache_key(it): it for it, st in full.items()
                if it.kind == MEM and not st.deleted and node.policy.readable(it)}
        young = set(orjson.loads(idx.meta("cache_young") or "[]"))
        replaced = orjson.loads(idx.meta("cache_prev") or "{}")
        side = cacheside.detect_memory(node.cache, full, live, young, node.node, node.policy.readable, replaced,
                                       claims)
        for it in side.obs:
            if it in full:
                state[it] = full[it]
    if claims:
        return side
    ssig = node.cache_writer.skills_sig(skill_stats)
    if ssig is not None and ssig != idx.meta("cache_skills_sig"):
        contents = {name: content for name, content, _p, _n, _u in idx.all_skill_rows()}
        sk = cacheside.detect_skills(node.cache, state, contents, node.node)
        for it in sk.obs:
            if it not in state:
                state.update(idx.load_state([it]))
        side.obs.update(sk.obs)
        side.problems.extend(sk.problems)
    return side


def full(node: Replicas, p: Pass, outbox: set[ItemId],
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
    candidates |= det.conflict_copies(p)  # Syncthing's: versions of their items (R1, R2)
    candidates |= outbox  # foreign writes to the index (other SQLite clients, the CLI)
    candidates -= p.early
    p.state.want(outbox, len(walk.known))  # not one query per item when 10k rows were written
    return candidates


def targeted(node: Replicas, p: Pass, items: Iterable[ItemId]) -> set[ItemId]:
    """A targeted pass: the share side of ``items`` only."""
    p.walk = Walk()
    candidates = set(items)
    for item in candidates:
        node.share_detector.observe(p, item, p.state.get(item))
    return candidates


def end(node: Replicas, p: Pass) -> None:
    """After detection: the share check again, then the sweep of a full pass."""
    # The share check again: an unmount during the walk must not read as deletes (R5).
    # (What a first import applied early came from files it read: no deletes.)
    node.share.check()
    if p.full and p.walk is not None:
        sweep(node, p.walk)
    if p.cache_side is not None and p.cache_side.looked:
        p.cache_problems = list(p.cache_side.problems)  # recorded by commit.py, with its own writes' (R12)
        p.problems.extend(p.cache_side.events)


def sweep(node: Replicas, walk: Walk) -> None:
    """Remove the temporary files of writes killed midway (R7) once they are stale
    (STALE_TEMP_S): those the walk saw in the share, and the cache's.  They are never
    imported; this only keeps them from piling up."""
    n = node.share.sweep_walked(walk)
    for d in (node.cache.home, node.cache.skills_dir):
        n += sweep_temporaries(d)
    if n:
        log.info("removed %d stale temporary file(s) left by interrupted writes", n)
