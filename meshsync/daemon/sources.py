"""The daemon's change sources: where it learns which items may have changed.

Each source answers one question, ``changes(tick)``: what changed since it was last
asked, as a :class:`Changes` (items to look at, "only a full pass can tell", "the cache
changed").  None of them reads an item: the pass does, so a source may over-report but
must never miss a change (R1, R3).

* :class:`ShareFileEvents`: kernel events on the share's files (events mode, see
  ``watch.py``);
* :class:`OtherJournals`: the other nodes' journals on the share, which list the items
  they wrote (``replicas/share/journal.py``): read on a journal event (events mode) or
  every ``watch.poll_interval`` (poll mode, where other hosts' writes raise no event);
* :class:`IndexWrites`: ``PRAGMA data_version`` for a foreign SQLite client's commit
  (a counter, no table read), then the trigger-fed outbox says which items;
* :class:`CacheWrites`: the signature (stat) of ``mesh-memory.json`` and of the cache's
  skills folder, for a Phase 1 tool writing the cache (only with ``cache.writable``).

The daemon asks every source once per tick (``loop.INDEX_TICK``, or sooner on an event)
and merges the answers; debouncing and the choice of pass are the loop's.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from meshsync.layout import ItemId
from meshsync.replicas.share.journal import JournalReader

if TYPE_CHECKING:
    from meshsync.daemon.watch import ShareEvents
    from meshsync.engine.node import Node

log = logging.getLogger("meshsync")


@dataclass
class Changes:
    """What a source saw: ``items`` to look at; ``full``: only a full pass can tell (a
    folder moved, a journal was lost); ``cache``: the cache changed (the pass re-reads
    it whatever the items)."""
    items: set[ItemId] = field(default_factory=set)
    full: bool = False
    cache: bool = False

    def __bool__(self) -> bool:
        return bool(self.items) or self.full or self.cache

    def add(self, other: Changes) -> None:
        self.items |= other.items
        self.full = self.full or other.full
        self.cache = self.cache or other.cache


@dataclass(frozen=True)
class Tick:
    """The loop's situation when it asks the sources."""
    now: float            # time.monotonic()
    poll: bool            # watch.poll_interval has passed since the last poll tick
    share_available: bool  # the share passed its last check (R5: nothing is read otherwise)
    polling: bool         # watch mode is "poll": no events, the journals are read every poll tick


class ChangeSource(Protocol):
    def changes(self, tick: Tick) -> Changes:
        """What changed since the last call; an empty :class:`Changes` when nothing did."""
        ...


class ShareFileEvents:
    """Kernel events on the share (watchdog), collected on the observer's thread."""

    def __init__(self, events: ShareEvents) -> None:
        self.events = events

    def changes(self, tick: Tick) -> Changes:
        items, full = self.events.take()
        return Changes(items, full)


class OtherJournals:
    """The items other nodes wrote, from their journals on the share.

    In events mode a journal file's own event says when to read; in poll mode (a NAS,
    where another host's write raises no event here) every poll tick does."""

    def __init__(self, reader: JournalReader, events: ShareEvents) -> None:
        self.reader = reader
        self.events = events

    def changes(self, tick: Tick) -> Changes:
        due = self.events.take_journal() or (tick.poll and tick.polling)
        if not (due and tick.share_available):
            return Changes()
        items, full = self.reader.poll()
        return Changes(items, full)


class IndexWrites:
    """Writes of other SQLite clients (OpenClaw, the sqlite3 shell) to the index.

    ``PRAGMA data_version`` changes only when another connection commits, so a quiet
    index costs one pragma per tick and no table read."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.data_version = node.index.data_version()
        self.failing = ""  # the last error, logged once (not once per tick)

    def changes(self, tick: Tick) -> Changes:
        try:
            dv = self.node.index.data_version()
            if dv == self.data_version:
                return Changes()
            _, items = self.node.index.outbox()
        except sqlite3.Error as exc:  # damaged: the next pass stops the daemon (R12)
            if str(exc) != self.failing:
                log.error("cannot read the index: %s", exc)
                self.failing = str(exc)
            return Changes(full=True)
        self.failing = ""
        self.data_version = dv
        return Changes(items)


class CacheWrites:
    """A Phase 1 tool writing the cache (``cache.writable``): one stat of
    mesh-memory.json per tick, the skills folder once per poll interval."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.memory_seen = node.cache.memory_sig()
        self.skills_seen = node.cache_skills_sig()

    def changes(self, tick: Tick) -> Changes:
        if not self.node.s.cache.writable:
            return Changes()
        msig = self.node.cache.memory_sig()
        ssig = self.node.cache_skills_sig() if tick.poll else self.skills_seen
        if msig == self.memory_seen and ssig == self.skills_seen:
            return Changes()
        self.memory_seen, self.skills_seen = msig, ssig
        return Changes(cache=True)

    def own_write(self, memory_sig: str | None) -> None:
        """The pass rewrote mesh-memory.json itself (its signature, as the pass recorded
        it): that is not a tool's write, and must not start another pass.  A tool writing
        after us changes the signature again and is noticed as before."""
        self.memory_seen = memory_sig
