"""The node's local OpenClaw cache in the Phase 1 layout (SPEC §4).

``mesh-memory.json`` is one JSON object, so it is rewritten whole, atomically, and only
when something in it changed (the daemon coalesces bursts before calling here).  Values
come from index rows that meshsync has validated, embedded as raw JSON text
(``orjson.Fragment``) so a rewrite never re-parses 100k values.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from . import layout

TMP_PREFIX = ".meshsync-tmp-"


def atomic_write(path: Path, data: bytes | Iterable[bytes], fsync: bool = True) -> os.stat_result:
    """Write by temp file and rename.  Returns the stat of what was written, taken
    before the rename: a tool writing the file right after us must not be taken for us."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{TMP_PREFIX}{path.name}-{os.getpid()}-{time.monotonic_ns()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        try:
            for piece in (data,) if isinstance(data, bytes) else data:
                view = memoryview(piece)
                while view:
                    view = view[os.write(fd, view):]
            if fsync:
                os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        return st
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def entry(value_text: str, node: str, updated_at: int) -> dict[str, Any]:
    return {"value": orjson.Fragment(value_text), "nodeId": node, "ts": updated_at}


def render_memory(entries: dict[str, dict[str, Any]]) -> bytes:
    """One entry per line, as the SQLite rendering in sync.py writes it (greppable,
    diffable, and JSON for every Phase 1 reader)."""
    if not entries:
        return b"{}\n"
    return b"{\n" + b",\n".join(orjson.dumps(k) + b":" + orjson.dumps(v) for k, v in entries.items()) + b"\n}\n"


class Cache:
    def __init__(self, home: Path, fsync: bool = True):
        self.home = Path(home)
        self.memory_path = self.home / "mesh-memory.json"
        self.skills_dir = self.home / "mesh" / "skills"
        self.fsync = fsync

    def memory_sig(self) -> str | None:
        try:
            st = os.stat(self.memory_path)
        except FileNotFoundError:
            return None
        return f"{st.st_mtime_ns}:{st.st_size}:{st.st_ino}"

    def read_memory(self) -> dict[str, Any]:
        """The current cache object, or {} when missing or unparsable."""
        try:
            obj = orjson.loads(self.memory_path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}
        return obj if isinstance(obj, dict) else {}

    def write_memory(self, entries: dict[str, dict[str, Any]] | bytes | Iterable[bytes]) -> str | None:
        """Replace mesh-memory.json (entries, or the rendered document, whole or in
        pieces); returns its new stat signature."""
        data = render_memory(entries) if isinstance(entries, dict) else entries
        st = atomic_write(self.memory_path, data, self.fsync)
        return f"{st.st_mtime_ns}:{st.st_size}:{st.st_ino}"

    def skill_path(self, name: str) -> Path:
        return self.skills_dir / layout.cache_skill_name(name)

    def sync_skills(self, live: dict[str, str], removed: Iterable[str]) -> int:
        """Make ``<name>.md`` hold each live skill's content; remove the deleted ones.
        Only files whose bytes differ are written.  Returns how many files changed."""
        changed = 0
        for name, content in live.items():
            p = self.skill_path(name)
            data = content.encode("utf-8", "surrogatepass")
            try:
                if p.read_bytes() == data:
                    continue
            except OSError:
                pass
            atomic_write(p, data, self.fsync)
            changed += 1
        for name in removed:
            try:
                self.skill_path(name).unlink()
                changed += 1
            except FileNotFoundError:
                pass
        return changed


# --- reading what Phase 1 tools wrote --------------------------------------------------------


@dataclass(slots=True)
class CacheEntry:
    """One ``scope:key`` entry of mesh-memory.json as a Phase 1 tool left it."""

    scope: str
    key: str
    value: Any
    text: bytes  # canonical JSON of value
    digest: str
    node: str | None
    ts: int | None  # seconds


class CacheUnreadable(Exception):
    """mesh-memory.json is mid-write or invalid: retry later, never read it as empty."""


def parse_memory(data: bytes) -> dict[str, CacheEntry]:
    """Parse mesh-memory.json into entries; raise CacheUnreadable for a file that is
    not (yet) one JSON object of entries."""
    from . import formats

    try:
        obj = formats.loads(data, 0)
    except formats.FormatError as exc:
        raise CacheUnreadable(f"mesh-memory.json is not valid JSON ({exc}); a tool may be writing it") from None
    if not isinstance(obj, dict):
        raise CacheUnreadable("mesh-memory.json is not a JSON object")
    out: dict[str, CacheEntry] = {}
    for ck, ent in obj.items():
        scope, sep, key = ck.partition(":")
        if scope == "user":  # user:<id>:<key>
            uid, sep2, key = key.partition(":")
            if not sep2:
                continue
            scope = f"user:{uid}"
        if not sep or not isinstance(ent, dict) or "value" not in ent:
            continue
        ts = ent.get("ts")
        node = ent.get("nodeId")
        text = formats.canonical(ent["value"])
        out[ck] = CacheEntry(scope, key, ent["value"], text, formats.digest_bytes(text),
                             node if isinstance(node, str) and node else None,
                             int(ts) if type(ts) in (int, float) and 0 <= ts < 253_402_300_800 else None)
    return out
