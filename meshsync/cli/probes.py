"""Live probes of a node's resources, for ``status`` and ``doctor`` (R12: they tell the
truth during a fault, not what the last pass recorded).

Each probe is cheap and changes nothing: free space is one ``statvfs``; a write probe
creates a dot file (ignored by every scanner) and removes it; the lock probe takes the
index's write lock for a moment and rolls back (no commit: other connections see nothing).
"""

from __future__ import annotations

import fcntl
import os
import struct
import time
from pathlib import Path

# Less free space than this on the share's, the index's or the cache's file system is a
# fault: the next write there fails (a pass writes a few pages at a time).
LOW_SPACE = 64 * 1024
PROBE_BYTES = 8192  # a write probe writes this much: an empty file fits on a full disk

_FS_IOC_GETFLAGS = 0x80086601  # Linux ioctl (long-sized flags, as chattr/lsattr use)
_IMMUTABLE, _APPEND = 0x10, 0x20


def existing(p: Path) -> Path:
    """``p`` or its nearest existing ancestor (what a path not made yet would live on)."""
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def free_bytes(p: Path) -> tuple[int, int] | None:
    """(free bytes for an unprivileged writer, size) of the file system holding ``p``."""
    try:
        st = os.statvfs(existing(p))
    except OSError:
        return None
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def write_probe(d: Path, tag: str) -> OSError | None:
    """Write PROBE_BYTES to a dot file in ``d`` and remove it: the error, or None.  A real
    write, not os.access() (root passes that on any mode, and an empty file still fits on
    a full disk)."""
    probe = d / f".meshsync-probe-{tag}-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"\0" * PROBE_BYTES)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        return exc
    return None


def immutable(p: Path) -> str | None:
    """"immutable" or "append-only" when ``p`` carries that attribute (chattr +i / +a:
    even root cannot replace it), else None (also where the attributes cannot be read)."""
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        flags = struct.unpack("l", fcntl.ioctl(fd, _FS_IOC_GETFLAGS, struct.pack("l", 0)))[0]
    except OSError:
        return None
    finally:
        os.close(fd)
    return "immutable" if flags & _IMMUTABLE else "append-only" if flags & _APPEND else None


def process_state(pid: str | None) -> str | None:
    """The state letter of process ``pid`` (Linux /proc: R running, S sleeping, D waiting
    on a disk or a mount, T stopped, Z zombie), None where it cannot be read."""
    if not pid or not pid.isdigit():
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2:].split()[0].decode()


# The daemon records a heartbeat in the index every 10 s while its loop turns (daemon
# loop.BEAT_S); one this old means it does not respond (the units' watchdog is 60 s too).
BEAT_STALE_S = 60.0


def daemon_silence(pid: str | None, beat: str | None) -> str | None:
    """Why the daemon holding the index's lock (``pid``) does not respond, or None when
    it does: stopped (SIGSTOP, a debugger), or no heartbeat (``beat``, the index's meta
    daemon_beat) for BEAT_STALE_S.  A lock alone does not keep a node in sync (R12)."""
    state = process_state(pid)
    if state in ("T", "t"):
        return f"the daemon (pid {pid}) is stopped (SIGSTOP or a debugger): nothing syncs until it continues"
    try:
        age = time.time() - float(beat) if beat else None
    except ValueError:
        age = None
    if age is not None and age > BEAT_STALE_S:
        return f"the daemon (pid {pid}) has not responded for {age:.0f}s (hung on the share or a disk?)"
    return None
