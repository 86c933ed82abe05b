"""File I/O on the share: availability, safe reads, atomic writes, the stat walk.

Rules kept here so that no caller can forget them:

* symlinks are never followed, in files or in the directories leading to them (R6);
* only regular files are read, without blocking (a FIFO cannot hang a pass), and never
  more than the configured limit;
* every write goes to a dot-named temporary file in the same directory, is flushed and
  renamed over the target (R7); scanners skip dot files, so a temporary file is never
  imported;
* a directory that cannot be listed is reported as *unknown*, never as empty (R5).
"""

from __future__ import annotations

import errno
import itertools
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from meshsync import layout
from meshsync.layout import META, ItemId

TMP_PREFIX = ".meshsync-tmp-"
# A temporary file of ours older than this is the leftover of a write killed midway (R7):
# no write takes that long.  Full passes remove such files (sync.Node._sweep_temporaries).
STALE_TEMP_S = 3600.0
# Threads for a batch of writes (Share.write_many).  Each write waits on its fsync (a
# journal commit on a local disk, a round trip to the server on NFS/SMB); waits in
# parallel share commits and round trips: 10k files in 1.7-2.0 s here against 2.6-2.7 s
# one after the other (ext4 on virtio), more on a network share.
WRITERS = 8
_TMP_SEQ = itertools.count()  # temporary names unique across threads as well as processes

# Compare-and-set for a write: given the target's lstat (None: absent) just before the
# rename, whether it is still what the caller saw.
Check = Callable[[os.stat_result | None], bool]


@dataclass(frozen=True, slots=True)
class Problem:
    """One file meshsync refuses to import, with what the user can do about it."""

    path: str  # share-relative, or an index/cache location
    reason: str
    hint: str = ""


class ShareUnavailable(Exception):
    """The share is not mounted, not initialised or not readable: touch nothing (R5)."""


class Changed(Exception):
    """A write's compare-and-set failed: the target changed since the caller looked,
    and was left as it is."""


class FileRefused(Exception):
    def __init__(self, problem: Problem):
        super().__init__(problem.reason)
        self.problem = problem


def sig_of(st: os.stat_result) -> str:
    return _sig_text(st.st_mtime_ns, st.st_size, st.st_ino, st.st_mode)


def _sig_text(mtime_ns: int, size: int, ino: int, mode: int) -> str:
    # The permission bits too: a file made unreadable (chmod) is looked at again and
    # reported, not silently taken as unchanged (R6).  (walk_memory_dir spells this
    # out inline: it runs once per file of a 100k walk.)
    return f"{mtime_ns}:{size}:{ino}:{mode & 0o7777:o}"


SETTLE_NS = 3_000_000_000


def _unlistable(rel: str, walk: Walk, exc: OSError) -> None:
    """A directory that cannot be listed: its items are unknown this pass, never gone (R5)."""
    walk.unknown.append(rel)
    walk.problems.append(Problem(rel, f"directory cannot be listed: {exc.strerror}",
                                 "check permissions and the mount; items below it are left as they are"))


def settled(st: os.stat_result, now_ns: int, margin_ns: int = SETTLE_NS) -> bool:
    """A file modified in the last few seconds may change again within the same mtime
    tick; its signature is not trusted to skip a read next time (the "racy git" rule)."""
    return now_ns - st.st_mtime_ns > margin_ns


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


Packed = tuple[int, int, int, int]  # st_mtime_ns, st_size, st_ino, st_mode of a regular file


def unpack_sig(sig: Packed | str | None) -> str | None:
    """The signature string of a packed signature (see KnownSigs); anything else as is."""
    return _sig_text(*sig) if type(sig) is tuple else sig  # type: ignore[return-value]


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


@dataclass(slots=True)
class Walk:
    """What a stat walk of the share found."""

    # Memory files: those the last pass recorded with this very signature (settled) are
    # only named in ``same`` (folder -> names); the others, to be read, are in ``memory``.
    # Comparing during the walk spares a FileEntry, a path string and a second loop per
    # file at 100k files.
    known: KnownSigs = field(default_factory=KnownSigs)
    same: dict[str, set[str]] = field(default_factory=dict)
    memory: dict[str, FileEntry] = field(default_factory=dict)  # rel -> entry
    skills: dict[str, SkillDir] = field(default_factory=dict)  # rel -> dir
    tombstones: dict[str, FileEntry] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # rel dirs that could not be listed
    temporaries: list[str] = field(default_factory=list)  # our temporary files seen (never items)

    def is_unknown(self, rel: str) -> bool:
        return any(rel == u or rel.startswith(u + "/") for u in self.unknown)

    def is_same(self, rel: str) -> bool:
        folder, _, name = rel.rpartition("/")
        return name in self.same.get(folder, ())

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
            self.same.setdefault(folder, set()).add(name)
        else:
            self.memory[fe.rel] = fe


def _kind_problem(rel: str, st: os.stat_result) -> Problem | None:
    m = st.st_mode
    if stat.S_ISLNK(m):
        return Problem(rel, "is a symbolic link; meshsync never follows links",
                       "replace the link with a regular file or directory")
    if stat.S_ISFIFO(m):
        return Problem(rel, "is a FIFO (named pipe), not a file", "remove it from the share")
    if stat.S_ISSOCK(m):
        return Problem(rel, "is a socket, not a file", "remove it from the share")
    if stat.S_ISCHR(m) or stat.S_ISBLK(m):
        return Problem(rel, "is a device node, not a file", "remove it from the share")
    return None


class Share:
    """One share root; every path handed in or out is relative to it."""

    def __init__(self, root: Path, *, max_file_bytes: int, fsync: bool = True,
                 file_mode: int | None = None, gid: int | None = None):
        self.root = Path(root)
        self._root_s = str(self.root)  # string joins: pathlib costs ~40 µs a path at 100k files
        self.max_file_bytes = max_file_bytes
        self.fsync = fsync
        self.file_mode = file_mode
        self.gid = gid
        self._safe_dirs: set[str] = set()
        self._pool: ThreadPoolExecutor | None = None  # Share.write_many's threads, made on first use

    # --- availability ----------------------------------------------------------------

    def check(self) -> None:
        """Raise ShareUnavailable with the reason unless the share is mounted and ours."""
        root = self.root
        try:
            st = os.stat(root)
        except FileNotFoundError:
            raise ShareUnavailable(f"share path {root} does not exist (NAS not mounted?)") from None
        except OSError as exc:
            raise ShareUnavailable(f"share path {root} cannot be read: {exc.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise ShareUnavailable(f"share path {root} is not a directory")
        try:
            mst = os.lstat(root / META)
        except FileNotFoundError:
            if os.path.lexists(root / ".stfolder"):
                # A Syncthing replica is never "unmounted": the marker has not come yet (R5).
                raise ShareUnavailable(
                    f"share {root} is a Syncthing folder that has not received the {META}/ marker "
                    "yet: Syncthing has not brought it from the other nodes (is the folder shared "
                    "with them and connected?), or no node ran `meshsync init` yet") from None
            raise ShareUnavailable(
                f"share {root} has no {META}/ marker: it is not mounted, or not initialised "
                "(run `meshsync init` once for a new share)"
            ) from None
        except OSError as exc:
            raise ShareUnavailable(f"share marker {root / META} cannot be read: {exc.strerror}") from None
        if not stat.S_ISDIR(mst.st_mode):
            raise ShareUnavailable(f"share marker {root / META} is not a directory")
        if not os.access(root, os.R_OK | os.X_OK) or not os.access(root / META, os.R_OK | os.X_OK):
            raise ShareUnavailable(f"share {root} is not readable by this user (permissions)")

    def initialise(self) -> None:
        for rel in (META, f"{META}/tombstones", layout.MEMORY, f"{layout.MEMORY}/mesh",
                    f"{layout.MEMORY}/user", f"{layout.MEMORY}/node", layout.SKILLS):
            self._ensure_dir(rel)
        readme = self.root / META / "README"
        if not readme.exists():
            self.write(f"{META}/README", b"This folder is a meshsync share. Do not remove .meshsync/:\n"
                       b"without it every node treats the share as not mounted.\n")

    # --- paths -------------------------------------------------------------------------

    def _ensure_dir(self, rel: str) -> Path:
        """Create rel's directories as needed, refusing any component that is a symlink
        or not a directory (writing through it could leave the share)."""
        if rel in self._safe_dirs:
            return self.root / rel
        cur = self.root
        done = ""
        for part in rel.split("/"):
            done = f"{done}/{part}" if done else part
            cur = cur / part
            if done in self._safe_dirs:
                continue
            try:
                st = os.lstat(cur)
            except FileNotFoundError:
                try:
                    os.mkdir(cur)
                    if self.gid is not None:
                        os.chown(cur, -1, self.gid)
                except FileExistsError:
                    pass
                st = os.lstat(cur)
            if not stat.S_ISDIR(st.st_mode):
                raise FileRefused(Problem(done, "is in the way of a meshsync directory (a link or a file)",
                                          "move it away so meshsync can create the directory"))
            self._safe_dirs.add(done)
        return cur

    def forget_dirs(self) -> None:
        self._safe_dirs.clear()

    # --- reads ---------------------------------------------------------------------------

    def read(self, rel: str, limit: int | None = None,
             setting: str = "limits.max_file_bytes") -> tuple[bytes, os.stat_result]:
        """Read a regular file without following links or blocking; raise FileRefused.
        ``setting`` names the limit in the hint (a SKILL.md has its own limit)."""
        limit = self.max_file_bytes if limit is None else limit
        path = f"{self._root_s}/{rel}"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise FileRefused(Problem(rel, "is a symbolic link; meshsync never follows links",
                                          "replace the link with a regular file")) from None
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise FileRefused(Problem(rel, "cannot be read: permission denied",
                                          "make it readable by the meshsync user")) from None
            if exc.errno == errno.ENXIO:
                raise FileRefused(Problem(rel, "is a socket, not a file", "remove it from the share")) from None
            raise
        try:
            st = os.fstat(fd)
            bad = _kind_problem(rel, st)
            if bad is None and not stat.S_ISREG(st.st_mode):
                bad = Problem(rel, "is a directory where a file was expected", "move the directory away")
            if bad:
                raise FileRefused(bad)
            if st.st_size > limit:
                raise FileRefused(Problem(rel, f"is {st.st_size} bytes, over the {limit}-byte limit",
                                          f"shrink it, or raise {setting}"))
            chunks = []
            total = 0
            while True:
                # One byte more than the size it had: a file that grew shows, and one
                # that did not ends with this read (no second read to see the end).
                b = os.read(fd, st.st_size + 1 - total if total <= st.st_size else 1 << 20)
                if not b:
                    break
                total += len(b)
                if total > limit:
                    raise FileRefused(Problem(rel, f"grew over the {limit}-byte limit while read",
                                              f"shrink it, or raise {setting}"))
                chunks.append(b)
                if total == st.st_size:
                    break  # a short read at the size fstat gave: a regular file's end
            # A file another program is still writing must not be imported half-written
            # (R6, R7): a 1 MiB prefix of a growing SKILL.md was.  Retried on its next
            # change or pass; the last good version stays meanwhile.
            end = os.fstat(fd)
            if total != st.st_size or (end.st_size, end.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
                raise FileRefused(Problem(rel, "changed while it was read (is it still being written?)",
                                          "nothing to do: it is read again once it stops changing"))
            return b"".join(chunks), st
        finally:
            os.close(fd)

    def lstat(self, rel: str) -> os.stat_result | None:
        try:
            return os.lstat(f"{self._root_s}/{rel}")
        except FileNotFoundError:
            return None

    # --- writes --------------------------------------------------------------------------

    def write(self, rel: str, data: bytes, check: Check | None = None) -> os.stat_result:
        """Atomically replace rel with data; returns the new file's stat.  With check, the
        target is looked at again once the data is flushed, right before the rename, and
        left alone (Changed) unless check accepts it: the narrowest window this side of
        a lock that no NAS client honours."""
        parent, _, name = rel.rpartition("/")
        if parent:
            if parent not in self._safe_dirs:
                self._ensure_dir(parent)
            d = f"{self._root_s}/{parent}"
        else:
            d = self._root_s
        target = f"{d}/{name}"  # string joins: pathlib cost more than the write at 10k files
        try:
            tst = os.lstat(target)
        except FileNotFoundError:
            tst = None
        if tst is not None and not stat.S_ISREG(tst.st_mode):
            raise FileRefused(Problem(rel, "is in the way (not a regular file); meshsync will not replace it",
                                      "move it away"))
        tmp = f"{d}/{TMP_PREFIX}{os.getpid()}-{time.monotonic_ns()}-{next(_TMP_SEQ)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     self.file_mode if self.file_mode is not None else 0o644)
        try:
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                if self.file_mode is not None:
                    os.fchmod(fd, self.file_mode)
                if self.gid is not None:
                    os.fchown(fd, -1, self.gid)
                if self.fsync:
                    os.fsync(fd)
                # Taken before the rename: a program replacing the file just after it
                # must not be taken for our own write (its write would be skipped).
                st = os.fstat(fd)
            finally:
                os.close(fd)
            if check is not None:
                try:
                    cur = os.lstat(target)
                except FileNotFoundError:
                    cur = None
                if not check(cur):
                    raise Changed(rel)
            os.rename(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return st

    def write_many(self, jobs: Sequence[tuple[str, bytes, Check | None]]) -> list[os.stat_result | Exception]:
        """write() each (rel, data, check), several at a time when they are flushed (their
        waits overlap; see WRITERS).  Returns, in order, each file's stat or what refused
        it (Changed, FileRefused, OSError).  Directories are made first, here: the threads
        then only read the set of known ones."""
        bad: dict[str, Exception] = {}  # parent directory -> why it cannot be made
        for parent in {rel.rpartition("/")[0] for rel, _, _ in jobs} - self._safe_dirs - {""}:
            try:
                self._ensure_dir(parent)
            except (FileRefused, OSError) as exc:
                bad[parent] = exc

        def one(job: tuple[str, bytes, Check | None]) -> os.stat_result | Exception:
            refused = bad.get(job[0].rpartition("/")[0])
            if refused is not None:
                return refused
            try:
                return self.write(*job)
            except (Changed, FileRefused, OSError) as exc:
                return exc

        if len(jobs) < 2 or not self.fsync:
            # Without fsync a write is a few quick syscalls: threads only add GIL hand-offs
            # (10k files 1.6-1.8 s in 8 threads, 0.9-1.0 s one after the other).
            return [one(job) for job in jobs]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(WRITERS, thread_name_prefix="meshsync-write")
        return list(self._pool.map(one, jobs))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def remove(self, rel: str) -> None:
        try:
            os.unlink(f"{self._root_s}/{rel}")
        except FileNotFoundError:
            pass

    def remove_tree(self, rel: str) -> None:
        path = self.root / rel
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)  # does not follow symlinks
        else:
            os.unlink(path)

    def prune_empty_dir(self, rel: str) -> None:
        """Remove a user/node directory left empty by deletes (ignore if not empty)."""
        try:
            os.rmdir(self.root / rel)
            self._safe_dirs.discard(rel)
        except OSError:
            pass

    def sweep_temporaries(self, rel_dir: str, older_than_s: float = STALE_TEMP_S) -> int:
        """Remove our own temporary files left by a crash (never other tools' files)."""
        return sweep_temporaries(self.root / rel_dir, older_than_s)

    def sweep_walked(self, walk: Walk, older_than_s: float = STALE_TEMP_S) -> int:
        """Remove the stale temporary files the walk saw (R7); returns how many."""
        n = 0
        cutoff = time.time() - older_than_s
        for rel in walk.temporaries:
            try:
                st = os.lstat(self.root / rel)
                if stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff:
                    os.unlink(self.root / rel)
                    n += 1
            except OSError:
                pass
        return n

    # --- the walk ------------------------------------------------------------------------

    def _scan(self, rel: str, walk: Walk) -> Iterator[os.DirEntry[str]]:
        try:
            with os.scandir(f"{self._root_s}/{rel}") as it:
                yield from it
        except FileNotFoundError:
            return
        except OSError as exc:
            _unlistable(rel, walk, exc)

    def _file_entry(self, e: os.DirEntry[str], rel: str, walk: Walk, now_ns: int) -> FileEntry | None:
        try:
            st = e.stat(follow_symlinks=False)
        except OSError as exc:
            walk.problems.append(Problem(rel, f"cannot be examined: {exc.strerror}", "check permissions"))
            walk.unknown.append(rel)
            return None
        if not stat.S_ISREG(st.st_mode):
            bad = _kind_problem(rel, st) or Problem(rel, "is a directory where a file was expected",
                                                    "move the directory away")
            walk.problems.append(bad)
            walk.unknown.append(rel)
            return None
        return FileEntry(rel, sig_of(st), settled(st, now_ns))

    def walk_memory_dir(self, rel_dir: str, walk: Walk, now_ns: int) -> None:
        # The hot loop of a no-change pass at 100k files: the usual name and a regular
        # file take a fast path (no generator, no helper calls); the rest the general one.
        try:
            it = os.scandir(f"{self._root_s}/{rel_dir}")
        except FileNotFoundError:
            return
        except OSError as exc:
            _unlistable(rel_dir, walk, exc)
            return
        mem = walk.memory
        add_same = walk.same.setdefault(rel_dir, set()).add
        folder = walk.known.folders.get(rel_dir, {})
        known = folder.get
        cutoff = now_ns - SETTLE_NS
        with it:
            for e in it:
                name = e.name
                old = known(name)
                if old is not None:  # the name of an item file at the last pass
                    try:
                        st = e.stat(follow_symlinks=False)  # cached by the DirEntry for below
                    except OSError:
                        self._memory_entry(e, rel_dir, walk, now_ns)
                        continue
                    if type(old) is tuple:  # packed by an earlier walk (see KnownSigs)
                        # Equal modes mean a regular file: the packed mode has its type bits.
                        mt = st.st_mtime_ns
                        if old == (mt, st.st_size, st.st_ino, st.st_mode) and mt < cutoff:
                            add_same(name)
                            continue
                        old = unpack_sig(old)
                if name[-5:] == ".json" and name[0] not in ".~" and ".sync-conflict-" not in name:
                    try:
                        st = e.stat(follow_symlinks=False)
                    except OSError:
                        self._memory_entry(e, rel_dir, walk, now_ns)
                        continue
                    if st.st_mode & 0o170000 == 0o100000:  # a regular file
                        sig = f"{st.st_mtime_ns}:{st.st_size}:{st.st_ino}:{st.st_mode & 0o7777:o}"
                        mt = st.st_mtime_ns
                        if mt < cutoff and old == sig:
                            folder[name] = (mt, st.st_size, st.st_ino, st.st_mode)  # packed for the next walk
                            add_same(name)
                        else:
                            rel = f"{rel_dir}/{name}"
                            mem[rel] = FileEntry(rel, sig, mt < cutoff)
                        continue
                self._memory_entry(e, rel_dir, walk, now_ns)

    def _memory_entry(self, e: os.DirEntry[str], rel_dir: str, walk: Walk, now_ns: int) -> None:
        """A name or file off the fast path: ignored, temporary, misplaced or not regular."""
        name = e.name
        if layout.is_ignored_name(name):
            if name.startswith(TMP_PREFIX):
                walk.temporaries.append(f"{rel_dir}/{name}")
            return
        rel = f"{rel_dir}/{name}"
        if not name.endswith(".json"):
            if e.is_dir(follow_symlinks=False):
                walk.problems.append(Problem(rel, "is a directory inside a memory scope folder",
                                             "memory folders hold only <key>.json files; move it away"))
            else:
                walk.problems.append(Problem(rel, "is not a memory file (the name must end in .json)",
                                             "rename it to <key>.json or move it out of memory/"))
            return
        fe = self._file_entry(e, rel, walk, now_ns)
        if fe is not None:
            walk.add_memory(fe)

    def walk_subdirs(self, rel_dir: str, walk: Walk) -> list[str]:
        """Names of real (non-link) subdirectories of rel_dir."""
        out = []
        for e in self._scan(rel_dir, walk):
            if layout.is_ignored_name(e.name):
                continue
            rel = f"{rel_dir}/{e.name}"
            if e.is_symlink():
                walk.problems.append(Problem(rel, "is a symbolic link; meshsync never follows links",
                                             "replace the link with a real directory"))
            elif e.is_dir(follow_symlinks=False):
                out.append(e.name)
            else:
                walk.problems.append(Problem(rel, "is a file where a directory was expected", "move it away"))
        return out

    def walk_skill(self, rel_dir: str, walk: Walk, now_ns: int) -> SkillDir:
        files: list[FileEntry] = []
        stack = [rel_dir]
        while stack:
            d = stack.pop()
            for e in self._scan(d, walk):
                if e.name.startswith(TMP_PREFIX) or layout.is_ignored_name(e.name):
                    if e.name.startswith(TMP_PREFIX):
                        walk.temporaries.append(f"{d}/{e.name}")
                    continue
                rel = f"{d}/{e.name}"
                if e.is_dir(follow_symlinks=False):
                    stack.append(rel)
                    continue
                fe = self._file_entry(e, rel, walk, now_ns)
                if fe is not None:
                    files.append(fe)
        files.sort(key=lambda f: f.rel)
        sig = "|".join(f"{f.rel[len(rel_dir) + 1:]}={f.sig}" for f in files)
        return SkillDir(rel_dir, files, sig, all(f.settled for f in files))

    def walk_tombstones(self, walk: Walk, now_ns: int) -> None:
        stack = [layout.TOMBSTONES]
        while stack:
            d = stack.pop()
            for e in self._scan(d, walk):
                if e.name.startswith("."):
                    if e.name.startswith(TMP_PREFIX):
                        walk.temporaries.append(f"{d}/{e.name}")
                    continue
                rel = f"{d}/{e.name}"
                if e.is_dir(follow_symlinks=False):
                    stack.append(rel)
                elif e.name.endswith(".json"):
                    fe = self._file_entry(e, rel, walk, now_ns)
                    if fe is not None:
                        walk.tombstones[rel] = fe


def sweep_temporaries(directory: Path, older_than_s: float = STALE_TEMP_S) -> int:
    """Remove our own temporary files older than ``older_than_s`` from one directory
    (never other tools' files); returns how many."""
    n = 0
    cutoff = time.time() - older_than_s
    try:
        with os.scandir(directory) as it:
            for e in it:
                if e.name.startswith(TMP_PREFIX):
                    try:
                        if e.stat(follow_symlinks=False).st_mtime < cutoff:
                            os.unlink(e.path)
                            n += 1
                    except OSError:
                        pass
    except OSError:
        pass
    return n


def item_of_memory_rel(rel: str, node_id: str) -> tuple[str | None, str | None]:
    """(scope, key) a memory path means; None parts when the path was shortened.
    Raises LayoutError for paths outside the layout."""
    parts = rel.split("/")
    if parts[0] != layout.MEMORY or not parts[-1].endswith(".json"):
        raise layout.LayoutError(f"{rel} is not a memory file path")
    stem = parts[-1][:-5]
    try:
        key: str | None = layout.decode(stem)
    except layout.Shortened:
        key = None
    if len(parts) == 3 and parts[1] == "mesh":
        return "mesh", key
    if len(parts) == 4 and parts[1] == "user":
        try:
            return "user:" + layout.decode(parts[2]), key
        except layout.Shortened:
            return None, key
    if len(parts) == 4 and parts[1] == "node" and parts[2] == layout.encode(node_id):
        return "node", key
    raise layout.LayoutError(f"{rel} is not a memory file path")


def suggest_name(stem: str) -> str:
    """The canonical file name for a hand-made file whose name is not encoded."""
    return layout.encode(stem)


def item_rel(item: ItemId, node_id: str) -> str:
    return layout.item_path(item, node_id)
