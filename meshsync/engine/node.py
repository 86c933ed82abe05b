"""One node's pipeline: detect changes on each side, reconcile each item, apply.

``Node.sync()`` is a full two-way pass: a stat walk of the share (files whose signature
is unchanged since the last pass are not read), the index's outbox of foreign writes,
then the pure :func:`reconcile.reconcile` per changed item, then the writes, share
first, index next (compare-and-set, short transactions), cache last.  ``Node.sync(items)``
does the same for a known set of items (the daemon's event path).

A crash anywhere leaves a state that the next pass repairs: a share file written but
not yet recorded in the index is simply seen as a (trusted) change of the share.
"""

from __future__ import annotations

import gc
import grp
import logging
import os
import sqlite3
import stat as stat_mod
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import orjson

from meshsync import formats, layout, secretguard, syncthing
from meshsync.config import Settings
from meshsync.formats import FormatError
from meshsync.layout import MEM, NOT_UTF8_NAME, SKILL, ItemId, not_unicode
from meshsync.reconcile import ABSENT, CACHE, INDEX, SHARE, Obs, Plan, Version, reconcile
from meshsync.replicas.cache import detect as cacheside
from meshsync.replicas.cache import skilldirs
from meshsync.replicas.cache.detect import CacheSkill
from meshsync.replicas.cache.store import (
    Cache,
    CacheEntry,
    CacheLayout,
    SpanGone,
    close_behind,
    entry,
    render_memory,
)
from meshsync.replicas.cache.store import document as cache_document
from meshsync.replicas.index.store import (
    CACHE_STEP,
    Index,
    MemoryRow,
    SkillRow,
    State,
    StateView,
    memory_row_sig,
    skill_row_sig,
)
from meshsync.replicas.share import journal, memread
from meshsync.replicas.share.store import (
    Changed,
    Check,
    FileRefused,
    Problem,
    Share,
    Walk,
    settled,
    sig_of,
    sweep_temporaries,
)

log = logging.getLogger("meshsync")

# The sides a pass may write for an item of a scope this node may write, or only read.
WRITE_ALL = frozenset({SHARE, INDEX, "cache"})
WRITE_LOCAL = frozenset({INDEX, "cache"})
CHANGED_SAMPLE = 20  # items a pass names in its stats (status --json's last_pass)
BATCH = 500  # rows per index write transaction: short, so other writers are never starved


@dataclass(slots=True)
class ShareFile:
    """A share file seen in the walk but not read (its signature was unchanged)."""

    sig: str | None
    cas: str | None = None  # the signature seen by the walk, even when too fresh to trust


@dataclass(slots=True)
class ShareMem:
    rec: formats.MemoryRecord
    sig: str | None
    hash: str
    # The stat signature of the bytes read, even when too fresh to be trusted for skipping
    # reads (``sig`` is None then): the compare-and-set before rewriting the file uses it.
    cas: str | None = None


@dataclass(slots=True)
class ShareSkill:
    content: bytes | None
    path: str | None
    extras: str
    sig: str | None
    hash: str
    # The stat signature of SKILL.md as read ("" when there was none): the compare-and-set
    # before an export rewrites it (see _share_unchanged).
    cas: str | None = None


@dataclass(slots=True)
class IndexMem:
    row: MemoryRow
    value: Any
    text: str


@dataclass(slots=True)
class IndexSkill:
    row: SkillRow


@dataclass(slots=True)
class PassStats:
    """What one pass saw and did; also the body of ``status --json``'s last_pass."""

    started: float = 0.0
    seconds: float = 0.0
    scanned: int = 0
    read: int = 0
    reconciled: int = 0
    to_share: int = 0
    to_index: int = 0
    deleted: int = 0
    conflicts: int = 0
    refused: int = 0
    errors: int = 0
    cache_written: bool = False
    full: bool = True
    changed: list[str] = field(default_factory=list)  # the first CHANGED_SAMPLE items that changed

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__slots__ if k != "changed"}
        d["changed_sample"] = self.changed
        return d


class Node:
    """One node: its share, index and cache, and the pass that keeps them in step."""

    def __init__(self, settings: Settings, *, index: Index | None = None):
        self.s = settings
        self.node = settings.node_id
        gid = None
        if settings.share_files.group:
            g = settings.share_files.group
            gid = int(g) if g.isdigit() else grp.getgrnam(g).gr_gid
        mode = int(settings.share_files.file_mode, 8) if settings.share_files.file_mode else None
        self.share = Share(settings.share, max_file_bytes=settings.limits.max_file_bytes,
                           fsync=settings.share_files.fsync, file_mode=mode, gid=gid)
        self.index = index or Index(settings.index)
        self.cache = Cache(settings.openclaw_home)
        self.progress: Callable[[str, int, int | None], None] | None = None
        self.written: list[ItemId] = []  # items this pass wrote to the share (for the journal)
        self.deferred: list[ItemId] = []  # items whose share file changed under us: next pass
        # Memory files _apply_share rendered, written a batch at a time by _write_queued:
        # (item, rel, bytes, compare-and-set, the state the item gets once written).
        self.queued: list[tuple[ItemId, str, bytes, Check | None, State]] = []
        # Signatures of files this process wrote: their change events are our own echo.
        self.own_sigs: dict[str, str] = {}
        # mesh-memory.json as we last wrote it, and what may have changed in it since:
        # the memory items of every pass (their rows are the only ones we write; foreign
        # writes reach a pass through the outbox) and the ids of rows we deleted.
        self.cache_layout: CacheLayout | None = None
        self.cache_dirty: set[ItemId] = set()
        self.cache_dirty_ids: set[int] = set()
        self.cache_step = CACHE_STEP
        self.cache_patched = False  # how the last cache write went (tests, benchmarks)
        self.tombs_read: dict[str, tuple[str, tuple[ItemId, int, str]]] = {}  # rel -> signature, content
        self._may_read: dict[str, bool] = {}  # scope -> self.s.may_read(scope)
        self._may_write: dict[str, bool] = {}
        self._scopes_of = settings  # the settings those answers came from
        # A pass with this many memory files to read reads them with a helper process
        # (memread.Helper; 0: never); helper_read counts the files it read in the last such pass.
        self.readahead_min = memread.MIN_FILES
        self.helper_read = 0
        self.helper: memread.Helper | None = None  # started before the walk of a first import
        self.settle_early = True  # a first import applies items as it reads them (see _detect_share)

    def close(self) -> None:
        self.share.close()
        self.index.close()

    # --- helpers ------------------------------------------------------------------------------

    def readable(self, item: ItemId) -> bool:
        return item.kind == SKILL or self._scope_ok(item.scope, self._may_read, Settings.may_read)

    def writable(self, item: ItemId) -> bool:
        return item.kind == SKILL or self._scope_ok(item.scope, self._may_write, Settings.may_write)

    def _scope_ok(self, scope: str, answers: dict[str, bool], ask: Callable[[Settings, str], bool]) -> bool:
        # Asked several times for every item of a pass, and a mesh has few scopes.  The
        # answers are remembered per settings object: a reload (SIGHUP) replaces it.
        if self._scopes_of is not self.s:
            self._scopes_of = self.s
            self._may_read.clear()
            self._may_write.clear()
        ok = answers.get(scope)
        if ok is None:
            ok = answers[scope] = ask(self.s, scope)
        return ok

    def _tick(self, what: str, done: int, total: int | None) -> None:
        if self.progress is not None:
            self.progress(what, done, total)

    @staticmethod
    def _base(st: State | None) -> Version | None:
        if st is None:
            return None
        return Version(st.stamp, st.node, st.digest, st.deleted)

    def _index_stamp(self, updated_at: Any, now_ms: int) -> int:
        """Milliseconds for a row's updated_at; FormatError for a value that is no time
        (SQLite keeps text such as 'yesterday' even in an INTEGER column)."""
        if isinstance(updated_at, float) and updated_at.is_integer():
            updated_at = int(updated_at)
        if type(updated_at) is not int or not 0 <= updated_at <= 253_402_300_799_999:
            raise FormatError(f"updated_at {updated_at!r} is not Unix seconds")
        if updated_at > 100_000_000_000:  # a client that wrote milliseconds
            return updated_at
        if updated_at == now_ms // 1000:
            return now_ms  # written this second: keep sub-second order
        return updated_at * 1000

    # --- the pass -------------------------------------------------------------------------------

    def sync(self, only: Iterable[ItemId] | None = None, *, full_index: bool = False) -> PassStats:
        """One two-way pass.  Raises ShareUnavailable (and changes nothing) when the
        share is not there."""
        # Python's cycle collector is paused for the pass: a pass allocates an object or
        # more per file and keeps most of them to its end, so collections kept walking
        # everything alive for nothing (a fifth of a 10k no-change pass).  Our objects
        # form no cycles; any the pass leaves are collected once it returns.
        paused = gc.isenabled()
        gc.disable()
        try:
            return self._sync(only, full_index=full_index)
        finally:
            if self.helper is not None:  # a pass that failed before it read anything
                self.helper.close()
                self.helper = None
            if paused:
                gc.enable()

    def _sync(self, only: Iterable[ItemId] | None, *, full_index: bool) -> PassStats:
        t0 = self.pass_t0 = time.monotonic()
        stats = PassStats(started=time.time(), full=only is None)
        self.share.check()
        self.share.forget_dirs()
        self._recover_exports()
        self.written = []
        self.looked_ok: list[str] = []  # share paths a targeted pass found fine (or gone)
        self.deferred = []
        self.young_added: set[str] = set()  # cache keys this pass adds (see cacheside.py)
        self.cache_replaced: dict[str, list] = {}  # key -> version this pass replaces in the cache
        now_ms = int(time.time() * 1000)
        now_ns = time.time_ns()
        seq, outbox = self.index.outbox()
        if full_index or self.index.meta("index_scanned") != "1":
            outbox |= self.index.all_items()
        state = StateView(self.index)
        if only is not None:
            only = set(only)
            state.prefetch(only | outbox)

        # R7: a pass killed after its index writes but before it refreshed the cache leaves
        # cache_owed set.  The cache then lags behind the index because of us: its
        # differences are not a tool's writes (a half-refreshed mesh/skills/ was taken as
        # deletes and wiped skills everywhere), and this pass refreshes the whole cache.
        owed = self.index.meta("cache_owed") == "1"
        # What mesh/skills/ holds as this pass looks at it (see _finish: files a tool
        # writes after this are left for the next pass).
        self.cache_skills_before = self._cache_skill_stats() if self.s.cache.writable and not owed else None
        cache_side = (self._detect_cache(state) if self.s.cache.writable and not owed
                      else cacheside.CacheSide())
        # Items Phase 1 tools changed in the cache join the pass (and, in a targeted
        # pass, get their share side observed like any other).
        outbox |= set(cache_side.obs)

        walk = Walk()
        share_obs: dict[ItemId, Obs] = {}
        share_unknown: set[ItemId] = set()
        problems: list[Problem] = []
        index_problems: dict[ItemId, tuple[str, str] | None] = {}
        refused_read: list[ItemId] = []
        changed_mem = False
        changed_skills: dict[str, str | None] = {}
        early: set[ItemId] = set()  # items a first import planned and applied while it read

        def settle(items: list[ItemId], obs: dict[ItemId, Obs], full: bool, tick: bool) -> None:
            nonlocal changed_mem
            cm, cs = self._settle(items, state, obs, share_unknown, cache_side, walk, stats,
                                  index_problems, refused_read, now_ms, full, tick)
            changed_mem |= cm
            changed_skills.update(cs)

        def settle_early(obs: dict[ItemId, Obs]) -> None:
            early.update(obs)
            settle(sorted(obs), obs, True, False)

        if only is None:
            # What the last pass recorded for each share file: the walk sets aside the
            # memory files that still have that signature, without a State for each.
            walk.known = self.index.share_sigs()
            first = not walk.known
            if first and self.index.meta("index_scanned") != "1" and self.readahead_min:
                # A first import reads every file: the helper process starts during the walk.
                self.helper = memread.Helper.start(self.share, self.node, self.s.limits.max_json_depth)
            self._walk(walk, now_ns)
            stats.scanned = len(walk.memory) + walk.same_count() + len(walk.skills)
            candidates = self._detect_share(walk, state, share_obs, share_unknown, problems, now_ms, stats,
                                            settle_early if first and self.settle_early else None)
            candidates |= self._detect_tombstones(walk, state, share_obs, problems, now_ms)
            candidates |= outbox  # foreign writes to the index (other SQLite clients, the CLI)
            candidates -= early
            state.want(outbox, len(walk.known))  # not one query per item when 10k rows were written
        else:
            candidates = set(only)
            candidates |= outbox
        if only is not None:
            for item in candidates:
                self._observe_share_item(item, state.get(item), share_obs, share_unknown, problems,
                                         walk, now_ns, stats)
        # The share check again: an unmount during the walk must not read as deletes (R5).
        # (What a first import applied early came from files it read: no deletes.)
        self.share.check()
        if only is None:
            self._sweep_temporaries(walk)
        problems.extend(cache_side.problems)

        # In key order: the index's b-trees (the state table's and mesh_memory's (scope,
        # key) index) then take a batch's rows at neighbouring places, not all over the
        # file.  Written in hash order, a 100k import's commits wrote twice the pages.
        settle(sorted(it for it in candidates if it.kind in (MEM, SKILL)), share_obs, only is None, True)
        self._finish(walk, problems, index_problems, refused_read, seq, state, changed_mem,
                     changed_skills, stats, now_ms, only is None, cache_side.unreadable, owed)
        stats.seconds = round(time.monotonic() - t0, 4)
        return stats

    def _settle(self, items: list[ItemId], state: StateView, share_obs: dict[ItemId, Obs],
                share_unknown: set[ItemId], cache_side: cacheside.CacheSide, walk: Walk, stats: PassStats,
                index_problems: dict[ItemId, tuple[str, str] | None], refused_read: list[ItemId],
                now_ms: int, full: bool, tick: bool) -> tuple[bool, dict[str, str | None]]:
        """Reconcile ``items`` (in key order) from their sides and apply the plans."""
        self.cache_dirty.update(it for it in items if it.kind == MEM)
        may: list[ItemId] = []
        for it in items:
            (may if self.readable(it) else refused_read).append(it)
        items = may
        index_obs, problems = self._detect_index(items, state, now_ms)
        index_problems.update(problems)
        for it in items:
            if it not in share_obs and it not in share_unknown and full:
                # Not read this pass: unchanged if the walk saw its file, else absent.
                share_obs[it] = self._unread_share_obs(it, state.get(it), walk)

        plans: list[tuple[ItemId, Plan, dict[str, Obs]]] = []
        for it in items:
            sides: dict[str, Obs] = {}
            if it in share_obs and it not in share_unknown:
                sides[SHARE] = share_obs[it]
            if it in index_obs:
                sides[INDEX] = index_obs[it]
            if it in cache_side.obs:
                sides[CACHE] = cache_side.obs[it]
            if it.kind == MEM and not layout.valid_scope(it.scope):
                index_problems[it] = (f"index row {it} has scope {it.scope!r}, which is not node, mesh or user:<id>",
                                      "fix the scope; the row stays local and is not exported")
                continue
            if SHARE not in sides and INDEX not in sides and CACHE not in sides:
                continue
            writable = WRITE_ALL if self.writable(it) else WRITE_LOCAL
            plan = reconcile(self._base(state.get(it)), sides, now_ms=now_ms, node=self.node,
                             writable=writable)
            plans.append((it, plan, sides))
        stats.reconciled += len(plans)
        return self._apply(plans, state, stats, index_problems, now_ms, tick)

    # --- detection: share ---------------------------------------------------------------------

    def _detect_cache(self, state: dict[ItemId, State]) -> cacheside.CacheSide:
        """What Phase 1 tools changed in the cache since our last write (see
        cacheside.py).  Costs one stat of mesh-memory.json and one listing of
        mesh/skills/ when nothing changed."""
        side = cacheside.CacheSide()
        idx = self.index
        sig = self.cache.memory_sig()
        if sig is not None and sig != idx.meta("cache_sig"):
            full = idx.load_state()
            live = {cacheside.cache_key(it): it for it, st in full.items()
                    if it.kind == MEM and not st.deleted and self.readable(it)}
            young = set(orjson.loads(idx.meta("cache_young") or "[]"))
            replaced = orjson.loads(idx.meta("cache_prev") or "{}")
            side = cacheside.detect_memory(self.cache, full, live, young, self.node, self.readable, replaced)
            for it in side.obs:
                if it in full:
                    state[it] = full[it]
        ssig = self.cache_skills_sig()
        if ssig is not None and ssig != idx.meta("cache_skills_sig"):
            contents = {name: content for name, content, _p, _n, _u in idx.all_skill_rows()}
            sk = cacheside.detect_skills(self.cache, state, contents, self.node)
            for it in sk.obs:
                if it not in state:
                    got = idx.load_state([it])
                    state.update(got)
            side.obs.update(sk.obs)
            side.problems.extend(sk.problems)
        return side

    def _cache_skill_stats(self) -> dict[str, tuple[int, int, int]]:
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

    def cache_skills_sig(self) -> str | None:
        if not self.cache.skills_dir.is_dir():
            return None
        return _skills_sig(self._cache_skill_stats())

    def _walk(self, walk: Walk, now_ns: int) -> None:
        sh = self.share
        for top in (layout.MEMORY, layout.SKILLS):
            st = sh.lstat(top)
            if st is None or not stat_mod.S_ISDIR(st.st_mode):
                walk.unknown.append(top)
                walk.problems.append(Problem(top, "the share's top-level folder is missing or not a folder",
                                             "run `meshsync init` to recreate it; nothing was deleted"))
        if not walk.is_unknown(layout.MEMORY):
            self._tick("scanning share", 0, None)
            if self.s.may_read("mesh"):
                sh.walk_memory_dir(f"{layout.MEMORY}/mesh", walk, now_ns)
            for name in sh.walk_subdirs(f"{layout.MEMORY}/user", walk):
                self._tick("scanning share", len(walk.memory) + walk.same_count(), None)
                if not_unicode(name) or not_unicode(_decoded(name)):  # R6: see _read_memory
                    walk.problems.append(Problem(f"{layout.MEMORY}/user/{name}", "folder " + NOT_UTF8_NAME[5:],
                                                 "rename it to a name that is valid UTF-8"))
                    continue
                try:
                    uid = layout.decode(name)
                except layout.Shortened:
                    uid = None
                except layout.LayoutError as exc:
                    walk.problems.append(Problem(f"{layout.MEMORY}/user/{name}", f"folder name: {exc}",
                                                 f"rename it to {layout.encode(name)}"))
                    continue
                if uid is None or self.s.may_read("user:" + uid):
                    sh.walk_memory_dir(f"{layout.MEMORY}/user/{name}", walk, now_ns)
            if self.s.may_read("node"):
                sh.walk_memory_dir(f"{layout.MEMORY}/node/{layout.encode(self.node)}", walk, now_ns)
        if not walk.is_unknown(layout.SKILLS):
            names = sh.walk_subdirs(layout.SKILLS, walk)
            for i, name in enumerate(names):
                rel = f"{layout.SKILLS}/{name}"
                walk.skills[rel] = sh.walk_skill(rel, walk, now_ns)
                if i % 50 == 0:
                    self._tick("scanning skills", i, len(names))
        sh.walk_tombstones(walk, now_ns)

    def _sweep_temporaries(self, walk: Walk) -> None:
        """Remove the temporary files of writes killed midway (R7) once they are stale
        (share.STALE_TEMP_S): those the walk saw in the share, and the cache's.  They are
        never imported; this only keeps them from piling up."""
        n = self.share.sweep_walked(walk)
        for d in (self.cache.home, self.cache.skills_dir):
            n += sweep_temporaries(d)
        if n:
            log.info("removed %d stale temporary file(s) left by interrupted writes", n)

    def _detect_share(self, walk: Walk, state: StateView, share_obs: dict[ItemId, Obs],
                      unknown: set[ItemId], problems: list[Problem], now_ms: int, stats: PassStats,
                      settle: Callable[[dict[ItemId, Obs]], None] | None = None) -> set[ItemId]:
        """The share side of what changed.  With ``settle`` (a first import), memory files
        are taken in name order and handed to it in batches as soon as they are read: such
        an item has every side known already (the index and cache were looked at before
        the walk, and nothing else on the share names it unless a tombstone does), and its
        index writes overlap the helper process's reading of the next files."""
        known = walk.known
        mem = walk.memory
        to_read = list(mem.items())  # the walk set aside the memory files known unchanged
        if settle is not None:
            to_read.sort(key=itemgetter(0))  # key order, as in _sync
        skills = [(rel, sd) for rel, sd in walk.skills.items()
                  if not sd.settled or known.get(rel, 0) != sd.sig]
        if known:
            seen = (walk.same_count() + sum(1 for rel in mem if rel in known)
                    + sum(1 for rel in walk.skills if rel in known))
            gone = ([] if seen == len(known) else
                    [rel for rel in known if rel not in mem and rel not in walk.skills and not walk.is_same(rel)])
            ids = self.index.items_at([rel for rel, _ in (*to_read, *skills) if rel in known] + gone)
        else:  # nothing recorded (a first import): nothing known is gone or has an item
            gone, ids = [], {}
        state.want(ids.values(), len(known), len(to_read) + len(skills) + len(gone))
        changed: set[ItemId] = set()
        total = len(to_read)
        helper, self.helper = self.helper, None
        self.helper_read = 0
        if helper is None and self.readahead_min and total >= self.readahead_min:
            helper = memread.Helper.start(self.share, self.node, self.s.limits.max_json_depth)
        elif helper is not None and total < memread.CHUNK * 4:
            helper.close()
            helper = None
        tombs = walk.tombstones
        batch: dict[ItemId, Obs] = {}
        try:
            readings = memread.read_all(self.share, [rel for rel, _ in to_read], self.node,
                                        self.s.limits.max_json_depth, helper)
            phase = "importing memory files" if settle is not None else "reading changed memory files"
            for n, (pos, got) in enumerate(readings):
                if n % 500 == 0:
                    self._tick(phase, n, total)
                rel, fe = to_read[pos]
                it = ids.get(rel)
                stats.read += 1
                got = self._read_memory(rel, fe.sig if fe.settled else None, problems, got)
                if got is None:
                    if it is not None:
                        unknown.add(it)
                    continue
                it2, obs = got
                if it is not None and it2 != it:
                    unknown.add(it)
                st = state.get(it2)
                if st is not None and not st.deleted and st.share_hash == obs.payload.hash and st.rel == rel:
                    obs = Obs(self._base(st), True, obs.payload)
                    if st.share_sig == obs.payload.sig:
                        continue
                if settle is not None and (not tombs or layout.tombstone_path(it2, self.node) not in tombs):
                    batch[it2] = obs
                    if len(batch) >= BATCH:
                        settle(batch)
                        batch = {}
                    continue
                share_obs[it2] = obs
                changed.add(it2)
            if batch and settle is not None:
                settle(batch)
        finally:
            if helper is not None:
                helper.close()
                self.helper_read = helper.answered
        for rel, sd in skills:
            it = ids.get(rel)
            stats.read += 1
            got = self._read_skill(sd.rel, sd.files, sd.sig if sd.settled else None, state, problems)
            if got is None:
                if it is not None:
                    unknown.add(it)
                continue
            it2, obs = got
            st = state.get(it2)
            # A skill's hash covers its files, not what skill.json claims: a trusted
            # skill.json naming another version of the same content (another node's
            # normalisation of the same hand-made folder: same mtime stamp, its own node id)
            # is a change, or the nodes keep different source_node values forever (R1).
            if (st is not None and not st.deleted and st.share_hash == obs.payload.hash and st.rel == rel
                    and (not obs.trusted or obs.version.same(self._base(st)))):
                obs = Obs(self._base(st), True, obs.payload)
                if st.share_sig == obs.payload.sig:
                    continue
            share_obs[it2] = obs
            changed.add(it2)
        # Items the share had at the last pass and no longer has.
        for rel in gone:
            it = ids.get(rel)
            if it is None:
                continue
            if walk.is_unknown(rel) or not self.readable(it):
                continue
            changed.add(it)
        return changed

    def _unread_share_obs(self, it: ItemId, st: State | None, walk: Walk) -> Obs:
        """The share side of an item the walk did not read: its file is still the one
        last synced (signature unchanged), or it is absent."""
        if st is not None and not st.deleted and st.rel is not None:
            fe = walk.memory_entry(st.rel) if it.kind == MEM else walk.skills.get(st.rel)
            if fe is not None:
                return Obs(self._base(st), True, ShareFile(fe.sig if fe.settled else None, fe.sig))
        return ABSENT

    def _read_memory(self, rel: str, sig: str | None, problems: list[Problem],
                     got: memread.Read | Problem | None | bool = False) -> tuple[ItemId, Obs] | None:
        """The share side of one memory file; ``got`` is its reading by memread.read_all
        (False: read it here)."""
        if got is False:
            got = memread.read(self.share, rel, self.node, self.s.limits.max_json_depth)
        if got is None:
            return None
        if isinstance(got, Problem):
            problems.append(got)
            return None
        rec, h, mtime_ns, read_sig = got  # type: ignore[misc]
        it = layout.memory_id(rec.scope, rec.key)
        if not self.readable(it):
            return None
        if rec.trusted:
            v = Version(rec.stamp, rec.node, rec.digest)  # type: ignore[arg-type]
        else:
            # An edited file comes after the version it still names, even when this node
            # never saw that version and the file's mtime is behind its stamp (R3).
            declared = rec.stamp + 1 if rec.stamp is not None else 0
            v = Version(max(declared, mtime_ns // 1_000_000), rec.node or self.node, rec.digest)
        return it, Obs(v, rec.trusted, ShareMem(rec, sig, h, read_sig))

    def _read_skill(self, rel: str, files: list, sig: str | None, state: dict[ItemId, State],
                    problems: list[Problem]) -> tuple[ItemId, Obs] | None:
        name_seg = rel.rsplit("/", 1)[-1]
        if not_unicode(name_seg) or not_unicode(_decoded(name_seg)):  # R6: see _read_memory
            problems.append(Problem(rel, "folder " + NOT_UTF8_NAME[5:], "rename it to a name that is valid UTF-8"))
            return None
        content: bytes | None = None
        meta: formats.SkillMeta | None = None
        extras: list[tuple[str, str]] = []
        newest = 0
        for fe in files:
            sub = fe.rel[len(rel) + 1:]
            limit = self.s.limits.max_skill_bytes if sub == layout.SKILL_MD else None
            try:
                # The hint names the limit that applies (it said max_file_bytes for a SKILL.md).
                data, st = self.share.read(fe.rel, limit, "limits.max_skill_bytes" if limit else "limits.max_file_bytes")
            except FileRefused as exc:
                problems.append(exc.problem)
                if sub in (layout.SKILL_MD, layout.SKILL_JSON):
                    return None
                continue
            except FileNotFoundError:
                return None
            newest = max(newest, st.st_mtime_ns // 1_000_000)
            if sub == layout.SKILL_MD:
                content = data
            elif sub == layout.SKILL_JSON:
                try:
                    meta = formats.parse_skill_json(data)
                except FormatError as exc:
                    problems.append(Problem(fe.rel, str(exc), "fix skill.json or delete it (it is optional)"))
                    return None
            else:
                extras.append((sub, formats.digest_bytes(data)))
        try:
            name: str | None = layout.decode(name_seg)
        except layout.Shortened:
            name = meta.name if meta else None
        except layout.LayoutError as exc:
            problems.append(Problem(rel, f"folder name: {exc}", f"rename it to skills/{layout.encode(name_seg)}"))
            return None
        if name is None or layout.item_path(layout.skill_id(name), self.node) != rel:
            problems.append(Problem(rel, "skill folder name does not match the name in skill.json",
                                    "rename the folder or fix skill.json's name"))
            return None
        if meta is not None and meta.name is not None and meta.name != name:
            problems.append(Problem(f"{rel}/{layout.SKILL_JSON}", f"says name {meta.name!r} but the folder means {name!r}",
                                    "fix the name in skill.json or rename the folder"))
            return None
        path = meta.path if meta else None
        if content is None and path is None:
            problems.append(Problem(rel, "skill folder has no SKILL.md (and skill.json gives no path)",
                                    "add a SKILL.md; the folder is ignored until then"))
            return None
        if content is not None:
            try:
                content.decode("utf-8")
            except UnicodeDecodeError:
                problems.append(Problem(f"{rel}/{layout.SKILL_MD}", "is not UTF-8 text", "save it as UTF-8"))
                return None
        ex = formats.extras_digest(extras)
        digest = formats.skill_digest(content, path, ex)
        it = layout.skill_id(name)
        trusted = bool(meta and meta.rev and meta.node and meta.stamp is not None
                       and meta.rev == formats.rev(it, digest, meta.stamp, meta.node))
        if trusted:
            v = Version(meta.stamp, meta.node, digest)  # type: ignore[union-attr,arg-type]
        else:
            declared = meta.stamp + 1 if meta and meta.stamp is not None else 0  # after it: see _read_memory
            v = Version(max(declared, newest), (meta.node if meta and meta.node else self.node), digest)
        md = next((fe.sig for fe in files if fe.rel == f"{rel}/{layout.SKILL_MD}"), "")
        return it, Obs(v, trusted, ShareSkill(content, path, ex, sig, digest, md))

    def _observe_share_item(self, item: ItemId, st: State | None, share_obs: dict[ItemId, Obs],
                            unknown: set[ItemId], problems: list[Problem], walk: Walk, now_ns: int,
                            stats: PassStats) -> None:
        """Targeted detection of one item (the daemon's per-change path)."""
        if not self.readable(item):
            return
        try:
            rel = layout.item_path(item, self.node)
        except layout.LayoutError:
            return
        lst = self.share.lstat(rel)
        if (lst is not None and st is not None and not st.deleted and item.kind == MEM
                and self.own_sigs.get(rel) == sig_of(lst) and st.rel == rel):
            share_obs[item] = Obs(self._base(st), True, ShareFile(sig_of(lst)))  # our own write
            return
        tomb = self._read_tomb(item)
        if lst is None:
            share_obs[item] = tomb or ABSENT
            self.looked_ok.append(rel)
            return
        if (tomb is None and item.kind == MEM and st is not None and not st.deleted and st.rel == rel
                and settled(lst, now_ns) and st.share_sig == sig_of(lst)):
            # The file last synced, unchanged (same rule as the full pass: a settled file
            # whose stat signature is the recorded one is not read again).
            share_obs[item] = Obs(self._base(st), True, ShareFile(st.share_sig))
            self.looked_ok.append(rel)
            return
        stats.read += 1
        if item.kind == MEM:
            got = self._read_memory(rel, sig_of(lst) if settled(lst, now_ns) else None, problems)
        else:
            sd = self.share.walk_skill(rel, walk, now_ns)
            problems.extend(walk.problems)
            walk.problems.clear()
            got = self._read_skill(rel, sd.files, sd.sig if sd.settled else None, {}, problems)
        if got is None or got[0] != item:
            unknown.add(item)
            return
        # Its earlier errors (e.g. read mid-write) go now, not at the next full rescan.
        self.looked_ok += [rel] if item.kind == MEM else [rel, f"{rel}/{layout.SKILL_MD}", f"{rel}/{layout.SKILL_JSON}"]
        obs = got[1]
        if (st is not None and not st.deleted and st.share_hash == obs.payload.hash
                and (item.kind == MEM or not obs.trusted or obs.version.same(self._base(st)))):
            # (skills: the hash does not cover skill.json's claimed version; see _detect_share)
            obs = Obs(self._base(st), True, obs.payload)
        if tomb is not None and tomb.version is not None:
            if effective_order(obs, st) < tomb.version.order:
                obs = Obs(tomb.version, True, obs.payload, dirty=True)
            else:
                obs = Obs(obs.version, obs.trusted, obs.payload, dirty=True)
        share_obs[item] = obs

    def _read_tomb(self, item: ItemId) -> Obs | None:
        rel = layout.tombstone_path(item, self.node)
        try:
            data, _ = self.share.read(rel, 64 * 1024)
            t_item, stamp, node = formats.parse_tombstone(data)
        except FileNotFoundError:
            return None
        except (FileRefused, FormatError):
            return None
        if t_item != item:
            return None
        return Obs(Version(stamp, node, deleted=True), True, None)

    def _detect_tombstones(self, walk: Walk, state: dict[ItemId, State], share_obs: dict[ItemId, Obs],
                           problems: list[Problem], now_ms: int) -> set[ItemId]:
        """Fold the share's tombstones into its observations.  When a file and a
        tombstone both exist (a crash between the two writes, or a re-creation), the
        newer wins and the side is marked dirty so that apply removes the other."""
        changed: set[ItemId] = set()
        horizon = now_ms - int(self.s.tombstone_retention_days * 86_400_000)
        if syncthing.is_syncthing_folder(self.share.root):  # R4: one tombstone per item, no copies
            syncthing.fold_tombstone_copies(self.share, walk.tombstones)
        # Tombstones are written once and never edited: one read each, not one per pass
        # (a settled file with the signature it had when last read holds the same bytes).
        seen, self.tombs_read = self.tombs_read, {}
        for rel, fe in walk.tombstones.items():
            hit = seen.get(rel)
            try:
                if hit is not None and fe.settled and hit[0] == fe.sig:
                    item, stamp, node = hit[1]
                else:
                    data, _ = self.share.read(rel, 64 * 1024)
                    item, stamp, node = formats.parse_tombstone(data)
                if fe.settled:
                    self.tombs_read[rel] = (fe.sig, (item, stamp, node))
                if layout.tombstone_path(item, self.node) != rel:
                    continue  # another node's node-scope tombstone, or a stray file
            except (FileRefused, FormatError, FileNotFoundError, layout.LayoutError):
                continue  # tombstones are ours; a broken one only loses its protection
            if stamp < horizon:
                self.share.remove(rel)
                continue
            if not self.readable(item):
                continue
            tv = Version(stamp, node, deleted=True)
            st = state.get(item)
            item_rel = layout.item_path(item, self.node)
            cur = share_obs.get(item)
            present = walk.has_memory(item_rel) if item.kind == MEM else item_rel in walk.skills
            if cur is None and present:
                if walk.is_unknown(item_rel) or not base_live(st):
                    continue  # the file could not be read: leave both alone this time
                fe = walk.memory_entry(item_rel) if item.kind == MEM else walk.skills.get(item_rel)
                cur = Obs(self._base(st), True, ShareFile(fe.sig if fe else None))
            if cur is None or cur.version is None:
                share_obs[item] = Obs(tv, True, None)
                if st is None or not (st.deleted and st.stamp == stamp and st.node == node):
                    changed.add(item)
                continue
            if effective_order(cur, st) < tv.order:
                share_obs[item] = Obs(tv, True, cur.payload, dirty=True)
            else:
                share_obs[item] = Obs(cur.version, cur.trusted, cur.payload, dirty=True)
            changed.add(item)
        return changed

    # --- detection: index -------------------------------------------------------------------------

    def _detect_index(self, items: list[ItemId], state: dict[ItemId, State],
                      now_ms: int) -> tuple[dict[ItemId, Obs], dict[ItemId, tuple[str, str] | None]]:
        obs: dict[ItemId, Obs] = {}
        problems: dict[ItemId, tuple[str, str] | None] = {}
        mem = [it for it in items if it.kind == MEM]
        skills = [it for it in items if it.kind == SKILL]
        with self.index.read():
            rows = self.index.memory_rows(mem)
            srows = self.index.skill_rows(skills)
        for it in mem:
            st = state.get(it)
            row = rows.get(it)
            if row is None:
                obs[it] = ABSENT
                problems[it] = None
                continue
            if st is not None and st.row_sig == row.sig:
                obs[it] = Obs(self._base(st), True, None)
                problems[it] = None
                continue
            try:
                if not isinstance(row.value, str):
                    raise FormatError(f"value is a {type(row.value).__name__}, not JSON text")
                value = formats.loads(row.value, self.s.limits.max_json_depth)
                stamp = self._index_stamp(row.updated_at, now_ms)
            except FormatError as exc:
                problems[it] = (f"index row {it}: {exc}", "write valid JSON text into mesh_memory.value and "
                                "Unix seconds into updated_at; the last good version stays on the share and in the cache")
                continue
            text = formats.canonical(value)
            v = Version(stamp, str(row.node_id) or self.node, formats.digest_bytes(text))
            obs[it] = Obs(v, False, IndexMem(row, value, text.decode("utf-8")))
            problems[it] = None
        for it in skills:
            st = state.get(it)
            srow = srows.get(it)
            problems[it] = None
            if srow is None:
                obs[it] = ABSENT
                continue
            if st is not None and st.row_sig == srow.sig:
                obs[it] = Obs(self._base(st), True, None)
                continue
            try:
                if not isinstance(srow.content, str | None) or not isinstance(srow.path, str | None):
                    raise FormatError("content and path must be text")
                stamp = self._index_stamp(srow.updated_at, now_ms)
            except FormatError as exc:
                problems[it] = (f"index row skill:{it.key}: {exc}", "fix the row in mesh_skills; "
                                "the last good version stays on the share and in the cache")
                continue
            content = srow.content.encode("utf-8", "surrogatepass") if srow.content is not None else None
            d = formats.skill_digest(content, srow.path, (st.aux or "") if st else "")
            v = Version(stamp, str(srow.source_node) or self.node, d)
            obs[it] = Obs(v, False, IndexSkill(srow))
        return obs, problems

    # --- apply --------------------------------------------------------------------------------------

    def _apply(self, plans: list[tuple[ItemId, Plan, dict[str, Obs]]], state: dict[ItemId, State],
               stats: PassStats, index_problems: dict[ItemId, tuple[str, str] | None],
               now_ms: int, tick: bool = True) -> tuple[bool, dict[str, str | None]]:
        changed_mem = False
        changed_skills: dict[str, str | None] = {}
        pending: list[tuple[ItemId, Plan, dict[str, Obs], State | None]] = []
        self.queued = []
        total = len(plans)
        for n, (it, plan, sides) in enumerate(plans):
            if tick and n % 500 == 0:
                self._tick("applying", n, total)
            if n % BATCH == 0:
                self._record_exports(plans[n:n + BATCH])
            new_state = self._apply_share(it, plan, sides, state.get(it), stats, index_problems)
            pending.append((it, plan, sides, new_state))
            if len(pending) >= BATCH:
                cm, cs = self._apply_index(self._write_queued(pending, stats, index_problems),
                                           state, stats, index_problems)
                changed_mem |= cm
                changed_skills.update(cs)
                pending = []
        if pending:
            cm, cs = self._apply_index(self._write_queued(pending, stats, index_problems),
                                       state, stats, index_problems)
            changed_mem |= cm
            changed_skills.update(cs)
        return changed_mem, changed_skills

    def _write_queued(self, pending: list[tuple[ItemId, Plan, dict[str, Obs], State | None]], stats: PassStats,
                      index_problems: dict) -> list[tuple[ItemId, Plan, dict[str, Obs], State | None]]:
        """Write the batch's memory files (queued by _apply_share) several at a time, and
        complete their states; an item whose write was refused leaves the batch (None)."""
        queued, self.queued = self.queued, []
        if not queued:
            return pending
        got = self.share.write_many([(rel, data, check) for _, rel, data, check, _ in queued])
        if len(self.own_sigs) > 200_000:
            self.own_sigs.clear()
        now_ns = time.time_ns()
        failed: set[ItemId] = set()
        for (it, rel, _, _, new), res in zip(queued, got, strict=True):
            if isinstance(res, os.stat_result):
                sig = self.own_sigs[rel] = sig_of(res)
                new.share_sig = sig if settled(res, now_ns) else None
                self.share.remove(f"{layout.TOMBSTONES}/{rel}")  # layout.tombstone_path of a memory item
                stats.to_share += 1
                self.written.append(it)
                continue
            failed.add(it)
            if isinstance(res, Changed):
                # Changed since we looked, or a file we could not read is in the way:
                # keep the item queued so a local write is not forgotten (R2).
                self.deferred.append(it)
            elif isinstance(res, FileRefused):
                index_problems[it] = (f"cannot write {res.problem.path} on the share: {res.problem.reason}",
                                      res.problem.hint)
            else:
                index_problems[it] = (f"cannot write {rel} on the share: {getattr(res, 'strerror', None) or res}",
                                      "check the share's permissions and free space; retried on the next pass")
        if not failed:
            return pending
        return [(it, plan, sides, None if it in failed else new) for it, plan, sides, new in pending]

    def _record_exports(self, chunk: list[tuple[ItemId, Plan, dict[str, Obs]]]) -> None:
        """Before a batch's share writes, note in the index the version each export of an
        index row will write.  A pass killed after the writes but before its index commit
        loses the new base; the exported file then looked concurrent with a later write
        of the same row, and within the same second the older one could win (R7, R2)."""
        out = []
        for it, plan, sides in chunk:
            win = plan.winner
            src = sides[plan.source].payload if plan.source in sides else None
            if (it.kind == MEM and win is not None and not win.deleted and not plan.refused
                    and SHARE in plan.write and isinstance(src, IndexMem)):
                out.append([it.scope, it.key, win.stamp, win.node, win.digest,
                            memory_row_sig(src.row.value, win.node, win.stamp // 1000)])
        if out:
            with self.index.write() as db:
                self.index.set_meta(db, export_intents=_json(out))

    def _recover_exports(self) -> None:
        """After a killed pass (see _record_exports): an export whose file is on the share
        exactly as noted gets the base the killed pass would have committed."""
        raw = self.index.meta("export_intents")
        if not raw:
            return
        fixed: list[tuple[ItemId, State]] = []
        for scope, key, stamp, node, digest, row_sig in orjson.loads(raw):
            it = layout.memory_id(scope, key)
            try:
                rel = layout.item_path(it, self.node)
                data, _ = self.share.read(rel)
                rec = formats.parse_memory(data, scope, key, self.s.limits.max_json_depth)
            except (FileRefused, FormatError, OSError, layout.LayoutError):
                continue
            if rec.trusted and (rec.stamp, rec.node, rec.digest) == (stamp, node, digest):
                fixed.append((it, State(stamp, node, digest, False, None, formats.digest_bytes(data), row_sig, rel)))
        with self.index.write() as db:
            for it, st in fixed:
                self.index.put_state(db, it, st)
            db.execute("DELETE FROM meshsync_meta WHERE k = 'export_intents'")
        if fixed:
            log.info("recovered the exports of an interrupted pass: %d item(s)", len(fixed))

    def _apply_share(self, it: ItemId, plan: Plan, sides: dict[str, Obs], st: State | None,
                     stats: PassStats, index_problems: dict) -> State | None:
        """Write the share side; return the state the item will have once the index is
        written too (None: leave the item for the next pass)."""
        win = plan.winner
        if plan.refused:
            index_problems[it] = (f"local write to {it} refused: this node may not write scope {it.scope!r}",
                                  "add the scope to scopes.write, or undo the write; it stays local meanwhile",
                                  "refused")  # its own error kind: status lists refused writes apart
            stats.refused += 1
            return None
        if win is None:
            return None
        sh_obs = sides.get(SHARE)
        src_payload = sides[plan.source].payload if plan.source in sides else None
        rel = layout.item_path(it, self.node)
        share_sig = st.share_sig if st else None
        share_hash = st.share_hash if st else None
        aux = st.aux if st else None
        if sh_obs is not None and sh_obs.payload is not None and isinstance(sh_obs.payload, ShareMem | ShareSkill):
            share_sig, share_hash = sh_obs.payload.sig, sh_obs.payload.hash
            if isinstance(sh_obs.payload, ShareSkill):
                aux = sh_obs.payload.extras
        elif sh_obs is None and (st is None or not self._base(st).same(win)):
            # The share could not be looked at (an unreadable file): whatever it holds is
            # not this new version, so its old bytes must not read as "unchanged" later.
            share_sig = share_hash = None
        digest = win.digest
        if SHARE in plan.write and plan.source in (INDEX, CACHE) and not win.deleted:
            hits = self._secret_hits(it, src_payload)
            if hits:
                index_problems[it] = (f"{it} not exported: it looks like a secret ({', '.join(hits)})",
                                      f"remove the secret, or allow it with secrets.allow_items [\"{it}\"] "
                                      f"or secrets.allow_rules {_json(hits)}; it stays local meanwhile", "refused")
                stats.refused += 1
                return None
        if SHARE in plan.write and it.kind == MEM and not win.deleted:
            # Written with the rest of the batch (_write_queued), compare-and-set included.
            data = formats.render_memory(it, self._winner_value(it, src_payload), digest, win.stamp, win.node)
            new = State(win.stamp, win.node, digest, False, None, formats.digest_bytes(data),
                        st.row_sig if st else None, rel, aux)
            self.queued.append((it, rel, data, self._mem_check(sh_obs), new))
            return new
        try:
            if SHARE in plan.write:
                if not self._share_unchanged(rel, sh_obs, it):
                    # Changed since we looked, or a file we could not read is in the way:
                    # keep the item queued so a local write is not forgotten (R2).
                    self.deferred.append(it)
                    return None
                if win.deleted:
                    self.share.write(layout.tombstone_path(it, self.node), formats.render_tombstone(it, win.stamp, win.node))
                    # Only a file we saw goes: one made since we saw none is a new write (R2).
                    if sh_obs is None or sh_obs.dirty or (sh_obs.version is not None and not sh_obs.version.deleted):
                        if it.kind == MEM:
                            self.share.remove(rel)
                        else:
                            self.share.remove_tree(rel)
                    share_sig = share_hash = None
                else:
                    digest, share_sig, share_hash, aux = self._write_skill(it, rel, win, src_payload, sh_obs, aux)
                    self.share.remove(layout.tombstone_path(it, self.node))
                stats.to_share += 1
                self.written.append(it)
        except FileRefused as exc:
            index_problems[it] = (f"cannot write {exc.problem.path} on the share: {exc.problem.reason}",
                                  exc.problem.hint)
            return None
        except OSError as exc:
            index_problems[it] = (f"cannot write {rel} on the share: {exc.strerror}",
                                  "check the share's permissions and free space; retried on the next pass")
            return None
        return State(win.stamp, win.node, digest, win.deleted, share_sig, share_hash,
                     st.row_sig if st else None, None if win.deleted else rel, aux)

    def _share_unchanged(self, rel: str, sh_obs: Obs | None, it: ItemId) -> bool:
        """Compare-and-set on the share: the file must still be what we observed, so a
        hand edit that lands between our read and our write is not overwritten."""
        if sh_obs is None:
            return True
        if it.kind == SKILL:
            # The file people edit is SKILL.md: an export must not replace one saved after
            # we looked (a hand edit lost without a trace, found by the chaos test).
            cur = self.share.lstat(f"{rel}/{layout.SKILL_MD}")
            if isinstance(sh_obs.payload, ShareSkill) and sh_obs.payload.cas is not None:
                return (sig_of(cur) if cur is not None else "") == sh_obs.payload.cas
            if isinstance(sh_obs.payload, ShareFile) and (sh_obs.payload.cas or sh_obs.payload.sig):
                # Not read this pass (its folder's signature was the recorded one): it must
                # still be what the walk saw.
                return (self.share.walk_skill(rel, Walk(), time.time_ns()).sig
                        == (sh_obs.payload.cas or sh_obs.payload.sig))
            if sh_obs.payload is None and (sh_obs.version is None or sh_obs.version.deleted):
                return cur is None  # we saw no folder: one made since is a new write
            return True
        check = self._mem_check(sh_obs)
        return check is None or check(self.share.lstat(rel))

    @staticmethod
    def _mem_check(sh_obs: Obs | None) -> Check | None:
        """The compare-and-set of a memory file: whether its current lstat is still the
        file the pass observed (sh_obs; None: not looked at, no check)."""
        if sh_obs is None:
            return None
        sig = getattr(sh_obs.payload, "sig", False)
        if sig is not False:
            # Compare with the file as read even when it was modified in the last seconds
            # (its ``sig`` is None then): a hand save landing between our read of the
            # previous save and our rewrite was overwritten and lost, unrecorded (R2, R3).
            sig = getattr(sh_obs.payload, "cas", None) or sig
            if sig is None:
                return _present
            return lambda cur: cur is not None and sig_of(cur) == sig
        if sh_obs.version is None or sh_obs.version.deleted:
            return _absent
        return _present

    def _secret_hits(self, it: ItemId, payload: Any) -> list[str]:
        """Secret-guard rules a local write matches, less the allowed ones."""
        g = self.s.secrets
        if not g.guard or str(it) in g.allow_items:
            return []
        if isinstance(payload, IndexMem | CacheEntry):
            hits = secretguard.scan_value(payload.value, it.key)
        elif isinstance(payload, IndexSkill):
            hits = secretguard.scan_bytes((payload.row.content or "").encode("utf-8", "surrogatepass"))
        elif isinstance(payload, CacheSkill):
            hits = secretguard.scan_bytes(payload.content.encode("utf-8", "surrogatepass"))
        else:
            return []
        return [h for h in hits if h not in g.allow_rules]

    def _winner_value(self, it: ItemId, payload: Any) -> Any:
        """The winning value; from the index row when the winner was not read this pass."""
        if isinstance(payload, CacheEntry):
            return payload.value
        if isinstance(payload, IndexMem):
            return payload.value
        if isinstance(payload, ShareMem):
            return payload.rec.value
        row = self.index.memory_rows([it]).get(it)
        if row is None:
            raise FileRefused(Problem(layout.item_path(it, self.node), "no value to write for this item", ""))
        return formats.loads(row.value)

    def _write_skill(self, it: ItemId, rel: str, win: Version, payload: Any, sh_obs: Obs | None,
                     aux: str | None) -> tuple[str, str | None, str | None, str | None]:
        if isinstance(payload, IndexSkill):
            content = payload.row.content.encode("utf-8", "surrogatepass") if payload.row.content is not None else None
            path = payload.row.path
        elif isinstance(payload, ShareSkill):
            content, path = payload.content, payload.path
        elif isinstance(payload, CacheSkill):
            content, path = payload.content.encode("utf-8", "surrogatepass"), None
        else:  # the winner was not read this pass (e.g. the base beat an older share version)
            row = self.index.skill_rows([it]).get(it)
            if row is None:
                raise FileRefused(Problem(rel, "no content to write for the skill", ""))
            payload = IndexSkill(row)
            content = row.content.encode("utf-8", "surrogatepass") if row.content is not None else None
            path = row.path
        extras = aux or ""
        if isinstance(sh_obs.payload if sh_obs else None, ShareSkill):
            extras = sh_obs.payload.extras  # type: ignore[union-attr]
        digest = formats.skill_digest(content, path, extras)
        if not isinstance(payload, ShareSkill):
            if content is not None:
                self.share.write(f"{rel}/{layout.SKILL_MD}", content)
            else:
                self.share.remove(f"{rel}/{layout.SKILL_MD}")
        self.share.write(f"{rel}/{layout.SKILL_JSON}", formats.render_skill_json(it, path, digest, win.stamp, win.node))
        return digest, None, digest, extras

    def _apply_index(self, pending: list[tuple[ItemId, Plan, dict[str, Obs], State | None]],
                     state: dict[ItemId, State], stats: PassStats,
                     index_problems: dict) -> tuple[bool, dict[str, str | None]]:
        changed_mem = False
        changed_skills: dict[str, str | None] = {}
        idx = self.index
        states: list[tuple[ItemId, State]] = []  # written with one executemany, see below
        with idx.write() as db:
            # Rows we saw absent, inserted in one statement; a row a foreign insert put
            # there first is left alone and not in bulk_done, so the per-row path below
            # skips it until the next pass.
            bulk_done = self._bulk_insert(db, pending)
            # The rows the compare-and-set below reads, read together (each item's own
            # row is only written by its own turn of the loop, so they cannot change).
            cur_rows = idx.memory_rows([
                it for it, plan, sides, new in pending
                if new is not None and it.kind == MEM and not _absent_in_index(plan, sides)], db)
            for it, plan, sides, new in pending:
                if new is None:
                    continue
                win = plan.winner
                assert win is not None
                ix = sides.get(INDEX)
                seen_sig = None
                if ix is not None and ix.version is not None:
                    seen_sig = ix.payload.row.sig if ix.payload is not None else (state[it].row_sig if it in state else None)
                # A row we saw absent is inserted with ON CONFLICT DO NOTHING below, which
                # is its own compare-and-set: no read needed (the bulk-import path).
                fast_insert = it.kind == MEM and _absent_in_index(plan, sides)
                if fast_insert:
                    cur_sig = None
                elif it.kind == MEM:
                    r = cur_rows.get(it)
                    cur_sig = r.sig if r is not None else None
                else:
                    cur_sig = idx.current_row_sig(db, it)
                if ix is not None and cur_sig != seen_sig:
                    # A foreign write landed since we looked: the row waits for the next
                    # pass.  An export of the row we saw, now on the share, is the base all
                    # the same, or it looks concurrent with the row's newer write and, within
                    # the same second, could beat it: a committed write lost (R1, R2).
                    if SHARE in plan.write and plan.source == INDEX:
                        new.row_sig = seen_sig
                        states.append((it, new))
                        state[it] = new
                    continue
                row_sig = cur_sig
                src = sides[plan.source].payload if plan.source in sides else None
                if win.deleted:
                    if cur_sig is not None:
                        rid = idx.delete_row(db, it)
                        if rid is not None:
                            self.cache_dirty_ids.add(rid)
                        stats.to_index += 1
                    row_sig = None
                    stats.deleted += 1 if base_live(state.get(it)) else 0
                elif it.kind == MEM:
                    text = _mem_text(src)
                    if text is None:
                        if cur_sig is None:
                            continue
                    else:
                        want = memory_row_sig(text, win.node, win.stamp // 1000)
                        if fast_insert:
                            if (it not in bulk_done
                                    and not idx.insert_memory_if_absent(db, it, text, win.node, win.stamp // 1000)):
                                continue  # a foreign insert won the race: next pass
                            stats.to_index += 1
                        elif ix is not None and ix.version is not None and ix.version.same(win):
                            # The row holds the winning version already, perhaps formatted
                            # otherwise by its writer: left as it is (rewriting it to our
                            # canonical text cost an UPDATE and its FTS work per exported row
                            # when the next pass re-read the fresh files).
                            want = cur_sig
                        elif want != cur_sig:
                            idx.set_memory(db, it, text, win.node, win.stamp // 1000, cur_sig is not None)
                            stats.to_index += 1
                        row_sig = want
                else:
                    if isinstance(src, IndexSkill):
                        content, path = src.row.content, src.row.path
                        have = True
                    elif isinstance(src, ShareSkill):
                        content = src.content.decode("utf-8") if src.content is not None else None
                        path, have = src.path, True
                    elif isinstance(src, CacheSkill):
                        content, path, have = src.content, None, True
                    else:
                        content = path = None
                        have = False
                    if have:
                        want = skill_row_sig(content, path, win.node, win.stamp // 1000)
                        if want != cur_sig:
                            idx.set_skill(db, it, content, path, win.node, win.stamp // 1000, cur_sig is not None)
                            stats.to_index += 1
                        row_sig = want
                    elif cur_sig is None:
                        continue
                new.row_sig = row_sig
                old = state.get(it)
                moved = old is None or not self._base(old).same(win)  # type: ignore[union-attr]
                if moved:
                    if len(stats.changed) < CHANGED_SAMPLE:
                        stats.changed.append(str(it))
                    if it.kind == MEM and not win.deleted and (old is None or old.deleted):
                        self.young_added.add(cacheside.cache_key(it))
                    if it.kind == MEM and old is not None and not old.deleted:
                        self.cache_replaced.setdefault(cacheside.cache_key(it),
                                                       [old.digest, old.stamp // 1000, old.node])
                if moved and self.readable(it):
                    if it.kind == MEM:
                        changed_mem = True
                    else:
                        changed_skills[it.key] = None if win.deleted else _skill_content(src, it, db)
                for side, v, payload in plan.beaten:
                    idx.add_conflict(db, it, side, v.stamp, v.node, _loser_text(payload), win.stamp,
                                     win.node, win.deleted)
                    stats.conflicts += 1
                    log.warning("conflict on %s: version from %s (%s) beaten by %s (%s)", it, v.node,
                                _fmt_ms(v.stamp), win.node, _fmt_ms(win.stamp))
                states.append((it, new))
                state[it] = new
            idx.put_states(db, states)
            if changed_mem or changed_skills:
                idx.set_meta(db, cache_owed="1")  # with the rows it is owed for; see sync()
            db.execute("DELETE FROM meshsync_meta WHERE k = 'export_intents'")  # see _record_exports
        return changed_mem, changed_skills

    def _bulk_insert(self, db: sqlite3.Connection,
                     pending: list[tuple[ItemId, Plan, dict[str, Obs], State | None]]) -> set[ItemId]:
        """Insert in one statement the memory rows of ``pending`` that the index did not
        have when we looked (the bulk-import path of _apply_index).  Returns the items
        inserted.  A row a foreign client inserted since we looked is left as it is (ON
        CONFLICT DO NOTHING) and its item is not returned: the per-row compare-and-set
        then skips it, and the next pass syncs the foreign row."""
        rows: dict[ItemId, tuple[str, str, str, str, int]] = {}
        for it, plan, sides, new in pending:
            win = plan.winner
            if new is None or win is None or it.kind != MEM or not _absent_in_index(plan, sides):
                continue
            text = _mem_text(sides[plan.source].payload if plan.source in sides else None)
            if text is not None:
                rows[it] = (it.scope, it.key, text, win.node, win.stamp // 1000)
        if len(rows) < 2:
            return set()
        # Row ids only grow (AUTOINCREMENT) and nobody else writes inside our transaction:
        # the rows above this id once the statement ran are the ones it inserted.  (A
        # savepoint to undo the batch instead cost a third of the insert: SQLite keeps a
        # statement journal of every page the batch touches.)
        top = db.execute("SELECT max(id) FROM mesh_memory").fetchone()[0] or 0
        n = self.index.insert_memory_rows_if_absent(db, list(rows.values()))
        if n == len(rows):
            return set(rows)
        got = {layout.memory_id(scope, key) for scope, key in
               db.execute("SELECT scope, key FROM mesh_memory WHERE id > ?", (top,))}
        log.debug("bulk insert: %d of %d rows appeared meanwhile and were left alone", len(rows) - n, len(rows))
        return got & rows.keys()

    # --- finish --------------------------------------------------------------------------------------

    def _finish(self, walk: Walk, problems: list[Problem], index_problems: dict, refused_read: list[ItemId],
                seq: int, state: dict[ItemId, State], changed_mem: bool,
                changed_skills: dict[str, str | None], stats: PassStats, now_ms: int, full: bool,
                cache_unreadable: bool = False, owed: bool = False) -> None:
        idx = self.index
        all_problems = walk.problems + problems
        with idx.write() as db:
            if full:
                idx.replace_errors(db, "file", [(p.path, p.reason, p.hint) for p in all_problems])
            else:
                for p in all_problems:
                    idx.replace_errors_one(db, "file", p.path, (p.reason, p.hint))
                bad = {p.path for p in all_problems}
                for rel in self.looked_ok:
                    if rel not in bad:
                        idx.replace_errors_one(db, "file", rel, None)
            for it in refused_read:
                index_problems[it] = (f"index row {it} is in a scope this node may not read",
                                      "it stays local and is not exported; add the scope to scopes.read to sync it",
                                      "refused")
            fine: list[str] = []  # rows with no problem: their old errors go, in one statement
            for it, prob in index_problems.items():
                if prob is None:
                    fine.append(f"index:{it}")
                else:
                    idx.replace_errors_one(db, prob[2] if len(prob) > 2 else "index", f"index:{it}", prob)
            idx.clear_errors(db, fine)
            idx.ack_outbox(db, seq)
            # A refused or invalid row is not dropped: it stays queued, is reported by
            # every pass, and goes out once fixed (e.g. its scope made writable) (R9, R2).
            idx.requeue(db, sorted({it for it, prob in index_problems.items() if prob} | set(self.deferred)))
            if self.index.meta("index_scanned") != "1":
                idx.set_meta(db, index_scanned="1")
            if full:
                horizon = now_ms - int(self.s.tombstone_retention_days * 86_400_000)
                db.execute("DELETE FROM meshsync_state WHERE deleted = 1 AND stamp < ?", (horizon,))
                chorizon = now_ms - int(self.s.conflict_retention_days * 86_400_000)
                db.execute("DELETE FROM meshsync_conflicts WHERE at < ?", (chorizon,))
                idx.check_fts(db)
        if self.written:
            journal.append(self.share, self.node, self.written)
        stats.errors = len(all_problems) + sum(1 for p in index_problems.values() if p)
        for p in all_problems:
            log.debug("skipped %s: %s", p.path, p.reason)

        cache_sig = idx.meta("cache_sig")
        if owed:  # a killed pass did not refresh the cache (R7): all of it, now
            changed_mem = True
            rows = {n: c for n, c, _p, _s, _u in idx.all_skill_rows()}
            gone = {it.key: None for it, st in idx.load_state().items()
                    if it.kind == SKILL and st.deleted and it.key not in rows}
            changed_skills = {**gone, **rows, **changed_skills}
        if cache_unreadable:
            # A tool is writing mesh-memory.json (or left it broken): never overwrite it;
            # what this pass added stays "young" until the cache is written again.
            young = set(orjson.loads(idx.meta("cache_young") or "[]")) | self.young_added
            # The file still holds what our last write put there: the versions it had
            # before this pass stay the ones a stale copy would carry.
            replaced = {**self.cache_replaced, **orjson.loads(idx.meta("cache_prev") or "{}")}
            with idx.write() as db:
                idx.set_meta(db, cache_young=_json(sorted(young)), cache_prev=_json(replaced))
        elif changed_mem or cache_sig is None or cache_sig != self.cache.memory_sig():
            self._tick("writing cache", 0, None)
            # A full pass renders every entry again (and so mends anything a patch missed).
            sig = self.write_cache_memory(patch=not full)
            stats.cache_written = True
            with idx.write() as db:
                idx.set_meta(db, cache_sig=sig or "", cache_young=_json(sorted(self.young_added)),
                             cache_prev=_json(self.cache_replaced))
        raced: set[str] = set()
        before = self.cache_skills_before
        if changed_skills or not self.cache.skills_dir.exists():
            live = {name: c for name, c in changed_skills.items() if c is not None}
            removed = [name for name, c in changed_skills.items() if c is None]
            if not self.cache.skills_dir.exists():
                live = {n: c for n, c, _p, _s, _u in
                        ((r[0], r[1], r[2], r[3], r[4]) for r in idx.all_skill_rows()) if c is not None}
            # A Phase 1 tool may have written a skill file while this pass ran (after it
            # looked): leave that file alone, the next pass imports it.  Removing or
            # overwriting it lost the tool's write, unrecorded (R2; found by the chaos test).
            if before is not None:
                now_stats = self._cache_skill_stats()
                raced = {n for n in (*live, *removed) if now_stats.get(self.cache.skill_path(n).name)
                         != before.get(self.cache.skill_path(n).name)}
                live = {n: c for n, c in live.items() if n not in raced}
                removed = [n for n in removed if n not in raced]
            self.cache.sync_skills(live, removed)
            self.cache.skills_dir.mkdir(parents=True, exist_ok=True)
            ours = {self.cache.skill_path(n).name for n in (*live, *removed)}
        else:
            ours = set()
        if before is None:
            ssig = "" if raced else self.cache_skills_sig()
        else:
            # The signature recorded as "seen" must not cover a file a tool wrote while
            # this pass ran and that is not ours: the next pass would skip it and the
            # tool's write was never imported (a skill dropped just after the cache
            # refresh was lost).  "" makes the next pass list mesh/skills/ again.
            now_stats = self._cache_skill_stats()
            foreign = any(now_stats.get(f) != before.get(f) for f in now_stats.keys() | before.keys()
                          if f not in ours)
            ssig = "" if raced or foreign else _skills_sig(now_stats)
        if ssig != idx.meta("cache_skills_sig"):
            with idx.write() as db:
                idx.set_meta(db, cache_skills_sig=ssig or "")
        self._skill_folders(changed_skills, full)
        stats.seconds = round(time.monotonic() - self.pass_t0, 4)  # as recorded for `status`
        with idx.write() as db:
            idx.set_meta(db, last_sync=str(time.time()), share_status="available", share_reason="",
                         last_pass=_json(stats.as_dict()), cache_owed="0")
            if stats.changed or stats.to_index or stats.deleted:
                idx.set_meta(db, last_change=_json({"at": time.time(), "items": stats.changed[:10],
                                                     "to_share": stats.to_share, "to_index": stats.to_index,
                                                     "deleted": stats.deleted}))

    def _skill_folders(self, changed: dict[str, str | None], full: bool) -> None:
        """Mirror skill folders into cache.skill_dirs, and warn about SKILL.md files
        OpenClaw would not load (the skill is still synced)."""
        targets = self.s.cache.skill_dirs
        if full:
            rows = {name: content for name, content, _p, _n, _u in self.index.all_skill_rows()}
            todo: dict[str, str | None] = {n: layout.item_path(layout.skill_id(n), self.node) for n in rows}
        else:
            rows = {n: c for n, c in changed.items()}
            todo = {n: (layout.item_path(layout.skill_id(n), self.node) if c is not None else None)
                    for n, c in changed.items()}
        if not todo:
            return
        warns: list[tuple[str, str, str]] = []
        for name, content in rows.items():
            if content is None:
                continue
            why = skilldirs.frontmatter_problem(content.encode("utf-8", "surrogatepass"))
            path = f"skill:{name}"
            if why:
                warns.append((path, why, "OpenClaw may not load it; add --- name: ... description: ... --- "
                              "at the top of SKILL.md (it is synced anyway)"))
        if targets:
            for w in skilldirs.mirror(self.share.root, targets, todo, set(rows) if full else None):
                warns.append((w.path, w.reason, w.hint))
        with self.index.write() as db:
            if full:
                self.index.replace_errors(db, "warning", warns)
            else:
                for n in todo:
                    self.index.replace_errors_one(db, "warning", f"skill:{n}", None)
                for path, why, hint in warns:
                    self.index.replace_errors_one(db, "warning", path, (why, hint))

    def _cache_bad(self) -> list[str]:
        """Cache keys of rows reported as bad: their entries keep the cache's last good version."""
        return sorted({r["path"][6:] for r in self.index.errors() if r["kind"] in ("index", "refused")})

    def _cache_scopes(self) -> list[str]:
        return [sc for sc in self.index.memory_scopes() if self.s.may_read(sc) and layout.valid_scope(sc)]

    def _cache_document(self) -> Iterator[bytes]:
        """The whole of mesh-memory.json, in pieces (for tests: the pass writes slices)."""
        bad = self._cache_bad()
        with self.index.read():
            slices = list(self.index.cache_slices(self._cache_scopes(), bad, self.cache_step))
        for piece in cache_document(slices, self._cache_kept(bad)):
            assert isinstance(piece, bytes)
            yield piece

    def _cache_kept(self, bad: list[str]) -> list[bytes]:
        if not bad:
            return []
        old = self.cache.read_memory()
        return [orjson.dumps(ck) + b":" + orjson.dumps(old[ck]) for ck in bad if ck in old]

    def write_cache_memory(self, patch: bool = False) -> str | None:
        """Rewrite mesh-memory.json from the index; returns its stat signature.  With
        ``patch``, only the slices holding rows that may have changed since our last
        write are rendered again, when that file is still ours and the rows add up."""
        dirty, dirty_ids = set(self.cache_dirty), set(self.cache_dirty_ids)
        dv = self.index.data_version()  # before the snapshot: a later foreign commit moves it
        try:
            bad = self._cache_bad()
            sig = self._patch_cache(dirty, dirty_ids) if patch and not bad else None
            self.cache_patched = sig is not None
            if sig is None:
                with self.index.read():
                    scopes = self._cache_scopes()
                    # One snapshot: the slices are written as SQLite renders them.
                    sig, self.cache_layout = self.cache.write_memory_slices(
                        self.index.cache_slices(scopes, bad, self.cache_step), tuple(scopes), self.cache_step,
                        self._cache_kept(bad))
        except sqlite3.Error as exc:  # e.g. a BLOB where text belongs: the Python path copes
            log.debug("cache rendered in Python: %s", exc)
            self.cache_layout = None
            self.cache_patched = False
            sig = self.cache.write_memory(render_memory(self._cache_entries()))
        if self.cache_layout is not None:
            self.cache_layout.data_version = dv
        self.cache_dirty -= dirty
        self.cache_dirty_ids -= dirty_ids
        return sig

    def _patch_cache(self, dirty: set[ItemId], dirty_ids: set[int]) -> str | None:
        lay = self.cache_layout
        if lay is None:
            return None
        fd = self.cache.open_if_ours(lay)
        if fd is None:
            return None
        try:
            with self.index.read():
                scopes = self._cache_scopes()
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
            sig, self.cache_layout = self.cache.write_memory_slices(slices, lay.scopes, lay.step, [])
        except SpanGone:
            return None
        finally:
            close_behind(fd)  # the last reference to the replaced file: freeing it takes a while
        return sig

    def _cache_entries(self) -> dict[str, dict[str, Any]]:
        bad = set(self._cache_bad())
        old: dict[str, Any] | None = None
        out: dict[str, dict[str, Any]] = {}
        with self.index.read():
            for scope, key, value, node_id, updated_at in self.index.all_memory_rows():
                if not self.s.may_read(scope) or not layout.valid_scope(scope):
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

    def record_unavailable(self, reason: str) -> None:
        with self.index.write() as db:
            self.index.set_meta(db, share_status="unavailable", share_reason=reason,
                                share_checked=str(time.time()))

    # --- local writes (CLI) -------------------------------------------------------------------------

    def put_memory(self, scope: str, key: str, value: Any) -> None:
        text = formats.canonical(value).decode("utf-8")
        now = int(time.time())
        with self.index.db as db:  # a plain write, exactly as any other client would make it
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) VALUES (?,?,?,?,?)"
                " ON CONFLICT(scope, key) DO UPDATE SET value = excluded.value, node_id = excluded.node_id,"
                " updated_at = excluded.updated_at", (scope, key, text, self.node, now))

    def delete_item(self, item: ItemId) -> bool:
        with self.index.db as db:
            db.execute("BEGIN IMMEDIATE")
            if item.kind == MEM:
                cur = db.execute("DELETE FROM mesh_memory WHERE scope = ? AND key = ?", (item.scope, item.key))
            else:
                cur = db.execute("DELETE FROM mesh_skills WHERE name = ?", (item.key,))
            return cur.rowcount > 0

    def put_skill(self, name: str, content: str | None, path: str | None) -> None:
        now = int(time.time())
        with self.index.db as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT INTO mesh_skills (name, source_node, content, path, updated_at) VALUES (?,?,?,?,?)"
                " ON CONFLICT(name) DO UPDATE SET source_node = excluded.source_node, content = excluded.content,"
                " path = excluded.path, updated_at = excluded.updated_at", (name, self.node, content, path, now))


def effective_order(obs: Obs, st: State | None) -> tuple:
    """Order of an observation as reconcile would see it (fresh writes come after base)."""
    from meshsync.reconcile import effective

    base = Version(st.stamp, st.node, st.digest, st.deleted) if st is not None else None
    v = effective(obs, base, 0, "")
    return v.order if v is not None else (-1,)


def _present(cur: os.stat_result | None) -> bool:
    return cur is not None


def _absent(cur: os.stat_result | None) -> bool:
    return cur is None


def base_live(st: State | None) -> bool:
    return st is not None and not st.deleted


def _decoded(segment: str) -> str | None:
    try:
        return layout.decode(segment)
    except layout.LayoutError:
        return None


def _absent_in_index(plan: Plan, sides: dict[str, Obs]) -> bool:
    """A live winner for an item the index did not have when we looked: inserted with ON
    CONFLICT DO NOTHING, its own compare-and-set (the fast path of _apply_index)."""
    ix = sides.get(INDEX)
    return ix is not None and ix.version is None and plan.winner is not None and not plan.winner.deleted


def _mem_text(src: Any) -> str | None:
    """The index value text of a memory winner's payload (None: not read this pass)."""
    if isinstance(src, IndexMem):
        return src.row.value
    if isinstance(src, ShareMem):
        return src.rec.text.decode("utf-8")
    if isinstance(src, CacheEntry):
        return src.text.decode("utf-8")
    return None


def _skill_content(src: Any, it: ItemId, db: Any) -> str | None:
    if isinstance(src, IndexSkill):
        return src.row.content
    if isinstance(src, CacheSkill):
        return src.content
    if isinstance(src, ShareSkill):
        return src.content.decode("utf-8") if src.content is not None else None
    r = db.execute("SELECT content FROM mesh_skills WHERE name = ?", (it.key,)).fetchone()
    return r[0] if r else None


def _loser_text(payload: Any) -> str | None:
    if isinstance(payload, CacheEntry):
        return payload.text.decode("utf-8")
    if isinstance(payload, CacheSkill):
        return payload.content
    if isinstance(payload, IndexMem):
        return payload.text
    if isinstance(payload, ShareMem):
        return payload.rec.text.decode("utf-8")
    if isinstance(payload, IndexSkill):
        return payload.row.content
    if isinstance(payload, ShareSkill):
        return payload.content.decode("utf-8") if payload.content is not None else None
    return None


def _fmt_ms(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def _skills_sig(stats: dict[str, tuple[int, int, int]]) -> str:
    """What the daemon compares to notice a tool writing mesh/skills/: names, mtimes, sizes."""
    return formats.digest_bytes(repr(sorted((n, m, z) for n, (m, z, _i) in stats.items())).encode())


def _json(obj: Any) -> str:
    return orjson.dumps(obj).decode()
