"""The index as other SQLite clients see it: the seed schema, WAL, the outbox triggers
that tell foreign writes from meshsync's own, full-text search, and the sync pass's
bookkeeping tables.  In-process `Index` objects plus separate connections and the
`sqlite3` shell as foreign writers; `test_index_*_through_sync` run real passes."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from sync_helpers import UPSERT, fts, outbox, quick_node, sync_json

from meshsync.layout import memory_id, skill_id
from meshsync.replicas.index.store import SEED_SCHEMA, Index, State, memory_row_sig


@pytest.fixture
def idx(tmp_path: Path):
    i = Index(tmp_path / "index.sqlite")
    yield i
    i.close()


def foreign(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, timeout=30, isolation_level=None)


def shell(path: Path, script: str) -> str:
    p = subprocess.run(["sqlite3", "-cmd", ".timeout 30000", str(path)], input=script, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


def search(db: sqlite3.Connection, word: str) -> set[tuple[str, str]]:
    return {(s, k) for s, k in db.execute(
        "SELECT scope, key FROM mesh_memory_fts WHERE mesh_memory_fts MATCH ?", (word,))}


# --- schema ----------------------------------------------------------------------------------


def test_schema_is_the_seed_schema_in_wal_mode(idx):
    db = foreign(idx.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    cols = {r[1]: (r[2], r[3], r[5]) for r in db.execute("PRAGMA table_info(mesh_memory)")}
    assert cols == {"id": ("INTEGER", 0, 1), "scope": ("TEXT", 1, 0), "key": ("TEXT", 1, 0),
                    "value": ("TEXT", 1, 0), "node_id": ("TEXT", 1, 0), "updated_at": ("INTEGER", 1, 0)}
    cols = {r[1] for r in db.execute("PRAGMA table_info(mesh_skills)")}
    assert cols == {"id", "name", "source_node", "content", "path", "updated_at"}
    with pytest.raises(sqlite3.IntegrityError):  # CHECK(content IS NOT NULL OR path IS NOT NULL)
        db.execute("INSERT INTO mesh_skills (name, source_node, updated_at) VALUES ('x', 'n', 1)")
    with pytest.raises(sqlite3.IntegrityError):  # UNIQUE(scope, key)
        db.execute("INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) VALUES ('mesh','k','1','n',1)")
        db.execute("INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) VALUES ('mesh','k','2','n',1)")
    db.close()


def test_opening_an_index_created_by_the_seed_client_keeps_its_rows(tmp_path):
    path = tmp_path / "store.sqlite"
    shell(path, SEED_SCHEMA + "INSERT INTO mesh_memory (scope, key, value, node_id, updated_at)"
                              " VALUES ('mesh', 'legacy', '\"wombat\"', 'ceo', 1700000000);")
    i = Index(path)
    try:
        assert i.db.execute("SELECT scope, key, value FROM mesh_memory").fetchall() == [("mesh", "legacy", '"wombat"')]
        assert i.meta("schema") == "1"
        # Reopening is idempotent.
        Index(path).close()
        # The rows the seed client wrote before meshsync existed are not in the FTS table
        # yet; the check of a full pass puts them there.
        with i.write() as db:
            i.check_fts(db)
        assert search(i.db, "wombat") == {("mesh", "legacy")}
    finally:
        i.close()


def test_index_refuses_to_create_when_asked_not_to(tmp_path):
    from meshsync.replicas.index.store import IndexError_

    with pytest.raises(IndexError_):
        Index(tmp_path / "missing.sqlite", create=False)


# --- the outbox ---------------------------------------------------------------------------------


def test_foreign_writes_land_in_the_outbox_own_writes_do_not(idx):
    db = foreign(idx.path)
    db.execute(UPSERT, ("mesh", "a", '"1"', "client", 1))
    db.execute(UPSERT, ("mesh", "a", '"2"', "client", 2))
    db.execute("UPDATE mesh_memory SET key = 'b' WHERE key = 'a'")  # a rename: both items
    db.execute("INSERT INTO mesh_skills (name, source_node, content, updated_at) VALUES ('s', 'c', 'x', 1)")
    db.execute("DELETE FROM mesh_skills WHERE name = 's'")
    seq, items = idx.outbox()
    assert items == {memory_id("mesh", "a"), memory_id("mesh", "b"), skill_id("s")}
    with idx.write() as w:
        idx.ack_outbox(w, seq)
        idx.set_memory(w, memory_id("mesh", "own"), '"x"', "me", 5, exists=False)
        idx.set_memory(w, memory_id("mesh", "own"), '"y"', "me", 6, exists=True)
        idx.set_skill(w, skill_id("own"), "c", None, "me", 5, exists=False)
        idx.delete_row(w, memory_id("mesh", "b"))
    assert idx.outbox() == (0, set())
    assert db.execute("SELECT applying FROM meshsync_ctl").fetchone() == (0,)
    # A write that lands after the outbox was read is not acknowledged with it.
    db.execute(UPSERT, ("mesh", "late", '"1"', "client", 1))
    seq, items = idx.outbox()
    db.execute(UPSERT, ("mesh", "later", '"1"', "client", 1))
    with idx.write() as w:
        idx.ack_outbox(w, seq)
    assert idx.outbox()[1] == {memory_id("mesh", "later")}
    db.close()


def test_a_failed_own_transaction_leaves_foreign_writes_recorded(idx):
    with pytest.raises(RuntimeError), idx.write() as w:
        idx.set_memory(w, memory_id("mesh", "x"), '"x"', "me", 5, exists=False)
        raise RuntimeError("boom")
    assert idx.db.execute("SELECT count(*) FROM mesh_memory").fetchone() == (0,)
    assert idx.db.execute("SELECT applying FROM meshsync_ctl").fetchone() == (0,)
    shell(idx.path, "INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) VALUES ('mesh','f','1','c',1);")
    assert idx.outbox()[1] == {memory_id("mesh", "f")}


def test_requeue_keeps_items_pending(idx):
    with idx.write() as w:
        idx.requeue(w, [memory_id("user:bob", "note"), skill_id("s")])
    seq, items = idx.outbox()
    assert items == {memory_id("user:bob", "note"), skill_id("s")}
    with idx.write() as w:
        idx.ack_outbox(w, seq)
    assert idx.outbox() == (0, set())


def test_sqlite3_shell_writes_while_meshsync_holds_a_read_snapshot(idx):
    with idx.read():
        shell(idx.path, "INSERT INTO mesh_memory(scope,key,value,node_id,updated_at) VALUES('mesh','k','1','c',1) "
                        "ON CONFLICT(scope,key) DO UPDATE SET value=excluded.value;")
    assert idx.outbox()[1] == {memory_id("mesh", "k")}
    assert idx.memory_rows([memory_id("mesh", "k")])[memory_id("mesh", "k")].value == "1"


# --- full-text search ------------------------------------------------------------------------------


def test_fts_follows_every_kind_of_write(idx):
    db = foreign(idx.path)
    db.execute(UPSERT, ("mesh", "k", '"alpaca"', "c", 1))
    assert search(db, "alpaca") == {("mesh", "k")}
    db.execute(UPSERT, ("mesh", "k", '"bison"', "c", 2))
    assert search(db, "alpaca") == set() and search(db, "bison") == {("mesh", "k")}
    with idx.write() as w:
        idx.set_memory(w, memory_id("user:x", "j"), '{"t": "camel"}', "me", 3, exists=False)
        idx.set_memory(w, memory_id("mesh", "k"), '"dingo"', "me", 3, exists=True)
    assert search(db, "camel") == {("user:x", "j")}
    assert search(db, "dingo") == {("mesh", "k")} and search(db, "bison") == set()
    with idx.write() as w:
        idx.delete_row(w, memory_id("user:x", "j"))
    db.execute("DELETE FROM mesh_memory WHERE key = 'k'")
    assert search(db, "camel") == set() and search(db, "dingo") == set()
    assert db.execute("SELECT count(*) FROM mesh_memory_fts").fetchone() == (0,)
    db.close()


def test_fts_check_repairs_insert_or_replace(idx):
    """INSERT OR REPLACE deletes the old row without firing delete triggers (recursive
    triggers are off), which leaves a stale FTS row; the full pass's check repairs it."""
    db = foreign(idx.path)
    db.execute(UPSERT, ("mesh", "k", '"emu"', "c", 1))
    db.execute("INSERT OR REPLACE INTO mesh_memory (scope, key, value, node_id, updated_at)"
               " VALUES ('mesh', 'k', '\"ferret\"', 'c', 2)")
    with idx.write() as w:
        assert idx.check_fts(w) is True
        assert idx.check_fts(w) is False
    assert search(db, "emu") == set() and search(db, "ferret") == {("mesh", "k")}
    db.close()


def test_fts_check_is_skipped_until_another_connection_commits(idx):
    """Our own writes keep the FTS table by its triggers; the check (two reads of every
    row id) runs again only once another connection has committed something."""
    db = foreign(idx.path)
    db.execute(UPSERT, ("mesh", "k", '"emu"', "c", 1))
    with idx.write() as w:
        assert idx.check_fts(w) is False  # equal: remembered with the data version
    # A drift no meshsync write makes (INSERT OR REPLACE skips the delete trigger), made
    # through our own connection, so that only the skip can explain that it stays.
    idx.db.execute("INSERT OR REPLACE INTO mesh_memory (scope, key, value, node_id, updated_at)"
                   " VALUES ('mesh', 'k', '\"ferret\"', 'c', 2)")
    with idx.write() as w:
        assert idx.check_fts(w) is False
    assert search(db, "emu") == {("mesh", "k")}  # still stale: not looked at
    db.execute(UPSERT, ("mesh", "other", '"gnu"', "c", 3))  # any commit by another client
    with idx.write() as w:
        assert idx.check_fts(w) is True
    assert search(db, "emu") == set() and search(db, "ferret") == {("mesh", "k")}
    db.close()


def test_tombstones_expire_through_their_own_index(tmp_path):
    """A full pass deletes tombstones past the retention by age without reading every
    state row; an index made before the tombstone index existed gains it when opened."""
    path = tmp_path / "index.sqlite"
    Index(path).close()
    shell(path, "DROP INDEX meshsync_state_tombstones;")
    i = Index(path)
    try:
        plan = " ".join(str(r) for r in i.db.execute(
            "EXPLAIN QUERY PLAN DELETE FROM meshsync_state WHERE deleted = 1 AND stamp < ?", (5,)))
        assert "meshsync_state_tombstones" in plan
    finally:
        i.close()


def test_fts_check_repairs_stale_rows_even_when_counts_match(tmp_path):
    """A store made by the seed client (rows not yet indexed) plus an INSERT OR REPLACE
    (one stale FTS row): the counts agree, the content does not."""
    path = tmp_path / "store.sqlite"
    shell(path, SEED_SCHEMA + "INSERT INTO mesh_memory (scope, key, value, node_id, updated_at)"
                              " VALUES ('mesh', 'old', '\"gecko\"', 'ceo', 1);")
    i = Index(path)
    try:
        db = foreign(path)
        db.execute(UPSERT, ("mesh", "k", '"heron"', "c", 1))
        db.execute("INSERT OR REPLACE INTO mesh_memory (scope, key, value, node_id, updated_at)"
                   " VALUES ('mesh', 'k', '\"ibis\"', 'c', 2)")
        n_rows = db.execute("SELECT count(*) FROM mesh_memory").fetchone()[0]
        assert db.execute("SELECT count(*) FROM mesh_memory_fts").fetchone()[0] == n_rows
        with i.write() as w:
            i.check_fts(w)
        assert search(db, "gecko") == {("mesh", "old")}
        assert search(db, "heron") == set() and search(db, "ibis") == {("mesh", "k")}
        db.close()
    finally:
        i.close()


# --- bookkeeping ---------------------------------------------------------------------------------


def test_state_round_trip_and_targeted_load(idx):
    a, b = memory_id("mesh", "a"), memory_id("user:x:y", "b:c")
    sa = State(1000, "n", "d1", False, "sig", "hash", "row", "memory/mesh/a.json", None)
    sb = State(2000, "m", "", True, None, None, None, None, None)
    with idx.write() as w:
        idx.put_state(w, a, sa)
        idx.put_state(w, b, sb)
    assert idx.load_state() == {a: sa, b: sb}
    assert idx.load_state([b, memory_id("mesh", "nope")]) == {b: sb}


def test_row_signatures_agree(idx):
    it = memory_id("mesh", "k")
    with idx.write() as w:
        idx.set_memory(w, it, '{"a":1}', "n", 7, exists=False)
        assert idx.current_row_sig(w, it) == memory_row_sig('{"a":1}', "n", 7)
        assert idx.memory_rows([it])[it].sig == memory_row_sig('{"a":1}', "n", 7)
        assert idx.current_row_sig(w, memory_id("mesh", "none")) is None


def test_errors_keep_their_first_seen_time_and_are_replaced(idx):
    with idx.write() as w:
        idx.replace_errors(w, "file", [("a.json", "bad", "fix it"), ("b.json", "bad", "fix it")])
        w.execute("UPDATE meshsync_errors SET since = 1")
        idx.replace_errors(w, "file", [("a.json", "bad", "fix it")])
        idx.replace_errors_one(w, "index", "index:mesh:k", ("refused", "hint"))
    errs = {e["path"]: e for e in idx.errors()}
    assert set(errs) == {"a.json", "index:mesh:k"} and errs["a.json"]["since"] == 1
    with idx.write() as w:
        idx.replace_errors(w, "file", [])
        idx.replace_errors_one(w, "index", "index:mesh:k", None)
    assert idx.errors() == []


# --- through real passes -----------------------------------------------------------------------------


def test_index_outbox_and_fts_through_sync(mesh):
    a = mesh.node("A")
    b = quick_node(mesh, "B")
    now = int(time.time())
    b.sql(UPSERT, ("mesh", "k", '"jackal"', "client", now - 10))
    b.sql("INSERT OR REPLACE INTO mesh_memory (scope, key, value, node_id, updated_at)"
          " VALUES ('mesh', 'k', '\"kiwi\"', 'client', ?)", (now - 5,))
    sync_json(b)
    assert outbox(b) == []
    assert fts(b, "jackal") == set() and fts(b, "kiwi") == {("mesh", "k")}
    sync_json(a)
    assert outbox(a) == [] and fts(a, "kiwi") == {("mesh", "k")}
    # A row renamed by a foreign client moves everywhere.
    a.sql("UPDATE mesh_memory SET key = 'k2', updated_at = ? WHERE key = 'k'", (now - 1,))
    sync_json(a)
    sync_json(b)
    for n in (a, b):
        assert n.sql("SELECT key, value FROM mesh_memory") == [("k2", '"kiwi"')], n.node_id
        assert fts(n, "kiwi") == {("mesh", "k2")}
        assert set(n.cache()) == {"mesh:k2"}


def test_index_made_by_seed_client_before_meshsync_is_exported(mesh, tmp_path):
    mesh.node("A")
    b = mesh.node("B", init=False)
    shell(b.index, SEED_SCHEMA + "INSERT INTO mesh_memory (scope, key, value, node_id, updated_at)"
                                 " VALUES ('mesh', 'legacy', '{\"w\": \"lemur\"}', 'ceo', 1700000000);"
                                 "INSERT INTO mesh_skills (name, source_node, content, updated_at)"
                                 " VALUES ('old.skill', 'ceo', '# old', 1700000000);")
    b.cli("init")
    sync_json(b)
    doc = json.loads((mesh.share / "memory" / "mesh" / "legacy.json").read_text())
    assert (doc["value"], doc["node_id"], doc["updated_at"]) == ({"w": "lemur"}, "ceo", 1700000000)
    assert (mesh.share / "skills" / "old.skill" / "SKILL.md").read_text() == "# old"
    assert fts(b, "lemur") == {("mesh", "legacy")}
    assert b.cache()["mesh:legacy"] == {"value": {"w": "lemur"}, "nodeId": "ceo", "ts": 1700000000}
    assert (b.cache_skills / "old.skill.md").read_text() == "# old"


def test_state_view_loads_on_demand_and_in_bulk(idx):
    """A pass's view of the synced state: rows are read when first asked for (absent
    ones remembered), many at once by prefetch, all by load_all; share_sigs/items_at
    give the full pass its comparison without a State per item."""
    from meshsync.replicas.index.store import StateView

    items = [memory_id("mesh", f"k{i}") for i in range(1200)]
    with idx.write() as db:
        for n, it in enumerate(items):
            idx.put_state(db, it, State(n, "a", "d", False, f"sig{n}", "h", "r", f"memory/mesh/k{n}.json"))
        idx.put_state(db, skill_id("gone"), State(1, "a", "", True, None, None, None))
    view = StateView(idx)
    assert view.get(items[5]).stamp == 5 and items[5] in view
    missing = memory_id("mesh", "nope")
    assert view.get(missing) is None and missing not in view
    with idx.write() as db:  # remembered as absent: the view is one pass's snapshot
        idx.put_state(db, missing, State(9, "a", "d", False, None, None, None))
    assert view.get(missing) is None
    view[missing] = State(10, "b", "d", False, None, None, None)
    assert view[missing].stamp == 10
    with pytest.raises(KeyError):
        view[memory_id("mesh", "still-nope")]
    fresh = StateView(idx)
    fresh.prefetch(items[:1100] + [memory_id("mesh", "other")])
    assert len(dict.items(fresh)) == 1100 and fresh.get(items[1099]).share_sig == "sig1099"
    full = StateView(idx)
    full.load_all()
    assert full.get(skill_id("gone")).deleted and full.get(memory_id("mesh", "x")) is None
    sigs = idx.share_sigs()
    assert len(sigs) == 1200 and sigs["memory/mesh/k7.json"] == "sig7"  # tombstones and rows without a file: none
    assert idx.items_at(["memory/mesh/k7.json", "memory/mesh/none.json"]) == {"memory/mesh/k7.json": items[7]}


def test_memory_scopes_lists_every_distinct_scope(idx):
    """memory_scopes seeks the scope index once per scope: it must still list each scope
    once, whatever a foreign writer stored (odd text, an integer, a blob)."""
    assert idx.memory_scopes() == []
    db = sqlite3.connect(idx.path, isolation_level=None)
    scopes = ["mesh", "user:b", "user:a", "node", "user:a", "", "user:\u00e9", "mesh"]
    for i, sc in enumerate(scopes):
        db.execute(UPSERT, (sc, f"k{i}", "1", "n", i))
    db.execute("INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) VALUES (7, 'x', '1', 'n', 1)")
    db.execute("INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) VALUES (x'6d657368', 'y', '1', 'n', 1)")
    got = idx.memory_scopes()
    want = [r[0] for r in db.execute("SELECT DISTINCT scope FROM mesh_memory NOT INDEXED")]
    assert sorted(map(repr, got)) == sorted(map(repr, want)) and len(got) == len(set(map(repr, got))) == 8
    db.close()


def test_bulk_insert_stores_every_row_exactly_and_leaves_existing_ones(idx):
    """Rows go in as one JSON array (json_each): what SQLite stores must be the very
    strings and integers given, whatever they hold; a text with a NUL (which json_extract
    would cut short) takes the per-row path instead, with the same result."""
    odd = ['"plain"', '"quote \\" and backslash \\\\"', '"tab\\tnewline\\n"', '"üñí ✓ 𝄞 emoji 🎉"',
           '{"a":[1,2.5,null,true],"b":"x\\u0001y"}', "'single'", "", " lead and trail ", "12345678901234567890"]
    rows = [("mesh", f"k{i}", v, f"node-{i}", 1_700_000_000 + i) for i, v in enumerate(odd)]
    rows += [("mesh", "ke\u00ffy\u2028", '"line sep"', "n", 1), ("user:ü", "k", '"scoped"', "n", 2**62)]
    with idx.write() as db:
        db.execute("INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) VALUES ('mesh', 'k3', 'old', 'x', 5)")
        assert idx.insert_memory_rows_if_absent(db, rows) == len(rows) - 1  # k3 was there: left alone
    got = {(s, k): (v, n, u, type(u)) for s, k, v, n, u in idx.db.execute(
        "SELECT scope, key, value, node_id, updated_at FROM mesh_memory")}
    assert got.pop(("mesh", "k3")) == ("old", "x", 5, int)
    assert got == {(s, k): (v, n, u, int) for s, k, v, n, u in rows if k != "k3"}
    assert search(idx.db, "emoji") == set() and search(idx.db, "scoped") == {("user:ü", "k")}
    # The per-row path: the same outcome.
    for bad in ('"nul \x00 inside"', '"no nul"'):
        with idx.write() as db:
            assert idx.insert_memory_rows_if_absent(db, [("mesh", "a", bad, "n", 1), ("mesh", "b", '"b"', "n", 2**63 - 1),
                                                         ("mesh", "k0", '"not me"', "n", 1)]) == 2
        assert idx.db.execute("SELECT value FROM mesh_memory WHERE key = 'a'").fetchone()[0] == bad
        assert idx.db.execute("SELECT updated_at FROM mesh_memory WHERE key = 'b'").fetchone()[0] == 2**63 - 1
        idx.db.execute("DELETE FROM mesh_memory WHERE key IN ('a', 'b')")
    assert idx.db.execute("SELECT value FROM mesh_memory WHERE key = 'k0'").fetchone()[0] == '"plain"'


def test_bulk_insert_without_json_functions_falls_back_to_one_row_at_a_time(idx):
    """SQLite before 3.38 may be built without JSON: the one-statement insert fails there
    and must fall back for good, storing the same rows.  An authorizer that refuses the
    json functions gives this real SQLite the same refusal."""
    def no_json(action, arg1, arg2, dbname, source):
        if action == sqlite3.SQLITE_FUNCTION and arg2 and arg2.startswith("json"):
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    idx.db.set_authorizer(no_json)
    try:
        for batch in range(2):  # the first call finds out, the second goes straight to executemany
            rows = [("mesh", f"k{batch}.{i}", f'"v{i}"', "n", 1_700_000_000 + i) for i in range(3)]
            with idx.write() as db:
                db.execute("INSERT INTO mesh_memory (scope, key, value, node_id, updated_at)"
                           " VALUES ('mesh', ?, 'old', 'x', 5)", (f"k{batch}.1",))
                assert idx.insert_memory_rows_if_absent(db, rows) == 2
            assert idx._json_rows is False
    finally:
        idx.db.set_authorizer(None)
    got = dict(idx.db.execute("SELECT key, value FROM mesh_memory"))
    assert got == {"k0.0": '"v0"', "k0.1": "old", "k0.2": '"v2"', "k1.0": '"v0"', "k1.1": "old", "k1.2": '"v2"'}
    assert search(idx.db, "v2") == {("mesh", "k0.2"), ("mesh", "k1.2")}
