"""Long work at a terminal shows a progress display (what, count/total, rate); nothing of
the sort when not at a terminal, in --json output or in the daemon's log.

The terminal is a real pseudo-terminal (``pty``): meshsync decides by ``isatty()``, as it
does for a person at a prompt.  Every test sets ``MESHSYNC_PROGRESS_INTERVAL=0``
(docs/configuration.md): each step of the work draws a frame from its start, so the
frames that appear depend on the data, not on the machine's speed (at the default 0.1 s
a fast machine imported the files before the first frame was due, and a test saw one
frame or none; a test that wants no progress would pass there for the wrong reason)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from helpers import Mesh, MeshNode, wait_for

FILES = 3000  # the import ticks every 500 files: five frames with a rate
EVERY_STEP = {"MESHSYNC_PROGRESS_INTERVAL": "0"}  # a frame for each step of the work, from the start
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_in_pty(n: MeshNode, *args: str, timeout: float = 180,
               on_output: Callable[[bytes, subprocess.Popen], None] | None = None, **env: str) -> tuple[int, str]:
    """Run ``meshsync ARGS`` with stdin, stdout and stderr on a pseudo-terminal; return
    (exit code, everything it wrote).  ``on_output`` sees the output so far on each turn
    (e.g. to signal a daemon once it is ready)."""
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "meshsync", *args], env=n.env(TERM="xterm", **env),
                         stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if on_output is not None:
                on_output(bytes(out), p)
            r, _, _ = select.select([master], [], [], 0.2)
            if r:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the terminal's other side closed
                    break
                if not chunk:
                    break
                out += chunk
            elif p.poll() is not None:
                break
        rc = p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)
    return rc, out.decode("utf-8", "replace")


def big_share(mesh: Mesh, n: MeshNode) -> None:
    d = mesh.share / "memory" / "mesh"
    for i in range(FILES):
        (d / f"k{i:05d}.json").write_text(json.dumps({"value": {"i": i, "pad": "x" * 50}}))


def test_initial_import_at_a_terminal_shows_progress_with_rate(mesh: Mesh):
    a = mesh.node("a")
    big_share(mesh, a)
    rc, out = run_in_pty(a, "sync", **EVERY_STEP)
    assert rc == 0, out
    frames = [ANSI.sub("", f) for f in out.replace("\r\n", "\n").split("\r")]
    total = f"{FILES:,}"
    shown = [f for f in frames
             if re.fullmatch(rf"importing memory files: [\d,]+/{total}  [\d,]+/s(, about .* left)?", f)]
    assert shown, f"no 'importing memory files: N/{total}  R/s' frame in:\n{frames[:40]}"
    # The counts go up, and a frame says about how long is left.
    counts = [int(f.split(": ")[1].split("/")[0].replace(",", "")) for f in shown]
    assert counts == sorted(counts) and len(set(counts)) > 1, counts
    assert any("left" in f for f in shown)
    # The line is redrawn in place (carriage return + erase line) and cleared at the end:
    # the summary starts on a clean line.
    assert "\r\x1b[K" in out
    assert re.search(r"\r\x1b\[Ksynced in [\d.]+s: 3000 items scanned", out), out[-500:]
    # Every frame fits an 80-column terminal (a wrapped line cannot be redrawn in place).
    assert all(len(f) < 80 for f in frames if "/s" in f)


def test_not_at_a_terminal_no_progress_at_all(mesh: Mesh):
    a = mesh.node("a")
    big_share(mesh, a)
    p = a.cli("sync", **EVERY_STEP)
    assert "\r" not in p.stderr and "\x1b" not in p.stderr, repr(p.stderr[:300])
    assert "\r" not in p.stdout and "\x1b" not in p.stdout
    assert "importing memory files" not in p.stderr + p.stdout
    assert p.stdout.startswith("synced in ")


def test_json_at_a_terminal_has_no_progress(mesh: Mesh):
    a = mesh.node("a")
    big_share(mesh, a)
    rc, out = run_in_pty(a, "sync", "--json", **EVERY_STEP)
    assert rc == 0, out
    assert "\x1b" not in out and "importing memory files" not in out
    assert json.loads(out)["to_index"] == FILES


def test_daemon_log_has_no_progress(mesh: Mesh):
    """The daemon's first pass is an initial import too; its log (a file here, journald
    under systemd) gets log lines, never a redrawn progress line."""
    a = mesh.node("a")
    big_share(mesh, a)
    a.start(**EVERY_STEP)
    wait_for(lambda: "ready: first pass done" in a.log(), 120, what="daemon ready")
    assert a.stop() == 0
    log = a.log()
    assert "\r" not in log and "\x1b" not in log
    assert "importing memory files" not in log


def test_get_at_a_terminal_says_where_the_value_came_from(mesh: Mesh):
    a = mesh.node("a")
    a.cli("put", "mesh", "hello", '"world"')
    rc, out = run_in_pty(a, "get", "mesh", "hello")
    assert rc == 0
    lines = out.replace("\r\n", "\n").splitlines()
    assert lines[0] == '"world"'
    assert re.fullmatch(r"# from a at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d, in sync", lines[1]), lines
    a.cli("skill", "put", "triage", "-", input="# Triage\n")
    rc, out = run_in_pty(a, "skill", "get", "triage")
    lines = out.replace("\r\n", "\n").splitlines()
    assert lines[0] == "# Triage"
    assert re.fullmatch(r"# skill triage from a at .*, in sync \(warning: SKILL.md has no YAML frontmatter.*\)",
                        lines[1]), lines


def test_daemon_at_a_terminal_shows_progress_of_its_first_pass(mesh: Mesh):
    """`meshsync run` started by hand at a prompt on a big share: its first pass (an
    initial import) draws the same progress line, cleared before the next log line."""
    a = mesh.node("a")
    big_share(mesh, a)
    stopped = []

    def stop_when_ready(out: bytes, p: subprocess.Popen) -> None:
        if not stopped and b"ready: first pass done" in out:
            p.send_signal(signal.SIGTERM)
            stopped.append(1)

    rc, text = run_in_pty(a, "run", on_output=stop_when_ready, **EVERY_STEP)
    assert stopped and rc == 0, text[-2000:]
    frames = [ANSI.sub("", f) for f in text.replace("\r\n", "\n").split("\r")]
    assert any(re.fullmatch(rf"importing memory files: [\d,]+/{FILES:,}  [\d,]+/s(, about .* left)?", f)
               for f in frames), \
        frames[:40]
    # The progress line is cleared before the pass's log line, which starts on a clean line.
    assert re.search(r"\r\x1b\[K[^\r\n]*INFO +synced 3000 item", text), text[-1500:]
    assert "ready: first pass done" in text
