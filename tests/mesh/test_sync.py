"""Multi-node integration tests of `meshsync sync` (one full two-way pass, no daemon):
export/import, foreign SQLite writers, hand edits, deletes and concurrent writes.

Every test runs real `meshsync` processes on real folders and real SQLite files; foreign
writers are the `sqlite3` shell or a separate Python connection.  Order between writes is
controlled with explicit `updated_at` values, never with sleeps.  Concurrent writes are
in test_sync_conflicts.py; skills, odd keys, scopes and an unavailable share in
test_sync_edges.py; bad input on the share in test_sync_input.py.
"""

from __future__ import annotations

import json
import os
import time

from helpers import Mesh, wait_for
from sync_helpers import (
    UPSERT,
    assert_gone_everywhere,
    assert_item_everywhere,
    conflicts,
    foreign_put,
    fts,
    mem_path,
    outbox,
    read_json,
    snapshot,
    sync_json,
)

from meshsync import layout


def upsert_sql(key: str, value: str, node: str, updated_at: int) -> str:
    """The seed client's upsert, as text for the sqlite3 shell."""
    return ("INSERT INTO mesh_memory(scope,key,value,node_id,updated_at) "
            f"VALUES('mesh','{key}','\"{value}\"','{node}',{updated_at}) "
            "ON CONFLICT(scope,key) DO UPDATE SET value=excluded.value, node_id=excluded.node_id, "
            "updated_at=excluded.updated_at;")


# --- 1. export and import ------------------------------------------------------------------


def test_put_exports_canonical_file_and_other_node_imports(mesh, ab):
    a, b = ab
    a.cli("put", "mesh", "user.preferences", '{"shortAnswers": true, "lang": "en"}')
    f = mesh.share / "memory" / "mesh" / "user.preferences.json"
    doc = read_json(f)
    assert set(doc) == {"scope", "key", "value", "node_id", "updated_at", "updated_at_ms", "rev"}
    assert doc["scope"] == "mesh" and doc["key"] == "user.preferences" and doc["node_id"] == "A"
    assert doc["value"] == {"shortAnswers": True, "lang": "en"}
    assert doc["updated_at"] == doc["updated_at_ms"] // 1000
    assert abs(doc["updated_at"] - time.time()) < 60
    # The writer's own cache is refreshed too.
    assert a.cache()["mesh:user.preferences"]["value"] == {"shortAnswers": True, "lang": "en"}

    st = sync_json(b)
    assert (st["to_index"], st["to_share"], st["skipped"], st["cache_written"]) == (1, 0, 0, True)
    assert_item_everywhere([a, b], mesh.share, "mesh", "user.preferences",
                           {"shortAnswers": True, "lang": "en"}, node_id="A")
    assert b.row("mesh", "user.preferences") == ('{"lang":"en","shortAnswers":true}', "A", doc["updated_at"])
    assert outbox(a) == [] and outbox(b) == []
    assert json.loads(b.cli("get", "mesh", "user.preferences").stdout) == {"shortAnswers": True, "lang": "en"}


# --- 2. foreign writers ----------------------------------------------------------------------


def test_foreign_sqlite3_cli_writes_are_exported_and_followed(mesh, ab):
    a, b = ab
    now = int(time.time())
    b.cli("put", "mesh", "from.share", '"pelican arrives through the share"')
    a.sqlite3_cli(upsert_sql("notes", "zebra crossing", "nodeclient", now - 100))
    assert outbox(a), "the trigger records the foreign write"
    sync_json(a)
    assert outbox(a) == []
    doc = read_json(mem_path(mesh.share, "mesh", "notes"))
    assert doc["value"] == "zebra crossing" and doc["node_id"] == "nodeclient" and doc["updated_at"] == now - 100
    assert a.value("mesh", "from.share") == "pelican arrives through the share"
    sync_json(b)
    assert outbox(b) == [], "meshsync's own imports are not foreign writes"
    assert_item_everywhere([a, b], mesh.share, "mesh", "notes", "zebra crossing")
    # FTS: rows from the share and rows of the foreign client are both searchable.
    assert fts(a, "zebra") == {("mesh", "notes")}
    assert fts(a, "pelican") == {("mesh", "from.share")}
    assert fts(b, "zebra") == {("mesh", "notes")}

    # An update through the same upsert (the share file is unchanged, so not re-read).
    a.sqlite3_cli(upsert_sql("notes", "giraffe neck", "nodeclient", now - 50))
    sync_json(a)
    sync_json(b)
    assert_item_everywhere([a, b], mesh.share, "mesh", "notes", "giraffe neck")
    assert fts(b, "giraffe") == {("mesh", "notes")} and fts(b, "zebra") == set()
    assert outbox(a) == [] and outbox(b) == []

    a.sqlite3_cli("DELETE FROM mesh_memory WHERE scope='mesh' AND key='notes';")
    sync_json(a)
    assert not mem_path(mesh.share, "mesh", "notes").exists()
    sync_json(b)
    assert_gone_everywhere([a, b], mesh.share, "mesh", "notes")
    assert fts(a, "giraffe") == set() and fts(b, "giraffe") == set()
    assert fts(b, "pelican") == {("mesh", "from.share")}
    assert outbox(a) == [] and outbox(b) == []


def test_foreign_python_connection_writes_in_other_scopes_and_ms_stamps(mesh, ab):
    a, b = ab
    now = int(time.time())
    foreign_put(b, "user:alice", "diary", {"text": "quokka smiles"}, updated_at=now - 10)
    # A client that writes milliseconds instead of seconds.
    foreign_put(b, "mesh", "ms.client", "millis", updated_at=(now - 20) * 1000 + 123)
    assert fts(b, "quokka") == {("user:alice", "diary")}
    sync_json(b)
    sync_json(a)
    assert fts(a, "quokka") == {("user:alice", "diary")}
    assert a.cache()["user:alice:diary"]["value"] == {"text": "quokka smiles"}
    assert a.value("mesh", "ms.client") == "millis"
    doc = read_json(mem_path(mesh.share, "mesh", "ms.client"))
    assert doc["updated_at"] == now - 20 and doc["updated_at_ms"] == (now - 20) * 1000 + 123


def test_foreign_invalid_json_row_is_not_exported_and_last_good_version_stays(mesh, ab):
    """A row whose value is JSON meshsync cannot carry exactly (a number too large for
    a double) is reported and not exported (R6).  (Text that is not JSON at all is the
    string it spells, as the seed client reads it: R10, tests/replicas/cache/test_openclaw.py.)"""
    a, b = ab
    a.cli("put", "mesh", "cfg", '{"good": true}')
    sync_json(b)
    f = mem_path(mesh.share, "mesh", "cfg")
    before = f.read_bytes()
    a.sql("UPDATE mesh_memory SET value = '[1e400]', updated_at = updated_at + 5 WHERE key = 'cfg'")
    p = a.cli("sync", "--json", check=1)
    assert json.loads(p.stdout)["skipped"] >= 1
    assert f.read_bytes() == before
    assert a.cache()["mesh:cfg"]["value"] == {"good": True}
    errs = [e for e in a.status()["errors"] if "cfg" in e["path"]]
    assert errs and errs[0]["reason"] and errs[0]["hint"]
    sync_json(b)
    assert b.value("mesh", "cfg") == {"good": True}
    # Fixing the row exports it and clears the error.
    a.sql("UPDATE mesh_memory SET value = '{\"good\": 2}', updated_at = updated_at + 1 WHERE key = 'cfg'")
    sync_json(a)
    sync_json(b)
    assert_item_everywhere([a, b], mesh.share, "mesh", "cfg", {"good": 2})
    assert a.status()["errors"] == []


# --- 3. hand edits (R3, R8) ---------------------------------------------------------------------


def test_hand_edit_wins_over_the_version_it_edited_even_with_writer_clock_ahead(mesh, ab):
    a, b = ab
    # The writer's clock is 40 minutes ahead: R3's clock differences (not yet "far ahead",
    # which R12 clamps at an hour: tests/daemon/test_faults.py).
    ahead = int(time.time()) + 40 * 60
    foreign_put(a, "mesh", "plan", {"step": 1}, updated_at=ahead)
    sync_json(a)
    sync_json(b)
    f = mem_path(mesh.share, "mesh", "plan")
    doc = read_json(f)
    assert doc["updated_at"] == ahead
    # Edit the value by hand; keep updated_at, updated_at_ms and rev as they were.
    doc["value"] = {"step": 2, "by": "hand"}
    f.write_text(json.dumps(doc, indent=4))
    saved = f.read_bytes()
    sync_json(b)
    sync_json(a)
    assert_item_everywhere([a, b], mesh.share, "mesh", "plan", {"step": 2, "by": "hand"})
    assert f.read_bytes() == saved, "the edit is taken as written (R10)"
    for n in (a, b):  # stamped after the version it edited: its declared stamp + 1 ms
        assert n.sql("SELECT stamp FROM meshsync_state WHERE key = 'plan'") == [(doc["updated_at_ms"] + 1,)]
    assert conflicts(a) == [] and conflicts(b) == [], "an edit of V replaces V, it does not beat it"


def test_hand_edit_wins_when_the_importing_node_never_saw_the_edited_version(mesh, ab):
    """The node that picks the edit up first has no base for the item: the edit must
    still come after the version it edited, not tie with it (whichever digest is larger)."""
    from meshsync.formats import canonical, digest_bytes

    a, b = ab
    ahead = int(time.time()) + 40 * 60  # ahead, within the hour R12 allows
    original = {"step": 1}
    foreign_put(a, "mesh", "plan", original, updated_at=ahead)
    sync_json(a)
    # An edit whose digest is smaller than the original's: a tie on (stamp, node) would lose.
    edit = next(v for v in ({"step": 2, "n": i} for i in range(100))
                if digest_bytes(canonical(v)) < digest_bytes(canonical(original)))
    f = mem_path(mesh.share, "mesh", "plan")
    doc = read_json(f)
    doc["value"] = edit
    f.write_text(json.dumps(doc))
    sync_json(b)  # B never synced before
    sync_json(a)
    sync_json(b)
    assert_item_everywhere([a, b], mesh.share, "mesh", "plan", edit)


def test_hand_made_value_only_file_is_imported_as_written_then_idle(mesh, ab):
    """R10: the file is imported and left as written (it used to be rewritten in
    meshsync's rendering); both nodes derive the same row from it: node "share", its
    mtime as updated_at.  R8: afterwards an idle mesh writes nothing."""
    a, b = ab
    d = mesh.share / "memory" / "user" / "alice"
    d.mkdir(parents=True)
    f = d / "todo.list.json"
    f.write_text('{"value": ["milk", "eggs"]}')
    mtime = int(f.stat().st_mtime)
    st = sync_json(a)
    assert st["skipped"] == 0 and st["to_index"] == 1 and st["to_share"] == 0
    assert a.value("user:alice", "todo.list") == ["milk", "eggs"]
    assert f.read_text() == '{"value": ["milk", "eggs"]}'
    sync_json(b)
    for n in (a, b):
        assert n.row("user:alice", "todo.list") == ('["milk","eggs"]', "share", mtime), n.node_id
        assert n.cache()["user:alice:todo.list"] == {"value": ["milk", "eggs"], "nodeId": "share", "ts": mtime}

    # R8: an idle pass writes nothing, on either node.
    before = snapshot(mesh.share)
    caches = {n.node_id: n.cache_file.stat().st_mtime_ns for n in (a, b)}
    for n in (a, b, a):
        st = sync_json(n)
        assert (st["to_share"], st["to_index"], st["cache_written"]) == (0, 0, False), st
    assert snapshot(mesh.share) == before
    assert {n.node_id: n.cache_file.stat().st_mtime_ns for n in (a, b)} == caches


# --- 4. deletes (R4) ----------------------------------------------------------------------------


def _tomb(share, key: str):
    return share / layout.tombstone_path(layout.memory_id("mesh", key), "")


def test_deletes_three_ways_reach_everyone_and_offline_node_does_not_resurrect(mesh, abc):
    a, b, c = abc
    t = int(time.time()) - 100
    keys = {"by.file": 1, "by.row": 2, "by.cli": 3, "survivor": 4}
    for k, v in keys.items():
        foreign_put(a, "mesh", k, {"v": v}, updated_at=t)
    for n in (a, b, c):
        sync_json(n)
    for k, v in keys.items():
        assert_item_everywhere([a, b, c], mesh.share, "mesh", k, {"v": v})
    # C goes offline.  The share file is removed by hand, a foreign client deletes a row
    # on B and `meshsync rm` runs on B.
    mem_path(mesh.share, "mesh", "by.file").unlink()
    b.sqlite3_cli("DELETE FROM mesh_memory WHERE scope='mesh' AND key='by.row';")
    b.cli("rm", "mesh", "by.cli")
    assert not mem_path(mesh.share, "mesh", "by.cli").exists()
    sync_json(b)
    for k in ("by.file", "by.row", "by.cli"):
        assert not mem_path(mesh.share, "mesh", k).exists(), k
        tomb = read_json(_tomb(mesh.share, k))
        assert tomb["key"] == k and tomb["node_id"] == "B" and tomb["deleted_at_ms"] > t * 1000
        assert b.row("mesh", k) is None
    sync_json(a)
    # C returns: its index still has every row.
    assert all(c.row("mesh", k) is not None for k in keys)
    sync_json(c)
    sync_json(a)
    # Converged: a round of passes on every node is quiet (tombstones do not echo).
    before = snapshot(mesh.share)
    for n in (a, b, c):
        st = sync_json(n)
        assert (st["to_share"], st["to_index"], st["cache_written"]) == (0, 0, False), (n.node_id, st)
    assert snapshot(mesh.share) == before
    for k in ("by.file", "by.row", "by.cli"):
        assert_gone_everywhere([a, b, c], mesh.share, "mesh", k)
        assert _tomb(mesh.share, k).exists()
    assert_item_everywhere([a, b, c], mesh.share, "mesh", "survivor", {"v": 4})
    assert conflicts(a) == conflicts(b) == conflicts(c) == []
    assert a.status()["counts"]["tombstones"] == 3


def test_delete_vs_concurrent_update_newer_wins(mesh, ab):
    a, b = ab
    t0 = int(time.time()) - 1000
    foreign_put(a, "mesh", "upd.newer", "v0", updated_at=t0)
    foreign_put(a, "mesh", "upd.older", "v0", updated_at=t0)
    sync_json(a)
    sync_json(b)
    # Concurrently A deletes both (stamped now); B updates one with a newer stamp (its
    # clock is ahead) and the other with a stamp older than the delete.
    a.sql("DELETE FROM mesh_memory WHERE key IN ('upd.newer', 'upd.older')")
    foreign_put(b, "mesh", "upd.newer", "v1-newer", updated_at=int(time.time()) + 120)
    foreign_put(b, "mesh", "upd.older", "v1-older", updated_at=t0 + 10)
    sync_json(a)
    assert _tomb(mesh.share, "upd.newer").exists() and _tomb(mesh.share, "upd.older").exists()
    sync_json(b)
    sync_json(a)
    sync_json(b)
    assert_item_everywhere([a, b], mesh.share, "mesh", "upd.newer", "v1-newer", node_id="B")
    assert not _tomb(mesh.share, "upd.newer").exists()
    assert_gone_everywhere([a, b], mesh.share, "mesh", "upd.older")
    assert _tomb(mesh.share, "upd.older").exists()
    # The beaten update is kept in the history of the node that saw both.
    lost = [c for c in conflicts(b) if c[1] == "upd.older"]
    assert len(lost) == 1 and json.loads(lost[0][3]) == "v1-older" and lost[0][2] == "B"
    assert [c for c in conflicts(a) + conflicts(b) if c[1] == "upd.newer"] == []


# --- the cache as an entry point (R2) ----------------------------------------------------------


def test_write_through_the_cache_reaches_everyone(mesh, ab):
    a, b = ab
    a.cli("put", "mesh", "x", "1")
    c = a.cache()
    c["mesh:from.cache"] = {"value": {"phase1": True}, "nodeId": "A", "ts": int(time.time())}
    a.cache_file.write_text(json.dumps(c))
    sync_json(a)
    sync_json(b)
    assert b.value("mesh", "from.cache") == {"phase1": True}


def test_foreign_row_text_is_left_as_written_after_its_export(mesh, ab):
    """A foreign client writes JSON formatted its own way.  The export is canonical on
    the share, but the row keeps the client's text: re-reading the fresh export (it is
    less than 3 s old, so its signature is not trusted yet) finds the same version and
    must not rewrite every exported row (an UPDATE and its FTS work per row), here once
    the file has settled."""
    a, _b = ab
    text = '{ "note" :  "spaced out",\n  "n": 1 }'
    a.sql(UPSERT, ("mesh", "styled", text, "tool", int(time.time()) - 10))
    first = sync_json(a)
    assert first["to_share"] == 1
    assert read_json(mem_path(mesh.share, "mesh", "styled"))["value"] == {"note": "spaced out", "n": 1}
    f = mem_path(mesh.share, "mesh", "styled")
    old = time.time() - 3600  # settled now: read again, same version, and its signature recorded
    os.utime(f, (old, old))
    again = sync_json(a)
    assert again["read"] == 1 and again["to_index"] == 0
    assert a.sql("SELECT value FROM mesh_memory WHERE key = 'styled'") == [(text,)]
    assert outbox(a) == []


# --- 6. what a full pass reads -----------------------------------------------------------------


def test_full_pass_reads_only_files_whose_signature_changed(mesh: Mesh):
    """A no-change pass reads no file; an edit is read once, by whichever process made
    the signature map stale (this one, or another meshsync on the same index), and a
    removed file is still seen as gone although the walk sets unchanged files aside."""
    a = mesh.node("A")
    for i in range(5):
        a.cli("put", "mesh", f"k{i}", f'"v{i}"')

    def age(key: str) -> None:  # older than the 3 s racy-file window: its signature is trusted
        old = time.time() - 3600
        os.utime(mem_path(a.share, "mesh", key), (old, old))

    def edit(key: str, value: str) -> None:
        p = mem_path(a.share, "mesh", key)
        doc = read_json(p)
        doc["value"] = value
        p.write_text(json.dumps(doc))
        age(key)

    for i in range(5):
        age(f"k{i}")
    node = mesh.engine(a)
    node.sync()
    assert node.sync().read == 0
    edit("k1", "edited")
    assert node.sync().read == 1
    assert a.sql("SELECT value FROM mesh_memory WHERE key = 'k1'") == [('"edited"',)]
    # The import rewrote the file in canonical form: read again until it is 3 s old,
    # then never, as its own state write refreshed the map (a stale map: read forever).
    wait_for(lambda: node.sync().read == 0, what="no file read once the rewrite settled")
    edit("k2", "by the other process")
    other = mesh.engine(a)
    assert other.sync().read == 1
    other.close()
    wait_for(lambda: node.sync().read == 0, what="the other connection's state write seen")
    assert a.sql("SELECT value FROM mesh_memory WHERE key = 'k2'") == [('"by the other process"',)]
    mem_path(a.share, "mesh", "k3").unlink()
    node.sync()
    assert a.sql("SELECT key FROM mesh_memory WHERE key = 'k3'") == []
    assert node.sync().read == 0


def test_full_pass_reads_each_tombstone_once(mesh: Mesh):
    """A settled tombstone is read once, not by every full pass.  Shown by breaking one
    in place behind meshsync's back (same size, inode and mtime, so the same signature):
    the pass keeps what it read.  An old copy of the deleted file put back on the share
    is a restore (R10): it comes back stamped just after the delete it still knows,
    which it could not if the broken tombstone had been read again."""
    a = mesh.node("A")
    a.cli("put", "mesh", "gone", '"old"')
    f = mem_path(a.share, "mesh", "gone")
    old_copy = f.read_bytes()
    a.cli("rm", "mesh", "gone")
    tomb = a.share / layout.tombstone_path(layout.memory_id("mesh", "gone"), "A")
    assert tomb.exists() and not f.exists()
    deleted_at = read_json(tomb)["deleted_at_ms"]
    past = time.time_ns() - 3600 * 10**9
    os.utime(tomb, ns=(past, past))
    node = mesh.engine(a)
    node.sync()  # reads the tombstone (settled now) and keeps what it holds
    with open(tomb, "r+b") as fh:
        size = fh.seek(0, 2)
        fh.seek(0)
        fh.write(b"x" * size)
    os.utime(tomb, ns=(past, past))
    f.write_bytes(old_copy)
    os.utime(f, ns=(past, past))
    node.sync()
    assert a.sql("SELECT value FROM mesh_memory WHERE key = 'gone'") == [('"old"',)]
    assert read_json(f)["updated_at_ms"] == deleted_at + 1  # the restore, after the delete it knew
    assert not tomb.exists()
