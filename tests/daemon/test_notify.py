"""What the daemon tells systemd (issue 20): a reload framed by RELOADING=1 (with
MONOTONIC_USEC=) and READY=1, a refused reload told by STATUS= and by `meshsync reload`
(the units' ExecReload=) exiting 2, and a long first import extending the start timeout
(EXTEND_TIMEOUT_USEC=) as it progresses.

A real `meshsync run` process; systemd's side is a Unix datagram socket the test binds
as NOTIFY_SOCKET and reads (fault_helpers.NotifySocket)."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

from fault_helpers import NotifySocket
from helpers import Mesh, MeshNode, wait_for

from meshsync.daemon import notify


def fields(msg: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in msg.split("\n") if "=" in line)


def messages(sock: NotifySocket) -> list[dict[str, str]]:
    return [fields(m) for m in list(sock.messages)]


def index_of(msgs: list[dict[str, str]], key: str, start: int = 0) -> int:
    return next(i for i in range(start, len(msgs)) if key in msgs[i])


def started(mesh: Mesh, sock: NotifySocket, cfg: Path, text: str) -> MeshNode:
    cfg.write_text(text)
    a = mesh.node("a")
    a.extra_env["MESHSYNC_CONFIG"] = str(cfg)
    a.start(NOTIFY_SOCKET=sock.path)
    wait_for(lambda: any("READY" in m for m in messages(sock)), 20, what="READY=1")
    return a


def reload_frames(sock: NotifySocket, after: int) -> tuple[dict[str, str], dict[str, str]]:
    """The RELOADING=1 message after message number ``after`` and the READY=1 after it."""
    wait_for(lambda: any("READY" in m for m in messages(sock)[after:]
                         if any("RELOADING" in x for x in messages(sock)[after:])), 10,
             what="RELOADING=1 then READY=1")
    msgs = messages(sock)
    r = index_of(msgs, "RELOADING", after)
    return msgs[r], msgs[index_of(msgs, "READY", r + 1)]


def test_a_reload_is_framed_and_a_refused_one_fails_visibly(mesh: Mesh, tmp_path: Path):
    sock = NotifySocket(tmp_path / "notify.sock")
    cfg = tmp_path / "cfg.yaml"
    try:
        a = started(mesh, sock, cfg, "log_level: info\n")
        # A good configuration: applied, `meshsync reload` exits 0.
        n = len(sock.messages)
        t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        cfg.write_text("log_level: debug\n")
        p = a.cli("reload")
        t1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert "configuration reloaded" in p.stdout
        begin, end = reload_frames(sock, n)
        assert begin["RELOADING"] == "1" and t0 <= int(begin["MONOTONIC_USEC"]) <= t1
        assert "refused" not in end.get("STATUS", "")

        # A bad one: refused, the previous settings kept, and every channel says so.  (The
        # command itself reads a good file here, so that the verdict is the daemon's.)
        n = len(sock.messages)
        cfg.write_text("watch: {mode: bogus}\n")
        good = tmp_path / "good.yaml"
        good.write_text("log_level: info\n")
        p = a.cli("reload", check=2, MESHSYNC_CONFIG=str(good))
        assert "configuration not reloaded" in p.stderr and "watch.mode" in p.stderr
        assert "keeps its previous settings" in p.stderr
        begin, end = reload_frames(sock, n)
        assert begin["RELOADING"] == "1" and "MONOTONIC_USEC" in begin
        assert end["STATUS"].startswith("reload refused, previous settings kept: ") and "watch.mode" in end["STATUS"]
        # The next pass's status line still tells it, until a reload succeeds.
        n = len(sock.messages)
        a.cli("put", "mesh", "k", "1", MESHSYNC_CONFIG=str(good))
        wait_for(lambda: any("last reload refused" in m.get("STATUS", "") for m in messages(sock)[n:]), 10,
                 what="the refusal kept in the status line")
        # Fixed: applied again, and the note is gone.
        cfg.write_text("log_level: info\n")
        n = len(sock.messages)
        a.cli("reload")
        _, end = reload_frames(sock, n)
        assert "refused" not in end["STATUS"]
        assert a.stop() == 0
    finally:
        sock.close()


def test_a_reload_refused_before_the_daemon_is_asked(mesh: Mesh, tmp_path: Path):
    """ExecReload= runs `meshsync reload --pid $MAINPID` under the unit's environment:
    a file that does not load there fails the reload at once, and the daemon, still
    signalled, logs and shows the refusal itself."""
    sock = NotifySocket(tmp_path / "notify.sock")
    cfg = tmp_path / "cfg.yaml"
    try:
        a = started(mesh, sock, cfg, "log_level: info\n")
        n = len(sock.messages)
        cfg.write_text("watch: {mode: bogus}\n")
        p = a.cli("reload", "--pid", str(a.daemon.pid), check=2)
        assert "configuration not reloaded" in p.stderr and "watch.mode" in p.stderr
        _, end = reload_frames(sock, n)
        assert end["STATUS"].startswith("reload refused")
        cfg.write_text("log_level: info\n")
        assert a.stop() == 0
    finally:
        sock.close()


def test_kill_hup_alone_is_framed_too(mesh: Mesh, tmp_path: Path):
    sock = NotifySocket(tmp_path / "notify.sock")
    cfg = tmp_path / "cfg.yaml"
    try:
        a = started(mesh, sock, cfg, "log_level: info\n")
        n = len(sock.messages)
        a.daemon.send_signal(signal.SIGHUP)
        begin, end = reload_frames(sock, n)
        assert "MONOTONIC_USEC" in begin and "STATUS" in end
        assert a.stop() == 0
    finally:
        sock.close()


def test_reload_without_a_daemon_says_so(mesh: Mesh):
    a = mesh.node("a")
    p = a.cli("reload", check=2)
    assert "no meshsync daemon runs for index" in p.stderr


SLOW_IMPORT = """
import sys, time
from meshsync import faults
faults.install("propagate.start", lambda: time.sleep(0.4))  # each batch of the import takes longer
from meshsync.cli.main import main
sys.exit(main(["run"]))
"""


def test_a_long_first_import_extends_the_start_timeout_as_it_progresses(mesh: Mesh, tmp_path: Path):
    """EXTEND_TIMEOUT_USEC= goes with the first pass's progress (at most once a second),
    each with a STATUS= saying how far it got, and stops at READY=1.  The import is made
    slow (0.4 s more per batch of 500, 6 batches) so that it lasts more than the second
    between two extensions on any machine."""
    a = mesh.node("a")
    d = mesh.share / "memory" / "mesh"
    for i in range(3000):
        (d / f"k{i:05}.json").write_text(json.dumps({"value": i}))
    sock = NotifySocket(tmp_path / "notify.sock")
    try:
        a.start(wrapper=[sys.executable, "-c", SLOW_IMPORT], NOTIFY_SOCKET=sock.path)
        wait_for(lambda: any("READY" in m for m in messages(sock)), 60, what="READY=1")
        msgs = messages(sock)
        ready = index_of(msgs, "READY")
        ext = [m for m in msgs[:ready] if "EXTEND_TIMEOUT_USEC" in m]
        assert len(ext) >= 2, msgs[:ready]
        assert all(m["EXTEND_TIMEOUT_USEC"] == str(int(notify.EXTEND_BY * 1e6)) for m in ext)
        assert all(m["STATUS"].startswith("starting: first full pass") for m in ext)
        assert any("of 3000" in m["STATUS"] for m in ext), [m["STATUS"] for m in ext]
        # A later pass with progress (another big batch) extends nothing.
        for i in range(1000):
            (d / f"later{i:04}.json").write_text(json.dumps({"value": i}))
        wait_for(lambda: a.value("mesh", "later0999") == 999, 60, what="the later files imported")
        assert not [m for m in messages(sock)[ready:] if "EXTEND_TIMEOUT_USEC" in m]
        assert a.stop() == 0
    finally:
        sock.close()


def test_the_units_reload_through_meshsync_reload():
    """The units' ExecReload= is `meshsync reload --pid $MAINPID`, not a bare kill, and
    the start timeout is no longer what a long first import relies on."""
    repo = Path(__file__).resolve().parents[2]
    for unit in ("meshsync.service", "meshsync@.service", "meshsync-user.service"):
        text = (repo / "systemd" / unit).read_text(encoding="utf-8")
        execs = [ln.split("=", 1)[1] for ln in text.splitlines() if ln.startswith("ExecReload=")]
        assert len(execs) == 1 and execs[0].endswith("meshsync reload --pid $MAINPID"), (unit, execs)
        start = [ln.split("=", 1)[1] for ln in text.splitlines() if ln.startswith("ExecStart=")][0]
        assert execs[0].split()[0] == start.split()[0], unit  # the same program
        assert "TimeoutStartSec=5min" in text, unit
