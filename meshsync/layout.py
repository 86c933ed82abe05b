"""Where every item lives in the share, and how any string becomes a portable file name.

The encoding keeps plain lower-case names readable (``user.preferences`` stays
``user.preferences``) and escapes everything else, so that an encoded name

* contains only ``a-z 0-9 . _ - ^ %`` and, for shortened names, ``~``; no letter is
  upper-case, so two different names never meet on a case-insensitive share, and no
  byte is non-ASCII, so Unicode normalisation on macOS cannot merge two names;
* never starts with ``.`` (scanners ignore dot files: temporary files, marker), never
  ends with ``.`` or space, and never is a Windows device name;
* fits in 255 bytes together with its suffix; longer names are shortened with a hash
  and the full name is kept inside the file.

Upper-case ASCII letters are written as ``^`` + the lower-case letter; every other byte
outside the plain set as ``%`` + two lower-case hex digits of its UTF-8 encoding.  The
empty string is ``^`` alone.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable

from meshsync.model import MEM, SKILL, ItemId

PLAIN = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-")
_UPPER = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
RESERVED = frozenset(
    ["con", "prn", "aux", "nul", "clock$", "conin$", "conout$"]
    + [f"com{i}" for i in "123456789¹²³"]
    + [f"lpt{i}" for i in "123456789¹²³"]
)
# Leave room for the suffix and for our temporary-file prefix in the same directory.
MAX_STEM = 200
SHORT_MARK = "~"

MEMORY = "memory"
SKILLS = "skills"
META = ".meshsync"
TOMBSTONES = f"{META}/tombstones"
# The share's format version: the layout and file formats above (memory files, skill
# folders, tombstones, journals).  A meshsync knows the formats up to SHARE_FORMAT; a
# share whose FORMAT_FILE names a newer one is left alone (unavailable, nothing
# written) until this node is upgraded.  Raise it only for a change older nodes would
# misread; a share without the file (made before it existed) is format 1.
SHARE_FORMAT = 1
FORMAT_FILE = f"{META}/format"
HISTORY = f"{META}/history"  # beaten and deleted versions, one record each (R11)
SKILL_MD = "SKILL.md"
SKILL_JSON = "skill.json"


class LayoutError(ValueError):
    """A name or path that does not belong to the share layout."""


def _escape_byte(b: int) -> str:
    return f"%{b:02x}"


_PLAIN_RUN = re.compile(r"[a-z0-9_-][a-z0-9._-]*")


def _plain_ok(name: str) -> bool:
    """True when ``name`` is its own encoding (the common case, checked fast)."""
    return (_PLAIN_RUN.fullmatch(name) is not None and not name.endswith(".")
            and len(name) <= MAX_STEM and name.split(".", 1)[0] not in RESERVED
            and ".sync-conflict-" not in name and not name.endswith(".tmp") and name != "desktop.ini")


def encode(name: str) -> str:
    """Encode ``name`` as one portable path segment (without suffix)."""
    if _plain_ok(name):
        return name
    if name == "":
        return "^"
    out: list[str] = []
    for ch in name:
        if ch in PLAIN:
            out.append(ch)
        elif ch in _UPPER:
            out.append("^" + ch.lower())
        else:
            out.extend(_escape_byte(b) for b in ch.encode("utf-8", "surrogatepass"))
    if out[0] == ".":
        out[0] = "%2e"
    if out[-1] == ".":
        out[-1] = "%2e"
    first = "".join(out).split(".", 1)[0]
    if first in RESERVED:
        # Escape the first character so that Windows sees no device name.
        out[0] = _escape_byte(ord(out[0])) if len(out[0]) == 1 else out[0]
    enc = "".join(out)
    # Never produce a name that scanners skip as another tool's file.
    enc = enc.replace(".sync-conflict-", "%2esync-conflict-")
    if enc.endswith(".tmp"):
        enc = enc[:-4] + "%2etmp"
    if enc == "desktop.ini":
        enc = "%64esktop.ini"
    if len(enc) > MAX_STEM:
        digest = hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=10).hexdigest()
        head = enc[: MAX_STEM - len(digest) - 1]
        # Never cut an escape sequence in half: the head only has to be readable.
        head = re.sub(r"(%[0-9a-f]?|\^)$", "", head)
        enc = f"{head}{SHORT_MARK}{digest}"
    return enc


_TOKEN = re.compile(r"%([0-9a-f]{2})|\^([a-z])|([a-z0-9._-])")


def decode(segment: str) -> str:
    """Inverse of :func:`encode` for names it produced; raise LayoutError otherwise.

    Shortened names cannot be decoded (the full name is inside the file); they raise
    :class:`Shortened`.
    """
    if _plain_ok(segment):
        return segment
    if segment == "^":
        return ""
    if SHORT_MARK in segment:
        raise Shortened(segment)
    raw = bytearray()
    pos = 0
    for m in _TOKEN.finditer(segment):
        if m.start() != pos:
            break
        pos = m.end()
        if m.group(1) is not None:
            raw.append(int(m.group(1), 16))
        elif m.group(2) is not None:
            raw += m.group(2).upper().encode()
        else:
            raw += m.group(3).encode()
    if pos != len(segment):
        raise LayoutError(f"not a meshsync-encoded name: {segment!r}")
    try:
        name = raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise LayoutError(f"escaped bytes are not UTF-8 in {segment!r}") from exc
    if encode(name) != segment:
        raise LayoutError(f"not the canonical spelling of {name!r}: expected {encode(name)!r}")
    return name


def renamed_hint(folder: str, name: str, suffix: str, exists: Callable[[str], bool], what: str) -> str:
    """What a badly named file or folder (``folder/name``) should be renamed to.

    The name is taken in Unicode NFC, as people mean it: a macOS client writes
    ``café.json`` decomposed (NFD) over SMB, and renaming it to the encoding of the NFD
    string made a second item that looks exactly like the item café.  When the file of
    that name exists already (the item is there), the hint says so instead of leading
    to a duplicate.  (Keys themselves are never normalised: an NFD key written into an
    index is a key of its own for SQLite and every client; its file name is ASCII,
    which no file system normalises; docs/guarantees.md, R10.)"""
    key = unicodedata.normalize("NFC", name)
    target = f"{folder}/{encode(key)}{suffix}"
    if exists(target):
        return (f"{what} {key!r} is already {target}: copy what you need from this one into it, "
                "then remove this one")
    return f"rename it to {target} to import it as {what} {key!r}"


class Shortened(LayoutError):
    """A shortened name: the full name must be read from the file itself."""


NOT_UTF8_NAME = "file name is not valid UTF-8"

def not_unicode(*names: str | None) -> bool:
    """A name no SQLite text or JSON string can hold: bytes that are not UTF-8 in a file
    name (os.scandir hands them over as surrogate escapes), or a lone surrogate."""
    for n in names:
        if n is not None:
            try:
                n.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False


# --- items -----------------------------------------------------------------------------

# tuple.__new__ skips the named tuple's Python-level constructor: a pass makes an id for
# every file it reads.
_new_id = tuple.__new__


def memory_id(scope: str, key: str) -> ItemId:
    return _new_id(ItemId, (MEM, scope, key))


def skill_id(name: str) -> ItemId:
    return _new_id(ItemId, (SKILL, "", name))


def valid_scope(scope: str) -> bool:
    return scope in ("mesh", "node") or scope.startswith("user:")


def memory_dir(scope: str, node_id: str) -> str:
    """Share-relative directory holding the files of ``scope`` as seen by ``node_id``."""
    if scope == "mesh":
        return f"{MEMORY}/mesh"
    if scope == "node":
        return f"{MEMORY}/node/{encode(node_id)}"
    if scope.startswith("user:"):
        return f"{MEMORY}/user/{encode(scope[5:])}"
    raise LayoutError(f"scope {scope!r} is not one of node, mesh, user:<id>")


def item_path(item: ItemId, node_id: str) -> str:
    """Share-relative path of the item's file (memory) or directory (skill)."""
    if item.kind == MEM:
        return f"{memory_dir(item.scope, node_id)}/{encode(item.key)}.json"
    return f"{SKILLS}/{encode(item.key)}"


def tombstone_path(item: ItemId, node_id: str) -> str:
    """Share-relative path of the item's tombstone, mirroring the item's own path."""
    if item.kind == MEM:
        return f"{TOMBSTONES}/{item_path(item, node_id)}"
    return f"{TOMBSTONES}/{SKILLS}/{encode(item.key)}.json"


def cache_skill_name(name: str) -> str:
    return f"{encode(name)}.md"


_EDITOR_SUFFIXES = (".swp", ".swo", ".swx", ".swn", "___jb_tmp___", "___jb_old___")


def is_editor_file(name: str) -> bool:
    """Files editors make beside the file a person edits, never items nor parts of a
    skill (R10), in memory folders and in skill folders alike.  Besides the dot files
    and ``x~`` backups is_ignored_name covers: Emacs's auto-save ``#x.json#`` (its lock
    ``.#x.json`` is a dot file), vim's swap files (``.x.json.swp``, ``.swo``, ``.swx``)
    and the probe file it writes to test a folder (``4913``, then 4913 + 123 k),
    JetBrains' safe-write ``x___jb_tmp___``/``x___jb_old___``.  For files only: a
    folder named ``4913`` is a user id's folder or a skill."""
    if is_ignored_name(name):
        return True
    if len(name) > 2 and name[0] == "#" and name[-1] == "#":
        return True
    if name.isascii() and name.isdigit() and len(name) < 10:
        n = int(name)
        return n >= 4913 and (n - 4913) % 123 == 0
    return name.endswith(_EDITOR_SUFFIXES)


def is_ignored_name(name: str) -> bool:
    """Names no scanner ever treats as items: dot files (our temporaries, editors'
    swap files, Syncthing's ``.syncthing.*.tmp``), other tools' conflict copies and
    backup files."""
    return (
        name.startswith(".")
        or ".sync-conflict-" in name
        or name.endswith("~")
        or name.startswith("~$")
        or name.endswith(".tmp")
        or name in ("Thumbs.db", "desktop.ini", "@eaDir", "#recycle", "#snapshot")
    )
