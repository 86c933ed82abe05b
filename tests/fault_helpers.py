"""Helpers for the fault tests (test_unavailable.py, test_crash.py, test_hostile.py).

Tests run as root, and root ignores permission bits, so "the share is unreadable" cannot
be staged with chmod alone.  Running the node as ``nobody`` does not work here either
(the interpreter lives under /root, mode 0700), and bindfs ``--perms=0000`` is not
enforced for root (bindfs itself runs as root).  What works: run the node's processes
as root *without* CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (``setpriv --bounding-set``).
Such a process is still uid 0 and owns every test folder, but the kernel checks the
mode bits for it like for any owner, so ``chmod 000`` really locks it out - exactly what
a service user meets when the NAS permissions change.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import MeshNode, file_version

NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


def no_dac_works() -> bool:
    try:
        return subprocess.run([*NO_DAC, "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def require_no_dac() -> None:
    if os.geteuid() == 0 and not no_dac_works():
        pytest.skip("setpriv cannot drop CAP_DAC_OVERRIDE here: permission faults cannot be staged as root")


class NoDacNode(MeshNode):
    """A node whose processes (CLI and daemon) obey permission bits even as root."""

    def _cmd(self, *args: str) -> list[str]:
        pre = NO_DAC if os.geteuid() == 0 else []
        return [*pre, sys.executable, "-m", "meshsync", *args]

    def cli(self, *args: str, check: bool | int = True, input: str | None = None, timeout: float = 120,
            **env: str) -> subprocess.CompletedProcess:
        p = subprocess.run(self._cmd(*args), env=self.env(**env), input=input, capture_output=True, text=True,
                           timeout=timeout)
        want = 0 if check is True else check
        if check is not False and p.returncode != want:
            raise AssertionError(f"meshsync {' '.join(args)} exited {p.returncode}, wanted {want}\n"
                                 f"stdout: {p.stdout}\nstderr: {p.stderr}")
        return p

    def start(self, *args: str, **env: str) -> subprocess.Popen:
        assert self.daemon is None, "daemon already running"
        with open(self.home / f"daemon-{self.node_id}.log", "ab") as log:  # the daemon has its own copy
            self.daemon = subprocess.Popen(self._cmd("run", *args), env=self.env(**env), stdout=log,
                                           stderr=subprocess.STDOUT)
        return self.daemon


class NotifySocket:
    """A systemd NOTIFY_SOCKET stand-in: collects every datagram in a thread."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(65536).decode(errors="replace"))
            except TimeoutError:
                continue
            except OSError:
                return

    def statuses(self) -> list[str]:
        return [line[len("STATUS="):] for m in list(self.messages) for line in m.split("\n")
                if line.startswith("STATUS=")]

    def close(self) -> None:
        self._stop.set()
        self._t.join(2)
        self.sock.close()


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def fingerprint(p: Path) -> tuple:
    """What "left untouched" means for any kind of file: type, inode, and the bytes of a
    regular file or the target of a link."""
    st = os.lstat(p)
    kind = stat.S_IFMT(st.st_mode)
    if stat.S_ISREG(st.st_mode):
        with open(p, "rb") as f:  # the caller may have had to chmod it readable first
            return kind, st.st_ino, st.st_mode, hashlib.sha256(f.read()).hexdigest()
    if stat.S_ISLNK(st.st_mode):
        return kind, st.st_ino, os.readlink(p)
    return kind, st.st_ino, st.st_mode


def share_items(share: Path) -> dict[str, dict]:
    """Every memory file of scopes mesh and user:* in the share, parsed: "scope:key" ->
    the file's object.  Raises on any file that does not parse."""
    out: dict[str, dict] = {}
    mem = share / "memory"
    for dirpath, _dirs, names in os.walk(mem):
        for name in names:
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            doc = json.loads(p.read_bytes())
            assert isinstance(doc, dict) and "value" in doc, p
            scope, key, value, node, updated_at = file_version(share, p)  # what a node derives (R10)
            out[f"{scope}:{key}"] = {**doc, "scope": scope, "key": key, "node_id": node, "updated_at": updated_at}
    return out
