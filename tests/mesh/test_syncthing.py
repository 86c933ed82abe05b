"""meshsync on a share replicated by Syncthing (issue 17): real Syncthing, real daemons.

Each node's share is its own Syncthing folder (tests/syncthing_helpers.py starts real
`syncthing` 1.19 processes on loopback); meshsync only ever sees its local folder, so
every change travels daemon -> folder -> Syncthing -> peer's folder -> peer's daemon.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from helpers import Mesh, MeshNode, wait_for
from syncthing_helpers import SyncthingMesh, wait_file

from meshsync.replicas.index.store import Index

UPSERT = ("INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) VALUES (?, ?, ?, ?, ?) "
          "ON CONFLICT(scope, key) DO UPDATE SET value = excluded.value, node_id = excluded.node_id, "
          "updated_at = excluded.updated_at")
SLOW = 90  # seconds: Syncthing's watcher delay + pull, and a daemon pass, under a loaded CI


@pytest.fixture
def syncthing(tmp_path: Path):
    """Start real Syncthing instances: ``syncthing("a", "b")``; all stopped at the end."""
    started: list[SyncthingMesh] = []

    def start(*names: str) -> SyncthingMesh:
        m = SyncthingMesh(tmp_path, list(names))
        started.append(m)
        return m.start()

    yield start
    for m in started:
        m.stop()
    for m in started:
        assert not any(n.running for n in m.nodes.values())


def skill_text(name: str, body: str) -> str:
    """A SKILL.md OpenClaw loads (frontmatter), so that no warning is expected of it."""
    return f"---\nname: {name}\ndescription: a test skill\n---\n{body}\n"


def st_node(mesh: Mesh, stm: SyncthingMesh, name: str, init: bool = True) -> MeshNode:
    """The meshsync node ``name`` on Syncthing instance ``name``'s folder (``init``:
    `meshsync init` run as it)."""
    return mesh.node(name, share=stm[name].folder, init=init)


def joined(mesh: Mesh, stm: SyncthingMesh, name: str) -> MeshNode:
    """Node ``name`` once the share's marker has reached its folder through Syncthing;
    its index made in-process, as `meshsync init` would make it (a process start saved:
    test_writes_from_every_entry_point_reach_every_node runs `init` on every node)."""
    wait_file(stm[name].folder / ".meshsync" / "README", timeout=SLOW)
    n = st_node(mesh, stm, name, init=False)
    Index(n.index).close()
    return n


def start_daemon(*nodes: MeshNode, **env: str) -> None:
    """Start the daemons of ``nodes`` side by side and wait until each is ready."""
    for n in nodes:
        n.start(**env)
    for n in nodes:
        wait_for(lambda n=n: "ready: first pass done" in n.log(), SLOW, what=f"{n.node_id}'s daemon ready")


def rows(n: MeshNode) -> dict[str, tuple]:
    return {f"{s}:{k}": (json.loads(v), nid, u) for s, k, v, nid, u in
            n.sql("SELECT scope, key, value, node_id, updated_at FROM mesh_memory WHERE scope != 'node'")}


def skills(n: MeshNode) -> dict[str, tuple]:
    return {name: (c, u) for name, c, u in n.sql("SELECT name, content, updated_at FROM mesh_skills")}


def cache_view(n: MeshNode) -> dict[str, tuple]:
    return {k: (e["value"], e["nodeId"], e["ts"]) for k, e in n.cache().items() if not k.startswith("node:")}


def cache_skills(n: MeshNode) -> dict[str, bytes]:
    d = n.cache_skills
    return {p.name: p.read_bytes() for p in d.iterdir()} if d.is_dir() else {}


def agreed(nodes: list[MeshNode]) -> bool:
    """Every node's index and cache hold the same items (R1)."""
    first = rows(nodes[0])
    sk = skills(nodes[0])
    return all(rows(n) == first and cache_view(n) == first and skills(n) == sk
               and len(cache_skills(n)) == len(sk) for n in nodes)


def wait_value(nodes: list[MeshNode], scope: str, key: str, value, what: str = "") -> None:
    """Wait until every node's index and cache hold ``value`` (None: absent) for scope:key."""
    def ok() -> bool:
        for n in nodes:
            got = n.value(scope, key)
            c = n.cache().get(f"{scope}:{key}")
            if got != value or (c["value"] if c else None) != value:
                return False
        return True
    wait_for(ok, SLOW, interval=0.1, what=what or f"{scope}:{key} == {value!r} on every node")


def problems(n: MeshNode) -> list:
    """Everything `status --json` lists as a problem or warning of this node."""
    return n.status()["errors"]


def wait_full_pass(n: MeshNode, after: float) -> None:
    """Wait until the daemon of ``n`` has run a full rescan that started after ``after``
    (status's last_pass, read from the index: a `status` process per poll took longer
    than the 2 s rescans waited for)."""
    def done() -> bool:
        got = n.sql("SELECT v FROM meshsync_meta WHERE k = 'last_pass'")
        lp = json.loads(got[0][0]) if got and got[0][0] else {}
        return bool(lp.get("full")) and lp.get("started", 0) > after
    wait_for(done, SLOW, interval=0.1, what=f"a full pass of {n.node_id} after {after}")


def sync_conflicts(root: Path) -> list[str]:
    """Syncthing's conflict copies in a replica (not the ones it is still pulling)."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.sync-conflict-*")
                  if not p.name.startswith(".syncthing."))


def wait_no_copies(stm: SyncthingMesh) -> None:
    """Wait until no replica holds a conflict copy: every copy is folded by the full
    pass its arrival starts (memory files, skill folders, tombstones)."""
    def none() -> bool:
        return all(sync_conflicts(n.folder) == [] for n in stm.nodes.values())
    wait_for(none, SLOW, interval=0.2, what="no conflict copy left in any replica")


# --- what must work ---------------------------------------------------------------------------


@pytest.mark.parametrize("names", [("a", "b"), ("a", "b", "c")], ids=["two", "three"])
def test_writes_from_every_entry_point_reach_every_node(mesh: Mesh, syncthing, names):
    stm = syncthing(*names)
    first = st_node(mesh, stm, names[0])
    for other in names[1:]:  # the marker reaches each replica through Syncthing
        wait_file(stm[other].folder / ".meshsync" / "README", timeout=SLOW)
    nodes = [first] + [st_node(mesh, stm, n) for n in names[1:]]
    start_daemon(*nodes)

    # The CLI on the first node, a foreign SQLite writer on the second, a hand-made file
    # in the last node's folder, a skill through the CLI.
    nodes[0].cli("put", "mesh", "from.cli", '{"n": 1}')
    nodes[1].sqlite3_cli("INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) "
                         f"VALUES ('user:alice', 'from.sql', '\"sql\"', 'tool', {int(time.time())});")
    hand = stm[names[-1]].folder / "memory" / "mesh" / "by.hand.json"
    hand.write_text(json.dumps({"value": ["hand", "made"]}))
    skill_md = nodes[-1].home / "SKILL.md"
    skill_md.write_text(skill_text("helper", "ships with the mesh"))
    nodes[0].cli("skill", "put", "helper", str(skill_md))

    wait_value(nodes, "mesh", "from.cli", {"n": 1})
    wait_value(nodes, "user:alice", "from.sql", "sql")
    wait_value(nodes, "mesh", "by.hand", ["hand", "made"])
    wait_for(lambda: all(cache_skills(n).get("helper.md") == skill_text("helper", "ships with the mesh").encode() for n in nodes),
             SLOW, what="the skill in every cache")
    wait_for(lambda: agreed(nodes), SLOW, what="every index and cache agree")

    # An update and deletes, each from another node, stick everywhere.
    nodes[-1].cli("put", "mesh", "from.cli", '{"n": 2}')
    wait_value(nodes, "mesh", "from.cli", {"n": 2})
    nodes[-1].cli("rm", "mesh", "from.cli")
    nodes[0].sql("DELETE FROM mesh_memory WHERE scope = 'user:alice' AND key = 'from.sql'")
    (stm[names[1]].folder / "memory" / "mesh" / "by.hand.json").unlink()
    nodes[1].cli("skill", "rm", "helper")
    wait_value(nodes, "mesh", "from.cli", None)
    wait_value(nodes, "user:alice", "from.sql", None)
    wait_value(nodes, "mesh", "by.hand", None)
    wait_for(lambda: all("helper.md" not in cache_skills(n) and not skills(n) for n in nodes), SLOW,
             what="the skill deleted everywhere")
    stm.wait_in_sync(SLOW)
    wait_for(lambda: agreed(nodes) and rows(nodes[0]) == {}, SLOW, what="all deleted everywhere")
    for name in names:
        f = stm[name].folder
        assert not (f / "memory" / "mesh" / "from.cli.json").exists()
        assert not (f / "skills" / "helper").exists()
    wait_no_copies(stm)
    for n in nodes:
        assert problems(n) == [], n.node_id
        assert n.daemon.poll() is None



def test_offline_node_does_not_bring_deleted_items_back(mesh: Mesh, syncthing):
    """R4 on Syncthing: C's Syncthing is down while A and B delete items (CLI, index, by
    hand, a skill); C's daemon keeps running on its stale replica, and writes meanwhile.
    When C's Syncthing is back, the deletes reach C and nothing comes back anywhere."""
    stm = syncthing("a", "b", "c")
    a = st_node(mesh, stm, "a")
    b, c = joined(mesh, stm, "b"), joined(mesh, stm, "c")
    nodes = [a, b, c]
    keys = [f"k{i}" for i in range(30)]
    for k in keys:
        a.sql(UPSERT, ("mesh", k, json.dumps(k), "tool", int(time.time())))
    skill_md = a.home / "SKILL.md"
    skill_md.write_text(skill_text("old", "old"))
    a.cli("skill", "put", "old", str(skill_md))
    start_daemon(*nodes)
    wait_for(lambda: all(len(rows(n)) == 30 and "old.md" in cache_skills(n) for n in nodes), SLOW,
             what="every item on every node")
    stm.wait_in_sync(SLOW)

    stm["c"].stop()  # C is apart: its daemon runs on, on a replica nobody updates
    a.cli("rm", "mesh", "k0")
    for k in keys[1:10]:
        a.cli("rm", "mesh", k)
    b.sql("DELETE FROM mesh_memory WHERE key IN ('k10', 'k11', 'k12', 'k13', 'k14')")
    for k in keys[15:20]:
        (stm["b"].folder / "memory" / "mesh" / f"{k}.json").unlink()
    b.cli("skill", "rm", "old")
    c.cli("put", "mesh", "while.apart", '"c wrote this alone"')
    gone = keys[:20]
    wait_for(lambda: all(set(rows(n)) == {f"mesh:{k}" for k in keys[20:]} for n in (a, b)), SLOW,
             what="the deletes on A and B")
    assert len(rows(c)) == 31 and "old.md" in cache_skills(c), "C saw the deletes without Syncthing?"

    stm["c"].start()
    stm.wait_connected()
    want = {f"mesh:{k}" for k in keys[20:]} | {"mesh:while.apart"}
    wait_for(lambda: all(set(rows(n)) == want for n in nodes), SLOW, what="C took the deletes, A and B C's write")
    stm.wait_in_sync(SLOW)
    wait_for(lambda: agreed(nodes), SLOW, what="every index and cache agree")
    # Nothing came back: not in any index or cache, not as a file in any replica.
    for n in nodes:
        assert set(rows(n)) == want and set(cache_view(n)) == want and skills(n) == {}
        assert "old.md" not in cache_skills(n)
        assert problems(n) == [], (n.node_id, problems(n))
    for name in ("a", "b", "c"):
        f = stm[name].folder
        assert not any((f / "memory" / "mesh" / f"{k}.json").exists() for k in gone), name
        assert not (f / "skills" / "old").exists(), name
    wait_no_copies(stm)




@pytest.mark.parametrize("newer", ["update", "delete"])
def test_delete_and_update_while_apart_newer_wins(mesh: Mesh, syncthing, newer):
    """R4 with Syncthing in between: A deletes an item while B, cut off, updates it (or
    the other way round in time).  Syncthing on its own lets a change beat a delete; on
    meshsync's side the newer of the two wins, on both nodes, and nothing is left over."""
    stm = syncthing("a", "b")
    a = st_node(mesh, stm, "a")
    b = joined(mesh, stm, "b")
    a.cli("put", "mesh", "k", '"base"')
    start_daemon(a, b, MESHSYNC_WATCH__RESCAN_INTERVAL="2")
    wait_value([a, b], "mesh", "k", "base")
    stm.wait_in_sync(SLOW)
    stm["b"].stop()
    if newer == "update":
        a.cli("rm", "mesh", "k")
        # A put is stamped with its row's updated_at, whole seconds (the seed's schema),
        # a delete to the millisecond: a put in the same second as the delete is older.
        second = int(time.time())
        wait_for(lambda: int(time.time()) > second, 5, what="the next second")
        b.cli("put", "mesh", "k", '"b, after the delete"')
        want = "b, after the delete"
    else:
        b.cli("put", "mesh", "k", '"b, before the delete"')
        a.cli("rm", "mesh", "k")
        want = None
    stm["b"].start()
    stm.wait_connected()
    wait_value([a, b], "mesh", "k", want)
    stm.wait_in_sync(SLOW)
    for n in (a, b):
        wait_full_pass(n, time.time())
    stm.wait_in_sync(SLOW)
    wait_value([a, b], "mesh", "k", want)
    for name in ("a", "b"):
        f = stm[name].folder / "memory" / "mesh" / "k.json"
        assert f.exists() == (want is not None), name
    wait_no_copies(stm)
    for n in (a, b):
        assert problems(n) == [], (n.node_id, problems(n))



def test_the_same_delete_on_two_nodes_apart_leaves_no_copy(mesh: Mesh, syncthing):
    """Both nodes delete the same items while apart (or one takes a file's deletion for a
    local delete before the other's tombstone arrives, which three nodes hit by chance):
    each writes the item's tombstone, and Syncthing keeps one and renames the other to a
    `.sync-conflict-` copy in `.meshsync/tombstones/`.  Both say "deleted": the newer is
    kept at the tombstone's path (R4) and the copy removed, so none piles up."""
    stm = syncthing("a", "b")
    a = st_node(mesh, stm, "a")
    b = joined(mesh, stm, "b")
    md = a.home / "SKILL.md"
    md.write_text(skill_text("gone", "soon"))
    a.cli("skill", "put", "gone", str(md))
    for k in ("k1", "k2", "kept"):
        a.cli("put", "mesh", k, f'"{k}"')
    start_daemon(a, b, MESHSYNC_WATCH__RESCAN_INTERVAL="2")
    wait_value([a, b], "mesh", "kept", "kept")
    wait_for(lambda: "gone.md" in cache_skills(b), SLOW, what="the skill on b")
    stm.wait_in_sync(SLOW)
    stm["b"].stop()
    for n in (b, a):  # B first: A's tombstones are the newer ones
        n.cli("rm", "mesh", "k1")
        n.sql("DELETE FROM mesh_memory WHERE key = 'k2'")
        n.cli("skill", "rm", "gone")
        # The SQL delete is stamped when the daemon sees it: B's must be seen before A
        # deletes, or a loaded machine could stamp B's k2 after A's.
        tombs = stm[n.node_id].folder / ".meshsync" / "tombstones"
        wait_for(lambda tombs=tombs: len([p for p in tombs.rglob("*.json")]) == 3, SLOW,
                 what=f"{n.node_id}'s own tombstones")
    stm["b"].start()
    stm.wait_connected()
    stm.wait_in_sync(SLOW)
    t0 = time.time()
    for n in (a, b):
        wait_full_pass(n, t0)
    wait_no_copies(stm)
    stm.wait_in_sync(SLOW)
    for n in (a, b):
        assert set(rows(n)) == {"mesh:kept"} and skills(n) == {} and set(cache_view(n)) == {"mesh:kept"}
        assert problems(n) == [], (n.node_id, problems(n))
    for x in ("a", "b"):
        t = stm[x].folder / ".meshsync" / "tombstones"
        names = sorted(p.relative_to(t).as_posix() for p in t.rglob("*.json"))
        assert names == ["memory/mesh/k1.json", "memory/mesh/k2.json", "skills/gone.json"], (x, names)
        # A's tombstones, the newer, are the ones kept.
        assert all(json.loads((t / n).read_text())["node_id"] == "a" for n in names), x


def test_syncthing_files_are_never_items_nor_problems(mesh: Mesh, syncthing):
    """Syncthing's own files in a replica: `.stfolder`, `.stignore`, the `.stversions/`
    copies its versioning keeps of replaced and deleted files (valid memory files and
    SKILL.md, under the share's own layout), and `.syncthing.*.tmp` temporaries, in scope
    folders, skill folders and the root.  None becomes an item, none is a problem, and
    full rescans (every 2 s here) do not change that (R6, SPEC section 2)."""
    stm = syncthing("a", "b")
    stm["b"].set_folder(versioning={"type": "simple", "params": {"keep": "5"}, "cleanupIntervalS": 3600,
                                    "fsPath": "", "fsType": "basic"})
    a = st_node(mesh, stm, "a")
    b = joined(mesh, stm, "b")
    for name in ("a", "b"):
        (stm[name].folder / ".stignore").write_text("// meshsync's own temporary files\n(?d).meshsync-tmp-*\n")
    skill_md = a.home / "SKILL.md"
    skill_md.write_text(skill_text("tool", "first"))
    a.cli("put", "mesh", "kept", '"one"')
    a.cli("put", "mesh", "dropped", '"soon gone"')
    a.cli("skill", "put", "tool", str(skill_md))
    start_daemon(a, b, MESHSYNC_WATCH__RESCAN_INTERVAL="2")
    wait_value([a, b], "mesh", "dropped", "soon gone")
    wait_for(lambda: cache_skills(b).get("tool.md") == skill_text("tool", "first").encode(), SLOW, what="skill on b")

    # Replaced and deleted on A: B's Syncthing keeps the old files in .stversions/.
    a.cli("put", "mesh", "kept", '"two"')
    skill_md.write_text(skill_text("tool", "second"))
    a.cli("skill", "put", "tool", str(skill_md))
    a.cli("rm", "mesh", "dropped")
    wait_value([a, b], "mesh", "kept", "two")
    wait_value([a, b], "mesh", "dropped", None)
    wait_for(lambda: cache_skills(b).get("tool.md") == skill_text("tool", "second").encode(), SLOW, what="new skill on b")
    versions = stm["b"].folder / ".stversions"
    wait_for(lambda: {p.name.split("~")[0] for p in versions.rglob("*~*")} >= {"kept", "SKILL"},
             SLOW, what="Syncthing's versions of the replaced files in .stversions/")
    # Temporaries as Syncthing names them, holding what would be valid items.
    bf = stm["b"].folder
    (bf / "memory" / "mesh" / ".syncthing.ghost.json.tmp").write_text(json.dumps({"value": "ghost"}))
    (bf / "skills" / "tool" / ".syncthing.SKILL.md.tmp").write_text("# half a skill\n")
    (bf / "skills" / ".syncthing.loose.tmp").write_text("x")
    (bf / ".syncthing.root.tmp").write_text("x")
    t0 = time.time()
    b.cli("put", "mesh", "after", '"marker of a later pass"')
    wait_value([a, b], "mesh", "after", "marker of a later pass")
    for n in (a, b):
        wait_full_pass(n, t0)

    want = {"mesh:kept": ("two",), "mesh:after": ("marker of a later pass",)}
    for n in (a, b):
        assert {k: (v[0],) for k, v in rows(n).items()} == want, n.node_id
        assert set(cache_view(n)) == set(want)
        assert skills(n)["tool"][0] == skill_text("tool", "second")
        assert cache_skills(n) == {"tool.md": skill_text("tool", "second").encode()}
        assert problems(n) == [], (n.node_id, problems(n))
    wait_no_copies(stm)
    for name in ("a", "b"):
        assert not (stm[name].folder / "memory" / "mesh" / "dropped.json").exists()



def test_start_order_does_not_matter(mesh: Mesh, syncthing):
    """B's and C's daemons start before any node initialised the share, C's Syncthing
    later still: a replica without the marker is "not mounted" (R5): the node waits,
    deletes nothing, says why in `status` (naming Syncthing, not a NAS), keeps what a
    foreign client writes into its index meanwhile, and joins by itself."""
    stm = syncthing("a", "b", "c")
    stm["c"].stop()
    b, c = st_node(mesh, stm, "b", init=False), st_node(mesh, stm, "c", init=False)
    for n in (b, c):
        n.start()
    for n in (b, c):
        wait_for(lambda n=n: "share unavailable:" in n.log(), SLOW, what=f"{n.node_id} waits for the marker")
        st = n.status()
        assert st["share"]["available"] is False and st["daemon"]["running"] is True
        reason = st["share"]["reason"]
        assert "Syncthing folder" in reason and ".meshsync/" in reason, reason
        assert "not mounted" not in reason, reason
        assert "Syncthing" in n.cli("status").stdout
    b.sql(UPSERT, ("mesh", "b.waited", '"written while b waited"', "tool", int(time.time())))

    a = st_node(mesh, stm, "a")  # the first node initialises the share: the marker travels
    a.cli("put", "mesh", "early", '"from a"')
    start_daemon(a)
    wait_value([a, b], "mesh", "early", "from a")
    wait_value([a, b], "mesh", "b.waited", "written while b waited")
    assert "share available again" in b.log()
    assert c.status()["share"]["available"] is False  # its Syncthing is still down

    stm["c"].start()
    stm.wait_connected()
    wait_value([a, b, c], "mesh", "early", "from a")
    wait_value([a, b, c], "mesh", "b.waited", "written while b waited")
    c.cli("put", "mesh", "from.c", '"c is in"')
    wait_value([a, b, c], "mesh", "from.c", "c is in")
    wait_for(lambda: agreed([a, b, c]), SLOW, what="every index and cache agree")
    for n in (a, b, c):
        assert n.status()["share"]["available"] is True
        assert problems(n) == [], (n.node_id, problems(n))


def conflicts(n: MeshNode) -> dict[str, list]:
    """The node's conflict history: item -> the beaten values (a skill's: its content)."""
    out: dict[str, list] = {}
    for r in n.cli_json("conflicts")["conflicts"]:
        b = r["beaten"]
        out.setdefault(r["item"], []).append(b["value"] if "value" in b else b.get("content"))
    return out


def test_conflict_copies_are_folded_into_newest_wins(mesh: Mesh, syncthing):
    """Issue 17's first point (R1, R2 on Syncthing): B is cut off while both nodes write
    the same items; back together, Syncthing keeps one file of each and renames the other
    to `<name>.sync-conflict-<date>-<time>-<device>.<ext>`, also inside the skill's folder.
    meshsync folds each copy into newest-`updated_at`-wins like any other version: the
    winner everywhere (for k2 it is the copy's version: B wrote last, but its file's
    mtime is an hour back, so Syncthing kept A's file), the beaten version in every
    node's conflict history, no item made from a copy's name, and no copy left once its
    version is recorded."""
    stm = syncthing("a", "b")
    a = st_node(mesh, stm, "a")
    b = joined(mesh, stm, "b")
    md = a.home / "SKILL.md"
    md.write_text(skill_text("tool", "base"))
    a.cli("put", "mesh", "k1", '"base"')
    a.cli("put", "mesh", "k2", '"base"')
    a.cli("skill", "put", "tool", str(md))
    start_daemon(a, b, MESHSYNC_WATCH__RESCAN_INTERVAL="2")
    wait_value([a, b], "mesh", "k2", "base")
    wait_for(lambda: cache_skills(b).get("tool.md") == skill_text("tool", "base").encode(), SLOW, what="skill")
    stm.wait_in_sync(SLOW)

    stm["b"].stop()
    md_b = b.home / "SKILL.md"
    md_b.write_text(skill_text("tool", "b, older"))
    b.cli("skill", "put", "tool", str(md_b))
    b.cli("put", "mesh", "k1", '"b, older"')
    a.cli("put", "mesh", "k2", '"a, older"')
    md.write_text(skill_text("tool", "a, newer"))
    a.cli("skill", "put", "tool", str(md))
    a.cli("put", "mesh", "k1", '"a, newer"')
    b.cli("put", "mesh", "k2", '"b, newer"')
    k2_b = stm["b"].folder / "memory" / "mesh" / "k2.json"
    wait_for(lambda: json.loads(k2_b.read_text())["value"] == "b, newer", SLOW, what="b's k2 file")
    hour_back = time.time() - 3600
    os.utime(k2_b, (hour_back, hour_back))  # Syncthing keeps the newer mtime: A's file
    wait_for(lambda: b.value("mesh", "k2") == "b, newer", SLOW, what="b's index")
    stm["b"].start()
    stm.wait_connected()

    wait_value([a, b], "mesh", "k1", "a, newer")
    wait_value([a, b], "mesh", "k2", "b, newer")
    want_md = skill_text("tool", "a, newer")
    wait_for(lambda: all(cache_skills(n).get("tool.md") == want_md.encode() for n in (a, b)), SLOW,
             what="the newer skill on both")
    wait_no_copies(stm)
    stm.wait_in_sync(SLOW)
    for n in (a, b):
        wait_full_pass(n, time.time())
    # Each beaten version is in the history of the node that folded its copy (the node
    # whose file Syncthing replaced, B here; the other may fold it too if the copy reached
    # it first).  Where the history lives on the share, every node lists it.
    h: dict[str, list] = {}
    for n in (a, b):
        for item, values in conflicts(n).items():
            h.setdefault(item, []).extend(values)
    assert "b, older" in h.get("mesh:k1", []), h
    assert "a, older" in h.get("mesh:k2", []), h
    assert skill_text("tool", "b, older") in h.get("skill:tool", []), h
    for n in (a, b):
        assert not [k for k in rows(n) if "sync-conflict" in k] and not [s for s in skills(n) if "sync-conflict" in s]
        assert problems(n) == [], (n.node_id, problems(n))
    assert agreed([a, b])
    for x in ("a", "b"):
        f = stm[x].folder
        assert json.loads((f / "memory" / "mesh" / "k2.json").read_text())["value"] == "b, newer"
        assert (f / "skills" / "tool" / "SKILL.md").read_text() == want_md


def test_a_skill_whose_skill_json_arrives_late_leaves_no_copy(mesh: Mesh, syncthing):
    """A skill's files travel one by one: B gets A's new SKILL.md before its skill.json
    (made certain here by ignoring skill.json on B for a while).  B may take the pair for
    a hand edit and write its own skill.json (when A's arrives, Syncthing keeps one and
    renames the other a conflict copy, which is folded: both describe the same content),
    or take the folder as written and write nothing.  Either way no copy is left and the
    nodes agree on one version (R1, R8)."""
    stm = syncthing("a", "b")
    a = st_node(mesh, stm, "a")
    b = joined(mesh, stm, "b")
    md = a.home / "SKILL.md"
    md.write_text(skill_text("tool", "first"))
    a.cli("skill", "put", "tool", str(md))
    start_daemon(a, b, MESHSYNC_WATCH__RESCAN_INTERVAL="2")
    wait_for(lambda: cache_skills(b).get("tool.md") == skill_text("tool", "first").encode(), SLOW, what="skill")
    stm.wait_in_sync(SLOW)
    fid = stm.folder_id
    stm["b"].request("POST", f"/rest/db/ignores?folder={fid}", {"ignore": ["/skills/tool/skill.json"]})
    md.write_text(skill_text("tool", "second"))
    a.cli("skill", "put", "tool", str(md))
    wait_for(lambda: cache_skills(b).get("tool.md") == skill_text("tool", "second").encode(), SLOW,
             what="the new SKILL.md imported on b")
    wait_full_pass(b, time.time())  # whatever B writes of its own for the pair is written now
    stm["b"].request("POST", f"/rest/db/ignores?folder={fid}", {"ignore": []})
    stm.wait_in_sync(SLOW)
    wait_no_copies(stm)
    stm.wait_in_sync(SLOW)
    wait_for(lambda: agreed([a, b]), SLOW, what="one version of the skill on both")
    for x in ("a", "b"):
        assert (stm[x].folder / "skills" / "tool" / "SKILL.md").read_text() == skill_text("tool", "second")
    for n in (a, b):
        assert problems(n) == [], (n.node_id, problems(n))
