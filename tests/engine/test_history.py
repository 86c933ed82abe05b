"""R11: beaten and deleted versions are kept on the share, so every node lists them and any
node restores them, whichever node detected the conflict or the delete.

Real `meshsync` processes on one shared folder; each test was seen failing before the
history moved to the share (the conflict history was a table of the node that saw it,
and a delete kept no value at all).
"""

from __future__ import annotations

import json
import os
import shutil
import time

from helpers import Mesh, wait_for
from sync_helpers import mem_path, quick_node, sync_json


def history(n, *args: str) -> list[dict]:
    """`conflicts --json` or `deleted --json`: the list of records (held to its schema)."""
    return n.cli_json(*args)[args[0]]


def test_a_beaten_version_is_listed_and_restored_on_every_node(mesh: Mesh):
    a = mesh.node("a")
    b = quick_node(mesh, "b")
    # b writes first (exported at once), a writes the same key later: a's write wins on
    # a, and b's version is beaten there, on the node that is not b.
    b.cli("put", "mesh", "k", '"from b"')
    # A put is stamped in whole seconds (the seed's schema): a's in a later second than
    # b's, so that a's is the newer whatever the machine's speed.
    second = int(time.time())
    wait_for(lambda: int(time.time()) > second, 5, what="the next second")
    a.cli("put", "mesh", "k", '{"from": "a"}')
    sync_json(b)
    assert b.value("mesh", "k") == {"from": "a"}
    on_a, on_b = history(a, "conflicts"), history(b, "conflicts")
    assert on_a == on_b, "every node lists the same history"
    [rec] = on_b
    assert rec["item"] == "mesh:k" and rec["beaten"]["node"] == "b" and rec["beaten"]["value"] == "from b"
    assert rec["winner"]["node"] == "a" and rec["recorded_by"] == "a"
    text = b.cli("conflicts").stdout
    assert f"#{rec['id']}" in text and "from b" in text
    # The person on b brings their own write back, from b.
    out = b.cli("restore", rec["id"]).stdout
    assert "restored mesh:k" in out
    sync_json(a)
    assert a.value("mesh", "k") == b.value("mesh", "k") == "from b"
    # `conflicts restore ID` is the same command, and a short prefix of the ID works.
    b.cli("conflicts", "restore", rec["id"][:6])
    assert b.cli("conflicts", "restore", "ffffffffffff", check=4).stderr.startswith("meshsync: no record")


def test_a_deleted_item_is_restored_from_a_node_that_never_saw_it(mesh: Mesh):
    a = mesh.node("a")
    b = quick_node(mesh, "b")
    a.cli("put", "mesh", "gone", '{"keep": [1, 2, 3]}')
    a.cli("skill", "put", "tool", "-", input="---\nname: tool\ndescription: t\n---\nuse it\n")
    sync_json(b)
    # Deleted three ways: by the CLI on a, and by hand on the share (seen by b).
    a.cli("rm", "mesh", "gone")
    shutil.rmtree(mesh.share / "skills" / "tool")
    sync_json(b)
    sync_json(a)
    assert a.value("mesh", "gone") is None and not (mesh.share / "skills" / "tool").exists()
    # A node that joins later and never saw either item lists and restores both.
    c = quick_node(mesh, "c")
    sync_json(c)
    deleted = {r["item"]: r for r in history(c, "deleted")}
    assert set(deleted) == {"mesh:gone", "skill:tool"}
    assert deleted["mesh:gone"]["last"]["value"] == {"keep": [1, 2, 3]}
    assert deleted["mesh:gone"]["recorded_by"] == "a"
    assert deleted["skill:tool"]["last"]["content"].endswith("use it\n")
    assert deleted["skill:tool"]["recorded_by"] == "b"
    assert history(a, "deleted") == history(c, "deleted")
    c.cli("restore", deleted["mesh:gone"]["id"])
    c.cli("restore", deleted["skill:tool"]["id"])
    sync_json(a)
    assert a.value("mesh", "gone") == {"keep": [1, 2, 3]}
    assert a.sql("SELECT content FROM mesh_skills WHERE name = 'tool'")[0][0].endswith("use it\n")
    assert json.loads(mem_path(mesh.share, "mesh", "gone").read_text())["value"] == {"keep": [1, 2, 3]}


def test_history_survives_a_lost_index_and_is_written_once(mesh: Mesh):
    a = mesh.node("a")
    b = quick_node(mesh, "b")
    c = quick_node(mesh, "c")
    for n in (a, b, c):
        n.cli("put", "mesh", "x", json.dumps(f"{n.node_id}'s"))
    for n in (a, b, c):
        sync_json(n)
    sync_json(a)
    before = history(a, "conflicts")
    assert {r["beaten"]["value"] for r in before} == {"a's", "b's"}
    # Each beaten version is one record, however many nodes saw it beaten.
    files = [p for p in (mesh.share / ".meshsync" / "history").rglob("*.json")]
    assert len(files) == 2
    # a loses its index: the history is on the share, not in it.
    for p in a.home.glob("index.sqlite*"):
        p.unlink()
    a.cli("init")
    sync_json(a)
    assert history(a, "conflicts") == before


def test_node_scope_history_stays_with_its_node(mesh: Mesh):
    a = mesh.node("a")
    b = quick_node(mesh, "b")
    a.cli("put", "node", "mine", '"private"')
    a.cli("rm", "node", "mine")
    b.cli("put", "mesh", "shared", '"x"')
    b.cli("rm", "mesh", "shared")
    assert [r["item"] for r in history(a, "deleted")] == ["mesh:shared", "node:mine"]
    assert [r["item"] for r in history(b, "deleted")] == ["mesh:shared"]
    assert b.cli("restore", history(a, "deleted")[1]["id"], check=4)


def test_history_is_pruned_after_its_retention(mesh: Mesh):
    a = mesh.node("a", MESHSYNC_TOMBSTONE_RETENTION_DAYS="30", MESHSYNC_CONFLICT_RETENTION_DAYS="60")
    a.cli("put", "mesh", "k", '"v"')
    a.cli("rm", "mesh", "k")
    root = mesh.share / ".meshsync" / "history"
    [recent] = list(root.rglob("*.json"))
    # A month folder whose month ended longer ago than the longer retention goes; one that
    # ended within it stays.
    old, kept = root / "2001-01", root / time.strftime("%Y-%m", time.gmtime(time.time() - 45 * 86400))
    for d in (old, kept):
        d.mkdir(exist_ok=True)
        shutil.copy(recent, d / recent.name)
    os.utime(root)
    sync_json(a)
    assert not old.exists() and kept.exists() and recent.exists()


def _record_file(folder, i: int) -> str:
    """A record file of the share's history, as History.keep writes it; returns its name."""
    from meshsync import formats, layout
    from meshsync.replicas.share.history import record
    rec = record("beaten", layout.memory_id("mesh", f"k{i}"), "", 1_700_000_000_000 + i, "b", "d" * 16,
                 value=b"1", by_stamp=1_700_000_000_001 + i, by_node="a", by_deleted=False, side="share",
                 recorded_by="a", now_ms=1_700_000_000_000)
    name = f"beaten-{rec.id}.json"
    (folder / name).write_bytes(formats.render_history(rec))
    return name


def test_syncthing_copies_of_history_records_are_folded_and_unchanged_months_not_listed(tmp_path):
    """A Syncthing folder's full pass removes Syncthing's conflict copies of history
    records (R11: the record keeps the same version; a copy whose record is gone is put
    back under its name first).  A month folder found without a copy is listed again
    only when its signature moved: a year of history is not listed on every full pass,
    yet a copy arriving later is still folded, even with the folder's mtime set back."""
    from meshsync.replicas.share.history import History
    from meshsync.replicas.share.store import Share

    root = tmp_path / "share"
    months = [root / ".meshsync" / "history" / f"2026-{m:02d}" for m in (1, 2, 3)]
    names = {}
    for i, folder in enumerate(months):
        folder.mkdir(parents=True)
        names[folder] = [_record_file(folder, i * 10 + j) for j in range(5)]
    hist = History(Share(root, max_file_bytes=1 << 20), "a")
    # The clock of each call is given: a folder changed in the last 3 s is never trusted
    # unchanged (the same tick may hold another change), later ones are.
    settled = lambda: time.time_ns() + 10 * 10**9  # noqa: E731
    assert hist.fold_copies(time.time_ns()) == 0 and hist.listed == 3
    assert hist.fold_copies(time.time_ns()) == 0 and hist.listed == 3, "fresh folders are listed again"
    assert hist.fold_copies(settled()) == 0 and hist.listed == 3
    assert hist.fold_copies(settled()) == 0 and hist.listed == 0, "unchanged months are not listed"

    # Both nodes kept the same version while apart: Syncthing's copy of a record.
    feb = months[1]
    rec = names[feb][0]
    copy = feb / rec.replace(".json", ".sync-conflict-20261204-101010-ABCDEFG.json")
    copy.write_bytes((feb / rec).read_bytes())
    assert hist.fold_copies(settled()) == 1 and hist.listed == 1
    assert not copy.exists() and (feb / rec).exists()

    # A copy whose record is gone: the record comes back under its own name.
    mar = months[2]
    rec = names[mar][1]
    data = (mar / rec).read_bytes()
    hist.fold_copies(settled())
    hist.fold_copies(settled())
    assert hist.listed == 0
    copy = mar / rec.replace(".json", ".sync-conflict-20261204-111111-HIJKLMN.json")
    st = os.stat(mar)
    os.rename(mar / rec, copy)  # Syncthing renames the file it replaces to the copy's name
    os.utime(mar, ns=(st.st_atime_ns, st.st_mtime_ns))  # the folder's mtime set back: its ctime moved
    assert os.stat(mar).st_mtime_ns == st.st_mtime_ns
    assert hist.fold_copies(settled()) == 1 and hist.listed == 1
    assert (mar / rec).read_bytes() == data and not copy.exists()
    assert sorted(p.name for p in mar.iterdir()) == sorted(names[mar])
