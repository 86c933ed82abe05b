"""Bare baselines: the least work a program must do for each benchmark, written the
obvious way in plain Python, run on the same data in the same run as meshsync.

They share no code with meshsync except the seed schema text (so the SQLite work is
the same: same tables, same indexes, the FTS5 table kept by triggers).
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import orjson
from dataset import REPO  # noqa: F401  (puts the repository on sys.path)

from meshsync.replicas.index.store import SEED_SCHEMA

# The same FTS maintenance as meshsync's index (meshsync.replicas.index.store.TRIGGERS), without the
# outbox triggers: a bare importer has no foreign writers to detect.
FTS_TRIGGERS = """
CREATE TRIGGER IF NOT EXISTS bench_fts_ai AFTER INSERT ON mesh_memory BEGIN
  INSERT INTO mesh_memory_fts (rowid, scope, key, content) VALUES (NEW.id, NEW.scope, NEW.key, NEW.value);
END;
CREATE TRIGGER IF NOT EXISTS bench_fts_au AFTER UPDATE ON mesh_memory BEGIN
  DELETE FROM mesh_memory_fts WHERE rowid = OLD.id;
  INSERT INTO mesh_memory_fts (rowid, scope, key, content) VALUES (NEW.id, NEW.scope, NEW.key, NEW.value);
END;
CREATE TRIGGER IF NOT EXISTS bench_fts_ad AFTER DELETE ON mesh_memory BEGIN
  DELETE FROM mesh_memory_fts WHERE rowid = OLD.id;
END;
"""

BATCH = 500


def open_db(path: Path) -> sqlite3.Connection:
    """A fresh database with meshsync's pragmas (WAL, synchronous=NORMAL) and the seed
    schema plus FTS triggers."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.executescript(SEED_SCHEMA + FTS_TRIGGERS)
    return db


def _insert_memory(share: Path, db: sqlite3.Connection, row_of) -> int:
    """os.scandir over memory/mesh, read, orjson.loads, ``row_of(entry, doc)``, INSERT,
    committing every BATCH rows.  Returns the number of rows."""
    n = 0
    rows: list[tuple] = []
    ins = "INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) VALUES (?,?,?,?,?)"

    def flush() -> None:
        db.execute("BEGIN")
        db.executemany(ins, rows)
        db.execute("COMMIT")
        rows.clear()

    with os.scandir(share / "memory" / "mesh") as it:
        for e in it:
            if not e.name.endswith(".json") or e.name.startswith("."):
                continue
            with open(e.path, "rb") as f:
                doc = orjson.loads(f.read())
            rows.append(row_of(e, doc))
            n += 1
            if len(rows) >= BATCH:
                flush()
    if rows:
        flush()
    return n


def import_share(share: Path, db_path: Path) -> int:
    """os.scandir over the share's memory and skill files, read, orjson.loads, INSERT,
    committing every 500 rows.  Returns the number of rows."""
    db = open_db(db_path)
    n = _insert_memory(share, db, lambda e, doc: (doc["scope"], doc["key"], orjson.dumps(doc["value"]).decode(),
                                                  doc["node_id"], doc["updated_at"]))
    skills = []
    with os.scandir(share / "skills") as it:
        for e in it:
            if not e.is_dir(follow_symlinks=False) or e.name.startswith("."):
                continue
            with open(os.path.join(e.path, "SKILL.md"), "rb") as f:
                content = f.read().decode()
            with open(os.path.join(e.path, "skill.json"), "rb") as f:
                meta = orjson.loads(f.read())
            skills.append((meta["name"], meta["source_node"], content, meta["updated_at"]))
    db.execute("BEGIN")
    db.executemany("INSERT INTO mesh_skills (name, source_node, content, updated_at) VALUES (?,?,?,?)", skills)
    db.execute("COMMIT")
    db.close()
    return n + len(skills)


def walk_share(share: Path) -> int:
    """os.scandir + entry.stat(follow_symlinks=False) over every file meshsync walks:
    memory/, skills/ and .meshsync/tombstones/.  Returns the number of files."""
    n = 0
    stack = [str(share / "memory"), str(share / "skills"), str(share / ".meshsync" / "tombstones")]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except FileNotFoundError:
            continue
        with it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                else:
                    e.stat(follow_symlinks=False)
                    n += 1
    return n


def atomic_write(path: str, data: bytes, fsync: bool = True) -> None:
    """tmp file in the same directory + write + fsync + rename."""
    tmp = f"{os.path.dirname(path)}/.tmp-{os.getpid()}-{time.monotonic_ns()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def write_files(directory: Path, files: list[tuple[str, bytes]]) -> int:
    """Write each (name, bytes) atomically into directory, one fsync per file."""
    d = str(directory)
    for name, data in files:
        atomic_write(f"{d}/{name}", data)
    return len(files)


def write_cache(entries: dict, path: Path) -> int:
    """A bare orjson.dumps of the cache dict + atomic write (fsync)."""
    data = orjson.dumps(entries)
    atomic_write(str(path), data)
    return len(data)


# The idle baseline: a bare process with the daemon's wake-ups and nothing else.
IDLE_LOOP = r"""
import os, sqlite3, sys, time
share, index, interval = sys.argv[1], sys.argv[2], float(sys.argv[3])
import orjson  # noqa: F401  (same libraries loaded as the daemon's hot path)
db = sqlite3.connect(index, isolation_level=None)
last = 0.0
while True:
    db.execute("PRAGMA data_version").fetchone()
    now = time.monotonic()
    if now - last >= interval:
        last = now
        os.stat(share)
        os.lstat(os.path.join(share, ".meshsync"))
        try:
            with os.scandir(os.path.join(share, ".meshsync", "journal")) as it:
                for e in it:
                    e.stat(follow_symlinks=False)
        except OSError:
            pass
    time.sleep(0.05)
"""


def import_foreign(share: Path, db_path: Path) -> int:
    """The bare loop for hand-made files: os.scandir, read, orjson.loads, the row derived
    from the file alone as meshsync derives it (key from the name when the file has none,
    node_id or "share", updated_at declared or the mtime), INSERT, committing every 500
    rows.  Returns the number of rows."""
    db = open_db(db_path)

    def row_of(e: os.DirEntry, doc: dict) -> tuple:
        stamp = max(doc["updated_at"] + 1 if "updated_at" in doc else 0, int(e.stat().st_mtime))
        return ("mesh", doc.get("key") or e.name[:-5], orjson.dumps(doc["value"]).decode(),
                doc.get("node_id") or "share", stamp)

    n = _insert_memory(share, db, row_of)
    db.close()
    return n
