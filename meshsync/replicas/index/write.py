"""The index replica's writes: rows, states, conflicts (every SQL a pass writes with).

:class:`IndexWrites` is the half of :class:`meshsync.replicas.index.store.Index` that
writes inside the pass's short transactions (``with index.write() as db``); the
functions below turn a plan's winner into the row it must become.  Every row write is
compare-and-set against what the pass observed (R2): the caller passes the signature it
saw, and a row a foreign client changed since is left for the next pass.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from functools import lru_cache
from typing import Any, Protocol

import orjson

from meshsync import layout
from meshsync.layout import MEM
from meshsync.model import ItemId, State, Version


class RowSource(Protocol):
    """What an index row is written from: the winner's payload (meshsync/payloads.py's
    Payload); the index knows no replica's classes."""

    def mem_text(self) -> str | None: ...
    def skill_row(self) -> tuple[str | None, str | None] | None: ...

MemoryRowTuple = tuple[str, str, str, str, int]  # scope, key, value, node_id, updated_at


def _h(data: str | bytes | None) -> str:
    if data is None:
        return "-"
    b = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    return hashlib.blake2b(b, digest_size=12).hexdigest()


# Node ids repeat across rows: their hashes are remembered (row signatures are taken for
# every row a pass reads or writes).
_h_node = lru_cache(maxsize=1024)(_h)


def memory_row_sig(value: str, node_id: str, updated_at: int) -> str:
    return f"{updated_at}:{_h_node(node_id)}:{_h(value)}"


def skill_row_sig(content: str | None, path: str | None, node: str, updated_at: int) -> str:
    return f"{updated_at}:{_h(node)}:{_h(content)}:{_h(path)}"


class IndexWrites:
    """Row, state and history writes; mixed into Index (which holds ``db``,
    ``state_writes`` and ``_json_rows``)."""

    state_writes: int
    _json_rows: bool

    def put_state(self, db: sqlite3.Connection, item: ItemId, st: State) -> None:
        self.put_states(db, [(item, st)])

    def put_states(self, db: sqlite3.Connection, states: list[tuple[ItemId, State]]) -> None:
        """put_state for many items in one statement."""
        if states:
            self.state_writes += 1
            db.executemany(
                "INSERT INTO meshsync_state (kind, scope, key, stamp, node, digest, deleted, share_sig,"
                " share_hash, row_sig, rel, aux) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT(kind, scope, key) DO UPDATE SET"
                " stamp=excluded.stamp, node=excluded.node, digest=excluded.digest, deleted=excluded.deleted,"
                " share_sig=excluded.share_sig, share_hash=excluded.share_hash, row_sig=excluded.row_sig,"
                " rel=excluded.rel, aux=excluded.aux",
                [(it.kind, it.scope, it.key, st.stamp, st.node, st.digest, int(st.deleted), st.share_sig,
                  st.share_hash, st.row_sig, st.rel, st.aux) for it, st in states])

    def put_share_sig(self, db: sqlite3.Connection, item: ItemId, sig: str | None) -> None:
        self.state_writes += 1
        db.execute("UPDATE meshsync_state SET share_sig = ? WHERE kind = ? AND scope = ? AND key = ?",
                   (sig, item.kind, item.scope, item.key))

    def drop_state(self, db: sqlite3.Connection, item: ItemId) -> None:
        self.state_writes += 1
        db.execute("DELETE FROM meshsync_state WHERE kind = ? AND scope = ? AND key = ?",
                   (item.kind, item.scope, item.key))

    def current_row_sig(self, db: sqlite3.Connection, item: ItemId) -> str | None:
        if item.kind == MEM:
            r = db.execute("SELECT value, node_id, updated_at FROM mesh_memory WHERE scope = ? AND key = ?",
                           (item.scope, item.key)).fetchone()
            return memory_row_sig(*r) if r else None
        r = db.execute("SELECT content, path, source_node, updated_at FROM mesh_skills WHERE name = ?",
                       (item.key,)).fetchone()
        return skill_row_sig(*r) if r else None

    def set_memory(self, db: sqlite3.Connection, item: ItemId, value: str, node: str, updated_at: int,
                   exists: bool) -> None:
        if exists:
            db.execute("UPDATE mesh_memory SET value = ?, node_id = ?, updated_at = ? WHERE scope = ? AND key = ?",
                       (value, node, updated_at, item.scope, item.key))
        else:
            db.execute("INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) VALUES (?,?,?,?,?)",
                       (item.scope, item.key, value, node, updated_at))

    def insert_memory_if_absent(self, db: sqlite3.Connection, item: ItemId, value: str, node: str,
                                updated_at: int) -> bool:
        cur = db.execute("INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) VALUES (?,?,?,?,?)"
                         " ON CONFLICT(scope, key) DO NOTHING", (item.scope, item.key, value, node, updated_at))
        return cur.rowcount == 1

    def insert_memory_rows_if_absent(self, db: sqlite3.Connection,
                                     rows: list[tuple[str, str, str, str, int]]) -> int:
        """Insert (scope, key, value, node_id, updated_at) rows, skipping any whose
        (scope, key) exists; returns how many were inserted.

        The rows go in as one JSON array through json_each: one statement that SQLite runs
        through, where executemany steps it once per row and FTS5 then did its
        per-statement work once per row (a 10k import's inserts: 0.15-0.18 s, not
        0.52-0.54 s).  (The state rows keep executemany: json_extract parses a row's
        array again for each column, and their 12 columns made them twice as slow.)"""
        if not rows:
            return 0
        data = None
        if self._json_rows:
            try:
                data = orjson.dumps(rows)
            except TypeError:  # not JSON (a lone surrogate, a huge integer)
                pass
        # json_extract would end a text at an escaped NUL: such rows take executemany.
        if data is not None and b"\\u0000" not in data:
            try:
                return db.execute(
                    "INSERT INTO mesh_memory (scope, key, value, node_id, updated_at)"
                    " SELECT json_extract(j.value, '$[0]'), json_extract(j.value, '$[1]'),"
                    " json_extract(j.value, '$[2]'), json_extract(j.value, '$[3]'), json_extract(j.value, '$[4]')"
                    " FROM json_each(?) AS j WHERE true ON CONFLICT(scope, key) DO NOTHING",
                    (data.decode("utf-8"),)).rowcount
            except sqlite3.OperationalError as exc:  # an SQLite built without JSON
                if "json" not in str(exc):
                    raise
                self._json_rows = False
        return db.executemany("INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) VALUES (?,?,?,?,?)"
                              " ON CONFLICT(scope, key) DO NOTHING", rows).rowcount

    def set_skill(self, db: sqlite3.Connection, item: ItemId, content: str | None, path: str | None,
                  node: str, updated_at: int, exists: bool) -> None:
        if exists:
            db.execute("UPDATE mesh_skills SET content = ?, path = ?, source_node = ?, updated_at = ? WHERE name = ?",
                       (content, path, node, updated_at, item.key))
        else:
            db.execute("INSERT INTO mesh_skills (name, source_node, content, path, updated_at) VALUES (?,?,?,?,?)",
                       (item.key, node, content, path, updated_at))

    def delete_row(self, db: sqlite3.Connection, item: ItemId) -> int | None:
        """Delete the item's row; returns the id a memory row had (its cache slice)."""
        if item.kind == MEM:
            r = db.execute("DELETE FROM mesh_memory WHERE scope = ? AND key = ? RETURNING id",
                           (item.scope, item.key)).fetchall()
            return r[0][0] if r else None
        db.execute("DELETE FROM mesh_skills WHERE name = ?", (item.key,))
        return None

    def add_conflict(self, db: sqlite3.Connection, item: ItemId, side: str, loser_stamp: int,
                     loser_node: str, loser_value: str | None, winner_stamp: int, winner_node: str,
                     winner_deleted: bool, record: str | None = None) -> None:
        """A conflict this node saw; ``record``: the ID of its record in the share's
        history (R11), None when it could not be kept there (a scope this node may not write)."""
        db.execute(
            "INSERT INTO meshsync_conflicts (at, kind, scope, key, side, loser_stamp, loser_node, loser_value,"
            " winner_stamp, winner_node, winner_deleted, record) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (int(time.time() * 1000), item.kind, item.scope, item.key, side, loser_stamp, loser_node,
             loser_value, winner_stamp, winner_node, int(winner_deleted), record))

    def insert_new_memory_rows(self, db: sqlite3.Connection, rows: dict[ItemId, MemoryRowTuple]) -> set[ItemId]:
        """Insert ``rows`` in one statement, leaving alone any a foreign client inserted
        since the pass looked (ON CONFLICT DO NOTHING); returns the items inserted."""
        # Row ids only grow (AUTOINCREMENT) and nobody else writes inside our transaction:
        # the rows above this id once the statement ran are the ones it inserted.  (A
        # savepoint to undo the batch instead cost a third of the insert: SQLite keeps a
        # statement journal of every page the batch touches.)
        top = db.execute("SELECT max(id) FROM mesh_memory").fetchone()[0] or 0
        n = self.insert_memory_rows_if_absent(db, list(rows.values()))
        if n == len(rows):
            return set(rows)
        got = {layout.memory_id(scope, key) for scope, key in
               db.execute("SELECT scope, key FROM mesh_memory WHERE id > ?", (top,))}
        return got & rows.keys()

    def skill_content(self, db: sqlite3.Connection, name: str) -> str | None:
        r = db.execute("SELECT content FROM mesh_skills WHERE name = ?", (name,)).fetchone()
        return r[0] if r else None

    def clear_meta(self, db: sqlite3.Connection, key: str) -> None:
        db.execute("DELETE FROM meshsync_meta WHERE k = ?", (key,))

    def expire(self, db: sqlite3.Connection, tombstones_before_ms: int, conflicts_before_ms: int) -> None:
        """Retention: tombstones and conflict history older than the horizons go."""
        # Not counted in state_writes: tombstone rows have no share path, so the share
        # signatures (Index.share_sigs, kept while state_writes stands) are unchanged;
        # counting it rebuilt them on every full pass (a no-change pass 40% slower).
        db.execute("DELETE FROM meshsync_state WHERE deleted = 1 AND stamp < ?", (tombstones_before_ms,))
        db.execute("DELETE FROM meshsync_conflicts WHERE at < ?", (conflicts_before_ms,))

    # --- writes made as any other client would make them (the CLI's put/rm) ----------------

    def client_put_memory(self, scope: str, key: str, text: str, node: str) -> None:
        with self.db as db:  # type: ignore[attr-defined]  # a plain write, exactly as any other client would make it
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) VALUES (?,?,?,?,?)"
                " ON CONFLICT(scope, key) DO UPDATE SET value = excluded.value, node_id = excluded.node_id,"
                " updated_at = excluded.updated_at", (scope, key, text, node, int(time.time())))

    def client_delete(self, item: ItemId) -> bool:
        with self.db as db:  # type: ignore[attr-defined]
            db.execute("BEGIN IMMEDIATE")
            if item.kind == MEM:
                cur = db.execute("DELETE FROM mesh_memory WHERE scope = ? AND key = ?", (item.scope, item.key))
            else:
                cur = db.execute("DELETE FROM mesh_skills WHERE name = ?", (item.key,))
            return cur.rowcount > 0

    def client_put_skill(self, name: str, content: str | None, path: str | None, node: str) -> None:
        with self.db as db:  # type: ignore[attr-defined]
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT INTO mesh_skills (name, source_node, content, path, updated_at) VALUES (?,?,?,?,?)"
                " ON CONFLICT(name) DO UPDATE SET source_node = excluded.source_node, content = excluded.content,"
                " path = excluded.path, updated_at = excluded.updated_at",
                (name, node, content, path, int(time.time())))


    def restamp_future(self, after_s: int, now_s: int, node: str) -> list[ItemId]:
        """Re-stamp every row whose updated_at is after ``after_s`` (a clock far ahead
        wrote it, R12) as a new write of ``node`` at ``now_s``: a plain client write, so
        the outbox takes it and the next pass exports it.  Returns the items."""
        secs = "(CASE WHEN updated_at > 100000000000 THEN updated_at / 1000 ELSE updated_at END)"
        with self.db as db:  # type: ignore[attr-defined]
            db.execute("BEGIN IMMEDIATE")
            mem = db.execute(f"UPDATE mesh_memory SET updated_at = ?, node_id = ? WHERE {secs} > ? "
                             "RETURNING scope, key", (now_s, node, after_s)).fetchall()
            skills = db.execute(f"UPDATE mesh_skills SET updated_at = ?, source_node = ? WHERE {secs} > ? "
                                "RETURNING name", (now_s, node, after_s)).fetchall()
        return [layout.memory_id(sc, k) for sc, k in mem] + [layout.skill_id(n) for (n,) in skills]


SKIP: Any = object()  # write_row: the row is left as it is and the item waits for the next pass


def write_row(idx: IndexWrites, db: sqlite3.Connection, it: ItemId, win: Version, src: RowSource | None,
              seen: Version | None, cur_sig: str | None, fast_insert: bool, bulk_done: set[ItemId]) -> Any:
    """Bring the item's row to the live winner ``win`` (payload ``src``); ``cur_sig`` is
    the row as it is now (already checked against what the pass saw), ``seen`` the
    index side's version.  Returns the row's new signature, or SKIP.  Counts as written
    only what it wrote: the second value (True when a row changed)."""
    if it.kind == MEM:
        text = src.mem_text() if src is not None else None
        if text is None:
            return (SKIP, False) if cur_sig is None else (cur_sig, False)
        want = memory_row_sig(text, win.node, win.stamp // 1000)
        if fast_insert:
            if it not in bulk_done and not idx.insert_memory_if_absent(db, it, text, win.node, win.stamp // 1000):
                return SKIP, False  # a foreign insert won the race: next pass
            return want, True
        if seen is not None and seen.same(win):
            # The row holds the winning version already, perhaps formatted otherwise by
            # its writer: left as it is (rewriting it to our canonical text cost an UPDATE
            # and its FTS work per exported row when the next pass re-read the fresh files).
            return cur_sig, False
        if want != cur_sig:
            idx.set_memory(db, it, text, win.node, win.stamp // 1000, cur_sig is not None)
            return want, True
        return want, False
    got = src.skill_row() if src is not None else None
    if got is None:
        return (SKIP, False) if cur_sig is None else (cur_sig, False)
    content, path = got
    want = skill_row_sig(content, path, win.node, win.stamp // 1000)
    if want != cur_sig:
        idx.set_skill(db, it, content, path, win.node, win.stamp // 1000, cur_sig is not None)
        return want, True
    return want, False

