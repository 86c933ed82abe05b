"""The cache document rendered by SQLite (Node.cache_document) holds exactly what
the Python rendering of the same rows holds, for awkward keys, values and scopes."""

from __future__ import annotations

import json
import sqlite3

import orjson
from helpers import Mesh
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sync_helpers import UPSERT

from meshsync import config
from meshsync.engine.node import Node
from meshsync.layout import memory_id

KEYS = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.text(st.characters(blacklist_categories=("Cs",)))
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=6,
)
SCOPES = st.sampled_from(["mesh", "user:alice", "user:bob", "node", "bogus"])


def _node(mesh: Mesh) -> Node:
    n = mesh.node("a")  # an initialised share and index
    s = config.load(None, node_id="a", share=n.share, index=n.index, openclaw_home=n.openclaw_home,
                    scopes={"read": ["mesh", "node", "user:alice"]})
    return Node(s)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(SCOPES, KEYS, VALUES, st.integers(0, 2**40)), max_size=20))
def test_sql_rendered_cache_matches_the_rows(mesh: Mesh, rows):
    n = _node(mesh)
    db = sqlite3.connect(n.s.index, isolation_level=None)
    db.execute("DELETE FROM mesh_memory")
    want = {}
    for scope, key, value, ts in rows:
        text = json.dumps(value, ensure_ascii=False)
        db.execute(UPSERT, (scope, key, text, "n1", ts))
        if scope in ("mesh", "node", "user:alice"):
            want[f"{scope}:{key}"] = {"value": json.loads(text), "nodeId": "n1", "ts": ts}
    db.close()
    doc = b"".join(n.cache_document())
    assert orjson.loads(doc) == want
    assert orjson.loads(doc) == orjson.loads(orjson.dumps(n.cache_writer.entries()))
    # Rendered in slices of row ids (1024 by default): any slice size gives the same.
    with n.index.read():
        small = b",".join(s.body for s in n.index.cache_slices(["mesh", "node", "user:alice"], [], step=3)
                          if s.body)
    assert orjson.loads(b"{" + small + b"}") == want
    n.write_cache_memory()
    assert orjson.loads(n.cache.memory_path.read_bytes()) == want
    n.close()


def test_bad_row_keeps_the_cached_entry(mesh: Mesh):
    n = mesh.node("a")
    n.cli("put", "mesh", "good", '"g"')
    n.cli("put", "mesh", "later", '"v1"')
    n.sync()
    n.sql("UPDATE mesh_memory SET value = '[1e400]' WHERE key = 'later'")  # JSON meshsync cannot carry (R6)
    n.sync(check=1)
    cache = n.cache()
    assert cache["mesh:later"]["value"] == "v1"  # the last good version stays
    assert cache["mesh:good"]["value"] == "g"
    assert n.cache_file.read_bytes().count(b"\n") == 4  # "{", one line per entry, "}"


OPS = st.lists(st.one_of(
    st.tuples(st.just("put"), SCOPES, st.sampled_from("abcdefgh"), st.integers(0, 99)),
    st.tuples(st.just("del"), SCOPES, st.sampled_from("abcdefgh"), st.just(0)),  # as a pass deletes
    st.tuples(st.just("fdel"), SCOPES, st.sampled_from("abcdefgh"), st.just(0)),  # a foreign delete
    st.tuples(st.just("write"), st.just(""), st.just(""), st.just(0)),
), max_size=30)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(start=st.integers(0, 12), ops=OPS)
def test_patched_cache_is_byte_for_byte_the_full_rendering(mesh: Mesh, start, ops):
    """A patched rewrite (only the slices of rows that changed rendered again, the rest
    copied from the previous file) writes exactly what rendering every row writes."""
    n = _node(mesh)
    n.cache_step = 2  # many slices for a few rows
    db = sqlite3.connect(n.s.index, isolation_level=None)
    db.execute("DELETE FROM mesh_memory")
    for i in range(start):
        db.execute(UPSERT, ("mesh", f"k{i}", str(i), "n1", i))
    n.write_cache_memory()
    assert not n.cache_patched
    for op, scope, key, v in [*ops, ("write", "", "", 0)]:
        it = memory_id(scope, key) if key else None
        if op == "put":
            db.execute(UPSERT, (scope, key, json.dumps({"v": v}), "n2", 1000 + v))
            n.cache_dirty.add(it)  # the pass sees it in the outbox
        elif op == "del":
            with n.index.write() as w:
                rid = n.index.delete_row(w, it)
            if rid is not None:
                n.cache_dirty_ids.add(rid)
            n.cache_dirty.add(it)
        elif op == "fdel":
            db.execute("DELETE FROM mesh_memory WHERE scope = ? AND key = ?", (scope, key))
            n.cache_dirty.add(it)
        else:
            n.write_cache_memory(patch=True)
            assert n.cache.memory_path.read_bytes() == b"".join(n.cache_document())
            assert not n.cache_dirty and not n.cache_dirty_ids
    db.close()
    n.close()


def _cached_node(mesh: Mesh, rows: int) -> tuple[Node, sqlite3.Connection]:
    """A node whose cache holds rows k0..k<rows-1>, written whole, in slices of 4 ids;
    and a foreign connection to its index."""
    n = _node(mesh)
    n.cache_step = 4
    db = sqlite3.connect(n.s.index, isolation_level=None)
    for i in range(rows):
        db.execute(UPSERT, ("mesh", f"k{i}", str(i), "n1", i))
    n.write_cache_memory()
    return n, db


def test_cache_patch_only_when_the_file_is_ours_and_the_rows_add_up(mesh: Mesh):
    n, db = _cached_node(mesh, 40)

    def rewrite() -> bool:
        n.write_cache_memory(patch=True)
        assert orjson.loads(n.cache.memory_path.read_bytes()) == orjson.loads(b"".join(n.cache_document()))
        return n.cache_patched

    db.execute(UPSERT, ("mesh", "k7", '"seven"', "n2", 700))
    n.cache_dirty.add(memory_id("mesh", "k7"))
    assert rewrite()  # one slice rendered, nine copied
    assert n.cache.read_memory()["mesh:k7"]["value"] == "seven"
    db.execute(UPSERT, ("mesh", "new", '"n"', "n2", 701))
    n.cache_dirty.add(memory_id("mesh", "new"))
    assert rewrite()  # a new row: a new slice at the end
    with n.index.write() as w:
        n.cache_dirty_ids.add(n.index.delete_row(w, memory_id("mesh", "k3")))
    assert rewrite()  # our own delete: we know its slice
    assert "mesh:k3" not in n.cache.read_memory()
    # A row deleted by another program, not yet seen by a pass: the totals do not add
    # up, so everything is rendered again rather than keeping the deleted entry.
    db.execute("DELETE FROM mesh_memory WHERE key = 'k20'")
    assert not rewrite()
    assert "mesh:k20" not in n.cache.read_memory()
    # A tool rewrote the file since: the layout no longer describes it.
    n.cache.memory_path.write_bytes(n.cache.memory_path.read_bytes().replace(b'"seven"', b'"SEVEN"'))
    db.execute(UPSERT, ("mesh", "k8", '"eight"', "n2", 702))
    n.cache_dirty.add(memory_id("mesh", "k8"))
    assert not rewrite()
    assert n.cache.read_memory()["mesh:k7"]["value"] == "seven"
    # A scope this node reads appears: its rows go in by a full rendering.
    db.execute(UPSERT, ("user:alice", "x", '"a"', "n2", 703))
    n.cache_dirty.add(memory_id("user:alice", "x"))
    assert not rewrite()
    db.execute(UPSERT, ("user:alice", "x", '"b"', "n2", 704))
    n.cache_dirty.add(memory_id("user:alice", "x"))
    assert rewrite()  # and then it is patched again
    db.close()
    n.close()


def test_patch_copies_without_copy_file_range(mesh: Mesh, monkeypatch):
    """macOS has no copy_file_range: the unchanged slices are copied with pread/write."""
    from meshsync import faults

    n, db = _cached_node(mesh, 30)
    db.execute(UPSERT, ("mesh", "k5", '"five"', "n2", 500))
    n.cache_dirty.add(memory_id("mesh", "k5"))
    faults.install("cache.copy_file_range", lambda real: None)
    try:
        n.write_cache_memory(patch=True)
    finally:
        faults.remove("cache.copy_file_range")
    assert n.cache_patched
    assert n.cache.memory_path.read_bytes() == b"".join(n.cache_document())
    assert n.cache.read_memory()["mesh:k5"]["value"] == "five"
    db.close()
    n.close()


def test_patch_reads_the_totals_only_after_another_connection_wrote(mesh: Mesh, monkeypatch):
    """The totals (a read of the whole scope index) guard against rows that no pass of ours
    saw; only another connection can make those, and PRAGMA data_version tells when one
    committed.  Our own changes are patched without them, a foreign delete still is not."""
    n, db = _cached_node(mesh, 40)
    reads: list[int] = []
    real = n.index.cache_totals
    monkeypatch.setattr(n.index, "cache_totals", lambda *a: reads.append(1) or real(*a))
    with n.index.write() as w:
        n.cache_dirty_ids.add(n.index.delete_row(w, memory_id("mesh", "k3")))
        n.index.set_memory(w, memory_id("mesh", "k5"), '"five"', "a", 5, exists=True)
        n.index.set_memory(w, memory_id("mesh", "new"), '"new"', "a", 6, exists=False)
    n.cache_dirty |= {memory_id("mesh", "k3"), memory_id("mesh", "k5"), memory_id("mesh", "new")}
    n.write_cache_memory(patch=True)
    assert n.cache_patched and reads == []
    assert n.cache.memory_path.read_bytes() == b"".join(n.cache_document())
    assert "mesh:k3" not in n.cache.read_memory() and n.cache.read_memory()["mesh:new"]["value"] == "new"
    db.execute("DELETE FROM mesh_memory WHERE key = 'k20'")  # another program, no pass saw it
    n.write_cache_memory(patch=True)
    assert reads == [1] and not n.cache_patched
    assert "mesh:k20" not in n.cache.read_memory()
    db.close()
    n.close()
