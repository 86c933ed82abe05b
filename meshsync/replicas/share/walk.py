"""The stat walk of the share: what is there, and which files changed since the last pass.

Mixed into :class:`meshsync.replicas.share.store.Share` (which holds the root and the
read/remove primitives).  Rules kept here:

* a directory that cannot be listed is reported as *unknown*, never as empty (R5);
* symlinks, FIFOs, sockets and devices are reported, never followed or read (R6);
* a file modified in the last seconds is never trusted as unchanged ("racy git", SETTLE_NS);
* our own temporary files are noted for the sweep, never imported (R7).
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from meshsync import layout
from meshsync.model import FileEntry, Problem, SkillDir, Walk, sig_text, unpack_sig

TMP_PREFIX = ".meshsync-tmp-"
# A temporary file of ours older than this is the leftover of a write killed midway (R7):
# no write takes that long.  Full passes remove such files (engine/commit.py's sweep).
STALE_TEMP_S = 3600.0


def sig_of(st: os.stat_result) -> str:
    return sig_text(st.st_mtime_ns, st.st_size, st.st_ino, st.st_mode)


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


CONFLICT_MARK = ".sync-conflict-"  # in the name of Syncthing's conflict copies (meshsync/replicas/share/syncthing.py)


def is_conflict_copy(name: str) -> bool:
    """A name Syncthing may have given a conflict copy (not one of its temporaries)."""
    return CONFLICT_MARK in name and not name.startswith(".")


def kind_problem(rel: str, st: os.stat_result) -> Problem | None:
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


def _gone_ok(func: Callable[..., object], path: str, exc: BaseException | tuple) -> None:
    """shutil.rmtree's error handler: a file gone already is removed (another host's
    temporary file renamed away meanwhile); any other error is raised."""
    err = exc[1] if isinstance(exc, tuple) else exc
    if not isinstance(err, FileNotFoundError):
        raise err


def remove_all(path: str) -> None:
    """Remove a folder and everything in it, links not followed (shutil.rmtree), taking a
    file that vanishes meanwhile for removed."""
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=_gone_ok)
    else:
        shutil.rmtree(path, onerror=_gone_ok)


class ShareWalk:
    """The walk's half of Share."""

    _root_s: str
    root: Path

    def sweep_walked(self, walk: Walk, older_than_s: float = STALE_TEMP_S) -> int:
        """Remove the stale temporary files the walk saw (R7); returns how many."""
        n = 0
        cutoff = time.time() - older_than_s
        for rel in walk.temporaries:
            try:
                st = os.lstat(self.root / rel)
                if st.st_mtime >= cutoff:
                    continue
                if stat.S_ISREG(st.st_mode):
                    os.unlink(self.root / rel)
                    n += 1
                elif stat.S_ISDIR(st.st_mode):  # a folder put aside by a delete killed midway
                    remove_all(f"{self._root_s}/{rel}")
                    n += 1
            except OSError:
                pass
        return n

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
            bad = kind_problem(rel, st) or Problem(rel, "is a directory where a file was expected",
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
        add_same = walk.same.setdefault(rel_dir, []).append
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
        """A name or file off the fast path: ignored, temporary, conflict copy, misplaced
        or not regular."""
        name = e.name
        if is_conflict_copy(name) and name.endswith(".json"):
            fe = self._copy_entry(e, f"{rel_dir}/{name}", now_ns)
            if fe is not None:
                walk.copies[fe.rel] = fe
            return
        if layout.is_ignored_name(name) or (layout.is_editor_file(name) and not e.is_dir(follow_symlinks=False)):
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

    @staticmethod
    def _copy_entry(e: os.DirEntry[str], rel: str, now_ns: int) -> FileEntry | None:
        """A conflict copy: a regular file, settled once neither written nor renamed in
        the last seconds (Syncthing renames the file it replaces to the copy's name,
        which keeps its mtime; the rename shows in ctime)."""
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return FileEntry(rel, sig_of(st), now_ns - max(st.st_mtime_ns, st.st_ctime_ns) > SETTLE_NS)

    def walk_subdirs(self, rel_dir: str, walk: Walk) -> list[str]:
        """Names of real (non-link) subdirectories of rel_dir."""
        out = []
        for e in self._scan(rel_dir, walk):
            if e.name.startswith(TMP_PREFIX):
                walk.temporaries.append(f"{rel_dir}/{e.name}")  # a folder a delete put aside (Share.remove_tree)
                continue
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
        copies: list[FileEntry] = []
        stack = [rel_dir]
        while stack:
            d = stack.pop()
            for e in self._scan(d, walk):
                if is_conflict_copy(e.name):
                    fe = self._copy_entry(e, f"{d}/{e.name}", now_ns)
                    if fe is not None:
                        copies.append(fe)
                    continue
                if e.name.startswith(TMP_PREFIX) or layout.is_ignored_name(e.name):
                    if e.name.startswith(TMP_PREFIX):
                        walk.temporaries.append(f"{d}/{e.name}")
                    continue
                rel = f"{d}/{e.name}"
                if e.is_dir(follow_symlinks=False):
                    stack.append(rel)
                    continue
                if layout.is_editor_file(e.name):
                    continue  # not part of the skill nor of its version (R10)
                fe = self._file_entry(e, rel, walk, now_ns)
                if fe is not None:
                    files.append(fe)
        files.sort(key=lambda f: f.rel)
        sig = "|".join(f"{f.rel[len(rel_dir) + 1:]}={f.sig}" for f in files)
        return SkillDir(rel_dir, files, sig, all(f.settled for f in files), sorted(copies, key=lambda f: f.rel))

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


