"""The pure core: given what was last synced and what each replica holds now, decide.

No I/O happens here.  Every node runs the same function over the same observations,
which is what makes the outcome (R1) independent of the node and of the order in which
sides are looked at.

Vocabulary
----------
* A **version** is either a value (``deleted=False``, with a content ``digest``) or a
  tombstone (``deleted=True``).  Versions are totally ordered by
  ``(stamp, node, not deleted, digest)``: newest ``updated_at`` (in milliseconds) wins,
  ties go to the larger node id, then an update beats a delete, then the larger digest.
* An **observation** is what one side (share, index, cache) holds for the item now.
  ``trusted`` observations carry a stamp that meshsync itself gave (a canonical share
  file, an index row equal to the last synced one).  Untrusted ones are fresh local
  writes (a hand edit, a foreign SQLite write, a Phase 1 tool): they were made after
  the writer saw the base, so they are stamped after the base even if the writer's
  clock is behind (R3).
* The **base** is the version this node last saw on all its sides.
* A version stamped more than ``FUTURE_MS`` ahead of the pass's clock (which is the file
  server's when this node's own clock is far ahead, engine/clock.py) is **from the
  future**: a clock a day ahead must not win for a day (R12).  A fresh write so stamped
  is taken as written now; a trusted one (exported by a node before it was caught) ranks
  below every plausible version and is no floor for the writes after it.  Skews of
  minutes are far below the hour, so R3 is unchanged.
* A **conflict copy** (side ``copy:<path>``, model.COPY) is a version Syncthing kept
  beside the share file when two nodes changed it while apart.  It is one more
  observation of the share, taken as it is (it is no local write made after the base,
  so it is never stamped after it), and it is never written: once its version is
  recorded the copy is removed (engine/propagate.py).  Since it proves that the
  version in it and the one in the share file were written concurrently, the one of
  them that loses is beaten even when it is this node's base (R2).
"""

from __future__ import annotations

from typing import Any

from meshsync.model import ABSENT, CACHE, COPY, INDEX, SHARE, SIDES, Obs, Plan, Version, is_copy

__all__ = ["ABSENT", "CACHE", "COPY", "FUTURE_MS", "INDEX", "SHARE", "SIDES", "Obs", "Plan", "Version",
           "effective", "reconcile"]


def _on_share(side: str) -> bool:
    return side == SHARE or is_copy(side)


FUTURE_MS = 3_600_000  # a stamp this far ahead of the pass's clock is from the future (R12)


def effective(obs: Obs, base: Version | None, now_ms: int, node: str, horizon: int | None = None) -> Version | None:
    """The version a side stands for, once fresh local writes are stamped after base.
    With ``horizon`` (the pass's clock + FUTURE_MS), stamps beyond it are from the
    future: a fresh write is clamped to ``now_ms`` and a base from the future floors
    nothing (R12)."""
    v = obs.version
    future_base = horizon is not None and base is not None and base.stamp > horizon
    if v is None:
        if base is not None and not base.deleted:
            # The side lost an item it had: a delete made here, now.
            return Version(now_ms if future_base else max(now_ms, base.stamp + 1), node, deleted=True)
        return None
    if obs.trusted or (base is not None and v.same(base)):
        return v
    stamp = now_ms if horizon is not None and v.stamp > horizon else v.stamp
    floor = base.stamp + 1 if base is not None and not future_base else 0
    return Version(max(stamp, floor), v.node, v.digest, v.deleted)


def _sides_to_write(base: Version | None, sides: dict[str, Obs], win: Version) -> set[str]:
    """The sides (of SIDES: never a conflict copy) that do not hold ``win`` as it must be."""
    write: set[str] = set()
    for side in SIDES:
        obs = sides.get(side)
        if obs is None:
            continue
        cur = obs.version
        if win.deleted:
            if cur is not None and not cur.deleted:
                write.add(side)
            elif cur is not None and cur.deleted and not cur.same(win):
                write.add(side)  # an older tombstone is replaced by the newer one
            elif cur is None and side == SHARE and (base is None or not base.same(win)):
                write.add(side)  # the share keeps tombstones for offline nodes (R4)
            elif obs.dirty:
                write.add(side)
        elif cur is None or not cur.same(win) or not obs.trusted or obs.dirty:
            write.add(side)
    return write


def reconcile(
    base: Version | None,
    sides: dict[str, Obs],
    *,
    now_ms: int,
    node: str,
    writable: frozenset[str] = frozenset(SIDES),
    base_seen: bool = True,
) -> Plan:
    """Decide the winner among the sides and which sides must change.

    ``writable`` lists the sides this node may write for the item (R9: a scope the node
    may not write leaves the share out).  A local write that would have to reach a side
    we may not write is reported as refused rather than dropped.

    ``base_seen`` False: the base may never have been seen by the writer of what replaced
    it on the share (this node's own fresh export, overwritten by a concurrent export
    whose compare-and-set passed on a network client's stale attributes).  The base is
    then a candidate like any other: when it loses it is kept as beaten (R2), instead of
    being let go as "the version everybody had".
    """
    horizon = now_ms + FUTURE_MS
    copies = sorted(s for s in sides if is_copy(s))
    cands: list[tuple[str, Version]] = []
    # The share's versions first (the file, then its copies): of equal versions, the
    # one on the share is the source (a copy holds a skill's files, not only SKILL.md).
    for side in (SHARE, *copies, INDEX, CACHE):
        obs = sides.get(side)
        if obs is None:
            continue
        v = obs.version if is_copy(side) else effective(obs, base, now_ms, node, horizon)
        if v is not None:
            cands.append((side, v))
    if SHARE not in writable and any(_on_share(s) for s, _ in cands):
        # A node that may not write the share follows it (R1, R9): a side that merely
        # still holds the base is no local write, so it must not out-vote whatever the
        # share holds now (e.g. another node's normalisation of a hand edit, stamped
        # from that node's older base) and must not be reported as a refused write.
        cands = [(s, v) for s, v in cands if _on_share(s) or not (base is not None and v.same(base))]
    if not cands:
        # Nothing anywhere: keep a tombstone we already had (until retention), else nothing.
        return Plan(base if base is not None and base.deleted else None, None, set(), [])

    # A version from the future ranks below every plausible one (R12); among themselves
    # versions keep their order (R1: the same rule on every node).
    src, win = max(cands, key=lambda c: (c[1].stamp <= horizon, c[1].order))
    write = _sides_to_write(base, sides, win)
    refused: list[tuple[str, Version]] = []
    blocked = write - writable
    if blocked:
        write -= blocked
        if src not in blocked and not is_copy(src):  # a copy is the share's: importing it is no local write
            refused = [(s, win) for s in sorted(blocked)]

    # Copies beside a winner from the share: the share's versions were written
    # concurrently, and the base among them lost to another, not to a later write.
    contested = bool(copies) and _on_share(src)
    beaten: list[tuple[str, Version, Any]] = []
    seen: set[str] = set()
    for side, v in cands:
        if v.deleted or v.digest == win.digest or v.digest in seen:
            continue
        if base_seen and base is not None and v.same(base) and not (contested and _on_share(side)):
            continue  # the version everybody had: overwritten, not beaten
        seen.add(v.digest)
        beaten.append((side, v, sides[side].payload))
    return Plan(win, src, write, beaten, refused)
