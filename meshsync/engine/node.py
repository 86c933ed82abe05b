"""One node's pipeline: detect changes on each side, reconcile each item, propagate.

``Node.sync()`` is a full two-way pass: a stat walk of the share (files whose signature
is unchanged since the last pass are not read), the index's outbox of foreign writes,
then the pure :func:`reconcile.reconcile` per changed item, then the writes, share
first, index next (compare-and-set, short transactions), cache last.  ``Node.sync(items)``
does the same for a known set of items (the daemon's event path).

A crash anywhere leaves a state that the next pass repairs: a share file written but
not yet recorded in the index is simply seen as a (trusted) change of the share.

This class only names the steps; each step is a module of meshsync/engine/ and is handed
the node as :class:`~meshsync.engine.wiring.Replicas` (docs/architecture.md draws the
pipeline).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterable, Iterator
from typing import Any

from meshsync import faults, formats
from meshsync.layout import MEM, SKILL, ItemId
from meshsync.model import Obs, Pass, PassStats
from meshsync.replicas.cache.store import CacheLayout
from meshsync.replicas.index.detect import detect_index

from . import commit, detect, hold
from .plan import plan, readable_items
from .propagate import propagate
from .wiring import Replicas

__all__ = ["Node", "PassStats"]


class Node(Replicas):
    """One node: its share, index and cache (:class:`Replicas`), and the pass that keeps
    them in step."""

    # --- the pass --------------------------------------------------------------------------

    def sync(self, only: Iterable[ItemId] | None = None, *, full_index: bool = False) -> PassStats:
        """One two-way pass.  Raises ShareUnavailable (and changes nothing) when the
        share is not there."""
        # Python's cycle collector is paused for the pass: a pass allocates an object or
        # more per file and keeps most of them to its end, so collections kept walking
        # everything alive for nothing (a fifth of a 10k no-change pass).  Our objects
        # form no cycles; any the pass leaves are collected once it returns.
        paused = gc.isenabled()
        gc.disable()
        try:
            return self._sync(None if only is None else set(only), full_index)
        finally:
            self.share_detector.close_helper()
            if paused:
                gc.enable()

    def _sync(self, only: set[ItemId] | None, full_index: bool) -> PassStats:
        p = detect.begin(self, only)
        self.deferred = p.deferred
        self.retry = p.retry
        self.faults = p.faults
        local = detect.local_changes(self, p, only, full_index)
        if only is None:
            settle = (lambda obs: self._settle_early(p, obs)) if self.settle_early else None
            candidates = detect.full(self, p, local, settle)
        else:
            candidates = detect.targeted(self, p, only | local)
        detect.end(self, p)
        # In key order: the index's b-trees (the state table's and mesh_memory's (scope,
        # key) index) then take a batch's rows at neighbouring places, not all over the
        # file.  Written in hash order, a 100k import's commits wrote twice the pages.
        self._settle(p, sorted(it for it in candidates if it.kind in (MEM, SKILL)), p.share_obs, p.full, True)
        faults.hit("commit.start")
        commit.finish(self, p)
        p.stats.seconds = round(time.monotonic() - p.t0, 4)
        return p.stats

    def _settle_early(self, p: Pass, obs: dict[ItemId, Obs]) -> None:
        """A first import's batch of items read from the share: planned and applied now."""
        p.early.update(obs)
        self._settle(p, sorted(obs), obs, True, False)

    def _settle(self, p: Pass, items: list[ItemId], share_obs: dict[ItemId, Obs], full: bool, tick: bool) -> None:
        """Reconcile ``items`` (in key order) from their sides (``share_obs``: the share's)
        and propagate the plans."""
        self.cache_writer.dirty.update(it for it in items if it.kind == MEM)
        items = readable_items(self.policy, p, items)
        if items:
            detect.guard_clock(self, p)  # before anything is stamped (R12)
        index_obs, problems = detect_index(self.index, items, p.state, p.now_ms, self.node,
                                           self.policy.max_json_depth)
        p.index_problems.update(problems)
        if full:
            walk = p.walk
            for it in items:
                if it not in share_obs and it not in p.share_unknown:
                    # Not read this pass: unchanged if the walk saw its file, else absent
                    # (unknown under a folder that could not be listed).
                    obs = self.share_detector.unread(it, p.state.get(it), walk)  # type: ignore[arg-type]
                    if obs is None:
                        p.share_unknown.add(it)
                    else:
                        share_obs[it] = obs
        # A mass delete by absence is held before anything is written (R11).
        propagate(self, p, hold.screen(self, p, plan(self.policy, p, items, share_obs, index_obs)), tick)

    def readable(self, item: ItemId) -> bool:
        return self.policy.readable(item)

    def writable(self, item: ItemId) -> bool:
        return self.policy.writable(item)

    # --- the share's reader (tests, benchmarks) -------------------------------------------------

    @property
    def readahead_min(self) -> int:
        return self.share_detector.readahead_min

    @readahead_min.setter
    def readahead_min(self, n: int) -> None:
        self.share_detector.readahead_min = n

    @property
    def helper_read(self) -> int:
        return self.share_detector.helper_read

    # --- the cache -------------------------------------------------------------------------------

    def cache_document(self) -> Iterator[bytes]:
        """The whole of mesh-memory.json as the index renders it (tests)."""
        return self.cache_writer.document()

    def cache_skills_sig(self) -> str | None:
        return self.cache_writer.skills_sig()

    @property
    def cache_patched(self) -> bool:
        return self.cache_writer.patched

    @property
    def cache_dirty(self) -> set[ItemId]:
        return self.cache_writer.dirty

    @cache_dirty.setter
    def cache_dirty(self, items: set[ItemId]) -> None:
        self.cache_writer.dirty = items

    @property
    def cache_dirty_ids(self) -> set[int]:
        return self.cache_writer.dirty_ids

    @cache_dirty_ids.setter
    def cache_dirty_ids(self, ids: set[int]) -> None:
        self.cache_writer.dirty_ids = ids

    @property
    def cache_step(self) -> int:
        return self.cache_writer.step

    @cache_step.setter
    def cache_step(self, step: int) -> None:
        self.cache_writer.step = step

    @property
    def cache_layout(self) -> CacheLayout | None:
        return self.cache_writer.layout

    # --- local writes (CLI): plain writes, exactly as any other client would make them ---------

    def put_memory(self, scope: str, key: str, value: Any) -> None:
        self.index.client_put_memory(scope, key, formats.canonical(value).decode("utf-8"), self.node)

    def delete_item(self, item: ItemId) -> bool:
        return self.index.client_delete(item)

    def put_skill(self, name: str, content: str | None, path: str | None) -> None:
        self.index.client_put_skill(name, content, path, self.node)
