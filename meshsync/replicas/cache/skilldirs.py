"""Native OpenClaw skill folders: mirror each shared skill directory into the folders
listed in ``cache.skill_dirs`` (e.g. one added to OpenClaw's ``skills.load.extraDirs``).

Each mirrored folder carries a ``.meshsync-managed`` file naming its skill.  meshsync
only ever changes or removes folders that carry it, so a skill the operator made by
hand in the same folder is never touched, even if it has the same name.
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from meshsync import layout
from meshsync.replicas.cache.store import atomic_write

MARKER = ".meshsync-managed"


@dataclass(frozen=True, slots=True)
class Warning_:
    path: str
    reason: str
    hint: str


def folder_name(name: str) -> str:
    """The skill's folder: its plain name where that is a safe local name, else encoded."""
    if name and "/" not in name and "\0" not in name and not name.startswith(".") \
            and len(name.encode("utf-8", "surrogatepass")) <= 200 and name not in (".", ".."):
        return name
    return layout.encode(name)


def frontmatter_problem(content: bytes | None) -> str | None:
    """Why OpenClaw would not load this SKILL.md (YAML frontmatter with name and
    description), or None when it looks fine."""
    if content is None:
        return None
    text = content.decode("utf-8", "replace")
    if not text.startswith("---"):
        return "SKILL.md has no YAML frontmatter (--- name: ... description: ... ---)"
    end = text.find("\n---", 3)
    if end < 0:
        return "SKILL.md frontmatter is not closed by a --- line"
    import yaml

    try:
        meta = yaml.safe_load(text[3:end])
    except yaml.YAMLError as exc:
        return f"SKILL.md frontmatter is not valid YAML: {str(exc).splitlines()[0]}"
    if not isinstance(meta, dict):
        return "SKILL.md frontmatter is not a mapping"
    missing = [k for k in ("name", "description") if not meta.get(k)]
    if missing:
        return f"SKILL.md frontmatter lacks {' and '.join(missing)}"
    return None


def _marker(d: Path) -> tuple[str | None, str | None]:
    """(skill name, node id) a mirrored folder's marker names; (None, None) without one.
    Markers of older versions name the skill only."""
    try:
        lines = (d / MARKER).read_text(encoding="utf-8").splitlines()
    except OSError:
        return None, None
    name = lines[0].strip() if lines else ""
    node = lines[1].strip()[5:] if len(lines) > 1 and lines[1].startswith("node ") else None
    return name, node


def _managed(d: Path) -> str | None:
    return _marker(d)[0]


def _files(root: Path, skill: bool = False) -> dict[str, Path]:
    """Regular files below root by relative path, links and specials skipped.  With
    ``skill`` (a skill folder on the share), only the files that are part of the skill,
    as the share's walk takes them: no temporary, ignored or editor file (R10)."""
    out: dict[str, Path] = {}
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            p = Path(e.path)
            if e.name.startswith(".meshsync-tmp-") or (skill and layout.is_ignored_name(e.name)):
                continue
            if e.is_dir(follow_symlinks=False):
                stack.append(p)
            elif e.is_file(follow_symlinks=False) and not (skill and layout.is_editor_file(e.name)):
                out[str(p.relative_to(root))] = p
    return out


@dataclass(frozen=True, slots=True)
class Limits:
    """What the share side refuses to read (R6): a file over these is not synced, so it is
    not mirrored either."""

    file_bytes: int
    skill_bytes: int


def mirror(share_root: Path, targets: list[Path], skills: dict[str, str | None],
           all_live: set[str] | None = None, node: str = "", limits: Limits | None = None) -> list[Warning_]:
    """Bring each target folder in step for the given skills: name -> share-relative
    skill dir (None: deleted).  ``all_live`` (a full pass) also removes managed folders
    of skills that no longer exist.  A folder that cannot be written is a warning (the
    mirrors are optional; the skill is synced anyway), never an error of the pass."""
    warnings: list[Warning_] = []
    for target in targets:
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            warnings.append(Warning_(str(target), f"cannot mirror skills into this folder: {exc.strerror or exc}",
                                     "make it a folder the meshsync user can write, or remove it from "
                                     "cache.skill_dirs"))
            continue
        for name, rel in skills.items():
            dest = target / folder_name(name)
            try:
                w = _one(share_root, dest, name, rel, node, limits)
            except OSError as exc:
                w = Warning_(str(dest), f"cannot mirror skill {name!r} here: {exc.strerror or exc}",
                             "check that folder (permissions, a file in the way); retried on the next change")
            if w is not None:
                warnings.append(w)
        if all_live is not None:
            warnings.extend(_remove_gone(target, all_live, node))
    return warnings


def _one(share_root: Path, dest: Path, name: str, rel: str | None, node: str,
         limits: Limits | None) -> Warning_ | None:
    """One skill's mirrored folder: written, removed (rel None) or left alone."""
    exists = dest.exists()
    owner, by = _marker(dest) if exists else (None, None)
    if exists and owner != name:
        if rel is None:
            return None
        return Warning_(str(dest), "exists and was not created by meshsync; left alone",
                        f"rename or remove it so meshsync can mirror skill {name!r} there")
    if exists and by is not None and node and by != node:
        # cache.skill_dirs shared by two nodes' configurations: each would undo the other.
        return Warning_(str(dest), f"is mirrored by node {by} too; left to it",
                        "give each node its own cache.skill_dirs folder")
    if rel is None:
        if owner == name:
            shutil.rmtree(dest)
        return None
    _copy(share_root / rel, dest, name, node, limits)
    return None


def _remove_gone(target: Path, all_live: set[str], node: str) -> list[Warning_]:
    out: list[Warning_] = []
    try:
        entries = list(os.scandir(target))
    except OSError:
        return out
    for e in entries:
        if e.is_dir(follow_symlinks=False):
            owner, by = _marker(Path(e.path))
            if owner is not None and owner not in all_live and (by is None or not node or by == node):
                try:
                    shutil.rmtree(e.path)
                except OSError as exc:
                    out.append(Warning_(e.path, f"cannot mirror skill {owner!r} here: {exc.strerror or exc}",
                                        "check that folder (permissions, a file in the way); retried on the next "
                                        "change"))
    return out


def _copy(src: Path, dest: Path, name: str, node: str = "", limits: Limits | None = None) -> None:
    want = {k: v for k, v in _files(src, skill=True).items() if k != layout.SKILL_JSON}
    if limits is not None:
        md = want.get(layout.SKILL_MD)
        if md is not None and md.stat().st_size > limits.skill_bytes:
            return  # the skill is not synced in this state: its mirror keeps the last good one
        want = {k: v for k, v in want.items() if k == layout.SKILL_MD or v.stat().st_size <= limits.file_bytes}
    dest.mkdir(parents=True, exist_ok=True)
    (dest / MARKER).write_text(name + "\n" + (f"node {node}\n" if node else ""), encoding="utf-8")
    have = {k: v for k, v in _files(dest).items() if k != MARKER}
    for relf, sp in want.items():
        dp = dest / relf
        try:
            data = sp.read_bytes()
        except OSError:
            continue
        try:
            if dp.read_bytes() == data:
                continue
        except OSError:
            pass
        atomic_write(dp, data, fsync=False)
        mode = sp.stat().st_mode
        if mode & stat.S_IXUSR:
            os.chmod(dp, 0o755)
    for relf, dp in have.items():
        if relf not in want:
            dp.unlink(missing_ok=True)
