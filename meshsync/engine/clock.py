"""The file server's clock, as this node sees it through the mtimes of files it writes.

Every node stamps its local writes with its own clock, and the newest stamp wins (R1):
a node whose clock is a day ahead won every item it wrote for a day, and every write
after it was stamped "its stamp + 1 ms" (R3's floor).  The share's mtimes are set by
the file server (NFS, SMB) or by the one kernel all nodes of a local share use: the
clock every node can compare with.  So a pass that is about to stamp local writes first
measures how far this node's clock is from the file server's (a probe file in
``.meshsync/``, written and removed; at most every PROBE_EVERY_S, again at once after
the wall clock jumped), and a node more than reconcile.FUTURE_MS ahead uses the file
server's time instead of its own (R12).  An idle node measures nothing (R8).
"""

from __future__ import annotations

import logging
import os
import time

from meshsync import layout
from meshsync.reconcile import FUTURE_MS
from meshsync.replicas.share.store import Share

log = logging.getLogger("meshsync")

PROBE_EVERY_S = 600.0
JUMP_S = 2.0  # the wall clock moved this much more (or less) than the monotonic one: a jump


class ServerClock:
    """How far this node's clock is ahead of the file server's (negative: behind)."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.ahead_ms: int | None = None  # None: not measured (yet, or the share refused the probe)
        self._wall = 0.0
        self._mono = 0.0
        self.reported = False  # the warning for a clock far ahead was logged

    def stale(self) -> bool:
        """No measurement, an old one, or the wall clock jumped since it was taken."""
        if self.ahead_ms is None:
            return True
        mono, wall = time.monotonic(), time.time()
        return mono - self._mono > PROBE_EVERY_S or abs((wall - self._wall) - (mono - self._mono)) > JUMP_S

    def measure(self, share: Share) -> OSError | None:
        """Write a probe file in the share's .meshsync/ and compare its mtime with this
        node's clock around the write.  A share that refuses the write (read-only, full)
        leaves the last measurement as it is, and the refusal is returned (``meshsync
        doctor`` reports it; a pass only logs it)."""
        probe = share.root / layout.META / f".clock-{layout.encode(self.node)}-{os.getpid()}"
        try:
            t0 = time.time_ns()
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, b"clock")
                mtime = os.fstat(fd).st_mtime_ns
            finally:
                os.close(fd)
                os.unlink(probe)
            t1 = time.time_ns()
        except OSError as exc:
            log.debug("file server clock not measured: %s", exc)
            return exc
        self.ahead_ms = ((t0 + t1) // 2 - mtime) // 1_000_000
        self._wall, self._mono = time.time(), time.monotonic()
        return None

    def far_ahead_ms(self) -> int:
        """How far this node's clock is ahead beyond what R3 tolerates (0: not far)."""
        a = self.ahead_ms
        return a if a is not None and a > FUTURE_MS else 0

    def report(self) -> None:
        """Log once when this node's clock is found far ahead, and once when it is fine."""
        far = self.far_ahead_ms()
        if far and not self.reported:
            log.warning("this node's clock is %.0fs ahead of the file server's: its writes are stamped with the "
                        "file server's time until it is fixed (run NTP: chrony or systemd-timesyncd)", far / 1000)
        elif not far and self.reported and self.ahead_ms is not None:
            log.info("this node's clock agrees with the file server's again")
        self.reported = bool(far) or (self.reported and self.ahead_ms is None)
