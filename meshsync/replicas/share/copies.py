"""Syncthing's conflict copies, read as more observations of the items they copy (R1, R2).

When two nodes change the same file while apart, Syncthing keeps one (the newer mtime)
and renames the other ``<stem>.sync-conflict-<date>-<time>-<device><ext>`` beside it, on
every node.  Such a copy is never an item of its own (SPEC section 2): it is a version of
the file it copies, which takes part in newest-``updated_at``-wins like any other.  So
detection hands it to reconcile as one more share side of that item (``copy:<path>``,
model.COPY): reconcile picks the winner among the share file, the copies, the index and
the cache; the loser goes to the conflict history like any beaten version; the copy is
removed once its version is recorded, never before (engine/propagate.py).

* A memory file's copy is read as the file it copies (its item comes from that path,
  never from the copy's name).
* In a skill folder, the copies one conflict left (same device, one per file) make one
  version of the skill: the folder with each copy in place of its file.  A copied
  ``skill.json`` whose ``rev`` matches the copied content names a version meshsync
  wrote; otherwise the version is derived from the copies alone (their mtimes, their own
  skill.json), never from the files the copies lost to.
* Syncthing renames the file it replaces to the copy's name and only then puts the new
  file in place: a pass that looks in between sees a copy (renamed just now, ctime) and
  no file.  That is no delete: the item waits for the next pass (R5's rule: unknown,
  never gone).

Only a folder Syncthing syncs (``.stfolder``) is looked at: elsewhere such names stay
ignored, as files of another tool.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from meshsync import layout
from meshsync.layout import MEM
from meshsync.model import COPY, ItemId, Obs, Pass, Problem
from meshsync.payloads import CopyMem
from meshsync.replicas.share import syncthing
from meshsync.replicas.share.store import FileEntry, Share, SkillDir, Walk, item_of_memory_rel


class _NodeNamed(Protocol):
    @property
    def node(self) -> str: ...


class Reader(Protocol):
    """The share's detector, as conflict copies need it (replicas/share/detect.py's
    ShareDetector): a copy is read as the file it copies, by the same readers."""

    @property
    def share(self) -> Share: ...
    @property
    def cfg(self) -> _NodeNamed: ...
    @property
    def replicated(self) -> bool: ...  # a Syncthing folder, as the full walk found it

    def read_memory(self, rel: str, sig: str | None, problems: list[Problem], got: bool = False,
                    as_rel: str | None = None) -> tuple[ItemId, Obs] | None: ...

    def read_skill(self, rel: str, files: list, sig: str | None, problems: list[Problem],
                   copies: dict[str, FileEntry] | None = None) -> tuple[ItemId, Obs] | None: ...


def observe(det: Reader, p: Pass) -> set[ItemId]:
    """Add the walk's conflict copies to ``p.share_copies`` (item -> side -> Obs); returns
    the items that have some (they are looked at by this pass)."""
    walk = p.walk
    assert walk is not None
    skills = [sd for sd in walk.skills.values() if sd.copies]
    if not (walk.copies or skills) or not det.replicated:
        return set()
    found: dict[ItemId, list[tuple[str, FileEntry, Obs]]] = {}  # item -> (original, copy, obs)
    for rel, fe in sorted(walk.copies.items()):
        got = _memory_copy(det, rel, fe, p.problems)
        if got is not None:
            found.setdefault(got[0], []).append((got[1], fe, got[2]))
    for sd in skills:
        for it, group, obs in _skill_copies(det, sd, p.problems):
            for orig, fe in group.items():
                found.setdefault(it, []).append((orig, fe, obs))
    for it, seen in found.items():
        if any(not fe.settled and not _present(walk, orig, it) for orig, fe, _ in seen):
            p.share_unknown.add(it)  # Syncthing is between its two renames: next pass
            continue
        sides = p.share_copies.setdefault(it, {})
        for _, fe, obs in seen:
            sides.setdefault(f"{COPY}{_first(obs, fe)}", obs)
    return set(found)


def _first(obs: Obs, fe: FileEntry) -> str:
    """The side's name: the copy's path (a skill version's first copy)."""
    got = obs.payload.conflict_copies() if obs.payload is not None else []
    return min(rel for rel, _ in got) if got else fe.rel


def _present(walk: Walk, orig: str, it: ItemId) -> bool:
    """Whether the file a copy copies is in the share as the walk saw it."""
    if it.kind == MEM:
        return walk.has_memory(orig) or walk.is_unknown(orig)
    sd = walk.skills.get("/".join(orig.split("/")[:2]))  # skills/<name>
    return sd is not None and any(f.rel == orig for f in sd.files)


def _memory_copy(det: Reader, rel: str, fe: FileEntry,
                 problems: list[Problem]) -> tuple[ItemId, str, Obs] | None:
    """(item, original path, observation) of a memory file's conflict copy."""
    got = syncthing.conflict_original(rel)
    if got is None:
        return None  # not a name Syncthing gives: ignored as any other stray name
    orig = got[0]
    try:
        item_of_memory_rel(orig, det.cfg.node)
    except layout.LayoutError:
        return None  # the original is no item file either (reported as such if present)
    read = det.read_memory(rel, None, problems, as_rel=orig)
    if read is None:
        return None
    it, obs = read
    if layout.item_path(it, det.cfg.node) != orig:
        return None
    pl = obs.payload
    # Taken as it is: a copy is a version written elsewhere, not an edit made here
    # after the base (reconcile.py never stamps a copy after the base).
    return it, orig, Obs(obs.version, True, CopyMem(pl.rec, None, pl.hash, None, (rel, pl.cas or fe.sig)))


def _groups(sd: SkillDir) -> list[dict[str, FileEntry]]:
    """The copies of a skill folder by conflict: one group per device that made them,
    in time order, with at most one copy of each file (original path -> copy)."""
    by_device: dict[str, list[tuple[object, str, str, FileEntry]]] = {}
    for fe in sd.copies:
        got = syncthing.conflict_original(fe.rel)
        if got is None:
            continue
        orig, info = got
        by_device.setdefault(info.device, []).append((info.when, fe.rel, orig, fe))
    out: list[dict[str, FileEntry]] = []
    for device in sorted(by_device):
        groups: list[dict[str, FileEntry]] = []
        for _, _, orig, fe in sorted(by_device[device], key=lambda t: (t[0], t[1])):
            g = next((g for g in groups if orig not in g), None)
            if g is None:
                groups.append({orig: fe})
            else:
                g[orig] = fe
        out += groups
    return out


def _skill_copies(det: Reader, sd: SkillDir,
                  problems: list[Problem]) -> Iterable[tuple[ItemId, dict[str, FileEntry], Obs]]:
    """Each conflict's version of a skill folder."""
    for group in _groups(sd):
        seen: list[Problem] = []
        got = det.read_skill(sd.rel, sd.files, None, seen, group)
        copied = {fe.rel for fe in group.values()}
        # The folder's own problems are the folder's read's to report; the copies' are ours.
        problems.extend(pr for pr in seen if pr.path in copied)
        if got is not None:
            yield got[0], group, got[1]
