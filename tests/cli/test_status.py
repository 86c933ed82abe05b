"""`meshsync status` and the inspection commands (`ls`, `get`, `skill ls`, `skill get`):
readable at a terminal, `--json` for scripts, the same with and without a running daemon;
each item's origin (node, time) and state: in sync, pending, conflict, refused, error.

Real `meshsync` processes on real folders; the share, the index and foreign SQLite writers
are set up as an operator would meet them."""

from __future__ import annotations

import json
import os
import sqlite3
import time

from helpers import Mesh, MeshNode, memfile, wait_for
from sync_helpers import foreign_put, quick_node, sync_json

REFUSING = {"MESHSYNC_SCOPES__WRITE": '["mesh"]'}


def ls(n: MeshNode, *args: str) -> dict[str, dict]:
    """`meshsync ls --json` keyed "scope:key"."""
    return {f"{r['scope']}:{r['key']}": r for r in json.loads(n.cli("ls", *args, "--json").stdout)["items"]}


def ls_text(n: MeshNode) -> dict[str, list[str]]:
    """`meshsync ls` (no --json): tab-separated scope, key, node, time, state."""
    out = {}
    for line in n.cli("ls").stdout.splitlines():
        cols = line.split("\t")
        assert len(cols) == 5, line
        out[f"{cols[0]}:{cols[1]}"] = cols
    return out


def status_text(n: MeshNode) -> str:
    return n.cli("status").stdout


def section(text: str, head: str) -> list[str]:
    """The line starting with ``head`` and its indented lines."""
    lines = text.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith(head))
    out = [lines[i]]
    for ln in lines[i + 1:]:
        if not ln.startswith("  "):
            break
        out.append(ln)
    return out


# --- status without a daemon --------------------------------------------------------------------


def test_status_without_daemon_text_and_json(mesh: Mesh):
    a = mesh.node("a")
    a.cli("put", "mesh", "one", "1")
    a.cli("skill", "put", "triage", "-", input="---\nname: triage\ndescription: d\n---\n# Triage\n")
    st = a.status()
    # The fields of status --json (docs/schemas/status.json; tests/cli/test_json.py holds every
    # command's output to its schema).
    for k in ("schema_version", "node_id", "share", "index", "cache", "daemon", "initialised", "counts",
              "last_sync", "last_pass", "watch", "last_change", "errors", "conflicts", "watch_planned"):
        assert k in st, k
    assert st["daemon"] == {"running": False, "pid": None}
    assert st["watch"] is None and st["watch_planned"]["mode"] in ("events", "poll")
    c = st["counts"]
    assert (c["memory"], c["skills"], c["pending"], c["refused"], c["problems"], c["conflicts"]) == (1, 1, 0, 0, 0, 0)
    assert "pending_outbox" not in c and "errors" not in c  # one counter per meaning (issue 20)
    assert st["share"]["available"] is True and st["last_sync"] > time.time() - 60
    assert st["last_pass"]["seconds"] > 0  # the pass's own duration, not 0 (it was stored too early)
    text = status_text(a)
    lines = text.splitlines()
    assert lines[0] == "node      a"
    assert f"share     {mesh.share}  available" in lines
    assert any(ln.startswith("daemon    not running") for ln in lines)
    assert any(ln.startswith("watch     ") and "once the daemon runs" in ln for ln in lines)
    assert "items     1 memory, 1 skills, 0 tombstones" in lines
    assert "pending   0 local changes not yet synced" in lines
    assert any(ln.startswith("last sync 20") and "ago" in ln for ln in lines)
    assert "problems  0" in lines and "refused   0" in lines and "conflicts 0" in lines
    assert not any(ln.startswith("warnings") for ln in lines)
    # A skill OpenClaw may not load is a warning, shown apart; it is synced anyway.
    a.cli("skill", "put", "bare", "-", input="# no header\n")
    st = a.status()
    assert st["counts"]["warnings"] == 1 and st["counts"]["problems"] == 0
    warnings = [e for e in st["errors"] if e["kind"] == "warning"]
    assert warnings[0]["path"] == "skill:bare" and "frontmatter" in warnings[0]["reason"]
    w = section(status_text(a), "warnings")
    assert w[0] == "warnings  1 (synced anyway)" and w[1].startswith("  skill:bare: SKILL.md has no YAML frontmatter")


def test_status_before_init_and_with_share_unavailable(mesh: Mesh, tmp_path):
    a = mesh.node("a", init=False)
    st = a.status()
    assert st["initialised"] is False
    assert "run `meshsync init`" in status_text(a)
    a.cli("init")
    gone = tmp_path / "unmounted"
    st = json.loads(a.cli("status", "--json", MESHSYNC_SHARE=str(gone)).stdout)
    assert st["share"]["available"] is False and "does not exist" in st["share"]["reason"]
    text = a.cli("status", MESHSYNC_SHARE=str(gone)).stdout
    assert f"share     {gone}  UNAVAILABLE: " in text


def test_pending_counts_outbox_rows_while_no_daemon_runs(mesh: Mesh):
    a = mesh.node("a")
    foreign_put(a, "mesh", "p1", 1)
    foreign_put(a, "mesh", "p2", 2)
    foreign_put(a, "mesh", "p2", 3)  # two writes, one item
    st = a.status()
    assert st["counts"]["pending"] == 2  # items, not the outbox's three rows
    assert "pending   2 local changes not yet synced (run `meshsync sync` or start the daemon)" in status_text(a)
    # A CLI write while the share is unavailable stays pending too.
    marker = mesh.share / ".meshsync"
    os.rename(marker, mesh.share / "marker-away")
    try:
        out = a.cli("put", "mesh", "p3", "3").stdout
        assert "not exported" in out
        assert a.status()["counts"]["pending"] == 3
    finally:
        os.rename(mesh.share / "marker-away", marker)
    sync_json(a)
    assert a.status()["counts"]["pending"] == 0


def test_refused_writes_listed_apart_from_problems(mesh: Mesh):
    mesh.node("a")
    d = quick_node(mesh, "d", **REFUSING)
    foreign_put(d, "user:bob", "note", "not for the share")
    foreign_put(d, "mesh", "ok", "fine")
    sync_json(d, code=1)
    st = d.status()
    refused = [e for e in st["errors"] if e["kind"] == "refused"]
    assert [e["path"] for e in refused] == ["index:user:bob:note"]
    r = refused[0]
    assert "refused" in r["reason"] and "scopes.write" in r["hint"]
    assert st["counts"]["refused"] == 1 and st["counts"]["problems"] == 0
    assert st["counts"]["pending"] == 0  # the refused row waits in the outbox, but is not "pending"
    text = status_text(d)
    assert section(text, "problems") == ["problems  0"]
    ref = section(text, "refused")
    assert ref[0] == "refused   1 local writes this node may not export (they stay local)"
    assert ref[1].startswith("  user:bob:note: local write to user:bob:note refused")
    assert ref[2].startswith("    -> add the scope to scopes.write")
    # A file problem is a problem, not a refusal.
    memfile(mesh.share, "mesh", "broken.json").write_text('{"value": ')
    sync_json(d, code=1)
    st = d.status()
    assert st["counts"]["problems"] == 1 and st["counts"]["refused"] == 1
    assert section(status_text(d), "problems")[1].startswith("  memory/mesh/broken.json: ")


def test_conflicts_and_errors_counted(mesh: Mesh):
    a = mesh.node("a")
    b = quick_node(mesh, "b")
    a.cli("put", "mesh", "k", '"from a"')
    foreign_put(b, "mesh", "k", "older on b", updated_at=int(time.time()) - 100)
    sync_json(b)
    st = b.status()
    assert st["counts"]["conflicts"] == 1
    cf = st["conflicts"][0]
    assert (cf["beaten"]["node"], cf["winner"]["node"]) == ("b", "a") and "value" not in cf["beaten"]
    assert cf["item"] == "mesh:k" and cf["beaten"]["updated_at"] < cf["winner"]["updated_at"]  # seconds
    text = status_text(b)
    con = section(text, "conflicts")
    assert con[0] == "conflicts 1"
    assert con[1] == f"  #{cf['id']} mesh:k: version of b beaten by a"
    assert "meshsync conflicts restore ID" in con[2]
    # An index row that is not valid is an error of kind "index".
    foreign_put(b, "mesh", "bad", 1, updated_at="yesterday")
    sync_json(b, code=1)
    errs = b.status()["errors"]
    assert [e["kind"] for e in errs if e["path"] == "index:mesh:bad"] == ["index"]


# --- status with a daemon -----------------------------------------------------------------------


def test_status_text_while_the_daemon_runs(mesh: Mesh):
    a = mesh.node("a")
    a.start(MESHSYNC_WATCH__MODE="poll", MESHSYNC_WATCH__POLL_INTERVAL="0.2")
    wait_for(lambda: "ready: first pass done" in a.log(), 20, what="daemon ready")
    foreign_put(a, "mesh", "live", 1)
    wait_for(lambda: a.status()["counts"]["pending"] == 0 and a.status()["counts"]["memory"] == 1, 10,
             what="the daemon exports the foreign write")
    text = status_text(a)
    assert f"daemon    running (pid {a.daemon.pid})" in text.splitlines()
    assert any(ln.startswith("watch     poll (forced by watch.mode") for ln in text.splitlines())
    st = a.status()
    assert st["watch"]["mode"] == "poll" and "watch_planned" not in st
    assert st["last_change"]["items"] == ["mesh:live"]
    # ls and get read the index while the daemon holds it.
    assert ls(a)["mesh:live"]["state"] == "in sync"
    assert a.stop() == 0
    # Afterwards: the same status, without the daemon.
    st = a.status()
    assert st["daemon"]["running"] is False and st["counts"]["memory"] == 1


# --- item states: ls, get, skill ls, skill get --------------------------------------------------


def test_ls_and_get_show_origin_and_in_sync(mesh: Mesh):
    a = mesh.node("a")
    b = quick_node(mesh, "b")
    a.cli("put", "mesh", "hello", '{"w": 1}')
    sync_json(b)
    row = ls(b)["mesh:hello"]
    assert row["node_id"] == "a" and row["state"] == "in sync"
    assert abs(row["updated_at"] - time.time()) < 60 and row["bytes"] == len('{"w":1}')
    cols = ls_text(b)["mesh:hello"]
    assert cols[2] == "a" and cols[4] == "in sync"
    assert cols[3] == time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["updated_at"]))
    g = json.loads(b.cli("get", "mesh", "hello", "--json").stdout)
    assert g["value"] == {"w": 1} and g["node_id"] == "a" and g["state"] == "in sync"
    # Not at a terminal, plain `get` prints the value only (scripts capture it).
    assert b.cli("get", "mesh", "hello").stdout == '{"w":1}\n'
    assert ls(b, "mesh").keys() == {"mesh:hello"} and ls(b, "user:x") == {}


def test_pending_state_outbox_and_unsynced_row(mesh: Mesh):
    a = mesh.node("a")
    foreign_put(a, "mesh", "fresh", 1)  # an outbox row
    assert ls(a)["mesh:fresh"]["state"] == "pending"
    assert ls_text(a)["mesh:fresh"][4] == "pending"
    assert json.loads(a.cli("get", "mesh", "fresh", "--json").stdout)["state"] == "pending"
    sync_json(a)
    assert ls(a)["mesh:fresh"]["state"] == "in sync"
    # A client that bypassed the outbox (its write did not fire the triggers): the row
    # differs from the version last synced, so it is pending all the same.
    db = sqlite3.connect(a.index, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE meshsync_ctl SET applying = 1")
        db.execute("UPDATE mesh_memory SET value = '2' WHERE key = 'fresh'")
        db.execute("UPDATE meshsync_ctl SET applying = 0")
        db.execute("COMMIT")
    finally:
        db.close()
    assert a.sql("SELECT count(*) FROM meshsync_outbox") == [(0,)]
    assert ls(a)["mesh:fresh"]["state"] == "pending"


def test_conflict_state_until_the_item_changes_again(mesh: Mesh):
    a = mesh.node("a")
    b = quick_node(mesh, "b")
    a.cli("put", "mesh", "k", '"from a"')
    foreign_put(b, "mesh", "k", "older on b", updated_at=int(time.time()) - 100)
    sync_json(b)
    cid = json.loads(b.cli("conflicts", "--json").stdout)["conflicts"][0]["id"]
    row = ls(b)["mesh:k"]
    assert row["state"] == "conflict" and row["conflict_id"] == cid and row["node_id"] == "a"
    assert ls_text(b)["mesh:k"][4] == f"conflict (#{cid})"
    assert json.loads(b.cli("get", "mesh", "k", "--json").stdout)["state"] == "conflict"
    # A's side saw no conflict.
    sync_json(a)
    assert ls(a)["mesh:k"]["state"] == "in sync"
    # A newer write settles it: in sync again (the beaten version stays in the history).
    b.cli("put", "mesh", "k", '"newer on b"')
    assert ls(b)["mesh:k"]["state"] == "in sync"
    assert json.loads(b.cli("conflicts", "--json").stdout)["conflicts"][0]["id"] == cid


def test_refused_and_error_states(mesh: Mesh):
    mesh.node("a")
    d = quick_node(mesh, "d", **REFUSING)
    foreign_put(d, "user:bob", "note", "stays here")
    foreign_put(d, "mesh", "bad", 1, updated_at="yesterday")
    foreign_put(d, "mesh", "good", 2)
    sync_json(d, code=1)
    rows = ls(d)
    assert rows["user:bob:note"]["state"] == "refused"
    assert "scopes.write" in rows["user:bob:note"]["hint"] and "refused" in rows["user:bob:note"]["reason"]
    assert rows["mesh:bad"]["state"] == "error" and "updated_at" in rows["mesh:bad"]["reason"]
    assert rows["mesh:good"]["state"] == "in sync"
    text = ls_text(d)
    assert text["user:bob:note"][4] == "refused" and text["mesh:bad"][4] == "error"
    # Still refused on the next pass (the row is not dropped), and not "pending".
    sync_json(d, code=1)
    assert ls(d)["user:bob:note"]["state"] == "refused"
    # A share file that cannot be read puts its item in error on this node.
    memfile(mesh.share, "mesh", "good.json").write_text("not json")
    sync_json(d, code=1)
    g = ls(d)["mesh:good"]
    assert g["state"] == "error" and g["reason"].startswith("memory/mesh/good.json: ")
    # Once allowed to write the scope, the refused row goes out and is in sync.
    d.cli("sync", check=1, MESHSYNC_SCOPES__WRITE='["mesh", "user:*"]')
    assert ls(d)["user:bob:note"]["state"] == "in sync"


def test_skill_ls_and_get_show_origin_and_state(mesh: Mesh):
    a = mesh.node("a")
    b = quick_node(mesh, "b")
    a.cli("skill", "put", "triage", "-", input="# Triage\n")
    sync_json(b)
    rows = {r["name"]: r for r in json.loads(b.cli("skill", "ls", "--json").stdout)["skills"]}
    assert rows["triage"]["source_node"] == "a" and rows["triage"]["state"] == "in sync"
    line = b.cli("skill", "ls").stdout.splitlines()[0].split("\t")
    assert line[0] == "triage" and line[1] == "a" and line[3] == "in sync"
    g = json.loads(b.cli("skill", "get", "triage", "--json").stdout)
    assert g["content"] == "# Triage\n" and g["state"] == "in sync" and g["source_node"] == "a"
    assert b.cli("skill", "get", "triage").stdout == "# Triage\n"  # not a terminal: content only
    assert "frontmatter" in rows["triage"]["warning"]  # synced anyway: the state says in sync
    b.sql("UPDATE mesh_skills SET content = '# Changed\n', updated_at = updated_at + 1 WHERE name = 'triage'")
    rows = {r["name"]: r for r in json.loads(b.cli("skill", "ls", "--json").stdout)["skills"]}
    assert rows["triage"]["state"] == "pending"


def test_json_everywhere_a_script_wants_it(mesh: Mesh):
    a = mesh.node("a")
    a.cli("put", "mesh", "k", "1")
    a.cli("skill", "put", "triage", "-", input="# Triage\n")
    for args in (["ls"], ["ls", "mesh"], ["get", "mesh", "k"], ["skill", "ls"], ["skill", "get", "triage"],
                 ["status"], ["conflicts"], ["sync"]):
        p = a.cli(*args, "--json")
        json.loads(p.stdout)  # one JSON document, nothing else on stdout
    d = json.loads(a.cli("doctor", "--json", check=1).stdout)
    assert d["result"] == "warnings"
