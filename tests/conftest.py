"""Fixtures for every test: the multi-node ``mesh`` (and ``ab``/``abc``, two or three
nodes on it), and a check that no test leaks a thread or a process.

The leak check (autouse): a test that leaves a thread running, or a process it started
(a ``meshsync run`` daemon, a memread helper, a bindfs or syncthing daemon), fails, as
in watchdog's own tests.  Leaked things make later tests flaky (a daemon still syncing a
share, an observer thread taking the GIL) and hide a missing ``close()``/``stop()`` in
production code.  What ends on its own shortly after the test is given a grace period,
polled, before it counts as leaked.

This process is made a *child subreaper* (prctl), so that a process whose parent died
(a daemon's helper after the daemon was SIGKILLed, a FUSE daemon that forked into the
background) is re-parented to pytest and still seen, instead of vanishing under init.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Mesh, MeshNode, nas_views, wait_for
from sync_helpers import quick_node

LEAK_GRACE = 5.0  # seconds a thread or process may take to end after its test
PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


SUBREAPER = _become_subreaper()


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state letter) of every process, from /proc."""
    out: dict[int, tuple[int, str]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # gone meanwhile
            continue
        rest = stat[stat.rindex(b")") + 2:].split()  # the command name may hold spaces
        out[int(name)] = (int(rest[1]), rest[0].decode())
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip() or "?"
    except OSError:
        return "?"


def _descendants(keep: set[int] | frozenset[int] = frozenset()) -> set[int]:
    """Live (not zombie) descendants of this process; zombie children are reaped (their
    tests are over: nobody else will wait for them).  The trees of the processes in
    ``keep`` (alive before the test began: a module-scoped fixture's container or server)
    are not entered: what they start meanwhile is theirs, not the test's."""
    table = _proc_table()
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    me, live, todo = os.getpid(), set(), [os.getpid()]
    while todo:
        for pid in kids.get(todo.pop(), []):
            if pid not in keep:
                todo.append(pid)
            if table[pid][1] != "Z":
                live.add(pid)
            elif table[pid][0] == me:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
    return live


def _leaks(threads_before: set[threading.Thread], procs_before: set[int]) -> tuple[list[threading.Thread], set[int]]:
    threads = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
    return threads, _descendants(procs_before) - procs_before


@pytest.fixture(autouse=True)
def no_leaked_threads_or_processes() -> Iterator[None]:
    """Fail the test if, once it and its other fixtures are done, a thread or a child
    process it started is still alive after LEAK_GRACE seconds.  Leaked processes are
    then killed (they are this test's) so that the next test starts clean."""
    threads_before = set(threading.enumerate())
    procs_before = _descendants()
    yield
    try:
        wait_for(lambda: not any(_leaks(threads_before, procs_before)), LEAK_GRACE, interval=0.02)
        return
    except AssertionError:
        threads, procs = _leaks(threads_before, procs_before)
    lines = [f"thread {t.name!r} ({type(t).__name__}, daemon={t.daemon})" for t in threads]
    lines += [f"process {pid}: {_cmdline(pid)}" for pid in sorted(procs)]
    for pid in procs:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    pytest.fail(f"the test left {len(lines)} thing(s) running after {LEAK_GRACE:g}s:\n  " + "\n  ".join(lines),
                pytrace=False)


@pytest.fixture
def mesh(tmp_path) -> Iterator[Mesh]:
    """Several nodes on one share under tmp_path (see helpers.Mesh); their daemons are
    stopped and their in-process engines closed at the end."""
    m = Mesh(tmp_path)
    yield m
    m.close()


@pytest.fixture
def ab(mesh: Mesh) -> tuple[MeshNode, MeshNode]:
    """Nodes A (set up by `meshsync init`) and B (index made in-process) on one share."""
    return mesh.node("A"), quick_node(mesh, "B")


@pytest.fixture
def abc(mesh: Mesh) -> tuple[MeshNode, MeshNode, MeshNode]:
    """Nodes A, B and C on one share, as ``ab``."""
    return mesh.node("A"), quick_node(mesh, "B"), quick_node(mesh, "C")


@pytest.fixture
def nas(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    """Two bindfs FUSE views of one folder (helpers.nas_views): two machines on one NAS,
    the real folder and the views (real, mount-a, mount-b)."""
    with nas_views(tmp_path) as (real, (ma, mb)):
        yield real, ma, mb
