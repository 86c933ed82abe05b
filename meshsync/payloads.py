"""What an observation carries from detection to propagation: one protocol, nine kinds.

reconcile.py decides on versions alone; the payload is "carried to apply, never
inspected".  Propagation needs the winner's bytes, a loser's text for the history, the
secret guard's verdict and the compare-and-set of the file a side was seen with: each
payload kind answers those questions itself (:class:`Payload`), so no phase asks a
payload for its class.  An answer of None means "not read this pass": the engine then
takes the value from the index, where the base is.

The kinds, by the replica that makes them:

* share (replicas/share/detect.py): :class:`ShareFile` (seen by the walk, not read),
  :class:`ShareMem` (a memory file read), :class:`ShareSkill` (a skill folder read),
  and their conflict-copy variants :class:`CopyMem` and :class:`CopySkill`
  (replicas/share/copies.py: a version Syncthing kept beside the file);
* index (replicas/index/detect.py): :class:`IndexMem`, :class:`IndexSkill` (a row that
  changed since the last pass);
* cache (replicas/cache/): :class:`CacheEntry` (an entry of mesh-memory.json a Phase 1
  tool wrote), :class:`CacheSkill` (a file in mesh/skills/).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from meshsync import secretguard
from meshsync.model import sig_text

if TYPE_CHECKING:
    from meshsync import formats

# Compare-and-set for a write: given the target's lstat (None: absent) just before the
# rename, whether it is still what the caller saw.
Check = Callable[[os.stat_result | None], bool]

MISSING: Any = object()  # mem_value() of a payload that holds no value read this pass


def present(cur: os.stat_result | None) -> bool:
    return cur is not None


def absent(cur: os.stat_result | None) -> bool:
    return cur is None


def same_file(sig: str | None) -> Check:
    """The compare-and-set of a file seen with signature ``sig`` (None: seen, but too
    fresh to compare: it must still be there)."""
    if sig is None:
        return present
    return lambda cur: cur is not None and sig_text(cur.st_mtime_ns, cur.st_size, cur.st_ino, cur.st_mode) == sig


def _text(b: bytes | None) -> str | None:
    return b.decode("utf-8") if b is not None else None


def _utf8(s: str | None) -> bytes | None:
    return s.encode("utf-8", "surrogatepass") if s is not None else None


class Payload:
    """The questions propagation asks of a side's payload.  Every answer defaults to
    "not here" (None, MISSING, [] or False); each kind answers what it holds."""

    __slots__ = ()

    # --- the winner's value, to be written elsewhere ---------------------------------------
    def mem_text(self) -> str | None:
        """A memory item's value as text for mesh_memory.value (None: not read)."""
        return None

    def mem_value(self) -> Any:
        """A memory item's JSON value, to render its share file (MISSING: not read)."""
        return MISSING

    def skill_row(self) -> tuple[str | None, str | None] | None:
        """A skill's (content, path) as mesh_skills holds them (None: not read)."""
        return None

    def skill_bytes(self) -> tuple[bytes | None, str | None] | None:
        """A skill's (SKILL.md bytes, path) to export to the share (None: not read)."""
        return None

    def on_share(self) -> bool:
        """The share holds these bytes already: an export writes only skill.json."""
        return False

    def row_sig(self) -> str | None:
        """The signature of the index row this payload was read from (None: not a row)."""
        return None

    # --- a beaten version, kept in the history ---------------------------------------------
    def loser_text(self) -> str | None:
        return None

    # --- a local write on its way to the share ----------------------------------------------
    def secret_hits(self, key: str) -> list[str]:
        """The secret-guard rules this local write matches (before the allow lists)."""
        return []

    # --- the share side as the pass saw it (compare-and-set, recorded signatures) -----------
    def share_read(self) -> tuple[str | None, str] | None:
        """(signature, hash) of the share bytes read this pass (None: not read)."""
        return None

    def skill_extras(self) -> str | None:
        """A skill folder's digest of its files other than SKILL.md, as read."""
        return None

    def replaces(self) -> str | None:
        """The rev of the version the writer of this share file saw and replaced ("": none
        or not said; None: not a file meshsync wrote; see formats.MemoryRecord.replaces)."""
        return None

    def file_check(self) -> Check | None:
        """The compare-and-set of the share file this side was seen with (None: the
        side was not seen on the share; the caller goes by the version)."""
        return None

    def skill_cas(self) -> tuple[str, str] | None:
        """What must be unchanged before a skill export: ("md", SKILL.md's signature as
        read) or ("dir", the folder's signature as walked); None: nothing seen."""
        return None

    def import_check(self) -> tuple[str, Check] | None:
        """For a file another program wrote, read while it may still be being written
        (modified in the last seconds): the file (a suffix to the item's share path) and
        the check that it is still what was read, made before its version is committed
        (R6, R7: a half-written file is never imported).  None: nothing to check."""
        return None

    # --- a conflict copy (Syncthing) ----------------------------------------------------------
    def conflict_copies(self) -> list[tuple[str, str]]:
        """The conflict copies this version was read from, (share path, signature as
        read): removed once the pass has recorded the version, if still unchanged."""
        return []

    def copy_moves(self) -> list[tuple[str, str, str]]:
        """Files of a skill's conflict copy that an export of this version puts in place
        of the originals (copy path, original path, the copy's signature as read): the
        files other than SKILL.md and skill.json, which the export writes itself."""
        return []


# --- share -------------------------------------------------------------------------------


@dataclass(slots=True)
class ShareFile(Payload):
    """A share file seen in the walk but not read (its signature was unchanged)."""

    sig: str | None
    cas: str | None = None  # the signature seen by the walk, even when too fresh to trust

    def file_check(self) -> Check | None:
        return same_file(self.cas or self.sig)

    def skill_cas(self) -> tuple[str, str] | None:
        # Not read this pass (its folder's signature was the recorded one): it must
        # still be what the walk saw.
        sig = self.cas or self.sig
        return ("dir", sig) if sig else None


@dataclass(slots=True)
class ShareMem(Payload):
    rec: formats.MemoryRecord
    sig: str | None
    hash: str
    # The stat signature of the bytes read, even when too fresh to be trusted for skipping
    # reads (``sig`` is None then): the compare-and-set before rewriting the file uses it.
    cas: str | None = None

    def mem_text(self) -> str | None:
        return self.rec.text.decode("utf-8")

    def mem_value(self) -> Any:
        return self.rec.value

    def loser_text(self) -> str | None:
        return self.rec.text.decode("utf-8")

    def share_read(self) -> tuple[str | None, str] | None:
        return self.sig, self.hash

    def file_check(self) -> Check | None:
        # Compare with the file as read even when it was modified in the last seconds
        # (its ``sig`` is None then): a hand save landing between our read of the
        # previous save and our rewrite was overwritten and lost, unrecorded (R2, R3).
        return same_file(self.cas or self.sig)

    def replaces(self) -> str | None:
        return self.rec.replaces

    def import_check(self) -> tuple[str, Check] | None:
        if self.rec.trusted or self.sig is not None or self.cas is None:
            return None  # meshsync's own files are renamed into place whole; a settled file is not being written
        return "", same_file(self.cas)


@dataclass(slots=True)
class ShareSkill(Payload):
    content: bytes | None
    path: str | None
    extras: str
    sig: str | None
    hash: str
    # The stat signature of SKILL.md as read ("" when there was none): the compare-and-set
    # before an export rewrites it (see replicas/share/write.py).
    cas: str | None = None
    # See Payload.replaces; set by replicas/share/detect.py read_skill.
    replaced: str | None = None

    def skill_row(self) -> tuple[str | None, str | None] | None:
        return _text(self.content), self.path

    def skill_bytes(self) -> tuple[bytes | None, str | None] | None:
        return self.content, self.path

    def on_share(self) -> bool:
        return True

    def loser_text(self) -> str | None:
        return _text(self.content)

    def share_read(self) -> tuple[str | None, str] | None:
        return self.sig, self.hash

    def skill_extras(self) -> str | None:
        return self.extras

    def file_check(self) -> Check | None:
        return same_file(self.cas or self.sig)

    def skill_cas(self) -> tuple[str, str] | None:
        return ("md", self.cas) if self.cas is not None else None

    def replaces(self) -> str | None:
        return self.replaced

    def import_check(self) -> tuple[str, Check] | None:
        if self.sig is not None or not self.cas:
            return None  # a settled folder (no file modified in the last seconds), or no SKILL.md
        return "/SKILL.md", same_file(self.cas)


@dataclass(slots=True)
class CopyMem(ShareMem):
    """A memory file's conflict copy (``<key>.sync-conflict-<date>-<time>-<device>.json``),
    read as a version of the file it is a copy of.  Not the share's file: no signature
    or compare-and-set of the share's own file comes from it."""

    copy: tuple[str, str] = ("", "")  # (share path, signature as read)

    def share_read(self) -> tuple[str | None, str] | None:
        return None

    def file_check(self) -> Check | None:
        return None

    def conflict_copies(self) -> list[tuple[str, str]]:
        return [self.copy]


@dataclass(slots=True)
class CopySkill(ShareSkill):
    """A skill folder as one conflict's copies make it (each copy in place of the file
    it is a copy of): a version of the skill that is not on the share as such."""

    copies: tuple[tuple[str, str], ...] = ()  # (share path, signature as read)
    moves: tuple[tuple[str, str, str], ...] = ()  # see copy_moves()

    def on_share(self) -> bool:
        return False  # its SKILL.md may be a copy's: an export writes it

    def share_read(self) -> tuple[str | None, str] | None:
        return None

    def file_check(self) -> Check | None:
        return None

    def skill_cas(self) -> tuple[str, str] | None:
        return None

    def conflict_copies(self) -> list[tuple[str, str]]:
        return list(self.copies)

    def copy_moves(self) -> list[tuple[str, str, str]]:
        return list(self.moves)


# --- index -------------------------------------------------------------------------------


class MemoryRow(Protocol):
    """A mesh_memory row as the index reads it (replicas/index/store.py's MemoryRow)."""

    @property
    def value(self) -> str: ...
    @property
    def sig(self) -> str: ...


class SkillRow(Protocol):
    """A mesh_skills row as the index reads it (replicas/index/store.py's SkillRow)."""

    @property
    def content(self) -> str | None: ...
    @property
    def path(self) -> str | None: ...
    @property
    def sig(self) -> str: ...


@dataclass(slots=True)
class IndexMem(Payload):
    row: MemoryRow
    value: Any
    text: str  # canonical JSON of value

    def mem_text(self) -> str | None:
        return self.row.value

    def row_sig(self) -> str | None:
        return self.row.sig

    def mem_value(self) -> Any:
        return self.value

    def loser_text(self) -> str | None:
        return self.text

    def secret_hits(self, key: str) -> list[str]:
        return secretguard.scan_value(self.value, key)


@dataclass(slots=True)
class IndexSkill(Payload):
    row: SkillRow

    def skill_row(self) -> tuple[str | None, str | None] | None:
        return self.row.content, self.row.path

    def row_sig(self) -> str | None:
        return self.row.sig

    def skill_bytes(self) -> tuple[bytes | None, str | None] | None:
        return _utf8(self.row.content), self.row.path

    def loser_text(self) -> str | None:
        return self.row.content

    def secret_hits(self, key: str) -> list[str]:
        return secretguard.scan_bytes(_utf8(self.row.content) or b"")


# --- cache -------------------------------------------------------------------------------


@dataclass(slots=True)
class CacheEntry(Payload):
    """One ``scope:key`` entry of mesh-memory.json as a Phase 1 tool left it."""

    scope: str
    key: str
    value: Any
    text: bytes  # canonical JSON of value
    digest: str
    node: str | None
    ts: int | None  # seconds

    def mem_text(self) -> str | None:
        return self.text.decode("utf-8")

    def mem_value(self) -> Any:
        return self.value

    def loser_text(self) -> str | None:
        return self.text.decode("utf-8")

    def secret_hits(self, key: str) -> list[str]:
        return secretguard.scan_value(self.value, key)


@dataclass(slots=True)
class CacheSkill(Payload):
    """A mesh/skills/<name>.md file a Phase 1 tool wrote."""

    content: str
    mtime_ms: int

    def skill_row(self) -> tuple[str | None, str | None] | None:
        return self.content, None

    def skill_bytes(self) -> tuple[bytes | None, str | None] | None:
        return _utf8(self.content), None

    def loser_text(self) -> str | None:
        return self.content

    def secret_hits(self, key: str) -> list[str]:
        return secretguard.scan_bytes(self.content.encode("utf-8", "surrogatepass"))
