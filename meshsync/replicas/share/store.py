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
import logging
import os
import stat
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from meshsync import layout
from meshsync.layout import META, ItemId
from meshsync.model import (
    KnownSigs as KnownSigs,  # re-exported: the walk's names, where callers look
)
from meshsync.model import Problem as Problem
from meshsync.model import unpack_sig as unpack_sig
from meshsync.replicas.share.walk import SETTLE_NS as SETTLE_NS
from meshsync.replicas.share.walk import (
    STALE_TEMP_S,
    TMP_PREFIX,
    ShareWalk,
    kind_problem,
    remove_all,
)
from meshsync.replicas.share.walk import FileEntry as FileEntry
from meshsync.replicas.share.walk import SkillDir as SkillDir
from meshsync.replicas.share.walk import Walk as Walk
from meshsync.replicas.share.walk import settled as settled
from meshsync.replicas.share.walk import sig_of as sig_of

log = logging.getLogger("meshsync")

# Threads for a batch of writes (Share.write_many).  Each write waits on its fsync (a
# journal commit on a local disk, a round trip to the server on NFS/SMB); waits in
# parallel share commits and round trips: 10k files in 1.7-2.0 s here against 2.6-2.7 s
# one after the other (ext4 on virtio), more on a network share.
WRITERS = 8
_TMP_SEQ = itertools.count()  # temporary names unique across threads as well as processes

# Compare-and-set for a write: given the target's lstat (None: absent) just before the
# rename, whether it is still what the caller saw.
Check = Callable[[os.stat_result | None], bool]


# A read whose file changed under it (still being written, or on a network mount an
# attribute cache that had not caught up with another host's write yet): transient, the
# item is looked at again (engine: Pass.deferred), never left until the next rescan.
CHANGED_WHILE_READ = "changed while it was read (is it still being written?)"


class ShareUnavailable(Exception):
    """The share is not mounted, not initialised or not readable: touch nothing (R5)."""


class Changed(Exception):
    """A write's compare-and-set failed: the target changed since the caller looked,
    and was left as it is."""


class FileRefused(Exception):
    def __init__(self, problem: Problem):
        super().__init__(problem.reason)
        self.problem = problem


class Share(ShareWalk):
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
        self.format_missing = False  # check() found no .meshsync/format (an older share)

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
        self.format_missing = self._read_format() is None

    def _read_format(self) -> int | None:
        """The share's format from .meshsync/format (None: no such file, a share made
        before it existed).  A newer format than this meshsync knows, or a file that is
        not a format number, makes the share unavailable: its files may mean something
        this node would misread, so nothing is read or written (R5)."""
        path = self.root / layout.FORMAT_FILE
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ShareUnavailable(f"share format file {path} cannot be read: {exc.strerror}") from None
        try:
            data = os.read(fd, 64) if stat.S_ISREG(os.fstat(fd).st_mode) else b"?"
        finally:
            os.close(fd)
        text = data.decode("ascii", "replace").strip()
        if not text.isdigit() or not text.isascii() or int(text) < 1:
            raise ShareUnavailable(
                f"share format file {path} holds {text[:20]!r}, not a share format this meshsync knows "
                f"(a number, {layout.SHARE_FORMAT} for this version): nothing is read or written until it "
                f"does; if it was damaged, write {layout.SHARE_FORMAT} back into it")
        if int(text) > layout.SHARE_FORMAT:
            raise ShareUnavailable(
                f"this share was upgraded to format {int(text)} by a newer meshsync; upgrade this node "
                f"(this version knows format {layout.SHARE_FORMAT}; nothing is read or written until then)")
        return int(text)

    def write_format(self) -> None:
        """Record the format in a share made before .meshsync/format existed (a pass
        does so once; ``initialise`` for a new share).  A share this user cannot write
        stays without it: format 1 is what a missing file means anyway."""
        try:
            self.write(layout.FORMAT_FILE, f"{layout.SHARE_FORMAT}\n".encode())
        except (OSError, FileRefused) as exc:
            log.debug("cannot record the share format in %s: %s", layout.FORMAT_FILE, exc)
        self.format_missing = False

    def initialise(self) -> None:
        """Create the layout, the marker and the format file (what `meshsync init` does;
        idempotent).  An existing share of a newer format is refused before anything is
        created in it (ShareUnavailable)."""
        if os.path.lexists(self.root / META):
            self.check()
        for rel in (META, f"{META}/tombstones", layout.MEMORY, f"{layout.MEMORY}/mesh",
                    f"{layout.MEMORY}/user", f"{layout.MEMORY}/node", layout.SKILLS):
            self._ensure_dir(rel)
        self.check()  # the marker is there now; refuses a share of a newer format
        if self.format_missing:
            self.write_format()
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
            bad = kind_problem(rel, st)
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
                raise FileRefused(Problem(rel, CHANGED_WHILE_READ,
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
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         self.file_mode if self.file_mode is not None else 0o644)
        except OSError as exc:
            exc.filename = rel  # the file meant, not our temporary name (it is reported)
            raise
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
        except BaseException as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if isinstance(exc, OSError) and exc.filename in (tmp, None):
                exc.filename = rel  # the file meant, not our temporary name (it is reported)
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
        """Remove a folder (a skill's) whole: first renamed aside, in one step, to a
        temporary name of ours beside it, then emptied there.  Another host exporting
        into the folder meanwhile (R2 on a NAS, where the delete's compare-and-set may
        have passed on a stale attribute) then either lands before the rename, and its
        files go with the folder (its writer still holds the version and keeps it: the
        delete's tombstone or its own newer version decides, engine/keep.py), or finds
        the folder gone and fails, to be retried.  Removed in place it could be left
        half-emptied (one node's skill.json without its SKILL.md, or nothing), which no
        node can read as any version, and the item would stay stuck (R1)."""
        path = f"{self._root_s}/{rel}"
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(path)
            return
        aside = f"{path.rpartition('/')[0]}/{TMP_PREFIX}{os.getpid()}-{time.monotonic_ns()}-{next(_TMP_SEQ)}"
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return
        except OSError:  # e.g. a server that will not rename a folder in use: removed in place
            aside = path
        self._safe_dirs.discard(rel)
        remove_all(aside)

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

    # --- the walk ------------------------------------------------------------------------

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
