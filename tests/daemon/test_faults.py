"""R12: resource faults are survived, retried when they clear, and reported truthfully.

Real processes meet real faults: small ``tmpfs`` mounts for the share, the index and the
cache (filled to the last byte), ``chmod``, ``chattr +i``, read-only remounts, a foreign
``BEGIN IMMEDIATE`` held past the busy timeout, corrupted and deleted index files, and a
node whose clock is a day ahead (libfaketime).  Each case checks that the daemon stays up
(or exits once with a clear message and an exit code systemd does not restart on), that
the fault is reported (log line, ``status --json``, ``doctor``), that work resumes within
seconds once the fault clears (a bound, not the 300 s rescan) and that nothing is lost.

Tests run as root (CI does: mounts need it).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fault_helpers import NoDacNode, require_no_dac
from helpers import Mesh, MeshNode, wait_for

SKILL_MD = "---\nname: sk\ndescription: a skill written while the share is full\n---\nbody\n"


# --- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture
def tmpfs() -> Iterator[Callable[..., Path]]:
    """``tmpfs(path, size="1m")`` mounts a small tmpfs at ``path`` (made if needed);
    every mount is undone (lazily: a daemon may still be stopping) at the end."""
    if os.geteuid() != 0:
        pytest.fail("the fault tests mount tmpfs and need root (CI runs as root)")
    mounted: list[Path] = []

    def mount(path: Path, size: str = "1m") -> Path:
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
        mounted.append(path)
        return path

    yield mount
    for p in reversed(mounted):
        subprocess.run(["chattr", "-R", "-i", str(p)], capture_output=True)
        subprocess.run(["umount", "-l", str(p)], check=False)


def fill(folder: Path, name: str = "filler.bin") -> Path:
    """Fill the file system of ``folder`` to the last byte with one file; returns it."""
    p = folder / name
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        chunk = b"\0" * 65536
        while True:
            try:
                os.write(fd, chunk)
            except OSError:
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
    finally:
        os.close(fd)
    return p


def start(n: MeshNode, **env: str) -> None:
    n.start(**env)
    wait_for(lambda: "ready: first pass done" in n.log(), 20, what=f"daemon {n.node_id} ready")


def errors(n: MeshNode) -> dict[str, dict]:
    return {e["path"]: e for e in n.status()["errors"]}


def alive(n: MeshNode) -> bool:
    return n.daemon is not None and n.daemon.poll() is None


def no_traceback(*nodes: MeshNode) -> None:
    for n in nodes:
        assert "Traceback" not in n.log(), f"{n.node_id} logged a traceback:\n{n.log()[-3000:]}"


def passes_after(n: MeshNode, since: float) -> bool:
    """A pass of ``n``'s daemon ended after ``since`` (time.time())."""
    last = n.status().get("last_sync")
    return bool(last and last > since)


def skill_rows(n: MeshNode) -> dict[str, str]:
    return {name: content for name, content in n.sql("SELECT name, content FROM mesh_skills")}


def doctor(n: MeshNode) -> dict[str, dict]:
    """`meshsync doctor --json` as {check name: check}; it never prints a traceback."""
    p = n.cli("doctor", "--json", check=False)
    assert "Traceback" not in p.stderr, p.stderr
    return {c["name"]: c for c in json.loads(p.stdout)["checks"]}


def failed_checks(n: MeshNode) -> dict[str, str]:
    return {name: f"{c['detail']} -> {c['hint']}" for name, c in doctor(n).items() if c["result"] == "fail"}


def faults(n: MeshNode) -> list[str]:
    """What `status --json` reports as current faults (reason texts)."""
    return [f["reason"] for f in n.status().get("faults", [])]


class IndexApart(MeshNode):
    """A node whose index lives in its own folder (``idx/``), so that a small file system
    can be mounted there for the index alone (the node's log stays writable)."""

    @property
    def index(self) -> Path:
        return self.home / "idx" / "index.sqlite"


# --- 1. a skill written while the share is full --------------------------------------------------


def test_skill_written_while_the_share_is_full_is_exported_once_space_is_freed(tmpfs, mesh: Mesh):
    """The export fails part-way (ENOSPC on SKILL.md after its folder was made): the real
    error is reported, the skill is never recorded as synced, removing the half-made
    folder deletes nothing, and once space is freed it is exported within seconds."""
    tmpfs(mesh.share)
    a, b = mesh.node("a"), mesh.node("b")
    start(a)
    start(b)
    filler = fill(mesh.share)
    a.cli("skill", "put", "sk", "-", input=SKILL_MD)
    err = wait_for(lambda: errors(a).get("index:skill:sk"), 10, what="the failed export reported")
    assert "No space left on device" in err["reason"], err
    st = a.status()
    assert st["counts"]["pending"] == 1, st["counts"]
    assert not any("has no SKILL.md" in e["reason"] for e in st["errors"]), st["errors"]
    assert not a.sql("SELECT 1 FROM meshsync_state WHERE kind = 's' AND key = 'sk'"), "recorded as synced"
    assert a.cli_json("skill", "ls")["skills"][0]["state"] == "pending"
    # The folder the failed export made (if any) is not the skill's share side: removing
    # it deletes nothing.
    folder = mesh.share / "skills" / "sk"
    if folder.exists():
        assert not any(folder.iterdir())
        t = time.time()
        folder.rmdir()
        wait_for(lambda: passes_after(a, t), 15, what="a pass after the rmdir")
    assert skill_rows(a) == {"sk": SKILL_MD}
    assert "sk" not in skill_rows(b)
    filler.unlink()
    t0 = time.monotonic()
    wait_for(lambda: skill_rows(b).get("sk") == SKILL_MD, 20, interval=0.05, what="b imports the skill")
    assert time.monotonic() - t0 < 10, "not retried within seconds of the space being freed"
    assert (folder / "SKILL.md").read_text() == SKILL_MD
    wait_for(lambda: "index:skill:sk" not in errors(a) and a.status()["counts"]["pending"] == 0, 10,
             what="the error and the pending count cleared")
    assert alive(a) and alive(b)
    no_traceback(a, b)


# --- 3. failed exports are retried on a timer and counted as pending -------------------------


def test_export_to_a_read_only_share_is_pending_and_retried_within_seconds(tmpfs, mesh: Mesh):
    """A write made while the share is mounted read-only waits as pending (with the real
    reason) and goes out within seconds of `mount -o remount,rw`, not at the next rescan."""
    tmpfs(mesh.share)
    a, b = mesh.node("a"), mesh.node("b")
    start(a)
    start(b)
    subprocess.run(["mount", "-o", "remount,ro", str(mesh.share)], check=True)
    a.cli("put", "mesh", "k", '"written while read-only"')
    err = wait_for(lambda: errors(a).get("index:mesh:k"), 10, what="the failed export reported")
    assert "Read-only file system" in err["reason"] and "read-only" in err["hint"], err
    st = a.status()
    assert st["counts"]["pending"] == 1, st["counts"]
    assert "cannot export 1 item(s) to the share" in a.log()
    subprocess.run(["mount", "-o", "remount,rw", str(mesh.share)], check=True)
    t0 = time.monotonic()
    wait_for(lambda: b.value("mesh", "k") == "written while read-only", 20, interval=0.05, what="b imports k")
    assert time.monotonic() - t0 < 10, "not retried within seconds of the remount"
    wait_for(lambda: a.status()["counts"]["pending"] == 0 and "index:mesh:k" not in errors(a), 10,
             what="pending back to 0")
    assert "exports resumed" in a.log()
    assert alive(a) and alive(b)
    no_traceback(a, b)


# --- 2. no raw tracebacks: each fault is survived, reported and retried ---------------------


def test_index_disk_full(tmpfs, mesh: Mesh, tmp_path: Path):
    """The index's disk fills up: the daemon stays up and says so (not "cannot rollback"),
    status and doctor report it, a CLI write fails with a clear message, and what came
    meanwhile is imported within seconds of space being freed."""
    idx = tmpfs(tmp_path / "node-a" / "idx", "2m")
    a, b = mesh.node("a", cls=IndexApart), mesh.node("b")
    start(a)
    start(b)
    filler = fill(idx)
    big = "x" * 600_000  # more than the index can take now
    b.sql("INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) VALUES ('mesh', 'big', ?, 'b', ?)",
          (json.dumps(big), int(time.time())))
    wait_for(lambda: "disk is full" in a.log(), 15, what="a logs the full index disk")
    assert "cannot rollback" not in a.log()
    assert any("full" in f for f in faults(a)), a.status()
    assert any("full" in d for d in failed_checks(a).values()), failed_checks(a)
    p = a.cli("put", "mesh", "small", '"v"', check=False)
    assert p.returncode == 6 and "Traceback" not in p.stderr and "full" in p.stderr, (p.returncode, p.stderr)
    assert alive(a)
    filler.unlink()
    t0 = time.monotonic()
    wait_for(lambda: a.value("mesh", "big") == big, 20, what="a imports what came while the disk was full")
    assert time.monotonic() - t0 < 10
    wait_for(lambda: not faults(a), 10, what="the fault cleared in status")
    assert alive(a) and alive(b)
    no_traceback(a, b)


def test_cache_disk_full(tmpfs, mesh: Mesh):
    """The cache's disk fills up: the daemon stays up, reports the cache problem (status,
    doctor), rewrites the cache within seconds of space being freed; a CLI put with no
    daemon stores and exports the write and says the cache could not be written."""
    a, b = mesh.node("a"), mesh.node("b")
    home = tmpfs(a.openclaw_home)
    start(a)
    start(b)
    filler = fill(home)
    b.cli("put", "mesh", "k", '"from b"')
    wait_for(lambda: a.value("mesh", "k") == "from b", 10, what="a imports k")
    err = wait_for(lambda: errors(a).get(str(a.cache_file)), 10, what="the cache problem reported")
    assert "No space left on device" in err["reason"], err
    assert "cache" in failed_checks(a)
    assert alive(a)
    filler.unlink()
    t0 = time.monotonic()
    wait_for(lambda: a.cache().get("mesh:k", {}).get("value") == "from b", 20, what="a's cache rewritten")
    assert time.monotonic() - t0 < 10
    wait_for(lambda: str(a.cache_file) not in errors(a), 10, what="the cache problem cleared")
    assert a.stop() == 0
    filler = fill(home)
    p = a.cli("put", "mesh", "k2", '"while full"', check=False)
    assert "Traceback" not in p.stderr and p.returncode == 1, (p.returncode, p.stderr)
    assert "exported to the share" in p.stdout and "cache" in p.stdout + p.stderr, (p.stdout, p.stderr)
    wait_for(lambda: b.value("mesh", "k2") == "while full", 10, what="the write went out all the same")
    filler.unlink()
    no_traceback(a, b)


def test_cache_file_immutable(tmpfs, mesh: Mesh):
    """mesh-memory.json made immutable (chattr +i): reported while it lasts (status,
    doctor), rewritten within seconds once it is writable again."""
    a, b = mesh.node("a"), mesh.node("b")
    tmpfs(a.openclaw_home)
    a.cli("put", "mesh", "k", '"one"')
    start(a)
    start(b)
    subprocess.run(["chattr", "+i", str(a.cache_file)], check=True)
    b.cli("put", "mesh", "k", '"two"')
    wait_for(lambda: a.value("mesh", "k") == "two", 10, what="a imports k")
    err = wait_for(lambda: errors(a).get(str(a.cache_file)), 10, what="the cache problem reported")
    assert "not permitted" in err["reason"], err
    assert "immutable" in failed_checks(a).get("cache", ""), failed_checks(a)
    subprocess.run(["chattr", "-i", str(a.cache_file)], check=True)
    t0 = time.monotonic()
    wait_for(lambda: a.cache().get("mesh:k", {}).get("value") == "two", 20, what="a's cache rewritten")
    assert time.monotonic() - t0 < 10
    wait_for(lambda: str(a.cache_file) not in errors(a) and "cache" not in failed_checks(a), 10,
             what="the cache problem cleared")
    assert alive(a) and alive(b)
    no_traceback(a, b)


def test_unsearchable_share_folder_and_a_local_write_in_it(mesh: Mesh):
    """chmod 000 memory/user/alice, then a local write to an item in it: no traceback,
    nothing deleted by the full passes meanwhile, the folder and the held write reported,
    and the write exported within seconds of the folder being readable again."""
    require_no_dac()
    a, b = mesh.node("a", cls=NoDacNode), mesh.node("b")
    a.cli("put", "user:alice", "pref", '"one"')
    b.sync()
    start(a, MESHSYNC_WATCH__RESCAN_INTERVAL="1")
    folder = mesh.share / "memory" / "user" / "alice"
    folder.chmod(0)
    try:
        t = time.time()
        a.cli("put", "user:alice", "pref", '"two"')
        wait_for(lambda: "index:user:alice:pref" in errors(a), 10, what="the held write reported")
        wait_for(lambda: passes_after(a, t + 1.5) and a.status()["last_pass"]["full"], 15,
                 what="full passes during the fault")
        errs = errors(a)
        assert any(p.startswith("memory/user/alice") for p in errs), errs
        assert a.value("user:alice", "pref") == "two", "the local write was lost"
        assert a.status()["counts"]["pending"] == 1
        assert "share folders" in failed_checks(a)
    finally:
        folder.chmod(0o755)
    t0 = time.monotonic()
    b.start()
    wait_for(lambda: b.value("user:alice", "pref") == "two", 20, what="the write exported")
    assert time.monotonic() - t0 < 10
    assert alive(a)
    no_traceback(a, b)


def test_own_journal_not_writable(tmpfs, mesh: Mesh):
    """This node's journal made immutable: the export still happens, the journal problem
    is reported (status, doctor), and the journal lines owed are appended within seconds
    once it is writable (a polling node learns of the write from them)."""
    tmpfs(mesh.share)
    a, b = mesh.node("a"), mesh.node("b")
    a.cli("put", "mesh", "first", "1")  # the journal exists
    journal = mesh.share / ".meshsync" / "journal" / "a.log"
    assert journal.exists()
    start(a)
    start(b, MESHSYNC_WATCH__MODE="poll", MESHSYNC_WATCH__POLL_INTERVAL="0.3")
    subprocess.run(["chattr", "+i", str(journal)], check=True)
    a.cli("put", "mesh", "k", '"v"')
    wait_for(lambda: (mesh.share / "memory" / "mesh" / "k.json").exists(), 10, what="k exported")
    err = wait_for(lambda: errors(a).get(".meshsync/journal/a.log"), 10, what="the journal problem reported")
    assert "not permitted" in err["reason"], err
    assert "journal" in failed_checks(a), failed_checks(a)
    assert alive(a)
    subprocess.run(["chattr", "-i", str(journal)], check=True)
    t0 = time.monotonic()
    wait_for(lambda: b.value("mesh", "k") == "v", 20, what="b (polling) learns of k from the journal")
    assert time.monotonic() - t0 < 10
    wait_for(lambda: ".meshsync/journal/a.log" not in errors(a), 10, what="the journal problem cleared")
    no_traceback(a, b)


def test_foreign_write_lock_held_past_the_busy_timeout(mesh: Mesh):
    """Another program holds the index's write lock (BEGIN IMMEDIATE) longer than
    index_busy_timeout: the daemon stays up, says so, status and doctor report the lock,
    and the waiting change is applied within seconds of the lock's release."""
    a, b = mesh.node("a"), mesh.node("b")
    start(a, MESHSYNC_INDEX_BUSY_TIMEOUT="1")
    start(b)
    import sqlite3

    holder = sqlite3.connect(a.index, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        b.cli("put", "mesh", "k", '"v"')
        wait_for(lambda: "locked" in a.log(), 15, what="a logs the lock")
        assert any("locked" in f for f in faults(a)), a.status()
        assert any("locked" in d for d in failed_checks(a).values()), failed_checks(a)
        assert alive(a)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    t0 = time.monotonic()
    wait_for(lambda: a.value("mesh", "k") == "v", 20, what="a applies k once the lock is gone")
    assert time.monotonic() - t0 < 10
    wait_for(lambda: not faults(a), 10, what="the fault cleared")
    assert alive(a) and alive(b)
    no_traceback(a, b)


def corrupt(index: Path) -> None:
    """Garbage over the middle pages of an index file (as a failing disk would leave it)."""
    size = index.stat().st_size
    assert size > 64 * 1024
    with open(index, "r+b") as f:
        f.seek(size // 2 - 8192)
        f.write(random.Random(21).randbytes(16384))  # the same garbage every run


def test_corrupted_index_at_start(mesh: Mesh):
    """A damaged index: the daemon exits once with a clear message and exit code 6 (which
    systemd does not restart on), status shows the index as a problem, commands say so
    without a traceback, doctor names the damage."""
    a = mesh.node("a")
    for i in range(300):
        a.sql("INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) VALUES ('mesh', ?, ?, 'x', 1)",
              (f"k{i}", json.dumps("v" * 200)))
    a.sql("PRAGMA wal_checkpoint(TRUNCATE)")
    corrupt(a.index)
    a.start()
    rc = a.daemon.wait(30)
    a.daemon = None
    log = a.log()
    assert rc == 6, (rc, log)
    assert "Traceback" not in log and "malformed" in log, log
    st = a.status()
    assert st.get("index_error") and "malformed" in st["index_error"], st
    assert "malformed" in a.cli("status").stdout
    assert "malformed" in " ".join(faults(a)), st
    p = a.cli("ls", check=False)
    assert p.returncode == 6 and "Traceback" not in p.stderr and "malformed" in p.stderr, (p.returncode, p.stderr)
    p = a.cli("put", "mesh", "k", "1", check=False)
    assert p.returncode == 6 and "Traceback" not in p.stderr, (p.returncode, p.stderr)
    fails = failed_checks(a)
    assert "index integrity" in fails or "index" in fails, fails


def test_init_that_cannot_create_the_index_folder(mesh: Mesh, tmp_path: Path):
    """`meshsync init` where the index's folder cannot be made: a clear message, exit 6."""
    a = mesh.node("a")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    p = a.cli("init", check=False, MESHSYNC_INDEX=str(blocker / "sub" / "index.sqlite"))
    assert p.returncode == 6 and "Traceback" not in p.stderr, (p.returncode, p.stderr)
    assert "Not a directory" in p.stderr and str(blocker / "sub") in p.stderr, p.stderr


# --- 5. the index deleted under a running daemon ---------------------------------------------


def test_index_deleted_under_a_running_daemon(mesh: Mesh):
    """The daemon notices (inode check), stops once with exit code 6 and a message; status
    meanwhile says what happened (not "running" and "not created yet"); `init` refuses
    while the daemon holds the lock; after init and a restart nothing is lost."""
    import signal

    a, b = mesh.node("a"), mesh.node("b")
    a.cli("put", "mesh", "k", '"before"')
    start(a, MESHSYNC_WATCH__POLL_INTERVAL="0.5")
    start(b)
    a.daemon.send_signal(signal.SIGSTOP)  # holds its lock, cannot react yet
    try:
        a.index.unlink()
        st = a.status()
        assert st["daemon"]["running"]
        assert any("deleted" in f["reason"] for f in st["faults"]), st
        text = a.cli("status").stdout
        assert "not created yet" not in text and "deleted" in text, text
        p = a.cli("init", check=False)
        assert p.returncode == 5 and "stop it first" in p.stderr, (p.returncode, p.stderr)
        assert not a.index.exists(), "init made an index under the running daemon"
    finally:
        a.daemon.send_signal(signal.SIGCONT)
    rc = a.daemon.wait(15)
    a.daemon = None
    assert rc == 6 and "was deleted" in a.log(), (rc, a.log()[-2000:])
    no_traceback(a)
    b.cli("put", "mesh", "k2", '"meanwhile"')
    a.cli("init")
    t0 = time.monotonic()
    start(a)
    wait_for(lambda: a.value("mesh", "k") == "before" and a.value("mesh", "k2") == "meanwhile", 15,
             what="a rebuilt from the share")
    assert time.monotonic() - t0 < 15
    no_traceback(a, b)


# --- 6. the documented index rebuild takes the share as the truth ---------------------------------


def share_files(share: Path) -> dict[str, tuple[bytes, int]]:
    """Bytes and mtime of every file in the share (the journals and tombstones too)."""
    out = {}
    for dirpath, _dirs, names in os.walk(share):
        for name in names:
            p = Path(dirpath) / name
            out[str(p.relative_to(share))] = (p.read_bytes(), p.stat().st_mtime_ns)
    return out


def test_index_rebuild_takes_the_share_as_the_truth_and_writes_nothing_to_it(mesh: Mesh):
    """docs/troubleshooting.md's rebuild (move the index away, `init`, `sync`) with the
    cache still there: the new index holds the share's versions, the share is not
    written, no updated_at moves, the cache is rewritten from the index."""
    a, b = mesh.node("a"), mesh.node("b")
    a.sql("INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) SELECT 'mesh', 'k' || value, "
          "json_quote('v' || value), 'a', 1700000000 + value FROM json_each(?)", (json.dumps(list(range(200))),))
    a.cli("skill", "put", "sk", "-", input=SKILL_MD)
    a.sync()
    b.sync()
    rows_before = a.sql("SELECT scope, key, value, node_id, updated_at FROM mesh_memory ORDER BY key")
    assert len(rows_before) == 200 and len(a.cache()) == 200
    os.utime(a.cache_file)  # the cache file is newer than every item in it (as after any refresh)
    before = share_files(mesh.share)
    for suffix in ("", "-wal", "-shm"):
        p = Path(str(a.index) + suffix)
        if p.exists():
            p.rename(a.home / f"old-index.sqlite{suffix}")
    a.cli("init")
    out = a.cli_json("sync")
    assert out["to_share"] == 0, out
    # No item, journal or tombstone written.  The node's mark (.meshsync/nodes/a.json,
    # issue 16) names the index that now writes as node a: the rebuilt one must replace
    # it, or its old index's mark would read as a clone's.
    mark = ".meshsync/nodes/a.json"
    assert json.loads(share_files(mesh.share)[mark][0])["index_id"] != json.loads(before[mark][0])["index_id"]
    before.pop(mark)

    def data() -> dict[str, tuple[bytes, int]]:
        return {k: v for k, v in share_files(mesh.share).items() if k != mark}

    assert data() == before, "the rebuild wrote to the share"
    assert a.sql("SELECT scope, key, value, node_id, updated_at FROM mesh_memory ORDER BY key") == rows_before
    assert skill_rows(a) == {"sk": SKILL_MD}
    assert a.sql("SELECT count(*) FROM meshsync_conflicts") == [(0,)]
    assert {k: (e["value"], e["nodeId"], e["ts"]) for k, e in a.cache().items()} == {
        f"{s}:{k}": (json.loads(v), n, u) for s, k, v, n, u in rows_before}
    assert (a.cache_skills / "sk.md").read_text() == SKILL_MD
    b.sync()
    assert data() == before


# --- 4. clock jumps: a clock far ahead of the file server cannot win for the future ----------------


def share_doc(share: Path, key: str) -> dict:
    return json.loads((share / "memory" / "mesh" / f"{key}.json").read_bytes())


def test_a_node_whose_clock_is_a_day_ahead_cannot_win_for_the_future(mesh: Mesh):
    """Node a runs a day ahead (libfaketime, daemon and CLI).  Its write is stamped with
    the file server's time, a later real-time write of node b wins over it, a is
    reported (its log and status, b's doctor), and items stamped in the future before
    the guard (by a node without it) lose to a real-time write and are re-stamped by
    `meshsync repair-future-stamps`."""
    from test_chaos import faketime_wrapper

    from meshsync import formats, layout

    a, b = mesh.node("a"), mesh.node("b")
    a.wrapper = faketime_wrapper("+1d")
    start(a)
    start(b)
    a.cli("put", "mesh", "k", '"from a"')
    wait_for(lambda: b.value("mesh", "k") == "from a", 15, what="b imports a's write")
    assert abs(share_doc(mesh.share, "k")["updated_at"] - time.time()) < 600, share_doc(mesh.share, "k")
    b.cli("put", "mesh", "k", '"from b, later"')
    wait_for(lambda: a.value("mesh", "k") == "from b, later" and b.value("mesh", "k") == "from b, later", 15,
             what="a later real-time write of b wins")
    assert "ahead of the file server's" in a.log()
    assert any("ahead of the file server's" in f for f in faults(a)), faults(a)
    assert "clock skew (a)" in failed_checks(b)
    # Items a node without the guard stamped a day ahead (trusted files with a rev).
    future = (int(time.time()) + 86_400) * 1000
    for key in ("p", "q"):
        text = formats.canonical("poisoned")
        (mesh.share / "memory" / "mesh" / f"{key}.json").write_bytes(
            formats.render_memory(layout.memory_id("mesh", key), "poisoned", formats.digest_bytes(text), future, "z"))
    wait_for(lambda: b.value("mesh", "p") == "poisoned" and b.value("mesh", "q") == "poisoned", 15,
             what="b imports the poisoned items")
    assert "future stamps" in {n for n, c in doctor(b).items() if c["result"] == "warn"}
    b.cli("put", "mesh", "p", '"real time"')
    wait_for(lambda: a.value("mesh", "p") == "real time" and share_doc(mesh.share, "p")["value"] == "real time", 15,
             what="a real-time write beats the future version")
    assert abs(share_doc(mesh.share, "p")["updated_at"] - time.time()) < 600
    out = b.cli("repair-future-stamps").stdout
    assert "re-stamped 1 item(s)" in out, out
    wait_for(lambda: abs(share_doc(mesh.share, "q")["updated_at"] - time.time()) < 600
             and (a.row("mesh", "q") or (0, 0, 0))[2] == share_doc(mesh.share, "q")["updated_at"], 15,
             what="q re-stamped everywhere")
    assert share_doc(mesh.share, "q")["value"] == "poisoned" and a.value("mesh", "q") == "poisoned"
    assert doctor(b)["future stamps"]["result"] == "pass"
    assert alive(a) and alive(b)
    no_traceback(a, b)


# --- 7. status and doctor tell the truth during faults ------------------------------------------------


def test_a_stopped_daemon_with_a_change_pending_is_not_keeping_the_node_in_sync(mesh: Mesh):
    """SIGSTOP: the lock is still held, but status and doctor say the daemon does not
    respond; once continued, the pending change goes out within seconds."""
    import signal

    a, b = mesh.node("a"), mesh.node("b")
    start(a)
    start(b)
    a.daemon.send_signal(signal.SIGSTOP)
    try:
        a.cli("put", "mesh", "k", '"while stopped"')
        st = a.status()
        assert st["counts"]["pending"] == 1
        assert st["daemon"]["running"] and not st["daemon"]["responding"], st["daemon"]
        assert any("stopped" in f for f in faults(a)), st["faults"]
        d = doctor(a)["daemon"]
        assert d["result"] == "fail" and "keeps this node in sync" not in d["detail"], d
        assert "not responding" in a.cli("status").stdout
    finally:
        a.daemon.send_signal(signal.SIGCONT)
    t0 = time.monotonic()
    wait_for(lambda: b.value("mesh", "k") == "while stopped", 15, what="the pending change goes out")
    assert time.monotonic() - t0 < 10
    assert doctor(a)["daemon"]["result"] == "pass" and a.status()["daemon"]["responding"]
    no_traceback(a, b)


def test_a_deleted_wal_is_written_back_and_commands_never_print_a_traceback(mesh: Mesh):
    """The index's -wal file deleted under the daemon: commands say so in one line (no
    `vtable constructor failed` traceback), the daemon writes what the file held back
    into the index (its connection still has it open) and goes on: nothing is lost."""
    a, b = mesh.node("a"), mesh.node("b")
    start(a, MESHSYNC_WATCH__POLL_INTERVAL="0.5")
    start(b)
    for i in range(3):
        b.cli("put", "mesh", f"k{i}", str(i))
    wait_for(lambda: all(a.value("mesh", f"k{i}") == i for i in range(3)), 15, what="a imports k0-k2")
    Path(str(a.index) + "-wal").unlink()
    for args in (("ls",), ("get", "mesh", "k0"), ("status",), ("put", "mesh", "x", '"after"')):
        p = a.cli(*args, check=False)
        assert "Traceback" not in p.stderr and p.returncode in (0, 6), (args, p.returncode, p.stderr)
    wait_for(lambda: "-wal file was deleted" in a.log(), 10, what="the daemon repairs the index")
    wait_for(lambda: a.cli("ls", check=False).stdout.count("mesh\tk") == 3, 10, what="commands work again")
    a.cli("put", "mesh", "k3", "3")
    wait_for(lambda: b.value("mesh", "k3") == 3, 15, what="a's next write goes out")
    assert [a.value("mesh", f"k{i}") for i in range(4)] == [0, 1, 2, 3]
    assert a.sql("PRAGMA quick_check") == [("ok",)]
    assert alive(a) and alive(b)
    no_traceback(a, b)


def test_a_stale_cache_problem_is_cleared_after_a_good_rewrite(mesh: Mesh):
    """A tool leaves mesh-memory.json half-written: reported; once it is whole again the
    problem goes at the next pass, not at the next full rescan."""
    a, b = mesh.node("a"), mesh.node("b")
    a.cli("put", "mesh", "k", "1")
    start(a)
    start(b)
    good = a.cache_file.read_text()
    a.cache_file.write_text(good[: len(good) // 2])
    b.cli("put", "mesh", "k2", "2")
    wait_for(lambda: str(a.cache_file) in errors(a), 10, what="the broken cache reported")
    a.cache_file.write_text(good)  # the tool finishes
    b.cli("put", "mesh", "k3", "3")
    wait_for(lambda: a.cache().get("mesh:k3", {}).get("value") == 3, 10, what="a's cache rewritten")
    wait_for(lambda: str(a.cache_file) not in errors(a), 10, what="the problem cleared")
    assert not a.status()["last_pass"]["full"]
    no_traceback(a, b)


def test_doctor_probes_with_real_writes_and_names_a_full_disk(tmpfs, mesh: Mesh, tmp_path: Path):
    """Full share, index and cache disks: doctor's writable checks fail (an empty probe
    file would still fit), free space is checked, and the share's hint says it is full."""
    tmpfs(mesh.share)
    idx = tmpfs(tmp_path / "node-a" / "idx", "2m")
    a = mesh.node("a", cls=IndexApart)
    home = tmpfs(a.openclaw_home)
    a.cli("put", "mesh", "k", "1")
    assert not {"share writable", "index writable", "cache"} & set(failed_checks(a))
    fillers = [fill(mesh.share), fill(idx), fill(home)]
    fails = failed_checks(a)
    for name in ("share writable", "index writable", "cache", "free space (share)", "free space (index)",
                 "free space (cache)"):
        assert name in fails, (name, fails)
    assert "share is full" in fails["share writable"] and "write access" not in fails["share writable"], fails
    assert {"share", "index", "cache"} <= {f["what"] for f in a.status()["faults"]}
    for f in fillers:
        f.unlink()
    assert not {"share writable", "index writable", "cache"} & set(failed_checks(a))
