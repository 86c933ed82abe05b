"""Named reads of the index for the command line (``meshsync get/ls/status/conflicts/doctor``).

The pass's own reads and writes live in ``store.py``; these are the ones a person's
command makes, kept here so that every SQL statement meshsync runs is in the index
replica (the CLI asks for rows by name and never sees a table).  Each function takes an
open :class:`~meshsync.replicas.index.store.Index` (or, for :func:`health`, the path) and
only reads: none of them takes the write lock, so they answer while a daemon works.

Rows are returned as named tuples in the column order shown, so that a caller can unpack
them or use the names.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from meshsync.layout import ItemId
from meshsync.replicas.index.store import Index

# What a failed read raises (a locked, corrupt or vanished index): callers catch this
# name and need not import sqlite3 themselves.
Error = sqlite3.Error


# --- rows of the seed's tables -----------------------------------------------------------------


class MemoryRow(NamedTuple):
    """One ``mesh_memory`` row as ``meshsync get`` shows it."""
    value: str
    node_id: str
    updated_at: int


class MemoryListed(NamedTuple):
    """One ``mesh_memory`` row as ``meshsync ls`` lists it (``bytes``: length of the value)."""
    scope: str
    key: str
    node_id: str
    updated_at: int
    bytes: int
    value: str


class SkillRow(NamedTuple):
    """One ``mesh_skills`` row as ``meshsync skill get`` shows it."""
    content: str | None
    path: str | None
    source_node: str
    updated_at: int


class SkillListed(NamedTuple):
    """One ``mesh_skills`` row as ``meshsync skill ls`` lists it (``bytes``: length of the content)."""
    name: str
    source_node: str
    updated_at: int
    bytes: int | None
    path: str | None
    content: str | None


def memory_row(idx: Index, scope: str, key: str) -> MemoryRow | None:
    """The row of memory item ``scope``/``key``, or None."""
    r = idx.db.execute("SELECT value, node_id, updated_at FROM mesh_memory WHERE scope = ? AND key = ?",
                       (scope, key)).fetchone()
    return MemoryRow(*r) if r else None


def memory_listing(idx: Index, scope: str | None = None) -> list[MemoryListed]:
    """Every memory row (of ``scope`` only, if given), ordered by scope and key."""
    q = "SELECT scope, key, node_id, updated_at, length(value), value FROM mesh_memory"
    if scope:
        rows = idx.db.execute(q + " WHERE scope = ? ORDER BY scope, key", (scope,)).fetchall()
    else:
        rows = idx.db.execute(q + " ORDER BY scope, key").fetchall()
    return [MemoryListed(*r) for r in rows]


def skill_row(idx: Index, name: str) -> SkillRow | None:
    """The row of skill ``name``, or None."""
    r = idx.db.execute("SELECT content, path, source_node, updated_at FROM mesh_skills WHERE name = ?",
                       (name,)).fetchone()
    return SkillRow(*r) if r else None


def skill_listing(idx: Index) -> list[SkillListed]:
    """Every skill row, ordered by name."""
    rows = idx.db.execute("SELECT name, source_node, updated_at, length(content), path, content FROM mesh_skills"
                          " ORDER BY name").fetchall()
    return [SkillListed(*r) for r in rows]


# --- full-text search (mesh_memory_fts) ----------------------------------------------------------


class SearchHit(NamedTuple):
    """One memory row matching a full-text query, with a snippet of its value in which
    the matched words are marked «so»."""
    scope: str
    key: str
    value: str
    node_id: str
    updated_at: int
    snippet: str


class BadQuery(ValueError):
    """The text is not a query FTS5 understands (syntax error, unknown column)."""


def search_memory(idx: Index, match: str, scope: str | None = None) -> Iterator[SearchHit]:
    """Memory rows matching the FTS5 expression ``match`` (of ``scope`` only, if given),
    best first (FTS5's bm25 rank).  A generator: the caller takes as many as it shows.

    Joined to ``mesh_memory`` on rowid *and* scope/key, so that a stale FTS row (a
    client that bypassed the triggers; the daemon's check_fts repairs it) is left out
    rather than shown with another row's value.  Raises :class:`BadQuery` for a query
    FTS5 refuses."""
    q = ("SELECT m.scope, m.key, m.value, m.node_id, m.updated_at,"
         " snippet(mesh_memory_fts, 2, '«', '»', '…', 12)"
         " FROM mesh_memory_fts JOIN mesh_memory m ON m.id = mesh_memory_fts.rowid"
         " AND m.scope = mesh_memory_fts.scope AND m.key = mesh_memory_fts.key"
         " WHERE mesh_memory_fts MATCH ?")
    args: tuple = (match,)
    if scope is not None:
        q += " AND m.scope = ?"
        args += (scope,)
    try:
        cur = idx.db.execute(q + " ORDER BY rank", args)
        first = cur.fetchone()  # FTS5 reports a bad query on the first step
    except sqlite3.OperationalError as exc:
        msg = str(exc)
        if msg.startswith(("fts5:", "no such column", "unknown special query")):
            raise BadQuery(msg) from None
        raise
    while first is not None:
        yield SearchHit(*first)
        first = cur.fetchone()


# --- meshsync's own tables: what an item's state is made of ----------------------------------


def outbox_items(idx: Index) -> set[ItemId]:
    """Items with a local change that no pass has taken yet (the trigger-fed outbox)."""
    return {ItemId(k, s, key) for k, s, key in
            idx.db.execute("SELECT DISTINCT kind, scope, key FROM meshsync_outbox")}


def synced_versions(idx: Index) -> dict[ItemId, tuple[str | None, int, str]]:
    """For every live item (not a tombstone): (row signature, stamp, node) of the version
    last synced, i.e. what the index row looked like when the share last agreed."""
    return {ItemId(k, s, key): (sig, stamp, node) for k, s, key, sig, stamp, node in
            idx.db.execute("SELECT kind, scope, key, row_sig, stamp, node FROM meshsync_state WHERE deleted = 0")}


class ConflictWin(NamedTuple):
    """The winning side of one conflict this node saw (for an item's "conflict" state);
    ``id``: its record in the share's history (R11), or the local row's number when it
    has none there."""
    id: str | int
    item: ItemId
    winner_stamp: int
    winner_node: str


def conflict_wins(idx: Index) -> list[ConflictWin]:
    """Every conflict this node saw, its winner, oldest first."""
    return [ConflictWin(rec or cid, ItemId(k, s, key), wstamp, wnode)
            for cid, k, s, key, wstamp, wnode, rec in idx.db.execute(
                "SELECT id, kind, scope, key, winner_stamp, winner_node, record FROM meshsync_conflicts ORDER BY id")]


def delete_hold(idx: Index) -> dict | None:
    """The mass delete the last passes held (engine/hold.py, R11): count, since, causes,
    items ([kind, scope, key, folder]); None when nothing is held."""
    import orjson

    return orjson.loads(idx.meta("delete_hold") or "null")


def node_clash(idx: Index) -> dict | None:
    """Another index writing under this node's id on the share (engine/identity.py, R11):
    its node file (index, host, pid, at) and when it was last seen; None when none."""
    import orjson

    return orjson.loads(idx.meta("node_clash") or "null")


class FutureRow(NamedTuple):
    """A row stamped after the horizon asked for (a clock far ahead wrote it, R12)."""
    item: ItemId
    node: str
    updated_at: int  # seconds


def future_rows(idx: Index, after_s: int) -> list[FutureRow]:
    """Every memory and skill row whose updated_at (seconds, or milliseconds as some
    clients write) is after ``after_s``, latest first."""
    secs = "(CASE WHEN updated_at > 100000000000 THEN updated_at / 1000 ELSE updated_at END)"
    rows = [FutureRow(ItemId("m", sc, k), n, u) for sc, k, n, u in idx.db.execute(
        f"SELECT scope, key, node_id, {secs} FROM mesh_memory WHERE {secs} > ?", (after_s,))]
    rows += [FutureRow(ItemId("s", "", name), n, u) for name, n, u in idx.db.execute(
        f"SELECT name, source_node, {secs} FROM mesh_skills WHERE {secs} > ?", (after_s,))]
    return sorted(rows, key=lambda r: -r.updated_at)


# --- opening and checking the file ----------------------------------------------------------


def _read_only_uris(path: Path) -> tuple[str, ...]:
    """How to open the index without writing: read-only, or immutable when there is no
    -shm file (no connection has the database open): a read-only connection would create
    one (and a -wal), as this user, next to an index that may be another user's."""
    shm = Path(str(path) + "-shm").exists()
    return ((f"file:{path}?mode=ro",) if shm else ()) + (f"file:{path}?immutable=1",)


def open_read_only(path: Path) -> Index | None:
    """The index opened for reading only, for a user (or a mount) that may not write it:
    read-only first, then immutable (a WAL database on a read-only file system cannot be
    opened otherwise; nobody can be writing it there).  None if neither works.
    Either way no file is created next to the index (a user who does not own it must not
    leave one there).

    The object has no schema check and no write methods: only the query methods that
    need ``.db`` (``meta``, ``counts``, ``errors``, ``conflicts`` and this module) work."""
    for uri in _read_only_uris(path):
        try:
            db = sqlite3.connect(uri, uri=True, timeout=10)
            db.execute("SELECT count(*) FROM meshsync_meta").fetchone()
        except sqlite3.Error:
            continue
        idx = Index.__new__(Index)  # the query methods only need .db
        idx.path, idx.db = Path(path), db
        return idx
    return None


def index_owner(path: Path) -> str | None:
    """The node id the index at ``path`` was made for (None: not recorded, or unreadable),
    read without writing anything (any user, any command)."""
    idx = open_read_only(path)
    if idx is None:
        return None
    try:
        return idx.meta("node_id")
    except sqlite3.Error:
        return None
    finally:
        idx.close()


class Health(NamedTuple):
    """What ``meshsync doctor`` checks of the file itself."""
    quick_check: list[tuple[str]]  # [("ok",)] when the file is sound
    have: set[str]                  # names of its tables, triggers and indexes
    journal_mode: str
    has_schema: bool                # meshsync_meta has a schema row
    schema: str | None              # its value


def health(path: Path) -> Health:
    """Integrity, schema objects, journal mode and schema version of the index at
    ``path``, read through a read-only connection (doctor never changes the index).
    Raises :data:`Error` when the file cannot be read as a database."""
    db = sqlite3.connect(_read_only_uris(path)[0], uri=True, timeout=10)
    try:
        qc = db.execute("PRAGMA quick_check").fetchall()
        have = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table','trigger','index')")}
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
        ver = db.execute("SELECT v FROM meshsync_meta WHERE k = 'schema'").fetchone() if "meshsync_meta" in have else None
    finally:
        db.close()
    return Health(qc, have, mode, ver is not None, ver[0] if ver else None)


# A write lock held longer than this by another connection is reported by status and
# doctor (meshsync's own transactions last milliseconds; the daemon waits
# index_busy_timeout before giving up).
LOCK_PROBE_S = 1.0


def index_locked(index: Path) -> bool:
    """Whether another connection has held the index's write lock for LOCK_PROBE_S (the
    probe waits that long for it, then rolls back at once)."""
    try:
        db = sqlite3.connect(f"file:{index}?mode=rw", uri=True, timeout=LOCK_PROBE_S, isolation_level=None)
    except sqlite3.Error:
        return False
    try:
        db.execute(f"PRAGMA busy_timeout = {int(LOCK_PROBE_S * 1000)}")
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError as exc:
        return "locked" in str(exc) or "busy" in str(exc)
    except sqlite3.Error:
        return False
    finally:
        db.close()
