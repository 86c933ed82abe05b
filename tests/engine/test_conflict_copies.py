"""Syncthing's conflict copies folded into newest-wins (issue 17; R1, R2), without Syncthing.

A share that Syncthing syncs has a `.stfolder` marker; when two nodes changed a file while
apart, Syncthing keeps one and renames the other `<stem>.sync-conflict-<date>-<time>-
<device><ext>` beside it.  These tests make such copies the way Syncthing leaves them (the
bytes another node wrote for a version, under Syncthing's name) in a real folder and run
real `meshsync sync` processes on it: each copy's version takes part in newest-wins, the
loser lands in the conflict history, the copy goes once its version is recorded, and no
item is ever made from a copy's name.  tests/mesh/test_syncthing.py does the same end to end
with real Syncthing instances.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from helpers import Mesh, MeshNode, wait_for
from sync_helpers import mem_path, quick_node

TAG = "20260102-030405-ABCDEF7"  # <date>-<time>-<first 7 characters of a device id>


def copy_name(p: Path, tag: str = TAG) -> Path:
    """The name Syncthing gives a conflict copy of ``p``."""
    stem, dot, ext = p.name.rpartition(".")
    return p.with_name(f"{stem}.sync-conflict-{tag}.{ext}" if dot else f"{p.name}.sync-conflict-{tag}")


def beaten(n: MeshNode) -> dict[str, list]:
    """The node's conflict history: item -> the beaten values (a skill's: its content)."""
    out: dict[str, list] = {}
    for r in n.cli_json("conflicts")["conflicts"]:
        b = r["beaten"]
        out.setdefault(r["item"], []).append(b["value"] if "value" in b else b.get("content"))
    return out


def copies(share: Path) -> list[str]:
    return sorted(p.relative_to(share).as_posix() for p in share.rglob("*.sync-conflict-*"))


def keys(n: MeshNode) -> set[str]:
    return {f"{s}:{k}" for s, k in n.sql("SELECT scope, key FROM mesh_memory")}


def problems(n: MeshNode) -> list:
    return n.status()["errors"]


def skill_text(body: str) -> str:
    return f"---\nname: tool\ndescription: a test skill\n---\n{body}\n"


def syncthing_share(mesh: Mesh) -> tuple[MeshNode, MeshNode]:
    a = mesh.node("A")
    (mesh.share / ".stfolder").mkdir()  # what Syncthing puts at the top of a folder it syncs
    return a, quick_node(mesh, "B")


def test_a_memory_copy_that_lost_is_recorded_then_removed(mesh: Mesh):
    """A wrote k, then B wrote a newer k; Syncthing kept B's file and A's as a copy.  A,
    whose version (its base) lost to one written concurrently, records it as beaten."""
    a, b = syncthing_share(mesh)
    f = mem_path(mesh.share, "mesh", "k")
    a.cli("put", "mesh", "k", '"a, older"')
    a_bytes = f.read_bytes()
    b.sync()
    b.cli("put", "mesh", "k", '"b, newer"')
    copy_name(f).write_bytes(a_bytes)
    a.sync()
    assert a.value("mesh", "k") == "b, newer" and a.cache()["mesh:k"]["value"] == "b, newer"
    assert "a, older" in beaten(a).get("mesh:k", []), beaten(a)
    assert copies(mesh.share) == []
    assert json.loads(f.read_text())["value"] == "b, newer"
    for n in (a, b):
        n.sync()
        assert keys(n) == {"mesh:k"} and problems(n) == []


def test_a_memory_copy_that_is_newer_wins_everywhere(mesh: Mesh):
    """B wrote k after A, but Syncthing kept A's file (its mtime was newer) and made B's
    a copy: newest updated_at wins, so B's version goes back into k.json, A's is beaten."""
    a, b = syncthing_share(mesh)
    f = mem_path(mesh.share, "mesh", "k")
    a.cli("put", "mesh", "k", '"a, older"')
    a_bytes = f.read_bytes()
    b.sync()
    b.cli("put", "mesh", "k", '"b, newer"')
    b_bytes = f.read_bytes()
    f.write_bytes(a_bytes)
    copy_name(f).write_bytes(b_bytes)
    b.sync()
    assert copies(mesh.share) == []
    assert json.loads(f.read_text())["value"] == "b, newer"
    assert "a, older" in beaten(b).get("mesh:k", []), beaten(b)
    a.sync()
    for n in (a, b):
        assert n.value("mesh", "k") == "b, newer" and n.cache()["mesh:k"]["value"] == "b, newer"
        assert keys(n) == {"mesh:k"} and problems(n) == []


def test_copies_of_one_conflict_make_one_skill_version(mesh: Mesh):
    """A skill's SKILL.md and skill.json copies (one conflict: same device, not the same
    second) are one version of the skill; the one that lost is recorded, the copies go."""
    a, b = syncthing_share(mesh)
    md = a.home / "SKILL.md"
    md.write_text(skill_text("a, older"))
    a.cli("skill", "put", "tool", str(md))
    folder = mesh.share / "skills" / "tool"
    old = {name: (folder / name).read_bytes() for name in ("SKILL.md", "skill.json")}
    b.sync()
    md.write_text(skill_text("b, newer"))
    b.cli("skill", "put", "tool", str(md))
    copy_name(folder / "SKILL.md").write_bytes(old["SKILL.md"])
    copy_name(folder / "skill.json", "20260102-030406-ABCDEF7").write_bytes(old["skill.json"])
    a.sync()
    assert copies(mesh.share) == []
    assert skill_text("a, older") in beaten(a).get("skill:tool", []), beaten(a)
    b.sync()
    for n in (a, b):
        assert n.sql("SELECT name, content FROM mesh_skills") == [("tool", skill_text("b, newer"))]
        assert (n.cache_skills / "tool.md").read_text() == skill_text("b, newer")
        assert problems(n) == []
    assert (folder / "SKILL.md").read_text() == skill_text("b, newer")


def test_a_winning_skill_copy_brings_its_other_files(mesh: Mesh):
    """The newer version of a skill is in the copies, with a file of its own (scripts/):
    it is put back in place of the older files, which are beaten.  The folder is made
    by hand (no skill.json: taken as written, R10), so each version's time is its newest
    file's mtime, which Syncthing keeps: set here, not left to the clock's resolution."""
    a, b = syncthing_share(mesh)
    folder = mesh.share / "skills" / "tool"
    (folder / "scripts").mkdir(parents=True)
    (folder / "SKILL.md").write_text(skill_text("one"))
    (folder / "scripts" / "run.sh").write_text("echo one\n")
    t1 = time.time() - 600
    for p in folder.rglob("*"):
        os.utime(p, (t1, t1))
    a.sync()
    assert a.sql("SELECT count(*) FROM mesh_skills") == [(1,)]
    # Syncthing brings the other device's newer run.sh as a copy beside the older file.
    copy = copy_name(folder / "scripts" / "run.sh")
    copy.write_text("echo two\n")
    os.utime(copy, (t1 + 60, t1 + 60))
    a.sync()
    assert copies(mesh.share) == []
    assert (folder / "scripts" / "run.sh").read_text() == "echo two\n"
    assert (folder / "SKILL.md").read_text() == skill_text("one")
    assert beaten(a).get("skill:tool"), beaten(a)  # the older folder is in the history
    b.sync()
    assert a.sql("SELECT content FROM mesh_skills") == b.sql("SELECT content FROM mesh_skills")
    assert problems(a) == [] and problems(b) == []


def test_a_copy_beside_no_file_is_not_a_delete_while_syncthing_renames(mesh: Mesh):
    """Syncthing renames the file it replaces to the copy's name, then puts the new file
    in place.  A pass in between sees a copy renamed just now and no file: it deletes
    nothing.  A copy left alone beside no file is an ordinary delete of the file."""
    a, b = syncthing_share(mesh)
    f = mem_path(mesh.share, "mesh", "k")
    a.cli("put", "mesh", "k", '"kept"')
    b.sync()
    os.rename(f, copy_name(f))
    b.sync()
    assert b.value("mesh", "k") == "kept" and copies(mesh.share) == ["memory/mesh/" + copy_name(f).name]
    assert not (mesh.share / ".meshsync" / "tombstones" / "memory" / "mesh" / "k.json").exists()
    # Once the rename is seconds old, the file is gone for good: the delete wins, and the
    # version in the copy is kept in the history.
    wait_for(lambda: b.sync() and copies(mesh.share) == [], 30, interval=0.5, what="the copy folded")
    assert b.value("mesh", "k") is None
    assert "kept" in beaten(b).get("mesh:k", [])


def test_copies_are_left_alone_outside_a_syncthing_folder(mesh: Mesh):
    """Without `.stfolder` such names are another tool's files: never items, never
    removed, never problems (SPEC section 2)."""
    a = mesh.node("A")
    f = mem_path(mesh.share, "mesh", "k")
    a.cli("put", "mesh", "k", '"one"')
    copy_name(f).write_text(json.dumps({"value": "stray"}))
    a.sync()
    assert keys(a) == {"mesh:k"} and a.value("mesh", "k") == "one"
    assert copies(mesh.share) == ["memory/mesh/" + copy_name(f).name]
    assert problems(a) == [] and beaten(a) == {}


def test_a_folder_shared_by_syncthing_after_meshsync_started_is_one(mesh: Mesh):
    """Syncthing makes `.stfolder` when the folder is shared, which may be after the
    daemon started (start order does not matter, issue 17).  From then on a file meshsync
    wrote that reappears after its tombstone is Syncthing's change-beats-delete, decided
    by newer-wins (R4), not a person's restore (R10, NAS shares only): an engine made
    before `.stfolder` existed must see the folder as Syncthing's at its next full pass."""
    from sync_helpers import UPSERT

    a = mesh.node("A")
    engine = mesh.engine(a)  # the daemon's engine, made before the folder is shared
    a.sql(UPSERT, ("mesh", "k", '"old"', "A", int(time.time()) - 60))
    engine.sync()
    f = mem_path(mesh.share, "mesh", "k")
    old = f.read_bytes()
    (mesh.share / ".stfolder").mkdir()  # Syncthing shares the folder
    a.cli("rm", "mesh", "k")  # deleted now: the tombstone is newer than the old version
    assert not f.exists()
    f.write_bytes(old)  # a node that was apart: Syncthing lets its old file beat the delete
    engine.sync()
    assert a.row("mesh", "k") is None and not f.exists()
