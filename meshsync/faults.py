"""Named fail points at the pipeline's phase boundaries: the seam for fault-injection tests.

A test that must make something happen at a precise moment of a pass (a crash after
the share writes and before the index commit, a hand save landing inside a
compare-and-set, a foreign insert racing the bulk import) installs a function at one
of the points below, in its own process or in the script of the ``meshsync`` process it
starts::

    from meshsync import faults
    faults.install("propagate.before_index_commit", lambda: os._exit(137))

Production code never installs anything: each point is one dict lookup that finds
nothing.  Tests must not replace private methods instead (they break silently when
the code moves); a new kind of fault gets a new named point here, documented below.

Points (name: when, arguments, what the return value does)

``hit`` points (the return value is ignored):

* ``propagate.start`` — a batch of plans is about to be propagated (detection for those
  items is done); no arguments.  A first import propagates several times per pass.
* ``propagate.before_export`` — an item whose plan writes the share, before its export
  (after the pass looked at the share); argument: the ItemId.
* ``propagate.bulk_inserted`` — the index batch's one-statement insert of absent rows
  ran; arguments: the set of items it inserted, the batch's list of pending items.
* ``propagate.before_index_commit`` — a batch's share writes are done, its index
  transaction is about to begin; no arguments.
* ``commit.start`` — propagation is over, the pass is about to record its outcome and
  refresh the cache; no arguments.
* ``share.delete_removed`` — a delete's export removed the item's file (or folder) and
  is about to write its tombstone; argument: the ItemId.

``wrap`` points (the function gets the production value and returns the one to use):

* ``share.unchanged`` — the compare-and-set before a skill's export or a delete's
  (``bool``: the item's file or folder still what the pass saw?); on a network mount
  it can pass on a stale attribute (R2 on a NAS).
* ``share.check`` — the compare-and-set a memory file's export is written with
  (``payloads.Check``: the target's lstat -> still what the pass saw?).  It is called
  in a writer thread just before the rename (Share.write_many).
* ``cache.copy_file_range`` — ``os.copy_file_range`` as the cache's patch copies
  unchanged slices with it (None: copied with pread/write, as on macOS).

Disk-full and read-only faults (issue 21) belong here too, at the same boundaries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

POINTS = frozenset({
    "propagate.start", "propagate.before_export", "propagate.bulk_inserted",
    "propagate.before_index_commit", "commit.start", "share.check", "cache.copy_file_range",
    "share.delete_removed", "share.unchanged",
})

_installed: dict[str, Callable[..., Any]] = {}


def install(name: str, fn: Callable[..., Any]) -> None:
    """Run ``fn`` at point ``name`` (replacing what was installed there)."""
    if name not in POINTS:
        raise KeyError(f"no fail point named {name!r} (see meshsync/faults.py)")
    _installed[name] = fn


def remove(name: str) -> None:
    _installed.pop(name, None)


def clear() -> None:
    _installed.clear()


def hit(name: str, *args: Any) -> None:
    """Point ``name`` is reached: run what a test installed there, if anything."""
    fn = _installed.get(name)
    if fn is not None:
        fn(*args)


def wrap(name: str, value: T) -> T:
    """``value`` as the test installed at point ``name`` replaces it (else itself)."""
    fn = _installed.get(name)
    return value if fn is None else fn(value)
