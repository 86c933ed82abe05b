#!/usr/bin/env python3
"""A write on node A reaching node B's cache through Syncthing, beside Syncthing alone.

    python3 benchmarks/syncthing.py [--samples 50] [--items 1000] [--src DIR] [--out FILE]

Two real Syncthing 1.19 instances on loopback (tests/syncthing_helpers.py: watcher on with
its shortest delay, 1 s) share one folder; a real `meshsync run` daemon (events mode) runs
on each node's copy, with --items memory items already in the mesh.  Each sample is one of
two kinds, in random order with a random pause (0-1.5 s) before it, so that both kinds
meet Syncthing's watcher at every phase of its 1 s aggregation:

  meshsync  a foreign SQLite UPSERT into A's index, timed from its commit until B's
            mesh-memory.json holds the value (A's daemon exports the file, A's Syncthing
            sends it, B's Syncthing renames it into place, B's daemon imports it and
            rewrites B's cache);
  plain     a plain file renamed into A's folder (outside meshsync's layout), timed until
            B's copy of the folder holds it: Syncthing's own propagation, the floor.

Conditions are polled every 5 ms.  Prints p50/p99 of both and their ratio; --out writes
the figures as JSON.  See docs/benchmarks.md ("Through Syncthing").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for _k in [k for k in os.environ if k.startswith("MESHSYNC_")]:
    del os.environ[_k]  # the run must not depend on the caller's meshsync settings
for _i, _a in enumerate(sys.argv):  # --src must be known before meshsync is imported
    if _a == "--src" and _i + 1 < len(sys.argv):
        os.environ["BENCH_MESHSYNC_SRC"] = os.path.abspath(sys.argv[_i + 1])
    elif _a.startswith("--src="):
        os.environ["BENCH_MESHSYNC_SRC"] = os.path.abspath(_a[6:])

from daemons import ChangedFile, NodeProc, percentile, wait_until  # noqa: E402
from dataset import REPO, SRC  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))
from syncthing_helpers import WATCHER_DELAY_S, SyncthingMesh  # noqa: E402

UPSERT = ("INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) VALUES (?, ?, ?, ?, ?) "
          "ON CONFLICT(scope, key) DO UPDATE SET value = excluded.value, node_id = excluded.node_id, "
          "updated_at = excluded.updated_at")
PLAIN_DIR = "bench-plain"  # outside memory/ and skills/: meshsync does not look at it
TIMEOUT = 60.0
T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def foreign_write(index: Path, key: str, value: str) -> float:
    """An UPSERT by another SQLite client; returns the perf_counter time of its commit."""
    db = sqlite3.connect(index, timeout=30, isolation_level=None)
    try:
        db.execute(UPSERT, ("mesh", key, json.dumps(value), "bench", int(time.time())))
        return time.perf_counter()
    finally:
        db.close()


def plain_write(folder: Path, name: str, data: bytes) -> float:
    """A plain file written atomically (as an editor or meshsync does); returns the time of
    its rename."""
    tmp = folder / PLAIN_DIR / f".{name}.part"
    tmp.write_bytes(data)
    os.rename(tmp, folder / PLAIN_DIR / name)
    return time.perf_counter()


def file_has(path: Path, data: bytes) -> bool:
    try:
        return path.read_bytes() == data
    except FileNotFoundError:
        return False


def setup(root: Path, items: int) -> tuple[SyncthingMesh, NodeProc, NodeProc]:
    say("starting two Syncthing instances")
    stm = SyncthingMesh(root, ["a", "b"]).start()
    a = NodeProc("a", stm["a"].folder, root / "node-a")
    b = NodeProc("b", stm["b"].folder, root / "node-b")
    for n in (a, b):
        n.home.mkdir(parents=True)
    a.cli("init")
    wait_until(lambda: (stm["b"].folder / ".meshsync" / "README").exists(), TIMEOUT, "the marker on b", 0.05)
    b.cli("init")
    for n in (a, b):
        n.start()
    for n in (a, b):
        n.wait_ready(TIMEOUT)
    if items:
        say(f"{items} items into A's index, through Syncthing to B")
        db = sqlite3.connect(a.index, timeout=30, isolation_level=None)
        try:
            db.execute("BEGIN")
            db.executemany(UPSERT, [("mesh", f"item-{i:06d}", json.dumps({"i": i, "text": "x" * 200}), "bench",
                                     int(time.time())) for i in range(items)])
            db.execute("COMMIT")
        finally:
            db.close()
        last = ChangedFile(b.cache_file)
        wait_until(lambda: last.contains(f"item-{items - 1:06d}".encode()) or _cache_count(b) >= items,
                   300, "the items in B's cache", 0.2)
    (stm["a"].folder / PLAIN_DIR).mkdir()
    wait_until(lambda: (stm["b"].folder / PLAIN_DIR).is_dir(), TIMEOUT, "the plain folder on b", 0.05)
    stm.wait_in_sync(TIMEOUT)
    return stm, a, b


def _cache_count(n: NodeProc) -> int:
    try:
        return len(json.loads(n.cache_file.read_bytes()))
    except (FileNotFoundError, ValueError):
        return 0


def measure(stm: SyncthingMesh, a: NodeProc, b: NodeProc, samples: int, rng: random.Random) -> dict[str, list]:
    out: dict[str, list[float]] = {"meshsync": [], "plain": []}
    kinds = ["meshsync", "plain"] * samples
    rng.shuffle(kinds)
    cache = ChangedFile(b.cache_file)
    for i, kind in enumerate(kinds):
        time.sleep(rng.uniform(0, 1.5))  # a random phase against Syncthing's watcher
        token = f"v{i}-{rng.getrandbits(32):08x}"
        if kind == "meshsync":
            t0 = foreign_write(a.index, "bench.latency", token)
            t1 = wait_until(lambda t=token: cache.contains(t.encode()), TIMEOUT, "the write in B's cache")
            t1 = cache.seen_at
        else:
            data = token.encode()
            t0 = plain_write(stm["a"].folder, f"p{i % 5}.txt", data)
            t1 = wait_until(lambda p=stm["b"].folder / PLAIN_DIR / f"p{i % 5}.txt", d=data: file_has(p, d),
                            TIMEOUT, "the plain file on b")
        out[kind].append(t1 - t0)
        if (i + 1) % 20 == 0:
            say(f"{i + 1}/{len(kinds)} samples")
    return out


def problems(n: NodeProc) -> list:
    p = subprocess.run([sys.executable, "-m", "meshsync", "status", "--json"], env=n.env(),
                       capture_output=True, text=True, cwd=n.home)
    return json.loads(p.stdout).get("errors", ["status failed: " + p.stderr[-300:]])


def report(res: dict[str, list[float]]) -> dict:
    fig = {}
    for kind, xs in res.items():
        fig[kind] = {"n": len(xs), "p50_ms": round(percentile(xs, 50) * 1000, 1),
                     "p99_ms": round(percentile(xs, 99) * 1000, 1), "min_ms": round(min(xs) * 1000, 1),
                     "max_ms": round(max(xs) * 1000, 1)}
    m, p = fig["meshsync"], fig["plain"]
    fig["ratio"] = {"p50": round(m["p50_ms"] / p["p50_ms"], 2), "p99": round(m["p99_ms"] / p["p99_ms"], 2)}
    fig["meshsync_extra_ms"] = {"p50": round(m["p50_ms"] - p["p50_ms"], 1), "p99": round(m["p99_ms"] - p["p99_ms"], 1)}
    print(f"{'path':<44} {'n':>3} {'p50':>9} {'p99':>9} {'min':>9} {'max':>9}")
    for kind, label in (("meshsync", "SQLite write on A -> B's cache (meshsync)"),
                        ("plain", "plain file on A -> B's folder (Syncthing)")):
        f = fig[kind]
        print(f"{label:<44} {f['n']:>3} {f['p50_ms']:>7.0f}ms {f['p99_ms']:>7.0f}ms {f['min_ms']:>7.0f}ms "
              f"{f['max_ms']:>7.0f}ms")
    print(f"{'ratio meshsync / Syncthing alone':<44} {'':>3} {fig['ratio']['p50']:>9.2f} {fig['ratio']['p99']:>9.2f}")
    print(f"{'meshsync on top of Syncthing':<44} {'':>3} {fig['meshsync_extra_ms']['p50']:>7.0f}ms "
          f"{fig['meshsync_extra_ms']['p99']:>7.0f}ms")
    return fig


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=50, help="samples of each kind (default 50)")
    ap.add_argument("--items", type=int, default=1000, help="memory items in the mesh beforehand (default 1000)")
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--src", help="import meshsync from this folder (a snapshot) instead of the checkout")
    ap.add_argument("--out", type=Path, help="write the figures as JSON to this file")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="meshsync-bench-st-") as tmp:
        stm = a = b = None
        try:
            stm, a, b = setup(Path(tmp), args.items)
            say(f"measuring: {args.samples} samples of each kind")
            res = measure(stm, a, b, args.samples, rng)
            bad = problems(a) + problems(b)
            assert not bad, f"meshsync reported problems: {bad}"
        finally:
            for n in (a, b):
                if n is not None:
                    n.stop()
            if stm is not None:
                stm.stop()
    fig = report(res)
    fig.update({"samples": args.samples, "items": args.items, "watcher_delay_s": WATCHER_DELAY_S,
                "meshsync": fig["meshsync"], "src": str(SRC), "load": os.getloadavg(),
                "machine": f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs",
                "when": time.strftime("%Y-%m-%d %H:%M:%S")})
    if args.out:
        args.out.write_text(json.dumps(fig, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
