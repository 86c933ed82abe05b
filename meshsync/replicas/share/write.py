"""Exports to the share: memory files, skill folders, tombstones, each compare-and-set.

A write must never replace what the pass did not see (R2): a hand edit landing between
the pass's read and its write is kept, and the item waits for the next pass.  Memory
files carry their check into Share.write/write_many (tested just before the rename);
a skill export checks SKILL.md (the file people edit) before it writes; a delete
removes only a file the pass saw.
"""

from __future__ import annotations

import time

from meshsync import faults, formats, layout
from meshsync.layout import MEM, SKILL
from meshsync.model import ItemId, Obs, Problem, Version
from meshsync.payloads import Check, Payload, absent, present
from meshsync.replicas.share.store import FileRefused, Share, Walk, sig_of


def mem_check(sh_obs: Obs | None) -> Check | None:
    """The compare-and-set of a memory file: whether its current lstat is still the
    file the pass observed (sh_obs; None: not looked at, no check)."""
    if sh_obs is None:
        return None
    check = sh_obs.payload.file_check() if sh_obs.payload is not None else None
    if check is None:
        check = absent if sh_obs.version is None or sh_obs.version.deleted else present
    return faults.wrap("share.check", check)


def unchanged(share: Share, rel: str, sh_obs: Obs | None, it: ItemId) -> bool:
    """Compare-and-set on the share: the file must still be what we observed, so a
    hand edit that lands between our read and our write is not overwritten."""
    return faults.wrap("share.unchanged", _unchanged(share, rel, sh_obs, it))


def _unchanged(share: Share, rel: str, sh_obs: Obs | None, it: ItemId) -> bool:
    if sh_obs is None:
        return True
    if it.kind == SKILL:
        # The file people edit is SKILL.md: an export must not replace one saved after
        # we looked (a hand edit lost without a trace, found by the chaos test).
        cur = share.lstat(f"{rel}/{layout.SKILL_MD}")
        cas = sh_obs.payload.skill_cas() if sh_obs.payload is not None else None
        if cas is not None and cas[0] == "md":
            return (sig_of(cur) if cur is not None else "") == cas[1]
        if cas is not None:
            # Not read this pass (its folder's signature was the recorded one): it must
            # still be what the walk saw.
            return share.walk_skill(rel, Walk(), time.time_ns()).sig == cas[1]
        if sh_obs.payload is None and (sh_obs.version is None or sh_obs.version.deleted):
            return cur is None  # we saw no folder: one made since is a new write
        return True
    check = mem_check(sh_obs)
    return check is None or check(share.lstat(rel))


def export_delete(share: Share, it: ItemId, rel: str, win: Version, node: str, sh_obs: Obs | None) -> None:
    """The file first, then the tombstone (R4: offline nodes learn of the delete).

    In this order a crash between the two leaves neither (the next pass sees the file
    gone and writes the tombstone, R7), never "file + tombstone": every node reads a
    file beside a tombstone as a restore made after the delete unless it is the file
    that node last synced (replicas/share/detect.py against_tombstone), so our own
    crashed delete would have come back on the nodes that had not synced that file."""
    # Only a file we saw goes: one made since we saw none is a new write (R2).
    if sh_obs is None or sh_obs.dirty or (sh_obs.version is not None and not sh_obs.version.deleted):
        if it.kind == MEM:
            share.remove(rel)
        else:
            share.remove_tree(rel)
    faults.hit("share.delete_removed", it)
    share.write(layout.tombstone_path(it, node), formats.render_tombstone(it, win.stamp, win.node))


def drop_tombstone(share: Share, it: ItemId, node: str) -> None:
    """Remove an item's tombstone (the file beside it won: a restore, R10)."""
    share.remove(layout.tombstone_path(it, node))


def copies_unchanged(share: Share, payload: Payload | None) -> bool:
    """Whether the conflict copies an export will put in place are still as read."""
    for copy_rel, _, sig in payload.copy_moves() if payload is not None else ():
        cur = share.lstat(copy_rel)
        if cur is None or sig_of(cur) != sig:
            return False
    return True


def export_skill(share: Share, it: ItemId, rel: str, win: Version, node: str, payload: Payload,
                 extras: str, max_skill_bytes: int = 0, replaces: str | None = None) -> str:
    """Write a skill's folder (SKILL.md unless the share holds it already, the files a
    winning conflict copy brings, skill.json) and drop its tombstone; returns the digest
    written.  A SKILL.md over the readers' limit is never written (formats.TooLarge, R10).
    ``replaces``: the rev of the version this export replaces, named in skill.json (R2 on
    a NAS: engine/plan.py base_seen)."""
    got = payload.skill_bytes()
    if got is None:
        raise FileRefused(Problem(rel, "no content to write for the skill", ""))
    content, path = got
    if max_skill_bytes and content is not None and len(content) > max_skill_bytes:
        raise formats.TooLarge(len(content), max_skill_bytes)
    digest = formats.skill_digest(content, path, extras)
    for copy_rel, orig_rel, _ in payload.copy_moves():
        # A copy's other files, written over the ones they lost to (the copies go once
        # the pass is recorded: engine/propagate.py).
        share.write(orig_rel, share.read(copy_rel)[0])
    if not payload.on_share():
        if content is not None:
            share.write(f"{rel}/{layout.SKILL_MD}", content)
        else:
            share.remove(f"{rel}/{layout.SKILL_MD}")
    share.write(f"{rel}/{layout.SKILL_JSON}",
                formats.render_skill_json(it, path, digest, win.stamp, win.node, replaces))
    share.remove(layout.tombstone_path(it, node))
    return digest


def remove_copies(share: Share, copies: list[tuple[str, str]]) -> list[str]:
    """Remove conflict copies whose versions the pass has recorded (R2: never before),
    each only while it is still the file that was read: one changed since is read
    again by the next pass.  Returns the paths removed."""
    done = []
    for rel, sig in copies:
        cur = share.lstat(rel)
        if cur is None or sig_of(cur) != sig:
            continue
        try:
            share.remove(rel)
        except OSError:
            continue  # e.g. a read-only share: the next pass folds it again (nothing lost)
        done.append(rel)
    return done
