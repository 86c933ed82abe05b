"""R11: two indexes writing under one node id are caught, an index keeps the node id it
was made for, and a share is never initialised inside another share.

Real `meshsync` processes; the clone test runs two daemons with one node id on two bindfs
views of one folder (two "machines" on one NAS).  Each test was seen failing first
(`init` said "index ready" for another node id, and doctor said "all checks passed").
"""

from __future__ import annotations

from helpers import Mesh, MeshNode, wait_for


def test_an_index_refuses_another_node_id(mesh: Mesh):
    a = mesh.node("a")
    a.cli("put", "node", "mine", '"a private"')
    a.cli("put", "mesh", "shared", '"x"')
    b = mesh.node("b", init=False)
    b.cli("init")
    b.cli("put", "node", "theirs", '"b private"')
    as_b = {"MESHSYNC_NODE_ID": "b"}
    for args in (["init"], ["sync"], ["put", "mesh", "k", "1"], ["status"], ["ls"], ["get", "mesh", "shared"],
                 ["conflicts"], ["run"]):
        p = a.cli(*args, check=2, **as_b)
        assert "index ready" not in p.stdout
        assert "was made for node 'a', not 'b'" in p.stderr, (args, p.stderr)
        assert "MESHSYNC_NODE_ID=a" in p.stderr and "Traceback" not in p.stderr
    # Nothing of a's was touched, nothing of b's came in.
    assert a.sql("SELECT scope, key FROM mesh_memory ORDER BY key") == [("node", "mine"), ("mesh", "shared")]
    assert a.sql("SELECT count(*) FROM meshsync_state WHERE scope = 'node'") == [(1,)]
    doc = a.cli("doctor", check=2, **as_b).stdout
    assert "FAIL  index owner" in doc
    assert "PASS  index owner" in a.cli("doctor", check=False).stdout


def test_init_refuses_a_share_inside_a_share(mesh: Mesh):
    mesh.node("a")
    inner = mesh.share / "skills"
    n = mesh.node("x", init=False)
    p = n.cli("init", check=2, MESHSYNC_SHARE=str(inner))
    assert "is inside the meshsync share" in p.stderr and str(mesh.share) in p.stderr
    assert not (inner / ".meshsync").exists() and not n.index.exists()


def clash(n: MeshNode) -> dict | None:
    return n.status().get("node_clash")


def test_two_clones_writing_under_one_node_id_are_reported(mesh: Mesh, nas):
    real, ma, mb = nas
    one = mesh.node("a", share=ma, home="machine-1")
    two = mesh.node("a", share=mb, home="machine-2")  # a cloned VM: same node_id, its own index
    other = mesh.node("b", share=ma)
    for n in (one, two, other):
        n.start(MESHSYNC_WATCH__POLL_INTERVAL="0.3")
    wait_for(lambda: all(n.status().get("last_sync") for n in (one, two)), 30,
             what="daemons ready")
    def put(n: MeshNode, key: str) -> None:
        """A write through n's daemon, waited for until its pass is over."""
        n.cli("put", "mesh", key, "1")
        wait_for(lambda: f"mesh:{key}" in (n.status().get("last_change")
                                           or {}).get("items", []), 30, what=f"{key} exported")

    # Passes that write, in turns: whichever daemon marked the node file first, each then
    # finds the other's mark.
    put(one, "w1")
    put(two, "w2")
    put(one, "w3")
    for n in (one, two):
        c = clash(n)
        assert c is not None and c["node_id"] == "a" and c["pid"] != n.daemon.pid, (n.home.name, c)
    assert clash(other) is None
    text = one.cli("status").stdout
    assert "two machines use node id a" in text and "give each its own node_id" in text
    for n in (one, two):
        doc = n.cli("doctor", check=2).stdout
        assert "FAIL  node id" in doc and "two machines use node id a" in doc
        wait_for(lambda n=n: "ERROR two machines use node id a" in n.log(), 10, what="logged")
    seen = {n.home.name: clash(n)["seen_at"] for n in (one, two)}
    put(two, "w4")  # more passes, each seeing the other again: still logged once
    put(one, "w5")
    for n in (one, two):
        assert clash(n)["seen_at"] > seen[n.home.name]
        assert n.log().count("two machines use node id a") == 1
    for n in (one, two, other):
        assert n.stop() == 0
