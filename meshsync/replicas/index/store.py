"""The node's SQLite index: the seed's tables, kept writable by any client, plus
meshsync's own sync state.

How foreign writes are seen without polling the tables: triggers on ``mesh_memory`` and
``mesh_skills`` append the item to ``meshsync_outbox`` whenever a row changes, unless
``meshsync_ctl.applying`` is 1.  meshsync sets that flag inside its own write
transactions only, and SQLite runs one writer at a time, so its own imports never look
like foreign writes while every other client's writes are recorded, committed with them.
``PRAGMA data_version`` tells a waiting daemon that some other connection committed.

Write transactions are short (a few hundred rows) so that other writers are never
starved; every row write is compare-and-set against what the pass observed, so a
foreign write that lands between detection and apply is never overwritten blindly.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson

from meshsync.layout import MEM, SKILL, ItemId
from meshsync.model import CACHE_STEP, KnownSigs, Slice, State
from meshsync.replicas.index.file import IndexError_, IndexFile, IndexGone, WrongNode, wrong_node  # noqa: F401 (re-exported)
from meshsync.replicas.index.write import IndexWrites, memory_row_sig, skill_row_sig

SCHEMA_VERSION = "1"

SEED_SCHEMA = """
CREATE TABLE IF NOT EXISTS mesh_memory (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  scope TEXT NOT NULL,
  key TEXT NOT NULL,
  value TEXT NOT NULL,
  node_id TEXT NOT NULL,
  updated_at INTEGER NOT NULL,
  UNIQUE(scope, key)
);
CREATE VIRTUAL TABLE IF NOT EXISTS mesh_memory_fts USING fts5(scope, key, content);
CREATE TABLE IF NOT EXISTS mesh_skills (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  name TEXT NOT NULL UNIQUE,
  source_node TEXT NOT NULL,
  content TEXT,
  path TEXT,
  updated_at INTEGER NOT NULL,
  CHECK (content IS NOT NULL OR path IS NOT NULL)
);
CREATE INDEX IF NOT EXISTS idx_mesh_memory_scope ON mesh_memory(scope);
CREATE INDEX IF NOT EXISTS idx_mesh_memory_updated ON mesh_memory(updated_at);
"""

OWN_SCHEMA = """
CREATE TABLE IF NOT EXISTS meshsync_meta (k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meshsync_ctl (id INTEGER PRIMARY KEY CHECK (id = 1),
  applying INTEGER NOT NULL DEFAULT 0);
INSERT OR IGNORE INTO meshsync_ctl (id, applying) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS meshsync_outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT,
  kind TEXT NOT NULL, scope TEXT NOT NULL, key TEXT NOT NULL);
-- The last synced version of every item (the base of reconciliation).
CREATE TABLE IF NOT EXISTS meshsync_state (
  kind TEXT NOT NULL, scope TEXT NOT NULL, key TEXT NOT NULL,
  stamp INTEGER NOT NULL,          -- ms
  node TEXT NOT NULL,
  digest TEXT NOT NULL,            -- '' for a tombstone
  deleted INTEGER NOT NULL DEFAULT 0,
  share_sig TEXT,                  -- stat signature of the share file/dir last read or written
  share_hash TEXT,                 -- hash of the share bytes last read or written
  row_sig TEXT,                    -- signature of the index row last read or written
  rel TEXT,                        -- share path of the file/dir (NULL for tombstones)
  aux TEXT,                        -- skills: digest of the files other than SKILL.md
  PRIMARY KEY (kind, scope, key)) WITHOUT ROWID;
-- Tombstones by age: a full pass expires them without reading every state row.
CREATE INDEX IF NOT EXISTS meshsync_state_tombstones ON meshsync_state(stamp) WHERE deleted = 1;
CREATE TABLE IF NOT EXISTS meshsync_errors (
  path TEXT PRIMARY KEY, kind TEXT NOT NULL, reason TEXT NOT NULL, hint TEXT NOT NULL,
  since INTEGER NOT NULL, seen INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meshsync_conflicts (
  id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL,
  kind TEXT NOT NULL, scope TEXT NOT NULL, key TEXT NOT NULL, side TEXT NOT NULL,
  loser_stamp INTEGER NOT NULL, loser_node TEXT NOT NULL, loser_value TEXT,
  winner_stamp INTEGER NOT NULL, winner_node TEXT NOT NULL, winner_deleted INTEGER NOT NULL,
  record TEXT);                    -- the ID of its record in the share's history (R11)
"""

TRIGGERS = """
CREATE TRIGGER IF NOT EXISTS mesh_memory_fts_ai AFTER INSERT ON mesh_memory BEGIN
  INSERT INTO mesh_memory_fts (rowid, scope, key, content) VALUES (NEW.id, NEW.scope, NEW.key, NEW.value);
END;
CREATE TRIGGER IF NOT EXISTS mesh_memory_fts_au AFTER UPDATE ON mesh_memory BEGIN
  DELETE FROM mesh_memory_fts WHERE rowid = OLD.id;
  INSERT INTO mesh_memory_fts (rowid, scope, key, content) VALUES (NEW.id, NEW.scope, NEW.key, NEW.value);
END;
CREATE TRIGGER IF NOT EXISTS mesh_memory_fts_ad AFTER DELETE ON mesh_memory BEGIN
  DELETE FROM mesh_memory_fts WHERE rowid = OLD.id;
END;
CREATE TRIGGER IF NOT EXISTS meshsync_mem_ai AFTER INSERT ON mesh_memory
WHEN (SELECT applying FROM meshsync_ctl WHERE id = 1) = 0 BEGIN
  INSERT INTO meshsync_outbox (kind, scope, key) VALUES ('m', NEW.scope, NEW.key);
END;
CREATE TRIGGER IF NOT EXISTS meshsync_mem_au AFTER UPDATE ON mesh_memory
WHEN (SELECT applying FROM meshsync_ctl WHERE id = 1) = 0 BEGIN
  INSERT INTO meshsync_outbox (kind, scope, key) VALUES ('m', NEW.scope, NEW.key);
  INSERT INTO meshsync_outbox (kind, scope, key) SELECT 'm', OLD.scope, OLD.key
    WHERE OLD.scope IS NOT NEW.scope OR OLD.key IS NOT NEW.key;
END;
CREATE TRIGGER IF NOT EXISTS meshsync_mem_ad AFTER DELETE ON mesh_memory
WHEN (SELECT applying FROM meshsync_ctl WHERE id = 1) = 0 BEGIN
  INSERT INTO meshsync_outbox (kind, scope, key) VALUES ('m', OLD.scope, OLD.key);
END;
CREATE TRIGGER IF NOT EXISTS meshsync_skill_ai AFTER INSERT ON mesh_skills
WHEN (SELECT applying FROM meshsync_ctl WHERE id = 1) = 0 BEGIN
  INSERT INTO meshsync_outbox (kind, scope, key) VALUES ('s', '', NEW.name);
END;
CREATE TRIGGER IF NOT EXISTS meshsync_skill_au AFTER UPDATE ON mesh_skills
WHEN (SELECT applying FROM meshsync_ctl WHERE id = 1) = 0 BEGIN
  INSERT INTO meshsync_outbox (kind, scope, key) VALUES ('s', '', NEW.name);
  INSERT INTO meshsync_outbox (kind, scope, key) SELECT 's', '', OLD.name WHERE OLD.name IS NOT NEW.name;
END;
CREATE TRIGGER IF NOT EXISTS meshsync_skill_ad AFTER DELETE ON mesh_skills
WHEN (SELECT applying FROM meshsync_ctl WHERE id = 1) = 0 BEGIN
  INSERT INTO meshsync_outbox (kind, scope, key) VALUES ('s', '', OLD.name);
END;
"""


REQUIRED = {"mesh_memory", "mesh_memory_fts", "mesh_skills", "meshsync_meta", "meshsync_ctl",
            "meshsync_outbox", "meshsync_state", "meshsync_errors", "meshsync_conflicts",
            "mesh_memory_fts_ai", "mesh_memory_fts_au", "mesh_memory_fts_ad", "meshsync_mem_ai",
            "meshsync_mem_au", "meshsync_mem_ad", "meshsync_skill_ai", "meshsync_skill_au",
            "meshsync_skill_ad", "meshsync_state_tombstones"}


class StateView(dict):
    """The synced state of items, loaded on first use (negative answers remembered):
    a full pass that finds nothing changed must not build a State for each of 100k
    items."""

    def __init__(self, index: Index) -> None:
        super().__init__()
        self._index = index
        self._absent: set[ItemId] = set()
        self._complete = False

    def get(self, it: ItemId, default: State | None = None) -> State | None:  # type: ignore[override]
        st = dict.get(self, it)
        if st is not None:
            return st
        if self._complete or it in self._absent:
            return default
        got = self._index.load_state([it])
        if got:
            dict.update(self, got)
            return got[it]
        self._absent.add(it)
        return default

    def __missing__(self, it: ItemId) -> State:
        st = self.get(it)
        if st is None:
            raise KeyError(it)
        return st

    def __contains__(self, it: object) -> bool:
        return self.get(it) is not None  # type: ignore[arg-type]

    def __setitem__(self, it: ItemId, st: State) -> None:
        self._absent.discard(it)
        dict.__setitem__(self, it, st)

    def update(self, other: dict[ItemId, State]) -> None:  # type: ignore[override]
        for it, st in other.items():
            self[it] = st

    def load_all(self) -> None:
        for it, st in self._index.load_state().items():
            if not dict.__contains__(self, it):
                dict.__setitem__(self, it, st)
        self._complete = True

    def want(self, items: Iterable[ItemId], total: int, looking_at: int | None = None) -> None:
        """The pass will look at ``looking_at`` items (default: ``items``, those with a
        state) out of ``total``: every row in one query when that is a large part (a first
        import, a bulk foreign write), else those of ``items`` in a few."""
        items = list(items)
        if (len(items) if looking_at is None else looking_at) > max(1000, total // 8):
            self.load_all()
        else:
            self.prefetch(items)

    def prefetch(self, items: Iterable[ItemId]) -> None:
        """Load the state of many items at once (what the pass will look at)."""
        want = [it for it in items if not dict.__contains__(self, it) and it not in self._absent]
        if not want:
            return
        got = self._index.load_state_many(want)
        dict.update(self, got)
        self._absent.update(it for it in want if it not in got)


@dataclass(slots=True)
class MemoryRow:
    value: str
    node_id: str
    updated_at: int

    @property
    def sig(self) -> str:
        return memory_row_sig(self.value, self.node_id, self.updated_at)


@dataclass(slots=True)
class SkillRow:
    content: str | None
    path: str | None
    source_node: str
    updated_at: int

    @property
    def sig(self) -> str:
        return skill_row_sig(self.content, self.path, self.source_node, self.updated_at)


def storable(text: str) -> str:
    """Text that sqlite3 can store.  A file name that is not UTF-8 reaches us with
    surrogate escapes (os.scandir), which sqlite3 refuses to encode: one such name used
    to crash every pass (R6).  Its bytes are shown as ``\\xNN`` instead."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


# SQLite errors that mean the index file itself is damaged or gone: no retry can help,
# a person must repair or rebuild it (docs/troubleshooting.md).  Others (locked, disk
# full, I/O errors of a full disk) clear by themselves and are retried (R12).
UNUSABLE = ("malformed", "not a database")


def unusable(exc: BaseException) -> bool:
    """Whether ``exc`` says that the index file cannot be used as it is (see UNUSABLE)."""
    return isinstance(exc, sqlite3.DatabaseError) and any(w in str(exc) for w in UNUSABLE) \
        or isinstance(exc, IndexGone)


class Index(IndexWrites, IndexFile):
    def __init__(self, path: Path, *, create: bool = True, busy_timeout: float = 30.0):
        self.path = Path(path)
        self.state_writes = 0  # changes to meshsync_state through this connection
        self._share_sigs: tuple[tuple[int, int], KnownSigs] | None = None
        self._fts_same_at: int | None = None  # data_version when check_fts last found no drift
        self._json_rows = True  # SQLite has json_each (see insert_memory_rows_if_absent)
        self._json5: bool | None = None  # json_valid() accepts JSON5 (see _value_json)
        self.busy_timeout = busy_timeout
        self.wal_id: tuple[int, int] | None = None  # the -wal file this connection uses (see check_file)
        if not create and not self.path.exists():
            raise IndexError_(f"index {self.path} does not exist (run `meshsync init`)")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise IndexError_(f"cannot create the index's folder {self.path.parent}: {exc.strerror}") from None
        self._open()

    def _open(self) -> None:
        busy_timeout = self.busy_timeout
        try:
            # How long a write waits for another program's write lock before it gives up
            # (index_busy_timeout): the daemon then retries later instead of dying (R12).
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=busy_timeout,
                                      check_same_thread=False)
            self.db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            mode = self.db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise IndexError_(f"index {self.path} cannot use WAL mode (is it on a network share?)")
            self.db.execute("PRAGMA synchronous = NORMAL")
            self._ensure_schema()
            st = os.stat(self.path)
        except sqlite3.Error as exc:
            raise IndexError_(f"cannot open index {self.path}: {exc}") from None
        except OSError as exc:
            raise IndexError_(f"cannot open index {self.path}: {exc.strerror}") from None
        # The file this connection writes: an index deleted or replaced under a running
        # daemon is noticed (check_file) instead of written to unseen (R12).
        self.file_id = (st.st_dev, st.st_ino)

    def close(self) -> None:
        self.db.close()

    def _ensure_schema(self) -> None:
        have = {r[0] for r in self.db.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'trigger', 'index')")}
        if REQUIRED <= have:
            self._add_columns()
            return
        try:
            self.db.executescript(
                "BEGIN IMMEDIATE;" + SEED_SCHEMA + OWN_SCHEMA + TRIGGERS
                + f"INSERT OR IGNORE INTO meshsync_meta VALUES ('schema', '{SCHEMA_VERSION}');"
                + "COMMIT;")
        except sqlite3.Error as exc:
            self.rollback()
            raise IndexError_(f"cannot create the schema in {self.path}: {exc}") from None

    # --- transactions --------------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A short write transaction whose row changes are not foreign writes."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("UPDATE meshsync_ctl SET applying = 1 WHERE id = 1")
            yield db
            db.execute("UPDATE meshsync_ctl SET applying = 0 WHERE id = 1")
            db.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled the transaction back itself (a full disk): a second
            # ROLLBACK then raised "cannot rollback - no transaction is active", which hid
            # the real error ("database or disk is full") from the log (R12).
            self.rollback()
            raise

    def rollback(self) -> None:
        """End a transaction left open by an error, if any; never raises."""
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """One consistent snapshot for several reads."""
        self.db.execute("BEGIN")
        try:
            yield self.db
        finally:
            if self.db.in_transaction:
                self.db.execute("COMMIT")

    def data_version(self) -> int:
        return self.db.execute("PRAGMA data_version").fetchone()[0]

    # --- meta ------------------------------------------------------------------------------

    def meta(self, k: str, default: str | None = None) -> str | None:
        r = self.db.execute("SELECT v FROM meshsync_meta WHERE k = ?", (k,)).fetchone()
        return r[0] if r else default

    def set_meta(self, db: sqlite3.Connection, **kv: str) -> None:
        db.executemany("INSERT INTO meshsync_meta (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                       list(kv.items()))

    # --- state -------------------------------------------------------------------------------

    _STATE_COLS = "t.kind, t.scope, t.key, t.stamp, t.node, t.digest, t.deleted, t.share_sig, t.share_hash," \
                  " t.row_sig, t.rel, t.aux"

    @staticmethod
    def _states(rows: Iterable[tuple], out: dict[ItemId, State]) -> dict[ItemId, State]:
        for kind, scope, key, stamp, node, digest, deleted, ssig, shash, rsig, rel, aux in rows:
            out[ItemId(kind, scope, key)] = State(stamp, node, digest, bool(deleted), ssig, shash, rsig, rel, aux)
        return out

    def load_state(self, items: Iterable[ItemId] | None = None, kind: str | None = None) -> dict[ItemId, State]:
        """The base of every item (of ``kind``: the skills' are a few hundred beside 100k
        memory items), or of ``items`` only (the daemon's per-change path must not cost
        O(all items))."""
        if items is not None:
            return self.load_state_many(list(items))
        if kind is not None:
            return self._states(self.db.execute(f"SELECT {self._STATE_COLS} FROM meshsync_state t WHERE t.kind = ?",
                                                (kind,)), {})
        return self._states(self.db.execute(f"SELECT {self._STATE_COLS} FROM meshsync_state t"), {})

    def load_state_many(self, items: list[ItemId]) -> dict[ItemId, State]:
        """load_state for many items in a few queries (500 per statement)."""
        out: dict[ItemId, State] = {}
        # A join with the list, not "(kind, scope, key) IN (VALUES ...)": SQLite scans the
        # whole table for the latter (O(items) per daemon batch), searches the key for this.
        q = (f"WITH w(k, s, y) AS (VALUES {{}}) SELECT {self._STATE_COLS} FROM w"
             " JOIN meshsync_state t ON t.kind = w.k AND t.scope = w.s AND t.key = w.y")
        for i in range(0, len(items), 500):
            chunk = items[i:i + 500]
            args = [v for it in chunk for v in (it.kind, it.scope, it.key)]
            self._states(self.db.execute(q.format(",".join(["(?,?,?)"] * len(chunk))), args), out)
        return out

    def share_sigs(self) -> KnownSigs:
        """rel -> share signature of every live item with a share file: what a full pass
        compares the walk with, without a State per item.  Kept while nobody wrote the
        database (PRAGMA data_version: other connections; state_writes: ours), so the
        periodic rescan of an idle node does not rebuild 100k entries.  Read-only for
        callers but the walk, which packs the entries it finds unchanged (see KnownSigs)."""
        key = (self.data_version(), self.state_writes)
        if self._share_sigs is None or self._share_sigs[0] != key:
            self._share_sigs = (key, KnownSigs(self.db.execute(
                "SELECT rel, share_sig FROM meshsync_state WHERE deleted = 0 AND rel IS NOT NULL")))
        return self._share_sigs[1]

    def items_at(self, rels: Iterable[str]) -> dict[str, ItemId]:
        """The live item whose share file is at each of ``rels``: one scan of the state
        table (a full pass's changed and vanished files), whatever their number."""
        want = list(rels)
        if not want:
            return {}
        return {rel: ItemId(kind, scope, key) for rel, kind, scope, key in self.db.execute(
            "SELECT rel, kind, scope, key FROM meshsync_state WHERE deleted = 0"
            " AND rel IN (SELECT value FROM json_each(?))", (orjson.dumps(want).decode(),))}

    def live_folders(self) -> dict[str, int]:
        """How many live items have their file in each share folder ("skills" for all
        skills): what a mass delete is measured against (engine/hold.py)."""
        out: dict[str, int] = {}
        for kind, rel in self.db.execute("SELECT kind, rel FROM meshsync_state WHERE deleted = 0 AND rel IS NOT NULL"):
            folder = "skills" if kind == SKILL else rel.rpartition("/")[0]
            out[folder] = out.get(folder, 0) + 1
        return out

    def confirmed_deletes(self) -> set[ItemId]:
        """Held deletes a person confirmed (`meshsync deletes confirm`), not applied yet."""
        return {ItemId(*it) for it in orjson.loads(self.meta("deletes_confirmed") or "[]")}

    # --- outbox ------------------------------------------------------------------------------

    def outbox(self) -> tuple[int, set[ItemId]]:
        """Items changed by other writers since we last looked, and the last seq seen."""
        items: set[ItemId] = set()
        last = 0
        for seq, kind, scope, key in self.db.execute(
                "SELECT seq, kind, scope, key FROM meshsync_outbox ORDER BY seq"):
            items.add(ItemId(kind, scope, key))
            last = seq
        return last, items

    def ack_outbox(self, db: sqlite3.Connection, upto: int) -> None:
        if upto:
            db.execute("DELETE FROM meshsync_outbox WHERE seq <= ?", (upto,))

    def requeue(self, db: sqlite3.Connection, items: Iterable[ItemId]) -> None:
        """Put items back in the outbox: rows that could not be synced this time are
        looked at (and reported) again by the next pass, and exported once fixed."""
        db.executemany("INSERT INTO meshsync_outbox (kind, scope, key) VALUES (?, ?, ?)",
                       [(it.kind, it.scope, it.key) for it in items])

    # --- rows ----------------------------------------------------------------------------------

    def _memory_by_key(self, db: sqlite3.Connection, items: Iterable[ItemId], cols: str) -> Iterator[tuple]:
        """``cols`` of the mesh_memory rows m of ``items`` that exist: a join with the list,
        400 items per statement, so a batch costs O(batch), never O(rows)."""
        want = [it for it in items if it.kind == MEM]
        for i in range(0, len(want), 400):
            chunk = want[i:i + 400]
            q = (f"WITH w(s, k) AS (VALUES {','.join(['(?,?)'] * len(chunk))})"
                 f" SELECT {cols} FROM w JOIN mesh_memory m ON m.scope = w.s AND m.key = w.k")
            yield from db.execute(q, [v for it in chunk for v in (it.scope, it.key)])

    def memory_rows(self, items: Iterable[ItemId], db: sqlite3.Connection | None = None) -> dict[ItemId, MemoryRow]:
        """The rows of ``items`` that exist (through ``db``, e.g. inside a write
        transaction: what current_row_sig would read for each, as long as none of them is
        written in between)."""
        return {ItemId(MEM, scope, key): MemoryRow(value, node_id, updated_at)
                for scope, key, value, node_id, updated_at in self._memory_by_key(
                    db or self.db, items, "m.scope, m.key, m.value, m.node_id, m.updated_at")}

    def all_memory_rows(self) -> Iterator[tuple[str, str, str, str, int]]:
        return self.db.execute("SELECT scope, key, value, node_id, updated_at FROM mesh_memory")

    def memory_scopes(self) -> list[str]:
        """The distinct scopes of mesh_memory, one index seek each (a skip scan of the scope
        index: DISTINCT read all 100k index entries, 12 ms at every cache write)."""
        return [s for (s,) in self.db.execute(
            "WITH RECURSIVE s(x) AS (SELECT min(scope) FROM mesh_memory"
            " UNION ALL SELECT (SELECT min(scope) FROM mesh_memory WHERE scope > s.x) FROM s WHERE s.x IS NOT NULL)"
            " SELECT x FROM s WHERE x IS NOT NULL")]

    def _cache_filter(self, scopes: list[str], exclude: list[str]) -> tuple[str, list]:
        q = f" AND scope IN ({','.join('?' * len(scopes))})"
        args: list = list(scopes)
        if exclude:
            q += " AND scope || ':' || key NOT IN (SELECT value FROM json_each(?))"
            args.append(orjson.dumps(exclude).decode())
        return q, args

    def cache_slices(self, scopes: list[str], exclude: list[str], step: int = CACHE_STEP,
                     only: Iterable[int] | None = None) -> Iterator[Slice]:
        """The entries of mesh-memory.json for rows in ``scopes``, one per line, rendered
        by SQLite one slice of ``step`` row ids at a time (all slices, or ``only`` those):
        building Python dicts cost five times the JSON dump at 100k rows, and slices keep
        the memory bounded (the whole document is ~50 MB at 100k) and let a rewrite
        render only the slices that changed (cache.CacheLayout).  Values are embedded as
        stored when they are JSON text (else as the string of their text, see
        _value_json); rows reported as bad are in ``exclude``.  Call inside ``read()``
        so that the slices are one snapshot."""
        if not scopes:
            return
        where, tail = self._cache_filter(scopes, exclude)
        q = ("SELECT count(*), coalesce(sum(id), 0), CAST(group_concat(json_quote(scope || ':' || key)"
             " || ':{\"value\":' || " + self._value_json() + " || ',\"nodeId\":' || json_quote(node_id) || ',\"ts\":'"
             " || json_quote(updated_at) || '}', ',' || char(10)) AS BLOB)"
             # By row id, never by the scope index: the order of the lines must not
             # depend on the query plan (a patched file equals a full rendering).
             " FROM mesh_memory NOT INDEXED WHERE id > ? AND id <= ?" + where)
        if only is None:
            lo, hi = self.db.execute("SELECT min(id), max(id) FROM mesh_memory").fetchone()
            if lo is None:
                return
            numbers: Iterable[int] = range((lo - 1) // step, (hi - 1) // step + 1)
        else:
            numbers = sorted(only)
        for n in numbers:
            rows, idsum, body = self.db.execute(q, [n * step, (n + 1) * step, *tail]).fetchone()
            yield Slice(n, rows, idsum, body)

    def _value_json(self) -> str:
        """SQL for a row's value as JSON text: as stored when it is JSON, else the JSON
        string of its text (R10: how the seed client reads a value; its putMemory stores
        a string as raw text).  Checked in SQL, not taken from the pass's findings, so
        that a row written after the pass looked can never make the cache invalid JSON.
        SQLite 3.42-3.44's json_valid() also accepts JSON5: there json() turns what it
        accepts into JSON (a JSON5 text then reads as its value, not as a string)."""
        if self._json5 is None:
            self._json5 = bool(self.db.execute("SELECT json_valid('{a:1}')").fetchone()[0])
        return f"CASE WHEN json_valid(value) THEN {'json(value)' if self._json5 else 'value'} ELSE json_quote(value) END"

    def cache_totals(self, scopes: list[str], exclude: list[str]) -> tuple[int, int]:
        """How many rows the cache holds and the sum of their ids: what a patched cache
        must add up to (a row added or removed behind our back shows here)."""
        if not scopes:
            return 0, 0
        where, args = self._cache_filter(scopes, exclude)
        rows, idsum = self.db.execute(
            "SELECT count(*), coalesce(sum(id), 0) FROM mesh_memory WHERE 1" + where, args).fetchone()
        return rows, idsum

    def memory_ids(self, items: Iterable[ItemId]) -> list[int]:
        """Row ids of the memory rows of ``items`` that exist."""
        return [r[0] for r in self._memory_by_key(self.db, items, "m.id")]

    def skill_rows(self, items: Iterable[ItemId]) -> dict[ItemId, SkillRow]:
        out = {}
        q = "SELECT content, path, source_node, updated_at FROM mesh_skills WHERE name = ?"
        for it in items:
            r = self.db.execute(q, (it.key,)).fetchone()
            if r is not None:
                out[it] = SkillRow(*r)
        return out

    def all_skill_rows(self) -> Iterator[tuple[str, str | None, str | None, str, int]]:
        return self.db.execute("SELECT name, content, path, source_node, updated_at FROM mesh_skills")

    def all_items(self) -> set[ItemId]:
        out = {ItemId(MEM, s, k) for s, k in self.db.execute("SELECT scope, key FROM mesh_memory")}
        out |= {ItemId(SKILL, "", n) for (n,) in self.db.execute("SELECT name FROM mesh_skills")}
        return out

    # --- errors and conflicts -------------------------------------------------------------------

    def replace_errors(self, db: sqlite3.Connection, kind: str, problems: Iterable[tuple[str, str, str]],
                       keep: Iterable[str] = ()) -> None:
        """Make the errors of ``kind`` exactly ``problems`` (path, reason, hint), keeping
        rows for ``keep`` paths (not looked at this time) as they are."""
        now = int(time.time())
        seen = {storable(p) for p in keep}
        for path, reason, hint in problems:
            path, reason, hint = storable(path), storable(reason), storable(hint)
            seen.add(path)
            db.execute(
                "INSERT INTO meshsync_errors (path, kind, reason, hint, since, seen) VALUES (?,?,?,?,?,?)"
                " ON CONFLICT(path) DO UPDATE SET kind=excluded.kind, reason=excluded.reason,"
                " hint=excluded.hint, seen=excluded.seen,"
                " since=CASE WHEN meshsync_errors.reason = excluded.reason THEN meshsync_errors.since ELSE excluded.since END",
                (path, kind, reason, hint, now, now))
        old = [p for (p,) in db.execute("SELECT path FROM meshsync_errors WHERE kind = ?", (kind,))]
        db.executemany("DELETE FROM meshsync_errors WHERE path = ?", [(p,) for p in old if p not in seen])

    def replace_errors_one(self, db: sqlite3.Connection, kind: str, path: str,
                           problem: tuple[str, str] | None) -> None:
        path = storable(path)
        if problem is None:
            db.execute("DELETE FROM meshsync_errors WHERE path = ?", (path,))
            return
        now = int(time.time())
        db.execute(
            "INSERT INTO meshsync_errors (path, kind, reason, hint, since, seen) VALUES (?,?,?,?,?,?)"
            " ON CONFLICT(path) DO UPDATE SET reason=excluded.reason, hint=excluded.hint, seen=excluded.seen",
            (path, kind, storable(problem[0]), storable(problem[1]), now, now))

    def clear_errors(self, db: sqlite3.Connection, paths: list[str]) -> None:
        """replace_errors_one(db, kind, path, None) for each of ``paths``."""
        db.executemany("DELETE FROM meshsync_errors WHERE path = ?", [(storable(p),) for p in paths])

    def error_reasons(self) -> dict[str, tuple[str, str, str]]:
        """path -> (kind, reason, hint) of every recorded problem (what the log told)."""
        return {path: (kind, reason, hint) for path, kind, reason, hint in
                self.db.execute("SELECT path, kind, reason, hint FROM meshsync_errors")}

    def errors(self) -> list[dict]:
        cur = self.db.execute("SELECT path, kind, reason, hint, since, seen FROM meshsync_errors ORDER BY kind, path")
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur]

    def conflicts(self, limit: int = 100) -> list[dict]:
        cur = self.db.execute(
            "SELECT id, at, kind, scope, key, side, loser_stamp, loser_node, loser_value, winner_stamp,"
            " winner_node, winner_deleted, record FROM meshsync_conflicts ORDER BY id DESC LIMIT ?", (limit,))
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur]

    def counts(self) -> dict[str, int]:
        q = self.db.execute
        return {
            "memory": q("SELECT count(*) FROM mesh_memory").fetchone()[0],
            "skills": q("SELECT count(*) FROM mesh_skills").fetchone()[0],
            "tombstones": q("SELECT count(*) FROM meshsync_state WHERE deleted = 1").fetchone()[0],
            "pending_outbox": q("SELECT count(*) FROM meshsync_outbox").fetchone()[0],
            "errors": q("SELECT count(*) FROM meshsync_errors").fetchone()[0],
            "conflicts": q("SELECT count(*) FROM meshsync_conflicts").fetchone()[0],
        }

    def check_fts(self, db: sqlite3.Connection) -> bool:
        """Rebuild the FTS table if a client bypassed the triggers (e.g. INSERT OR
        REPLACE without recursive triggers leaves stale rows) or wrote rows before they
        existed.  Compares a fingerprint of the two sets of row ids, not just their counts
        (one stale row plus one missing row have equal counts).  Returns True if rebuilt.

        Our own writes keep the FTS table by its triggers, so only another connection can
        make it drift: while none has committed since a check found the two equal
        (PRAGMA data_version), the check (two reads of every row id) is skipped."""
        dv = self.data_version()
        if dv == self._fts_same_at:
            return False
        fp = "SELECT count(*), sum({0}), sum(({0} * 2654435761) % 4294967296) FROM {1}"
        rows = db.execute(fp.format("id", "mesh_memory")).fetchone()
        try:  # FTS5's own per-row table: much cheaper to scan than the FTS table
            fts = db.execute(fp.format("id", "mesh_memory_fts_docsize")).fetchone()
        except sqlite3.OperationalError:  # an FTS table made with columnsize=0
            fts = db.execute(fp.format("rowid", "mesh_memory_fts")).fetchone()
        if tuple(rows) == tuple(fts):
            self._fts_same_at = dv
            return False
        db.execute("DELETE FROM mesh_memory_fts")
        db.execute("INSERT INTO mesh_memory_fts (rowid, scope, key, content) SELECT id, scope, key, value FROM mesh_memory")
        return True
