"""Convergence under chaos (R1-R4), on real `meshsync run` processes.

Three nodes share one folder: ``a`` watches for events, ``b`` polls (short poll and
rescan intervals), ``c`` runs with its clock 5 minutes behind (libfaketime, for its
daemon and its CLI calls).  A seeded random workload writes a small set of overlapping
items through every entry point -- share files by hand (new files, hand edits that keep
the old ``updated_at``/``rev``, in-place and atomic saves, double saves), foreign SQLite
writers (Python's sqlite3 and the ``sqlite3`` shell), the CLI, and the cache as a Phase 1
tool writes it -- deletes them through the share, SQL and the CLI, creates/edits/deletes
skills with several files (``SKILL.md`` + ``scripts/x.sh``; deleted by ``rm -rf`` or by a
move to the trash), and stops (SIGTERM or SIGKILL) and restarts daemons at random
moments.  Every operation is recorded with what its writer saw just before.  After the
writes stop and the mesh settles the test checks:

1. R1: every index, every cache and the share hold the same items with the same
   values and the same updated_at/node_id, and no outbox row or error is left;
2. R2: every recorded write is the final value of its item, or was superseded by a
   later recorded operation on that item, or is in some node's conflict history;
3. R3: no operation made after seeing the final version lost to it;
4. R4: an item whose last recorded operation is a delete is gone everywhere, unless
   that delete was concurrent with the update that won (it had not seen it) and the
   update may carry the newer updated_at (written just before, or within the skew when
   the skewed node stamped the delete);
5. every share file parses, no temporary file is left and no daemon logged a traceback.

Replay a failure with ``CHAOS_SEED=<seed printed at the start>``; ``CHAOS_ROUNDS``
sets the number of random operations (default sized for CI, about 1-2 minutes);
``CHAOS_KEEP_DIR=<dir>`` keeps a failed run's share, indexes, caches, logs and
operations there.
"""

from __future__ import annotations

import glob
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO, Mesh, MeshNode, file_version, wait_for

from meshsync import faults, formats, layout

SKEW_S = 300  # node c's clock is this many seconds behind
DEFAULT_ROUNDS = 150
ROUNDS = int(os.environ.get("CHAOS_ROUNDS") or DEFAULT_ROUNDS)

MEM_ITEMS = [("mesh", "k0"), ("mesh", "k1"), ("mesh", "k2"), ("mesh", "Mixed.Case"), ("user:alice", "pref")]
SKILLS = ["alpha", "beta"]

UPSERT = ("INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) VALUES (?, ?, ?, ?, ?) "
          "ON CONFLICT(scope, key) DO UPDATE SET value = excluded.value, node_id = excluded.node_id, "
          "updated_at = excluded.updated_at")
SKILL_UPSERT = ("INSERT INTO mesh_skills (name, source_node, content, path, updated_at) VALUES (?, ?, ?, NULL, ?) "
                "ON CONFLICT(name) DO UPDATE SET source_node = excluded.source_node, content = excluded.content, "
                "path = excluded.path, updated_at = excluded.updated_at")

NOTHING = object()  # "the writer saw no value"


def faketime_wrapper(offset: str) -> list[str]:
    """A command prefix that runs a meshsync process with its wall clock shifted by
    ``offset`` (e.g. ``-5m``), for its daemon and its CLI calls alike.

    This is what ``faketime -f OFFSET`` does, but through ``env`` (which execs) instead
    of the ``faketime`` program (which forks and does not pass signals on), so that the
    daemon's pid is the Python process and SIGTERM reaches it.  The monotonic clock is
    left alone and ``time.sleep`` goes through tests/faketime_shim (see there: the two
    libfaketime bugs that otherwise hang or break Python's threads and sleeps)."""
    libs = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1")
                  + glob.glob("/usr/lib/faketime/libfaketimeMT.so.1"))
    if not libs:
        if os.environ.get("CI"):
            pytest.fail("libfaketime is missing: install the faketime package (.ci/run does)")
        pytest.skip("libfaketime is not installed (apt-get install faketime)")
    shim = Path(__file__).resolve().parents[2] / "tests" / "faketime_shim"
    return ["env", f"PYTHONPATH={shim}{os.pathsep}{REPO}", f"LD_PRELOAD={libs[0]}", f"FAKETIME={offset}",
            "FAKETIME_DONT_FAKE_MONOTONIC=1"]


# --- the record ---------------------------------------------------------------------------


@dataclass
class Op:
    seq: int
    t: float  # real time when the operation completed
    node: str  # the node whose entry point was used, or "share" for a hand edit
    entry: str  # share | sql | sqlite3 | cli
    item: tuple[str, str, str]  # (kind, scope, key); skills: ("s", "", name)
    value: Any  # None: a delete; memory: the JSON value; skill: SKILL.md text
    saw: Any = NOTHING  # what the writer saw just before (index row value or file value)

    def __str__(self) -> str:
        def short(v: Any) -> str:
            if isinstance(v, str) and self.item[0] == layout.SKILL:  # SKILL.md text: its version line
                return "skill " + (v.rsplit("\n\n", 1)[-1].strip() or v[:60])
            return json.dumps(v)[:80]
        what = "DELETE" if self.value is None else short(self.value)
        saw = "-" if self.saw is NOTHING else short(self.saw)
        return f"#{self.seq} t={self.t:.3f} {self.node}/{self.entry} {what} (saw {saw})"


def canon(kind: str, value: Any) -> str:
    """Comparable form of a memory value (canonical JSON) or skill content."""
    return formats.canonical(value).decode() if kind == layout.MEM else value


# --- reading every replica --------------------------------------------------------------------


def item_key(kind: str, scope: str, key: str) -> str:
    return f"{scope}:{key}" if kind == layout.MEM else f"skill:{key}"


def index_state(n: MeshNode) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for scope, key, value, node_id, updated_at in n.sql(
            "SELECT scope, key, value, node_id, updated_at FROM mesh_memory"):
        out[item_key("m", scope, key)] = (canon("m", json.loads(value)), node_id, updated_at)
    for name, content, source_node, updated_at in n.sql(
            "SELECT name, content, source_node, updated_at FROM mesh_skills"):
        out[item_key("s", "", name)] = (content, source_node, updated_at)
    return out


def cache_state(n: MeshNode) -> dict[str, tuple]:
    """The cache holds no skill metadata: skills map to (content, None, None)."""
    out: dict[str, tuple] = {}
    for k, e in n.cache().items():
        out[k] = (canon("m", e["value"]), e["nodeId"], e["ts"])
    if n.cache_skills.is_dir():
        for p in n.cache_skills.iterdir():
            assert not p.name.startswith(".meshsync-tmp-"), f"temporary file left in {n.node_id}'s cache: {p}"
            out[item_key("s", "", layout.decode(p.name[:-3]))] = (p.read_text(), None, None)
    return out


def share_state(share: Path) -> dict[str, tuple]:
    """Every memory file and skill folder of the share; each must parse (check 4)."""
    out: dict[str, tuple] = {}
    for p in sorted((share / layout.MEMORY).rglob("*")):
        if p.is_dir() or p.name.startswith("."):
            continue
        doc = json.loads(p.read_bytes())  # every share file parses
        assert isinstance(doc, dict) and "value" in doc, f"{p} is not a memory file: {doc!r}"
        scope, key, value, node, updated_at = file_version(share, p)  # as every node derives it (R10)
        out[item_key("m", scope, key)] = (canon("m", value), node, updated_at)
    for d in sorted((share / layout.SKILLS).iterdir()):
        if d.name.startswith("."):
            continue
        out[item_key("s", "", layout.decode(d.name))] = skill_version(d)
    for p in (share / layout.META / "tombstones").rglob("*"):
        if p.is_file() and not p.name.startswith("."):
            json.loads(p.read_bytes())
    return out


def skill_version(d: Path) -> tuple[str, str, int]:
    """(SKILL.md, source node, updated_at) a skill folder stands for (R10): what a
    skill.json whose rev matches claims; else derived from the folder alone, after what
    skill.json declares and no earlier than its newest file, node "share" when unnamed."""
    files = {p.relative_to(d).as_posix(): p for p in d.rglob("*")
             if p.is_file() and not layout.is_ignored_name(p.name)}
    content = files[layout.SKILL_MD].read_bytes()
    meta = json.loads(files[layout.SKILL_JSON].read_bytes()) if layout.SKILL_JSON in files else {}
    extras = formats.extras_digest([(r, formats.digest_bytes(p.read_bytes())) for r, p in files.items()
                                    if r not in (layout.SKILL_MD, layout.SKILL_JSON)])
    digest = formats.skill_digest(content, meta.get("path"), extras)
    ms, sec, node = meta.get("updated_at_ms"), meta.get("updated_at"), meta.get("source_node")
    stamp = ms if type(ms) is int and ms // 1000 == sec else sec * 1000 if type(sec) is int else None
    if (type(ms) is int and node and stamp is not None
            and meta.get("rev") == formats.rev(layout.skill_id(layout.decode(d.name)), digest, stamp, node)):
        return content.decode(), node, stamp // 1000
    mtime = {r: os.lstat(p).st_mtime_ns for r, p in files.items()}
    named = meta.get("name")
    if (meta.get("rev") and layout.SKILL_JSON in mtime and mtime[layout.SKILL_MD] < mtime[layout.SKILL_JSON]
            and not (type(ms) is int and node and stamp is not None and isinstance(named, str)
                     and meta.get("rev") == formats.rev(layout.skill_id(named), digest, stamp, node))):
        # skill.json written after SKILL.md names another version: no claim about these
        # files (a folder half-way through a delivery; detect.stale_claim)
        newest = max(t for r, t in mtime.items() if r != layout.SKILL_JSON) // 1_000_000
        return content.decode(), "share", newest // 1000
    newest = max(mtime.values()) // 1_000_000
    return content.decode(), node or "share", max(stamp + 1 if stamp is not None else 0, newest) // 1000


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".meshsync-tmp-*")]


def snapshot(mesh: Mesh, nodes: list[MeshNode]) -> dict[str, Any]:
    snap: dict[str, Any] = {"share": share_state(mesh.share)}
    for n in nodes:
        snap[f"index:{n.node_id}"] = index_state(n)
        snap[f"cache:{n.node_id}"] = cache_state(n)
        snap[f"outbox:{n.node_id}"] = n.sql("SELECT count(*) FROM meshsync_outbox")[0][0]
        snap[f"errors:{n.node_id}"] = n.sql("SELECT path, reason FROM meshsync_errors")
    return snap


def converged(snap: dict[str, Any], nodes: list[MeshNode]) -> list[str]:
    """What still differs (empty when converged)."""
    share = snap["share"]
    share_cache = {k: (v[0], None, None) if k.startswith("skill:") else v for k, v in share.items()}
    diffs = []
    for n in nodes:
        for name, want in ((f"index:{n.node_id}", share), (f"cache:{n.node_id}", share_cache)):
            got = snap[name]
            for k in sorted(set(got) | set(want)):
                if got.get(k) != want.get(k):
                    diffs.append(f"{name} {k}: {got.get(k)!r} != share {want.get(k)!r}")
        if snap[f"outbox:{n.node_id}"]:
            diffs.append(f"outbox:{n.node_id} has {snap[f'outbox:{n.node_id}']} pending row(s)")
        if snap[f"errors:{n.node_id}"]:
            diffs.append(f"errors:{n.node_id}: {snap[f'errors:{n.node_id}']}")
    return diffs


def settle(mesh: Mesh, nodes: list[MeshNode], timeout: float = 120.0) -> dict[str, Any]:
    """Wait until all replicas agree, no outbox row is pending, and the same holds one
    second later (nothing is still moving)."""
    last: dict[str, Any] = {"snap": None, "diffs": None}

    def cond() -> dict[str, Any] | None:
        try:
            snap = snapshot(mesh, nodes)
        except (OSError, ValueError, KeyError, sqlite3.Error) as exc:  # a write in flight
            last["diffs"] = [f"unreadable: {exc!r}"]
            last["snap"] = None
            return None
        diffs = converged(snap, nodes)
        prev, last["snap"], last["diffs"] = last["snap"], snap, diffs
        return snap if not diffs and prev == snap else None

    try:
        return wait_for(cond, timeout, interval=1.0, what="the mesh to converge")
    except AssertionError:
        raise AssertionError("the mesh did not converge; still differing:\n  "
                             + "\n  ".join((last["diffs"] or ["?"])[:40])) from None


# --- the workload ------------------------------------------------------------------------


def stop(n: MeshNode, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    """Stop a daemon; one that does not stop on SIGTERM in time is a failure, and gets
    SIGABRT first so that faulthandler (PYTHONFAULTHANDLER) logs where every thread is."""
    assert n.daemon is not None
    n.daemon.send_signal(sig)
    try:
        n.daemon.wait(timeout)
    except subprocess.TimeoutExpired:
        n.daemon.send_signal(signal.SIGABRT)
        try:
            n.daemon.wait(10)
        except subprocess.TimeoutExpired:
            pass
        n.stop(signal.SIGKILL)
        raise AssertionError(f"{n.node_id}'s daemon did not stop within {timeout}s of "
                             f"{signal.Signals(sig).name}; its threads:\n{n.log()[-6000:]}") from None
    n.daemon = None



@dataclass
class Chaos:
    mesh: Mesh
    nodes: dict[str, MeshNode]
    rng: random.Random
    skewed: str
    ops: list[Op] = field(default_factory=list)
    kills: int = 0
    terms: int = 0
    starts: int = 0
    seq: int = 0
    trash: Path | None = None

    def now_s(self, node: str) -> int:
        return int(time.time()) - (SKEW_S if node == self.skewed else 0)

    def record(self, node: str, entry: str, item: tuple[str, str, str], value: Any, saw: Any = NOTHING) -> None:
        self.seq += 1
        self.ops.append(Op(self.seq, time.time(), node, entry, item, value, saw))

    def new_value(self, node: str, entry: str) -> Any:
        n = self.seq + 1
        return self.rng.choice([
            {"w": n, "by": f"{node}/{entry}"},
            f"value {n} from {node}/{entry}",
            [n, node, entry],
        ])

    def new_skill(self, name: str, node: str, entry: str) -> str:
        return (f"---\nname: {name}\ndescription: chaos test skill\n---\n# {name}\n\n"
                f"version {self.seq + 1} written by {node} through {entry}\n")

    # --- share, by hand ---

    def mem_path(self, scope: str, key: str) -> Path:
        return self.mesh.share / layout.item_path(layout.memory_id(scope, key), "")

    def skill_dir(self, name: str) -> Path:
        return self.mesh.share / layout.item_path(layout.skill_id(name), "")

    def save(self, p: Path, data: bytes) -> None:
        """A hand save: mostly atomic (a dot file renamed into place, as editors do),
        sometimes in place (truncate and write)."""
        p.parent.mkdir(parents=True, exist_ok=True)
        if self.rng.random() < 0.8:
            tmp = p.parent / f".hand-edit-{os.getpid()}-{self.seq}"
            tmp.write_bytes(data)
            os.replace(tmp, p)
        else:
            with open(p, "wb") as f:
                f.write(data)

    def share_mem_write(self, scope: str, key: str) -> None:
        p = self.mem_path(scope, key)
        value = self.new_value("share", "share")
        doc: dict[str, Any] = {"value": value}
        saw: Any = NOTHING
        try:
            old = json.loads(p.read_bytes())
            if isinstance(old, dict) and "value" in old:
                saw = old["value"]
                if self.rng.random() < 0.8:
                    doc = dict(old, value=value)  # a hand edit: updated_at and rev stay as they were
        except (OSError, ValueError):
            pass
        self.save(p, json.dumps(doc, indent=2).encode())
        self.record("share", "share", ("m", scope, key), value, saw)
        if self.rng.random() < 0.2:  # saved again a moment later, while daemons react to the first
            time.sleep(self.rng.uniform(0, 0.05))
            value2 = self.new_value("share", "share")
            self.save(p, json.dumps(dict(doc, value=value2), indent=2).encode())
            self.record("share", "share", ("m", scope, key), value2, value)

    def share_mem_delete(self, scope: str, key: str) -> bool:
        p = self.mem_path(scope, key)
        try:
            saw = json.loads(p.read_bytes()).get("value", NOTHING)
            p.unlink()
        except (OSError, ValueError, AttributeError):
            return False
        self.record("share", "share", ("m", scope, key), None, saw)
        return True

    def share_skill_write(self, name: str) -> None:
        d = self.skill_dir(name)
        content = self.new_skill(name, "share", "share")
        saw: Any = NOTHING
        try:
            saw = (d / layout.SKILL_MD).read_text()
        except (OSError, ValueError):
            pass
        # scripts/x.sh first, so a new skill is complete when its SKILL.md appears.
        if saw is NOTHING or self.rng.random() < 0.5:
            self.save(d / "scripts" / "x.sh", f"#!/bin/sh\necho {self.seq + 1}\n".encode())
        self.save(d / layout.SKILL_MD, content.encode())
        self.record("share", "share", ("s", "", name), content, saw)

    def share_skill_delete(self, name: str) -> bool:
        d = self.skill_dir(name)
        try:
            saw = (d / layout.SKILL_MD).read_text()
        except (OSError, ValueError):
            return False
        if self.rng.random() < 0.5:
            assert self.trash is not None
            os.replace(d, self.trash / f"{name}-{self.seq}")  # moved to the trash: one rename
        else:
            shutil.rmtree(d, ignore_errors=True)  # rm -rf: file by file
        self.record("share", "share", ("s", "", name), None, saw)
        return True

    # --- foreign SQLite writers ---

    def _tx(self, n: MeshNode, fn) -> Any:
        db = sqlite3.connect(n.index, timeout=30, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                r = fn(db)
                db.execute("COMMIT")
                return r
            except BaseException:
                db.execute("ROLLBACK")
                raise
        finally:
            db.close()

    def sql_mem_write(self, n: MeshNode, scope: str, key: str) -> None:
        value = self.new_value(n.node_id, "sql")
        text = json.dumps(value)
        ts = self.now_s(n.node_id)
        if self.rng.random() < 0.5:
            def fn(db):
                r = db.execute("SELECT value FROM mesh_memory WHERE scope = ? AND key = ?", (scope, key)).fetchone()
                db.execute(UPSERT, (scope, key, text, n.node_id, ts))
                return json.loads(r[0]) if r else NOTHING
            saw = self._tx(n, fn)
            self.record(n.node_id, "sql", ("m", scope, key), value, saw)
        else:
            r = n.row(scope, key)
            q = text.replace("'", "''")
            n.sqlite3_cli(f"INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) VALUES "
                          f"('{scope}', '{key}', '{q}', '{n.node_id}', {ts}) ON CONFLICT(scope, key) DO UPDATE SET "
                          "value = excluded.value, node_id = excluded.node_id, updated_at = excluded.updated_at;")
            self.record(n.node_id, "sqlite3", ("m", scope, key), value, json.loads(r[0]) if r else NOTHING)

    def sql_mem_delete(self, n: MeshNode, scope: str, key: str) -> bool:
        def fn(db):
            r = db.execute("SELECT value FROM mesh_memory WHERE scope = ? AND key = ?", (scope, key)).fetchone()
            db.execute("DELETE FROM mesh_memory WHERE scope = ? AND key = ?", (scope, key))
            return json.loads(r[0]) if r else NOTHING
        saw = self._tx(n, fn)
        if saw is NOTHING:
            return False
        self.record(n.node_id, "sql", ("m", scope, key), None, saw)
        return True

    def sql_skill_write(self, n: MeshNode, name: str) -> None:
        content = self.new_skill(name, n.node_id, "sql")
        ts = self.now_s(n.node_id)

        def fn(db):
            r = db.execute("SELECT content FROM mesh_skills WHERE name = ?", (name,)).fetchone()
            db.execute(SKILL_UPSERT, (name, n.node_id, content, ts))
            return r[0] if r else NOTHING
        saw = self._tx(n, fn)
        self.record(n.node_id, "sql", ("s", "", name), content, saw)

    def sql_skill_delete(self, n: MeshNode, name: str) -> bool:
        def fn(db):
            r = db.execute("SELECT content FROM mesh_skills WHERE name = ?", (name,)).fetchone()
            db.execute("DELETE FROM mesh_skills WHERE name = ?", (name,))
            return r[0] if r else NOTHING
        saw = self._tx(n, fn)
        if saw is NOTHING:
            return False
        self.record(n.node_id, "sql", ("s", "", name), None, saw)
        return True

    # --- the CLI ---

    @staticmethod
    def cli_write(n: MeshNode, *args: str) -> int:
        """A writing command: exit 0, or 1 when the write is stored but not exported yet
        (the item's share side was being written by another node as this command's own
        pass read it: kept locally and retried, R12); 4 passed through (no such item)."""
        p = n.cli(*args, check=False)
        assert p.returncode in (0, 4) or (p.returncode == 1 and "not exported" in p.stderr), (p.returncode, p.stderr)
        return p.returncode

    def cli_mem_write(self, n: MeshNode, scope: str, key: str) -> None:
        value = self.new_value(n.node_id, "cli")
        r = n.row(scope, key)
        self.cli_write(n, "put", scope, key, json.dumps(value))
        self.record(n.node_id, "cli", ("m", scope, key), value, json.loads(r[0]) if r else NOTHING)

    def cli_mem_delete(self, n: MeshNode, scope: str, key: str) -> bool:
        r = n.row(scope, key)
        if self.cli_write(n, "rm", scope, key) == 4:  # EXIT_NOT_FOUND: nothing was deleted
            return False
        self.record(n.node_id, "cli", ("m", scope, key), None, json.loads(r[0]) if r else NOTHING)
        return True

    def cli_skill_write(self, n: MeshNode, name: str) -> None:
        content = self.new_skill(name, n.node_id, "cli")
        r = n.sql("SELECT content FROM mesh_skills WHERE name = ?", (name,))
        f = n.home / f"skill-input-{self.seq + 1}.md"
        f.write_text(content)
        self.cli_write(n, "skill", "put", name, str(f))
        self.record(n.node_id, "cli", ("s", "", name), content, r[0][0] if r else NOTHING)

    def cli_skill_delete(self, n: MeshNode, name: str) -> bool:
        r = n.sql("SELECT content FROM mesh_skills WHERE name = ?", (name,))
        if self.cli_write(n, "skill", "rm", name) == 4:  # EXIT_NOT_FOUND: nothing was deleted
            return False
        self.record(n.node_id, "cli", ("s", "", name), None, r[0][0] if r else NOTHING)
        return True

    # --- the cache, as a Phase 1 tool writes it ---

    def cache_mem_write(self, n: MeshNode, scope: str, key: str) -> None:
        """Read mesh-memory.json, change one entry, write the whole file back in place
        (not atomically), as Phase 1 tools do."""
        value = self.new_value(n.node_id, "cache")
        try:
            entries = json.loads(n.cache_file.read_bytes())
        except (OSError, ValueError):
            entries = {}
        ck = f"{scope}:{key}"
        saw = entries[ck]["value"] if isinstance(entries.get(ck), dict) and "value" in entries[ck] else NOTHING
        entries[ck] = {"value": value, "nodeId": n.node_id, "ts": self.now_s(n.node_id)}
        n.cache_file.parent.mkdir(parents=True, exist_ok=True)
        with open(n.cache_file, "w") as f:
            f.write(json.dumps(entries, indent=2))
        self.record(n.node_id, "cache", ("m", scope, key), value, saw)

    def cache_skill_write(self, n: MeshNode, name: str) -> None:
        content = self.new_skill(name, n.node_id, "cache")
        p = n.cache_skills / layout.cache_skill_name(name)
        try:
            saw: Any = p.read_text()
        except (OSError, ValueError):
            saw = NOTHING
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "w") as f:
            f.write(content)
        self.record(n.node_id, "cache", ("s", "", name), content, saw)

    # --- daemons ---

    def toggle_node(self) -> None:
        up = [n for n in self.nodes.values() if n.daemon is not None]
        down = [n for n in self.nodes.values() if n.daemon is None]
        if down and (len(down) >= 2 or self.rng.random() < 0.5):
            n = self.rng.choice(down)
            n.start()
            self.starts += 1
            print(f"  start {n.node_id}")
        elif up:
            n = self.rng.choice(up)
            sig = signal.SIGKILL if self.rng.random() < 0.35 else signal.SIGTERM
            stop(n, sig)
            if sig == signal.SIGKILL:
                self.kills += 1
            else:
                self.terms += 1
            print(f"  {signal.Signals(sig).name} {n.node_id}")

    def check_alive(self) -> None:
        """A daemon the test did not stop must still be running."""
        for n in self.nodes.values():
            if n.daemon is not None and n.daemon.poll() is not None:
                rc = n.daemon.returncode
                n.daemon = None
                raise AssertionError(f"{n.node_id}'s daemon exited by itself (code {rc}):\n{n.log()[-3000:]}")

    def round(self) -> None:
        self.check_alive()
        r = self.rng.random()
        if r < 0.12:
            self.toggle_node()
            return
        n = self.rng.choice(list(self.nodes.values()))
        # Deletes go through the three entry points R4 names; writes also through the
        # cache (a Phase 1 tool editing mesh-memory.json or mesh/skills/<name>.md, R2).
        entry = self.rng.choice(["share", "sql", "cli"])
        w_entry = self.rng.choice(["share", "share", "sql", "cli", "cache"])
        if r < 0.72:
            scope, key = self.rng.choice(MEM_ITEMS)
            if self.rng.random() < 0.75 or not {
                "share": lambda: self.share_mem_delete(scope, key),
                "sql": lambda: self.sql_mem_delete(n, scope, key),
                "cli": lambda: self.cli_mem_delete(n, scope, key),
            }[entry]():
                {"share": lambda: self.share_mem_write(scope, key),
                 "sql": lambda: self.sql_mem_write(n, scope, key),
                 "cli": lambda: self.cli_mem_write(n, scope, key),
                 "cache": lambda: self.cache_mem_write(n, scope, key)}[w_entry]()
        else:
            name = self.rng.choice(SKILLS)
            if self.rng.random() < 0.7 or not {
                "share": lambda: self.share_skill_delete(name),
                "sql": lambda: self.sql_skill_delete(n, name),
                "cli": lambda: self.cli_skill_delete(n, name),
            }[entry]():
                {"share": lambda: self.share_skill_write(name),
                 "sql": lambda: self.sql_skill_write(n, name),
                 "cli": lambda: self.cli_skill_write(n, name),
                 "cache": lambda: self.cache_skill_write(n, name)}[w_entry]()

    def pause(self) -> None:
        r = self.rng.random()
        if r < 0.4:
            return
        time.sleep(self.rng.uniform(0, 0.3) if r < 0.85 else self.rng.uniform(0.5, 2.0))


# --- the checks ----------------------------------------------------------------------------


def conflict_losers(nodes: list[MeshNode]) -> dict[str, set[str]]:
    """item -> comparable forms of every beaten version in any node's history."""
    out: dict[str, set[str]] = {}
    for n in nodes:
        for kind, scope, key, loser in n.sql("SELECT kind, scope, key, loser_value FROM meshsync_conflicts"):
            if loser is None:
                continue
            v = canon("m", json.loads(loser)) if kind == layout.MEM else loser
            out.setdefault(item_key(kind, scope, key), set()).add(v)
    return out


def seen_seq(op: Op, kind: str, written: dict[str, Op]) -> int:
    """Seq of the write whose value op's writer saw just before it (-1: none)."""
    if op.saw is NOTHING:
        return -1
    w = written.get(canon(kind, op.saw))
    return w.seq if w is not None else -1


def check_outcome(chaos: Chaos, snap: dict[str, Any], nodes: list[MeshNode]) -> list[str]:
    share = snap["share"]
    losers = conflict_losers(nodes)
    by_item: dict[str, list[Op]] = {}
    for op in chaos.ops:
        by_item.setdefault(item_key(*op.item), []).append(op)
    failures: list[str] = []
    for k, ops in sorted(by_item.items()):
        kind = ops[0].item[0]
        final = share.get(k)
        final_v = final[0] if final is not None else None
        history = "\n      ".join(str(o) for o in ops)
        beaten = losers.get(k, set())
        # R2: every write is final, superseded by a later recorded operation, or beaten.
        for i, op in enumerate(ops):
            if op.value is None:
                continue
            v = canon(kind, op.value)
            if v == final_v or i < len(ops) - 1 or v in beaten:
                continue
            failures.append(f"R2 {k}: write {op} is neither the final value ({final_v!r}) nor superseded "
                            f"nor in any conflict history\n      {history}")
        # The final value is one that was written (nothing stale or invented).
        written = {canon(kind, o.value): o for o in ops if o.value is not None}  # values are unique
        w = written.get(final_v) if final is not None else None
        if final is not None and w is None:
            failures.append(f"{k}: final value {final_v!r} was never written\n      {history}")
            continue

        if w is None:
            continue
        # R3: an operation made after seeing the final version -- directly, or through
        # writes that had seen it -- must have beaten it, whatever the clocks say.  (A
        # later write is no proof: it may be concurrent with the final version.)
        after: dict[int, set[int]] = {}  # seq -> seqs of the writes it causally follows
        for op in ops:
            s = seen_seq(op, kind, written)
            after[op.seq] = {s} | after.get(s, set()) if s >= 0 else set()
        for op in ops:
            if w.seq in after[op.seq]:
                failures.append(f"R3 {k}: {op} was made after seeing the final version {w} and lost to it"
                                f"\n      {history}")
        # R4: the last operation was a delete -> gone, unless it was concurrent with the
        # update that won (it had not seen it; see R3 above) and that update may carry
        # the newer updated_at: written shortly before, or up to the skew before when the
        # delete was stamped by the skewed node (its own, or a hand delete it detected).
        last = ops[-1]
        if last.value is None and w.seq not in after[last.seq]:
            window = SKEW_S + 5 if last.node in (chaos.skewed, "share") else 5
            if w.t < last.t - window:
                failures.append(f"R4 {k}: deleted last ({last}) but came back as {final!r}\n      {history}")
    return failures


# --- the tests ----------------------------------------------------------------------------


def _ready(n: MeshNode) -> bool:
    return "ready: first pass done" in n.log()


def chaos_mesh(mesh: Mesh, skew: list[str]) -> dict[str, MeshNode]:
    a = mesh.node("a", MESHSYNC_WATCH__MODE="events", MESHSYNC_WATCH__RESCAN_INTERVAL="5",
                  PYTHONFAULTHANDLER="1")
    b = mesh.node("b", MESHSYNC_WATCH__MODE="poll", MESHSYNC_WATCH__POLL_INTERVAL="0.3",
                  MESHSYNC_WATCH__RESCAN_INTERVAL="2", PYTHONFAULTHANDLER="1")
    c = mesh.node("c", MESHSYNC_WATCH__MODE="events", MESHSYNC_WATCH__RESCAN_INTERVAL="5",
                  PYTHONFAULTHANDLER="1")
    c.wrapper = skew
    return {"a": a, "b": b, "c": c}


@pytest.mark.timeout(300 + 3 * ROUNDS)  # a round takes well under a second; settling up to 2 minutes
def test_chaos_convergence(mesh: Mesh, tmp_path: Path):
    seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(1, 2**32))
    rounds = ROUNDS
    print(f"chaos seed {seed} rounds {rounds}")
    t0 = time.monotonic()
    nodes = chaos_mesh(mesh, faketime_wrapper(f"-{SKEW_S // 60}m"))
    chaos = Chaos(mesh, nodes, random.Random(seed), skewed="c", trash=tmp_path / "trash")
    chaos.trash.mkdir()
    for n in nodes.values():
        n.start()
    wait_for(lambda: all(_ready(n) for n in nodes.values()), 30, what="daemons ready")
    try:
        for _ in range(rounds):
            chaos.round()
            chaos.pause()
        for n in nodes.values():
            if n.daemon is None:
                n.start()
                chaos.starts += 1
        t_settle = time.monotonic()
        snap = settle(mesh, list(nodes.values()))
        chaos.check_alive()
        print(f"writes stopped after {t_settle - t0:.1f}s; settled in {time.monotonic() - t_settle:.1f}s")
        failures = check_outcome(chaos, snap, list(nodes.values()))
        assert temp_files(mesh.root) == [], "temporary files left behind"
        for n in nodes.values():  # no daemon crashed, no thread of one died
            assert "Traceback" not in n.log(), f"{n.node_id}'s daemon log has a traceback"
        writes = sum(1 for o in chaos.ops if o.value is not None)
        deletes = len(chaos.ops) - writes
        conflicts = sum(n.sql("SELECT count(*) FROM meshsync_conflicts")[0][0] for n in nodes.values())
        print(f"chaos seed {seed}: {rounds} rounds, {writes} writes, {deletes} deletes, "
              f"{chaos.terms} SIGTERM, {chaos.kills} SIGKILL, {chaos.starts} starts, {conflicts} conflicts, "
              f"{len(snap['share'])} items at the end, {time.monotonic() - t0:.1f}s")
        assert not failures, (f"chaos seed {seed}: {len(failures)} failure(s):\n"
                              + "\n".join(failures[:20]))
    except BaseException:
        print(f"chaos seed {seed} FAILED; replay with CHAOS_SEED={seed} CHAOS_ROUNDS={rounds}")
        for n in nodes.values():
            text = n.log()
            print(f"--- log of {n.node_id} (last 3000 chars) ---\n{text[-3000:]}")
            if "Traceback" in text[:-3000]:
                i = text.index("Traceback")
                print(f"--- first traceback in the log of {n.node_id} ---\n{text[max(0, i - 500):i + 3000]}")
        keep = os.environ.get("CHAOS_KEEP_DIR")
        if keep:  # the whole mesh (share, indexes, caches, logs) for a post-mortem
            shutil.copytree(mesh.root, Path(keep) / f"seed-{seed}", dirs_exist_ok=True, symlinks=True)
            (Path(keep) / f"seed-{seed}" / "ops.txt").write_text("\n".join(str(o) for o in chaos.ops) + "\n")
        raise
    finally:
        for n in nodes.values():
            if n.daemon is not None:
                stop(n)


def test_skewed_node_write_after_seeing_wins(mesh: Mesh):
    """R3: c's clock is 5 minutes behind.  After c has seen a's value, c's writes (CLI,
    foreign SQL) win everywhere although their updated_at is older."""
    nodes = chaos_mesh(mesh, faketime_wrapper(f"-{SKEW_S // 60}m"))
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    for n in nodes.values():
        n.start()
    wait_for(lambda: all(_ready(n) for n in nodes.values()), 30, what="daemons ready")
    try:
        a.cli("put", "mesh", "clock", '"from a"')
        wait_for(lambda: c.value("mesh", "clock") == "from a", 15, what="c sees a's value")
        seen = c.row("mesh", "clock")
        c.cli("put", "mesh", "clock", '"from c, later"')
        for n in (a, b, c):
            wait_for(lambda n=n: n.value("mesh", "clock") == "from c, later", 15,
                     what=f"c's later write reaches {n.node_id}")
        row = a.row("mesh", "clock")
        assert row[1] == "c" and row[2] >= seen[2]  # stamped after what c saw, not 5 min back
        # The same through a foreign SQLite client on c, writing c's (skewed) clock.
        wait_for(lambda: c.row("mesh", "clock") == row, 15, what="c settled")
        c.sql(UPSERT, ("mesh", "clock", json.dumps("sql on c"), "c", int(time.time()) - SKEW_S))
        settled = settle(mesh, [a, b, c], timeout=30)
        assert settled["share"]["mesh:clock"][0] == canon("m", "sql on c")
        # A hand edit that keeps the file's updated_at and rev wins over what it edited.
        p = mesh.share / layout.item_path(layout.memory_id("mesh", "clock"), "")
        doc = json.loads(p.read_bytes())
        p.write_text(json.dumps(dict(doc, value="hand edit")))
        settled = settle(mesh, [a, b, c], timeout=30)
        assert settled["share"]["mesh:clock"][0] == canon("m", "hand edit")
        for n in (a, b, c):
            assert n.sql("SELECT count(*) FROM meshsync_conflicts")[0][0] == 0, f"{n.node_id}: no conflict expected"
    finally:
        for n in nodes.values():
            if n.daemon is not None:
                stop(n)


def test_watcher_stop_survives_watchdog_errors(tmp_path: Path):
    """Found by the chaos test: on SIGTERM the daemon crashed with a traceback (exit 1,
    last pass skipped) because watchdog's inotify observer raised KeyError while
    unscheduling a skill folder that had been removed and re-created.  Stopping the
    watcher (also done when the share becomes unavailable) must not raise."""
    from meshsync.daemon.watch import ShareEvents

    class BrokenObserver:
        joined = False

        def stop(self) -> None:
            raise KeyError(b"/share/skills/alpha")

        def join(self, timeout: float | None = None) -> None:
            BrokenObserver.joined = True

    ev = ShareEvents(tmp_path, "a")
    ev.observer = BrokenObserver()
    ev.stop()
    assert ev.observer is None and BrokenObserver.joined
    ev.stop()  # idempotent


def test_two_nodes_take_one_hand_made_skill_alike(mesh: Mesh):
    """Found by the chaos test (seed 31), when each node wrote a skill.json of its own for
    a hand-made folder (stamped alike, each naming itself) and the indexes kept different
    source_node values forever (R1).  Hand-made folders are now taken as written (R10):
    each node derives the same version from the folder alone and writes nothing."""
    a, b = mesh.node("a"), mesh.node("b")
    d = mesh.share / "skills" / "alpha"
    (d / "scripts").mkdir(parents=True)
    (d / "scripts" / "x.sh").write_text("#!/bin/sh\necho 1\n")
    (d / "SKILL.md").write_text("---\nname: alpha\ndescription: hand made\n---\n# alpha\n")
    for n in (b, a, b, a):
        n.sync()
    assert not (d / "skill.json").exists()
    rows = {n.node_id: n.sql("SELECT source_node, updated_at FROM mesh_skills WHERE name = 'alpha'")[0]
            for n in (a, b)}
    newest = max(int(p.stat().st_mtime) for p in (d / "SKILL.md", d / "scripts" / "x.sh"))
    assert rows["a"] == rows["b"] == ("share", newest)


def _local_settings(tmp_path: Path):
    """Settings of one in-process node "a" on a fresh, initialised share under tmp_path."""
    from meshsync import config
    from meshsync.replicas.share.store import Share

    s = config.load(None, node_id="a", share=tmp_path / "share", index=tmp_path / "a.sqlite",
                    openclaw_home=tmp_path / "openclaw")
    s.share.mkdir()
    Share(s.share, max_file_bytes=1 << 20).initialise()
    return s

def test_hand_save_during_a_pass_is_not_overwritten(tmp_path: Path):
    """Found while analysing the chaos runs (the workload's double saves exercise it): a
    file saved twice within a few seconds.  The pass that read the first save rewrote it
    (normalised) without noticing the second save that landed meanwhile: its
    compare-and-set skipped files modified in the last 3 s, whose signatures are too
    fresh to skip reads but not to compare.  The second save was lost, unrecorded."""
    from meshsync.engine.node import Node

    s = _local_settings(tmp_path)
    node = Node(s)
    try:
        # A base an hour ahead of the file server's clock: the saves' mtimes cannot order
        # them after it, so the pass stamps the first save after its base and rewrites it
        # (R3's fallback; a file that orders itself is taken as written and not rewritten).
        node.put_memory("mesh", "k", "base")
        node.index.db.execute("UPDATE mesh_memory SET updated_at = updated_at + 3600")
        node.sync()
        p = s.share / "memory" / "mesh" / "k.json"
        p.write_text(json.dumps({"value": "first save"}))

        landed = []

        def second_save_lands(check):  # between the pass's read and its rewrite
            def cas(cur):
                if json.loads(p.read_bytes())["value"] == "first save":
                    landed.append(1)
                    tmp = p.with_name(".k.json.swp")
                    tmp.write_text(json.dumps({"value": "second save"}))
                    os.replace(tmp, p)
                    cur = os.lstat(p)
                return check(cur)
            return cas

        faults.install("share.check", second_save_lands)
        try:
            node.sync()
        finally:
            faults.remove("share.check")
        assert landed and json.loads(p.read_bytes())["value"] == "second save"
        node.sync()
        assert json.loads(p.read_bytes())["value"] == "second save"
        assert node.index.db.execute("SELECT value FROM mesh_memory").fetchall() == [('"second save"',)]
    finally:
        node.close()


def test_hand_saves_during_a_batch_of_parallel_exports_are_not_overwritten(tmp_path: Path):
    """A foreign client rewrites 40 rows; their files are written by the pass's writer
    threads (Share.write_many).  Hand saves of 5 of those files land while the batch is
    being written, after the pass looked: each write's compare-and-set, made in its thread
    just before the rename, must leave them alone; the next pass keeps them (newer)."""
    import threading

    from meshsync.engine.node import Node

    s = _local_settings(tmp_path)
    node = Node(s)
    try:
        keys = [f"k{i:02d}" for i in range(40)]
        for k in keys:
            node.put_memory("mesh", k, "first")
        node.sync()
        old = int(time.time()) - 30
        db = sqlite3.connect(s.index, isolation_level=None)
        db.executemany("UPDATE mesh_memory SET value = ?, node_id = 'tool', updated_at = ? WHERE key = ?",
                       [(json.dumps(f"row {k}"), old, k) for k in keys])
        db.close()
        hand = {k: s.share / "memory" / "mesh" / f"{k}.json" for k in keys[::8]}
        threads: set[str] = set()

        def hand_save_lands(check):
            def cas(cur):
                threads.add(threading.current_thread().name)
                for k, p in hand.items():
                    if cur is not None and os.path.samestat(cur, os.lstat(p)) and "first" in p.read_text():
                        tmp = p.with_name(f".{k}.swp")
                        tmp.write_text(json.dumps({"value": f"hand {k}"}))
                        os.replace(tmp, p)
                        cur = os.lstat(p)
                return check(cur)
            return cas

        faults.install("share.check", hand_save_lands)
        try:
            st = node.sync()
        finally:
            faults.remove("share.check")
        assert any(t.startswith("meshsync-write") for t in threads), threads  # the batch went to the threads
        assert st.to_share == 35, st.as_dict()
        for k in keys:
            want = f"hand {k}" if k in hand else f"row {k}"
            assert json.loads((s.share / "memory" / "mesh" / f"{k}.json").read_bytes())["value"] == want, k
        node.sync()
        got = dict(node.index.db.execute("SELECT key, value FROM mesh_memory"))
        assert got == {k: json.dumps(f"hand {k}" if k in hand else f"row {k}") for k in keys}
        assert all(node.cache.read_memory()[f"mesh:{k}"]["value"] == f"hand {k}" for k in hand)
    finally:
        node.close()


def test_tool_skill_file_written_during_a_pass_is_not_lost(tmp_path: Path):
    """Found by the chaos test (seed 1001, 1200 rounds): a Phase 1 tool wrote
    mesh/skills/alpha.md while a pass that applied another node's delete of alpha was
    running; the pass's cache refresh removed the file it had never looked at, and the
    tool's write was lost without a trace (R2)."""
    from meshsync.engine.node import Node

    s = _local_settings(tmp_path)
    node = Node(s)
    try:
        node.put_skill("alpha", "---\nname: alpha\ndescription: d\n---\nfirst\n", None)
        node.sync()
        cached = node.cache.skill_path("alpha")
        assert cached.read_text().endswith("first\n")
        node.delete_item(layout.skill_id("alpha"))  # the delete this pass applies
        tool_text = "---\nname: alpha\ndescription: d\n---\nwritten by a tool during the pass\n"

        def tool_writes_meanwhile():  # after the pass looked at the cache, before its refresh
            time.sleep(0.01)  # a later mtime than the delete's stamp
            cached.write_text(tool_text)

        faults.install("commit.start", tool_writes_meanwhile)
        try:
            node.sync()
        finally:
            faults.remove("commit.start")
        assert cached.read_text() == tool_text, "the pass removed the tool's file"
        node.sync()
        assert node.index.db.execute("SELECT content FROM mesh_skills WHERE name = 'alpha'").fetchall() == [(tool_text,)]
        assert (s.share / "skills" / "alpha" / "SKILL.md").read_text() == tool_text
    finally:
        node.close()


def test_signal_handlers_take_no_lock(tmp_path: Path):
    """Found by the chaos test (seed 2002, 1200 rounds): SIGTERM arrived while the main
    loop was inside events.wake.wait() holding that Event's lock; the handler called
    wake.set(), which waits for the same lock: the daemon hung for ever (so did its
    watchdog thread).  Handlers must only set flags."""
    import threading

    from meshsync.daemon.loop import Daemon

    s = _local_settings(tmp_path)
    d = Daemon(s, None)
    try:
        def handlers_while_the_lock_is_held() -> None:
            with d.events.wake._cond:  # where the main thread is inside wake.wait()/clear()
                d._on_stop(signal.SIGTERM, None)
                d._on_hup(signal.SIGHUP, None)

        t = threading.Thread(target=handlers_while_the_lock_is_held, daemon=True)
        t.start()
        t.join(5)
        assert not t.is_alive(), "a signal handler blocked on a lock the interrupted code holds"
        assert d.stop_signal == signal.SIGTERM and d.reload
    finally:
        d.node.close()


def test_daemon_start_waits_for_a_cli_holding_the_lock(mesh: Mesh):
    """Found by the chaos test (seed 3002, 1500 rounds): a CLI write on a node whose
    daemon was starting exported it itself (no daemon held the index lock yet); the
    daemon, finding the lock taken, exited 5 ("another meshsync process (pid ) is already
    running") and the node stayed down.  It now waits a few seconds for such a holder."""
    from meshsync.lock import IndexLock

    a = mesh.node("a")
    cli_export = IndexLock(a.index)
    cli_export.acquire()  # as `meshsync put` does while it exports with no daemon running
    try:
        a.start()
        time.sleep(1.5)
        assert a.daemon.poll() is None, f"the daemon gave up:\n{a.log()}"
    finally:
        cli_export.release()
    wait_for(lambda: _ready(a), 30, what="daemon ready once the CLI is done")
    stop(a)
