"""``meshsync conflicts`` and ``conflicts restore``: the beaten versions kept by R2.

A conflict's loser is never lost: the index keeps it (meshsync_conflicts), this lists
it, and ``restore`` writes it back as a new write that then wins everywhere.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import orjson

from meshsync import config, formats, layout
from meshsync.cli.common import (
    EXIT_NOT_FOUND,
    EXIT_OK,
    CliError,
    dump,
    open_index,
    open_node,
    sync_after_write,
    write_done,
)
from meshsync.layout import MEM
from meshsync.replicas.index import queries


def _conflict_row(c: dict[str, Any]) -> dict[str, Any]:
    item = f"{c['scope']}:{c['key']}" if c["kind"] == MEM else f"skill:{c['key']}"
    return {
        "id": c["id"], "item": item, "kind": "memory" if c["kind"] == MEM else "skill",
        "scope": c["scope"], "key": c["key"], "seen_at": c["at"] / 1000, "seen_on": c["side"],
        "beaten": {"node": c["loser_node"], "updated_at_ms": c["loser_stamp"], "value": c.get("loser_value")},
        "winner": {"node": c["winner_node"], "updated_at_ms": c["winner_stamp"],
                   "deleted": bool(c["winner_deleted"])},
    }


def cmd_conflicts(s: config.Settings, a: argparse.Namespace) -> int:
    idx = open_index(s)
    try:
        rows = [_conflict_row(c) for c in idx.conflicts(a.limit)]
    finally:
        idx.close()
    if a.json:
        for r in rows:
            v = r["beaten"]["value"]
            if v is not None and r["kind"] == "memory":
                r["beaten"]["value"] = orjson.Fragment(v)
        print(dump(rows))
        return EXIT_OK
    if not rows:
        print("no conflicts recorded")
    for r in rows:
        w, b = r["winner"], r["beaten"]
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["seen_at"]))
        print(f"#{r['id']}  {r['item']}  seen {when}\n"
              f"    beaten: {b['node']} at {_ms(b['updated_at_ms'])}: {_short(b['value'])}\n"
              f"    winner: {w['node']} at {_ms(w['updated_at_ms'])}" + (" (delete)" if w["deleted"] else ""))
    if rows:
        print("restore one with: meshsync conflicts restore ID")
    return EXIT_OK


def _ms(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) + f".{ms % 1000:03d}"


def _short(v: str | None, n: int = 60) -> str:
    if v is None:
        return "(no content)"
    return v if len(v) <= n else v[: n - 3] + "..."


def cmd_conflicts_restore(s: config.Settings, a: argparse.Namespace) -> int:
    idx = open_index(s)
    try:
        r = queries.beaten_version(idx, a.id)
    finally:
        idx.close()
    if r is None:
        print(f"meshsync: no conflict #{a.id} (see `meshsync conflicts`)", file=sys.stderr)
        return EXIT_NOT_FOUND
    if r.value is None:
        raise CliError(f"conflict #{a.id} kept no content to restore")
    node = open_node(s)
    try:
        if r.kind == MEM:
            if not s.may_write(r.scope):
                raise CliError(f"this node may not write scope {r.scope!r}; nothing was changed")
            node.put_memory(r.scope, r.key, formats.loads(r.value))
            item = layout.memory_id(r.scope, r.key)
        else:
            node.put_skill(r.key, r.value, None)
            item = layout.skill_id(r.key)
    finally:
        node.close()
    done = sync_after_write(s, [item])
    print(f"restored {item} from conflict #{a.id} as a new write; {done}")
    return write_done(done)
