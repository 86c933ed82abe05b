"""``meshsync conflicts``, ``deleted`` and ``restore``: the share's history (R2, R11).

Versions that lost a conflict and the last values of deleted items are kept on the share
(replicas/share/history.py), so these commands answer the same on every node, whichever
node saw the conflict or applied the delete.  ``restore ID`` (also ``conflicts restore
ID``) writes a kept version back as a new write, which then wins everywhere like any
newer write.  IDs are the records' names: the same on every node; a unique prefix of at
least four characters is enough.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import orjson

from meshsync import config, formats, layout
from meshsync.cli.common import CliError, dump_doc, open_node, report_write, secret_hits
from meshsync.exits import EXIT_NOT_FOUND, EXIT_OK, EXIT_UNAVAILABLE
from meshsync.formats import HistoryRecord
from meshsync.layout import MEM, SKILL, ItemId
from meshsync.replicas.share.history import MIN_PREFIX, History, Listing
from meshsync.replicas.share.store import Share, ShareUnavailable


def open_history(s: config.Settings) -> History:
    """The share's history as this node sees it; exit 3 when the share is unavailable."""
    share = Share(s.share, max_file_bytes=s.limits.max_file_bytes)
    try:
        share.check()
    except ShareUnavailable as exc:
        raise CliError(f"share unavailable: {exc}; the history is kept on the share", EXIT_UNAVAILABLE) from None
    return History(share, s.node_id)


def readable(s: config.Settings):
    """Items this node may read (R9): the history of other scopes is not shown."""
    return lambda it: it.kind == SKILL or s.may_read(it.scope)


def _kept(r: HistoryRecord) -> dict[str, Any]:
    if r.item.kind == MEM:
        return {"value": orjson.Fragment(r.value) if r.value is not None else None, "kept": r.kept}
    return {"content": r.content, "path": r.path, "kept": r.kept}


def _head(rid: str, it: ItemId, at_ms: int, side: str) -> dict[str, Any]:
    """The fields every history entry starts with (docs/schemas/conflicts.json)."""
    return {"id": rid, "item": str(it), "kind": "memory" if it.kind == MEM else "skill",
            "scope": it.scope if it.kind == MEM else None, "key": it.key, "seen_at": at_ms / 1000, "seen_on": side}


def as_json(r: HistoryRecord, with_value: bool = True) -> dict[str, Any]:
    """One record as `conflicts --json` / `deleted --json` print it (docs/json.md; without
    the kept value, as `status --json` lists conflicts).  Times are Unix seconds like every
    time in the JSON output, here with the milliseconds meshsync orders versions by."""
    d = {**_head(r.id, r.item, r.recorded_at, r.side), "recorded_by": r.recorded_by}
    version = {"node": r.node, "updated_at": r.stamp / 1000, **(_kept(r) if with_value else {})}
    if r.why == "beaten":
        d["beaten"] = version
        d["winner"] = {"node": r.by_node, "updated_at": r.by_stamp / 1000, "deleted": r.by_deleted}
    else:
        d["last"] = version
        d["deleted_by"] = {"node": r.by_node, "updated_at": r.by_stamp / 1000}
    return d


def row_json(c: dict[str, Any]) -> dict[str, Any]:
    """A conflict this node saw itself (its index's meshsync_conflicts row), in the shape
    `status --json` lists conflicts from the history: what status shows without the share."""
    it = layout.memory_id(c["scope"], c["key"]) if c["kind"] == MEM else layout.skill_id(c["key"])
    return {**_head(str(c.get("record") or c["id"]), it, c["at"], c["side"]), "recorded_by": None,
            "beaten": {"node": c["loser_node"], "updated_at": c["loser_stamp"] / 1000},
            "winner": {"node": c["winner_node"], "updated_at": c["winner_stamp"] / 1000,
                       "deleted": bool(c["winner_deleted"])}}


def _warn_unreadable(got: Listing) -> None:
    for rel, why in got.unreadable[:10]:
        print(f"meshsync: history record {rel} cannot be read: {why}", file=sys.stderr)


def _list(s: config.Settings, a: argparse.Namespace, why: str) -> int:
    got = open_history(s).list(why, readable(s), limit=a.limit)
    _warn_unreadable(got)
    if a.json:
        print(dump_doc({"conflicts" if why == "beaten" else "deleted": [as_json(r) for r in got.records],
                        "unreadable": [{"path": rel, "reason": w} for rel, w in got.unreadable]}))
        return EXIT_OK
    if not got.records:
        print("no conflicts recorded" if why == "beaten" else "no deleted items recorded")
    for r in got.records:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.recorded_at / 1000))
        head = f"#{r.id}  {r.item}  kept {when} by {r.recorded_by}"
        if why == "beaten":
            print(f"{head}\n    beaten: {r.node} at {_ms(r.stamp)}: {_short(r)}\n"
                  f"    winner: {r.by_node} at {_ms(r.by_stamp)}" + (" (delete)" if r.by_deleted else ""))
        else:
            print(f"{head}\n    last:    {r.node} at {_ms(r.stamp)}: {_short(r)}\n"
                  f"    deleted: by {r.by_node} at {_ms(r.by_stamp)}")
    if got.records:
        print("restore one with: meshsync restore ID")
    return EXIT_OK


def cmd_conflicts(s: config.Settings, a: argparse.Namespace) -> int:
    return _list(s, a, "beaten")


def cmd_deleted(s: config.Settings, a: argparse.Namespace) -> int:
    return _list(s, a, "deleted")


def _ms(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) + f".{ms % 1000:03d}"


def _short(r: HistoryRecord, n: int = 60) -> str:
    if not r.kept:
        return "(no copy of its value was readable)"
    if r.item.kind == MEM:
        v = (r.value or b"").decode("utf-8", "replace")
    else:
        v = r.content if r.content is not None else f"(reference to {r.path})"
    v = v.replace("\n", " ")
    return v if len(v) <= n else v[: n - 3] + "..."


def find(s: config.Settings, rid: str) -> HistoryRecord:
    """The one record whose ID starts with ``rid``."""
    if len(rid) < MIN_PREFIX or any(c not in "0123456789abcdef" for c in rid):
        raise CliError(f"{rid!r} is not a history ID: give at least {MIN_PREFIX} of its hex digits "
                       "(see `meshsync conflicts` and `meshsync deleted`)")
    got = open_history(s).list(None, readable(s), prefix=rid)
    _warn_unreadable(got)
    if not got.records:
        raise CliError(f"no record {rid} in the share's history (see `meshsync conflicts` and `meshsync deleted`)",
                       EXIT_NOT_FOUND)
    if len(got.records) > 1:
        raise CliError(f"{rid} names {len(got.records)} records ({', '.join(r.id for r in got.records[:5])}): "
                       "give more of the ID")
    return got.records[0]


def cmd_restore(s: config.Settings, a: argparse.Namespace) -> int:
    r = find(s, a.id)
    it = r.item
    if not r.kept:
        raise CliError(f"record {r.id} kept no value to restore (no copy was readable when {it} was deleted)")
    if it.kind == MEM and not s.may_write(it.scope):
        raise CliError(f"this node may not write scope {it.scope!r}; nothing was changed")
    node = open_node(s)
    try:
        if it.kind == MEM:
            node.put_memory(it.scope, it.key, formats.loads(r.value or b"null", 0))
            item: ItemId = layout.memory_id(it.scope, it.key)
        else:
            node.put_skill(it.key, r.content, r.path)
            item = layout.skill_id(it.key)
    finally:
        node.close()
    hits = (secret_hits(s, item, formats.loads(r.value or b"null", 0)) if it.kind == MEM
            else secret_hits(s, item, content=r.content or ""))
    return report_write(f"restored {item} from record {r.id} as a new write", [item], s, hits)


cmd_conflicts_restore = cmd_restore
