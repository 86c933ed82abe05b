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

from dataclasses import dataclass, field

from meshsync.layout import ItemId

FIRST = 2.0
MAX = 60.0


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
