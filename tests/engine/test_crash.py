"""R7: kill -9 at random moments leaves everything parseable and loses nothing.

One node is SIGKILLed again and again while it does three kinds of bulk work:

1. **import**: thousands of hand-made files (and skill folders) in the share -> index;
2. **export**: thousands of rows written by a foreign SQLite client, partly while the
   node runs -> share files;
3. **cache rewrite**: a foreign client keeps updating rows while a daemon rewrites the
   cache (several MB) for each burst; half of these kills are aimed: they fire the
   moment a cache temporary file appears, i.e. in the middle of the rewrite.

Each round adds work (150 more files or rows), starts ``meshsync sync`` or ``meshsync run``
(chosen at random), waits until the process has opened its index and kills it after a
random delay whose range adapts to the machine (a process already done is a miss: up to
two more tries with more work).  After each kill it checks: every share
file parses, the index passes ``integrity_check`` and still holds every row the foreign
client committed and every row it held before, the cache parses, and no item anywhere
has a name that is not one of ours (no temporary file was imported).  Leftover
``.meshsync-tmp-*`` files are allowed until swept.  At the end, a clean pass converges
(index == share == cache, and a second node imports the same), and stale temporaries
(backdated by 2 hours) are swept by a full pass while fresh ones are kept.

Random choices come from one seed, printed on failure; replay with ``CRASH_SEED=<seed>``.
``CRASH_ROUNDS`` (default 8) is the number of kills per phase; e.g. CRASH_ROUNDS=30 for
a long run.

The other tests pin the crash points the random run found, deterministically: a process
that dies (``os._exit``) right after its index commit, halfway through the skill cache
files, or between its share writes and its index commit, and a row updated again while
its export is being written.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fault_helpers import share_items
from helpers import Mesh, MeshNode, wait_for

from meshsync.replicas.index.store import Index

SEED = int(os.environ.get("CRASH_SEED") or random.SystemRandom().randrange(1 << 32))
ROUNDS = int(os.environ.get("CRASH_ROUNDS", "8"))
N_IMPORT = 1000  # hand-made files before the first import round
IMPORT_PER_ROUND = 150  # and more before each round, so that every round has work to kill
N_SKILLS = 30
N_EXPORT = 1000  # rows before the first export round
EXPORT_PER_ROUND = 150
TMP = ".meshsync-tmp-"
UPSERT = ("INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) VALUES (?, ?, ?, ?, ?) "
          "ON CONFLICT(scope, key) DO UPDATE SET value = excluded.value, node_id = excluded.node_id, "
          "updated_at = excluded.updated_at")


def _skill_md(i: int) -> bytes:
    return f"# skill {i}\n\n".encode() + b"Some instructions.\n" * (i % 7 + 1)


class ForeignWriter:
    """A foreign SQLite client writing rows in short transactions; ``committed`` holds
    every value of every row whose transaction has returned from COMMIT, in order."""

    def __init__(self, index: Path):
        self.db = sqlite3.connect(index, timeout=60, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA busy_timeout = 60000")
        self.committed: dict[str, list[object]] = {}
        self.lock = threading.Lock()
        self.wlock = threading.Lock()
        self._stop = threading.Event()
        self._t: threading.Thread | None = None
        self.error: BaseException | None = None

    def write(self, rows: list[tuple[str, object]]) -> None:
        with self.wlock:  # one connection, used by the test and by the background thread
            now = int(time.time())
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany(UPSERT, [("mesh", k, json.dumps(v), "tool", now) for k, v in rows])
            self.db.execute("COMMIT")
        with self.lock:
            for k, v in rows:
                self.committed.setdefault(k, []).append(v)

    def snapshot(self) -> dict[str, int]:
        """How many values of each row are committed so far."""
        with self.lock:
            return {k: len(v) for k, v in self.committed.items()}

    def since(self, key: str, n: int) -> list[object]:
        """The values of ``key`` committed as the n-th or later (the row may hold any)."""
        with self.lock:
            return self.committed[key][n - 1:]

    def last(self) -> dict[str, object]:
        with self.lock:
            return {k: v[-1] for k, v in self.committed.items()}

    def run_in_background(self, batches, pause: float) -> None:
        def loop() -> None:
            try:
                for batch in batches:
                    if self._stop.is_set():
                        return
                    self.write(batch)
                    time.sleep(pause)
            except BaseException as exc:  # re-raised by stop()
                self.error = exc

        self._stop.clear()
        self._t = threading.Thread(target=loop, daemon=True)
        self._t.start()

    def stop(self) -> None:
        self._stop.set()
        if self._t is not None:
            self._t.join(60)
            self._t = None
        if self.error is not None:
            raise AssertionError(f"the foreign writer failed: {self.error!r}") from self.error

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self.db.close()


class Crasher:
    def __init__(self, mesh: Mesh, rng: random.Random):
        self.mesh = mesh
        self.rng = rng
        self.a: MeshNode = mesh.node("a")
        self.n = 0
        self.kills = 0
        self.missed = 0  # the process had already finished when the kill came
        self.mid_cache_write = 0  # kills that left a cache temporary file behind
        self.leftovers = 0
        self.expected_mem: set[str] = set()  # every key that may legitimately exist
        self.expected_skills: set[str] = set()
        self.rows_seen: dict[tuple[str, str], str] = {}  # what the index held, never to be lost
        self.skills_seen: set[str] = set()
        self._parsed: dict[Path, tuple] = {}
        self.trace: list[str] = []  # one line per round, printed at the end
        self.max_delay: dict[str, float] = {}

    # --- one round ----------------------------------------------------------------------

    def _opened_index(self, pid: int) -> bool:
        target = str(self.a.index)
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        return True
                except OSError:
                    pass
        except OSError:
            pass
        return False

    def launch(self, kind: str, **env: str) -> subprocess.Popen:
        self.n += 1
        log = open(self.a.home / f"proc-{self.n}-{kind}.log", "wb")
        args = ["sync"] if kind == "sync" else ["run"]
        return subprocess.Popen([sys.executable, "-m", "meshsync", *args], env=self.a.env(**env), stdout=log,
                                stderr=subprocess.STDOUT)

    def round(self, phase: str, max_delay: float, aimed: bool = False, daemon_share: float = 0.5,
              refill=None) -> None:
        """One kill: up to three tries (a process done before its kill is a miss; the
        next try gets more work from ``refill`` and a shorter delay)."""
        for attempt in range(3):
            if attempt and refill is not None:
                refill()
            if self._attempt(phase, max_delay, aimed, daemon_share):
                return

    def _attempt(self, phase: str, max_delay: float, aimed: bool, daemon_share: float) -> bool:
        kind = "daemon" if self.rng.random() < daemon_share else "sync"
        # The delay adapts to the machine: after a miss (the process was done before the
        # kill) the phase's range shrinks, after a hit it grows back.
        max_delay = self.max_delay.setdefault(phase, max_delay)
        delay = self.rng.uniform(0, max_delay)
        p = self.launch(kind)
        wait_for(lambda: self._opened_index(p.pid) or p.poll() is not None, 60, interval=0.005,
                 what=f"{phase}: process opened its index")
        if aimed:
            # Fire the moment a cache temporary file appears: mid-rewrite.
            home = str(self.a.openclaw_home)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and p.poll() is None:
                try:
                    if any(n.startswith(TMP) for n in os.listdir(home)):
                        break
                except OSError:
                    pass
                time.sleep(0.0002)
            time.sleep(self.rng.uniform(0, 0.001))
        else:
            time.sleep(delay)
        killed = p.poll() is None
        if killed:
            p.send_signal(signal.SIGKILL)
            self.kills += 1
            self.max_delay[phase] = min(2 * max_delay, max_delay * 1.25)
        else:
            self.missed += 1
            self.max_delay[phase] = max(0.05, delay * 0.7)
        p.wait(30)
        if any(n.startswith(TMP + "mesh-memory.json") for n in _listdir(self.a.openclaw_home)):
            self.mid_cache_write += 1
        self.check(f"{phase} round {self.n} ({kind}, {'aimed' if aimed else f'{delay:.3f}s'})")
        return killed

    # --- the invariants after a kill ----------------------------------------------------

    def _parse(self, p: Path) -> object:
        st = p.stat()
        sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        old = self._parsed.get(p)
        if old is not None and old[0] == sig:
            return old[1]
        doc = json.loads(p.read_bytes())
        self._parsed[p] = (sig, doc)
        return doc

    def check(self, where: str) -> None:
        share = self.mesh.share
        ctx = f"{where}; replay with CRASH_SEED={SEED}"
        # 1. Every share file parses; only expected items exist.
        temps = 0
        for dirpath, _dirs, names in os.walk(share):
            for name in names:
                p = Path(dirpath) / name
                if name.startswith(TMP):
                    temps += 1
                    continue
                if name.startswith(".") and name != ".meshsync":
                    continue  # other tools' files (the sweep test adds one)
                rel = p.relative_to(share).as_posix()
                if rel.startswith(".meshsync/journal/"):
                    for line in p.read_bytes().splitlines():
                        json.loads(line)
                    continue
                if rel.startswith("memory/"):
                    doc = self._parse(p)
                    assert isinstance(doc, dict) and "value" in doc, (ctx, rel)
                    assert rel.endswith(".json") and rel.split("/")[-1][:-5] in self.expected_mem, (ctx, rel)
                elif rel.endswith(".json"):
                    assert isinstance(self._parse(p), dict), (ctx, rel)
                elif rel.startswith("skills/") and name == "SKILL.md":
                    skill = rel.split("/")[1]
                    assert skill in self.expected_skills, (ctx, rel)
                    assert p.read_bytes() == _skill_md(int(skill.split("-")[1])), (ctx, rel)
        # 2. The index: intact, nothing committed lost, nothing unexpected.  (The writer may
        #    still be writing: a row holds what was committed before we read, or newer.)
        committed = self.writer.snapshot()
        db = sqlite3.connect(self.a.index, timeout=60)
        try:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok", ctx
            rows = {(s, k): v for s, k, v in db.execute("SELECT scope, key, value FROM mesh_memory")}
            skills = {n: c for n, c in db.execute("SELECT name, content FROM mesh_skills")}
        finally:
            db.close()
        unexpected = [k for (_s, k) in rows if k not in self.expected_mem]
        assert not unexpected, (ctx, unexpected[:5])
        assert set(skills) <= self.expected_skills, (ctx, set(skills) - self.expected_skills)
        for name, content in skills.items():
            assert content.encode() == _skill_md(int(name.split("-")[1])), (ctx, name)
        lost = [k for k in self.rows_seen if k not in rows]
        assert not lost, (ctx, "rows lost", lost[:5])
        lost_skills = self.skills_seen - set(skills)
        assert not lost_skills, (ctx, "skills lost", sorted(lost_skills))
        for key, n in committed.items():
            got = rows.get(("mesh", key))
            ok = self.writer.since(key, n)
            assert got is not None and json.loads(got) in ok, (ctx, "foreign row", key, got, ok)
        self.rows_seen = rows
        self.skills_seen = set(skills)
        self.trace.append(f"{where}: {len(rows)} rows, {temps} temporaries")
        # 3. The cache parses, every entry is whole, and holds only expected items.
        home = self.a.openclaw_home
        if self.a.cache_file.exists():
            cache = json.loads(self.a.cache_file.read_bytes())
            assert isinstance(cache, dict), ctx
            for ck, ent in cache.items():
                assert ck.startswith("mesh:") and ck[5:] in self.expected_mem, (ctx, ck)
                assert set(ent) == {"value", "nodeId", "ts"}, (ctx, ck, ent)
        if self.a.cache_skills.is_dir():
            for p in self.a.cache_skills.iterdir():
                if p.name.startswith(TMP):
                    temps += 1
                    continue
                name = p.name[:-3]
                assert p.name.endswith(".md") and name in self.expected_skills, (ctx, p.name)
                assert p.read_bytes() == _skill_md(int(name.split("-")[1])), (ctx, p.name)
        temps += sum(1 for n in _listdir(home) if n.startswith(TMP))
        self.leftovers = max(self.leftovers, temps)

    # --- convergence ------------------------------------------------------------------------

    def assert_converged(self, n: MeshNode, where: str) -> None:
        ctx = f"{where}; replay with CRASH_SEED={SEED}"
        files = share_items(self.mesh.share)
        rows = {f"{s}:{k}": (json.loads(v), nid, u) for s, k, v, nid, u in
                n.sql("SELECT scope, key, value, node_id, updated_at FROM mesh_memory")}
        cache = n.cache()
        assert set(files) == set(rows) == set(cache), (ctx, len(files), len(rows), len(cache))
        for k, f in files.items():
            assert rows[k] == (f["value"], f["node_id"], f["updated_at"]), (ctx, k)
            assert cache[k] == {"value": f["value"], "nodeId": f["node_id"], "ts": f["updated_at"]}, (ctx, k)
        skills = {name: c for name, c in n.sql("SELECT name, content FROM mesh_skills")}
        assert set(skills) == self.expected_skills, ctx
        for name in skills:
            assert (n.cache_skills / f"{name}.md").read_bytes() == _skill_md(int(name.split("-")[1])), (ctx, name)
            assert not (self.mesh.share / "skills" / name / "skill.json").exists(), (ctx, name)  # as made (R10)


def _listdir(d: Path) -> list[str]:
    try:
        return os.listdir(d)
    except FileNotFoundError:
        return []


def _temps(*roots: Path) -> list[Path]:
    return [p for r in roots for p in r.rglob(TMP + "*")]


@pytest.mark.timeout(300 + 3 * 15 * ROUNDS)  # about 5 s per kill on a slow machine, three phases
def test_kill_9_during_import_export_and_cache_rewrite(mesh: Mesh):
    print(f"CRASH_SEED={SEED} CRASH_ROUNDS={ROUNDS}")
    rng = random.Random(SEED)
    t0 = time.monotonic()
    c = Crasher(mesh, rng)
    a = c.a
    c.writer = ForeignWriter(a.index)
    try:
        # 1. Bulk import: hand-made files and skill folders -> index.
        m = mesh.share / "memory" / "mesh"
        n_imp = 0

        def more_files(n: int) -> None:
            nonlocal n_imp
            for i in range(n_imp, n_imp + n):
                (m / f"imp-{i}.json").write_text(json.dumps({"value": {"i": i, "pad": "p" * (100 + i % 100)}}))
                c.expected_mem.add(f"imp-{i}")
            n_imp += n

        more_files(N_IMPORT)
        for i in range(N_SKILLS):
            d = mesh.share / "skills" / f"sk-{i}"
            (d / "scripts").mkdir(parents=True)
            (d / "SKILL.md").write_bytes(_skill_md(i))
            (d / "scripts" / "run.sh").write_text(f"echo {i}\n")
            c.expected_skills.add(f"sk-{i}")
        for r in range(ROUNDS):
            if r:
                more_files(IMPORT_PER_ROUND)
            c.round("import", 2.0, refill=lambda: more_files(IMPORT_PER_ROUND))

        # 2. Bulk export: a foreign writer's rows -> share files, half of them written while
        #    the node runs (and is killed).
        keys = [f"exp-{i}" for i in range(N_EXPORT)]
        c.expected_mem.update(keys)
        for i in range(0, N_EXPORT, 250):
            c.writer.write([(k, {"e": k}) for k in keys[i:i + 250]])

        def trickle():  # rows written while the node runs
            n = 0
            while True:
                batch = [f"exp-bg-{j}" for j in range(n, n + 20)]
                c.expected_mem.update(batch)  # before they are committed
                yield [(k, {"e": k}) for k in batch]
                n += 20

        c.writer.run_in_background(trickle(), 0.4)
        def more_rows() -> None:
            batch = [f"exp-r{c.n}-{j}" for j in range(EXPORT_PER_ROUND)]
            c.expected_mem.update(batch)
            c.writer.write([(k, {"e": k}) for k in batch])

        for r in range(ROUNDS):
            if r:
                more_rows()
            c.round("export", 2.0, refill=more_rows)
        c.writer.stop()

        # 3. Cache rewrites: a daemon rewrites the whole cache for each burst of updates.
        upd = [f"imp-{i}" for i in range(n_imp)]

        def bursts():
            n = 0
            while True:
                n += 1
                yield [(k, {"i": k, "v": n}) for k in rng.sample(upd, 20)]

        c.writer.run_in_background(bursts(), 0.05)
        for r in range(ROUNDS):
            c.round("cache", 1.5, aimed=r % 2 == 0, daemon_share=0.75)
        c.writer.stop()
        kills_done = time.monotonic() - t0

        # A clean pass: the node converges, a second node imports the same.
        p = a.cli("sync", check=False, timeout=300)
        assert p.returncode == 0, (p.returncode, p.stdout, p.stderr[-3000:], SEED)
        c.check("after the clean pass")
        c.assert_converged(a, "after the clean pass")
        written = {f"imp-{i}" for i in range(n_imp)} | set(c.writer.last())  # (not a batch the writer drew but never wrote)
        assert set(share_items(mesh.share)) == {f"mesh:{k}" for k in written}
        for key, value in c.writer.last().items():
            assert a.value("mesh", key) == value, (key, SEED)
        b = mesh.node("b", init=False)
        Index(b.index).close()  # what `meshsync init` does for a node of an existing share
        b.sync()
        c.assert_converged(b, "second node")

        # Stale temporaries are swept by a full pass; fresh ones (a write in flight) stay;
        # other tools' temporary files are never touched.  None is ever imported.
        (m / f"{TMP}999999-1").write_bytes(b'{"value": "half')
        (mesh.share / "skills" / "sk-1" / f"{TMP}999999-2").write_bytes(b"# half")
        (a.openclaw_home / f"{TMP}mesh-memory.json-999999-3").write_bytes(b"{")
        stale = _temps(mesh.share, a.openclaw_home)
        old = time.time() - 2 * 3600
        for p in stale:
            os.utime(p, (old, old), follow_symlinks=False)
        fresh = m / f"{TMP}999999-4"
        fresh.write_bytes(b'{"value": "in flight"}')
        other = m / ".syncthing.imp-1.json.tmp"
        other.write_bytes(b"syncthing's")
        os.utime(other, (old, old))
        a.sync()
        assert _temps(mesh.share, a.openclaw_home) == [fresh], _temps(mesh.share, a.openclaw_home)
        assert other.read_bytes() == b"syncthing's"
        c.check("after the sweep")
        c.assert_converged(a, "after the sweep")
        print("\n".join(c.trace))
        conflicts = a.sql("SELECT count(*) FROM meshsync_conflicts")[0][0]
        print(f"kills={c.kills} missed={c.missed} mid-cache-write={c.mid_cache_write} conflicts={conflicts} "
              f"max-leftover-temporaries={c.leftovers} swept={len(stale)} "
              f"kill-phase={kills_done:.1f}s total={time.monotonic() - t0:.1f}s")
        assert c.kills >= 3 * ROUNDS - 2, f"only {c.kills} kills landed; CRASH_SEED={SEED}"
    finally:
        c.writer.close()


# A `meshsync sync` that dies like kill -9 (os._exit) at a chosen point of the cache refresh.
DIE_AT = """
import os, sys
import meshsync.replicas.cache.store as c
where = os.environ["DIE_AT"]
if where == "before-memory":
    c.Cache.write_memory = lambda self, entries: os._exit(137)
else:
    real = c.Cache.sync_skills
    def half(self, live, removed):
        real(self, dict(list(live.items())[: len(live) // 2]), [])
        os._exit(137)
    c.Cache.sync_skills = half
from meshsync.cli.main import main
sys.exit(main(["sync"]))
"""


def test_killed_between_index_commit_and_cache_refresh(mesh: Mesh):
    """Deterministic crash points: right after the index commit, before mesh-memory.json
    is rewritten; and halfway through writing mesh/skills/*.md.  The next pass must
    refresh the cache and must not take the missing skill files as deletes."""
    a = mesh.node("a")
    m = mesh.share / "memory" / "mesh"
    (m / "first.json").write_text('{"value": 0}')
    a.sync()  # a cache exists and is recorded as ours
    for where in ("before-memory", "mid-skills"):
        for i in range(10):
            (m / f"{where}-{i}.json").write_text(json.dumps({"value": i}))
            d = mesh.share / "skills" / f"{where}-{i}"
            d.mkdir()
            (d / "SKILL.md").write_text(f"# {where} {i}\n")
        p = subprocess.run([sys.executable, "-c", DIE_AT], env=a.env(DIE_AT=where), capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 137, p.stderr
        assert a.sql("SELECT count(*) FROM mesh_skills WHERE name LIKE ?", (f"{where}-%",)) == [(10,)]
        a.sync()
        skills = {n for (n,) in a.sql("SELECT name FROM mesh_skills")}
        assert {f"{where}-{i}" for i in range(10)} <= skills, (where, sorted(skills))
        for i in range(10):
            assert (mesh.share / "skills" / f"{where}-{i}" / "SKILL.md").exists(), (where, i)
            assert (a.cache_skills / f"{where}-{i}.md").read_text() == f"# {where} {i}\n", (where, i)
            assert a.cache()[f"mesh:{where}-{i}"]["value"] == i, (where, i)
    assert not a.sql("SELECT * FROM meshsync_state WHERE deleted = 1")


DIE_IN_APPLY_INDEX = """
import os, sys
from meshsync import faults
faults.install("propagate.before_index_commit", lambda: os._exit(137))  # share files written, index not committed
from meshsync.cli.main import main
sys.exit(main(["sync"]))
"""


def test_killed_after_export_before_index_commit_keeps_a_same_second_update(mesh: Mesh):
    """A pass exports a foreign row (v1) to the share and is killed before its index
    commit; the foreign client then updates the row again within the same second (v2).
    v2 came after v1 and must win, whatever the digests say (R2, R1 order on one node)."""
    from meshsync import formats

    a = mesh.node("a")
    sec = int(time.time()) - 30
    v1 = {"n": 1}
    d1 = formats.digest_bytes(formats.canonical(v1))
    # A v2 whose digest is smaller: a tie on (stamp, node) would then go to v1.
    v2 = next(v for v in ({"n": 2, "t": i} for i in range(100)) if formats.digest_bytes(formats.canonical(v)) < d1)
    a.sql(UPSERT, ("mesh", "k", json.dumps(v1), "tool", sec))
    p = subprocess.run([sys.executable, "-c", DIE_IN_APPLY_INDEX], env=a.env(), capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 137, p.stderr
    f = mesh.share / "memory" / "mesh" / "k.json"
    assert json.loads(f.read_text())["value"] == v1  # the export happened, the index commit did not
    a.sql(UPSERT, ("mesh", "k", json.dumps(v2), "tool", sec))
    a.sync()
    assert a.value("mesh", "k") == v2
    assert json.loads(f.read_text())["value"] == v2
    assert a.cache()["mesh:k"]["value"] == v2


WRITE_DURING_PASS = """
import os, sqlite3, sys
import meshsync.replicas.share.store as sh
real, done = sh.Share.write, []
def write(self, rel, data, *a, **k):
    st = real(self, rel, data, *a, **k)
    if rel == "memory/mesh/k.json" and not done:  # the export is on the share; now the row changes
        done.append(1)
        db = sqlite3.connect(os.environ["MESHSYNC_INDEX"], isolation_level=None, timeout=30)
        db.execute(os.environ["UPSERT"], ("mesh", "k", os.environ["V2"], "tool", int(os.environ["SEC"])))
        db.close()
    return st
sh.Share.write = write
from meshsync.cli.main import main
sys.exit(main(["sync"]))
"""


def test_row_updated_while_its_export_is_written_keeps_the_update(mesh: Mesh):
    """No crash: a foreign client updates a row (same second) after the pass read it and
    while the pass writes its export.  The pass leaves the row for the next one; the
    export it wrote must not then look concurrent with the update and beat it."""
    from meshsync import formats

    a = mesh.node("a")
    sec = int(time.time()) - 30
    v1 = {"n": 1}
    d1 = formats.digest_bytes(formats.canonical(v1))
    v2 = next(v for v in ({"n": 2, "t": i} for i in range(100)) if formats.digest_bytes(formats.canonical(v)) < d1)
    a.sql(UPSERT, ("mesh", "k", json.dumps(v1), "tool", sec))
    p = subprocess.run([sys.executable, "-c", WRITE_DURING_PASS],
                       env=a.env(UPSERT=UPSERT, V2=json.dumps(v2), SEC=str(sec)), capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert a.value("mesh", "k") == v2  # the update is in the index
    a.sync()
    assert a.value("mesh", "k") == v2
    assert json.loads((mesh.share / "memory" / "mesh" / "k.json").read_text())["value"] == v2
    assert a.cache()["mesh:k"]["value"] == v2


INSERT_DURING_IMPORT = """
import os, sqlite3, sys
from meshsync import faults
done = []
def insert():  # detection is done (k2 was absent from the index): now a client inserts it
    if not done:  # (a first import applies the files it read, then the rest)
        done.append(1)
        db = sqlite3.connect(os.environ["MESHSYNC_INDEX"], isolation_level=None, timeout=30)
        db.execute("INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) VALUES (?,?,?,?,?)",
                   ("mesh", os.environ["KEY"], '"foreign"', "tool", int(os.environ["SEC"])))
        db.close()
def inserted(got, pending):
    print(f"bulk inserted {len(got)} of {len(pending)}", file=sys.stderr)
if os.environ.get("KEY"):
    faults.install("propagate.start", insert)
faults.install("propagate.bulk_inserted", inserted)
from meshsync.cli.main import main
sys.exit(main(["sync"]))
"""


def test_foreign_insert_racing_the_bulk_import_keeps_the_foreign_row(mesh: Mesh):
    """The import inserts the rows it saw absent in one statement.  A client inserting
    one of them after the pass looked must keep its row: the statement leaves it alone,
    the other rows go in, and the foreign row is synced by the next pass (it is newer
    than the hand-made file, so it wins everywhere)."""
    a = mesh.node("a")
    old = time.time() - 3600
    for i in range(5):
        f = mesh.share / "memory" / "mesh" / f"k{i}.json"
        f.write_text(json.dumps({"value": f"file {i}"}))
        os.utime(f, (old, old))
    env = a.env(KEY="k2", SEC=str(int(time.time())))
    p = subprocess.run([sys.executable, "-c", INSERT_DURING_IMPORT], env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert "bulk inserted 4 of 5" in p.stderr, p.stderr  # the foreign row was left alone
    assert a.value("mesh", "k2") == "foreign"
    assert [a.value("mesh", f"k{i}") for i in (0, 1, 3, 4)] == [f"file {i}" for i in (0, 1, 3, 4)]
    assert a.sql("SELECT count(*) FROM meshsync_state WHERE key = 'k2'") == [(0,)]  # left for the next pass
    assert a.sql("SELECT count(*) FROM meshsync_outbox WHERE key = 'k2'") == [(1,)]
    a.sync()
    assert a.value("mesh", "k2") == "foreign"
    assert json.loads((mesh.share / "memory" / "mesh" / "k2.json").read_text())["value"] == "foreign"
    assert a.cache()["mesh:k2"]["value"] == "foreign"
    assert a.cache()["mesh:k0"]["value"] == "file 0"
    assert not [c for c in a.sql("SELECT key, side FROM meshsync_conflicts") if c[0] != "k2"]


def test_bulk_import_without_a_race_inserts_in_one_statement(mesh: Mesh):
    a = mesh.node("a")
    for i in range(5):
        (mesh.share / "memory" / "mesh" / f"k{i}.json").write_text(json.dumps({"value": i}))
    p = subprocess.run([sys.executable, "-c", INSERT_DURING_IMPORT], env=a.env(), capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert "bulk inserted 5 of 5" in p.stderr, p.stderr
    assert [a.value("mesh", f"k{i}") for i in range(5)] == list(range(5))
    assert a.sql("SELECT count(*) FROM meshsync_outbox") == [(0,)]  # our own writes are not foreign writes
    assert a.sql("SELECT count(*) FROM mesh_memory_fts WHERE mesh_memory_fts MATCH 'k3'") == [(1,)]


RECREATE_DURING_DELETE = """
import os, sys
import meshsync.replicas.share.store as sh
real, done = sh.Share.write, []
def write(self, rel, data, *a, **k):
    st = real(self, rel, data, *a, **k)
    if rel.endswith("tombstones/memory/mesh/k.json") and not done:  # the delete is being applied
        done.append(1)
        with open(os.path.join(os.environ["MESHSYNC_SHARE"], "memory/mesh/k.json"), "w") as f:
            f.write('{"value": "made again"}')
    return st
sh.Share.write = write
from meshsync.cli.main import main
sys.exit(main(["sync"]))
"""


def test_file_made_again_while_its_delete_is_applied_is_kept(mesh: Mesh):
    """A user deletes a file and makes it again at once; meshsync's pass for the delete
    writes the tombstone in between.  It must not remove the new file (R2): it was
    absent when the pass looked, so whatever is there now is a new write."""
    a = mesh.node("a")
    f = mesh.share / "memory" / "mesh" / "k.json"
    a.cli("put", "mesh", "k", '"first"')
    f.unlink()
    p = subprocess.run([sys.executable, "-c", RECREATE_DURING_DELETE], env=a.env(), capture_output=True, text=True,
                       timeout=120)
    assert p.returncode in (0, 1), p.stderr
    assert f.exists(), "the pass removed a file made after it looked"
    a.sync()
    assert a.value("mesh", "k") == "made again"
    assert json.loads(f.read_text())["value"] == "made again"


HAND_EDIT_DURING_SKILL_EXPORT = """
import os, sys
from meshsync import faults
done = []
def hand_save(it):  # after the pass looked at the share, before it exports
    if it.key == "alpha" and not done:
        done.append(1)
        with open(os.path.join(os.environ["MESHSYNC_SHARE"], "skills/alpha/SKILL.md"), "w") as f:
            f.write("# alpha\\n\\nsaved by hand during the export\\n")
faults.install("propagate.before_export", hand_save)
from meshsync.cli.main import main
sys.exit(main(["sync"]))
"""


def test_skill_md_saved_by_hand_during_an_export_is_not_overwritten(mesh: Mesh):
    """A foreign client updates a skill's row; while the pass that exports it runs (after
    it looked at the share), a person saves SKILL.md by hand.  The export must not replace
    that file (there was no compare-and-set for skills: the chaos test lost such a save
    without a trace); the next pass sees both writes and keeps the loser in the history."""
    a = mesh.node("a")
    a.cli("skill", "put", "alpha", "-", input="# alpha\n\nfirst\n")
    a.sync()
    a.sql("UPDATE mesh_skills SET content = ?, updated_at = ? WHERE name = 'alpha'",
          ("# alpha\n\nfrom the index\n", int(time.time())))
    p = subprocess.run([sys.executable, "-c", HAND_EDIT_DURING_SKILL_EXPORT], env=a.env(),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode in (0, 1), p.stderr
    md = mesh.share / "skills" / "alpha" / "SKILL.md"
    assert md.read_text() == "# alpha\n\nsaved by hand during the export\n"
    a.sync(check=False)
    a.sync(check=False)
    final = a.sql("SELECT content FROM mesh_skills WHERE name = 'alpha'")[0][0]
    history = a.cli("conflicts", "--json").stdout
    for text in ("# alpha\n\nsaved by hand during the export\n", "# alpha\n\nfrom the index\n"):
        assert final == text or json.dumps(text)[1:-1] in history, (text, final, history)
    assert md.read_text() == final
