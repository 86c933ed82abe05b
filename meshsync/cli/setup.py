"""``meshsync init``, ``sync`` and ``run``: setting a node up and moving changes.

``init`` never initialises what may be an unmounted NAS's mount point (R5); ``sync`` is
one pass under the index lock (refused while a daemon holds it); ``run`` is the daemon.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from meshsync import config, layout, logs
from meshsync.cli.common import CliError, command_lock, dump_doc, open_node
from meshsync.cli.deletes import FIX, describe
from meshsync.cli.status import pass_json
from meshsync.exits import (
    EXIT_BUSY,
    EXIT_FAULT,
    EXIT_OK,
    EXIT_PROBLEMS,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
)
from meshsync.replicas.index.store import Index, IndexError_
from meshsync.replicas.share.store import Share, ShareUnavailable


def outer_share(root: Path) -> Path | None:
    """The meshsync share ``root`` lies inside (a parent folder with a marker), if any."""
    for parent in root.resolve().parents:
        if (parent / layout.META).is_dir():
            return parent
    return None


def cmd_init(s: config.Settings, a: argparse.Namespace) -> int:
    share = Share(s.share, max_file_bytes=s.limits.max_file_bytes)
    root = s.share
    outer = outer_share(root)
    if outer is not None:
        # R11: a marker inside the share would make an isolated mesh of one of its folders.
        raise CliError(f"{root} is inside the meshsync share {outer}: every node uses the share's root folder.\n"
                       f"  Set share to {outer} (MESHSYNC_SHARE={outer}); nothing was changed.", EXIT_USAGE)
    if root.exists() and not (root / layout.META).is_dir():
        entries = [e for e in os.listdir(root) if not e.startswith(".")] if root.is_dir() else ["?"]
        if entries and not a.force:
            raise CliError(
                f"{root} already holds files ({', '.join(sorted(entries)[:5])}) but no {layout.META}/ marker.\n"
                "  If the NAS is not mounted, mount it first: initialising the mount point would hide the real share.\n"
                "  If this really is a new share, run `meshsync init --force`.", EXIT_UNAVAILABLE)
    try:
        root.mkdir(parents=True, exist_ok=True)
        share.initialise()
    except OSError as exc:
        raise CliError(f"cannot create the share layout in {root}: {exc.strerror}", EXIT_UNAVAILABLE) from None
    except ShareUnavailable as exc:  # e.g. a share upgraded to a newer format: left as it is
        raise CliError(f"share unavailable: {exc}", EXIT_UNAVAILABLE) from None
    # The daemon's lock is honoured: an index made (or remade, after a delete) under a
    # running daemon was never looked at by it, and its rows were not exported (R12).
    with command_lock(s) as daemon:
        if daemon is not None:
            raise CliError(f"a meshsync daemon (pid {daemon or '?'}) is running on {s.index}; stop it first "
                           "(systemctl stop meshsync), then run `meshsync init` again", EXIT_BUSY)
        try:
            idx = Index(s.index)
            try:
                idx.claim(s.node_id)  # R11: this index serves this node id only
            finally:
                idx.close()
        except IndexError_ as exc:
            raise CliError(str(exc), EXIT_FAULT) from None
    print(f"share ready: {root}\nindex ready: {s.index}\nnode id: {s.node_id}")
    return EXIT_OK


def cmd_sync(s: config.Settings, a: argparse.Namespace) -> int:
    with command_lock(s) as daemon:
        if daemon is not None:
            raise CliError(f"a meshsync daemon (pid {daemon or '?'}) is running on {s.index}; it keeps the node "
                           "in sync already (see `meshsync status`)", EXIT_BUSY)
        node = open_node(s)
        if sys.stderr.isatty() and not a.json:
            node.progress = logs.Progress()
        try:
            stats = node.sync(full_index=a.full)
        except ShareUnavailable as exc:
            node.record_unavailable(str(exc))
            if a.json:
                print(dump_doc({"ok": False, "share": {"path": str(s.share), "available": False, "reason": str(exc)}}))
            print(f"meshsync: share unavailable: {exc}\n  nothing was changed in the index or the cache.",
                  file=sys.stderr)
            return EXIT_UNAVAILABLE
        finally:
            if node.progress is not None:
                node.progress.done()
            node.close()
    if stats.held:
        # R11: held deletes are a refusal, told on every run until confirmed or undone.
        h = hold_of(s)
        print(f"meshsync: {describe(h) if h else f'{stats.held} deletes held'}; nothing was deleted.\n  -> {FIX}",
              file=sys.stderr)
    if a.json:
        print(dump_doc({"ok": stats.errors == 0 and not stats.held,
                        "share": {"path": str(s.share), "available": True, "reason": ""},
                        **pass_json(stats.as_dict())}))
    else:
        print(f"synced in {stats.seconds:.2f}s: {stats.scanned} items scanned, {stats.read} read, "
              f"{stats.to_share} written to the share, {stats.to_index} to the index, "
              f"{stats.deleted} deleted, {stats.conflicts} conflicts, {stats.errors} problems"
              + (", cache rewritten" if stats.cache_written else ""))
        if stats.errors:
            print("  some files or rows were skipped: see `meshsync status`", file=sys.stderr)
    return EXIT_PROBLEMS if stats.errors or stats.held else EXIT_OK


def hold_of(s: config.Settings) -> dict | None:
    from meshsync.replicas.index import queries
    from meshsync.replicas.index.store import Index

    idx = Index(s.index)
    try:
        return queries.delete_hold(idx)
    finally:
        idx.close()


def cmd_run(s: config.Settings, a: argparse.Namespace) -> int:
    from meshsync.daemon.loop import run

    return run(s, a.config)
