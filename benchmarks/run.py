#!/usr/bin/env python3
"""meshsync benchmarks: every figure next to a bare baseline measured in the same run.

    python3 benchmarks/run.py [--sizes 10000,100000] [--skills 200] [--quick] [--only NAME[,NAME]]

For each size N it builds a share in a temporary folder (N memory files in memory/mesh/,
rendered with meshsync.formats.render_memory so meshsync trusts them, plus the skills;
every file's mtime set an hour back so the 3 s racy-file rule does not apply) and runs:

  import   Node(settings).sync() in-process on a fresh index   vs scandir+read+orjson+INSERT
  noop     a second, no-change Node.sync()                     vs scandir+stat walk
  cache    the cache rewrite after one row changed (patched) and whole  vs orjson.dumps + atomic write
  latency  two real `meshsync run` daemons: hand edit -> other node's cache, foreign SQLite
           write -> share file (events mode), CLI put on bindfs mount A -> node B's index
           (poll mode, poll_interval 2 s)                      vs the designed wait (floor)
  idle     CPU and peak RSS of an idle poll-mode daemon        vs a bare loop with its wake-ups
  export   10k rows from a foreign SQLite writer -> Node.sync() writes 10k share files
                                                               vs 10k atomic writes (fsync)
  foreign  the foreign data set (N files as people and tools write them: pretty-printed, no
           meshsync fields, fresh mtimes, a third value-only; dataset.build_foreign_share)
           first import by Node.sync(), which must write nothing to the share
                                                               vs scandir+read+orjson+INSERT

Writes benchmarks/results.json and docs/benchmarks.png (needs matplotlib, a benchmark-only
dependency: pip install matplotlib).  --quick and --only print the table but write those
files only when --out/--plot are given.  See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

for _k in [k for k in os.environ if k.startswith("MESHSYNC_")]:
    del os.environ[_k]  # the runs must not depend on the caller's meshsync settings
for _i, _a in enumerate(sys.argv):  # --src must be known before meshsync is imported
    if _a == "--src" and _i + 1 < len(sys.argv):
        os.environ["BENCH_MESHSYNC_SRC"] = os.path.abspath(sys.argv[_i + 1])
    elif _a.startswith("--src="):
        os.environ["BENCH_MESHSYNC_SRC"] = os.path.abspath(_a[6:])

import baselines  # noqa: E402
import dataset  # noqa: E402
import orjson  # noqa: E402
from daemons import (  # noqa: E402
    MESHSYNC,
    BindMounts,
    ChangedFile,
    NodeProc,
    meshsync_paths,
    percentile,
    proc_cpu_seconds,
    proc_status_kb,
    wait_until,
)
from dataset import REPO, SRC, key_of, value_of  # noqa: E402

from meshsync import config, formats, layout  # noqa: E402
from meshsync.engine.node import Node  # noqa: E402

BENCHES = ("import", "noop", "cache", "latency", "idle", "export", "foreign")
EXPORT_N = 10_000
TICK = 0.05  # the daemon's index check period (meshsync.daemon.loop.INDEX_TICK)
T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


class Clock:
    """Wall and CPU (this process) time of repeated timed segments.  Each segment starts
    after sync(2), so no segment pays for the writeback of an earlier one."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self._t = (0.0, 0.0)

    def start(self) -> None:
        os.sync()
        self._t = (time.perf_counter(), time.process_time())

    def split(self) -> float:
        return time.perf_counter() - self._t[0]

    def stop(self) -> None:
        self.wall.append(time.perf_counter() - self._t[0])
        self.cpu.append(time.process_time() - self._t[1])

    @property
    def med(self) -> float:
        return statistics.median(self.wall)

    def details(self, prefix: str = "") -> dict[str, list[float]]:
        return {prefix + "runs": [round(x, 4) for x in self.wall], prefix + "cpu": [round(x, 4) for x in self.cpu]}


def med(xs: list[float]) -> float:
    return statistics.median(xs)


# --- results --------------------------------------------------------------------------------


class Results:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, bench: str, label: str, size: int, value: float, baseline: float | None, unit: str,
            target: float | None, baseline_kind: str = "measured", lower_bound: bool = False,
            **details: Any) -> dict:
        ratio = value / baseline if baseline else None
        row = {"bench": bench, "label": label, "size": size, "value": value, "baseline": baseline,
               "unit": unit, "ratio": ratio, "target": target, "baseline_kind": baseline_kind,
               "lower_bound": lower_bound,
               "ok": (ratio <= target) if (target is not None and ratio is not None) else None,
               "load1": round(os.getloadavg()[0], 2), "details": details}
        cpu, bcpu = details.get("cpu"), details.get("baseline_cpu")
        if cpu and bcpu and statistics.median(bcpu) > 0:  # in-process benchmarks: CPU time ratio too
            row["cpu_ratio"] = statistics.median(cpu) / statistics.median(bcpu)
        self.rows.append(row)
        say(f"{label} @ {size}: {fmt(value, unit)} vs {fmt(baseline, unit)}"
            + (f" -> ratio {ratio:.2f}" if ratio is not None else ""))
        return row


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "s":
        return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"
    if unit == "%":
        return f"{v:.2f} %"
    if unit == "MiB":
        return f"{v:.0f} MiB"
    return f"{v:.3g} {unit}"


def table(rows: list[dict]) -> str:
    head = ["benchmark", "size", "meshsync", "baseline", "ratio", "target", "ok", "cpu ratio", "load"]
    lines = []
    for r in rows:
        base = fmt(r["baseline"], r["unit"]) + (" (design)" if r["baseline_kind"] == "design" else "")
        ok = "-" if r["ok"] is None else ("yes" if r["ok"] else "NO")
        ge = ">= " if r.get("lower_bound") else ""
        lines.append([r["label"], str(r["size"]), ge + fmt(r["value"], r["unit"]), base,
                      "-" if r["ratio"] is None else ge + f"{r['ratio']:.2f}",
                      "-" if r["target"] is None else f"<= {r['target']:g}", ok,
                      f"{r['cpu_ratio']:.2f}" if r.get("cpu_ratio") else "", f"{r.get('load1', 0):.1f}"])
    widths = [max(len(x) for x in col) for col in zip(head, *lines, strict=True)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |" for line in lines]
    return "\n".join(out)


# --- one size ---------------------------------------------------------------------------------


class SizeRun:
    def __init__(self, base: Path, n: int, opts: argparse.Namespace, results: Results):
        self.base = base
        self.n = n
        self.o = opts
        self.r = results
        self.share = base / "share"
        self.a_home = base / "node-a"
        self.b_home = base / "node-b"
        self.imported = False
        self.big = n > 20_000

    def settings(self, home: Path, node_id: str = "bench-a", share: Path | None = None) -> config.Settings:
        return config.load(None, node_id=node_id, share=share or self.share, index=home / "index.sqlite",
                           openclaw_home=home / "openclaw")

    def reps(self, small: int, big: int) -> int:
        if self.o.repeat:
            return self.o.repeat
        if self.o.quick:
            return 1
        return big if self.big else small

    def run(self, only: set[str]) -> None:
        self.base.mkdir(parents=True)
        if only - {"foreign"}:  # the foreign benchmark builds its own data set
            say(f"size {self.n}: building the share ({self.n} memory files, {self.o.skills} skills)")
            info = dataset.build_share(self.share, self.n, self.o.skills)
            say(f"size {self.n}: built in {info['seconds']} s, {info['avg_file_bytes']} bytes per memory file")
            self.dataset_info = info
        for b in BENCHES:
            if b in only:
                t = time.monotonic()
                getattr(self, "bench_" + b)()
                say(f"size {self.n}: {b} done in {time.monotonic() - t:.0f} s")

    def ensure_imported(self) -> None:
        if not self.imported:
            say("importing once into node A's index (set-up, not measured)")
            node = Node(self.settings(self.a_home))
            node.sync()
            node.close()
            self.imported = True

    def profile(self, name: str, fn: Callable[[], Any]) -> None:
        """Run fn once more under pyinstrument (--profile DIR), outside the measured runs."""
        if not self.o.profile:
            return
        try:
            from pyinstrument import Profiler
        except ImportError:
            say("--profile needs pyinstrument (pip install pyinstrument); skipped")
            return
        out = Path(self.o.profile)
        out.mkdir(parents=True, exist_ok=True)
        prof = Profiler(interval=0.002)
        prof.start()
        try:
            fn()
        finally:
            prof.stop()
        stem = out / f"{name}-{self.n}"
        (out / f"{stem.name}-tree.txt").write_text(prof.output_text(time="percent_of_total"))
        (out / f"{stem.name}-flat.txt").write_text(prof.output_text(flat=True, time="percent_of_total"))
        (out / f"{stem.name}.html").write_text(prof.output_html())
        say(f"profile written to {stem}-tree.txt, -flat.txt, .html")

    # a. initial import ------------------------------------------------------------------

    def bench_import(self) -> None:
        reps = self.reps(3, 1)
        ms, bare, stats_d = Clock(), Clock(), {}
        expected = self.n + self.o.skills
        for r in range(reps):
            db = self.base / f"bare-{r}.sqlite"
            bare.start()
            rows = baselines.import_share(self.share, db)
            bare.stop()
            assert rows == expected, (rows, expected)
            for p in self.base.glob(f"bare-{r}.sqlite*"):
                p.unlink()
            last = r == reps - 1
            home = self.a_home if last else self.base / f"import-{r}"
            ms.start()
            node = Node(self.settings(home))
            st = node.sync()
            ms.stop()
            node.close()
            assert st.to_index == expected and st.errors == 0, st.as_dict()
            stats_d = st.as_dict()
            if not last:
                shutil.rmtree(home)
        self.imported = True
        self.r.add("import", "a. initial import", self.n, ms.med, bare.med, "s", 1.5, **ms.details(),
                   **bare.details("baseline_"),
                   pass_stats={k: stats_d.get(k) for k in ("scanned", "read", "reconciled", "to_index",
                                                           "cache_written")})

        def again() -> None:
            home = self.base / "import-prof"
            node = Node(self.settings(home))
            node.sync()
            node.close()
            shutil.rmtree(home)
        self.profile("import", again)

    # f. first import of the foreign data set (R10: taken as written) ---------------------

    def bench_foreign(self) -> None:
        share = self.base / "share-foreign"
        say(f"size {self.n}: building the foreign data set ({self.n} hand-made memory files)")
        info = dataset.build_foreign_share(share, self.n)
        say(f"size {self.n}: built in {info['seconds']} s, {info['avg_file_bytes']} bytes per memory file")
        folder = share / "memory" / "mesh"
        before = dataset.file_stats(folder)
        reps = self.reps(3, 1)
        ms, bare, stats_d = Clock(), Clock(), {}
        for r in range(reps):
            db = self.base / f"bare-foreign-{r}.sqlite"
            bare.start()
            rows = baselines.import_foreign(share, db)
            bare.stop()
            assert rows == self.n, (rows, self.n)
            for f in self.base.glob(f"bare-foreign-{r}.sqlite*"):
                f.unlink()
            home = self.base / f"foreign-{r}"
            ms.start()
            node = Node(self.settings(home, share=share))
            st = node.sync()
            ms.stop()
            node.close()
            assert st.to_index == self.n and st.errors == 0, st.as_dict()
            stats_d = st.as_dict()
            shutil.rmtree(home)
        after = dataset.file_stats(folder)
        rewritten = sum(1 for name, sig in before.items() if after.get(name) != sig)
        # R10: the files are taken as written; a first import of them writes nothing.
        assert stats_d["to_share"] == 0 and rewritten == 0 and len(after) == len(before), (stats_d, rewritten)
        self.r.add("foreign", "f. first import, foreign data set", self.n, ms.med, bare.med, "s", 1.5,
                   **ms.details(), **bare.details("baseline_"), share_writes=stats_d["to_share"],
                   files_rewritten=rewritten, dataset=info,
                   pass_stats={k: stats_d.get(k) for k in ("scanned", "read", "reconciled", "to_index",
                                                           "to_share", "cache_written")})

    # b. no-change pass ------------------------------------------------------------------

    def bench_noop(self) -> None:
        self.ensure_imported()
        node = Node(self.settings(self.a_home))
        reps = self.reps(5, 3)
        ms, bare = Clock(), Clock()
        st = None
        nfiles = 0
        for _ in range(max(reps, 3)):
            bare.start()
            nfiles = baselines.walk_share(self.share)
            bare.stop()
            ms.start()
            st = node.sync()
            ms.stop()
            assert st.read == 0 and st.to_index == 0 and st.to_share == 0, st.as_dict()
        self.r.add("noop", "b. no-change pass", self.n, ms.med, bare.med, "s", 1.5, **ms.details(),
                   **bare.details("baseline_"), files_walked=nfiles, scanned=st.scanned if st else None)
        self.profile("noop", node.sync)
        # The daemon's targeted pass over unchanged items (what an events-mode daemon runs for
        # each batch of watchdog events) vs lstat + read + orjson.loads of the same files.
        m = min(self.n, 10_000)
        items = {layout.memory_id("mesh", key_of(i)) for i in range(m)}
        paths = [str(self.share / layout.item_path(it, "bench-a")) for it in items]
        ms, bare = Clock(), Clock()
        for _ in range(self.reps(2, 1)):
            bare.start()
            for path in paths:
                os.lstat(path)
                with open(path, "rb") as f:
                    orjson.loads(f.read())
            bare.stop()
            ms.start()
            st = node.sync(items)
            ms.stop()
            assert st.to_index == 0 and st.to_share == 0, st.as_dict()
        self.r.add("noop", f"b. targeted pass, {f'{m // 1000}k' if m >= 1000 else m} unchanged items", self.n, ms.med, bare.med, "s",
                   None, **ms.details(), **bare.details("baseline_"), items=m)
        self.profile("targeted", lambda: node.sync(items))
        node.close()

    # d. cache rewrite -------------------------------------------------------------------

    def bench_cache(self) -> None:
        """d. What a pass costs to refresh mesh-memory.json after one row changed (the
        daemon's case: the slices of changed rows rendered, the rest copied from the
        previous file), and the full rendering of every row (first pass, full passes,
        after a tool edited the file), each next to the bare dump of the same object."""
        self.ensure_imported()
        node = Node(self.settings(self.a_home))
        db = sqlite3.connect(node.s.index, isolation_level=None)
        plain = {f"{s}:{k}": {"value": orjson.loads(v), "nodeId": nd, "ts": ts}
                 for s, k, v, nd, ts in db.execute("SELECT scope, key, value, node_id, updated_at FROM mesh_memory")}
        bare_path = self.base / "bare-cache.json"
        reps = self.reps(5, 3)
        full, patched, bare = Clock(), Clock(), Clock()
        nbytes = 0
        for _ in range(reps):
            bare.start()
            nbytes = baselines.write_cache(plain, bare_path)
            bare.stop()
            full.start()
            node.write_cache_memory()  # every row -> mesh-memory.json
            full.stop()
        changed: set[str] = set()
        for r in range(max(reps, 5)):
            # One row changed by another program, as the pass that saw it in the outbox leaves it.
            key = key_of((r * 7919) % self.n)
            changed.add(key)
            db.execute("UPDATE mesh_memory SET value = ?, updated_at = updated_at + 1 WHERE scope = 'mesh' AND key = ?",
                       (orjson.dumps({"changed": r}).decode(), key))
            node.cache_dirty.add(layout.memory_id("mesh", key))
            patched.start()
            node.write_cache_memory(patch=True)
            patched.stop()
            assert node.cache_patched
        db.close()
        with node.index.write() as wdb:  # as engine/commit.py does: the next pass must not rewrite it again
            node.index.set_meta(wdb, cache_sig=node.cache.memory_sig() or "")
        size = node.cache.memory_path.stat().st_size
        self.r.add("cache", "d. cache rewrite after a change", self.n, patched.med, bare.med, "s", 1.5,
                   **patched.details(), **bare.details("baseline_"), entries=len(plain), cache_bytes=size,
                   baseline_bytes=nbytes)
        self.r.add("cache", "d. cache rendered whole (full pass)", self.n, full.med, bare.med, "s", None,
                   **full.details(), **bare.details("baseline_"), entries=len(plain))
        self.profile("cache", node.write_cache_memory)
        with node.index.write() as wdb:
            node.index.set_meta(wdb, cache_sig=node.cache.memory_sig() or "")
        # The changed rows are still in the outbox: export them now (not measured), or the
        # next benchmark's pass writes them too (with --only cache,export, the export pass
        # wrote 10005 files instead of 10000; in a full run the latency daemons flushed them).
        st = node.sync()
        assert st.to_share == len(changed) and st.errors == 0, st.as_dict()
        node.close()
        bare_path.unlink()

    # e. daemon latency ------------------------------------------------------------------

    def bench_latency(self) -> None:
        self.ensure_imported()
        self.rng = random.Random(self.n)
        self.nonce = os.urandom(3).hex()
        self._events_latency(MESHSYNC, "")
        self._nas_latency()

    @property
    def samples(self) -> int:
        return self.o.samples or (10 if self.o.quick else 30)

    def _sample(self, one: Callable[[int], tuple], gap: Callable[[], float],
                what: str) -> tuple[list[float], int]:
        """Run ``one(i)`` for every sample: it makes change i and returns its start time,
        the condition that shows it arrived and, optionally, a function giving the time
        it arrived when that is earlier than the time the condition was seen to hold.  A
        sample that does not arrive within --sample-timeout counts as that timeout; after
        3 timeouts the path stops, and after --path-budget seconds it stops once it has 10
        samples."""
        lat: list[float] = []
        timeouts = 0
        t_end = time.monotonic() + self.o.path_budget
        for i in range(self.samples):
            if time.monotonic() > t_end and i >= 10:
                say(f"{what}: time budget ({self.o.path_budget:g} s) used up after {i} samples")
                break
            t0, cond, *arrived = one(i)
            try:
                t = wait_until(cond, self.o.sample_timeout, what)
                lat.append((arrived[0]() if arrived else t) - t0)
            except TimeoutError:
                timeouts += 1
                lat.append(self.o.sample_timeout)
                say(f"{what}: sample {i} did not arrive within {self.o.sample_timeout:g} s")
                if timeouts >= 3:
                    say(f"{what}: 3 timeouts, path stopped after {i + 1} samples")
                    break
            time.sleep(gap())
        return lat, timeouts

    def _events_latency(self, launcher: list[str], tag: str) -> None:
        """e1 hand edit -> other node's cache and e2 foreign SQLite write -> share file, two
        events-mode daemons on the real share; then their CPU while nothing changes."""
        env = {"MESHSYNC_WATCH__MODE": "events", "MESHSYNC_WATCH__DEBOUNCE": str(self.o.debounce)}
        a = NodeProc("bench-a", self.share, self.a_home, dict(env), launcher)
        b = NodeProc("bench-b", self.share, self.b_home, dict(env), launcher)
        ready_timeout = 120 + self.n * 0.01
        deb = self.o.debounce
        nonce = self.nonce + tag.strip(" []").replace(" ", "")

        def gap() -> float:
            return self.o.gap + self.rng.uniform(0, self.o.gap)
        try:
            a.start()
            a_ready = a.wait_ready(ready_timeout)
            b.start()
            b_ready = b.wait_ready(ready_timeout)  # B's first run imports all N items
            say(f"events daemons{tag} ready: A {a_ready:.1f} s {a.first_pass}, B {b_ready:.1f} s {b.first_pass}")
            window = self.o.events_idle_window or (5 if self.o.quick else 10)
            cpu, bcpu, det = self._idle_cpu([a, b], window, settle=1.0)
            self.r.add("idle", f"f. CPU after start-up, events mode, per daemon{tag}", self.n, cpu, bcpu,
                       "%", None, **det)
            watch_b = ChangedFile(b.cache_file)

            def hand(i: int) -> tuple[float, Callable[[], bool], Callable[[], float]]:
                k = (i * 7919 + 11) % self.n
                path = self.share / layout.item_path(layout.memory_id("mesh", key_of(k)), "bench-a")
                tok = f"hand-{nonce}-{i}".encode()
                data = orjson.dumps({"value": {"hand": i, "tok": tok.decode()}})
                t0 = time.perf_counter()
                with open(path, "wb") as f:  # a hand edit, in place, as `echo > file` does
                    f.write(data)
                # Arrived when the rename put the new cache in place (first seen by a
                # stat), not when this process had read all of it back.
                return t0, lambda: watch_b.contains(tok), lambda: watch_b.seen_at
            lat, to = self._sample(hand, gap, f"hand edit{tag}")
            self._latency_rows(f"hand edit -> other node's cache{tag}", "events", lat, to, deb, deb,
                               a_first_pass_s=a_ready, b_first_pass_s=b_ready, a_first_pass=a.first_pass,
                               b_first_pass=b.first_pass)
            db = sqlite3.connect(a.index, isolation_level=None, timeout=30)

            def sql(i: int) -> tuple[float, Callable[[], bool]]:
                key = f"lat.sql.{nonce}.{i:03d}"
                tok = f"sql-{nonce}-{i}".encode()
                f = ChangedFile(self.share / layout.item_path(layout.memory_id("mesh", key), "bench-a"))
                t0 = time.perf_counter()
                db.execute("INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) VALUES (?,?,?,?,?)"
                           " ON CONFLICT(scope, key) DO UPDATE SET value = excluded.value,"
                           " node_id = excluded.node_id, updated_at = excluded.updated_at",
                           ("mesh", key, orjson.dumps({"sql": i, "tok": tok.decode()}).decode(), "bench-tool",
                            int(time.time())))
                return t0, lambda: f.contains(tok)
            lat, to = self._sample(sql, gap, f"SQLite write{tag}")
            db.close()
            self._latency_rows(f"SQLite write -> share file{tag}", "events", lat, to, deb + TICK / 2, deb + TICK)
            cpu, bcpu, det = self._idle_cpu([a, b], window, settle=2.0)
            self.r.add("idle", f"f. CPU after the samples, events mode, per daemon{tag}", self.n, cpu, bcpu,
                       "%", None, **det)
        finally:  # a daemon finishes its pass in flight on SIGTERM; after 30 s it is killed (R7)
            a.stop(30)
            b.stop(30)

    def _nas_latency(self) -> None:
        """e3: two bindfs mounts of the share, poll mode: CLI put on A -> B's index row."""
        pi = self.o.poll_interval
        deb = self.o.debounce
        env = {"MESHSYNC_WATCH__MODE": "poll", "MESHSYNC_WATCH__POLL_INTERVAL": str(pi),
               "MESHSYNC_WATCH__DEBOUNCE": str(deb)}
        with BindMounts(self.share, [self.base / "mnt-a", self.base / "mnt-b"]) as m:
            a = NodeProc("bench-a", m.mounts[0], self.a_home, dict(env))
            b = NodeProc("bench-b", m.mounts[1], self.b_home, dict(env))
            try:
                a.start()
                b.start()
                a_ready = a.wait_ready(120 + self.n * 0.01)
                b_ready = b.wait_ready(120 + self.n * 0.01)
                say(f"NAS daemons ready: A {a_ready:.1f} s {a.first_pass}, B {b_ready:.1f} s {b.first_pass}")
                time.sleep(1.0)
                db = sqlite3.connect(b.index, isolation_level=None, timeout=30)
                q = "SELECT value FROM mesh_memory WHERE scope = 'mesh' AND key = ?"
                cli: list[float] = []

                def put(i: int) -> tuple[float, Callable[[], bool]]:
                    key = f"lat.nas.{self.nonce}.{i:03d}"
                    tok = f"nas-{self.nonce}-{i}"
                    t0 = time.perf_counter()
                    a.cli("put", "mesh", key, orjson.dumps({"nas": i, "tok": tok}).decode())
                    tc = time.perf_counter()  # committed: the CLI's start-up is not the daemons' latency
                    cli.append(tc - t0)

                    def has() -> bool:
                        r = db.execute(q, (key,)).fetchone()
                        return r is not None and tok in r[0]
                    return tc, has
                lat, to = self._sample(put, lambda: 0.1 + self.rng.uniform(0, pi), "NAS put")
                db.close()
                self._latency_rows(f"NAS put (poll {pi:g} s) -> other node's index", "poll", lat, to,
                                   2 * deb + TICK / 2 + pi / 2, 2 * deb + TICK + 0.99 * pi,
                                   cli_seconds_median=med(cli), a_first_pass_s=a_ready, b_first_pass_s=b_ready,
                                   a_first_pass=a.first_pass, b_first_pass=b.first_pass)
            finally:
                a.stop()
                b.stop()

    def _latency_rows(self, what: str, mode: str, lat: list[float], timeouts: int, design50: float,
                      design99: float, **details: Any) -> None:
        """Latency rows; their baseline is the wait the design imposes (debounce, the 50 ms
        index tick, the poll interval), not a measurement.  With timeouts, the figures are
        lower bounds."""
        lb = timeouts > 0
        self.r.add("latency", f"e. {what} p50", self.n, percentile(lat, 50), design50, "s", None, "design",
                   lower_bound=lb, mode=mode, samples=lat, timeouts=timeouts, **details)
        self.r.add("latency", f"e. {what} p99", self.n, percentile(lat, 99), design99, "s", None, "design",
                   lower_bound=lb, mode=mode, max=max(lat), timeouts=timeouts)

    def _idle_cpu(self, procs: list[NodeProc], window: float, settle: float) -> tuple[float, float, dict]:
        """Mean CPU (% of one core) of procs over window, and that of a bare loop with the
        daemon's wake-ups (50 ms index check, journal scan every 2 s) run alongside."""
        bare = subprocess.Popen([sys.executable, "-c", baselines.IDLE_LOOP, str(self.share),
                                 str(procs[0].index), "2.0"], env=procs[0].env(), cwd=self.base)
        try:
            time.sleep(settle)
            c0 = [p.cpu_seconds() for p in procs]
            b0, t0 = proc_cpu_seconds(bare.pid), time.monotonic()
            time.sleep(window)
            c1 = [p.cpu_seconds() for p in procs]
            b1, t1 = proc_cpu_seconds(bare.pid), time.monotonic()
            bhwm = proc_status_kb(bare.pid, "VmHWM") / 1024
        finally:
            bare.terminate()
            bare.wait()
        dt = t1 - t0
        per = [(y - x) / dt * 100 for x, y in zip(c0, c1, strict=True)]
        return (statistics.fmean(per), (b1 - b0) / dt * 100,
                {"window_s": round(dt, 1), "per_daemon": per, "baseline_hwm_mib": bhwm})

    # f. idle CPU and memory -----------------------------------------------------------------

    def bench_idle(self) -> None:
        self.ensure_imported()
        window = self.o.idle_window or (15 if self.o.quick else 60)
        a = NodeProc("bench-a", self.share, self.a_home, {"MESHSYNC_WATCH__MODE": "poll"})
        try:
            a.start()
            ready = a.wait_ready(120 + self.n * 0.01)
            cpu, bcpu, det = self._idle_cpu([a], window, settle=3.0)
            assert a.proc is not None
            hwm = proc_status_kb(a.proc.pid, "VmHWM") / 1024
            rss = proc_status_kb(a.proc.pid, "VmRSS") / 1024
        finally:
            a.stop()
        self.r.add("idle", "f. idle CPU (poll mode, % of a core)", self.n, cpu, bcpu, "%", None,
                   first_pass_s=ready, first_pass=a.first_pass, **det)
        self.r.add("idle", "f. peak RSS (VmHWM)", self.n, hwm, det["baseline_hwm_mib"], "MiB", None,
                   rss_end_mib=rss)

    # c. export ---------------------------------------------------------------------------

    def bench_export(self) -> None:
        self.ensure_imported()
        node = Node(self.settings(self.a_home))
        reps = self.reps(1, 1)  # 10k fsyncs take 30-70 s on this disk: one meshsync run, two bare
        # --export-targeted adds the targeted pass (the daemon's path for outbox items); it
        # measures the same writes (ratio 1.64 vs 1.65 for the full pass at 100k).
        # The bare files are removed only at the end: ext4 is slower to allocate inodes
        # just after many were freed (find_inode_bit skips recently deleted ones), and
        # removing the first turn's files right before meshsync's pass charged that to
        # meshsync alone (ratio 3.8 at 100k; 1.8 without).
        done: list[Path] = []
        for mode in ("full", "targeted") if self.o.export_targeted else ("full",):
            ms, bare = Clock(), Clock()
            st = None
            mesh_dir = self.share / layout.MEMORY / "mesh"
            for r in range(reps):
                keys = [f"export.{mode}.{r}.{i:05d}" for i in range(EXPORT_N)]
                # The bare loop writes the same bytes into the same folder (a folder of N
                # files costs more per create and rename than an empty one), under dot
                # names meshsync ignores; once before and once after meshsync, because one
                # fsync-bound run can take twice as long as the next on this disk.
                for turn in range(2):
                    if turn == 1:
                        self._foreign_insert(keys)
                        ms.start()
                        st = node.sync() if mode == "full" else node.sync(set())
                        ms.stop()
                        assert st.to_share == EXPORT_N, st.as_dict()
                    files = [(f".bare-{mode}-{r}-{turn}-{i:05d}.json", _export_bytes(k, i))
                             for i, k in enumerate(keys)]
                    bare.start()
                    baselines.write_files(mesh_dir, files)
                    bare.stop()
                    done += [mesh_dir / name for name, _ in files]
            if mode == "full":
                self.r.add("export", "c. export 10k (full pass)", self.n, ms.med, bare.med, "s", 2.0,
                           **ms.details(), **bare.details("baseline_"), items=self.n + self.o.skills,
                           pass_stats=_pass(st))
            else:
                self.r.add("export", "c. export 10k (targeted pass, daemon path)", self.n, ms.med, bare.med,
                           "s", None, **ms.details(), **bare.details("baseline_"), pass_stats=_pass(st))

        def again() -> None:
            self._foreign_insert([f"export.prof.{i:05d}" for i in range(EXPORT_N)])
            node.sync()
        self.profile("export", again)
        node.close()
        for path in done:
            os.unlink(path)

    def _foreign_insert(self, keys: list[str]) -> None:
        """One executemany INSERT through a separate sqlite3 connection (a foreign client)."""
        now = int(time.time())
        rows = [("mesh", k, orjson.dumps(value_of(i)).decode(), "bench-tool", now) for i, k in enumerate(keys)]
        db = sqlite3.connect(self.a_home / "index.sqlite", isolation_level=None, timeout=30)
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) VALUES (?,?,?,?,?)"
                           " ON CONFLICT(scope, key) DO UPDATE SET value = excluded.value,"
                           " node_id = excluded.node_id, updated_at = excluded.updated_at", rows)
            db.execute("COMMIT")
        finally:
            db.close()


def _export_bytes(key: str, i: int) -> bytes:
    """The share file meshsync writes for the foreign row of key (same value, same size)."""
    value = value_of(i)
    return formats.render_memory(layout.memory_id("mesh", key), value,
                                 formats.digest_bytes(formats.canonical(value)), int(time.time()) * 1000, "bench-tool")


def _pass(st: Any) -> dict | None:
    """The figures of a meshsync pass worth keeping next to its time."""
    if st is None:
        return None
    d = st.as_dict()
    return {k: d.get(k) for k in ("seconds", "scanned", "read", "reconciled", "to_share", "to_index",
                                  "cache_written")}


# --- machine, output ----------------------------------------------------------------------------


def machine(tmp: Path) -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem = f.readline().split(":", 1)[1].strip()
    fs = {}
    real = os.path.realpath(tmp)
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
        best = ""
        for line in f:
            parts = line.split()
            sep = parts.index("-")
            mnt = parts[4]
            if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best = mnt
                fs = {"mount": mnt, "type": parts[sep + 1], "source": parts[sep + 2], "options": parts[5]}

    def git(*a: str) -> str:
        p = subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True)
        return p.stdout.strip()
    src = {"meshsync_src": str(SRC), "commit": git("rev-parse", "--short", "HEAD"),
           "meshsync_dirty": bool(git("status", "--porcelain", "--", "meshsync"))}
    if SRC != REPO:  # a snapshot: its SNAPSHOT file names the commit it was taken from
        snap = SRC / "SNAPSHOT"
        src = {"meshsync_src": str(SRC), "commit": snap.read_text().strip() if snap.exists() else "?",
               "meshsync_dirty": False}
    return src | {"nproc": len(os.sched_getaffinity(0)), "cpu_model": model, "mem_total": mem,
            "tmp": str(tmp), "tmp_fs": fs, "kernel": platform.release(), "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version, "orjson": orjson.__version__, "watchdog": _version("watchdog")}


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("matplotlib is not installed (pip install matplotlib): no plot")
        return
    if not any(r["bench"] in ("latency", "idle") for r in rows):
        say("no plot: it shows the latency and idle benchmarks, and this run had neither")
        return
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.8))

    def series(label: str, key: str = "value") -> tuple[list, list]:
        pts = sorted((r["size"], r[key]) for r in rows if r["label"] == label and r[key] is not None)
        return [p[0] for p in pts], [p[1] for p in pts]

    ax = axes[0]
    # "[watch fix]" rows (an earlier run's monkeypatched daemons, now the same code) stay out
    rows = [r for r in rows if "[watch fix]" not in r["label"]]
    lat = [r for r in rows if r["bench"] == "latency"]
    paths = list(dict.fromkeys(r["label"][3:].rsplit(" ", 1)[0] for r in lat))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, path_ in enumerate(paths):
        for pct, style, marker in (("p50", "-", "o"), ("p99", "--", "v")):
            xs, ys = series(f"e. {path_} {pct}")
            ax.plot(xs, ys, linestyle=style, marker=marker, color=colors[i % len(colors)],
                    label=f"{path_} {pct}")
    ax.set(xscale="log", yscale="log", xlabel="memory items", ylabel="seconds (log)",
           title="daemon latency (p50 solid, p99 dashed)")
    ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1)
    ax = axes[1]
    cpu = [r for r in rows if r["unit"] == "%"]
    for i, label in enumerate(dict.fromkeys(r["label"] for r in cpu)):
        xs, ys = series(label)
        ax.plot(xs, ys, marker="o", color=colors[i % len(colors)], label=label[3:])
    xs, ys = series("f. idle CPU (poll mode, % of a core)", "baseline")
    ax.plot(xs, ys, marker="s", linestyle=":", color="black", label="bare loop with the same wake-ups")
    ax.set(xscale="log", yscale="log", xlabel="memory items", ylabel="% of one core (log)",
           title="daemon CPU while nothing changes")
    ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1)
    ax = axes[2]
    xs, ys = series("f. peak RSS (VmHWM)")
    ax.plot(xs, ys, marker="o", label="meshsync run (poll mode)")
    xs, ys = series("f. peak RSS (VmHWM)", "baseline")
    ax.plot(xs, ys, marker="s", linestyle=":", color="black", label="bare loop")
    ax.set(xscale="log", xlabel="memory items", ylabel="MiB", title="daemon peak RSS (VmHWM)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    say(f"plot written to {path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default=None, help="comma-separated item counts (default 10000,100000; --quick: 10000)")
    p.add_argument("--skills", type=int, default=200)
    p.add_argument("--quick", action="store_true", help="1 repeat, 10 latency samples, 15 s idle window")
    p.add_argument("--only", default=",".join(BENCHES), help="comma-separated subset of " + ", ".join(BENCHES))
    p.add_argument("--repeat", type=int, default=0, help="runs per in-process benchmark (default 3-5, 1 at >20k items)")
    p.add_argument("--samples", type=int, default=0, help="latency samples per path (default 30)")
    p.add_argument("--gap", type=float, default=0.3, help="pause between latency samples (s; plus a random part)")
    p.add_argument("--sample-timeout", type=float, default=30.0, help="a latency sample that takes longer counts as this")
    p.add_argument("--export-targeted", action="store_true", help="also time the export as a targeted pass")
    p.add_argument("--path-budget", type=float, default=180.0,
                   help="seconds per latency path; past it a path stops once it has 10 samples")
    p.add_argument("--events-idle-window", type=float, default=0,
                   help="CPU window of the events-mode daemons after start-up and after the samples (10 s)")
    p.add_argument("--idle-window", type=float, default=0, help="idle CPU window (default 60 s, --quick 15 s)")
    p.add_argument("--poll-interval", type=float, default=2.0, help="watch.poll_interval of the NAS daemons")
    p.add_argument("--debounce", type=float, default=config.WatchSettings.model_fields["debounce"].default,
                   help="the daemons' watch.debounce (default: meshsync's default)")
    p.add_argument("--src", metavar="DIR", help="import meshsync from DIR (e.g. a `git archive` snapshot with a "
                   "SNAPSHOT file holding its commit) instead of this checkout")
    p.add_argument("--tmp", default=tempfile.gettempdir(), help="where to build the data sets")
    p.add_argument("--keep", action="store_true", help="keep the data sets")
    p.add_argument("--profile", metavar="DIR", help="also run import/noop/cache/export once under pyinstrument")
    p.add_argument("--out", help="results JSON (default benchmarks/results.json for full runs)")
    p.add_argument("--plot", help="plot PNG (default docs/benchmarks.png for full runs)")
    p.add_argument("--report", metavar="JSON", help="only print the table of an earlier results.json "
                   "(and redraw its plot with --plot)")
    a = p.parse_args(argv)
    if a.report:
        rows = orjson.loads(Path(a.report).read_bytes())["results"]
        print(table(rows))
        if a.plot:
            plot(rows, Path(a.plot))
        return 0
    only = {x.strip() for x in a.only.split(",") if x.strip()}
    if only - set(BENCHES):
        p.error(f"unknown benchmark(s): {', '.join(sorted(only - set(BENCHES)))}")
    sizes = [int(x) for x in (a.sizes or ("10000" if a.quick else "10000,100000")).split(",")]
    partial = a.quick or only != set(BENCHES)
    out = Path(a.out) if a.out else (None if partial else REPO / "benchmarks" / "results.json")
    png = Path(a.plot) if a.plot else (None if partial else REPO / "docs" / "benchmarks.png")
    if "latency" in only and not (shutil.which("bindfs") and shutil.which("fusermount")):
        p.error("the latency benchmark needs bindfs and fusermount (apt-get install bindfs fuse3)")

    results = Results()
    root = Path(tempfile.mkdtemp(prefix="meshsync-bench-", dir=a.tmp))
    mach = machine(root)
    mach["loadavg_start"] = os.getloadavg()
    mach["imports"] = meshsync_paths(root)
    if len(set(mach["imports"].values())) != 1 or not mach["imports"]["daemons"].startswith(str(SRC)):
        p.error(f"meshsync is imported from different places: {mach['imports']} (expected {SRC})")
    say(f"data in {root}; {mach['nproc']} CPUs ({mach['cpu_model']}), {mach['tmp_fs'].get('type')} on "
        f"{mach['tmp_fs'].get('source')}")
    started = time.time()
    try:
        for n in sizes:
            SizeRun(root / f"n{n}", n, a, results).run(only)
    finally:  # results first (even after a failure), then the slow clean-up of the data sets
        print(table(results.rows))
        mach["loadavg_end"] = os.getloadavg()
        doc = {"command": " ".join(["python3 benchmarks/run.py"] + (argv if argv is not None else sys.argv[1:])),
               "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
               "seconds": round(time.time() - started), "machine": mach, "sizes": sizes, "skills": a.skills,
               "results": results.rows}
        if out and results.rows:
            out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
            say(f"results written to {out}")
        if png and results.rows:
            plot(results.rows, png)
        if a.keep:
            say(f"data kept in {root}")
        else:
            say("removing the data sets")
            shutil.rmtree(root, ignore_errors=True)
    missed = [r for r in results.rows if r["ok"] is False]
    if missed:
        say("targets missed: " + "; ".join(f"{r['label']} @ {r['size']} ({r['ratio']:.2f} > {r['target']:g})"
                                           for r in missed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
