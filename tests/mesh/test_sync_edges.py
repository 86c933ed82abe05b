"""Multi-node integration tests of `meshsync sync` at the edges: skills, odd keys, scopes
(R9) and an unavailable share (R5).  Bad input on the share (R6) is in test_sync_input.py.

Real `meshsync` processes, real folders, real SQLite; no mocks and no sleeps.
"""

from __future__ import annotations

import json
import os
import shutil
import time

from helpers import MeshNode
from sync_helpers import (
    all_paths,
    assert_item_everywhere,
    errors,
    foreign_put,
    mem_path,
    quick_node,
    read_json,
    sync_json,
)

from meshsync import layout


def skill_row(n: MeshNode, name: str) -> tuple | None:
    r = n.sql("SELECT content, path, source_node, updated_at FROM mesh_skills WHERE name = ?", (name,))
    return r[0] if r else None


# --- 6. skills -----------------------------------------------------------------------------------


def test_skill_put_is_exported_imported_and_rm_deletes_everywhere(mesh, ab, tmp_path):
    a, b = ab
    src = tmp_path / "triage.md"
    src.write_text("# Triage rules\n\n1. Be kind. ✓\n")
    a.cli("skill", "put", "triage", str(src))
    d = mesh.share / "skills" / "triage"
    assert (d / "SKILL.md").read_bytes() == src.read_bytes()
    meta = read_json(d / "skill.json")
    assert meta["name"] == "triage" and meta["source_node"] == "A"
    sync_json(b)
    row = skill_row(b, "triage")
    assert row[0] == src.read_text() and row[2] == "A" and row[3] == meta["updated_at"]
    for n in (a, b):
        assert (n.cache_skills / "triage.md").read_bytes() == src.read_bytes(), n.node_id
    assert b.cli("skill", "get", "triage").stdout == src.read_text()

    b.cli("skill", "rm", "triage")
    assert not d.exists()
    assert (mesh.share / layout.tombstone_path(layout.skill_id("triage"), "")).exists()
    sync_json(a)
    for n in (a, b):
        assert skill_row(n, "triage") is None, n.node_id
        assert not (n.cache_skills / "triage.md").exists(), n.node_id


def test_hand_made_skill_dir_imported_versioned_by_every_file_and_deleted(mesh, ab):
    a, b = ab
    d = mesh.share / "skills" / "deploy"
    (d / "scripts").mkdir(parents=True)
    (d / "references").mkdir()
    (d / "SKILL.md").write_text("# Deploy\nRun scripts/run.sh\n")
    (d / "scripts" / "run.sh").write_text("#!/bin/sh\necho deploy\n")
    (d / "references" / "x.md").write_text("reference\n")
    old = time.time() - 3600
    for p in (d / "SKILL.md", d / "scripts" / "run.sh", d / "references" / "x.md"):
        os.utime(p, (old, old))
    sync_json(a)
    # Taken as written (R10): no skill.json is added; the version derives from the
    # folder alone (its newest file's mtime, node "share"), the same on every node.
    assert not (d / "skill.json").exists(), "a hand-made skill is left as it was made"
    sync_json(b)
    for n in (a, b):
        row = skill_row(n, "deploy")
        assert row is not None and row[0] == "# Deploy\nRun scripts/run.sh\n", n.node_id
        assert (n.cache_skills / "deploy.md").read_text() == "# Deploy\nRun scripts/run.sh\n"
        assert row[3] == int(old) and row[2] == "share", row
    # The other files are left exactly as they were.
    assert (d / "scripts" / "run.sh").read_text() == "#!/bin/sh\necho deploy\n"
    assert (d / "references" / "x.md").read_text() == "reference\n"

    # Editing a script (not SKILL.md) changes the skill's version on every node.
    (d / "scripts" / "run.sh").write_text("#!/bin/sh\necho deploy v2\n")
    sync_json(b)
    sync_json(a)
    edited = int((d / "scripts" / "run.sh").stat().st_mtime)
    assert not (d / "skill.json").exists()
    for n in (a, b):
        assert skill_row(n, "deploy")[3] == edited > int(old), n.node_id
    st = sync_json(b)
    assert (st["to_share"], st["to_index"]) == (0, 0)

    # Deleting the directory deletes the skill everywhere.
    shutil.rmtree(d)
    sync_json(a)
    sync_json(b)
    assert not d.exists()
    for n in (a, b):
        assert skill_row(n, "deploy") is None, n.node_id
        assert not (n.cache_skills / "deploy.md").exists(), n.node_id
    assert (mesh.share / layout.tombstone_path(layout.skill_id("deploy"), "")).exists()


# --- 7. odd keys ---------------------------------------------------------------------------------

WEIRD = ["a/b/c", "../../escape", "ünïcødé ключ 🔑", "CON", "..", "a:b:c", "with spaces ", "con",
         "x" * 300, "Key", "key", ".hidden", "trailing.", "nul.txt", "back\\slash", "tab\there", "",
         "q?*<>|\"", "Ünïcødé ключ 🔑"]

_BAD_CHARS = set('/\\:*?"<>|')
_DEVICES = {"con", "prn", "aux", "nul"} | {f"com{i}" for i in range(10)} | {f"lpt{i}" for i in range(10)}


def _portable(name: str) -> bool:
    return (not (_BAD_CHARS & set(name)) and all(32 <= ord(c) < 127 for c in name)
            and not name.startswith(".") and not name.endswith((".", " ")) and len(name.encode()) <= 255
            and name.split(".")[0].lower() not in _DEVICES)


def test_odd_keys_round_trip_through_put_get_and_the_share(mesh, ab, tmp_path):
    a, b = ab
    for i, k in enumerate(WEIRD[:4]):
        a.cli("put", "mesh", k, json.dumps({"i": i}))
    for i, k in enumerate(WEIRD[4:], start=4):
        foreign_put(a, "mesh", k, {"i": i}, updated_at=int(time.time()) - 5)
    sync_json(a)
    sync_json(b)
    folder = mesh.share / "memory" / "mesh"
    names = sorted(p.name for p in folder.iterdir())
    assert len(names) == len(WEIRD), names
    assert len({n.lower() for n in names}) == len(WEIRD), "no two names meet on a case-insensitive share"
    assert all(_portable(n) for n in names), [n for n in names if not _portable(n)]
    long_name = layout.encode("x" * 300) + ".json"
    assert len(long_name.encode()) <= 255 and long_name in names
    assert read_json(folder / long_name)["key"] == "x" * 300
    assert {read_json(folder / n)["key"] for n in names} == set(WEIRD)
    assert (folder / "key.json").exists() and read_json(folder / "key.json")["key"] == "key"
    for i, k in enumerate(WEIRD):
        assert b.value("mesh", k) == {"i": i}, repr(k)
        assert b.cache()[f"mesh:{k}"]["value"] == {"i": i}, repr(k)
    for k in ("a/b/c", "ünïcødé ключ 🔑", "Key", "x" * 300):
        assert json.loads(b.cli("get", "mesh", k).stdout) == {"i": WEIRD.index(k)}
    # Back through the share: every file is edited by hand, B imports.
    for n in names:
        p = folder / n
        doc = read_json(p)
        doc["value"] = {"edited": doc["key"]}
        p.write_text(json.dumps(doc))
    sync_json(b)
    for k in WEIRD:
        assert b.value("mesh", k) == {"edited": k}, repr(k)
    # Odd user ids too.
    foreign_put(b, "user:../../x", "k/..", 1)
    sync_json(b)
    assert (mesh.share / "memory" / "user" / layout.encode("../../x") / (layout.encode("k/..") + ".json")).exists()
    sync_json(a)
    assert a.value("user:../../x", "k/..") == 1 and a.value("mesh", "..") == {"edited": ".."}
    # Nothing was written outside the share and the nodes' own folders.
    assert {p.split("/")[0] for p in all_paths(tmp_path)} == {"share", "node-A", "node-B"}
    assert {p.split("/")[0] for p in all_paths(mesh.share)} == {".meshsync", "memory", "skills"}


def test_hand_made_files_with_plain_and_escaped_names(mesh, ab):
    a, b = ab
    folder = mesh.share / "memory" / "mesh"
    (folder / "user.preferences.json").write_text('{"value": 1}')
    (folder / (layout.encode("Grüße/2") + ".json")).write_text('{"value": 2}')
    (folder / "Upper.json").write_text('{"value": 3}')  # not the canonical spelling of any key
    p = a.cli("sync", check=1)
    assert "status" in p.stderr
    assert a.value("mesh", "user.preferences") == 1 and a.value("mesh", "Grüße/2") == 2
    e = errors(a)["memory/mesh/Upper.json"]
    assert "^upper" in e["hint"]
    assert (folder / "Upper.json").read_text() == '{"value": 3}'
    sync_json(b, code=1)
    assert b.value("mesh", "Grüße/2") == 2


def test_odd_node_id_stays_inside_the_share(mesh, tmp_path):
    n = mesh.node("../evil/node", home="node-evil")
    n.cli("put", "node", "k", "1")
    rel = layout.encode("../evil/node")
    assert (mesh.share / "memory" / "node" / rel / "k.json").exists()
    assert all_paths(mesh.share / "memory" / "node") == {rel, f"{rel}/k.json"}
    assert {p.split("/")[0] for p in all_paths(tmp_path)} == {"share", "node-evil"}


# --- 8. scopes (R9) ----------------------------------------------------------------------------------


def test_node_and_user_scopes_layout_and_ownership(mesh, ab):
    a, b = ab
    a.cli("put", "node", "local.cfg", '"A only"')
    b.cli("put", "node", "local.cfg", '"B only"')
    a.cli("put", "user:alice", "prefs", '{"dark": true}')
    fa = mesh.share / "memory" / "node" / layout.encode("A") / "local.cfg.json"
    fb = mesh.share / "memory" / "node" / layout.encode("B") / "local.cfg.json"
    assert read_json(fa)["value"] == "A only" and read_json(fb)["value"] == "B only"
    assert read_json(mesh.share / "memory" / "user" / "alice" / "prefs.json")["value"] == {"dark": True}
    sync_json(a)
    sync_json(b)
    assert a.value("node", "local.cfg") == "A only" and b.value("node", "local.cfg") == "B only"
    assert a.cache()["node:local.cfg"]["value"] == "A only"
    assert b.cache()["node:local.cfg"]["value"] == "B only"
    assert b.value("user:alice", "prefs") == {"dark": True}
    assert b.cache()["user:alice:prefs"]["value"] == {"dark": True}
    # Deleting B's node item leaves A's alone.
    b.cli("rm", "node", "local.cfg")
    sync_json(a)
    assert fa.exists() and not fb.exists() and a.value("node", "local.cfg") == "A only"


def test_read_scopes_limit_imports(mesh):
    a = mesh.node("A")
    c = quick_node(mesh, "C", MESHSYNC_SCOPES__READ='["mesh"]')
    a.cli("put", "mesh", "public", "1")
    a.cli("put", "user:alice", "secret", "2")
    sync_json(c)
    assert c.value("mesh", "public") == 1
    assert c.row("user:alice", "secret") is None
    assert set(c.cache()) == {"mesh:public"}
    # Still true after another change and pass, and the share keeps the item.
    a.cli("put", "user:alice", "secret", "3")
    sync_json(c)
    assert c.row("user:alice", "secret") is None and set(c.cache()) == {"mesh:public"}
    assert read_json(mesh.share / "memory" / "user" / "alice" / "secret.json")["value"] == 3


def test_write_scopes_refuse_export_and_report(mesh):
    a = mesh.node("A")
    d = quick_node(mesh, "D", MESHSYNC_SCOPES__WRITE='["mesh"]')
    foreign_put(d, "user:bob", "note", "from a foreign client on D")
    foreign_put(d, "mesh", "ok", "exported")
    st = sync_json(d, code=1)
    assert st["refused"] >= 1
    bob = mesh.share / "memory" / "user" / "bob"
    assert not bob.exists() or not any(bob.iterdir())
    assert read_json(mem_path(mesh.share, "mesh", "ok"))["value"] == "exported"
    errs = [e for e in d.status()["errors"] if "user:bob" in e["path"] + e["reason"]]
    assert errs and errs[0]["reason"] and errs[0]["hint"], d.status()["errors"]
    # The row is not dropped, and stays reported on the next pass.
    sync_json(d, code=1)
    assert d.value("user:bob", "note") == "from a foreign client on D"
    assert [e for e in d.status()["errors"] if "user:bob" in e["path"] + e["reason"]]
    sync_json(a)
    assert a.row("user:bob", "note") is None and a.value("mesh", "ok") == "exported"
    # `meshsync rm` in a scope the node may not write is refused too, and changes nothing.
    p = d.cli("rm", "user:bob", "note", check=2)
    assert "may not write" in p.stderr
    assert d.value("user:bob", "note") == "from a foreign client on D"
    # Once the scope is writable, the pending row goes out and the error is gone.
    d.cli("sync", MESHSYNC_SCOPES__WRITE='["mesh", "user:*"]')
    assert read_json(mem_path(mesh.share, "user:bob", "note"))["value"] == "from a foreign client on D"
    assert d.status()["errors"] == []
    sync_json(a)
    assert a.value("user:bob", "note") == "from a foreign client on D"


# --- 9. share unavailable (R5) -------------------------------------------------------------------------


def test_missing_marker_or_empty_share_changes_nothing(mesh, ab, tmp_path):
    a, b = ab
    a.cli("put", "mesh", "keep.me", '"safe"')
    sync_json(b)
    rows_before = b.sql("SELECT scope, key, value, node_id, updated_at FROM mesh_memory")
    cache_before = b.cache_file.read_bytes()
    marker = mesh.share / ".meshsync"
    marker.rename(tmp_path / "marker-away")
    # Looks like an unmounted NAS: no marker, and the memory folder is gone too.
    (mesh.share / "memory").rename(tmp_path / "memory-away")
    p = b.cli("sync", check=3)
    assert "unavailable" in p.stderr
    assert b.sql("SELECT scope, key, value, node_id, updated_at FROM mesh_memory") == rows_before
    assert b.cache_file.read_bytes() == cache_before
    s = b.status()
    assert s["share"]["available"] is False and ".meshsync" in s["share"]["reason"]
    # A write made meanwhile stays in the index and is exported later.
    b.cli("put", "mesh", "while.away", '"later"')
    empty = tmp_path / "empty"
    empty.mkdir()
    b.cli("sync", check=3, MESHSYNC_SHARE=str(empty))
    assert list(empty.iterdir()) == []
    b.cli("sync", check=3, MESHSYNC_SHARE=str(tmp_path / "not-mounted"))
    assert not (tmp_path / "not-mounted").exists()
    assert set(b.sql("SELECT scope, key, value, node_id, updated_at FROM mesh_memory")) >= set(rows_before)
    assert json.loads(b.cache_file.read_bytes())["mesh:keep.me"] == json.loads(cache_before)["mesh:keep.me"]
    assert not (mesh.share / "memory").exists()
    # Back again: everything resumes, nothing was lost.
    (tmp_path / "marker-away").rename(marker)
    (tmp_path / "memory-away").rename(mesh.share / "memory")
    sync_json(b)
    sync_json(a)
    assert_item_everywhere([a, b], mesh.share, "mesh", "keep.me", "safe")
    assert_item_everywhere([a, b], mesh.share, "mesh", "while.away", "later")


def test_init_refuses_folder_with_files_but_no_marker(mesh, tmp_path):
    share = tmp_path / "mnt"
    (share / "stuff").mkdir(parents=True)
    (share / "stuff" / "file.txt").write_text("x")
    n = mesh.node("X", share=share, init=False)
    p = n.cli("init", check=3)
    assert "marker" in p.stderr and "mount" in p.stderr
    assert not (share / ".meshsync").exists()
    assert sorted(all_paths(share)) == ["stuff", "stuff/file.txt"]
