"""Benchmark data sets: a share holding N memory files and S skills, all written in
meshsync's canonical format (``formats.render_memory`` / ``render_skill_json`` with a
valid ``rev``), so meshsync trusts their stamps exactly as it trusts its own files.

Every file's mtime is set to an hour ago: share.py re-reads files modified in the last
3 s (the "racy file" rule), and the benchmarks measure the steady state, not that window.
Generation runs in two worker processes (file creation dominates; it is set-up, not
measured).
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Where meshsync is imported from (run.py --src): this checkout, or a snapshot of it so that
# edits in progress do not leak into a long run.  Daemons get the same path.
SRC = Path(os.environ.get("BENCH_MESHSYNC_SRC") or REPO).resolve()
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from meshsync import formats, layout  # noqa: E402
from meshsync.replicas.share.store import Share  # noqa: E402

GEN_NODE = "bench-gen"
AGE_S = 3600  # files are made to look an hour old
WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
         "november oscar papa quebec romeo sierra tango uniform victor whiskey xray").split()


def key_of(i: int) -> str:
    """The key of item i: mostly plain names (``note.000042``), one in ten with
    upper case and spaces so that the name encoding is exercised too."""
    if i % 10 == 7:
        return f"Project Notes {i:06d}"
    return f"note.{i:06d}"


def value_of(i: int) -> dict:
    """A ~250-byte JSON object, different for every item."""
    words = " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(24))
    return {"text": f"Note {i}: {words}", "n": i, "done": i % 3 == 0,
            "tags": [WORDS[i % len(WORDS)], WORDS[(i // 7) % len(WORDS)]], "score": (i % 1000) / 10}


def skill_name(j: int) -> str:
    return f"skill-{j:03d}"


def skill_content(j: int) -> bytes:
    body = "\n".join(f"- step {k}: " + " ".join(WORDS[(j + k + m) % len(WORDS)] for m in range(10))
                     for k in range(20))
    return f"# Skill {j}\n\nWhen to use: benchmark skill number {j}.\n\n{body}\n".encode()


def memory_bytes(i: int, stamp_ms: int, node: str = GEN_NODE) -> tuple[str, bytes]:
    """(share-relative path, file bytes) of item i in scope mesh."""
    key = key_of(i)
    item = layout.memory_id("mesh", key)
    value = value_of(i)
    digest = formats.digest_bytes(formats.canonical(value))
    return layout.item_path(item, node), formats.render_memory(item, value, digest, stamp_ms, node)


def _write(path: str, data: bytes, mtime_ns: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
        os.utime(fd, ns=(mtime_ns, mtime_ns))
    finally:
        os.close(fd)


def _write_memory_range(root: str, lo: int, hi: int, base_ms: int, mtime_ns: int) -> int:
    for i in range(lo, hi):
        rel, data = memory_bytes(i, base_ms + i)
        _write(f"{root}/{rel}", data, mtime_ns)
    return hi - lo


def build_share(share: Path, n: int, skills: int, workers: int = 2) -> dict:
    """Create an initialised share with n memory items (scope mesh) and ``skills``
    skills.  Returns a description (counts, seconds, bytes)."""
    t0 = time.perf_counter()
    share.mkdir(parents=True, exist_ok=True)
    Share(share, max_file_bytes=10 << 20).initialise()  # what `meshsync init` does to the share
    base_ms = int(time.time() * 1000) - 2 * 86_400_000  # items written two days ago
    mtime_ns = time.time_ns() - AGE_S * 1_000_000_000
    chunk = 5000
    ranges = [(lo, min(n, lo + chunk)) for lo in range(0, n, chunk)]
    if workers > 1 and n > chunk:
        with ProcessPoolExecutor(workers) as ex:
            list(ex.map(_write_memory_range, [str(share)] * len(ranges), [r[0] for r in ranges],
                        [r[1] for r in ranges], [base_ms] * len(ranges), [mtime_ns] * len(ranges)))
    else:
        for lo, hi in ranges:
            _write_memory_range(str(share), lo, hi, base_ms, mtime_ns)
    for j in range(skills):
        name = skill_name(j)
        item = layout.skill_id(name)
        content = skill_content(j)
        stamp = base_ms + j
        digest = formats.skill_digest(content, None, "")
        d = share / layout.item_path(item, GEN_NODE)
        d.mkdir(parents=True, exist_ok=True)
        _write(str(d / layout.SKILL_MD), content, mtime_ns)
        _write(str(d / layout.SKILL_JSON), formats.render_skill_json(item, None, digest, stamp, GEN_NODE),
               mtime_ns)
    # Check that meshsync will trust what we wrote (a canonical, rev-stamped file).
    rel, data = memory_bytes(0, base_ms)
    rec = formats.parse_memory((share / rel).read_bytes(), "mesh", key_of(0))
    if not rec.trusted:
        raise RuntimeError("generated memory files are not trusted by meshsync.formats.parse_memory")
    size = sum(e.stat(follow_symlinks=False).st_size for e in os.scandir(share / "memory" / "mesh"))
    return {"memory": n, "skills": skills, "seconds": round(time.perf_counter() - t0, 2),
            "memory_bytes": size, "avg_file_bytes": round(size / max(n, 1))}


def age_files(root: Path, seconds: float = AGE_S) -> int:
    """Set the mtime of every regular file below root (dot folders included) to
    ``seconds`` ago.  Returns the number of files touched."""
    t = time.time_ns() - int(seconds * 1e9)
    n = 0
    stack = [str(root)]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    os.utime(e.path, ns=(t, t), follow_symlinks=False)
                    n += 1
    return n


# --- the foreign data set: files as people and other programs write them (issue 16, R10) ---

FOREIGN_NODE_NAME = "laptop"


def foreign_bytes(i: int, declared_s: int) -> tuple[str, bytes]:
    """(share-relative path, file bytes) of hand-made item i: pretty-printed (4 spaces,
    as editors and json.dumps(indent=4) write), none of meshsync's own fields (no rev,
    no updated_at_ms); a third only ``value``, a third also scope/key, a third also
    node_id/updated_at."""
    import json

    key = f"hand.{i:06d}"
    doc: dict = {"value": value_of(i)}
    if i % 3 == 1:
        doc = {"scope": "mesh", "key": key, **doc}
    elif i % 3 == 2:
        doc = {**doc, "node_id": FOREIGN_NODE_NAME, "updated_at": declared_s + i}
    return f"memory/mesh/{key}.json", (json.dumps(doc, indent=4, ensure_ascii=False) + "\n").encode()


def _write_foreign_range(root: str, lo: int, hi: int, declared_s: int) -> int:
    for i in range(lo, hi):
        rel, data = foreign_bytes(i, declared_s)
        with open(f"{root}/{rel}", "wb") as f:  # a fresh mtime: written now, as a tool would
            f.write(data)
    return hi - lo


def build_foreign_share(share: Path, n: int, workers: int = 2) -> dict:
    """An initialised share with n hand-made memory files (foreign_bytes), fresh mtimes,
    no skills.  Returns a description (counts, seconds, bytes)."""
    t0 = time.perf_counter()
    share.mkdir(parents=True, exist_ok=True)
    Share(share, max_file_bytes=10 << 20).initialise()
    (share / "memory" / "mesh").mkdir(parents=True, exist_ok=True)
    declared_s = int(time.time()) - 2 * 86_400
    chunk = 5000
    ranges = [(lo, min(n, lo + chunk)) for lo in range(0, n, chunk)]
    if workers > 1 and n > chunk:
        with ProcessPoolExecutor(workers) as ex:
            list(ex.map(_write_foreign_range, [str(share)] * len(ranges), [r[0] for r in ranges],
                        [r[1] for r in ranges], [declared_s] * len(ranges)))
    else:
        for lo, hi in ranges:
            _write_foreign_range(str(share), lo, hi, declared_s)
    rel, data = foreign_bytes(0, declared_s)
    if formats.parse_memory((share / rel).read_bytes(), "mesh", "hand.000000").trusted:
        raise RuntimeError("a hand-made file must not look like meshsync's own")
    size = sum(e.stat(follow_symlinks=False).st_size for e in os.scandir(share / "memory" / "mesh"))
    return {"memory": n, "skills": 0, "seconds": round(time.perf_counter() - t0, 2),
            "memory_bytes": size, "avg_file_bytes": round(size / max(n, 1))}


def file_stats(directory: Path) -> dict[str, tuple[int, int, int]]:
    """name -> (mtime_ns, size, inode) of every file in ``directory``: a share write
    (meshsync renames a new file into place) changes the inode and the mtime."""
    out = {}
    with os.scandir(directory) as it:
        for e in it:
            st = e.stat(follow_symlinks=False)
            out[e.name] = (st.st_mtime_ns, st.st_size, st.st_ino)
    return out
