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


def _managed(d: Path) -> str | None:
    try:
        return (d / MARKER).read_text(encoding="utf-8").strip()
    except OSError:
        return None


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


def mirror(share_root: Path, targets: list[Path], skills: dict[str, str | None],
           all_live: set[str] | None = None) -> list[Warning_]:
    """Bring each target folder in step for the given skills: name -> share-relative
    skill dir (None: deleted).  ``all_live`` (a full pass) also removes managed folders
    of skills that no longer exist."""
    warnings: list[Warning_] = []
    for target in targets:
        target.mkdir(parents=True, exist_ok=True)
        for name, rel in skills.items():
            dest = target / folder_name(name)
            owner = _managed(dest) if dest.exists() else None
            if dest.exists() and owner != name:
                if rel is not None:
                    warnings.append(Warning_(str(dest), "exists and was not created by meshsync; left alone",
                                             f"rename or remove it so meshsync can mirror skill {name!r} there"))
                continue
            if rel is None:
                if owner == name:
                    shutil.rmtree(dest)
                continue
            _copy(share_root / rel, dest, name)
        if all_live is not None:
            try:
                entries = list(os.scandir(target))
            except OSError:
                continue
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    owner = _managed(Path(e.path))
                    if owner is not None and owner not in all_live:
                        shutil.rmtree(e.path)
    return warnings


def _copy(src: Path, dest: Path, name: str) -> None:
    want = {k: v for k, v in _files(src, skill=True).items() if k != layout.SKILL_JSON}
    dest.mkdir(parents=True, exist_ok=True)
    (dest / MARKER).write_text(name + "\n", encoding="utf-8")
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
