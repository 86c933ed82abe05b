"""One node's replicas, wired once per process and handed to every step of a pass.

The steps of meshsync/engine/ (detect, hold, propagate, keep, commit, identity) see a
node as this: its settings and policy, the share, the index, the cache and their
helpers, and the little a process keeps between passes.  The :class:`~meshsync.engine.node.Node`
façade that calls the steps in order is a Replicas too, and no step imports it (a step
that did would tie every step to the façade that calls them all).
"""

from __future__ import annotations

import grp
import time
from collections.abc import Callable

from meshsync.config import Settings
from meshsync.layout import ItemId
from meshsync.replicas.cache.store import Cache
from meshsync.replicas.cache.write import CacheWriter
from meshsync.replicas.index.store import Index
from meshsync.replicas.share.detect import ShareDetector
from meshsync.replicas.share.history import History
from meshsync.replicas.share.store import Share

from .clock import ServerClock
from .plan import Policy


class Replicas:
    """One node's share, index and cache, its policy and settings, and what a process
    keeps between passes."""

    def __init__(self, settings: Settings, *, index: Index | None = None):
        self.policy = Policy(settings)
        self.node = settings.node_id
        gid = None
        if settings.share_files.group:
            g = settings.share_files.group
            gid = int(g) if g.isdigit() else grp.getgrnam(g).gr_gid
        mode = int(settings.share_files.file_mode, 8) if settings.share_files.file_mode else None
        self.share = Share(settings.share, max_file_bytes=settings.limits.max_file_bytes,
                           fsync=settings.share_files.fsync, file_mode=mode, gid=gid)
        self.index = index or Index(settings.index, busy_timeout=settings.index_busy_timeout)
        try:
            self.index_id = self.index.claim(settings.node_id)  # R11: an index serves one node id
        except Exception:
            self.index.close()
            raise
        self.cache = Cache(settings.openclaw_home)
        self.history = History(self.share, self.node)  # beaten and deleted versions, on the share (R11)
        self.history_pruned: int | None = None  # when this process last pruned it (ms; commit.py)
        self.progress: Callable[[str, int, int | None], None] | None = None
        self.deferred: list[ItemId] = []  # items whose share file changed under us: next pass
        self.retry: dict[ItemId, str] = {}  # items the last pass could not export, and why (R12)
        self.faults: dict[str, str] = {}  # cache or journal writes the last pass could not make (R12)
        self.journal_owed: list[ItemId] = []  # items written whose journal lines could not be appended
        # Signatures of files this process wrote: their change events are our own echo.
        self.own_sigs: dict[str, str] = {}
        self.share_detector = ShareDetector(self.share, self.policy, self.own_sigs)
        self.share_detector.tick = self.tick
        self.cache_writer = CacheWriter(self.cache, self.index, self.policy.may_read)
        self.settle_early = True  # a first import applies items as it reads them (see ShareDetector.changed)
        self.clock = ServerClock(settings.node_id)  # the file server's clock (R12)

    def close(self) -> None:
        self.share.close()
        self.index.close()

    def tick(self, what: str, done: int, total: int | None) -> None:
        if self.progress is not None:
            self.progress(what, done, total)

    # --- settings and scopes ------------------------------------------------------------------

    @property
    def s(self) -> Settings:
        return self.policy.s

    @s.setter
    def s(self, settings: Settings) -> None:  # a reload (SIGHUP)
        self.policy.s = settings

    def write_cache_memory(self, patch: bool = False) -> str | None:
        """Rewrite mesh-memory.json from the index; returns its stat signature."""
        return self.cache_writer.write_memory(patch)

    def record_unavailable(self, reason: str) -> None:
        with self.index.write() as db:
            self.index.set_meta(db, share_status="unavailable", share_reason=reason,
                                share_checked=str(time.time()))
