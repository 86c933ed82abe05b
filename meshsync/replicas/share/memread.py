"""Reading memory files for a pass: here, or in a helper process beside it.

A pass reads every memory file whose signature changed; at a first import that is every
file, and each costs 60–120 µs of Python (read with the R6/R7 checks, parse, digests) on
one core.  With more than ``MIN_FILES`` to read, a helper process reads the list from its
end while the pass reads it from the start, in chunks the pass hands out, until they
meet.  :func:`read_all` yields the readings as they come, so the pass can work on each
(a first import writes them to the index in batches) while the helper reads the next.
The helper runs :func:`read` exactly as the pass would and answers with plain tuples;
anything going wrong with it (it cannot start, dies, stalls) only means the pass reads
the rest itself.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from meshsync import formats, layout
from meshsync.formats import FormatError, MemoryRecord
from meshsync.layout import NOT_UTF8_NAME, not_unicode
from meshsync.replicas.share.store import FileRefused, Problem, Share, item_of_memory_rel, sig_of

log = logging.getLogger(__name__)

MIN_FILES = 2000  # fewer files are read faster than a helper process starts (~0.15 s)
CHUNK = 128  # files per request to the helper
DEPTH = 8  # requests the helper has queued, so it never waits for the pass
PIPE_BYTES = 1 << 20  # the answers pipe, when the system allows (Linux: fs.pipe-max-size)
STALL_S = 60.0  # a helper silent this long while the pass waits for it is given up

# (record, digest of the file's bytes, its mtime in ns, its signature as read)
Read = tuple[MemoryRecord, str, int, str]


def read(share: Share, rel: str, node_id: str, max_depth: int, as_rel: str | None = None) -> Read | Problem | None:
    """One memory file as a pass takes it: a Read, a Problem to report, or None when the
    file is gone.  The caller checks the scope against what the node may read.  With
    ``as_rel`` (a conflict copy's original), the file at ``rel`` is read as if it were
    the one at ``as_rel``: its item comes from that path, never from the copy's name."""
    # An ASCII name is valid UTF-8, and only its %-escapes can decode to a lone surrogate.
    if not rel.isascii() and not_unicode(rel):  # R6: such a name used to crash the pass
        return Problem(rel, NOT_UTF8_NAME, "rename it to a name that is valid UTF-8")
    item_rel = rel if as_rel is None else as_rel
    try:
        scope, key = item_of_memory_rel(item_rel, node_id)
    except layout.LayoutError as exc:
        folder, _, name = rel.rpartition("/")
        return Problem(rel, f"file name is not in meshsync's encoding ({exc})",
                       layout.renamed_hint(folder, name[:-5], ".json", lambda t: share.lstat(t) is not None, "key"))
    if "%" in rel and not_unicode(scope, key):  # e.g. x%ed%b3%bf.json: an escaped lone surrogate
        return Problem(rel, NOT_UTF8_NAME + " (it escapes a lone surrogate)", "rename it to a name that is valid UTF-8")
    try:
        data, st = share.read(rel)
    except FileRefused as exc:
        return exc.problem
    except FileNotFoundError:
        return None
    try:
        rec = formats.parse_memory(data, scope, key, max_depth)
    except FormatError as exc:
        return Problem(rel, str(exc), "fix the file (it needs at least {\"value\": ...}); "
                       "the last good version is kept until then")
    if scope is None or key is None:
        if layout.item_path(layout.memory_id(rec.scope, rec.key), node_id) != item_rel:
            return Problem(rel, "its scope/key do not match its shortened name",
                           "remove the file or restore its scope and key")
    if rec.scope == "node" and "/node/" not in item_rel:
        return Problem(rel, "says scope node but is not in this node's folder", "fix the scope")
    return rec, formats.digest_bytes(data), st.st_mtime_ns, sig_of(st)


def read_all(share: Share, rels: list[str], node_id: str, max_depth: int,
             helper: Helper | None = None) -> Iterator[tuple[int, Read | Problem | None]]:
    """Every file of ``rels`` once, as (position, reading), in no fixed order.  With a
    helper, this process reads from the front while the helper reads chunks from the
    end, and the helper's answers are yielded as they come: whatever the caller does with
    a reading (a first import plans and writes it to the index at once) overlaps the
    helper's reading of the next ones."""
    if helper is None:
        for n, rel in enumerate(rels):
            yield n, read(share, rel, node_id, max_depth)
        return
    helper.begin(rels)
    n = 0  # the next position this process reads itself; the helper has rels[helper.lo:]
    while True:
        yield from helper.answers(n, wait=False)
        if n < helper.lo:
            yield n, read(share, rels[n], node_id, max_depth)
            n += 1
        elif helper.owes():
            yield from helper.answers(n, wait=True)
        else:
            break
    for m in helper.unanswered():  # it failed: what it still owed is read here
        yield m, read(share, rels[m], node_id, max_depth)


# --- the helper process ------------------------------------------------------------------------
# Frames both ways: a 4-byte big-endian length, then a pickle.  The pass sends the setup
# (share root, file size limit, node id, depth limit) then lists of paths; the helper
# answers each list with one result per path: ("r", record fields, hash, mtime, sig),
# ("p", path, reason, hint) or ("g",) for a file gone.  It exits when its input closes.

_LEN = struct.Struct(">I")


def _frame(obj: Any) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(data)) + data


def _encode(got: Read | Problem | None) -> tuple:
    if got is None:
        return ("g",)
    if isinstance(got, Problem):
        return ("p", got.path, got.reason, got.hint)
    rec, h, mtime_ns, sig = got
    return ("r", rec.scope, rec.key, rec.value, rec.text, rec.digest, rec.node, rec.stamp, rec.trusted,
            rec.replaces, h, mtime_ns, sig)


def _decode(t: tuple) -> Read | Problem | None:
    if t[0] == "r":
        return MemoryRecord(*t[1:10]), t[10], t[11], t[12]
    if t[0] == "p":
        return Problem(t[1], t[2], t[3])
    return None


def serve() -> None:
    """The helper process's main loop (``python -m meshsync.replicas.share.memread``)."""
    inp, out = sys.stdin.buffer, sys.stdout.buffer

    def recv() -> Any:
        head = inp.read(_LEN.size)
        if len(head) < _LEN.size:
            return None
        return pickle.loads(inp.read(_LEN.unpack(head)[0]))

    # The pass decides when the helper ends (by closing its input): a Ctrl-C at a
    # terminal reaches the pass, which then closes it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    setup = recv()
    if setup is None:
        return
    root, max_file_bytes, node_id, max_depth = setup
    share = Share(Path(root), max_file_bytes=max_file_bytes)
    try:
        while (rels := recv()) is not None:
            out.write(_frame([_encode(read(share, rel, node_id, max_depth)) for rel in rels]))
            out.flush()
    except BrokenPipeError:  # the pass went away or gave up on us: nothing to say
        pass


class Helper:
    """The pass's side of the helper: it asks for chunks from the end of the list the
    pass reads, never the chunk the pass reads next, and hands back the answers."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.rels: list[str] = []
        self.lo = 0  # the helper has rels[lo:] (asked or answered)
        self.asked: list[tuple[int, int]] = []  # chunks asked and not yet answered, newest last
        self.got: list[tuple[int, tuple]] = []  # answers received, not yet handed over
        self.buf = bytearray()
        self.failed = False
        self.answered = 0  # files the helper read (tests, logs)

    @classmethod
    def start(cls, share: Share, node_id: str, max_depth: int) -> Helper | None:
        """A helper, or None when none could be started (the pass reads alone).  It may be
        started before the pass knows what to read: it takes ~0.15 s to be ready."""
        # The folder holding this very meshsync package (meshsync/replicas/share/memread.py),
        # first on the helper's path: it must read as the pass reads, not as an installed
        # copy of another version, and find meshsync when none is installed at all.
        pkg_parent = str(Path(__file__).resolve().parents[3])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_parent, env.get("PYTHONPATH")) if p)
        try:
            proc = subprocess.Popen([sys.executable, "-m", "meshsync.replicas.share.memread"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, env=env, close_fds=True)
        except OSError as exc:
            log.warning("cannot start a helper process for reading (%s): the pass reads alone", exc)
            return None
        # A pipe holds 64 KiB, half a chunk's answers: the helper would wait for the pass
        # to read them, and a pass writing a batch to the index does not read for ~50 ms.
        for size in (PIPE_BYTES, PIPE_BYTES // 4):
            try:
                fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, size)  # type: ignore[union-attr]
                break
            except (OSError, AttributeError):  # over the system's limit; not Linux
                continue
        h = cls(proc)
        if not h._send((str(share.root), share.max_file_bytes, node_id, max_depth)):
            h.close()
            return None
        return h

    def begin(self, rels: list[str]) -> None:
        """The files to read, in the order the pass goes through them."""
        self.rels = rels
        self.lo = len(rels)

    def answers(self, front: int, *, wait: bool) -> list[tuple[int, Read | Problem | None]]:
        """The answers that came in (waiting for one if ``wait``), as (position, reading);
        then keep DEPTH chunks asked, all beyond the chunk the pass reads from ``front``."""
        try:
            self._receive(STALL_S if wait else 0.0)
            while not self.failed and len(self.asked) < DEPTH and self.lo - CHUNK >= front + CHUNK:
                lo = self.lo - CHUNK
                if not self._send(self.rels[lo:self.lo]):
                    break
                self.asked.append((lo, self.lo))
                self.lo = lo
        except (OSError, ValueError, EOFError, pickle.UnpicklingError, struct.error) as exc:
            self._fail(f"{type(exc).__name__}: {exc}")
        got, self.got = self.got, []
        return [(n, _decode(t)) for n, t in got]

    def owes(self) -> bool:
        """Whether answers are still to come."""
        return bool(self.asked) and not self.failed

    def unanswered(self) -> list[int]:
        """Positions the helper was asked for and never answered (it failed)."""
        return [n for lo, hi in self.asked for n in range(lo, hi)]

    def _receive(self, timeout: float) -> None:
        """Read what the helper sent: all that is there (timeout 0), or until one more
        answer came (failing the helper after ``timeout`` seconds without one)."""
        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout
        before = self.answered
        while self.asked and not self.failed:
            if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                if timeout:
                    self._fail(f"no answer in {timeout:.0f} s")
                return
            data = os.read(fd, 1 << 20)
            if not data:
                self._fail("it exited")
                return
            self.buf += data
            while len(self.buf) >= _LEN.size:
                size = _LEN.unpack_from(self.buf)[0]
                if len(self.buf) < _LEN.size + size:
                    break
                results = pickle.loads(self.buf[_LEN.size:_LEN.size + size])
                del self.buf[:_LEN.size + size]
                lo, hi = self.asked.pop(0)
                self.got.extend(zip(range(lo, hi), results, strict=True))  # ValueError: not one per file
                self.answered += len(results)
            if timeout and self.answered > before:
                return

    def _send(self, obj: Any) -> bool:
        try:
            self.proc.stdin.write(_frame(obj))  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
            return True
        except OSError as exc:
            self._fail(f"{type(exc).__name__}: {exc}")
            return False

    def _fail(self, why: str) -> None:
        if not self.failed:
            self.failed = True
            log.warning("helper process for reading stopped (%s): the pass reads the rest itself", why)
            self.proc.kill()

    def close(self) -> None:
        """End the helper at once: it holds nothing but answers the pass no longer wants,
        and one closed before it was even ready (a first import with little to read) would
        otherwise be waited for until its start-up ends (~0.2 s)."""
        self.proc.kill()
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()  # type: ignore[union-attr]
            except OSError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            # Stuck in a read of a hung network mount (uninterruptible): it exits when
            # the read returns, and the next Popen reaps it.  The pass goes on.
            log.warning("helper process %d for reading has not exited yet (a hung share?)", self.proc.pid)


if __name__ == "__main__":
    serve()
