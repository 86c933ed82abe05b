"""Multi-node integration tests of `meshsync sync` with bad input on the share (R6):
unparsable, shapeless, oversized, non-UTF-8 files, FIFOs and symlinks, in memory folders
and in skill folders.  Each is skipped with a per-file error, left byte for byte as it
is, never deleted; the rest of the pass goes on and the last good version stays.

Real `meshsync` processes, real folders, real SQLite; no mocks and no sleeps (a pass
that could hang on a FIFO runs under a timeout).
"""

from __future__ import annotations

import json
import os
import time

from helpers import MeshNode
from sync_helpers import (
    UPSERT,
    assert_item_everywhere,
    errors,
    foreign_put,
    mem_path,
    quick_node,
    read_json,
    sync_json,
)

# --- 10. bad input on the share (R6) ----------------------------------------------------------------------


def test_bad_files_are_skipped_reported_and_left_alone(mesh, ab, tmp_path):
    a, b = ab
    m = mesh.share / "memory" / "mesh"
    bad = {
        "broken.json": b'{"value": [1, 2,',
        "novalue.json": b'{"scope": "mesh", "key": "novalue", "val": 1}',
        "array.json": b"[1, 2, 3]",
        "badutf8.json": b'{"value": "\xff\xfe"}',
    }
    for name, data in bad.items():
        (m / name).write_bytes(data)
    with open(m / "big.json", "wb") as fh:  # over the default 10 MB limit
        fh.write(b'{"value": "' + b"x" * (11 * 1024 * 1024) + b'"}')
    os.mkfifo(m / "pipe.json")
    outside = tmp_path / "outside.json"
    outside.write_text('{"value": "outside secret"}')
    os.symlink(outside, m / "link.json")
    (m / "good.json").write_text('{"value": "fine"}')
    names = list(bad) + ["big.json", "pipe.json", "link.json"]
    before = {n: (m / n).read_bytes() for n in list(bad) + ["big.json"]}

    st = json.loads(a.cli("sync", "--json", check=1, timeout=60).stdout)
    assert st["skipped"] >= len(names)
    assert a.value("mesh", "good") == "fine"
    assert (m / "good.json").read_text() == '{"value": "fine"}'  # taken as written (R10)
    errs = errors(a)
    for name in names:
        e = errs.get(f"memory/mesh/{name}")
        assert e is not None, (name, errs)
        assert e["reason"] and e["hint"], e
    assert "link" in errs["memory/mesh/link.json"]["reason"]
    assert "FIFO" in errs["memory/mesh/pipe.json"]["reason"]
    assert "limit" in errs["memory/mesh/big.json"]["reason"]
    assert "value" in errs["memory/mesh/novalue.json"]["reason"]
    for n, data in before.items():
        assert (m / n).read_bytes() == data, n
    assert (m / "pipe.json").is_fifo() and (m / "link.json").is_symlink()
    assert outside.read_text() == '{"value": "outside secret"}'
    assert a.sql("SELECT key FROM mesh_memory") == [("good",)]
    assert set(a.cache()) == {"mesh:good"}
    # B sees the same; a second pass changes nothing.
    b.cli("sync", check=1, timeout=60)
    assert b.sql("SELECT key FROM mesh_memory") == [("good",)]
    assert set(errors(b)) >= {f"memory/mesh/{n}" for n in names}
    st = json.loads(a.cli("sync", "--json", check=1, timeout=60).stdout)
    assert (st["to_share"], st["to_index"]) == (0, 0)
    for n, data in before.items():
        assert (m / n).read_bytes() == data, n
    # Fixing a file clears its error.
    (m / "broken.json").write_text('{"value": [1, 2]}')
    a.cli("sync", check=1, timeout=60)
    assert a.value("mesh", "broken") == [1, 2]
    assert "memory/mesh/broken.json" not in errors(a)


BREAKAGES = ["invalid_json", "no_value", "fifo", "symlink", "too_big", "wrong_key", "not_utf8"]


def test_good_files_turned_bad_keep_last_good_version(mesh, tmp_path):
    env = {"MESHSYNC_LIMITS__MAX_FILE_BYTES": "2048"}
    a, b = mesh.node("A", **env), quick_node(mesh, "B", **env)
    t = int(time.time()) - 100
    for k in BREAKAGES:
        foreign_put(a, "mesh", k, {"v": "good " + k}, updated_at=t)
    foreign_put(a, "mesh", "neighbour", "n1", updated_at=t)
    sync_json(a)
    sync_json(b)
    cache_b = json.loads(b.cache_file.read_bytes())
    kept = {}
    for k in BREAKAGES:
        f = mem_path(mesh.share, "mesh", k)
        if k == "invalid_json":
            f.write_bytes(b'{"value": {"v": "bro')
        elif k == "no_value":
            f.write_bytes(b'{"scope": "mesh", "key": "no_value"}')
        elif k == "fifo":
            f.unlink()
            os.mkfifo(f)
        elif k == "symlink":
            target = tmp_path / "elsewhere.json"
            target.write_text('{"value": {"v": "evil"}}')
            f.unlink()
            os.symlink(target, f)
        elif k == "too_big":
            f.write_bytes(b'{"value": "' + b"z" * 3000 + b'"}')
        elif k == "wrong_key":
            f.write_bytes(b'{"scope": "mesh", "key": "other", "value": 1}')
        else:
            f.write_bytes(b'{"value": "caf\xe9"}')
        if not (f.is_symlink() or f.is_fifo()):
            kept[k] = f.read_bytes()
    # Another change in the same pass still goes through.
    a.sql(UPSERT, ("mesh", "neighbour", '"n2"', "A", t + 1))
    a.cli("sync", check=1, timeout=60)
    b.cli("sync", check=1, timeout=60)
    for n in (a, b):
        errs = errors(n)
        for k in BREAKAGES:
            assert n.value("mesh", k) == {"v": "good " + k}, (n.node_id, k)
            assert n.cache()[f"mesh:{k}"] == cache_b[f"mesh:{k}"], (n.node_id, k)
            e = errs.get(f"memory/mesh/{k}.json")
            assert e is not None and e["reason"] and e["hint"], (n.node_id, k, errs)
        assert n.value("mesh", "neighbour") == "n2"
    for k, data in kept.items():
        assert mem_path(mesh.share, "mesh", k).read_bytes() == data, k
    assert mem_path(mesh.share, "mesh", "fifo").is_fifo()
    assert mem_path(mesh.share, "mesh", "symlink").is_symlink()
    # A third node joining meanwhile gets nothing bad, and nothing is deleted.
    c = quick_node(mesh, "C", **env)
    c.cli("sync", check=1, timeout=60)
    assert c.value("mesh", "neighbour") == "n2"
    assert all(c.row("mesh", k) is None for k in BREAKAGES)
    assert a.sql("SELECT count(*) FROM mesh_memory") == [(len(BREAKAGES) + 1,)]
    # Repairing a file by hand makes the repair the new version.
    mem_path(mesh.share, "mesh", "invalid_json").write_text('{"value": {"v": "repaired"}}')
    b.cli("sync", check=1, timeout=60)
    a.cli("sync", check=1, timeout=60)
    assert a.value("mesh", "invalid_json") == {"v": "repaired"} == b.value("mesh", "invalid_json")


def skill_row(n: MeshNode, name: str) -> tuple | None:
    r = n.sql("SELECT content, path, source_node, updated_at FROM mesh_skills WHERE name = ?", (name,))
    return r[0] if r else None


def test_bad_files_in_skill_folders(mesh, ab, tmp_path):
    a, b = ab
    env = {"MESHSYNC_LIMITS__MAX_SKILL_BYTES": "2048"}
    sk = mesh.share / "skills"
    outside = tmp_path / "secret.txt"
    outside.write_text("outside the share")
    # A good skill with a link and a FIFO among its files: imported without them.
    (sk / "mixed" / "scripts").mkdir(parents=True)
    (sk / "mixed" / "SKILL.md").write_text("# mixed\n")
    os.symlink(outside, sk / "mixed" / "scripts" / "link.sh")
    os.mkfifo(sk / "mixed" / "scripts" / "pipe")
    # Skills whose SKILL.md is unusable: not imported.
    (sk / "linked").mkdir()
    os.symlink(outside, sk / "linked" / "SKILL.md")
    (sk / "latin1").mkdir()
    (sk / "latin1" / "SKILL.md").write_bytes(b"# caf\xe9\n")
    (sk / "huge").mkdir()
    (sk / "huge" / "SKILL.md").write_text("#" * 4096)
    (sk / "badmeta").mkdir()
    (sk / "badmeta" / "SKILL.md").write_text("# ok\n")
    (sk / "badmeta" / "skill.json").write_text("{not json")
    (sk / "empty").mkdir()
    os.symlink(tmp_path, sk / "dirlink")
    before = {p: p.read_bytes() for p in (sk / "latin1" / "SKILL.md", sk / "huge" / "SKILL.md",
                                         sk / "badmeta" / "skill.json")}
    a.cli("sync", check=1, timeout=60, **env)
    assert a.sql("SELECT name, content FROM mesh_skills") == [("mixed", "# mixed\n")]
    errs = errors(a)
    for rel in ("skills/mixed/scripts/link.sh", "skills/mixed/scripts/pipe", "skills/latin1/SKILL.md",
                "skills/huge/SKILL.md", "skills/badmeta/skill.json", "skills/empty", "skills/dirlink"):
        assert rel in errs and errs[rel]["reason"] and errs[rel]["hint"], (rel, errs)
    assert any(p.startswith("skills/linked") for p in errs), errs
    for p, data in before.items():
        assert p.read_bytes() == data
    assert (sk / "mixed" / "scripts" / "link.sh").is_symlink() and (sk / "mixed" / "scripts" / "pipe").is_fifo()
    assert outside.read_text() == "outside the share"
    assert not (sk / "latin1" / "skill.json").exists() and not (sk / "empty" / "skill.json").exists()
    b.cli("sync", check=1, timeout=60, **env)
    assert b.sql("SELECT name FROM mesh_skills") == [("mixed",)]
    assert sorted(os.listdir(b.cache_skills)) == ["mixed.md"]

    # A good skill turned bad keeps its last good version everywhere.
    (sk / "mixed" / "SKILL.md").write_bytes(b"# mixed \xff\n")
    a.cli("sync", check=1, timeout=60, **env)
    b.cli("sync", check=1, timeout=60, **env)
    for n in (a, b):
        assert skill_row(n, "mixed")[0] == "# mixed\n", n.node_id
        assert (n.cache_skills / "mixed.md").read_text() == "# mixed\n"
    assert (sk / "mixed" / "SKILL.md").read_bytes() == b"# mixed \xff\n"


def test_missing_memory_folder_deletes_nothing(mesh, ab, tmp_path):
    a, b = ab
    a.cli("put", "mesh", "k", "1")
    a.cli("put", "user:alice", "k", "2")
    sync_json(b)
    (mesh.share / "memory").rename(tmp_path / "memory-away")
    p = b.cli("sync", "--json", check=1)
    assert json.loads(p.stdout)["deleted"] == 0
    assert b.value("mesh", "k") == 1 and b.value("user:alice", "k") == 2
    assert set(b.cache()) == {"mesh:k", "user:alice:k"}
    assert "memory" in errors(b)
    assert not (mesh.share / "memory").exists(), "not recreated behind the user's back"
    assert not any((mesh.share / ".meshsync" / "tombstones").rglob("*.json"))
    (tmp_path / "memory-away").rename(mesh.share / "memory")
    sync_json(b)
    sync_json(a)
    assert a.value("mesh", "k") == 1 and b.value("user:alice", "k") == 2


def test_local_write_behind_an_unreadable_share_file_goes_out_once_it_is_fixed(mesh, ab):
    """A bad hand-made file sits where a local write must go: the file is left alone,
    and the write is not forgotten: it is exported once the file is removed."""
    a, b = ab
    f = mem_path(mesh.share, "mesh", "blocked")
    f.write_bytes(b'{"value": oops')
    foreign_put(b, "mesh", "blocked", "from B's index")
    b.cli("sync", check=1)
    assert f.read_bytes() == b'{"value": oops'
    assert "memory/mesh/blocked.json" in errors(b)
    b.cli("sync", check=1)  # still blocked, still not forgotten
    f.unlink()
    sync_json(b)
    sync_json(a)
    assert read_json(f)["value"] == "from B's index"
    assert a.value("mesh", "blocked") == "from B's index"
    assert errors(b) == {}


def test_local_write_made_while_the_share_file_was_broken_goes_out_after_undo(mesh, ab):
    """B writes while the share file is broken; the breakage is then undone (the old
    bytes come back).  B's write is newer than what the file holds and must go out,
    not be taken as already there."""
    a, b = ab
    t = int(time.time()) - 100
    foreign_put(a, "mesh", "doc", "v1", updated_at=t)
    sync_json(a)
    sync_json(b)
    f = mem_path(mesh.share, "mesh", "doc")
    good = f.read_bytes()
    f.write_bytes(b'{"value": "v1 being edi')
    foreign_put(b, "mesh", "doc", "v2 from B", updated_at=t + 10)
    b.cli("sync", check=1)
    assert f.read_bytes() == b'{"value": "v1 being edi'
    f.write_bytes(good)  # the editor's undo
    sync_json(b)
    sync_json(a)
    assert_item_everywhere([a, b], mesh.share, "mesh", "doc", "v2 from B", node_id="B")
