"""R2 on a NAS: writers racing on one key through separate network-mount clients.

Each node sees the share through its own bindfs FUSE view of one folder, as machines
see one NFS/SMB export: a write through one view raises no event on the others, and each
view's kernel answers ``lstat`` from an attribute cache (about 1 s, like ``actimeo=1``).
The compare-and-set just before an export's rename can therefore pass on a stale
attribute and replace another node's fresh export it never saw.  Whatever the outcome
of that race, every write must end as the winner or in the share's conflict history,
listed by ``meshsync conflicts`` on every node.

Issue 16 (found at aa07162): 9-11 of 30 beaten versions ended in no node's history.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Mesh, MeshNode, nas_views, wait_for
from sync_helpers import UPSERT, mem_path, quick_node

from meshsync import faults, formats, layout
from meshsync.layout import ItemId

ROUNDS = 6


@pytest.fixture
def nas3(tmp_path: Path) -> Iterator[tuple[Path, list[Path]]]:
    """Three bindfs views of one folder: three machines on one NAS (helpers.nas_views)."""
    with nas_views(tmp_path, ("mount-a", "mount-b", "mount-c")) as views:
        yield views


def _ready(n: MeshNode) -> bool:
    st = n.status()
    return bool(st.get("daemon", {}).get("running")) and st.get("last_sync") is not None


def _stopped(pid: int) -> bool:
    """Whether the process is stopped (state T in /proc: SIGSTOP has taken effect)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return stat[stat.rindex(b")") + 2:].split()[0] == b"T"


def _pause(n: MeshNode) -> None:
    """SIGSTOP ``n``'s daemon at a moment it holds no write transaction on its index: one
    stopped inside a transaction would keep the put waiting for the lock until the put
    gave up (exit 6, seen once in about ten runs).  Resumed and tried again otherwise."""
    d = n.daemon
    assert d is not None

    def paused() -> bool:
        d.send_signal(signal.SIGSTOP)
        wait_for(lambda: _stopped(d.pid), 10, interval=0.001, what=f"daemon {n.node_id} stopped")
        db = sqlite3.connect(n.index, timeout=0, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError:  # locked by the daemon: let it finish
            d.send_signal(signal.SIGCONT)
            return False
        finally:
            db.close()

    wait_for(paused, 30, interval=0.02, what=f"daemon {n.node_id} paused outside an index transaction")


def _at_once(nodes: list[MeshNode], writes: list[tuple[MeshNode, list[str], str | None]]) -> None:
    """The barrier: every daemon is paused (SIGSTOP) while each write (a node, a
    `meshsync` command, its standard input) lands in that node's index, then all resume
    together (SIGCONT) and export at the same instant.  (Without it, a daemon could
    import another node's write before its own landed: a write made after seeing that
    version, which overwrites it rightly.)"""
    for n in nodes:
        _pause(n)
    try:
        procs = [(subprocess.Popen([sys.executable, "-m", "meshsync", *args], env=n.env(), stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), stdin)
                 for n, args, stdin in writes]
        for p, stdin in procs:
            out, err = p.communicate(stdin, timeout=60)
            assert p.returncode == 0, (p.args, out, err)
    finally:
        for n in nodes:
            assert n.daemon is not None
            n.daemon.send_signal(signal.SIGCONT)


def _put_at_once(nodes: list[MeshNode], key: str, values: list[dict]) -> None:
    _at_once(nodes, [(n, ["put", "mesh", key, json.dumps(v)], None) for n, v in zip(nodes, values, strict=True)])


def _daemons(mesh: Mesh, mounts: list[Path]) -> list[MeshNode]:
    """A poll-mode daemon on each view (a NAS raises no event for another host's write)."""
    nodes = [mesh.node(name, share=m) for name, m in zip("abc", mounts, strict=True)]
    for n in nodes:
        n.start(MESHSYNC_WATCH__POLL_INTERVAL="0.3")
    wait_for(lambda: all(_ready(n) for n in nodes), 30, what="daemons ready")
    assert all(n.status()["watch"]["mode"] == "poll" for n in nodes)
    return nodes


def _history(n: MeshNode, why: str = "conflicts") -> list[dict]:
    """The share's conflict history (``why`` "conflicts") or its deleted items
    ("deleted") as ``n`` lists them (docs/schemas/conflicts.json, deleted.json)."""
    return n.cli_json(why, "--limit", "1000")[why]


def _same_everywhere(nodes: list[MeshNode], why: str = "conflicts") -> list[dict]:
    """The history every node lists: the same records on every node (it is on the share, R11)."""
    listed = [_history(n, why) for n in nodes]
    ids = sorted(h["id"] for h in listed[0])
    assert all(sorted(h["id"] for h in x) == ids for x in listed[1:]), listed
    return listed[0]


def _skill(n: MeshNode, name: str) -> str | None:
    """The skill's content in ``n``'s index (None: no such skill)."""
    rows = n.sql("SELECT content FROM mesh_skills WHERE name = ?", (name,))
    return rows[0][0] if rows else None


def _skill_md(real: Path, name: str) -> str | None:
    md = real / "skills" / name / "SKILL.md"
    return md.read_text() if md.exists() else None


def test_same_instant_writes_on_network_mounts_are_each_kept(mesh: Mesh, nas3):
    real, mounts = nas3
    nodes = _daemons(mesh, mounts)
    winners, written = [], []
    for r in range(ROUNDS):
        values = [{"round": r, "by": n.node_id} for n in nodes]
        written += values
        _put_at_once(nodes, "race", values)

        def settled(r: int = r) -> dict | None:
            got = {json.dumps(n.value("mesh", "race"), sort_keys=True) for n in nodes}
            on_share = json.loads(mem_path(real, "mesh", "race").read_text())["value"]
            if len(got) == 1 and json.loads(got.pop()) == on_share and on_share.get("round") == r:
                return on_share
            return None

        winners.append(wait_for(settled, 30, interval=0.1, what=f"round {r} converged"))
    # Every write is its round's winner or a beaten version in the share's history, and
    # every node lists the same history (it is on the share, R11).
    beaten = [h["beaten"]["value"] for h in _same_everywhere(nodes)]
    lost = [v for v in written if v not in winners and v not in beaten]
    assert not lost, f"{len(lost)} of {len(written) - ROUNDS} beaten versions in no history: {lost}"
    for n in nodes:
        assert n.stop() == 0


def test_same_instant_skill_puts_on_network_mounts_are_each_kept(mesh: Mesh, nas3):
    """R2 on a NAS for skills: a skill export writes SKILL.md, then skill.json (two
    renames, each after a compare-and-set a stale attribute can pass), so racing exports
    can also leave one node's SKILL.md beside another's skill.json.  Each beaten content
    must still end in the history."""
    real, mounts = nas3
    nodes = _daemons(mesh, mounts)
    winners, written = [], []
    for r in range(ROUNDS):
        contents = [f"# race\n\nround {r} by {n.node_id}\n" for n in nodes]
        written += contents
        _at_once(nodes, [(n, ["skill", "put", "race", "-"], c) for n, c in zip(nodes, contents, strict=True)])

        def settled(r: int = r) -> str | None:
            got = {_skill(n, "race") for n in nodes}
            md = _skill_md(real, "race")
            if len(got) == 1 and md is not None and got.pop() == md and f"round {r} " in md:
                return md
            return None

        winners.append(wait_for(settled, 30, interval=0.1, what=f"round {r} converged"))
    beaten = [h["beaten"]["content"] for h in _same_everywhere(nodes) if h["kind"] == "skill"]
    lost = [c for c in written if c not in winners and c not in beaten]
    assert not lost, f"{len(lost)} of {len(written) - ROUNDS} beaten skill versions in no history: {lost}"
    for n in nodes:
        assert n.stop() == 0


def _export_as_b(real: Path, name: str, content: str, stamp: int, replaces: str | None, md_only: bool) -> None:
    """What node b's export leaves on the share when its compare-and-set passed on a
    stale attribute: its SKILL.md, then its skill.json naming the version b saw
    (``md_only``: b's SKILL.md alone, landed before a's skill.json, as when the two
    exports' renames interleave; its mtime is then older than that skill.json's)."""
    it = layout.skill_id(name)
    folder = real / layout.item_path(it, "b")
    md, meta = folder / layout.SKILL_MD, folder / layout.SKILL_JSON
    md.write_text(content)
    if md_only:
        ns = meta.stat().st_mtime_ns - 1_000_000
        os.utime(md, ns=(ns, ns))
        return
    doc = json.loads(formats.render_skill_json(it, None, formats.skill_digest(content.encode(), None, ""), stamp, "b"))
    if replaces is not None:
        doc["replaces"] = replaces
    meta.write_text(json.dumps(doc))


@pytest.mark.parametrize("case", ["unseen", "interleaved", "older", "seen"])
def test_an_own_skill_export_replaced_unseen_is_kept(mesh: Mesh, case: str):
    """The skill race's outcomes, made by hand (deterministic): node a's fresh export of
    a skill is replaced by node b's export that did not see it ("unseen": b's skill.json
    names another version; "interleaved": b's SKILL.md beside a's skill.json; "older":
    b's skill.json names nothing, as an older meshsync's), or that saw it ("seen": b's
    skill.json names a's version).  Unseen, a's content must be in the history once a
    syncs; seen, it is an ordinary successor: no record."""
    a = mesh.node("a")
    mine = "# race\n\nby a\n"
    a.cli("skill", "put", "race", "-", input=mine)
    a.sync()
    meta = json.loads((mesh.share / "skills" / "race" / "skill.json").read_text())
    it = layout.skill_id("race")
    a_rev = formats.rev(it, formats.skill_digest(mine.encode(), None, ""), meta["updated_at_ms"], "a")
    assert meta["rev"] == a_rev and "replaces" not in meta  # a replaced no version
    theirs = "# race\n\nby b\n"
    replaces = {"seen": a_rev, "older": None}.get(case, formats.rev(it, "0" * 32, 1, "c"))
    _export_as_b(mesh.share, "race", theirs, meta["updated_at_ms"] + 1000, replaces, md_only=case == "interleaved")
    a.sync()
    assert _skill(a, "race") == theirs
    kept = [h["beaten"]["content"] for h in _history(a)]
    assert kept == ([] if case == "seen" else [mine])


@pytest.mark.parametrize("newer", ["delete", "export"])
@pytest.mark.parametrize("kind", [layout.MEM, layout.SKILL])
def test_a_delete_that_removed_an_unseen_export_keeps_it(mesh: Mesh, kind: str, newer: str):
    """The delete race made deterministic: node b deletes an item whose base it holds as
    v1; once b has looked at the share, node a exports v2 (b never sees it), and b's
    compare-and-set passes as on a network client with a stale attribute, so b's delete
    removes a's v2 from the share.  a still holds v2 as its base: when the delete is the
    newer, a keeps v2 in the history as the deleted item's last value (`meshsync
    deleted`, every node); when v2 is the newer, a exports it again and it wins."""
    a_n, b_n = mesh.node("a"), quick_node(mesh, "b")
    a, b = mesh.engine(a_n), mesh.engine(b_n)
    it = layout.memory_id("mesh", "k") if kind == layout.MEM else layout.skill_id("k")
    v1, v2 = ('"v1"', '"v2"') if kind == layout.MEM else ("# k\n\nv1\n", "# k\n\nv2\n")

    def write(n: MeshNode, text: str, at: int) -> None:  # as a foreign client, at Unix second ``at``
        if kind == layout.MEM:
            n.sql(UPSERT, ("mesh", "k", text, n.node_id, at))
        else:
            n.sql("INSERT INTO mesh_skills(name, source_node, content, updated_at) VALUES('k', ?, ?, ?) "
                  "ON CONFLICT(name) DO UPDATE SET content = excluded.content, source_node = excluded.source_node,"
                  " updated_at = excluded.updated_at", (n.node_id, text, at))

    write(a_n, v1, int(time.time()) - 120)
    a.sync()
    b.sync()
    # The delete is stamped when b's pass sees it (now); v2 before it (R3: after v1) or after it.
    write(a_n, v2, int(time.time()) + (-60 if newer == "delete" else 30))
    assert b.delete_item(it)
    exported = []

    def a_exports_unseen(item: ItemId) -> None:
        if not exported:
            exported.append(item)
            a.sync()  # a's export of v2 lands after b looked at the share

    faults.install("propagate.before_export", a_exports_unseen)
    faults.install("share.unchanged", lambda ok: True)  # b's check passes on a stale attribute
    try:
        b.sync()
    finally:
        faults.clear()
    assert exported == [it]
    path = mesh.share / layout.item_path(it, "")
    assert not path.exists()  # b removed v2, which it never saw
    for e in (a, b, a, b):
        e.sync()
    got = [_value(n, kind) for n in (a_n, b_n)]
    if newer == "delete":
        assert got == [None, None] and not path.exists()
        for n in (a_n, b_n):
            assert v2 in [_kept(h["last"], kind) for h in _history(n, "deleted")]
    else:
        assert got == [v2, v2] and path.exists()


def _value(n: MeshNode, kind: str) -> str | None:
    """The item's value text (memory) or content (skill) in ``n``'s index."""
    if kind == layout.MEM:
        r = n.row("mesh", "k")
        return None if r is None else r[0]
    return _skill(n, "k")


def _kept(version: dict, kind: str) -> str | None:
    """A history record's kept value, as _value gives it."""
    return json.dumps(version["value"]) if kind == layout.MEM else version["content"]


DELETE_ROUNDS = 4


def test_delete_racing_an_unseen_export_on_network_mounts_keeps_it(mesh: Mesh, nas3):
    """R2, R4 on a NAS: node a exports v2 while node b, whose base is v1 (it never saw
    v2), deletes the item (removes the file or folder, writes a tombstone), a memory item
    and a skill at one instant.  b's compare-and-set can pass on a stale attribute and
    remove a's fresh v2.  Whichever wins, v2 must end as the value on every node or in
    `meshsync deleted` (or `conflicts`) on every node."""
    real, mounts = nas3
    nodes = _daemons(mesh, mounts)
    a, b, _ = nodes
    outcomes: list[tuple[str, str, bool]] = []  # (item, v2, whether v2 won)
    for r in range(DELETE_ROUNDS):
        v1, v2 = {"round": r, "v": 1}, {"round": r, "v": 2}
        md1, md2 = f"# gone\n\nround {r} v1\n", f"# gone\n\nround {r} v2\n"
        a.cli("put", "mesh", "gone", json.dumps(v1))
        a.cli("skill", "put", "gone", "-", input=md1)
        wait_for(lambda v1=v1, md1=md1: all(n.value("mesh", "gone") == v1 and _skill(n, "gone") == md1
                                            for n in nodes), 30, interval=0.1, what=f"round {r}: v1 everywhere")
        _at_once(nodes, [(a, ["put", "mesh", "gone", json.dumps(v2)], None),
                         (a, ["skill", "put", "gone", "-"], md2),
                         (b, ["rm", "mesh", "gone"], None), (b, ["skill", "rm", "gone"], None)])

        def settled(v2: dict = v2, md2: str = md2) -> tuple[bool, bool] | None:
            values = [json.dumps(n.value("mesh", "gone")) for n in nodes]
            skills = {_skill(n, "gone") for n in nodes}
            f = mem_path(real, "mesh", "gone")
            on_share = json.loads(f.read_text())["value"] if f.exists() else None
            md = _skill_md(real, "gone")
            if len(set(values)) == 1 and json.loads(values[0]) == on_share and skills == {md} and \
                    on_share in (None, v2) and md in (None, md2):
                return on_share == v2, md == md2
            return None

        mem_won, skill_won = wait_for(settled, 30, interval=0.1, what=f"round {r} converged")
        outcomes += [("memory", json.dumps(v2, sort_keys=True), mem_won), ("skill", md2, skill_won)]
    kept = {json.dumps(h["last"]["value"], sort_keys=True) if h["kind"] == "memory" else h["last"]["content"]
            for h in _same_everywhere(nodes, "deleted")}
    kept |= {json.dumps(h["beaten"]["value"], sort_keys=True) if h["kind"] == "memory" else h["beaten"]["content"]
             for h in _same_everywhere(nodes)}
    lost = [(kind, v) for kind, v, won in outcomes if not won and v not in kept]
    assert not lost, f"{len(lost)} of {len(outcomes)} exports a delete removed unseen are in no history: {lost}"
    for n in nodes:
        assert n.stop() == 0
