"""Reading memory files for a pass: the helper process beside it (meshsync/replicas/share/memread.py),
and a first import that applies items while it reads them (ShareDetector.changed).

A pass with the helper must end exactly as one without it: the same rows, the same
state, the same problems reported for bad files, whichever process read them; and a
helper that dies or stalls only means the pass reads the rest itself.  A first import
that applies what it has read in batches must end exactly as one that reads everything
first.  Real files, a real helper process, real SQLite; the helper is killed or stopped
with real signals.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import Mesh

from meshsync import layout
from meshsync.engine.node import Node
from meshsync.replicas.share import memread

N_GOOD = 1200


def _children() -> list[int]:
    """This process's child processes that run the helper."""
    out = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            kids = (task / "children").read_text().split()
        except FileNotFoundError:  # a thread that ended meanwhile (the share's writers)
            continue
        for pid in kids:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            if b"meshsync.replicas.share.memread" in cmd:
                out.append(int(pid))
    return out


def _fill(share: Path, tmp: Path) -> None:
    """Good files, and one bad file of each kind every hundred, so that both the pass's
    part of the list and the helper's hold some."""
    m = share / "memory" / "mesh"
    m.mkdir(parents=True, exist_ok=True)
    outside = tmp / "outside.json"
    outside.write_text('{"value": "outside"}')
    for i in range(N_GOOD):
        doc = {"value": {"n": i, "text": f"note {i}", "big": 12345678901234567890 if i % 50 == 0 else 1}}
        if i % 3 == 0:  # hand-made: no scope, key or time (its mtime stamps it)
            (m / f"note.{i:05d}.json").write_text(json.dumps(doc))
        else:
            doc.update(scope="mesh", key=f"note.{i:05d}", node_id="elsewhere", updated_at=1_700_000_000 + i)
            (m / f"note.{i:05d}.json").write_text(json.dumps(doc))
        if i % 100 == 0:
            j = i // 100
            (m / f"broken.{j}.json").write_bytes(b'{"value": [1, 2,')
            (m / f"novalue.{j}.json").write_bytes(b'{"val": 1}')
            (m / f"bom.{j}.json").write_bytes(b'\xef\xbb\xbf{"value": 1}')
            (m / f"big.{j}.json").write_bytes(b'{"value": "' + b"x" * 5000 + b'"}')
            (m / f"Upper{j}.json").write_bytes(b'{"value": 1}')
            (m / f"nodescope.{j}.json").write_bytes(b'{"value": 1, "scope": "node", "key": "nodescope.%d"}' % j)
            os.symlink(outside, m / f"link.{j}.json")
            os.mkfifo(m / f"pipe.{j}.json")
            fd = os.open(os.fsencode(str(m)) + b"/bad\xff%d.json" % j, os.O_CREAT | os.O_WRONLY, 0o644)
            os.write(fd, b'{"value": 1}')
            os.close(fd)


def _node(mesh: Mesh, name: str, readahead_min: int) -> Node:
    node = mesh.engine(mesh.node("n", home=f"node-{name}"), limits={"max_file_bytes": 4096})
    node.readahead_min = readahead_min
    return node


def _outcome(node: Node) -> dict:
    db = sqlite3.connect(node.s.index)
    try:
        return {
            "rows": db.execute("SELECT scope, key, value, node_id, updated_at FROM mesh_memory ORDER BY scope, key").fetchall(),
            "state": db.execute("SELECT kind, scope, key, stamp, node, digest, deleted, share_hash, rel"
                                " FROM meshsync_state ORDER BY kind, scope, key").fetchall(),
            "errors": db.execute("SELECT path, kind, reason, hint FROM meshsync_errors ORDER BY path").fetchall(),
        }
    finally:
        db.close()


def _run(mesh: Mesh, tmp_path: Path, on_progress=None, first_import: bool = True) -> tuple[dict, dict, Node]:
    """The same share read by a node without the helper and one with it: at the nodes'
    first import (the helper starts before the walk), or at a later pass (it starts when
    the walk has found that many files to read)."""
    alone = _node(mesh, "alone", 0)
    with_helper = _node(mesh, "helped", 0 if not first_import else 1)
    if not first_import:
        # A skill the nodes have synced: their next pass is not a first import (it has
        # recorded share signatures), and the skill adds no memory row.
        skill = mesh.share / "skills" / "primer"
        skill.mkdir(parents=True)
        (skill / "SKILL.md").write_text("---\nname: primer\ndescription: d\n---\nprimer\n")
        alone.sync()
        with_helper.sync()
        with_helper.readahead_min = 1
    _fill(mesh.share, tmp_path)
    alone.sync()
    phases: set[str] = set()

    def progress(what: str, done: int, total: int | None) -> None:
        phases.add(what)
        if on_progress is not None:
            on_progress(what, done, total)

    with_helper.progress = progress
    st = with_helper.sync()
    assert ("importing memory files" in phases) == first_import  # the first import applies as it reads
    assert ("reading changed memory files" in phases) != first_import
    assert st.to_index == N_GOOD
    return _outcome(alone), _outcome(with_helper), with_helper


@pytest.mark.parametrize("first_import", [True, False])
def test_a_pass_with_the_helper_ends_as_one_without(mesh: Mesh, tmp_path: Path, first_import: bool):
    want, got, node = _run(mesh, tmp_path, first_import=first_import)
    assert node.helper_read >= memread.DEPTH * memread.CHUNK  # the chunks it was asked first, at least
    assert len(want["rows"]) == N_GOOD and len(want["errors"]) >= 9 * (N_GOOD // 100)
    assert got == want
    assert _children() == []


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP])
def test_a_helper_that_dies_or_stalls_leaves_the_rest_to_the_pass(mesh: Mesh, tmp_path: Path, monkeypatch, sig):
    monkeypatch.setattr(memread, "STALL_S", 2.0)
    hit = []

    def progress(what: str, done: int, total: int | None) -> None:
        if what.endswith("memory files") and done == 500:
            pids = _children()
            assert pids, "no helper process while the pass reads"
            for pid in pids:
                os.kill(pid, sig)
            hit.extend(pids)

    want, got, node = _run(mesh, tmp_path, progress)
    assert hit
    assert got == want
    assert node.helper_read < N_GOOD
    assert _children() == []


def _share_files(share: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for dirpath, _dirs, files in os.walk(share):
        for name in files:
            p = Path(dirpath) / name
            rel = str(p.relative_to(share))
            out[rel] = "link" if p.is_symlink() else "fifo" if p.is_fifo() else p.read_bytes()
            if rel.startswith(".meshsync/journal/"):  # the items written, whatever their order and time
                out[rel] = sorted(it for line in out[rel].splitlines() for it in json.loads(line)["items"])
            elif rel.startswith(".meshsync/history/"):  # what each record keeps, not when it was written
                out[rel] = {k: v for k, v in json.loads(out[rel]).items() if k != "recorded_at_ms"}
            elif rel.startswith(".meshsync/nodes/"):  # which process wrote last, and when
                out[rel] = sorted(json.loads(out[rel]))
    return out


@pytest.mark.parametrize("helper", [False, True])
def test_a_first_import_that_applies_as_it_reads_ends_as_one_that_reads_first(mesh: Mesh, tmp_path: Path,
                                                                             helper: bool):
    """The share holds good and bad files, tombstones of another node (one file came
    back by hand after its delete, one old copy was restored: both are restores that
    beat the delete, R10), the index
    rows of a foreign writer (newer, older and index-only), and the cache entries of a
    tool: everything a first import looks at besides the files it reads."""
    wn = mesh.node("w")  # `meshsync init`: the share's marker
    _fill(mesh.share, tmp_path)
    w = mesh.engine(wn)
    w.sync()
    for i in range(30, 40):
        assert w.delete_item(layout.memory_id("mesh", f"note.{i:05d}"))
    w.sync()
    m = mesh.share / "memory" / "mesh"
    tombs = list((mesh.share / ".meshsync" / "tombstones").rglob("*.json"))
    assert len(tombs) == 10
    (m / "note.00030.json").write_text('{"value": "back by hand"}')
    (m / "note.00031.json").write_text(json.dumps({"value": "old copy", "scope": "mesh", "key": "note.00031",
                                                   "node_id": "w", "updated_at": 1_600_000_000}))
    os.utime(m / "note.00031.json", (1_600_000_000, 1_600_000_000))  # a copy from long ago
    w.close()

    nodes = []
    # Newer than the files (written just now), yet within the hour that separates a
    # clock ahead from one far ahead (R12: a stamp beyond it is taken as written now,
    # which would differ between the two nodes' passes).
    ahead = int(time.time()) + 600
    for name, early in (("late", False), ("early", True)):
        share = tmp_path / f"share-{name}"
        subprocess.run(["cp", "-a", str(mesh.share), str(share)], check=True)  # fifos and links as they are
        home = tmp_path / f"home-{name}"
        node = mesh.engine(node_id="n", share=share, index=tmp_path / f"{name}.sqlite", openclaw_home=home,
                           limits={"max_file_bytes": 4096})
        node.settle_early = early
        node.readahead_min = 1 if early and helper else 0
        db = sqlite3.connect(node.s.index)
        with db:
            for i in range(40, 60):  # 40-49 newer than their files, 50-59 older
                t = ahead + i if i < 50 else 1_600_000_000
                db.execute("INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) VALUES (?,?,?,?,?)",
                           ("mesh", f"note.{i:05d}", json.dumps({"from": "index", "i": i}), "sql", t))
            for j in range(5):
                db.execute("INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) VALUES (?,?,?,?,?)",
                           ("mesh", f"only.index.{j}", json.dumps(j), "sql", 1_700_000_000))
        db.close()
        home.mkdir()
        (home / "mesh-memory.json").write_text(json.dumps({
            "mesh:note.00061": {"value": "from the cache", "nodeId": "tool", "ts": ahead + 100}}))
        node.sync()
        nodes.append((node, share, home))

    (late, late_share, late_home), (early, early_share, early_home) = nodes
    want, got = _outcome(late), _outcome(early)
    assert len(want["rows"]) == N_GOOD - 8 + 5 and len(want["errors"]) >= 9 * (N_GOOD // 100)
    assert got == want
    assert _share_files(early_share) == _share_files(late_share)
    assert json.loads((early_home / "mesh-memory.json").read_bytes()) == json.loads(
        (late_home / "mesh-memory.json").read_bytes())
    rows = {k: v for _s, k, v, _n, _u in got["rows"]}
    assert json.loads(rows["note.00030"]) == "back by hand" and json.loads(rows["note.00031"]) == "old copy"
    assert json.loads(rows["note.00041"]) == {"from": "index", "i": 41}
    assert json.loads(rows["note.00051"])["n"] == 51
    assert json.loads(rows["note.00061"]) == "from the cache"
    if helper:
        assert early.helper_read > 0
    assert _children() == []


HELPER_PROBE = """
import os, sys
sys.path.insert(0, sys.argv[1])  # meshsync importable by this process only, as with run.py --src
from pathlib import Path
from meshsync.replicas.share import memread
from meshsync.replicas.share.store import Share
share = Share(Path(sys.argv[2]), max_file_bytes=1 << 20)
rels = sorted("memory/mesh/" + n for n in os.listdir(Path(sys.argv[2]) / "memory" / "mesh"))
helper = memread.Helper.start(share, "n", 64)
got = dict(memread.read_all(share, rels, "n", 64, helper))
# Read once it answered: before its exec the child's environ is still this process's.
env = Path(f"/proc/{helper.proc.pid}/environ").read_bytes().split(b"\\0")
path = next((e for e in env if e.startswith(b"PYTHONPATH=")), b"PYTHONPATH=").decode()[11:].split(os.pathsep)
helper.close()
print(path[0], helper.answered, helper.failed, sum(1 for r in got.values() if isinstance(r, tuple)))
"""


def test_the_helper_runs_the_meshsync_the_pass_runs(tmp_path: Path):
    """The helper is started with the folder that holds the pass's own meshsync first on
    its PYTHONPATH, whatever the working directory and however the pass found meshsync
    (an installed copy of another version must not answer for it; a pass run from a
    checkout or a snapshot, meshsync installed nowhere, must get a helper at all).  Seen
    failing: it was given meshsync/replicas/ (the package's old parent, before the
    replicas/ move), so from another folder the helper died at its import and the pass
    read everything alone."""
    repo = Path(memread.__file__).resolve().parents[3]
    share = tmp_path / "share"
    (share / "memory" / "mesh").mkdir(parents=True)
    for i in range(2000):
        (share / "memory" / "mesh" / f"note.{i:05d}.json").write_text(json.dumps({"value": i}))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", HELPER_PROBE, str(repo), str(share)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120, check=True).stdout.split()
    first, answered, failed, read = out
    assert Path(first) == repo, out
    assert failed == "False" and int(answered) > 0 and int(read) == 2000, out
