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
    dump_doc,
    open_index,
    open_node,
    sync_after_write,
)
from meshsync.layout import MEM
from meshsync.replicas.index import queries


def conflict_json(c: dict[str, Any], with_value: bool = True) -> dict[str, Any]:
    """One conflict as `conflicts --json` (and, without the beaten value, `status
    --json`) shows it.  Times are Unix seconds like every time in the JSON output
    (docs/json.md), here with the milliseconds meshsync orders versions by."""
    item = f"{c['scope']}:{c['key']}" if c["kind"] == MEM else f"skill:{c['key']}"
    beaten: dict[str, Any] = {"node": c["loser_node"], "updated_at": c["loser_stamp"] / 1000}
    if with_value:
        v = c.get("loser_value")
        # A memory value is JSON text: embedded as JSON; a skill's is its SKILL.md text.
        beaten["value"] = orjson.Fragment(v) if v is not None and c["kind"] == MEM else v
    return {
        "id": c["id"], "item": item, "kind": "memory" if c["kind"] == MEM else "skill",
        "scope": c["scope"] if c["kind"] == MEM else None, "key": c["key"],
        "seen_at": c["at"] / 1000, "seen_on": c["side"], "beaten": beaten,
        "winner": {"node": c["winner_node"], "updated_at": c["winner_stamp"] / 1000,
                   "deleted": bool(c["winner_deleted"])},
    }


def cmd_conflicts(s: config.Settings, a: argparse.Namespace) -> int:
    idx = open_index(s)
    try:
        raw = idx.conflicts(a.limit)
    finally:
        idx.close()
    if a.json:
        print(dump_doc({"conflicts": [conflict_json(c) for c in raw]}))
        return EXIT_OK
    if not raw:
        print("no conflicts recorded")
    for c in raw:
        r = conflict_json(c, with_value=False)
        w, b = r["winner"], r["beaten"]
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["seen_at"]))
        print(f"#{r['id']}  {r['item']}  seen {when}\n"
              f"    beaten: {b['node']} at {_ms(c['loser_stamp'])}: {_short(c.get('loser_value'))}\n"
              f"    winner: {w['node']} at {_ms(c['winner_stamp'])}" + (" (delete)" if w["deleted"] else ""))
    if raw:
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
    print(f"restored {item} from conflict #{a.id} as a new write; {sync_after_write(s, [item])}")
    return EXIT_OK
