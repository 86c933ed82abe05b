"""The index as a file: is it still the one this connection has open, and sound? (R12)

Mixed into :class:`meshsync.replicas.index.store.Index` (which holds ``path``, ``db``,
``file_id``, ``wal_id`` and reopens its connection with ``_open``).  An index deleted or
replaced under a running daemon is noticed instead of written to unseen; a -wal file
deleted under it is written back; a damaged file is named by ``quick_check``.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from pathlib import Path
from typing import Any


class IndexError_(Exception):
    """The index cannot be opened or is not ours."""


class IndexGone(IndexError_):
    """The index file was deleted or replaced under the process that has it open (R12)."""


class WrongNode(IndexError_):
    """The index was made for another node id (a copied index, a wrong MESHSYNC_NODE_ID)."""


def wrong_node(path: Path, owner: str, node_id: str) -> str:
    return (f"index {path} was made for node {owner!r}, not {node_id!r}: each node keeps its own index, "
            "and this one holds the other node's private items and sync state; nothing was changed.\n"
            f"  Run this node's commands as node {owner!r} (MESHSYNC_NODE_ID={owner}, or node_id: {owner} in its "
            f"configuration), or give node {node_id!r} its own index (MESHSYNC_INDEX=/path/to/another.sqlite, then "
            "`meshsync init`).")


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

    def meta(self, k: str, default: str | None = None) -> str | None: ...  # Index's

    def write(self) -> Any: ...  # Index's

    def set_meta(self, db: sqlite3.Connection, **kv: str) -> None: ...  # Index's

    def claim(self, node_id: str) -> str:
        """The index's identity: records ``node_id`` and a random ``index_id`` in an index
        that has none yet; raises WrongNode for an index made for another node (R11: a
        copied index or a wrong node id would sync the other node's private items).
        Returns the index_id."""
        owner, index_id = self.meta("node_id"), self.meta("index_id")
        if owner is not None and owner != node_id:
            raise WrongNode(wrong_node(self.path, owner, node_id))
        if owner is None or index_id is None:
            index_id = index_id or secrets.token_hex(8)
            with self.write() as db:
                self.set_meta(db, node_id=node_id, index_id=index_id)
        return index_id

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

    def _add_columns(self) -> None:
        """Columns added since an index was made (its tables exist already)."""
        cols = {r[1] for r in self.db.execute("PRAGMA table_info(meshsync_conflicts)")}
        if "record" not in cols:
            try:
                self.db.execute("ALTER TABLE meshsync_conflicts ADD COLUMN record TEXT")
            except sqlite3.OperationalError as exc:
                if "duplicate column" not in str(exc):  # another process added it meanwhile
                    raise IndexError_(f"cannot create the schema in {self.path}: {exc}") from None
