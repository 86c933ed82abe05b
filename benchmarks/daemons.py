"""Real ``meshsync run`` daemons for the latency and idle benchmarks, bindfs mounts for
the NAS path, and the samplers that time a change from one entry point to another.

Every wait polls its condition every 5 ms against ``time.perf_counter``.  A condition
that reads a large file (a node's mesh-memory.json) re-reads it only when its stat
signature changed, so the poller stays cheap next to the daemons on a 2-core machine.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dataset import SRC

POLL = 0.005
MESHSYNC = [sys.executable, "-m", "meshsync"]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def clean_env() -> dict[str, str]:
    """The caller's environment without MESHSYNC_* settings (runs must not depend on them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHSYNC_")}
    env["PYTHONPATH"] = str(SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def meshsync_paths(cwd: Path) -> dict[str, str]:
    """Where this process and a daemon started like NodeProc import meshsync from."""
    import meshsync

    p = subprocess.run([sys.executable, "-c", "import meshsync; print(meshsync.__file__)"], env=clean_env(),
                       cwd=cwd, capture_output=True, text=True)
    return {"in_process": str(Path(meshsync.__file__).parent), "daemons": str(Path(p.stdout.strip()).parent)}


def wait_until(cond: Callable[[], bool], timeout: float, what: str, interval: float = POLL) -> float:
    """Poll cond every ``interval`` s; return the perf_counter time it first held."""
    deadline = time.perf_counter() + timeout
    while True:
        if cond():
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class ChangedFile:
    """``contains(token)``: does the file hold the JSON string "token"?  The file is re-read only when its
    (mtime, size, inode) changed since the last look.  ``seen_at`` is the perf_counter time of the look
    that first saw the current file: when it arrived, give or take one poll, and before this process
    spent its own time reading it (30 MB, 20-30 ms, for a 100k-item cache)."""

    def __init__(self, path: Path):
        self.path = path
        self.sig: tuple | None = None
        self.seen_at = 0.0
        self.data = b""
        self.memo: tuple[bytes, bool] | None = None

    def contains(self, token: bytes) -> bool:
        t = time.perf_counter()
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        if sig != self.sig:
            self.seen_at = t
            try:
                with open(self.path, "rb") as f:
                    self.data = f.read()
            except FileNotFoundError:
                return False
            self.sig = sig
            self.memo = None
        if self.memo is None or self.memo[0] != token:
            self.memo = (token, b"\"" + token + b"\"" in self.data)
        return self.memo[1]


@dataclass
class NodeProc:
    """One node (its index and OpenClaw home under ``home``) and its daemon process."""

    node_id: str
    share: Path
    home: Path
    env_extra: dict[str, str] = field(default_factory=dict)
    launcher: list[str] = field(default_factory=lambda: list(MESHSYNC))
    proc: subprocess.Popen | None = None
    started: float = 0.0
    first_pass: dict = field(default_factory=dict)  # figures of its first full pass

    @property
    def index(self) -> Path:
        return self.home / "index.sqlite"

    @property
    def openclaw_home(self) -> Path:
        return self.home / "openclaw"

    @property
    def cache_file(self) -> Path:
        return self.openclaw_home / "mesh-memory.json"

    @property
    def log_path(self) -> Path:
        return self.home / f"daemon-{self.node_id}.log"

    def env(self) -> dict[str, str]:
        env = clean_env()
        env.update({"MESHSYNC_NODE_ID": self.node_id, "MESHSYNC_SHARE": str(self.share),
                    "MESHSYNC_INDEX": str(self.index), "MESHSYNC_OPENCLAW_HOME": str(self.openclaw_home),
                    "MESHSYNC_LOG_LEVEL": "info"})
        env.update(self.env_extra)
        return env

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        p = subprocess.run([*MESHSYNC, *args], env=self.env(), capture_output=True,
                           text=True, timeout=timeout, cwd=self.home)
        if p.returncode != 0:
            raise RuntimeError(f"meshsync {' '.join(args)} ({self.node_id}) exited {p.returncode}: "
                               f"{p.stderr.strip()[-500:]}")
        return p

    def start(self) -> None:
        assert self.proc is None
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.started = time.time()
        # cwd: `python -m` puts the working directory first on sys.path, which must not
        # shadow the meshsync that PYTHONPATH names (--src)
        self.proc = subprocess.Popen([*self.launcher, "run"], env=self.env(), cwd=self.home,
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def ready(self) -> bool:
        """The daemon finished its first full pass (its pid is recorded and last_sync is newer
        than its start)."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"daemon {self.node_id} exited {self.proc.returncode}; log:\n"
                               + self.log_path.read_text(errors="replace")[-2000:])
        try:
            db = sqlite3.connect(f"file:{self.index}?mode=ro", uri=True, timeout=5)
            try:
                meta = dict(db.execute("SELECT k, v FROM meshsync_meta WHERE k IN ('last_sync', 'daemon_watch',"
                                       " 'last_pass')"))
            finally:
                db.close()
        except sqlite3.Error:
            return False
        import orjson

        watch = orjson.loads(meta.get("daemon_watch") or "null") or {}
        if watch.get("pid") == self.proc.pid and float(meta.get("last_sync") or 0) >= self.started:
            lp = orjson.loads(meta.get("last_pass") or "{}")
            self.first_pass = {k: lp.get(k) for k in ("seconds", "scanned", "read", "reconciled", "to_share",
                                                       "to_index")}
            return True
        return False

    def wait_ready(self, timeout: float) -> float:
        """Wait for the first full pass; return its duration (s, from process start)."""
        wait_until(self.ready, timeout, f"daemon {self.node_id} to finish its first pass", interval=0.1)
        return time.time() - self.started

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        return proc_cpu_seconds(self.proc.pid)

    def stop(self, timeout: float = 60) -> int | None:
        if self.proc is None:
            return None
        p, self.proc = self.proc, None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                return p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
        return p.wait()


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def proc_status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


class BindMounts:
    """bindfs mounts of one real folder (like one NAS seen from several hosts: writes
    through one mount raise no inotify event on another)."""

    def __init__(self, real: Path, mounts: list[Path]):
        self.real = real
        self.mounts = mounts
        self.done: list[Path] = []

    def __enter__(self) -> BindMounts:
        for m in self.mounts:
            m.mkdir(parents=True, exist_ok=True)
            subprocess.run(["bindfs", "--no-allow-other", str(self.real), str(m)], check=True)
            self.done.append(m)
        return self

    def __exit__(self, *exc: object) -> None:
        for m in reversed(self.done):
            for _ in range(20):
                if subprocess.run(["fusermount", "-u", str(m)], capture_output=True).returncode == 0:
                    break
                time.sleep(0.25)
        self.done.clear()


def percentile(xs: list[float], p: float) -> float:
    """Linear-interpolated percentile (p in 0..100)."""
    s = sorted(xs)
    if not s:
        return float("nan")
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)
