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
        assert st["to_share"] == 0 and st["errors"] == 0, (n.node_id, st)
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
