"""sd_notify(3) for systemd's Type=notify units: readiness, status line, watchdog,
reloads and the start timeout.

Written against the protocol (one datagram of ``KEY=value`` lines to ``$NOTIFY_SOCKET``)
rather than libsystemd, so that meshsync needs no C library; outside systemd (no
``$NOTIFY_SOCKET``) every call does nothing.

What systemd makes of each message (checked against systemd 252, Debian 12's):

* ``READY=1`` ends the start (after the first full pass), and ends a reload;
* ``RELOADING=1`` with ``MONOTONIC_USEC=`` (the clock when the reload began; required
  by ``Type=notify-reload`` of systemd 253+, ignored by 252) puts the unit in the
  "reloading" state until the next ``READY=1``.  The protocol has no "reload failed"
  message: a refused reload is told by ``STATUS=`` and, for ``systemctl reload`` to
  fail, by the unit's ``ExecReload=meshsync reload`` exiting non-zero (cli/reload.py);
* ``EXTEND_TIMEOUT_USEC=N`` while starting: systemd waits N more microseconds from
  now before the start times out, but never less than ``TimeoutStartSec=``.  Sent with
  the first pass's progress, so a long first import is not killed while it progresses
  and a stuck one still is.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

log = logging.getLogger("meshsync")

# While the first pass progresses: at most one EXTEND_TIMEOUT_USEC every EXTEND_EVERY
# seconds, each asking for EXTEND_BY more.  EXTEND_BY is far longer than any gap between
# two progress ticks (a walk of one big folder, the cache written at the end), and a
# first pass that stops progressing is killed EXTEND_BY after its last tick at the
# earliest (or at TimeoutStartSec=, if later).
EXTEND_EVERY = 1.0
EXTEND_BY = 180.0


class Notifier:
    """sd_notify(3) over $NOTIFY_SOCKET, without libsystemd."""

    def __init__(self) -> None:
        addr = os.environ.get("NOTIFY_SOCKET")
        self.sock: socket.socket | None = None
        self.addr: str | None = None
        if addr:
            if addr.startswith("@"):
                addr = "\0" + addr[1:]
            self.addr = addr
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        # Ping at half the watchdog interval, as sd_watchdog_enabled(3) advises.
        self.watchdog = (float(usec) / 1e6 / 2 if usec and usec.isdigit() and (not pid or pid == str(os.getpid()))
                         else None)
        self.last_ping = 0.0
        self.last_status = ""
        self.is_ready = False
        self.last_extend: float | None = None

    def send(self, **fields: Any) -> None:
        if self.sock is None or self.addr is None:
            return
        msg = "\n".join(f"{k}={v}" for k, v in fields.items())
        try:
            self.sock.sendto(msg.encode(), self.addr)
        except OSError as exc:
            log.debug("sd_notify failed: %s", exc)

    def status(self, text: str) -> None:
        """The unit's status line (``systemctl status``), sent only when it changes."""
        if text != self.last_status:
            self.last_status = text
            self.send(STATUS=text)

    def ready(self, status: str | None = None) -> None:
        """The start is over (READY=1): the first pass ran, or found the share unavailable."""
        self.is_ready = True
        self._send_with_status(status, READY=1)

    def starting(self, what: str, done: int, total: int | None) -> None:
        """Progress of the first pass, before READY=1: the start timeout extended and the
        status line telling how far it got; later passes' progress sends nothing."""
        if self.is_ready:
            return
        now = time.monotonic()
        if self.last_extend is not None and now - self.last_extend < EXTEND_EVERY:
            return
        self.last_extend = now
        count = f"{done}" + (f" of {total}" if total else "")
        self._send_with_status(f"starting: first full pass, {what} ({count})",
                               EXTEND_TIMEOUT_USEC=int(EXTEND_BY * 1e6))

    def reloading(self) -> None:
        """A reload begins (SIGHUP): RELOADING=1 with the monotonic clock in µs."""
        self.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def reloaded(self, status: str) -> None:
        """The reload is over, applied or refused (``status`` says which): READY=1."""
        self._send_with_status(status, READY=1)

    def _send_with_status(self, status: str | None, **fields: Any) -> None:
        if status is not None:
            self.last_status = status
            fields["STATUS"] = status
        self.send(**fields)

    def ping(self) -> None:
        """Feed systemd's watchdog, at most every half interval."""
        if self.watchdog is not None and time.monotonic() - self.last_ping >= self.watchdog:
            self.last_ping = time.monotonic()
            self.send(WATCHDOG=1)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
