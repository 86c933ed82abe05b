"""Work a resource fault held back, tried again on a timer with backoff (R12).

A full or read-only share, an index locked by another program or a full disk clear by
themselves, and nothing announces it: no file event comes when a NAS is remounted
read-write or space is freed elsewhere.  Waiting for the next full rescan (300 s by
default) kept a write on one node for minutes after the fault was gone.  Instead the
daemon tries again after ``FIRST`` seconds, doubling up to ``MAX`` while the fault lasts,
and back to ``FIRST`` once a try succeeds: within seconds of a short fault, and one
cheap attempt a minute during a long one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from meshsync.layout import ItemId

FIRST = 2.0
MAX = 60.0

log = logging.getLogger("meshsync")


@dataclass
class Retry:
    """What waits for a retry (items, or "a pass" when ``items`` is empty) and when."""

    items: set[ItemId] = field(default_factory=set)
    at: float | None = None  # time.monotonic() of the next try; None: nothing waits
    delay: float = FIRST
    failing: bool = False
    reason: str = ""

    def failed(self, items: set[ItemId], reason: str, now: float) -> bool:
        """A try failed (or the first failure): schedule the next one, unless one is
        scheduled already.  Returns True when this starts a fault (log it once)."""
        started = not self.failing
        self.failing, self.reason = True, reason
        self.items = set(items)
        if self.at is None:
            self.at = now + self.delay
            self.delay = min(self.delay * 2, MAX)
        return started

    def succeeded(self) -> bool:
        """A try went through: nothing waits any more.  Returns True when this ends a
        fault (log it once)."""
        ended = self.failing
        self.items, self.at, self.delay, self.failing, self.reason = set(), None, FIRST, False, ""
        return ended

    def due(self, now: float) -> bool:
        return self.at is not None and now >= self.at

    def take(self) -> set[ItemId]:
        """The items to try again now (the timer is spent: the try reschedules it)."""
        self.at = None
        return set(self.items)

    def wait(self, now: float, timeout: float) -> float:
        """``timeout`` shortened to the next try."""
        return timeout if self.at is None else max(0.0, min(timeout, self.at - now))


class Faults:
    """The daemon's resource faults, each with its retry (R12):

    * ``exports``: items whose share write failed (a full or read-only share);
    * ``writes``: the cache or this node's journal could not be written;
    * ``passes``: a whole pass failed (the index locked past its busy timeout, its disk
      full); while it lasts no pass runs before its retry is due.

    Each is logged once when it starts and once when it ends; ``reasons()`` is what the
    daemon shows meanwhile (its systemd status line and the index's meta, for status)."""

    def __init__(self) -> None:
        self.exports = Retry()
        self.writes = Retry()
        self.passes = Retry()

    def after_pass(self, retry: dict[ItemId, str], faults: dict[str, str], now: float) -> None:
        """A pass ran to its end: ``retry`` the exports it could not make, ``faults``
        the cache or journal writes."""
        if self.passes.succeeded():
            log.info("the index can be written again: resuming")
        if not retry:
            if self.exports.succeeded():
                log.info("exports resumed: the items held back by the share fault were written")
        elif self.exports.failed(set(retry), next(iter(retry.values())), now):
            log.warning("cannot export %d item(s) to the share (%s); kept locally and retried every few "
                        "seconds, see meshsync status", len(retry), self.exports.reason)
        if not faults:
            if self.writes.succeeded():
                log.info("the cache and the journal can be written again")
        elif self.writes.failed(set(), "; ".join(f"{p} {r}" for p, r in faults.items()), now):
            log.warning("%s; retried every few seconds, see meshsync status", self.writes.reason)

    def pass_failed(self, items: set[ItemId] | None, reason: str, now: float) -> None:
        """A pass could not finish (nothing it committed is lost: R7): tried again later
        (a full pass stays due: the daemon's need_full is only cleared by a success)."""
        if self.passes.failed(set(items or ()), reason, now):
            log.warning("a pass could not finish: %s; nothing is lost, retrying in a few seconds", reason)

    def blocked(self, now: float) -> bool:
        """While a pass fault lasts, no pass runs before its retry is due."""
        return self.passes.failing and self.passes.at is not None and now < self.passes.at

    def due(self, now: float) -> tuple[set[ItemId], bool]:
        """Items to look at again now, and whether a pass is due even without items (a
        cache or journal to write, a failed pass to run again)."""
        items: set[ItemId] = set()
        again = False
        if self.exports.due(now):
            items |= self.exports.take()
        if self.writes.due(now):
            self.writes.take()
            again = True
        if self.passes.due(now):
            items |= self.passes.take()
            again = True
        return items, again

    def wait(self, now: float, timeout: float) -> float:
        for r in (self.exports, self.writes, self.passes):
            timeout = r.wait(now, timeout)
        return timeout

    def reasons(self) -> list[str]:
        return [r.reason for r in (self.passes, self.exports, self.writes) if r.failing]
