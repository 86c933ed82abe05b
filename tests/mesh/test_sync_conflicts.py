"""Multi-node integration tests of `meshsync sync` with concurrent writes (R1, R2, R3):
the newest `updated_at` wins everywhere, ties are broken the same way on every node, the
beaten version is kept in the conflict history, writes in one second keep their order,
and a write made after seeing a version beats it whatever the clocks say.

Real `meshsync` processes, real folders, real SQLite; order is set with explicit
`updated_at` values, never with sleeps.
"""

from __future__ import annotations

import json
import time

from sync_helpers import (
    UPSERT,
    assert_item_everywhere,
    conflicts,
    foreign_put,
    mem_path,
    quick_node,
    read_json,
    sync_json,
)

# --- 5. concurrent writes ---------------------------------------------------------------------


def test_concurrent_writes_newest_updated_at_wins(mesh, ab):
    a, b = ab
    t = int(time.time()) - 500
    # key -> (A's stamp, B's stamp)
    cases = {"a.newer": (t + 20, t + 10), "b.newer": (t + 10, t + 20), "tie": (t, t)}
    for k, (sa, sb) in cases.items():
        foreign_put(a, "mesh", k, f"from A at {sa}", updated_at=sa)
        foreign_put(b, "mesh", k, f"from B at {sb}", updated_at=sb)
    sync_json(a)
    sync_json(b)
    sync_json(a)
    for k, (sa, sb) in cases.items():
        # Ties go to the larger node id, the same rule on every node.
        winner = "A" if sa > sb else "B"
        stamp = max(sa, sb)
        assert_item_everywhere([a, b], mesh.share, "mesh", k, f"from {winner} at {stamp}", node_id=winner)
        assert a.row("mesh", k)[2] == stamp
        # B saw both versions (its own and A's on the share).
        loser, lstamp = ("B", sb) if winner == "A" else ("A", sa)
        cb = [c for c in conflicts(b) if c[1] == k]
        assert len(cb) == 1, (k, cb)
        assert cb[0][2] == loser and json.loads(cb[0][3]) == f"from {loser} at {lstamp}" and cb[0][4] == winner
    assert conflicts(a) == []
    # A beaten version can be listed through status.
    assert {c["key"] for c in b.status()["conflicts"]} == set(cases)
    # Quiet afterwards.
    for n in (a, b):
        st = sync_json(n)
        assert (st["to_share"], st["to_index"], st["conflicts"], st["cache_written"]) == (0, 0, 0, False)


def test_concurrent_writes_three_nodes_converge(mesh):
    a, b, c = mesh.node("A"), quick_node(mesh, "B"), quick_node(mesh, "C")
    t = int(time.time()) - 500
    for n, dt in ((a, 3), (b, 1), (c, 2)):
        foreign_put(n, "mesh", "tri", {"by": n.node_id}, updated_at=t + dt)
    for n in (a, b, c, a, b):
        sync_json(n)
    assert_item_everywhere([a, b, c], mesh.share, "mesh", "tri", {"by": "A"}, node_id="A")
    assert len([x for x in conflicts(b) + conflicts(c) if x[1] == "tri"]) == 2


def test_writes_in_the_same_second_keep_their_order(mesh, ab):
    a, b = ab
    a.cli("put", "mesh", "counter", "1")
    a.cli("put", "mesh", "counter", "2")
    assert a.value("mesh", "counter") == 2
    assert read_json(mem_path(mesh.share, "mesh", "counter"))["value"] == 2
    # Two foreign writes with the same updated_at, with a sync between them.
    now = int(time.time())
    foreign_put(a, "mesh", "burst", "first", updated_at=now)
    sync_json(a)
    foreign_put(a, "mesh", "burst", "second", updated_at=now)
    sync_json(a)
    sync_json(b)
    assert_item_everywhere([a, b], mesh.share, "mesh", "counter", 2)
    assert_item_everywhere([a, b], mesh.share, "mesh", "burst", "second")
    assert conflicts(a) == [] and conflicts(b) == []


def test_local_write_after_seeing_newer_version_wins_despite_slow_clock(mesh, ab):
    """R3: B's clock is behind the version it saw; its later write still wins."""
    a, b = ab
    ahead = int(time.time()) + 3600
    foreign_put(a, "mesh", "causal", "from A, clock ahead", updated_at=ahead)
    sync_json(a)
    sync_json(b)
    # B writes after seeing A's version, with an updated_at an hour older.
    b.sql(UPSERT, ("mesh", "causal", '"from B, later"', "B", ahead - 3600))
    sync_json(b)
    sync_json(a)
    assert_item_everywhere([a, b], mesh.share, "mesh", "causal", "from B, later", node_id="B")
    assert read_json(mem_path(mesh.share, "mesh", "causal"))["updated_at_ms"] > ahead * 1000


def test_older_version_put_back_on_the_share_is_replaced_by_the_newer_one(mesh, ab, tmp_path):
    """A backup restore (or a lagging file-sync tool) puts back an older version that a
    node has already moved past: that node re-exports the newer version, for memory
    items and skills alike, and keeps the old one in its conflict history."""
    import shutil

    a, b = ab
    t = int(time.time()) - 1000
    foreign_put(a, "mesh", "doc", "v1", updated_at=t)
    a.sql("INSERT INTO mesh_skills (name, source_node, content, updated_at) VALUES ('sk', 'A', '# v1\n', ?)", (t,))
    sync_json(a)
    sync_json(b)
    f, d = mem_path(mesh.share, "mesh", "doc"), mesh.share / "skills" / "sk"
    old_file = f.read_bytes()
    shutil.copytree(d, tmp_path / "sk-backup")
    foreign_put(b, "mesh", "doc", "v2", updated_at=t + 10)
    b.sql("UPDATE mesh_skills SET content = '# v2\n', updated_at = ? WHERE name = 'sk'", (t + 10,))
    sync_json(b)
    # The backup comes back.
    f.write_bytes(old_file)
    shutil.rmtree(d)
    shutil.copytree(tmp_path / "sk-backup", d)
    sync_json(b)
    sync_json(a)
    assert_item_everywhere([a, b], mesh.share, "mesh", "doc", "v2", node_id="B")
    assert (d / "SKILL.md").read_text() == "# v2\n"
    for n in (a, b):
        assert n.sql("SELECT content, updated_at FROM mesh_skills") == [("# v2\n", t + 10)], n.node_id
        assert (n.cache_skills / "sk.md").read_text() == "# v2\n"
    assert {(c[1], c[3]) for c in conflicts(b)} >= {("doc", '"v1"')}
