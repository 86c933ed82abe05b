"""The bytes of items: memory files, skill metadata, tombstones, digests.

Everything meshsync writes is rendered stably (same content, same bytes: R8) and carries
``updated_at_ms`` and ``rev``.  ``rev`` is a short hash over what the file claims
(item, content digest, stamp, node): a file whose ``rev`` still matches was written by
meshsync and its stamp can be trusted.  Any other file was written by a person or
another program and is taken as written (R10): its version is derived from the file
alone (replicas/share/detect.py), the same on every node, without rewriting it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

import orjson

from meshsync.layout import MEM, SKILL, ItemId, memory_id

_BIG_INT = re.compile(rb"\d{16,}")
# _BIG_INT.search(raw) without the regular-expression engine (16 us a memory file; this
# is 1): ASCII digits become "0", everything else a space, then one substring search.
_DIGITS_TABLE = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_SIXTEEN = b"0" * 16


def _has_big_int(raw: bytes) -> bool:
    """True when ``raw`` holds a run of 16 or more ASCII digits (as _BIG_INT.search)."""
    return _SIXTEEN in raw.translate(_DIGITS_TABLE)


class FormatError(ValueError):
    """Content that is not a valid item; the message says what is wrong."""


def _reject_constant(name: str) -> Any:
    raise FormatError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    """orjson refuses numbers that overflow a double; the exact parser must agree, or
    ``1e400`` would become ``inf`` and be written out as ``null``."""
    f = float(text)
    if f in (math.inf, -math.inf):
        raise FormatError(f"number {text[:40]} is too large for a double")
    return f


def _check(obj: Any, limit: int, strings: bool) -> None:
    """Depth (containers only: ``1`` is depth 0, ``[1]`` depth 1) and, for the exact
    parser, strings: Python's json accepts lone surrogate escapes such as ``"\\ud800"``,
    which orjson rejects and which could never be written back as UTF-8."""
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, dict):
            if limit and d > limit:
                raise FormatError(f"JSON nested deeper than {limit} levels")
            for k, v in o.items():
                if strings:
                    _utf8_ok(k)
                stack.append((v, d + 1))
        elif isinstance(o, list):
            if limit and d > limit:
                raise FormatError(f"JSON nested deeper than {limit} levels")
            stack.extend((v, d + 1) for v in o)
        elif strings and isinstance(o, str):
            _utf8_ok(o)


def _utf8_ok(s: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise FormatError("invalid JSON: a string holds a lone surrogate (\\ud800-\\udfff escape)") from None


def loads(data: bytes | str, max_depth: int = 64) -> Any:
    """Parse JSON exactly: big integers keep every digit (orjson would round them).

    Both parsers accept and reject the same documents: NaN/Infinity, numbers that
    overflow a double, lone surrogates and bad UTF-8 raise FormatError, never anything
    else (R6: bad input is never fatal).  ``max_depth`` counts nested containers
    (0: no limit)."""
    exact = False
    try:
        raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
        if _has_big_int(raw):
            exact = True
            obj = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite_float)
        else:
            obj = orjson.loads(raw)
    except FormatError:
        raise
    except UnicodeDecodeError as exc:
        raise FormatError(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except (orjson.JSONDecodeError, json.JSONDecodeError, RecursionError) as exc:
        msg = str(exc) if not isinstance(exc, RecursionError) else "nested too deeply"
        raise FormatError(f"invalid JSON: {msg}") from None
    except ValueError as exc:  # an integer beyond Python's int digit limit
        raise FormatError(f"invalid JSON: {str(exc)[:120]}") from None
    # Nesting can be no deeper than the number of brackets: most documents skip the walk.
    if exact or (max_depth and raw.count(b"[") + raw.count(b"{") > max_depth):
        _check(obj, max_depth, exact)
    return obj


class _NotJson(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _NotJson(name)


def is_json_text(text: str) -> bool:
    """Whether ``text`` is JSON as JavaScript's JSON.parse reads it (RFC 8259, no NaN or
    Infinity), whatever meshsync's own limits on values say."""
    try:
        json.loads(text, parse_constant=_no_constant)
    except (json.JSONDecodeError, _NotJson):
        return False
    except (RecursionError, ValueError):  # JSON, too deep or too long a number for Python
        return True
    return True


def index_value(text: str, max_depth: int = 64) -> Any:
    """An index row's value as the seed client's getMemory reads it (R10): its JSON
    when the text is JSON, else the text itself as a string (the seed's putMemory
    stores a string as raw text: ``hello mesh``, not ``"hello mesh"``).  JSON text that
    meshsync cannot carry exactly (a lone surrogate, a number too large for a double,
    nesting over ``max_depth``) still raises FormatError: it is reported, not guessed."""
    try:
        return loads(text, max_depth)
    except FormatError:
        if is_json_text(text):
            raise
        return text


def json_text(text: str) -> str:
    """An index row's value as JSON text (index_value's reading, without parsing JSON)."""
    return text if is_json_text(text) else orjson.dumps(text).decode()


def _dumps(obj: Any, opts: int) -> bytes:
    try:
        return orjson.dumps(obj, option=opts | orjson.OPT_SORT_KEYS)
    except TypeError:  # integers beyond 64 bits
        indent = 2 if opts & orjson.OPT_INDENT_2 else None
        seps = (",", ": ") if indent else (",", ":")
        return json.dumps(obj, sort_keys=True, indent=indent, separators=seps, ensure_ascii=False).encode()


def canonical(value: Any) -> bytes:
    """Compact, key-sorted JSON: the index's value text and the input of the digest."""
    return _dumps(value, 0)


def digest_bytes(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def rev(item: ItemId, digest: str, stamp: int, node: str) -> str:
    text = f"{item.kind}\0{item.scope}\0{item.key}\0{digest}\0{stamp}\0{node}"
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


# --- memory files ------------------------------------------------------------------------


@dataclass(slots=True)
class MemoryRecord:
    scope: str
    key: str
    value: Any
    text: bytes  # canonical(value)
    digest: str
    node: str | None
    stamp: int | None  # ms; None when the file gives no time
    trusted: bool
    # The rev of the version its writer saw on the share and replaced: "" when it saw
    # none (or did not say); None for a file meshsync did not write.  Lets a node whose
    # own fresh export was replaced tell a successor that saw it from a concurrent write
    # that did not (R2 on a NAS, engine/plan.py base_seen).
    replaces: str | None = None


def memory_record(scope: str, key: str, value: Any, node: str | None, stamp: int | None,
                  trusted: bool = False) -> MemoryRecord:
    text = canonical(value)
    return MemoryRecord(scope, key, value, text, digest_bytes(text), node, stamp, trusted)


class TooLarge(FormatError):
    """An export whose file would be over the readers' limit (R10: never written)."""

    def __init__(self, size: int, limit: int):
        super().__init__(f"its share file would be {size} bytes, over the {limit}-byte limit")
        self.size, self.limit = size, limit


def render_memory(item: ItemId, value: Any, digest: str, stamp: int, node: str, max_bytes: int = 0,
                  replaces: str | None = None) -> bytes:
    """A memory file: pretty-printed, or compact when that would exceed ``max_bytes``
    (the readers' limit, limits.max_file_bytes), so that an export never produces a file
    the readers refuse (R10); TooLarge when even the compact rendering exceeds it.  The
    choice depends on the content and the limit only: the same bytes every time (R8).
    ``replaces``: the rev of the version the writer saw on the share (see MemoryRecord)."""
    doc: dict[str, Any] = {
        "scope": item.scope,
        "key": item.key,
        "value": value,
        "node_id": node,
        "updated_at": stamp // 1000,
        "updated_at_ms": stamp,
        "rev": rev(item, digest, stamp, node),
    }
    if replaces is not None:
        doc["replaces"] = replaces
    data = _dumps(doc, orjson.OPT_INDENT_2) + b"\n"
    if max_bytes and len(data) > max_bytes:
        data = _dumps(doc, 0) + b"\n"
        if len(data) > max_bytes:
            raise TooLarge(len(data), max_bytes)
    return data


# The last millisecond of year 9999.  Later (or negative) times are not times: they
# would win every conflict forever and overflow SQLite's 64-bit INTEGER downstream.
MAX_STAMP_MS = 253_402_300_799_999


# The node name of a version derived from a file that names no node (a hand-made file
# with only a value, a SKILL.md without skill.json): one fixed name, so that every node
# derives the same version from the same file (R10, R1).  docs/guarantees.md says it.
FOREIGN_NODE = "share"


def _stamp(ms: Any, sec: Any) -> int | None:
    """The stamp (ms) a file claims: ``updated_at_ms`` when it agrees with
    ``updated_at`` (Unix seconds), else ``updated_at`` alone; None when neither is a
    usable time."""
    if type(ms) is int and type(sec) is int and ms // 1000 == sec and 0 <= ms <= MAX_STAMP_MS:
        return ms
    if type(sec) in (int, float) and 0 <= sec <= MAX_STAMP_MS // 1000:
        return int(sec * 1000)
    return None


def _json_type(v: Any) -> str:
    """The JSON name of a parsed value's type, for messages an operator can act on."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int | float):
        return "a number"
    return {str: "a string", list: "an array"}.get(type(v), type(v).__name__)


def parse_memory(data: bytes, scope: str | None, key: str | None, max_depth: int = 64) -> MemoryRecord:
    """Parse a memory file.  ``scope``/``key`` come from its path (None when the path
    was shortened and the file must say them).

    ``max_depth`` limits the *value*, as for an index row: the file's own object is one
    level more, so a value the index accepted is never refused once it is on the share."""
    if data.startswith(b"\xef\xbb\xbf"):
        raise FormatError("starts with a UTF-8 byte-order mark; save the file as UTF-8 without BOM")
    doc = loads(data, max_depth + 1 if max_depth else 0)
    if not isinstance(doc, dict):
        raise FormatError(f"must be a JSON object with a \"value\" field, not {_json_type(doc)}")
    if "value" not in doc:
        raise FormatError('has no "value" field')
    f_scope, f_key = doc.get("scope"), doc.get("key")
    if scope is None or key is None:
        if not isinstance(f_scope, str) or not isinstance(f_key, str):
            raise FormatError("has a shortened name, so it must hold its full \"scope\" and \"key\"")
        scope, key = f_scope, f_key
    elif (f_scope is not None and f_scope != scope) or (f_key is not None and f_key != key):
        raise FormatError(
            f"says scope/key {f_scope!r}/{f_key!r} but its path means {scope!r}/{key!r}; "
            "rename the file or fix the fields"
        )
    rec = memory_record(scope, key, doc["value"], None, None)
    node = doc.get("node_id")
    rec.node = node if isinstance(node, str) and node else None
    ms, sec = doc.get("updated_at_ms"), doc.get("updated_at")
    rec.stamp = _stamp(ms, sec)
    r = doc.get("rev")
    if r is not None and rec.node and rec.stamp is not None and type(ms) is int:
        rec.trusted = r == rev(memory_id(scope, key), rec.digest, rec.stamp, rec.node)
        replaced = doc.get("replaces")
        if rec.trusted:
            rec.replaces = replaced if isinstance(replaced, str) else ""
    return rec


# --- skills --------------------------------------------------------------------------------


def _framed(tag: bytes, data: bytes | None) -> bytes:
    return tag + (b"-" if data is None else str(len(data)).encode() + b":" + data)


def skill_digest(content: bytes | None, path: str | None, extras: str) -> str:
    """A skill's version covers SKILL.md, the reference path and every other file
    (``extras`` is the digest of those other files).

    Each part is length-framed, so no content can pass for "no content" or move bytes
    between the parts (``b"\\0none"`` vs None, a NUL in a path) and collide."""
    h = hashlib.blake2b(digest_size=16)
    h.update(_framed(b"c", content))
    h.update(_framed(b"p", path.encode("utf-8", "surrogatepass") if path is not None else None))
    h.update(_framed(b"x", extras.encode()))
    return h.hexdigest()


def extras_digest(files: list[tuple[str, str]]) -> str:
    """Digest of (relative path, content digest) pairs of a skill's other files."""
    if not files:
        return ""
    h = hashlib.blake2b(digest_size=16)
    for rel, d in sorted(files):
        h.update(rel.encode("utf-8", "surrogatepass") + b"\0" + d.encode() + b"\n")
    return h.hexdigest()


def render_skill_json(item: ItemId, path: str | None, digest: str, stamp: int, node: str,
                      replaces: str | None = None) -> bytes:
    """A skill's skill.json.  ``replaces``: the rev of the version the writer saw on the
    share and replaced, as in a memory file (R2 on a NAS, see MemoryRecord.replaces)."""
    doc: dict[str, Any] = {
        "name": item.key,
        "source_node": node,
        "updated_at": stamp // 1000,
        "updated_at_ms": stamp,
        "rev": rev(item, digest, stamp, node),
    }
    if path is not None:
        doc["path"] = path
    if replaces is not None:
        doc["replaces"] = replaces
    return _dumps(doc, orjson.OPT_INDENT_2) + b"\n"


@dataclass(slots=True)
class SkillMeta:
    name: str | None
    node: str | None
    stamp: int | None
    path: str | None
    rev: str | None
    # What skill.json says it replaced (None: it says nothing).  Whether that counts
    # depends on the folder: only a skill.json whose rev matches the files beside it
    # speaks for them (replicas/share/detect.py read_skill).
    replaces: str | None = None


def parse_skill_json(data: bytes) -> SkillMeta:
    doc = loads(data, 8)
    if not isinstance(doc, dict):
        raise FormatError("skill.json must be a JSON object")
    name, node, path = doc.get("name"), doc.get("source_node"), doc.get("path")
    ms, sec = doc.get("updated_at_ms"), doc.get("updated_at")
    stamp = _stamp(ms, sec)
    r = doc.get("rev") if type(ms) is int else None
    replaced = doc.get("replaces")
    return SkillMeta(
        name if isinstance(name, str) else None,
        node if isinstance(node, str) and node else None,
        stamp,
        path if isinstance(path, str) else None,
        r if isinstance(r, str) else None,
        replaced if isinstance(replaced, str) else None,
    )


# --- tombstones ----------------------------------------------------------------------------


def render_tombstone(item: ItemId, stamp: int, node: str) -> bytes:
    doc = {"kind": item.kind, "scope": item.scope, "key": item.key,
           "deleted_at_ms": stamp, "node_id": node}
    return _dumps(doc, orjson.OPT_INDENT_2) + b"\n"


def parse_tombstone(data: bytes) -> tuple[ItemId, int, str]:
    doc = loads(data, 4)
    if not isinstance(doc, dict):
        raise FormatError("not a meshsync tombstone: not a JSON object")
    kind, scope, key = doc.get("kind"), doc.get("scope"), doc.get("key")
    stamp, node = doc.get("deleted_at_ms"), doc.get("node_id")
    # Exact types: a tombstone deletes an item, so a stray file must not pass for one.
    if (kind not in (MEM, SKILL) or not isinstance(scope, str) or not isinstance(key, str)
            or type(stamp) is not int or not isinstance(node, str)):
        raise FormatError("not a meshsync tombstone")
    if not 0 <= stamp <= MAX_STAMP_MS:
        raise FormatError(f"tombstone time {stamp} is out of range")
    return ItemId(kind, scope, key), stamp, node


# --- history records (R11) ----------------------------------------------------------------

HISTORY_WHY = ("beaten", "deleted")


@dataclass(slots=True)
class HistoryRecord:
    """One version kept in the share's history (replicas/share/history.py): a version
    that lost a conflict ("beaten") or the last value of an item that was deleted
    ("deleted").  Immutable once written."""

    id: str
    why: str
    item: ItemId
    owner: str  # the node whose private folder holds it (scope "node"), else ""
    stamp: int  # the kept version: updated_at in ms, node, digest
    node: str
    digest: str
    value: bytes | None  # memory: the value as canonical JSON text (None: no copy was readable)
    content: str | None  # skill: SKILL.md
    path: str | None  # skill: the reference path
    by_stamp: int  # what beat or deleted it: the winner, or the delete
    by_node: str
    by_deleted: bool
    side: str  # where it was seen: share, index or cache
    recorded_by: str
    recorded_at: int  # ms

    @property
    def kept(self) -> bool:
        """A value that can be restored."""
        return self.value is not None if self.item.kind == MEM else (self.content is not None or self.path is not None)


def history_id(why: str, item: ItemId, owner: str, stamp: int, node: str, digest: str) -> str:
    """A record's name: the same on every node that records the same version for the same
    reason, so that they write one record (and a person types the same ID everywhere)."""
    text = f"{why}\0{item.kind}\0{item.scope}\0{item.key}\0{owner}\0{stamp}\0{node}\0{digest}"
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=6).hexdigest()


def render_history(r: HistoryRecord) -> bytes:
    doc: dict[str, Any] = {
        "meshsync_history": 1, "id": r.id, "why": r.why,
        "kind": "memory" if r.item.kind == MEM else "skill", "scope": r.item.scope, "key": r.item.key,
        "owner": r.owner, "node_id": r.node, "updated_at_ms": r.stamp, "digest": r.digest,
        "by": {"node_id": r.by_node, "updated_at_ms": r.by_stamp, "deleted": r.by_deleted},
        "side": r.side, "recorded_by": r.recorded_by, "recorded_at_ms": r.recorded_at,
    }
    if r.item.kind == MEM:
        if r.value is not None:
            doc["value"] = orjson.Fragment(r.value)
    else:
        doc["content"], doc["path"] = r.content, r.path
    return _dumps(doc, orjson.OPT_INDENT_2) + b"\n"


def parse_history(data: bytes) -> HistoryRecord:
    """A history record as render_history wrote it; FormatError for anything else."""
    doc = loads(data, 0)
    try:
        if not isinstance(doc, dict) or doc.get("meshsync_history") != 1:
            raise TypeError
        kind = {"memory": MEM, "skill": SKILL}[doc["kind"]]
        item = ItemId(kind, doc["scope"], doc["key"])
        by = doc["by"]
        value = canonical(doc["value"]) if kind == MEM and "value" in doc else None
        r = HistoryRecord(doc["id"], doc["why"], item, doc["owner"], doc["updated_at_ms"], doc["node_id"],
                          doc["digest"], value, doc.get("content"), doc.get("path"), by["updated_at_ms"],
                          by["node_id"], bool(by["deleted"]), doc["side"], doc["recorded_by"], doc["recorded_at_ms"])
    except (TypeError, KeyError, AttributeError):
        raise FormatError("not a meshsync history record") from None
    if (r.why not in HISTORY_WHY or not all(isinstance(x, str) for x in (r.id, item.scope, item.key, r.owner,
                                                                            r.node, r.by_node, r.recorded_by))
            or not all(type(x) is int for x in (r.stamp, r.by_stamp, r.recorded_at))):
        raise FormatError("not a meshsync history record")
    return r
