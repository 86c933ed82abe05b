"""The types passed between the phases of a pass, documented once.

A pass runs **detect -> reconcile -> propagate -> commit** (docs/architecture.md):

* detection turns what each replica (share, index, cache) holds into one :class:`Obs`
  per item and side, compared against the item's :class:`State` (what the last pass
  synced);
* :func:`meshsync.reconcile.reconcile` turns an item's observations and its base
  (``State`` as a :class:`Version`) into a :class:`Plan`;
* propagation carries each plan's winner to the sides it names, compare-and-set;
* the commit records what the pass saw and did (problems, the outbox, last_pass).

Everything the pass carries from one phase to the next sits in one :class:`Pass`; the
replicas know none of the others and meet only in these types.  An observation's
``payload`` (meshsync.payloads) is carried to propagation and asked questions there;
no phase branches on its class.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

# --- items ---------------------------------------------------------------------------------

MEM = "m"
SKILL = "s"


class ItemId(NamedTuple):
    """One memory entry (kind "m", scope, key) or one skill (kind "s", "", name).
    A named tuple: hashed and compared in C, which a pass over 100k items notices."""

    kind: str
    scope: str
    key: str

    def __str__(self) -> str:
        return f"{self.scope}:{self.key}" if self.kind == MEM else f"skill:{self.key}"


# --- versions, observations, plans (the vocabulary of meshsync.reconcile) -----------------

SHARE = "share"
INDEX = "index"
CACHE = "cache"
SIDES = (SHARE, INDEX, CACHE)
# A conflict copy Syncthing kept of the item's share file ("copy:<its share path>"): one
# more observation of the share, taken as it is, never written (reconcile.py).
COPY = "copy:"


def is_copy(side: str) -> bool:
    return side.startswith(COPY)


@dataclass(frozen=True, slots=True)
class Version:
    """A value (``deleted=False``, with a content ``digest``) or a tombstone, totally
    ordered by ``(stamp, node, not deleted, digest)`` (R1: every node picks the same)."""

    stamp: int  # milliseconds since the epoch
    node: str
    digest: str = ""  # content digest; "" for a tombstone
    deleted: bool = False

    @property
    def order(self) -> tuple[int, str, bool, str]:
        return (self.stamp, self.node, not self.deleted, self.digest)

    def same(self, other: Version | None) -> bool:
        return other is not None and self.order == other.order


@dataclass(frozen=True, slots=True)
class Obs:
    """One side's current state of an item.  ``version`` None means absent."""

    version: Version | None
    trusted: bool = True
    payload: Any = field(default=None, compare=False)  # a payloads.Payload: carried to apply, never inspected
    dirty: bool = False  # the side holds the version but needs rewriting (stale companion file)


ABSENT = Obs(None)


@dataclass(slots=True)
class Plan:
    """What to do for one item."""

    winner: Version | None  # None: the item exists nowhere and never did
    source: str | None  # the side whose payload holds the winner (None when base/tombstone)
    write: set[str]  # sides that must be brought to the winner
    beaten: list[tuple[str, Version, Any]]  # (side, version, payload) kept in history
    refused: list[tuple[str, Version]] = field(default_factory=list)

    @property
    def quiet(self) -> bool:
        return not self.write


# --- the synced state (the base of reconciliation, kept in the index) ---------------------


@dataclass(slots=True)
class State:
    """What the last pass synced for one item, on every side (table meshsync_state)."""

    stamp: int
    node: str
    digest: str
    deleted: bool
    share_sig: str | None
    share_hash: str | None
    row_sig: str | None
    rel: str | None = None
    aux: str | None = None


def base_of(st: State | None) -> Version | None:
    """The version every side held after the last pass (reconcile's base), if any."""
    return None if st is None else Version(st.stamp, st.node, st.digest, st.deleted)


def base_live(st: State | None) -> bool:
    return st is not None and not st.deleted


# --- problems -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """One file meshsync refuses to import, with what the user can do about it."""

    path: str  # share-relative, or an index/cache location
    reason: str
    hint: str = ""


# An index row's problem: (reason, hint) or (reason, hint, kind); None: the row is fine
# (its old error goes).  Kind "refused" is listed apart by `status`.
RowProblem = tuple[str, ...] | None


# --- what the index hands the other replicas (neutral types: the index knows no replica) --


CACHE_STEP = 1024  # row ids per slice of mesh-memory.json (cache.CacheLayout)


class Slice(NamedTuple):
    """The entries of the rows with ids in ``(n * step, (n + 1) * step]``: how many rows
    and the sum of their ids (which rows), and their lines (None when there are none;
    bytes rendered by SQLite, or a span of the cache file we wrote last)."""

    n: int
    rows: int
    idsum: int
    body: Any


Packed = tuple[int, int, int, int]  # st_mtime_ns, st_size, st_ino, st_mode of a regular file


def sig_text(mtime_ns: int, size: int, ino: int, mode: int) -> str:
    """A share file's stat signature."""
    # The permission bits too: a file made unreadable (chmod) is looked at again and
    # reported, not silently taken as unchanged (R6).  (walk_memory_dir spells this
    # out inline: it runs once per file of a 100k walk.)
    return f"{mtime_ns}:{size}:{ino}:{mode & 0o7777:o}"


def unpack_sig(sig: Packed | str | None) -> str | None:
    """The signature string of a packed signature (see KnownSigs); anything else as is."""
    return sig_text(*sig) if type(sig) is tuple else sig  # type: ignore[return-value]


class KnownSigs:
    """The share signature the last pass recorded for each file, kept by folder and
    name (the walk looks names up without building a path per file); read as a mapping
    rel -> signature everywhere else.

    The walk packs the signature of each memory file it finds unchanged into the tuple
    ``(st_mtime_ns, st_size, st_ino, st_mode)``, so that the next walk with the same map
    (it is kept while nobody writes the index) compares a stat with a tuple instead of
    formatting a string per file (a fifth of a 100k no-change pass).  Packing when the
    map is built instead cost 0.3 s per rebuild at 100k, paid by every full pass after a
    write.  Read through the mapping, packed signatures are strings again."""

    def __init__(self, rows: Iterable[tuple[str, str | None]] = ()) -> None:
        self.folders: dict[str, dict[str, Packed | str | None]] = {}
        self._n = 0
        for rel, sig in rows:
            folder, _, name = rel.rpartition("/")
            d = self.folders.get(folder)
            if d is None:
                d = self.folders[folder] = {}
            d[name] = sig
            self._n += 1

    def get(self, rel: str, default: object = None) -> object:
        folder, _, name = rel.rpartition("/")
        return unpack_sig(self.folders.get(folder, {}).get(name, default))  # type: ignore[arg-type]

    def __getitem__(self, rel: str) -> str | None:
        folder, _, name = rel.rpartition("/")
        return unpack_sig(self.folders[folder][name])

    def __contains__(self, rel: object) -> bool:
        return isinstance(rel, str) and self.get(rel, self) is not self

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[str]:
        for folder, names in self.folders.items():
            for name in names:
                yield f"{folder}/{name}"


# --- what detection found on the share and in the cache --------------------------------------


@dataclass(slots=True)
class FileEntry:
    rel: str
    sig: str
    settled: bool


@dataclass(slots=True)
class SkillDir:
    rel: str  # skills/<enc>
    files: list[FileEntry]  # every regular file, relative to the share
    sig: str
    settled: bool
    copies: list[FileEntry] = field(default_factory=list)  # conflict copies (not in files nor sig)


@dataclass(slots=True)
class Walk:
    """What a stat walk of the share found (replicas/share/walk.py)."""

    # Memory files: those the last pass recorded with this very signature (settled) are
    # only named in ``same`` (folder -> names); the others, to be read, are in ``memory``.
    # Comparing during the walk spares a FileEntry, a path string and a second loop per
    # file at 100k files.
    known: KnownSigs = field(default_factory=KnownSigs)
    # Appended to by the walk (a list.append per file costs less than a set.add: 5 % of a
    # 100k no-change pass), made a set on the first question about that folder; a pass
    # that changes nothing asks none.
    same: dict[str, list[str]] = field(default_factory=dict)
    _same_sets: dict[str, set[str]] = field(default_factory=dict)
    memory: dict[str, FileEntry] = field(default_factory=dict)  # rel -> entry
    skills: dict[str, SkillDir] = field(default_factory=dict)  # rel -> dir
    tombstones: dict[str, FileEntry] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # rel dirs that could not be listed
    temporaries: list[str] = field(default_factory=list)  # our temporary files seen (never items)
    # Memory files' conflict copies (Syncthing), never items: versions of the file they
    # copy (replicas/share/copies.py).  Settled means neither modified nor renamed lately.
    copies: dict[str, FileEntry] = field(default_factory=dict)

    def is_unknown(self, rel: str) -> bool:
        return any(rel == u or rel.startswith(u + "/") for u in self.unknown)

    def is_same(self, rel: str) -> bool:
        folder, _, name = rel.rpartition("/")
        names = self._same_sets.get(folder)
        if names is None or len(names) != len(self.same.get(folder, ())):  # new names since
            names = self._same_sets[folder] = set(self.same.get(folder, ()))
        return name in names

    def same_count(self) -> int:
        return sum(len(names) for names in self.same.values())

    def has_memory(self, rel: str) -> bool:
        return rel in self.memory or self.is_same(rel)

    def memory_entry(self, rel: str) -> FileEntry | None:
        if self.is_same(rel):
            return FileEntry(rel, self.known[rel] or "", True)
        return self.memory.get(rel)

    def add_memory(self, fe: FileEntry) -> None:
        if fe.settled and self.known.get(fe.rel) == fe.sig:
            folder, _, name = fe.rel.rpartition("/")
            self.same.setdefault(folder, []).append(name)
        else:
            self.memory[fe.rel] = fe


@dataclass(slots=True)
class CacheSide:
    """What detection found in the OpenClaw cache (replicas/cache/detect.py)."""

    obs: dict[ItemId, Obs] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    unreadable: bool = False  # do not rewrite mesh-memory.json this pass
    looked: bool = True  # the pass looked at the cache (its problems are the current ones)
    # What a tool's write did that the pass refused (a mass drop): reported like a share
    # file's problem, until the next full pass, while ``problems`` describe the cache as
    # it is now (they go once it is fine again, R12).
    events: list[Problem] = field(default_factory=list)


class States(Protocol):
    """The base of every item, as the pass reads and updates it: the index's StateView
    (replicas/index/store.py), a dict loaded on first use (negative answers remembered)."""

    def get(self, it: ItemId, default: State | None = None) -> State | None: ...
    def __getitem__(self, it: ItemId) -> State: ...
    def __setitem__(self, it: ItemId, st: State) -> None: ...
    def __contains__(self, it: object) -> bool: ...
    def want(self, items: Iterable[ItemId], total: int, looking_at: int | None = None) -> None: ...
    def prefetch(self, items: Iterable[ItemId]) -> None: ...
    def update(self, states: dict[ItemId, State]) -> None: ...


# --- one pass ------------------------------------------------------------------------------

CHANGED_SAMPLE = 20  # items a pass names in its stats (status --json's last_pass)


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
    held: int = 0  # deletes by absence held (engine/hold.py, R11)
    cache_written: bool = False
    full: bool = True
    changed: list[str] = field(default_factory=list)  # the first CHANGED_SAMPLE items that changed

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__slots__ if k != "changed"}
        d["changed_sample"] = self.changed
        return d


@dataclass(slots=True)
class Pass:
    """Everything one pass carries from a phase to the next.

    Made by the façade (engine/node.py) before detection; each phase reads what the
    earlier ones left and adds its own.  Nothing here outlives the pass except what the
    commit writes to the index (and ``deferred``, which the daemon reads afterwards)."""

    now_ms: int  # the pass's clock: fresh local writes are stamped no earlier (R3)
    now_ns: int  # for "settled" signatures (the racy-git rule)
    t0: float  # time.monotonic() at the start (last_pass.seconds)
    stats: PassStats
    state: States  # the base of every item, loaded on first use
    full: bool  # a full pass (every share file walked), not a targeted one
    seq: int = 0  # the outbox position this pass acknowledges
    clock_checked: bool = False  # the file server's clock was looked at (engine/clock.py, R12)
    clock_far: int = 0  # ms taken off this node's clock for the pass (it is that far ahead)
    owed: bool = False  # a killed pass did not refresh the cache (R7): this one refreshes it all
    walk: Walk | None = None
    cache_side: CacheSide | None = None
    cache_skills_before: dict[str, tuple[int, int, int]] | None = None  # mesh/skills/ as the pass looked
    # detection's results
    share_obs: dict[ItemId, Obs] = field(default_factory=dict)
    share_unknown: set[ItemId] = field(default_factory=set)  # items whose share file could not be read
    share_copies: dict[ItemId, dict[str, Obs]] = field(default_factory=dict)  # conflict copies: side -> obs
    problems: list[Problem] = field(default_factory=list)  # files refused this pass
    index_problems: dict[ItemId, RowProblem] = field(default_factory=dict)  # per row (None: fine)
    refused_read: list[ItemId] = field(default_factory=list)  # rows in scopes this node may not read
    looked_ok: list[str] = field(default_factory=list)  # share paths a targeted pass found fine (or gone)
    early: set[ItemId] = field(default_factory=set)  # items a first import applied while it read
    # propagation's results
    written: list[ItemId] = field(default_factory=list)  # items written to the share (the journal)
    deferred: list[ItemId] = field(default_factory=list)  # share file changed under us: next pass
    retry: dict[ItemId, str] = field(default_factory=dict)  # export failed (full/read-only share): why (R12)
    young_added: set[str] = field(default_factory=set)  # cache keys this pass adds (cache/detect.py)
    cache_replaced: dict[str, list] = field(default_factory=dict)  # key -> version the cache loses
    changed_mem: bool = False  # a readable memory item moved: mesh-memory.json is rewritten
    changed_skills: dict[str, str | None] = field(default_factory=dict)  # name -> content (None: gone)
    # the hold of mass deletes (engine/hold.py, R11)
    held: dict[ItemId, str] = field(default_factory=dict)  # deletes by absence held -> their folder
    hold_looked: set[ItemId] = field(default_factory=set)  # items the hold looked at (a targeted pass)
    confirmed_applied: set[ItemId] = field(default_factory=set)  # confirmed deletes this pass applies
    delete_window: dict[str, Any] | None = None  # deletes by absence applied lately (meta delete_window)
    window_moved: bool = False
    # commit's results: problems of the cache (what a tool left there, a write that
    # failed) and of this node's journal; None: not looked at this pass (kept as they are)
    cache_problems: list[Problem] | None = None
    journal_problem: list[Problem] | None = None
    faults: dict[str, str] = field(default_factory=dict)  # path -> reason of a cache or journal write that failed
