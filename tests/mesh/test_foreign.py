"""R10: what people and other programs write is taken as written.

Files written by hand or by other tools (no meshsync ``rev``) are imported without being
rewritten, and every node derives the same row from the same file: stamp max(declared
+ 1 ms, mtime), node the file's ``node_id`` or ``share``.  R3 still holds: an edit wins
over the version it edited, and only when the file alone cannot say so (the file
server's clock behind the node's base) is it stamped after the base and rewritten.

Real ``meshsync`` processes on real folders; order is controlled with explicit mtimes
and ``updated_at`` values, never with sleeps.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from helpers import Mesh, MeshNode, wait_for
from sync_helpers import conflicts, mem_path, read_json, snapshot, sync_json

from meshsync import formats


def _files_under(root: Path, *tops: str) -> dict[str, tuple[bytes, int]]:
    return {rel: v for rel, v in snapshot(root).items() if rel.split("/", 1)[0] in tops}


def _expected_row(f: Path) -> tuple:
    """(canonical value, node_id, updated_at) every node must derive from hand-made file f."""
    doc = json.loads(f.read_bytes())
    declared = doc.get("updated_at_ms")
    if not isinstance(declared, int) or declared // 1000 != doc.get("updated_at"):
        declared = doc["updated_at"] * 1000 if isinstance(doc.get("updated_at"), int) else None
    stamp = max(declared + 1 if declared is not None else 0, f.stat().st_mtime_ns // 1_000_000)
    return (formats.canonical(doc["value"]).decode(), doc.get("node_id") or formats.FOREIGN_NODE, stamp // 1000)


def _rows(n: MeshNode) -> dict[tuple[str, str], tuple]:
    return {(s, k): (v, nd, u) for s, k, v, nd, u in
            n.sql("SELECT scope, key, value, node_id, updated_at FROM mesh_memory")}


def _hand_made_share(share: Path, n: int) -> dict[tuple[str, str], Path]:
    """n pretty-printed files as people and tools write them: no meshsync fields, fresh
    mtimes; a third value-only, a third with scope/key, a third with node_id/updated_at."""
    out = {}
    d = share / "memory" / "mesh"
    past = int(time.time()) - 3 * 86400
    for i in range(n):
        doc: dict = {"value": {"note": f"hand {i}", "items": list(range(i % 4))}}
        if i % 3 == 1:
            doc = {"scope": "mesh", "key": f"hand.{i}", **doc}
        elif i % 3 == 2:
            doc = {**doc, "node_id": "laptop", "updated_at": past + i}
        f = d / f"hand.{i}.json"
        f.write_text(json.dumps(doc, indent=4, ensure_ascii=False) + "\n")
        out[("mesh", f"hand.{i}")] = f
    sk = share / "skills" / "handmade"
    sk.mkdir(parents=True)
    (sk / "SKILL.md").write_text("---\nname: handmade\ndescription: by hand\n---\n# Hand made\n")
    return out


def test_hand_made_files_are_imported_by_three_nodes_without_a_write(mesh: Mesh, abc):
    """The issue's 3,000-file case in small: after a pass per node nothing on the share
    was rewritten (bytes and mtimes), and every node holds the same rows, those derived
    from the files alone; a second round on every node writes nothing (R8)."""
    a, b, c = abc
    files = _hand_made_share(mesh.share, 30)
    before = _files_under(mesh.share, "memory", "skills")
    for n in (a, b, c):
        st = sync_json(n)
        assert st["to_share"] == 0 and st["skipped"] == 0, (n.node_id, st)
    assert _files_under(mesh.share, "memory", "skills") == before, "a hand-made file was rewritten"
    want = {item: _expected_row(f) for item, f in files.items()}
    for n in (a, b, c):
        assert _rows(n) == want, n.node_id
    skills = {n.node_id: n.sql("SELECT name, source_node, updated_at FROM mesh_skills") for n in (a, b, c)}
    assert skills["A"] == skills["B"] == skills["C"] and skills["A"][0][:2] == ("handmade", formats.FOREIGN_NODE)
    assert not (mesh.share / "skills" / "handmade" / "skill.json").exists()
    for n in (a, b, c):
        st = sync_json(n)
        assert (st["to_share"], st["to_index"], st["cache_written"]) == (0, 0, False), (n.node_id, st)
    assert _files_under(mesh.share, "memory", "skills") == before
    assert conflicts(a) == conflicts(b) == conflicts(c) == []


def test_hand_edit_of_a_meshsync_file_wins_and_stays_as_saved(mesh: Mesh, ab):
    """R3 with the file taken as written: a pretty-printed edit that keeps the fields of
    the version it edited is stamped declared + 1 ms (after that version), on both nodes,
    and the file keeps the person's bytes."""
    a, b = ab
    a.cli("put", "mesh", "plan", '{"step": 1}')
    sync_json(b)
    f = mem_path(mesh.share, "mesh", "plan")
    doc = read_json(f)
    doc["value"] = {"step": 2, "by": "hand"}
    saved = (json.dumps(doc, indent=4) + "\n").encode()
    f.write_bytes(saved)
    old = time.time() - 7200  # the file server's clock is behind: only the declared stamp orders it
    os.utime(f, (old, old))
    for n in (b, a, b):
        sync_json(n)
    assert f.read_bytes() == saved
    for n in (a, b):
        assert n.value("mesh", "plan") == {"step": 2, "by": "hand"}
        assert n.sql("SELECT stamp, node FROM meshsync_state WHERE key = 'plan'") == [
            (doc["updated_at_ms"] + 1, "A")]
    assert conflicts(a) == conflicts(b) == []


def test_edit_the_file_cannot_order_after_the_base_is_stamped_after_it_and_rewritten(mesh: Mesh, ab):
    """R3's fallback: a value-only edit whose mtime is behind the node's base (the file
    server's clock behind) says nothing the file alone can order after the base: the
    node that sees it stamps it after its base and rewrites it, so that every node then
    reads that version from the file."""
    a, b = ab
    a.cli("put", "mesh", "plan", '{"step": 1}')
    sync_json(b)
    f = mem_path(mesh.share, "mesh", "plan")
    base = read_json(f)
    f.write_text('{"value": {"step": 2}}')
    old = time.time() - 7200
    os.utime(f, (old, old))
    sync_json(b)
    doc = read_json(f)
    assert doc["value"] == {"step": 2} and "rev" in doc, "rewritten in meshsync's rendering"
    assert doc["updated_at_ms"] > base["updated_at_ms"] and doc["node_id"] == "B"
    sync_json(a)
    for n in (a, b):
        assert n.row("mesh", "plan") == ('{"step":2}', "B", doc["updated_at"])
    assert conflicts(a) == conflicts(b) == []


def _ready(n: MeshNode) -> bool:
    return "ready: first pass done" in n.log()


def test_hand_edit_under_live_daemons_is_left_byte_for_byte(mesh: Mesh):
    """The issue: a hand edit under live daemons was replaced within a second by
    meshsync's rendering (the editor then said "changed on disk")."""
    a, b = mesh.node("a"), mesh.node("b")
    a.cli("put", "mesh", "note", '"first"')
    for n in (a, b):
        n.start()
    for n in (a, b):
        wait_for(lambda n=n: _ready(n), 20, what=f"{n.node_id} ready")
    wait_for(lambda: b.value("mesh", "note") == "first", 10, what="b has the note")
    f = mem_path(mesh.share, "mesh", "note")
    doc = read_json(f)
    doc["value"] = "edited by hand"
    saved = (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode()
    tmp = f.with_name(".note.json.swp")
    tmp.write_bytes(saved)
    os.rename(tmp, f)
    for n in (a, b):
        wait_for(lambda n=n: n.value("mesh", "note") == "edited by hand", 10, what=f"{n.node_id} has the edit")
    # Another change after the edit, through both daemons: each has passed since.
    a.cli("put", "mesh", "later", '"x"')
    wait_for(lambda: b.value("mesh", "later") == "x", 10, what="b has the later write")
    b.cli("put", "mesh", "later2", '"y"')
    wait_for(lambda: a.value("mesh", "later2") == "y", 10, what="a has the second later write")
    assert f.read_bytes() == saved
    assert a.row("mesh", "note") == b.row("mesh", "note")
    assert a.stop() == 0 and b.stop() == 0


# --- a restored file comes back (R10, R4) -----------------------------------------------------


def _tomb(share: Path, key: str) -> Path:
    from meshsync import layout

    return share / layout.tombstone_path(layout.memory_id("mesh", key), "")


def test_restored_file_comes_back_everywhere(mesh: Mesh, ab, tmp_path: Path):
    """The issue's reproduction: put, copy the file away, rm, sync, copy it back, sync.
    The copy is a person's act after the delete: a new write stamped after the tombstone,
    on every node; nothing is removed and nothing is beaten."""
    a, b = ab
    a.cli("put", "mesh", "notes", '"precious"')
    sync_json(b)
    f = mem_path(mesh.share, "mesh", "notes")
    backup = tmp_path / "backup.json"
    backup.write_bytes(f.read_bytes())
    a.cli("rm", "mesh", "notes")
    sync_json(a)
    sync_json(b)
    assert not f.exists() and b.row("mesh", "notes") is None
    deleted_at = read_json(_tomb(mesh.share, "notes"))["deleted_at_ms"]
    os.rename(backup, f)  # `mv backup.json share/memory/mesh/notes.json`
    st = sync_json(a)
    assert f.exists(), "the restored file was removed again"
    assert not _tomb(mesh.share, "notes").exists()
    doc = read_json(f)
    assert doc["value"] == "precious" and doc["updated_at_ms"] == deleted_at + 1, doc
    assert st["deleted"] == 0
    for n in (b, a, b):
        sync_json(n)
    for n in (a, b):
        assert n.value("mesh", "notes") == "precious", n.node_id
        assert n.cache()["mesh:notes"]["value"] == "precious"
        assert n.row("mesh", "notes")[2] == doc["updated_at"]
    assert f.exists() and conflicts(a) == conflicts(b) == []


def test_restored_hand_made_file_is_kept_as_written(mesh: Mesh, ab):
    """A restore that is already newer than the delete (a fresh file) only needs the
    tombstone gone: the person's file keeps its bytes (R10)."""
    a, b = ab
    a.cli("put", "mesh", "todo", '["a"]')
    sync_json(b)
    a.cli("rm", "mesh", "todo")
    sync_json(b)
    f = mem_path(mesh.share, "mesh", "todo")
    f.write_text('{\n  "value": ["a", "b"]\n}\n')
    saved = f.read_bytes()
    for n in (b, a, b):
        sync_json(n)
    assert f.read_bytes() == saved and not _tomb(mesh.share, "todo").exists()
    assert a.row("mesh", "todo") == b.row("mesh", "todo") == ('["a","b"]', "share", int(f.stat().st_mtime))


def test_tombstone_before_the_file_removal_still_deletes(mesh: Mesh, ab):
    """Syncthing may deliver another node's tombstone before the removal of the file:
    the file is the one this node last synced, so the tombstone is a delete from
    elsewhere and wins (R4), as before."""
    a, b = ab
    a.cli("put", "mesh", "gone", '"soon"')
    sync_json(b)
    f = mem_path(mesh.share, "mesh", "gone")
    kept = f.read_bytes()
    a.cli("rm", "mesh", "gone")
    # b's copy of the folder: the tombstone has arrived, the file's removal not yet.
    f.write_bytes(kept)
    sync_json(b)
    assert not f.exists() and b.row("mesh", "gone") is None
    sync_json(a)
    assert a.row("mesh", "gone") is None and _tomb(mesh.share, "gone").exists()
    assert conflicts(a) == conflicts(b) == []


def test_mv_backup_under_live_daemons_stays(mesh: Mesh, tmp_path: Path):
    """The issue: with a running daemon `mv backup.json share/memory/mesh/notes.json`
    destroyed the only copy within 2 s.  It stays, on every node, pass after pass."""
    a, b = mesh.node("a"), mesh.node("b")
    a.cli("put", "mesh", "notes", '"precious"')
    f = mem_path(mesh.share, "mesh", "notes")
    backup = tmp_path / "backup.json"
    backup.write_bytes(f.read_bytes())
    for n in (a, b):
        n.start(MESHSYNC_WATCH__RESCAN_INTERVAL="1")
    for n in (a, b):
        wait_for(lambda n=n: _ready(n), 20, what=f"{n.node_id} ready")
    wait_for(lambda: b.value("mesh", "notes") == "precious", 10, what="b has the notes")
    a.cli("rm", "mesh", "notes")
    for n in (a, b):
        wait_for(lambda n=n: n.row("mesh", "notes") is None and "mesh:notes" not in n.cache(), 10,
                 what=f"delete reaches {n.node_id}")
    os.rename(backup, f)
    t_restore = time.time()
    for n in (a, b):
        wait_for(lambda n=n: n.value("mesh", "notes") == "precious" and "mesh:notes" in n.cache(), 10,
                 what=f"restore reaches {n.node_id}")
    # Several passes later (other writes through both daemons, and a full pass each).
    for i in range(3):
        a.cli("put", "mesh", f"later{i}", str(i))
        wait_for(lambda i=i: b.value("mesh", f"later{i}") == i, 10, what="b has a later write")
    for n in (a, b):  # and a full rescan of the share each, begun after the restore
        wait_for(lambda n=n: (n.status()["last_pass"] or {}).get("full")
                 and n.status()["last_pass"]["started"] > t_restore + 1, 15, what=f"{n.node_id} full pass")
    assert f.exists() and read_json(f)["value"] == "precious"
    for n in (a, b):
        assert n.value("mesh", "notes") == "precious"
    assert a.stop() == 0 and b.stop() == 0


DIES_INSIDE_A_DELETE = """
import os, sys
from meshsync import faults
faults.install("share.delete_removed", lambda it: os._exit(137))  # between a delete's two share writes
from meshsync.cli.main import main
sys.exit(main(["sync"]))
"""


def test_own_delete_killed_midway_is_not_taken_for_a_restore(mesh: Mesh, ab):
    """R7 with the restore rule: a pass killed between its delete's two share writes
    must not leave what every other node reads as a restore.  b last synced an older
    version of the item, so a file beside the tombstone would be "not what b last
    synced": it would bring the item back.  The file goes first: b sees a plain delete."""
    import subprocess
    import sys

    a, b = ab
    a.cli("put", "mesh", "k", '"v1"')
    sync_json(b)
    a.cli("put", "mesh", "k", '"v2"')  # b never syncs v2
    a.sql("DELETE FROM mesh_memory WHERE key = 'k'")
    died = subprocess.run([sys.executable, "-c", DIES_INSIDE_A_DELETE], env=a.env(), capture_output=True, text=True,
                          timeout=60)
    assert died.returncode == 137, died.stderr
    sync_json(b)
    assert b.row("mesh", "k") is None and not mem_path(mesh.share, "mesh", "k").exists(), "taken for a restore"
    sync_json(a)
    sync_json(b)
    for n in (a, b):
        assert n.row("mesh", "k") is None, n.node_id
        assert "mesh:k" not in n.cache()
    assert not mem_path(mesh.share, "mesh", "k").exists() and _tomb(mesh.share, "k").exists()


# --- exports within the limits (R10) ---------------------------------------------------------

LIMITS = {"MESHSYNC_LIMITS__MAX_FILE_BYTES": "8192", "MESHSYNC_LIMITS__MAX_SKILL_BYTES": "4096"}


def test_exports_stay_within_the_readers_limits(mesh: Mesh):
    """The issue's 2.8 MB and 15.5 MB cases at an 8 KiB limit.  A value whose pretty
    rendering is over the limit (x4 here, as the issue's 2.8 MB -> 11.2 MB) is written
    compactly and read by the other node; one over the limit even compact (the 15.5 MB
    row) is refused and reported, not written; so is a SKILL.md over its limit."""
    a, b = mesh.node("A", **LIMITS), mesh.node("B", init=False, **LIMITS)
    b.cli("init")
    nested = [[i, [i]] for i in range(550)]  # ~6.3 KB compact, ~25 KB pretty-printed
    assert 6000 < len(json.dumps(nested, separators=(",", ":"))) < 7000
    a.sql("INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) VALUES (?,?,?,?,?)",
          ("mesh", "fits.compact", json.dumps(nested), "tool", int(time.time())))
    a.sql("INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) VALUES (?,?,?,?,?)",
          ("mesh", "too.big", json.dumps(["x" * 100] * 200), "tool", int(time.time())))
    a.sql("INSERT INTO mesh_skills (name, source_node, content, updated_at) VALUES (?,?,?,?)",
          ("huge", "tool", "# huge\n" + "y" * 5000, int(time.time())))
    st = a.cli_json("sync", check=False)
    assert st["to_share"] == 1 and st["refused"] == 2, st
    f = mem_path(mesh.share, "mesh", "fits.compact")
    assert f.stat().st_size <= 8192 and b"\n " not in f.read_bytes()  # compact
    assert read_json(f)["value"] == nested
    assert not mem_path(mesh.share, "mesh", "too.big").exists()
    assert not (mesh.share / "skills" / "huge").exists()
    sync_json(b)
    assert b.value("mesh", "fits.compact") == nested and b.status()["errors"] == []
    assert b.row("mesh", "too.big") is None
    refused = {e["path"]: e for e in a.status()["errors"] if e["kind"] == "refused"}
    assert set(refused) == {"index:mesh:too.big", "index:skill:huge"}
    assert "over the 8192-byte limit" in refused["index:mesh:too.big"]["reason"]
    assert "limits.max_file_bytes" in refused["index:mesh:too.big"]["hint"]
    assert "limits.max_skill_bytes" in refused["index:skill:huge"]["hint"]
    listed = {r["key"]: r for r in a.cli_json("ls")["items"]}
    assert listed["too.big"]["state"] == "refused" and listed["fits.compact"]["state"] == "in sync"
    log = a.cli("sync", check=False).stderr
    assert "mesh:too.big not exported" in log and "WARNING" in log
    # Re-exporting the same version gives the same bytes (R8).
    before = f.read_bytes()
    a.sql("UPDATE mesh_memory SET node_id = node_id WHERE key = 'fits.compact'")
    sync_json(a, code=1)
    assert f.read_bytes() == before


# --- a renamed skill folder (R10) ------------------------------------------------------------


def test_renamed_skill_folder_is_the_skill_under_its_new_name(mesh: Mesh, ab, tmp_path: Path):
    """`mv skills/alpha skills/beta`: the folder name decides, as the file name does for
    memory.  beta exists everywhere (skill.json's stale name is ignored: not refused,
    not rewritten) and alpha is deleted everywhere: a person's evident act."""
    a, b = ab
    md = tmp_path / "SKILL.md"
    md.write_text("---\nname: alpha\ndescription: renamed later\n---\n# Alpha\n")
    a.cli("skill", "put", "alpha", str(md))
    sync_json(b)
    old, new = mesh.share / "skills" / "alpha", mesh.share / "skills" / "beta"
    meta = (old / "skill.json").read_bytes()
    os.rename(old, new)
    for n in (b, a, b):
        st = sync_json(n)
        assert st["skipped"] == 0, (n.node_id, n.status()["errors"])
    for n in (a, b):
        names = {r[0]: r for r in n.sql("SELECT name, content, source_node FROM mesh_skills")}
        assert set(names) == {"beta"}, n.node_id
        assert names["beta"][1] == md.read_text() and names["beta"][2] == "A"
        assert (n.cache_skills / "beta.md").read_text() == md.read_text()
        assert not (n.cache_skills / "alpha.md").exists()
        assert n.status()["errors"] == []
    assert (new / "skill.json").read_bytes() == meta, "skill.json is left as it was"
    assert not old.exists()
    from meshsync import layout
    assert (mesh.share / layout.tombstone_path(layout.skill_id("alpha"), "")).exists()
    assert conflicts(a) == conflicts(b) == []


# --- names as other systems write them (R10) -----------------------------------------------


CAFE_NFC, CAFE_NFD = "caf\u00e9", "cafe\u0301"


def _errors(n: MeshNode) -> dict[str, dict]:
    return {e["path"]: e for e in n.status()["errors"]}


def test_nfd_file_name_beside_the_nfc_item_is_no_second_item(mesh: Mesh, ab):
    """The issue: `café.json` written decomposed (NFD, as macOS writes over SMB) beside
    the item café became a second, identical-looking item once the problem's own hint
    was followed.  Names are compared in NFC: the hint names the item that exists."""
    a, b = ab
    a.cli("put", "mesh", CAFE_NFC, '"espresso"')
    d = mesh.share / "memory" / "mesh"
    (d / f"{CAFE_NFD}.json").write_text('{"value": "from a mac"}')
    sync_json(a, code=1)
    sync_json(b, code=1)
    for n in (a, b):
        e = _errors(n)[f"memory/mesh/{CAFE_NFD}.json"]
        assert "memory/mesh/caf%c3%a9.json" in e["hint"] and "already" in e["hint"], e
        assert "%cc%81" not in e["hint"]
        assert n.sql("SELECT key FROM mesh_memory") == [(CAFE_NFC,)]


def test_two_file_names_that_normalise_to_one_make_one_item(mesh: Mesh, ab):
    """No item yet: both spellings of café.json point to the one NFC name; once one is
    renamed as its hint says, the other's hint says the item exists: one item."""
    a, b = ab
    d = mesh.share / "memory" / "mesh"
    (d / f"{CAFE_NFC}.json").write_text('{"value": "nfc"}')
    (d / f"{CAFE_NFD}.json").write_text('{"value": "nfd"}')
    sync_json(a, code=1)
    errs = _errors(a)
    for name in (CAFE_NFC, CAFE_NFD):
        assert "rename it to memory/mesh/caf%c3%a9.json" in errs[f"memory/mesh/{name}.json"]["hint"]
    os.rename(d / f"{CAFE_NFD}.json", d / "caf%c3%a9.json")  # as the hint says
    sync_json(a, code=1)
    sync_json(b, code=1)
    for n in (a, b):
        assert n.sql("SELECT key, value FROM mesh_memory") == [(CAFE_NFC, '"nfd"')]
        assert "already" in _errors(n)[f"memory/mesh/{CAFE_NFC}.json"]["hint"]


def test_badly_named_file_is_reported_when_its_event_arrives(mesh: Mesh):
    """In events mode a badly named hand-made file was silent until the next full
    rescan (here an hour away)."""
    a = mesh.node("a")
    a.start(MESHSYNC_WATCH__MODE="events", MESHSYNC_WATCH__RESCAN_INTERVAL="3600")
    wait_for(lambda: _ready(a), 20, what="daemon ready")
    (mesh.share / "memory" / "mesh" / "My Notes.json").write_text('{"value": 1}')
    e = wait_for(lambda: _errors(a).get("memory/mesh/My Notes.json"), 10, what="the bad name reported")
    assert "^my%20^notes.json" in e["hint"]
    assert a.stop() == 0


EDITOR_FILES = ["#note.json#", ".#note.json", "4913", "5036", ".note.json.swp", ".note.json.swo", ".note.json.swx",
                "note.json~", "note.json___jb_tmp___", "note.json___jb_old___"]


def test_editor_files_are_neither_items_nor_problems(mesh: Mesh, tmp_path: Path):
    """Emacs's #x.json# and .#x.json, vim's 4913 probe and swap files, backups, JetBrains'
    safe-write files: not items and not problems in memory folders; in a skill folder
    not part of the skill's version and never copied into a skill mirror."""
    mirror = tmp_path / "mirror"
    env = {"MESHSYNC_CACHE__SKILL_DIRS": json.dumps([str(mirror)])}
    a, b = mesh.node("A", **env), mesh.node("B", init=False, **env)
    b.cli("init")
    d = mesh.share / "memory" / "mesh"
    (d / "note.json").write_text('{"value": "n"}')
    sk = mesh.share / "skills" / "edited"
    sk.mkdir()
    (sk / "SKILL.md").write_text("---\nname: edited\ndescription: x\n---\n# Edited\n")
    sync_json(a)
    sync_json(b)
    before = {n.node_id: n.sql("SELECT name, source_node, updated_at FROM mesh_skills") for n in (a, b)}
    for name in EDITOR_FILES:
        (d / name).write_text("{ half-saved")
        (sk / name).write_text("# half-saved")
    for n in (a, b):
        st = sync_json(n)
        assert st["skipped"] == 0 and (st["to_index"], st["to_share"]) == (0, 0), (n.node_id, n.status()["errors"])
        assert n.sql("SELECT key FROM mesh_memory") == [("note",)]
        assert n.sql("SELECT name, source_node, updated_at FROM mesh_skills") == before[n.node_id]
    assert sorted(p.name for p in (mirror / "edited").iterdir() if p.name != ".meshsync-managed") == ["SKILL.md"]


def test_a_file_still_being_written_is_not_imported_half_written(mesh: Mesh):
    """Taken as written, a hand-made file is no longer rewritten, and so no longer
    compared-and-set: the pass that read a SKILL.md in the middle of its writer's
    truncate-then-write committed the half it read (an empty skill), which then stayed
    as the "last good version" when the whole file turned out over the limit (found by
    the hostile-corpus test).  A fresh foreign file must still be what was read when its
    version is committed; else the item waits for the next pass."""
    from meshsync import faults

    a = mesh.node("a")
    node = mesh.engine(a)
    d = mesh.share / "skills" / "growing"
    d.mkdir()
    (d / "SKILL.md").write_text("")  # truncated: the writer has not written yet
    (mesh.share / "memory" / "mesh" / "k.json").write_text('{"value": "first"}')

    def writer_finishes(*_args) -> None:
        (d / "SKILL.md").write_text("# Growing\nthe whole content\n")
        (mesh.share / "memory" / "mesh" / "k.json").write_text('{"value": "saved again"}')

    faults.install("propagate.start", writer_finishes)
    try:
        node.sync()
    finally:
        faults.remove("propagate.start")
    assert a.sql("SELECT name FROM mesh_skills") == [] and a.sql("SELECT key FROM mesh_memory") == []
    node.sync()
    assert a.sql("SELECT content FROM mesh_skills") == [("# Growing\nthe whole content\n",)]
    assert a.value("mesh", "k") == "saved again"
