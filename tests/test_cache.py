"""The cache document rendered by SQLite (sync.Node._cache_document) holds exactly what
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
from meshsync.sync import Node

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
    doc = b"".join(n._cache_document())
    assert orjson.loads(doc) == want
    assert orjson.loads(doc) == orjson.loads(orjson.dumps(n._cache_entries()))
    # Rendered in slices of row ids (4096 by default): any slice size gives the same.
    with n.index.read():
        small = b",".join(n.index.cache_chunks(["mesh", "node", "user:alice"], [], step=3))
    assert orjson.loads(b"{" + small + b"}") == want
    n.write_cache_memory()
    assert orjson.loads(n.cache.memory_path.read_bytes()) == want
    n.close()


def test_bad_row_keeps_the_cached_entry(mesh: Mesh):
    n = mesh.node("a")
    n.cli("put", "mesh", "good", '"g"')
    n.cli("put", "mesh", "later", '"v1"')
    n.sync()
    n.sql("UPDATE mesh_memory SET value = 'not json' WHERE key = 'later'")
    n.sync(check=1)
    cache = n.cache()
    assert cache["mesh:later"]["value"] == "v1"  # the last good version stays
    assert cache["mesh:good"]["value"] == "g"
    assert n.cache_file.read_bytes().count(b"\n") == 4  # "{", one line per entry, "}"
