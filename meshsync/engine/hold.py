"""Hold a mass delete (R11): deletes the share shows only by absence wait for a person.

A pass deletes an item *by absence* when its file or folder is gone from the share and no
tombstone says why.  meshsync cannot tell a person's ``rm`` from a folder removed by
mistake, a share emptied and initialised again, a wrong ``share`` path or an old backup
put back under live indexes.  So when such deletes add up to more than
``safety.max_delete_percent`` of the items (of all of them, or of one folder's) and to more
than ``safety.max_delete_count``, counted over HOLD_WINDOW_MS (a folder emptied over several
passes adds up too), none of them is applied: no index row, no cache entry, no tombstone,
nothing on the share.  The hold is reported (``status``, ``doctor``, the log once) and ends
when the files are back (the next pass finds nothing to delete) or when a person confirms
it (``meshsync deletes confirm``): the confirming node then applies exactly the deletes it
held, writing tombstones that the other nodes follow.

Not held, on purpose:

* deletes by tombstone: a tombstone is written by a node that applied a delete it had
  reason to apply (a CLI ``rm``, a client's delete, deletes under the threshold, or
  confirmed ones); holding them on the other nodes would only split the mesh;
* deletes in the index (``meshsync rm``, another SQLite client's ``DELETE``): the index is
  this node's own and a delete there is an explicit act of a local program, not an
  absence; its values are kept in the share's history (``meshsync deleted``, ``restore``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import orjson

from meshsync import layout
from meshsync.layout import SKILL, ItemId
from meshsync.model import SHARE, Obs, Pass, Plan, State, base_live

from .plan import Planned

if TYPE_CHECKING:
    from .wiring import Replicas

log = logging.getLogger("meshsync")

HOLD_WINDOW_MS = 600_000  # deletes by absence within this long count together
EMPTIED = 0.9  # a hold that takes this share of all items names the share itself as the likely cause
ALL = ""  # the window's key for all items together


def folder_of(it: ItemId, st: State | None, node_id: str) -> str:
    """The share folder an item's file lives in (skills: "skills")."""
    if it.kind == SKILL:
        return layout.SKILLS
    rel = (st.rel if st is not None else None) or layout.item_path(it, node_id)
    return rel.rpartition("/")[0]


def by_absence(plan: Plan, sides: dict[str, Obs], st: State | None) -> bool:
    """The plan deletes a live item because its file is gone from the share, with no
    tombstone (see the module's docstring)."""
    win, sh = plan.winner, sides.get(SHARE)
    return (win is not None and win.deleted and base_live(st) and sh is not None and sh.version is None
            and plan.source == SHARE)


def _over(n: int, base: int, s: Any) -> bool:
    return s.max_delete_percent < 100 and n > s.max_delete_count and n * 100 > s.max_delete_percent * base


def _window(node: Replicas, p: Pass) -> dict[str, Any]:
    """Deletes by absence applied lately (meta delete_window), and the items each folder
    had when the window began."""
    if p.delete_window is None:
        w = orjson.loads(node.index.meta("delete_window") or "null")
        if w is None or p.now_ms - w["since"] > HOLD_WINDOW_MS:
            base = node.index.live_folders()
            w = {"since": p.now_ms, "base": {**base, ALL: sum(base.values())}, "done": {}}
        p.delete_window = w
    return p.delete_window


def screen(node: Replicas, p: Pass, plans: list[Planned]) -> list[Planned]:
    """``plans`` less the deletes by absence that must be held (recorded in ``p.held``)."""
    p.hold_looked.update(it for it, _, _ in plans)
    cand = {it: folder_of(it, p.state.get(it), node.node)
            for it, plan, sides in plans if by_absence(plan, sides, p.state.get(it))}
    if not cand:
        return plans
    confirmed = node.index.confirmed_deletes()
    p.confirmed_applied.update(it for it in cand if it in confirmed)
    cand = {it: f for it, f in cand.items() if it not in confirmed}
    if not cand:
        return plans
    w = _window(node, p)
    new = Counter(cand.values())
    new[ALL] = len(cand)
    s = node.s.safety
    if not any(_over(w["done"].get(f, 0) + n, w["base"].get(f, 0), s) for f, n in new.items()):
        for f, n in new.items():
            w["done"][f] = w["done"].get(f, 0) + n
        p.window_moved = True
        return plans
    p.held.update(cand)
    p.stats.held = len(p.held)
    return [x for x in plans if x[0] not in cand]


# --- what the commit records -------------------------------------------------------------------


def causes(node: Replicas, held: dict[ItemId, str]) -> list[str]:
    """The likely cause of a hold, in words: which folders lost how many of their files."""
    live = node.index.live_folders()
    out = []
    for folder, n in Counter(held.values()).most_common():
        what = "skill folders" if folder == layout.SKILLS else "files"
        gone = node.share.lstat(folder) is None
        out.append(f"{folder} is missing {n} of {live.get(folder, n)} {what}"
                   + (" (the folder itself is gone)" if gone else ""))
    total = sum(live.values())
    if total and len(held) >= EMPTIED * total:
        out.append(f"the share is missing {len(held)} of {total} items: is `share` the right folder, "
                   "or was it emptied, initialised again or put back from an old backup?")
    return out


def _items(raw: list) -> dict[ItemId, str]:
    return {ItemId(k, s, key): f for k, s, key, f in raw}


def load(node: Replicas) -> dict[str, Any] | None:
    """The hold recorded by the last pass (meta delete_hold), or None."""
    return orjson.loads(node.index.meta("delete_hold") or "null")


def record(node: Replicas, p: Pass) -> None:
    """After a pass: the hold as it stands now (a targeted pass keeps what it did not look
    at), the window, the confirmations used; the log once per new hold."""
    idx = node.index
    old = load(node)
    before = _items(old["items"]) if old else {}
    if p.full:
        held = dict(p.held)
    else:
        held = {it: f for it, f in before.items() if it not in p.hold_looked}
        held.update(p.held)
    meta: dict[str, str] = {}
    if p.window_moved and p.delete_window is not None:
        meta["delete_window"] = orjson.dumps(p.delete_window).decode()
    confirmed = idx.confirmed_deletes()
    if confirmed:
        left = set() if p.full else confirmed - p.hold_looked
        meta["deletes_confirmed"] = orjson.dumps([list(it) for it in sorted(left)]).decode()
    if held == before and not meta:
        return
    new = None
    if held:
        new = {"count": len(held), "since": old["since"] if old else time.time(), "causes": causes(node, held),
               "items": sorted([*it, f] for it, f in held.items())}
    meta["delete_hold"] = orjson.dumps(new).decode()
    with idx.write() as db:
        idx.set_meta(db, **meta)
    if new is not None and (old is None or old["count"] != new["count"]):
        log.warning("held %d deletes: %s; nothing was deleted. Put the files back (the hold clears by itself), "
                    "or run `meshsync deletes confirm` on one node if the deletes are meant",
                    new["count"], "; ".join(new["causes"]))
    elif new is None and old is not None:
        log.info("the held deletes are no longer pending (files back, or deletes confirmed)")


def confirm(node: Replicas) -> int:
    """Confirm the recorded hold: its items' deletes by absence will be applied by the
    next pass that looks at them (queued in the outbox, so a running daemon does it at
    once).  Returns how many."""
    h = load(node)
    if not h:
        return 0
    items = sorted(_items(h["items"]))
    idx = node.index
    with idx.write() as db:
        both = sorted(set(items) | idx.confirmed_deletes())
        idx.set_meta(db, deletes_confirmed=orjson.dumps([list(it) for it in both]).decode())
        idx.requeue(db, items)
    return len(items)

