"""The index as a file: is it still the one this connection has open, and sound? (R12)

Mixed into :class:`meshsync.replicas.index.store.Index` (which holds ``path``, ``db``,
``file_id``, ``wal_id`` and reopens its connection with ``_open``).  An index deleted or
replaced under a running daemon is noticed instead of written to unseen; a -wal file
deleted under it is written back; a damaged file is named by ``quick_check``.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any


class IndexError_(Exception):
    """The index cannot be opened or is not ours."""


class IndexGone(IndexError_):
    """The index file was deleted or replaced under the process that has it open (R12)."""


class IndexFile:
    """File checks of the index; mixed into Index."""

    path: Path
    db: sqlite3.Connection
    file_id: tuple[int, int]
    wal_id: tuple[int, int] | None
    _share_sigs: Any
    _fts_same_at: int | None

    def _open(self) -> None: ...  # Index's

    def rollback(self) -> None: ...  # Index's

    def check_file(self) -> bool:
        """Raise IndexGone unless the index path still names the file this connection
        has open (it was deleted, or replaced by another file).  A -wal file deleted
        under this connection is repaired (see _wal_gone): returns True then."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise IndexGone(f"index {self.path} was deleted while meshsync had it open") from None
        except OSError as exc:
            raise IndexGone(f"index {self.path} cannot be looked at: {exc.strerror}") from None
        if (st.st_dev, st.st_ino) != self.file_id:
            raise IndexGone(f"index {self.path} was replaced by another file while meshsync had it open")
        return self._wal_gone()

    def _wal_gone(self) -> bool:
        """The -wal file this connection writes was deleted (or replaced) under it: every
        other connection then fails ("disk I/O error") and the commits it holds would
        be lost.  This connection still has it open: a checkpoint writes them into the
        index, then the connection is opened again on a new -wal file (R12)."""
        try:
            st = os.stat(f"{self.path}-wal")
            cur: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            cur = None
        except OSError:
            return False
        if self.wal_id is None or cur == self.wal_id:
            self.wal_id = cur or self.wal_id  # learnt once SQLite has made it
            return False
        self.rollback()
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.close()
        self._open()
        self.wal_id, self._share_sigs, self._fts_same_at = None, None, None
        return True

    def quick_check(self) -> str | None:
        """PRAGMA quick_check: None when the file is sound, else the first damage found."""
        rows = self.db.execute("PRAGMA quick_check(3)").fetchall()
        return None if rows == [("ok",)] else "; ".join(str(r[0]) for r in rows)

