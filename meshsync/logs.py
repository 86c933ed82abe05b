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


_active: Progress | None = None  # the progress line on screen, if any


class _Handler(logging.StreamHandler):
    """A stream handler that first clears a progress line, so a log line never lands on
    the end of one (the progress line is redrawn on its next tick)."""

    def emit(self, record: logging.LogRecord) -> None:
        if _active is not None and _active.shown and _active.stream is self.stream:
            _active.done()
        super().emit(record)


def setup(level: str) -> None:
    root = logging.getLogger("meshsync")
    root.handlers.clear()
    h = _Handler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        h.setFormatter(_JournalFormatter("%(message)s"))
    elif sys.stderr.isatty():
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    else:
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root.addHandler(h)
    root.setLevel(level.upper())
    root.propagate = False


ENV_PROGRESS_INTERVAL = "MESHSYNC_PROGRESS_INTERVAL"
PROGRESS_INTERVAL = 0.1  # seconds between two redraws; the line first appears after three


def progress_interval() -> float:
    """``$MESHSYNC_PROGRESS_INTERVAL`` (seconds, >= 0), else the default 0.1.

    A display option, not a node setting (docs/configuration.md): 0 draws a frame at
    every step of the work from its start, whatever the machine's speed, which is what a
    test of the display (or a screen recording) wants.  Anything but a number >= 0 is
    ignored."""
    try:
        v = float(os.environ.get(ENV_PROGRESS_INTERVAL, ""))
    except ValueError:
        return PROGRESS_INTERVAL
    return v if 0 <= v < float("inf") else PROGRESS_INTERVAL


class Progress:
    """A one-line progress display for a terminal: what, count, total, rate and time left.

    Used only when the stream is a terminal (``meshsync sync`` at a prompt), never in logs
    or pipes.  Nothing is drawn for work that is over within ``delay`` seconds, the line
    is redrawn at most every ``every`` seconds and cleared by :meth:`done`.  By default
    ``every`` is :func:`progress_interval` and ``delay`` three times that."""

    def __init__(self, stream=None, every: float | None = None, delay: float | None = None):
        self.stream = stream if stream is not None else sys.stderr
        try:
            self.enabled = self.stream.isatty()
        except (AttributeError, ValueError):
            self.enabled = False
        self.dumb = os.environ.get("TERM", "") == "dumb"
        self.every = progress_interval() if every is None else every
        self.created = time.monotonic()
        self.delay = 3 * self.every if delay is None else delay
        self.last = 0.0
        self.what = ""
        self.start = self.created
        self.width = 0  # length of the line on screen
        self.shown = False

    def _columns(self) -> int:
        try:
            cols = os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, AttributeError, ValueError):
            cols = 0
        return max(20, cols - 1) if cols > 0 else 79  # 0: a terminal that did not say

    def __call__(self, what: str, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if what != self.what:
            self.what, self.start = what, now
        elif now - self.last < self.every:
            return
        if now - self.created < self.delay:
            return
        self.last = now
        self._draw(self.line(what, done, total, now - self.start))

    @staticmethod
    def line(what: str, done: int, total: int | None, elapsed: float) -> str:
        """The text shown, e.g. ``applying: 2000/5000  651/s, about 5s left``."""
        rate = done / elapsed if elapsed > 0 and done else 0.0
        text = f"{what}: {done:,}" + (f"/{total:,}" if total else "") if total or done else f"{what}..."
        if rate:
            text += f"  {rate:,.0f}/s"
            if total and total > done:
                left = (total - done) / rate
                text += f", about {left:.0f}s left" if left < 120 else f", about {left / 60:.0f} min left"
        return text

    def _draw(self, text: str) -> None:
        text = text[: self._columns()]
        if self.dumb:
            out = "\r" + text + " " * max(0, self.width - len(text))
        else:
            out = "\r\x1b[K" + text
        global _active
        _active = self
        self.width = len(text)
        self.stream.write(out)
        self.stream.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            self.stream.write("\r" + " " * self.width + "\r" if self.dumb else "\r\x1b[K")
            self.stream.flush()
            self.shown = False
