"""``meshsync deletes`` and ``deletes confirm``: a held mass delete (R11, engine/hold.py).

``deletes`` shows what the last passes held and why; ``deletes confirm`` lets this node
apply exactly those deletes (a running daemon does it at once; without one, a pass runs
here).  The other nodes then follow the tombstones it writes.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from meshsync import config
from meshsync.cli.common import CliError, command_lock, dump_doc, open_index, open_node
from meshsync.exits import EXIT_OK, EXIT_PROBLEMS, EXIT_UNAVAILABLE
from meshsync.layout import MEM
from meshsync.replicas.index import queries
from meshsync.replicas.share.store import ShareUnavailable

FIX = ("if the files were removed by mistake, put them back (or mount the right share): the hold clears by "
       "itself; if the deletes are meant, run `meshsync deletes confirm` on one node")


def describe(h: dict) -> str:
    """One line: how many deletes are held and why."""
    return f"{h['count']} deletes held: {'; '.join(h['causes'])}"


def hold_json(h: dict[str, Any] | None) -> dict[str, Any] | None:
    """A held mass delete as `deletes --json` and `status --json` show it (docs/json.md):
    each held item named like everywhere else (SCOPE:KEY or skill:NAME) with the folder
    whose share it was counted against."""
    if h is None:
        return None
    items = [{"item": f"{scope}:{key}" if kind == MEM else f"skill:{key}", "folder": folder}
             for kind, scope, key, folder in h["items"]]
    return {"count": h["count"], "since": h["since"], "causes": h["causes"], "items": items}


def cmd_deletes(s: config.Settings, a: argparse.Namespace) -> int:
    idx = open_index(s)
    try:
        h = queries.delete_hold(idx)
    finally:
        idx.close()
    if a.json:
        # Exit 1 while deletes are held, as without --json.
        print(dump_doc({"hold": hold_json(h)}))
        return EXIT_PROBLEMS if h else EXIT_OK
    if not h:
        print("no deletes are held")
        return EXIT_OK
    print(describe(h) + "\nnothing was deleted meanwhile; the items held:")
    for kind, scope, key, _folder in h["items"][:50]:
        print(f"  {scope}:{key}" if kind == "m" else f"  skill:{key}")
    if len(h["items"]) > 50:
        print(f"  ... and {len(h['items']) - 50} more (meshsync deletes --json)")
    print(f"-> {FIX}")
    return EXIT_PROBLEMS


def cmd_deletes_confirm(s: config.Settings, a: argparse.Namespace) -> int:
    from meshsync.engine import hold  # here: the engine is not imported by commands that only read

    node = open_node(s)
    try:
        n = hold.confirm(node)
    finally:
        node.close()
    if not n:
        print("no deletes are held: nothing to confirm")
        return EXIT_OK
    with command_lock(s) as daemon:
        if daemon is not None:
            print(f"{n} deletes confirmed; the running daemon applies them now")
            return EXIT_OK
        node = open_node(s)
        try:
            stats = node.sync()
        except ShareUnavailable as exc:
            node.record_unavailable(str(exc))
            raise CliError(f"{n} deletes confirmed, not applied yet: share unavailable: {exc}",
                           EXIT_UNAVAILABLE) from None
        finally:
            node.close()
    print(f"{n} deletes confirmed and applied: {stats.deleted} deleted (their last values are in "
          "`meshsync deleted`)" + (f"; {stats.held} other deletes held" if stats.held else ""))
    if stats.held:
        print(f"meshsync: {stats.held} deletes held (see `meshsync deletes`)", file=sys.stderr)
    return EXIT_PROBLEMS if stats.errors or stats.held else EXIT_OK

