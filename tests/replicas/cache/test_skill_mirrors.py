"""Skill mirrors (`cache.skill_dirs`) are optional: one that cannot be written is a reported
problem, never a crash; a file a skill folder holds over the limit is not synced, reported,
and not mirrored either.

Real daemons and `meshsync` commands; seen failing first (the daemon died with
`OSError` from skilldirs.mirror; an over-limit file was reported yet copied to the mirror).
"""

from __future__ import annotations

import json
import os

from fault_helpers import NoDacNode, require_no_dac
from helpers import Mesh, MeshNode, wait_for

SKILL = "---\nname: {0}\ndescription: the {0} skill\n---\nuse {0}\n"


def ready(n: MeshNode) -> None:
    wait_for(lambda: n.status().get("last_sync"), 20, what=f"{n.node_id} ready")


def reasons(n: MeshNode, path: str) -> list[str]:
    return [e["reason"] for e in n.status()["errors"] if e["path"] == path]


def test_a_mirror_that_cannot_be_written_is_reported_and_the_daemon_goes_on(mesh: Mesh, tmp_path):
    a = mesh.node("a")
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the mirror folder should be")
    good = tmp_path / "mirror"
    # b obeys permission bits even as root (fault_helpers.NoDacNode): a folder made
    # read-only stays so for it.
    require_no_dac()
    b = mesh.node("b", cls=NoDacNode, MESHSYNC_CACHE__SKILL_DIRS=json.dumps([str(blocked), str(good)]))
    a.cli("skill", "put", "tool", "-", input=SKILL.format("tool"))
    b.start()
    ready(b)
    wait_for(lambda: (good / "tool" / "SKILL.md").exists(), 15, what="mirrored where it can be")
    wait_for(lambda: reasons(b, str(blocked)), 15, what="the blocked mirror reported")
    assert "cannot mirror skills into this folder" in reasons(b, str(blocked))[0]
    # A mirrored folder that cannot be removed (read-only: its files cannot be unlinked).
    stuck = good / "tool"
    os.chmod(stuck, 0o555)
    try:
        a.cli("skill", "rm", "tool")
        wait_for(lambda: not b.sql("SELECT name FROM mesh_skills WHERE name = 'tool'"), 15, what="deleted on b")
        wait_for(lambda: reasons(b, str(good / "tool")), 15, what="the stuck folder reported")
        assert "cannot mirror skill 'tool' here" in reasons(b, str(good / "tool"))[0]
        a.cli("skill", "put", "next", "-", input=SKILL.format("next"))
        wait_for(lambda: (good / "next" / "SKILL.md").exists(), 15, what="the daemon goes on")
        assert b.daemon.poll() is None
    finally:
        os.chmod(stuck, 0o755)
    assert b.stop() == 0
    assert "Traceback" not in b.log()


def test_two_nodes_given_one_mirror_folder(mesh: Mesh, tmp_path):
    shared = tmp_path / "one-mirror"
    env = {"MESHSYNC_CACHE__SKILL_DIRS": json.dumps([str(shared)])}
    a, b = mesh.node("a", **env), mesh.node("b", **env)
    a.cli("skill", "put", "tool", "-", input=SKILL.format("tool"))
    b.sync()
    assert (shared / "tool" / "SKILL.md").read_text() == SKILL.format("tool")
    assert any("is mirrored by node a too" in r for r in reasons(b, str(shared / "tool")))
    for n in (a, b):
        n.start()
    for n in (a, b):
        ready(n)
    for i in range(5):  # skills come and go under both daemons
        a.cli("skill", "put", f"s{i}", "-", input=SKILL.format(f"s{i}"))
        b.cli("skill", "rm", "tool" if i == 0 else f"s{i - 1}")
    wait_for(lambda: sorted(p.name for p in shared.iterdir()) == ["s4"], 20, what="the mirror follows a's view")
    for n in (a, b):
        assert n.daemon.poll() is None
        assert n.stop() == 0
        assert "Traceback" not in n.log()


def test_a_file_over_the_limit_is_neither_synced_nor_mirrored(mesh: Mesh, tmp_path):
    limit = {"MESHSYNC_LIMITS__MAX_FILE_BYTES": "4096"}
    a = mesh.node("a", **limit)
    mirror = tmp_path / "mirror"
    b = mesh.node("b", MESHSYNC_CACHE__SKILL_DIRS=json.dumps([str(mirror)]), **limit)
    src = mesh.share / "skills" / "big"
    src.mkdir(parents=True)
    (src / "SKILL.md").write_text(SKILL.format("big"))
    (src / "small.txt").write_text("small")
    (src / "data.bin").write_bytes(b"x" * 8192)
    for n in (a, b):
        n.sync(check=1)
        assert any("over the 4096-byte limit" in r for r in reasons(n, "skills/big/data.bin"))
    assert (mirror / "big" / "small.txt").read_text() == "small"
    assert (mirror / "big" / "SKILL.md").exists() and not (mirror / "big" / "data.bin").exists()
