"""Logging for a terminal and for journald, and the progress display.

Under systemd (``$JOURNAL_STREAM`` set) each line starts with a ``<N>`` syslog priority,
which journald turns into the entry's level; there are no timestamps (journald adds
them) and never colour.  At a terminal, lines carry the time.
"""

from __future__ import annotations

import logging
import os
import sys
import time

_PRIO = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = super().format(record).replace("\n", " | ")
        return f"<{_PRIO.get(record.levelno, 6)}>{msg}"


def setup(level: str) -> None:
    root = logging.getLogger("meshsync")
    root.handlers.clear()
    h = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        h.setFormatter(_JournalFormatter("%(message)s"))
    elif sys.stderr.isatty():
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    else:
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root.addHandler(h)
    root.setLevel(level.upper())
    root.propagate = False


class Progress:
    """A one-line progress display for a terminal: what, count, total and rate.
    Only used when stderr is a terminal; never in logs."""

    def __init__(self, stream=sys.stderr, every: float = 0.1):
        self.stream = stream
        self.every = every
        self.last = 0.0
        self.what = ""
        self.start = time.monotonic()
        self.shown = False

    def __call__(self, what: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        if what != self.what:
            self.what, self.start = what, now
        elif now - self.last < self.every:
            return
        self.last = now
        rate = done / (now - self.start) if now > self.start and done else 0.0
        tot = f"/{total}" if total else ""
        self.stream.write(f"\r\x1b[K{what}: {done}{tot}" + (f"  {rate:,.0f}/s" if rate else ""))
        self.stream.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
