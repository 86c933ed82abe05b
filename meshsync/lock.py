"""One writer per index: an flock on ``<index>.lock`` holding the owner's pid.

The kernel drops the lock when the process dies (even with SIGKILL), so a stale lock
file never blocks a restart.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class Locked(Exception):
    def __init__(self, path: Path, pid: str):
        super().__init__(f"another meshsync process (pid {pid or '?'}) holds {path}")
        self.path = path
        self.pid = pid


class IndexLock:
    def __init__(self, index: Path):
        self.path = Path(str(index) + ".lock")
        self.fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise Locked(self.path, pid) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def holder(self) -> str | None:
        """The pid of a live holder, or None when nobody holds the lock."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)  # read-only: status needs no write access
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def __enter__(self) -> IndexLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
