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
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
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
    assert json.loads(a.cli("skill", "ls", "--json").stdout)[0]["state"] == "pending"
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
