"""OpenClaw integration (issue 6): the writable Phase 1 cache, native skill folders,
scope access control, the secret guard, and a Node.js better-sqlite3 client — all with
real `meshsync run` daemons on one share."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, Mesh, MeshNode, memfile, wait_for

NODE_DIR = REPO / "tests" / "node"


def start(n: MeshNode, **env: str) -> None:
    """Start n's daemon and wait for this start's first pass (the log is appended to
    across restarts: a restarted daemon's earlier "ready" does not count)."""
    before = n.log().count("ready: first pass done")
    n.start(**env)
    wait_for(lambda: n.log().count("ready: first pass done") > before, 30, what=f"daemon {n.node_id} ready")


def phase1_write(n: MeshNode, change) -> None:
    """What a Phase 1 tool does: read the whole cache, change it, write it back in
    place (not atomically)."""
    d = json.loads(n.cache_file.read_text())
    change(d)
    with open(n.cache_file, "w") as f:
        f.write(json.dumps(d))


def test_phase1_cache_writes_propagate(mesh: Mesh):
    a, b = mesh.node("a"), mesh.node("b")
    a.cli("put", "mesh", "old", '"kept"')
    a.cli("put", "mesh", "doomed", '"bye"')
    start(a)
    start(b)
    wait_for(lambda: "mesh:doomed" in b.cache(), 10, what="b has the items")
    # A second generation of B's cache, so both items are no longer "young" there.
    a.cli("put", "mesh", "filler", "0")
    wait_for(lambda: "mesh:filler" in b.cache(), 10, what="second cache generation on b")

    # 1. A Phase 1 tool on B adds an entry and changes another.
    def edit(d):
        d["mesh:fromtool"] = {"value": {"n": 1}, "nodeId": "b", "ts": 0}
        d["mesh:old"]["value"] = "changed by tool"
    phase1_write(b, edit)
    wait_for(lambda: a.value("mesh", "fromtool") == {"n": 1}, 15, what="tool entry reaches a's index")
    wait_for(lambda: a.value("mesh", "old") == "changed by tool", 15, what="tool change reaches a")
    assert json.loads(memfile(mesh.share, "mesh", "fromtool.json").read_text())["value"] == {"n": 1}
    # The next cache refresh on B did not overwrite the tool's write.
    wait_for(lambda: b.cache().get("mesh:fromtool", {}).get("value") == {"n": 1}, 10, what="b cache keeps it")

    # 2. A half-written cache file is not read as empty, and not overwritten meanwhile.
    good = b.cache_file.read_text()
    b.cache_file.write_text(good[: len(good) // 2])
    a.cli("put", "mesh", "during", '"mid-write"')
    wait_for(lambda: b.value("mesh", "during") == "mid-write", 15, what="b imports while its cache is broken")
    # (30 s: each poll runs a `meshsync status` process, slow on a loaded CI machine.)
    wait_for(lambda: any("mesh-memory.json" in e["path"] for e in b.status()["errors"]), 30,
             what="broken cache reported")
    assert b.cache_file.read_text() == good[: len(good) // 2], "meshsync overwrote a cache a tool was writing"
    assert a.value("mesh", "old") == "changed by tool" and b.value("mesh", "doomed") == "bye"
    b.cache_file.write_text(good)  # the tool finishes its write
    wait_for(lambda: b.cache().get("mesh:during", {}).get("value") == "mid-write", 15, what="cache rewritten after")

    # 3. Deleting an entry that has been in the cache for a while deletes the item.
    wait_for(lambda: "mesh:doomed" in b.cache(), 5)
    phase1_write(b, lambda d: d.pop("mesh:doomed"))
    wait_for(lambda: a.row("mesh", "doomed") is None, 15, what="cache delete reaches a")
    assert not memfile(mesh.share, "mesh", "doomed.json").exists()
    assert b.value("mesh", "old") == "changed by tool"  # nothing else went
    assert a.stop() == 0 and b.stop() == 0


def test_phase1_skill_drop_and_mass_drop_guard(mesh: Mesh):
    a, b = mesh.node("a"), mesh.node("b")
    for i in range(30):
        a.cli("put", "mesh", f"k{i}", str(i))
    start(a)
    start(b)
    wait_for(lambda: len(b.cache()) == 30, 15, what="b cache filled")
    a.cli("put", "mesh", "gen2", "1")
    wait_for(lambda: "mesh:gen2" in b.cache(), 10)
    # A tool drops a new skill file into B's cache.
    (b.cache_skills / "triage.md").write_text("---\nname: triage\ndescription: sort\n---\n# Triage\n")
    wait_for(lambda: (mesh.share / "skills" / "triage" / "SKILL.md").exists(), 15, what="skill reaches share")
    wait_for(lambda: a.sql("SELECT content FROM mesh_skills WHERE name='triage'") ==
             [("---\nname: triage\ndescription: sort\n---\n# Triage\n",)], 15, what="skill in a's index")
    # A stale copy that lost most entries deletes nothing.
    phase1_write(b, lambda d: [d.pop(k) for k in list(d)[:25]])
    wait_for(lambda: any("dropped" in e["reason"] for e in b.status()["errors"]), 15, what="mass drop reported")
    assert len(a.sql("SELECT key FROM mesh_memory")) == 31
    wait_for(lambda: len(b.cache()) == 31, 15, what="b cache restored")
    assert a.stop() == 0 and b.stop() == 0


def test_stale_phase1_copy_written_back_undoes_nothing(mesh: Mesh):
    """A Phase 1 tool reads the cache, meshsync then refreshes it (an update and a delete
    from another node), and the tool writes its now stale copy back with its own one
    change.  The tool's change is a write; the versions our last refresh replaced, written
    back unchanged, are not: they must not beat the newer update or bring the deleted
    item back (R2, R4)."""
    a, b = mesh.node("a"), mesh.node("b")
    for k, v in (("x", '"v1"'), ("gone", '"g"'), ("other", '"o"')):
        a.cli("put", "mesh", k, v)
    a.sync()
    b.sync()
    stale = json.loads(b.cache_file.read_text())  # the tool reads B's cache
    a.cli("put", "mesh", "x", '"v2"')
    a.cli("rm", "mesh", "gone")
    a.sync()
    b.sync()
    assert b.cache()["mesh:x"]["value"] == "v2" and "mesh:gone" not in b.cache()
    stale["mesh:y"] = {"value": "new", "nodeId": "b", "ts": int(time.time())}
    with open(b.cache_file, "w") as f:  # ...and writes its copy back, in place
        f.write(json.dumps(stale))
    b.sync()
    a.sync()
    b.sync()
    for n in (a, b):
        assert n.value("mesh", "x") == "v2", n.node_id
        assert n.value("mesh", "gone") is None, n.node_id
        assert n.value("mesh", "y") == "new", n.node_id
        assert n.cache()["mesh:x"]["value"] == "v2" and "mesh:gone" not in n.cache()
    assert not (mesh.share / "memory" / "mesh" / "gone.json").exists()


DROP_SKILL_DURING_PASS = """
import os, sys
import meshsync.replicas.cache.store as c
real, done = c.Cache.write_memory, []
def write_memory(self, entries):
    sig = real(self, entries)
    if not done:  # the pass has refreshed mesh-memory.json; a tool drops a skill now
        done.append(1)
        with open(os.path.join(os.environ["MESHSYNC_OPENCLAW_HOME"], "mesh", "skills", "late.md"), "w") as f:
            f.write("# Late\\n")
    return sig
c.Cache.write_memory = write_memory
from meshsync.cli.main import main
sys.exit(main(["sync"]))
"""


def test_skill_dropped_while_the_pass_refreshes_the_cache_is_imported(mesh: Mesh):
    """A tool drops a skill file into mesh/skills/ after the pass looked at that folder
    and while it refreshes the cache.  The pass must not record the folder as seen with
    that file in it: the next pass would skip the folder and the skill was never
    imported (found under load by test_phase1_skill_drop_and_mass_drop_guard)."""
    a = mesh.node("a")
    a.cli("put", "mesh", "k", "1")
    a.sync()
    a.sql("UPDATE mesh_memory SET value = '2' WHERE key = 'k'")  # so that the pass rewrites the cache
    p = subprocess.run([sys.executable, "-c", DROP_SKILL_DURING_PASS], env=a.env(), capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert (a.cache_skills / "late.md").read_text() == "# Late\n"  # the tool's file is left alone
    a.sync()
    assert (mesh.share / "skills" / "late" / "SKILL.md").read_text() == "# Late\n"
    assert a.sql("SELECT content FROM mesh_skills WHERE name = 'late'") == [("# Late\n",)]


def test_skill_dirs_mirror_full_skill_folders(mesh: Mesh, tmp_path: Path):
    a = mesh.node("a")
    skills_out = tmp_path / "openclaw-skills"
    b = mesh.node("b", MESHSYNC_CACHE__SKILL_DIRS=json.dumps([str(skills_out)]))
    # Somebody's own skill in that folder, with the same name as a shared one.
    (skills_out / "mine").mkdir(parents=True)
    (skills_out / "mine" / "SKILL.md").write_text("mine, not meshsync's")
    start(a)
    start(b)
    src = mesh.share / "skills" / "deploy"
    (src / "scripts").mkdir(parents=True)
    (src / "references").mkdir()
    (src / "SKILL.md").write_text("---\nname: deploy\ndescription: ship it\n---\nSteps\n")
    (src / "scripts" / "run.sh").write_text("#!/bin/sh\necho deploy\n")
    os.chmod(src / "scripts" / "run.sh", 0o755)
    (src / "references" / "notes.md").write_text("notes")
    dest = skills_out / "deploy"
    wait_for(lambda: (dest / "references" / "notes.md").exists() and (dest / "scripts" / "run.sh").exists(), 15,
             what="skill folder mirrored")
    assert (dest / "SKILL.md").read_text().startswith("---\nname: deploy")
    assert os.stat(dest / "scripts" / "run.sh").st_mode & stat.S_IXUSR
    assert (dest / ".meshsync-managed").read_text().splitlines() == ["deploy", "node b"]
    # A shared skill named like the hand-made folder: the folder is left alone, with a warning.
    (mesh.share / "skills" / "mine").mkdir()
    (mesh.share / "skills" / "mine" / "SKILL.md").write_text("no frontmatter here\n")
    wait_for(lambda: b.sql("SELECT name FROM mesh_skills WHERE name='mine'"), 15, what="broken skill still synced")
    wait_for(lambda: any("not created by meshsync" in e["reason"] for e in b.status()["errors"]), 15)
    assert (skills_out / "mine" / "SKILL.md").read_text() == "mine, not meshsync's"
    assert any("frontmatter" in e["reason"] and "mine" in e["path"] for e in b.status()["errors"])
    # A skill deleted from the mesh disappears from the folder; the hand-made one stays.
    shutil.rmtree(src)
    wait_for(lambda: not dest.exists(), 15, what="mirrored folder removed")
    assert (skills_out / "mine").exists()
    assert a.stop() == 0 and b.stop() == 0


def test_scopes_per_node_and_share_file_mode(mesh: Mesh):
    w = mesh.node("w", MESHSYNC_SCOPES__WRITE='["mesh"]', MESHSYNC_SHARE_FILES__FILE_MODE="0640")
    r = mesh.node("r", MESHSYNC_SCOPES__READ='["mesh"]')
    start(w)
    start(r)
    memfile(mesh.share, "user/alice", "pref.json").parent.mkdir(parents=True, exist_ok=True)
    memfile(mesh.share, "user/alice", "pref.json").write_text('{"value": "alice only"}')
    wait_for(lambda: w.value("user:alice", "pref") == "alice only", 15, what="w reads user scopes")
    w.cli("put", "mesh", "shared", '"everyone"')
    wait_for(lambda: r.value("mesh", "shared") == "everyone", 15, what="r gets mesh")
    assert r.row("user:alice", "pref") is None
    assert "user:alice:pref" not in r.cache()
    mode = stat.S_IMODE(memfile(mesh.share, "mesh", "shared.json").stat().st_mode)
    assert mode == 0o640, oct(mode)
    # A local write to a scope w may not write stays local and is reported.
    w.sqlite3_cli("INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) VALUES "
                  "('user:bob', 'secret-plan', '\"local\"', 'w', strftime('%s','now'));")
    wait_for(lambda: any("user:bob:secret-plan" in e["path"] and "refused" in e["reason"]
                         for e in w.status()["errors"]), 15, what="refusal reported")
    assert not (mesh.share / "memory" / "user" / "bob").exists()
    assert w.value("user:bob", "secret-plan") == "local"
    assert w.stop() == 0 and r.stop() == 0


def test_secret_guard(mesh: Mesh):
    a, b = mesh.node("a"), mesh.node("b")
    start(a)
    start(b)
    key = "AKIA" + "IOSFODNN7EXAMPLE"
    a.cli("put", "mesh", "aws", json.dumps({"note": f"creds {key}"}), check=7)  # refused: its own exit code
    wait_for(lambda: any("aws-access-key" in e["reason"] for e in a.status()["errors"]), 15, what="refused")
    errs = json.dumps(a.status()["errors"])
    assert key not in errs and "mesh:aws" in errs
    assert not memfile(mesh.share, "mesh", "aws.json").exists()
    assert b.row("mesh", "aws") is None
    # A skill with a private key block is not exported either.
    b.sqlite3_cli("INSERT INTO mesh_skills (name, source_node, content, updated_at) VALUES "
                  "('leaky', 'b', '-----BEGIN RSA PRIVATE KEY-----\nMIIB...', strftime('%s','now'));")
    wait_for(lambda: any("private-key" in e["reason"] for e in b.status()["errors"]), 15, what="skill refused")
    assert not (mesh.share / "skills" / "leaky").exists()
    # Allowing the item lets it through.
    assert a.stop() == 0
    start(a, MESHSYNC_SECRETS__ALLOW_ITEMS='["mesh:aws"]')
    a.cli("put", "mesh", "aws", json.dumps({"note": f"creds {key}", "v": 2}), MESHSYNC_SECRETS__ALLOW_ITEMS='["mesh:aws"]')
    wait_for(lambda: memfile(mesh.share, "mesh", "aws.json").exists(), 15, what="allowed item exported")
    assert a.stop() == 0 and b.stop() == 0


def _node_client(db: Path, *args: str) -> object:
    p = subprocess.run(["node", str(NODE_DIR / "store_client.js"), str(db), *args], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@pytest.mark.timeout(1500)
def test_better_sqlite3_client_interoperates(mesh: Mesh):
    if not (NODE_DIR / "node_modules" / "better-sqlite3").exists():
        # .ci/run installs it beforehand; a newcomer's first run compiles it here.
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR,
                       check=True, timeout=1200)
    a, b = mesh.node("a"), mesh.node("b")
    start(a)
    start(b)
    # The Node client writes through the plain schema while the daemon runs.
    assert _node_client(a.index, "put", "mesh", "user.preferences", '{"shortAnswers": true}', "ceo") == {"ok": True}
    wait_for(lambda: b.cache().get("mesh:user.preferences", {}).get("value") == {"shortAnswers": True}, 15,
             what="node client write reaches b")
    # Rows that arrived from the share are visible to the Node client, FTS included.
    memfile(mesh.share, "mesh", "recipe.json").write_text('{"value": "pancakes with blueberries"}')
    wait_for(lambda: _node_client(a.index, "get", "mesh", "recipe") is not None, 15, what="share row in a's index")
    assert _node_client(a.index, "search", "blueberries") == [{"scope": "mesh", "key": "recipe"}]
    assert _node_client(b.index, "search", "shortAnswers") == [{"scope": "mesh", "key": "user.preferences"}]
    # A skill and a delete from the Node client.
    _node_client(b.index, "put-skill", "triage", "# Triage rules\n", "ceo")
    wait_for(lambda: (mesh.share / "skills" / "triage" / "SKILL.md").exists(), 15, what="node skill exported")
    assert _node_client(b.index, "delete", "mesh", "recipe") == {"changes": 1}
    wait_for(lambda: _node_client(a.index, "get", "mesh", "recipe") is None, 15, what="delete reaches a")
    assert _node_client(a.index, "search", "blueberries") == []
    assert a.stop() == 0 and b.stop() == 0


def test_seed_client_string_values_round_trip(mesh: Mesh):
    """R10: the seed's putMemory stores a string as its raw text (`hello mesh`, not
    `"hello mesh"`) and its getMemory reads a value as JSON when it parses, else as the
    text.  Such a row is read the same way: it syncs as the string, the writer's row is
    left as written, and the other node (and its Node client) gets the string."""
    if not (NODE_DIR / "node_modules" / "better-sqlite3").exists():
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR,
                       check=True, timeout=1200)
    a, b = mesh.node("a"), mesh.node("b")
    assert _node_client(a.index, "put-value", "mesh", "greeting", '"hello mesh"', "ceo") == {"ok": True}
    assert _node_client(a.index, "put-value", "mesh", "braces", '"{not json"', "ceo") == {"ok": True}
    assert a.sql("SELECT value FROM mesh_memory WHERE key = 'greeting'") == [("hello mesh",)]
    for n in (a, b, a):
        st = n.cli_json("sync")
        assert st["skipped"] == 0, (n.node_id, n.status()["errors"])
    assert json.loads(memfile(mesh.share, "mesh", "greeting.json").read_bytes())["value"] == "hello mesh"
    assert a.sql("SELECT value FROM mesh_memory WHERE key = 'greeting'") == [("hello mesh",)]  # left as written
    assert b.value("mesh", "greeting") == "hello mesh" and b.value("mesh", "braces") == "{not json"
    for n in (a, b):
        assert n.cache()["mesh:greeting"]["value"] == "hello mesh"
        assert n.cache()["mesh:braces"]["value"] == "{not json"
        assert json.loads(n.cli("get", "mesh", "greeting").stdout) == "hello mesh"
        got = _node_client(n.index, "get", "mesh", "greeting")
        assert got["value"] == "hello mesh" and got["node_id"] == "ceo", (n.node_id, got)
    # A later write of the same key through the seed's client on b comes back to a.
    _node_client(b.index, "put-value", "mesh", "greeting", '"hello again"', "ceo")
    b.cli("sync")
    a.cli("sync")
    assert _node_client(a.index, "get", "mesh", "greeting")["value"] == "hello again"
    assert a.cache()["mesh:greeting"]["value"] == "hello again"
