"""Shared helpers for multi-node tests: real `meshsync` processes on real folders.

A ``MeshNode`` is one node's configuration (node id, share path, index, OpenClaw home)
plus helpers to run the CLI, start the daemon, write with a foreign SQLite client and
read its cache.  ``wait_for`` polls a condition with a deadline (never a bare sleep).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def json_doc(command: str, text: str) -> dict:
    """``text``, the --json output of ``command`` ("status", "skill-ls", ...), parsed and
    validated against docs/schemas/COMMAND.json (a real JSON Schema validator)."""
    import jsonschema

    doc = json.loads(text)
    schema = json.loads((REPO / "docs" / "schemas" / f"{command}.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(schema).validate(doc)
    return doc


def wait_for(cond: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll ``cond`` until it returns a truthy value; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            v = cond()
            if v:
                return v
        except Exception as exc:  # the condition may race with a writer; retry
            last_exc = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or cond}"
                                 + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


@contextmanager
def nas_views(tmp_path: Path, names: tuple[str, ...] = ("mount-a", "mount-b")) -> Iterator[tuple[Path, list[Path]]]:
    """Bindfs FUSE views of one folder, one per name: machines on one NAS.  A write
    through one view raises no inotify event on the others, as NFS/SMB written from
    another host; each view's kernel answers ``lstat`` from its attribute cache.
    Yields the real folder and the views.

    Each bindfs runs in the foreground as a child of this process, so that the views
    are gone when this returns: unmounted (lazily if still busy) and their processes
    waited for.  (Daemonised, a bindfs still exiting after its unmount was once counted
    as leaked by the next check on a loaded machine.)"""
    real = tmp_path / "nas-real"
    real.mkdir()
    views: list[tuple[Path, subprocess.Popen]] = []
    try:
        for name in names:
            m = tmp_path / name
            m.mkdir()
            proc = subprocess.Popen(["bindfs", "-f", "--no-allow-other", str(real), str(m)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            views.append((m, proc))
            wait_for(lambda m=m, proc=proc: os.path.ismount(m) or proc.poll() is not None, 15,
                     what=f"bindfs mounts {m}")
            if proc.poll() is not None:
                raise AssertionError(f"bindfs could not mount {m}: {proc.stderr.read().decode() if proc.stderr else ''}")
        yield real, [m for m, _ in views]
    finally:
        for m, proc in reversed(views):
            if subprocess.run(["fusermount", "-u", str(m)], capture_output=True).returncode != 0:
                subprocess.run(["fusermount", "-u", "-z", str(m)], capture_output=True)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()

@dataclass
class MeshNode:
    node_id: str
    share: Path
    home: Path  # this node's private folder: index, cache, config
    extra_env: dict[str, str] = field(default_factory=dict)
    daemon: subprocess.Popen | None = None
    # A command prefix for every process of this node (daemon and CLI), e.g. an `env` that
    # preloads libfaketime for a node whose clock is behind; empty: run meshsync directly.
    # The prefix must exec (as `env` does), so that the daemon's pid receives signals.
    wrapper: list[str] = field(default_factory=list)

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
    def cache_skills(self) -> Path:
        return self.openclaw_home / "mesh" / "skills"

    def env(self, **more: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESHSYNC_")}
        env.update({
            "MESHSYNC_NODE_ID": self.node_id,
            "MESHSYNC_SHARE": str(self.share),
            "MESHSYNC_INDEX": str(self.index),
            "MESHSYNC_OPENCLAW_HOME": str(self.openclaw_home),
            "MESHSYNC_SHARE_FILES__FSYNC": "false",
            "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        })
        env.update(self.extra_env)
        env.update(more)
        return env

    def cli(self, *args: str, check: bool | int = True, input: str | None = None, timeout: float = 120,
            **env: str) -> subprocess.CompletedProcess:
        """Run ``meshsync ARGS`` as this node; ``check`` True means exit 0, an int means that code."""
        p = subprocess.run([*self.wrapper, sys.executable, "-m", "meshsync", *args], env=self.env(**env), input=input,
                           capture_output=True, text=True, timeout=timeout)
        want = 0 if check is True else check
        if check is not False and p.returncode != want:
            raise AssertionError(f"meshsync {' '.join(args)} exited {p.returncode}, wanted {want}\n"
                                 f"stdout: {p.stdout}\nstderr: {p.stderr}")
        return p

    def settings(self, **overrides: Any) -> Any:
        """This node's settings (``meshsync.config.Settings``) for an in-process engine,
        with ``overrides`` (e.g. ``limits={"max_file_bytes": 4096}``) over them."""
        return _load_settings(**{"node_id": self.node_id, "share": self.share, "index": self.index,
                                 "openclaw_home": self.openclaw_home, **overrides})

    def sync(self, check: bool | int = True) -> subprocess.CompletedProcess:
        return self.cli("sync", check=check)

    def status(self) -> dict:
        """`status --json`, held to its documented shape (docs/schemas/status.json)."""
        return self.cli_json("status")

    def cli_json(self, *args: str, check: bool | int = True, **env: str) -> dict:
        """``meshsync ARGS --json``: one JSON document on stdout, validated against its
        command's schema (docs/schemas/, docs/json.md) in whatever state the test reached."""
        p = self.cli(*args, "--json", check=check, **env)
        return json_doc(f"{args[0]}-{args[1]}" if args[0] == "skill" else args[0], p.stdout)

    # --- the daemon -------------------------------------------------------------------

    def start(self, *args: str, wrapper: list[str] | None = None, **env: str) -> subprocess.Popen:
        """Start ``meshsync run ARGS``; ``wrapper`` (default: the node's own) prefixes the command."""
        assert self.daemon is None, "daemon already running"
        prefix = self.wrapper if wrapper is None else wrapper
        with open(self.home / f"daemon-{self.node_id}.log", "ab") as log:
            self.daemon = subprocess.Popen([*prefix, sys.executable, "-m", "meshsync", "run", *args],
                                           env=self.env(**env), stdout=log, stderr=subprocess.STDOUT)
        return self.daemon

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        assert self.daemon is not None
        self.daemon.send_signal(sig)
        try:
            rc = self.daemon.wait(timeout)
        finally:
            if self.daemon.poll() is None:
                self.daemon.kill()
                self.daemon.wait()
            self.daemon = None
        return rc

    def log(self) -> str:
        p = self.home / f"daemon-{self.node_id}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    # --- the index as another program sees it --------------------------------------------

    def sql(self, query: str, params: tuple = ()) -> list[tuple]:
        """Run SQL through a separate connection, as a foreign client would."""
        db = sqlite3.connect(self.index, timeout=30, isolation_level=None)
        try:
            return db.execute(query, params).fetchall()
        finally:
            db.close()

    def sqlite3_cli(self, script: str) -> str:
        """Run SQL through the `sqlite3` command-line shell (a truly foreign writer)."""
        p = subprocess.run(["sqlite3", "-cmd", ".timeout 30000", str(self.index)], input=script,
                           capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise AssertionError(f"sqlite3 failed: {p.stderr}")
        return p.stdout

    def row(self, scope: str, key: str) -> tuple | None:
        r = self.sql("SELECT value, node_id, updated_at FROM mesh_memory WHERE scope = ? AND key = ?", (scope, key))
        return r[0] if r else None

    def value(self, scope: str, key: str) -> Any:
        r = self.row(scope, key)
        return None if r is None else json.loads(r[0])

    def cache(self) -> dict:
        if not self.cache_file.exists():
            return {}
        return json.loads(self.cache_file.read_text())


class Mesh:
    """Several nodes sharing one folder under a test's tmp_path (the ``mesh`` fixture in
    conftest.py makes one per test and closes it).

    ``node()`` adds a node whose processes are real ``meshsync`` commands; ``engine()``
    an in-process engine (``meshsync.engine.node.Node``) for tests that look at a pass
    from the inside.  ``close()`` stops every daemon and closes every engine, also when
    the test failed half-way."""

    def __init__(self, root: Path):
        self.root = root
        self.share = root / "share"
        self.nodes: list[MeshNode] = []
        self.engines: list[Any] = []

    def node(self, node_id: str, share: Path | None = None, init: bool = True, home: str | None = None,
             cls: type[MeshNode] = MeshNode, **env: str) -> MeshNode:
        """A node on the share (or on ``share``), its private folder ``home`` (default
        ``node-<id>``) under the root; ``init``: run `meshsync init` as it; ``cls``: a
        MeshNode subclass (e.g. fault_helpers.NoDacNode); ``env``: its MESHSYNC_* settings."""
        n = cls(node_id, share or self.share, self.root / (home or f"node-{node_id}"), dict(env))
        n.home.mkdir(parents=True, exist_ok=True)
        if init:
            n.cli("init")
        self.nodes.append(n)
        return n

    def engine(self, node: MeshNode | None = None, **settings: Any) -> Any:
        """An in-process engine: ``node``'s settings (node id, share, index, cache) with
        ``settings`` over them, or ``settings`` alone.  Closed by ``close()``."""
        from meshsync.engine.node import Node

        e = Node(node.settings(**settings) if node is not None else _load_settings(**settings))
        self.engines.append(e)
        return e

    def close(self) -> None:
        for n in self.nodes:
            if n.daemon is not None:
                try:
                    n.stop(timeout=10)
                except Exception:
                    pass
        for e in self.engines:
            e.close()


def _load_settings(**settings: Any) -> Any:
    from meshsync import config

    return config.load(None, **settings)


def memfile(share: Path, scope_dir: str, name: str) -> Path:
    """Path of a memory file: scope_dir is e.g. 'mesh' or 'user/alice'."""
    return share / "memory" / scope_dir / name


def file_version(share: Path, p: Path) -> tuple[str, str, Any, str, int]:
    """(scope, key, value, node_id, updated_at) that the memory file ``p`` stands for, as
    every node must derive it (R10): what a file meshsync wrote (its ``rev`` matches)
    claims; for any other file, stamp max(declared + 1 ms, mtime) and its ``node_id``
    or "share".  Written out here, apart from meshsync's own code, as the tests' oracle."""
    from meshsync import formats, layout

    data = p.read_bytes()
    mtime_ms = os.lstat(p).st_mtime_ns // 1_000_000
    doc = json.loads(data)
    parts = p.relative_to(share).as_posix().split("/")
    scope = {"mesh": "mesh", "node": "node"}.get(parts[1]) or "user:" + layout.decode(parts[2])
    try:
        key = layout.decode(parts[-1][:-5])
    except layout.Shortened:
        key = doc["key"]
    ms, sec, node = doc.get("updated_at_ms"), doc.get("updated_at"), doc.get("node_id")
    if type(ms) is int and type(sec) is int and ms // 1000 == sec:
        stamp = ms
    elif type(sec) in (int, float):
        stamp = int(sec * 1000)
    else:
        stamp = None
    digest = formats.digest_bytes(formats.canonical(doc["value"]))
    if (type(ms) is int and stamp is not None and isinstance(node, str) and node
            and doc.get("rev") == formats.rev(layout.memory_id(scope, key), digest, stamp, node)):
        return scope, key, doc["value"], node, stamp // 1000
    derived = max(stamp + 1 if stamp is not None else 0, mtime_ms)
    return scope, key, doc["value"], node if isinstance(node, str) and node else "share", derived // 1000
