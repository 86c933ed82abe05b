"""Random operations on three in-process nodes, then convergence and quiet checks.

Not collected by pytest (an exploratory tool, in-process for speed: about a second per
seed).  Run it from the repository root:

    python3 tests/fuzz_sync.py [FIRST_SEED [COUNT]]

Each seed applies a random mix of writes through every entry point (foreign SQL upserts
and deletes, clock-skewed stamps, hand edits, hand-made and broken share files, restored
old files, skill rows, skill folder edits and removals, Phase 1 cache edits) and full or
targeted passes; then it repairs broken files, runs three rounds of full passes and
checks that every index and cache equals the share (R1) and that one more pass writes
nothing (R8).  A failing seed prints its operation log.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from meshsync import config, layout  # noqa: E402
from meshsync.engine.node import Node  # noqa: E402
from meshsync.replicas.share.store import Share  # noqa: E402

UPSERT = ("INSERT INTO mesh_memory(scope,key,value,node_id,updated_at) VALUES(?,?,?,?,?) "
          "ON CONFLICT(scope,key) DO UPDATE SET value=excluded.value, node_id=excluded.node_id, "
          "updated_at=excluded.updated_at")
SKILL_UPSERT = ("INSERT INTO mesh_skills(name,source_node,content,updated_at) VALUES(?,?,?,?) "
                "ON CONFLICT(name) DO UPDATE SET content=excluded.content, source_node=excluded.source_node, "
                "updated_at=excluded.updated_at")
OPS = ["put", "put", "skew", "del", "edit", "rmfile", "bad", "newfile", "restore", "skillput", "skillrow",
       "skilledit", "skillrm", "rmjson", "cacheput", "cachedel", "cacheskill",
       "sync", "sync", "sync", "tsync", "tsync"]
KEYS = ["k1", "k2", "k3"]


def run(seed: int, steps: int = 60) -> bool:
    rnd = random.Random(seed)
    root = Path(tempfile.mkdtemp())
    share = root / "share"
    share.mkdir()
    Share(share, max_file_bytes=10**7).initialise()
    nodes = {n: Node(config.load(None, node_id=n, share=share, index=root / f"{n}.sqlite",
                                 openclaw_home=root / f"oc-{n}", share_files={"fsync": False}))
             for n in ("A", "B", "C")}
    now = int(time.time())
    log: list[tuple] = []
    backups: dict[str, bytes] = {}
    for i in range(steps):
        op, n, k = rnd.choice(OPS), rnd.choice(list(nodes)), rnd.choice(KEYS)
        node, f = nodes[n], share / "memory" / "mesh" / f"{k}.json"
        sk = "sk" + k[-1]
        d, cache = share / "skills" / sk, root / f"oc-{n}"
        if op in ("put", "skew"):
            ts = now + (rnd.randint(-5, 5) if op == "put" else rnd.randint(-400, 400))
            node.index.db.execute(UPSERT, ("mesh", k, json.dumps(f"{n}{i}"), n, ts))
        elif op == "del":
            node.index.db.execute("DELETE FROM mesh_memory WHERE scope='mesh' AND key=?", (k,))
        elif op == "edit" and f.exists():
            try:
                doc = json.loads(f.read_text())
            except ValueError:
                doc = {}
            doc["value"] = f"hand{i}"
            f.write_text(json.dumps(doc))
        elif op == "rmfile" and f.exists():
            f.unlink()
        elif op == "bad":
            f.write_text('{"value": broken')
        elif op == "newfile":
            f.write_text(json.dumps({"value": f"new{i}"}))
        elif op == "restore":
            if k in backups:
                f.write_bytes(backups[k])
            elif f.exists():
                backups[k] = f.read_bytes()
        elif op == "skillput":
            node.index.db.execute(SKILL_UPSERT, (sk, n, f"# {n}{i}\n", now + rnd.randint(-5, 5)))
        elif op == "skillrow":
            node.index.db.execute("DELETE FROM mesh_skills WHERE name=?", (sk,))
        elif op == "skilledit" and d.exists():
            (d / "scripts").mkdir(exist_ok=True)
            (d / "scripts" / "x.sh").write_text(f"echo {i}\n")
            if rnd.random() < 0.5:
                (d / "SKILL.md").write_text(f"# hand {i}\n")
        elif op == "skillrm" and d.exists():
            shutil.rmtree(d)
        elif op == "rmjson" and (d / "skill.json").exists():
            (d / "skill.json").unlink()
        elif op in ("cacheput", "cachedel") and (cache / "mesh-memory.json").exists():
            c = json.loads((cache / "mesh-memory.json").read_text())
            if op == "cacheput":
                c[f"mesh:{k}"] = {"value": f"cache{n}{i}", "nodeId": n, "ts": now + rnd.randint(-5, 5)}
            else:
                c.pop(f"mesh:{k}", None)
            (cache / "mesh-memory.json").write_text(json.dumps(c))
        elif op == "cacheskill" and (cache / "mesh" / "skills").exists():
            (cache / "mesh" / "skills" / f"{sk}.md").write_text(f"# cache {n}{i}\n")
        elif op == "sync":
            node.sync()
        elif op == "tsync":
            node.sync([layout.memory_id("mesh", k) if rnd.random() < 0.6 else layout.skill_id(sk)])
        else:
            continue
        log.append((op, n, k, i))
    for k in KEYS:  # repair what is still broken, so that everything can converge
        f = share / "memory" / "mesh" / f"{k}.json"
        try:
            json.loads(f.read_text())
        except FileNotFoundError:
            pass
        except ValueError:
            f.write_text(json.dumps({"value": "fixed"}))
    for _ in range(3):
        for node in nodes.values():
            node.sync()
    ok = _converged(seed, root, nodes)
    if not ok:
        for entry in log:
            print("   ", entry)
    for node in nodes.values():
        node.close()
    shutil.rmtree(root)
    return ok


def _converged(seed: int, root: Path, nodes: dict[str, Node]) -> bool:
    share = root / "share"
    ok = True
    want = {}
    for k in KEYS:
        f = share / "memory" / "mesh" / f"{k}.json"
        want[k] = json.loads(f.read_text())["value"] if f.exists() else None
    skills = {d.name: (d / "SKILL.md").read_text() for d in (share / "skills").iterdir()}
    for nid, node in nodes.items():
        rows = {k: json.loads(v) for k, v in node.index.db.execute("SELECT key, value FROM mesh_memory")}
        cache = json.loads((root / f"oc-{nid}" / "mesh-memory.json").read_text())
        for k in KEYS:
            c = cache.get(f"mesh:{k}")
            if rows.get(k) != want[k] or (c["value"] if c else None) != want[k]:
                ok = False
                print(f"seed {seed}: {nid} has {k}={rows.get(k)!r} (cache {c!r}), the share {want[k]!r}")
        srows = dict(node.index.db.execute("SELECT name, content FROM mesh_skills"))
        cdir = root / f"oc-{nid}" / "mesh" / "skills"
        cskills = {p.name[:-3]: p.read_text() for p in cdir.glob("*.md")} if cdir.exists() else {}
        if srows != skills or cskills != skills:
            ok = False
            print(f"seed {seed}: {nid} skills {srows!r} (cache {cskills!r}), the share {skills!r}")
        st = node.sync()
        if st.to_share or st.to_index or st.cache_written:
            ok = False
            print(f"seed {seed}: {nid} is not quiet after convergence: {st}")
    return ok


def main(argv: list[str]) -> int:
    logging.disable(logging.CRITICAL)
    first = int(argv[1]) if len(argv) > 1 else 0
    count = int(argv[2]) if len(argv) > 2 else 50
    bad = [s for s in range(first, first + count) if not run(s)]
    print(f"{count - len(bad)}/{count} seeds converged" + (f"; failing seeds: {bad}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
