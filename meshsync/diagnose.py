"""What an operating-system or SQLite error means for an operator, in one line (R12).

Resource faults (a full disk, a read-only mount, an immutable file, a folder the service
user may not write, an index another program keeps locked) are reported, never raised as
a traceback.  The words chosen here tell the operator which it is: a full share is not a
permission problem, and an immutable file is not fixed by chown.
"""

from __future__ import annotations

import errno
import sqlite3


def os_hint(exc: BaseException, where: str) -> str:
    """What to do about an OSError met writing ``where`` (a noun: "the share", "the
    cache", "the index's folder"); meshsync retries by itself meanwhile."""
    no = getattr(exc, "errno", None)
    if no in (errno.ENOSPC, errno.EDQUOT):
        what = f"{where} is full: free space on its disk (or raise the quota)"
    elif no == errno.EROFS:
        what = f"{where} is on a read-only mount: remount it read-write (the meshsync user needs write access there)"
    elif no == errno.EPERM:
        what = "the file or its folder is immutable or append-only (`lsattr`; `chattr -i`)"
    else:
        what = f"give the meshsync user write access to {where} (`meshsync doctor` checks it)"
    return what + "; retried every few seconds until then"


def index_problem(exc: BaseException, busy_timeout: float) -> str:
    """One line for an error met using the index (a pass that could not finish)."""
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and "locked" in text:
        return (f"the index is locked by another program (its write lock was held for more than "
                f"index_busy_timeout, {busy_timeout:g}s)")
    if isinstance(exc, sqlite3.Error) and ("full" in text or "disk I/O" in text):
        return f"the index's disk is full ({text})"
    if isinstance(exc, OSError):
        name = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{name}"
    return f"the index cannot be written: {text}"
