"""The filesystem type and mount point of the share, for ``watch.mode: auto``.

Linux: from ``/proc/self/mountinfo`` (the longest mount point above the path).  macOS
has no /proc: there ``statfs(2)`` gives the type name (``f_fstypename``: apfs, hfs,
smbfs, nfs, macfuse, ...) and the mount point (``f_mntonname``).  Python's
``os.statvfs`` does not carry the type, so libc's ``statfs`` is called through ctypes
with Darwin's ``struct statfs`` (the 64-bit-inode layout, ``sys/mount.h``).

The Darwin code is checked on Linux by a test of the structure's layout and parsing
(tests/daemon/test_watch.py); it has not been run on a real Mac (docs/deployment.md says so).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

MFSTYPENAMELEN = 16
MAXPATHLEN = 1024


class DarwinStatfs(ctypes.Structure):
    """``struct statfs`` of macOS 10.6+ with 64-bit inodes (the only layout on arm64;
    ``statfs$INODE64`` on x86_64): 2168 bytes, the type name at offset 72."""

    _fields_ = [
        ("f_bsize", ctypes.c_uint32),
        ("f_iosize", ctypes.c_int32),
        ("f_blocks", ctypes.c_uint64),
        ("f_bfree", ctypes.c_uint64),
        ("f_bavail", ctypes.c_uint64),
        ("f_files", ctypes.c_uint64),
        ("f_ffree", ctypes.c_uint64),
        ("f_fsid", ctypes.c_int32 * 2),
        ("f_owner", ctypes.c_uint32),
        ("f_type", ctypes.c_uint32),
        ("f_flags", ctypes.c_uint32),
        ("f_fssubtype", ctypes.c_uint32),
        ("f_fstypename", ctypes.c_char * MFSTYPENAMELEN),
        ("f_mntonname", ctypes.c_char * MAXPATHLEN),
        ("f_mntfromname", ctypes.c_char * MAXPATHLEN),
        ("f_flags_ext", ctypes.c_uint32),
        ("f_reserved", ctypes.c_uint32 * 7),
    ]


def parse_darwin_statfs(raw: bytes) -> tuple[str, str]:
    """(type name, mount point) from the bytes statfs(2) filled in on macOS."""
    st = DarwinStatfs.from_buffer_copy(raw)
    return os.fsdecode(st.f_fstypename), os.fsdecode(st.f_mntonname)


def _darwin_statfs(path: Path) -> bytes | None:
    """statfs(2) of ``path`` on macOS, as raw bytes; None when it fails."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    try:  # x86_64 keeps the old layout under "statfs"; arm64 has only the new one
        fn = libc["statfs$INODE64"]
    except AttributeError:
        fn = libc["statfs"]
    fn.argtypes = [ctypes.c_char_p, ctypes.POINTER(DarwinStatfs)]
    fn.restype = ctypes.c_int
    buf = DarwinStatfs()
    if fn(os.fsencode(path), ctypes.byref(buf)) != 0:
        return None
    return ctypes.string_at(ctypes.addressof(buf), ctypes.sizeof(buf))


def _mountinfo(real: str, lines) -> tuple[str, str]:
    best = ("", "")
    for line in lines:
        parts = line.split()
        try:
            sep = parts.index("-")
        except ValueError:
            continue
        mnt = parts[4].encode().decode("unicode_escape")
        fst = parts[sep + 1]
        if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[1]):
            best = (fst, mnt)
    return best


def fs_type(path: Path) -> tuple[str, str]:
    """(filesystem type, mount point) of ``path``; ("", "") when it cannot be told."""
    try:
        if sys.platform == "darwin":
            raw = _darwin_statfs(path)
            return parse_darwin_statfs(raw) if raw is not None else ("", "")
        real = os.path.realpath(path)
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            return _mountinfo(real, f)
    except (OSError, AttributeError, ValueError):
        return ("", "")
