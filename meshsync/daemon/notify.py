"""sd_notify(3) for systemd's Type=notify units: readiness, status line and watchdog.

Written against the protocol (one datagram of ``KEY=value`` lines to ``$NOTIFY_SOCKET``)
rather than libsystemd, so that meshsync needs no C library; outside systemd (no
``$NOTIFY_SOCKET``) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

log = logging.getLogger("meshsync")


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

    def ping(self) -> None:
        """Feed systemd's watchdog, at most every half interval."""
        if self.watchdog is not None and time.monotonic() - self.last_ping >= self.watchdog:
            self.last_ping = time.monotonic()
            self.send(WATCHDOG=1)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
