"""Keep what a plan lets go: beaten versions and the last value of a deleted item (R2, R11).

Called by propagation for each plan *before* any of its writes: the records go to the
share's history (replicas/share/history.py), where every node lists them and any node
restores them.  A record that cannot be written holds the item back (its plan is not
applied this pass, the reason is reported): a version is never let go unrecorded.

What is kept for a delete is the value this node last synced (the base), read from the
index row if it still holds it, else from the share file, whichever has the base.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from meshsync import formats, layout
from meshsync.formats import FormatError, HistoryRecord
from meshsync.layout import MEM
from meshsync.model import SHARE, ItemId, Obs, Plan, State, base_live, base_of
from meshsync.replicas.share import history
from meshsync.replicas.share.store import FileRefused

if TYPE_CHECKING:
    from .wiring import Replicas

log = logging.getLogger("meshsync")


def _owner(node: Replicas, it: ItemId) -> str:
    return node.node if it.kind == MEM and it.scope == "node" else ""


def _kept_value(it: ItemId, payload: Any) -> dict[str, Any]:
    """The value a side's payload holds, as a record keeps it (empty: none read)."""
    if payload is None:
        return {}
    if it.kind == MEM:
        text = payload.loser_text()
        return {"value": text.encode("utf-8", "surrogatepass")} if text is not None else {}
    row = payload.skill_row()
    if row is not None:
        return {"content": row[0], "path": row[1]}
    text = payload.loser_text()
    return {"content": text} if text is not None else {}


def records(node: Replicas, it: ItemId, plan: Plan, sides: dict[str, Obs], st: State | None) -> list[HistoryRecord]:
    """What ``plan`` must keep before it is applied: each beaten version, and the last
    value of an item it deletes."""
    win = plan.winner
    if win is None or plan.refused or not node.policy.writable(it):
        return []  # a node that may not write the scope writes nothing on the share (R9)
    owner = _owner(node, it)
    out = []
    base = base_of(st)
    for side, v, payload in plan.beaten:
        kept = _kept_value(it, payload)
        if not kept and st is not None and v.same(base):
            # The base itself beaten (engine/plan.py base_seen): its side was not read
            # this pass (unchanged since), so its value comes from where it is kept.
            kept = last_value(node, it, st, sides)[0]
        if kept:
            out.append(history.record("beaten", it, owner, v.stamp, v.node, v.digest, **kept, by_stamp=win.stamp,
                                      by_node=win.node, by_deleted=win.deleted, side=side, recorded_by=node.node))
    if win.deleted and base_live(st):
        assert st is not None
        kept, side = last_value(node, it, st, sides)
        out.append(history.record("deleted", it, owner, st.stamp, st.node, st.digest, **kept, by_stamp=win.stamp,
                                  by_node=win.node, by_deleted=True, side=side, recorded_by=node.node))
    return out


def last_value(node: Replicas, it: ItemId, st: State, sides: dict[str, Obs]) -> tuple[dict[str, Any], str]:
    """The base's value (the version last synced) and the side it was read from; ({}, "")
    when no side holds it any more."""
    idx = node.index
    if it.kind == MEM:
        row = idx.memory_rows([it]).get(it)
        if row is not None and row.sig == st.row_sig:
            try:
                return {"value": formats.canonical(formats.loads(row.value, 0))}, "index"
            except FormatError:
                pass
    else:
        srow = idx.skill_rows([it]).get(it)
        if srow is not None and srow.sig == st.row_sig:
            return {"content": srow.content, "path": srow.path}, "index"
    sh = sides.get(SHARE)
    if sh is not None and sh.version is not None and sh.version.digest == st.digest:
        kept = _kept_value(it, sh.payload)
        if kept:
            return kept, "share"
    return _read_share(node, it, st), "share"


def _read_share(node: Replicas, it: ItemId, st: State) -> dict[str, Any]:
    """The base's value from its share file, if the file still holds it."""
    share = node.share
    rel = st.rel or layout.item_path(it, node.node)
    try:
        if it.kind == MEM:
            data, _ = share.read(rel)
            rec = formats.parse_memory(data, it.scope, it.key, 0)
            return {"value": rec.text} if rec.digest == st.digest else {}
        content = None
        if share.lstat(f"{rel}/{layout.SKILL_MD}") is not None:
            content = share.read(f"{rel}/{layout.SKILL_MD}", node.policy.max_skill_bytes)[0].decode("utf-8")
        path = None
        if share.lstat(f"{rel}/{layout.SKILL_JSON}") is not None:
            path = formats.parse_skill_json(share.read(f"{rel}/{layout.SKILL_JSON}")[0]).path
        return {"content": content, "path": path} if content is not None or path is not None else {}
    except (FileRefused, FormatError, OSError, UnicodeDecodeError, layout.LayoutError):
        return {}


def write(node: Replicas, it: ItemId, recs: list[HistoryRecord]) -> str | None:
    """Write ``recs``; None when done, else why not (the plan then waits, R11)."""
    for rec in recs:
        try:
            node.history.keep(rec)
        except FileRefused as exc:
            return f"{exc.problem.path}: {exc.problem.reason}"
        except OSError as exc:
            return exc.strerror or str(exc)
        if rec.why == "deleted" and not rec.kept:
            log.debug("deleted %s: no copy of its last value was readable; the delete is recorded without it", it)
    return None
