"""Writes to the cache replica: mesh-memory.json rendered from the index, and what the
pass needs to notice a Phase 1 tool writing mesh/skills/.

mesh-memory.json is rendered by SQLite in slices of row ids (index.cache_slices); after
a pass that changed a few rows only their slices are rendered again and the others are
copied from the file we wrote last (CacheLayout), as long as that file is still ours
and the rows add up.  A row reported as bad keeps the cache's last good version (R6).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol

import orjson

from meshsync import formats, layout
from meshsync.model import CACHE_STEP, ItemId, Slice
from meshsync.replicas.cache.store import (
    Cache,
    CacheLayout,
    SpanGone,
    close_behind,
    entry,
    render_memory,
)
from meshsync.replicas.cache.store import document as cache_document

log = logging.getLogger("meshsync")


class Rows(Protocol):
    """What the cache is rendered from: the index's rows (replicas/index/store.py's
    Index), seen only through these reads."""

    def read(self) -> AbstractContextManager[Any]: ...
    def data_version(self) -> int: ...
    def errors(self) -> list[dict]: ...
    def memory_scopes(self) -> list[str]: ...
    def memory_ids(self, items: Iterable[ItemId]) -> list[int]: ...
    def all_memory_rows(self) -> Iterator[tuple[str, str, str, str, int]]: ...
    def cache_totals(self, scopes: list[str], exclude: list[str]) -> tuple[int, int]: ...
    def cache_slices(self, scopes: list[str], exclude: list[str], step: int = CACHE_STEP,
                     only: Iterable[int] | None = None) -> Iterator[Slice]: ...


def skills_sig_of(stats: dict[str, tuple[int, int, int]]) -> str:
    """What the daemon compares to notice a tool writing mesh/skills/: names, mtimes, sizes."""
    return formats.digest_bytes(repr(sorted((n, m, z) for n, (m, z, _i) in stats.items())).encode())


class CacheWriter:
    """The node's writes of mesh-memory.json, and what it remembers of the last one."""

    def __init__(self, cache: Cache, index: Rows, may_read: Callable[[str], bool]) -> None:
        self.cache = cache
        self.index = index
        self.may_read = may_read  # the scopes this node may read (settings, reloadable)
        # mesh-memory.json as we last wrote it, and what may have changed in it since:
        # the memory items of every pass (their rows are the only ones we write; foreign
        # writes reach a pass through the outbox) and the ids of rows we deleted.
        self.layout: CacheLayout | None = None
        self.dirty: set[ItemId] = set()
        self.dirty_ids: set[int] = set()
        self.step = CACHE_STEP
        self.patched = False  # how the last cache write went (tests, benchmarks)

    def skill_stats(self) -> dict[str, tuple[int, int, int]]:
        """mtime, size and inode of each file in mesh/skills/."""
        out: dict[str, tuple[int, int, int]] = {}
        try:
            with os.scandir(self.cache.skills_dir) as it:
                for e in it:
                    if e.name.endswith(".md"):
                        try:
                            st = e.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        out[e.name] = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            pass
        return out

    def skills_sig(self, stats: dict[str, tuple[int, int, int]] | None = None) -> str | None:
        """The signature of mesh/skills/: of ``stats`` when the caller has just listed it
        (skill_stats), else of a listing made now."""
        if not self.cache.skills_dir.is_dir():
            return None
        return skills_sig_of(self.skill_stats() if stats is None else stats)

    def _bad(self) -> list[str]:
        """Cache keys of rows reported as bad, refused or not yet exported: their entries keep
        the cache's last good (synced) version."""
        return sorted({r["path"][6:] for r in self.index.errors() if r["kind"] in ("index", "refused", "export")})

    def _scopes(self) -> list[str]:
        return [sc for sc in self.index.memory_scopes() if self.may_read(sc) and layout.valid_scope(sc)]

    def document(self) -> Iterator[bytes]:
        """The whole of mesh-memory.json, in pieces (tests compare the file with it; the pass writes slices)."""
        bad = self._bad()
        with self.index.read():
            slices = list(self.index.cache_slices(self._scopes(), bad, self.step))
        for piece in cache_document(slices, self._kept(bad)):
            assert isinstance(piece, bytes)
            yield piece

    def _kept(self, bad: list[str]) -> list[bytes]:
        if not bad:
            return []
        old = self.cache.read_memory()
        return [orjson.dumps(ck) + b":" + orjson.dumps(old[ck]) for ck in bad if ck in old]

    def write_memory(self, patch: bool = False) -> str | None:
        """Rewrite mesh-memory.json from the index; returns its stat signature.  With
        ``patch``, only the slices holding rows that may have changed since our last
        write are rendered again, when that file is still ours and the rows add up."""
        dirty, dirty_ids = set(self.dirty), set(self.dirty_ids)
        dv = self.index.data_version()  # before the snapshot: a later foreign commit moves it
        try:
            bad = self._bad()
            sig = self._patch(dirty, dirty_ids) if patch and not bad else None
            self.patched = sig is not None
            if sig is None:
                with self.index.read():
                    scopes = self._scopes()
                    # One snapshot: the slices are written as SQLite renders them.
                    sig, self.layout = self.cache.write_memory_slices(
                        self.index.cache_slices(scopes, bad, self.step), tuple(scopes), self.step,
                        self._kept(bad))
        except sqlite3.Error as exc:  # e.g. a BLOB where text belongs: the Python path copes
            log.debug("cache rendered in Python: %s", exc)
            self.layout = None
            self.patched = False
            sig = self.cache.write_memory(render_memory(self.entries()))
        if self.layout is not None:
            self.layout.data_version = dv
        self.dirty -= dirty
        self.dirty_ids -= dirty_ids
        return sig

    def _patch(self, dirty: set[ItemId], dirty_ids: set[int]) -> str | None:
        lay = self.layout
        if lay is None:
            return None
        fd = self.cache.open_if_ours(lay)
        if fd is None:
            return None
        try:
            with self.index.read():
                scopes = self._scopes()
                if tuple(scopes) != lay.scopes:
                    return None
                touched = {(i - 1) // lay.step for i in (*self.index.memory_ids(dirty), *dirty_ids)}
                if len(touched) > max(8, len(lay.slices) // 4):
                    return None  # most of it changed: rendering it all is as cheap
                fresh = {s.n: s for s in self.index.cache_slices(scopes, [], lay.step, touched)}
                # Only another connection can add or remove a row that no pass of ours
                # looked at; while none has written, the totals (a 25 ms read of the
                # whole scope index at 100k rows) cannot tell us anything.
                quiet = lay.data_version is not None and self.index.data_version() == lay.data_version
                want = None if quiet else self.index.cache_totals(scopes, [])
            slices = lay.spans(fd, fresh)
            if want is not None and (sum(s.rows for s in slices), sum(s.idsum for s in slices)) != want:
                # A row came or went that no pass of ours saw (a foreign delete, say).
                log.debug("cache: rows changed outside the slices looked at; rendering all of it")
                return None
            sig, self.layout = self.cache.write_memory_slices(slices, lay.scopes, lay.step, [])
        except SpanGone:
            return None
        finally:
            close_behind(fd)  # the last reference to the replaced file: freeing it takes a while
        return sig

    def entries(self) -> dict[str, dict[str, Any]]:
        bad = set(self._bad())
        old: dict[str, Any] | None = None
        out: dict[str, dict[str, Any]] = {}
        with self.index.read():
            for scope, key, value, node_id, updated_at in self.index.all_memory_rows():
                if not self.may_read(scope) or not layout.valid_scope(scope):
                    continue
                ck = f"{scope}:{key}"
                if bad and ck in bad:
                    if old is None:
                        old = self.cache.read_memory()
                    if ck in old:
                        out[ck] = old[ck]
                    continue
                out[ck] = entry(value, node_id, updated_at)
        return out
