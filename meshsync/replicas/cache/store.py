"""The node's local OpenClaw cache in the Phase 1 layout (SPEC §4).

``mesh-memory.json`` is one JSON object, so it is rewritten whole, atomically, and only
when something in it changed (the daemon coalesces bursts before calling here).  Values
come from index rows that meshsync has validated, embedded as raw JSON text
(``orjson.Fragment``) so a rewrite never re-parses 100k values.

The document is written as *slices*: the entries of the rows whose ids fall in one block
of ``step`` ids, rendered together by SQLite.  A :class:`CacheLayout` remembers where each
slice landed in the file we wrote, so that after a few changes only their slices are
rendered again and the rest is copied from the previous file by the kernel
(``copy_file_range``): at 100k items rendering every row costs twice the write itself.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from meshsync import faults, formats, layout
from meshsync.model import Slice
from meshsync.payloads import CacheEntry

TMP_PREFIX = ".meshsync-tmp-"


@dataclass(frozen=True, slots=True)
class Span:
    """``length`` bytes at ``offset`` of the open file ``fd``: copied, not read into Python."""

    fd: int
    offset: int
    length: int


class SpanGone(OSError):
    """The file a Span copies from is shorter than when it was looked at."""


COPY_FILE_RANGE = getattr(os, "copy_file_range", None)  # Linux only; macOS copies through Python


def _copy_span(span: Span, out: int) -> None:
    off, left = span.offset, span.length
    copy_file_range = faults.wrap("cache.copy_file_range", COPY_FILE_RANGE)
    while left:
        n = -1
        if copy_file_range is not None:
            try:
                n = copy_file_range(span.fd, out, left, off)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
        if n < 0:
            data = os.pread(span.fd, min(left, 1 << 20), off)
            view = memoryview(data)
            while view:
                view = view[os.write(out, view):]
            n = len(data)
        if n == 0:
            raise SpanGone(errno.EIO, "the previous cache file changed while it was copied")
        off += n
        left -= n


def atomic_write(path: Path, data: bytes | Iterable[bytes | Span], fsync: bool = True) -> os.stat_result:
    """Write by temp file and rename.  Returns the stat of what was written, taken
    before the rename: a tool writing the file right after us must not be taken for us.
    Pieces may be Spans of another open file (copied in the kernel)."""
    return atomic_write_many([(path, data)], fsync)[0]


def atomic_write_many(files: list[tuple[Path, bytes | Iterable[bytes | Span]]],
                      fsync: bool = True) -> list[os.stat_result]:
    """atomic_write for several files: all are written, then all flushed, then all
    renamed.  Each file is still replaced whole or not at all, but a journal commit is
    not awaited between one file's flush and the next file's creation (200 skills took
    1-2 ms each one by one, behind the index's writes)."""
    temps: list[tuple[int, Path, Path]] = []  # (fd, temp, target)
    stats: list[os.stat_result] = []
    try:
        for path, data in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / f"{TMP_PREFIX}{path.name}-{os.getpid()}-{time.monotonic_ns()}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            temps.append((fd, tmp, path))
            for piece in (data,) if isinstance(data, bytes) else data:
                if isinstance(piece, Span):
                    _copy_span(piece, fd)
                    continue
                view = memoryview(piece)
                while view:
                    view = view[os.write(fd, view):]
        for fd, _, _ in temps:
            if fsync:
                os.fsync(fd)
            stats.append(os.fstat(fd))
        for i, (fd, tmp, path) in enumerate(temps):
            temps[i] = (-1, tmp, path)  # closed: never closed twice (the number may be reused)
            os.close(fd)
            os.replace(tmp, path)
        return stats
    except BaseException:
        for fd, tmp, _ in temps:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
            try:
                os.unlink(tmp)  # gone already for the files renamed
            except OSError:
                pass
        raise


def close_behind(fd: int) -> None:
    """Close ``fd`` on a thread of its own.  When it holds the last reference to a
    replaced cache file, close() frees the file's blocks: 30-65 ms for the 30 MB of a
    100k-item cache on ext4 (more with `discard`), which a pass need not wait for
    (close releases the GIL)."""
    threading.Thread(target=_close_quietly, args=(fd,), name="meshsync-close", daemon=True).start()


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def file_sig(st: os.stat_result) -> str:
    return f"{st.st_mtime_ns}:{st.st_size}:{st.st_ino}"


@dataclass(slots=True)
class CacheLayout:
    """Where each slice sits in the mesh-memory.json we wrote last (its signature)."""

    sig: str
    scopes: tuple[str, ...]
    step: int
    slices: dict[int, tuple[int, int, int, int]] = field(default_factory=dict)  # n -> rows, idsum, offset, length
    # The index's PRAGMA data_version read before the rendering's snapshot: while it
    # has not moved, no other connection has written a row since.
    data_version: int | None = None

    def spans(self, fd: int, fresh: dict[int, Slice]) -> list[Slice]:
        """The next document's slices in order: ``fresh`` ones as rendered, the others
        copied from the previous file (open as ``fd``)."""
        out = []
        for n in sorted(self.slices.keys() | fresh.keys()):
            if n in fresh:
                out.append(fresh[n])
            else:
                rows, idsum, off, length = self.slices[n]
                out.append(Slice(n, rows, idsum, Span(fd, off, length)))
        return out


def document(slices: Iterable[Slice], tail: Iterable[bytes] = (),
             placed: dict[int, tuple[int, int, int, int]] | None = None) -> Iterator[bytes | Span]:
    """mesh-memory.json in pieces: ``{``, one entry per line, ``}``; the ``tail`` entries
    (kept from an older cache) last.  Records where each slice lands in ``placed``."""
    yield b"{\n"
    pos, first = 2, True
    for s in slices:
        if not s.rows or s.body is None:
            continue
        if not first:
            yield b",\n"
            pos += 2
        first = False
        yield s.body
        length = s.body.length if isinstance(s.body, Span) else len(s.body)
        if placed is not None:
            placed[s.n] = (s.rows, s.idsum, pos, length)
        pos += length
    for t in tail:
        if not first:
            yield b",\n"
        first = False
        yield t
    yield b"}\n" if first else b"\n}\n"


def entry(value_text: str, node: str, updated_at: int) -> dict[str, Any]:
    # A value that is not JSON text is the string of its text (R10, see Index._value_json).
    return {"value": orjson.Fragment(formats.json_text(value_text)), "nodeId": node, "ts": updated_at}


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
        return file_sig(st)

    def read_memory(self) -> dict[str, Any]:
        """The current cache object, or {} when missing or unparsable."""
        try:
            obj = orjson.loads(self.memory_path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}
        return obj if isinstance(obj, dict) else {}

    def write_memory(self, entries: dict[str, dict[str, Any]] | bytes | Iterable[bytes | Span]) -> str:
        """Replace mesh-memory.json (entries, or the rendered document, whole or in
        pieces); returns its new stat signature."""
        data = render_memory(entries) if isinstance(entries, dict) else entries
        return file_sig(atomic_write(self.memory_path, data, self.fsync))

    def write_memory_slices(self, slices: Iterable[Slice], scopes: tuple[str, ...], step: int,
                            tail: list[bytes]) -> tuple[str, CacheLayout | None]:
        """Write the document made of ``slices`` (then ``tail``); returns its signature and
        layout, no layout when there is a tail (entries not from slices: the next write
        renders all)."""
        placed: dict[int, tuple[int, int, int, int]] = {}
        sig = self.write_memory(document(slices, tail, placed))
        return sig, (None if tail else CacheLayout(sig, scopes, step, placed))

    def open_if_ours(self, layout_: CacheLayout) -> int | None:
        """mesh-memory.json open for reading if it is still the file ``layout_`` describes."""
        try:
            fd = os.open(self.memory_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return None
        if file_sig(os.fstat(fd)) != layout_.sig:
            os.close(fd)
            return None
        return fd

    def skill_path(self, name: str) -> Path:
        return self.skills_dir / layout.cache_skill_name(name)

    def sync_skills(self, live: dict[str, str], removed: Iterable[str]) -> int:
        """Make ``<name>.md`` hold each live skill's content; remove the deleted ones.
        Only files whose bytes differ are written.  Returns how many files changed."""
        writes: list[tuple[Path, bytes | Iterable[bytes | Span]]] = []
        for name, content in live.items():
            p = self.skill_path(name)
            data = content.encode("utf-8", "surrogatepass")
            try:
                if p.read_bytes() == data:
                    continue
            except OSError:
                pass
            writes.append((p, data))
        atomic_write_many(writes, self.fsync)
        changed = len(writes)
        for name in removed:
            try:
                self.skill_path(name).unlink()
                changed += 1
            except FileNotFoundError:
                pass
        return changed


# --- reading what Phase 1 tools wrote --------------------------------------------------------


class CacheUnreadable(Exception):
    """mesh-memory.json is mid-write or invalid: retry later, never read it as empty."""


def parse_memory(data: bytes) -> dict[str, CacheEntry]:
    """Parse mesh-memory.json into entries; raise CacheUnreadable for a file that is
    not (yet) one JSON object of entries."""
    from meshsync import formats

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
