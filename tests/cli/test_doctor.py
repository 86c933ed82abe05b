"""`meshsync doctor` on real folders: a healthy node, and each broken set-up it must name
(missing marker, read-only share or folder, skewed clocks, corrupt or missing index,
read-only cache, bad configuration), with its exit code 0/1/2 and its --json shape."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import Mesh, MeshNode, json_doc, wait_for

RESULTS = {"pass", "warn", "fail"}


def doctor(n: MeshNode, code: int, *prefix: str, **env: str) -> dict:
    """Run `meshsync doctor --json` (optionally under a command prefix such as faketime)."""
    p = subprocess.run([*prefix, sys.executable, "-m", "meshsync", "doctor", "--json"], env=n.env(**env),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == code, f"doctor exited {p.returncode}, wanted {code}\n{p.stdout}\n{p.stderr}"
    assert "Traceback" not in p.stderr, p.stderr
    data = json_doc("doctor", p.stdout)  # held to docs/schemas/doctor.json
    assert data["result"] == ["ok", "warnings", "failures"][code]
    return data


def by_name(data: dict) -> dict[str, dict]:
    return {c["name"]: c for c in data["checks"]}


def not_passing(data: dict) -> dict[str, str]:
    return {c["name"]: c["result"] for c in data["checks"] if c["result"] != "pass"}


@contextmanager
def read_only_view(src: Path, at: Path | None = None):
    """A read-only bindfs mount of ``src`` at ``at`` (default: over ``src`` itself).
    Tests run as root, which ignores permission bits; a read-only mount stops root too."""
    if shutil.which("bindfs") is None:
        pytest.fail("bindfs is not installed (.ci/run installs it)")
    at = at or src
    at.mkdir(exist_ok=True)
    subprocess.run(["bindfs", "-r", "--no-allow-other", str(src), str(at)], check=True)
    try:
        yield at
    finally:
        subprocess.run(["fusermount", "-u", str(at)], check=False)


# --- healthy --------------------------------------------------------------------------------


def test_healthy_node_without_and_with_daemon(mesh: Mesh):
    a = mesh.node("a")
    a.cli("put", "mesh", "hello", '"world"')
    # No daemon: the one warning is that nothing keeps the node in sync.  systemd does not
    # run in the test container: that check passes with a plain statement, it does not warn.
    d = doctor(a, 1)
    assert not_passing(d) == {"daemon": "warn"}, d
    checks = by_name(d)
    for name in ("configuration", "share", "share writable", "clock skew (file server)", "filesystem",
                 "index integrity", "index schema", "index writable", "cache", "daemon", "systemd unit"):
        assert name in checks, f"no {name!r} check: {list(checks)}"
    assert "meshsync run" in checks["daemon"]["hint"]
    if not Path("/run/systemd/system").exists():
        assert "systemd is not running" in checks["systemd unit"]["detail"]
    # Doctor leaves nothing behind: no probe files in the share, the index folder or the cache.
    assert not [p for p in mesh.root.rglob("*doctor*")], list(mesh.root.rglob("*doctor*"))
    # With the daemon running, everything passes: exit 0.
    a.start(MESHSYNC_WATCH__MODE="poll")
    wait_for(lambda: "ready: first pass done" in a.log(), 20, what="daemon ready")
    d = doctor(a, 0)
    assert by_name(d)["daemon"]["detail"].startswith(f"a meshsync daemon (pid {a.daemon.pid})")
    assert a.stop() == 0


def test_text_output_one_line_per_check_with_hints(mesh: Mesh):
    a = mesh.node("a")
    p = a.cli("doctor", check=1)
    lines = p.stdout.splitlines()
    assert lines[-1] == "some checks gave warnings"
    for ln in lines[:-1]:
        assert ln.startswith(("PASS  ", "WARN  ", "FAIL  ", "      -> ")), ln
    warn = lines.index(next(ln for ln in lines if ln.startswith("WARN  daemon:")))
    assert lines[warn + 1].startswith("      -> start it")


def test_json_shape(mesh: Mesh):
    a = mesh.node("a")
    d = doctor(a, 1)
    assert set(d) == {"schema_version", "result", "checks"}
    assert d["checks"], d
    for c in d["checks"]:
        assert set(c) == {"name", "result", "detail", "hint"}, c
        assert c["result"] in RESULTS
        assert isinstance(c["name"], str) and c["name"]
        assert isinstance(c["detail"], str) and c["detail"]
        assert isinstance(c["hint"], str)
        if c["result"] != "pass":
            assert c["hint"], f"a {c['result']} without a hint: {c}"
    names = [c["name"] for c in d["checks"]]
    assert len(names) == len(set(names))


# --- the share -----------------------------------------------------------------------------


def test_missing_marker_fails_and_changes_nothing(mesh: Mesh):
    a = mesh.node("a")
    a.cli("put", "mesh", "keep", '"me"')
    shutil.rmtree(mesh.share / ".meshsync")
    before = sorted(p.relative_to(mesh.share).as_posix() for p in mesh.share.rglob("*"))
    d = doctor(a, 2)
    share = by_name(d)["share"]
    assert share["result"] == "fail"
    assert ".meshsync/ marker" in share["detail"]
    assert "mount the share" in share["hint"] and "meshsync init" in share["hint"]
    # Doctor never "repairs" a missing marker: that would hide an unmounted NAS.
    assert not (mesh.share / ".meshsync").exists()
    assert sorted(p.relative_to(mesh.share).as_posix() for p in mesh.share.rglob("*")) == before


def test_share_path_missing_fails(mesh: Mesh, tmp_path: Path):
    a = mesh.node("a")
    d = doctor(a, 2, MESHSYNC_SHARE=str(tmp_path / "not-mounted"))
    share = by_name(d)["share"]
    assert share["result"] == "fail" and "does not exist" in share["detail"]
    assert not (tmp_path / "not-mounted").exists()


def test_read_only_share_fails_writable_check(mesh: Mesh, tmp_path: Path):
    a = mesh.node("a")
    with read_only_view(mesh.share, tmp_path / "ro-share") as ro:
        d = doctor(a, 2, MESHSYNC_SHARE=str(ro))
    checks = by_name(d)
    assert checks["share"]["result"] == "pass"  # mounted and readable: sync can still import
    w = checks["share writable"]
    assert w["result"] == "fail", d
    assert "Read-only file system" in w["detail"]
    assert "write access" in w["hint"]
    assert set(not_passing(d)) <= {"share writable", "daemon"}, d


def test_read_only_scope_folder_fails_writable_check(mesh: Mesh):
    """The marker is writable but memory/mesh is not (e.g. made by another node's user
    without the common group): sync would fail on every export, so doctor says so."""
    a = mesh.node("a")
    with read_only_view(mesh.share / "memory" / "mesh"):
        d = doctor(a, 2)
    w = by_name(d)["share writable"]
    assert w["result"] == "fail" and "memory/mesh/" in w["detail"], d
    assert "share_files.group" in w["hint"]


# --- clocks --------------------------------------------------------------------------------


def test_file_server_clock_skew(mesh: Mesh):
    """This node's clock 10 minutes behind the file server's: the probe file's mtime is in
    this node's future."""
    if shutil.which("faketime") is None:
        pytest.fail("faketime is not installed (.ci/run installs it)")
    a = mesh.node("a")
    d = doctor(a, 2, "faketime", "-f", "-10m")
    c = by_name(d)["clock skew (file server)"]
    assert c["result"] == "fail", d
    # The file server ahead by 10 minutes, give or take the probe's own milliseconds
    # (a measured +599.99s once failed a check for "+6").
    assert c["detail"].startswith("file server clock is +") and "NTP" in c["hint"], c
    skew = float(c["detail"].split("is ")[1].split("s ")[0])
    assert 590 < skew < 610


def _journal(share: Path, node: str) -> Path:
    return share / ".meshsync" / "journal" / f"{node}.log"


def test_other_node_clock_skew_from_its_journal(mesh: Mesh):
    a = mesh.node("a")
    b = mesh.node("b")
    b.cli("put", "mesh", "from.b", "1")  # b's journal gets a line stamped with b's clock
    jb = _journal(mesh.share, "b")
    assert jb.exists()
    # In step: pass.
    assert by_name(doctor(a, 1))["clock skew (b)"]["result"] == "pass"
    # The file server saw b's write 10 minutes after b's clock said: b is 10 minutes behind.
    future = time.time() + 600
    os.utime(jb, (future, future))
    d = doctor(a, 2)
    c = by_name(d)["clock skew (b)"]
    assert c["result"] == "fail", d
    assert "node b's clock is -6" in c["detail"] and "NTP" in c["hint"]
    # A few seconds: a warning, not a failure.
    soon = time.time() + 5
    os.utime(jb, (soon, soon))
    assert by_name(doctor(a, 1))["clock skew (b)"]["result"] == "warn"
    # The node's own journal is not compared (its probe file measures it better).
    a.cli("put", "mesh", "from.a", "1")
    assert _journal(mesh.share, "a").exists()
    assert "clock skew (a)" not in by_name(doctor(a, 1))


def test_hostile_journals_warn_without_hanging_or_following_links(mesh: Mesh, tmp_path: Path):
    a = mesh.node("a")
    d = mesh.share / ".meshsync" / "journal"
    d.mkdir(parents=True, exist_ok=True)
    (d / "garbage.log").write_bytes(b"[1, 2]\n")
    (d / "nodict.log").write_bytes(b'{"node": "x"}\n')
    (d / "empty.log").write_bytes(b"")
    os.mkfifo(d / "fifo.log")
    outside = tmp_path / "outside.log"
    outside.write_text(json.dumps({"ms": int(time.time() * 1000), "node": "outside"}) + "\n")
    os.symlink(outside, d / "link.log")
    data = doctor(a, 1)
    checks = by_name(data)
    for n in ("garbage", "nodict", "empty", "fifo", "link"):
        assert checks[f"clock skew ({n})"]["result"] == "warn", checks
    assert "clock skew (outside)" not in checks


# --- the index -----------------------------------------------------------------------------


def _many_rows(n: MeshNode, count: int = 400) -> None:
    now = int(time.time())
    db = sqlite3.connect(n.index, isolation_level=None)
    try:
        db.execute("BEGIN")
        db.executemany("INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) VALUES (?,?,?,?,?)",
                       [("mesh", f"k{i}", json.dumps("x" * 300), "tool", now) for i in range(count)])
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()


def test_corrupt_index_fails(mesh: Mesh):
    a = mesh.node("a")
    _many_rows(a)
    size = a.index.stat().st_size
    assert size > 64 * 1024
    with open(a.index, "r+b") as f:  # garbage over the middle pages
        f.seek(size // 2 - 8192)
        f.write(os.urandom(16384))
    d = doctor(a, 2)
    failed = {c["name"]: c for c in d["checks"] if c["result"] == "fail"}
    idx = failed.get("index integrity") or failed.get("index")
    assert idx is not None, d
    assert "meshsync init" in idx["hint"] and "meshsync sync" in idx["hint"]


def test_missing_index_fails_and_is_not_created(mesh: Mesh):
    a = mesh.node("a")
    a.index.unlink()
    d = doctor(a, 2)
    c = by_name(d)["index"]
    assert c["result"] == "fail" and "does not exist" in c["detail"]
    assert "meshsync init" in c["hint"]
    assert not a.index.exists()


def test_read_only_index_folder_fails(mesh: Mesh):
    a = mesh.node("a")
    a.cli("put", "mesh", "k", "1")
    with read_only_view(a.home):
        d = doctor(a, 2)
        # status still works on a node whose index cannot be written
        st = a.status()
        assert st["counts"]["memory"] == 1
    failed = {c["name"] for c in d["checks"] if c["result"] == "fail"}
    assert "index writable" in failed or "index" in failed, d
    assert "cache" in failed  # the cache lives in the same read-only folder here


# --- the cache -----------------------------------------------------------------------------


def test_read_only_cache_fails(mesh: Mesh):
    a = mesh.node("a")
    a.cli("put", "mesh", "k", "1")  # creates the cache
    assert a.cache_file.exists()
    with read_only_view(a.openclaw_home):
        d = doctor(a, 2)
    c = by_name(d)["cache"]
    assert c["result"] == "fail" and "Read-only file system" in c["detail"], d
    assert "openclaw_home" in c["hint"]
    assert set(not_passing(d)) == {"cache", "daemon"}, d


def test_cache_not_created_yet_passes(mesh: Mesh, tmp_path: Path):
    a = mesh.node("a")
    d = doctor(a, 1, MESHSYNC_OPENCLAW_HOME=str(tmp_path / "new" / "openclaw"))
    assert by_name(d)["cache"]["result"] == "pass"
    assert not (tmp_path / "new").exists()


# --- configuration -------------------------------------------------------------------------


def test_bad_configuration_is_a_failed_check(mesh: Mesh):
    a = mesh.node("a")
    d = doctor(a, 2, MESHSYNC_WATCH__MODE="bogus")
    assert [c["name"] for c in d["checks"]] == ["configuration"]
    c = d["checks"][0]
    assert c["result"] == "fail" and "watch.mode" in c["detail"] and c["hint"]
    p = a.cli("doctor", check=2, MESHSYNC_WATCH__MODE="bogus")
    assert p.stdout.startswith("FAIL  configuration:")


# --- the systemd check: which unit runs the daemon (issue 20) ------------------------------------


def test_the_unit_a_daemon_runs_in_is_read_from_its_cgroup():
    """doctor names the unit from the daemon's /proc/PID/cgroup: the system unit, the
    template's instances (it warned "no active meshsync unit" for them), a user unit
    (under user@UID.service), on cgroup v2 and v1; nothing for a login session."""
    from meshsync.cli.doctor import unit_of_cgroup

    assert unit_of_cgroup("0::/system.slice/meshsync.service\n") == ("system", "meshsync.service")
    assert unit_of_cgroup("0::/system.slice/system-meshsync.slice/meshsync@openclaw.service\n") == (
        "system", "meshsync@openclaw.service")
    assert unit_of_cgroup("0::/user.slice/user-1000.slice/user@1000.service/app.slice/meshsync.service\n") == (
        "user", "meshsync.service")
    v1 = "12:pids:/system.slice/x\n1:name=systemd:/system.slice/system-meshsync.slice/meshsync@bob.service\n"
    assert unit_of_cgroup(v1) == ("system", "meshsync@bob.service")
    assert unit_of_cgroup("0::/user.slice/user-1000.slice/session-3.scope\n") is None
    assert unit_of_cgroup("0::/\n") is None
    assert unit_of_cgroup("") is None
    # This very process: whatever it runs in, the answer is a pair or None, never an error.
    with open("/proc/self/cgroup") as f:
        got = unit_of_cgroup(f.read())
    assert got is None or (got[0] in ("system", "user") and got[1].endswith(".service"))
