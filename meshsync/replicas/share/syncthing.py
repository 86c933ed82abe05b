"""A share kept by Syncthing: recognise it and read the names Syncthing gives its files.

On a mesh without a NAS every node's share is its own Syncthing folder, and Syncthing
replicates it.  meshsync needs no help from Syncthing to sync (it only ever sees its local
folder), but the engine needs to read the names Syncthing gives its own files:

* the folder marker ``.stfolder``, the ignore file ``.stignore``, the versions folder
  ``.stversions/`` and temporary files ``.syncthing.<name>.tmp`` (``~syncthing~<name>.tmp``
  on Windows): never items (SPEC section 2);
* conflict copies ``<stem>.sync-conflict-<YYYYMMDD>-<HHMMSS>-<DEVICE7><ext>`` that
  Syncthing keeps of a losing concurrent edit: a version of the original file that takes
  part in R1/R2 like any other (:func:`parse_conflict_name`, :func:`conflict_original`).

What an operator needs to know of Syncthing (its ignore patterns, its REST API, the
folder's state) is asked by ``meshsync doctor``: meshsync/cli/doctor_syncthing.py.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from meshsync import formats
from meshsync.formats import FormatError
from meshsync.layout import ItemId
from meshsync.replicas.share.store import FileEntry, FileRefused, Share, sig_of

MARKER = ".stfolder"
IGNORE_FILE = ".stignore"
VERSIONS_DIR = ".stversions"

# --- names ------------------------------------------------------------------------------------

# Syncthing names a conflict copy of "<stem><ext>" (ext: Go's filepath.Ext, the last dot
# on) "<stem>.sync-conflict-<date>-<time>-<first 7 characters of the device id><ext>",
# with the date and time of the node that made the copy, in its local time.
_CONFLICT = re.compile(r"\.sync-conflict-(\d{8})-(\d{6})-([A-Z2-7]{7})")


@dataclass(frozen=True, slots=True)
class ConflictName:
    """What a conflict copy's name says: the file it is a copy of (same folder), when the
    copy was made (the local time of the node that made it) and by which device."""

    original: str
    when: datetime
    device: str


def is_syncthing_folder(root: Path) -> bool:
    """Syncthing puts its marker at the top of every folder it syncs (and refuses to sync
    a folder whose marker went missing)."""
    return os.path.lexists(os.path.join(root, MARKER))


def is_temporary(name: str) -> bool:
    """A file Syncthing is still pulling: it renames it over ``name`` when complete."""
    return name.endswith(".tmp") and (name.startswith(".syncthing.") or name.startswith("~syncthing~"))


def _ext(name: str) -> str:
    """Go's filepath.Ext: from the last dot of the name on ("" when there is none)."""
    i = name.rfind(".")
    return name[i:] if i >= 0 else ""


def parse_conflict_name(name: str) -> ConflictName | None:
    """The conflict copy ``name`` stands for, or None when Syncthing cannot have made a
    file of that name.  A copy of a copy ("a.sync-conflict-X.sync-conflict-Y.json") names
    the first copy as its original; :func:`conflict_original` follows such chains."""
    for m in reversed(list(_CONFLICT.finditer(name))):
        stem, rest = name[:m.start()], name[m.end():]
        if "/" in rest or (rest and (not rest.startswith(".") or "." in rest[1:])):
            continue
        original = stem + rest
        if not original or _ext(original) != rest:
            continue  # Syncthing would have put the marker before the last dot
        try:
            when = datetime.strptime(m.group(1) + m.group(2), "%Y%m%d%H%M%S")
        except ValueError:
            continue
        return ConflictName(original, when, m.group(3))
    return None


def conflict_original(rel: str) -> tuple[str, ConflictName] | None:
    """For a share-relative path of a conflict copy (a memory file, a file inside a skill
    folder, ...): the path of the file it is a version of, and what its name says."""
    parent, _, name = rel.rpartition("/")
    info = parse_conflict_name(name)
    if info is None:
        return None
    while (inner := parse_conflict_name(info.original)) is not None:
        info = ConflictName(inner.original, info.when, info.device)
    return (f"{parent}/{info.original}" if parent else info.original), info


def is_syncthing_file(rel: str) -> bool:
    """A share-relative path that is Syncthing's own: marker, ignore file, versions,
    temporary file, or a conflict copy (a version, but never an item of its own name)."""
    parts = rel.split("/")
    if parts[0] in (MARKER, IGNORE_FILE, VERSIONS_DIR):
        return True
    return is_temporary(parts[-1]) or parse_conflict_name(parts[-1]) is not None


# --- meshsync's own files in conflict ---------------------------------------------------------


def _tomb_of(share: Share, rel: str) -> tuple[bytes, tuple[ItemId, int, str]] | None:
    try:
        data, _ = share.read(rel, 64 * 1024)
        return data, formats.parse_tombstone(data)
    except (FileNotFoundError, FileRefused, FormatError):
        return None


def fold_tombstone_copies(share: Share, tombstones: dict[str, FileEntry]) -> int:
    """Fold Syncthing's conflict copies of meshsync's tombstones back into the tombstones.

    Two nodes apart that delete the same item each write its tombstone (so does a node
    that takes a file's deletion for a local delete before the other's tombstone has
    arrived); Syncthing keeps one and renames the other "<name>.sync-conflict-...json".
    Both say "deleted": the newer of the two is kept at the tombstone's own path (R4:
    the later delete is the one an update must beat) and the copy is removed, so that
    copies do not pile up in .meshsync/tombstones/ for ever.  A copy whose original is
    not a tombstone of the same item is left alone.  ``tombstones`` (a walk's, by
    share-relative path) loses the copies and gets the rewritten originals as unsettled
    (read again by this pass).  Returns how many copies were removed."""
    done = 0
    for rel in [r for r in tombstones if ".sync-conflict-" in r]:
        tombstones.pop(rel)
        found = conflict_original(rel)
        copy = _tomb_of(share, rel)
        if found is None or copy is None:
            continue
        orig = found[0]
        real = _tomb_of(share, orig)
        if real is not None and real[1][0] != copy[1][0]:
            continue
        if real is None or (copy[1][1], copy[1][2]) > (real[1][1], real[1][2]):
            try:
                st = share.write(orig, copy[0])
            except (OSError, FileRefused):
                continue  # the copy stays; the next full pass tries again
            tombstones[orig] = FileEntry(orig, sig_of(st), False)
        share.remove(rel)
        done += 1
    return done
