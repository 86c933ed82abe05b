"""The index side of a pass: one observation per item from its row in the seed's tables.

A row whose signature is the one the last pass recorded is the base (trusted, not
parsed again); any other row is a local write of some SQLite client, untrusted: it is
stamped after the base (R3) by reconcile.  A row that cannot be read as a value is
reported, never taken as a delete (R6): the last good version stays on the other sides.
"""

from __future__ import annotations

from typing import Any

from meshsync import formats
from meshsync.formats import FormatError
from meshsync.layout import MEM, SKILL
from meshsync.model import ABSENT, ItemId, Obs, RowProblem, State, Version, base_of
from meshsync.payloads import IndexMem, IndexSkill
from meshsync.replicas.index.store import Index


def index_stamp(updated_at: Any, now_ms: int) -> int:
    """Milliseconds for a row's updated_at; FormatError for a value that is no time
    (SQLite keeps text such as 'yesterday' even in an INTEGER column)."""
    if isinstance(updated_at, float) and updated_at.is_integer():
        updated_at = int(updated_at)
    if type(updated_at) is not int or not 0 <= updated_at <= 253_402_300_799_999:
        raise FormatError(f"updated_at {updated_at!r} is not Unix seconds")
    if updated_at > 100_000_000_000:  # a client that wrote milliseconds
        return updated_at
    if updated_at == now_ms // 1000:
        return now_ms  # written this second: keep sub-second order
    return updated_at * 1000


def detect_index(index: Index, items: list[ItemId], state: dict[ItemId, State], now_ms: int, node: str,
                 max_depth: int) -> tuple[dict[ItemId, Obs], dict[ItemId, RowProblem]]:
    """The index side of ``items``, and each row's problem (None: fine)."""
    obs: dict[ItemId, Obs] = {}
    problems: dict[ItemId, RowProblem] = {}
    mem = [it for it in items if it.kind == MEM]
    skills = [it for it in items if it.kind == SKILL]
    with index.read():
        rows = index.memory_rows(mem)
        srows = index.skill_rows(skills)
    for it in mem:
        st = state.get(it)
        row = rows.get(it)
        if row is None:
            obs[it] = ABSENT
            problems[it] = None
            continue
        if st is not None and st.row_sig == row.sig:
            obs[it] = Obs(base_of(st), True, None)
            problems[it] = None
            continue
        try:
            if not isinstance(row.value, str):
                raise FormatError(f"value is a {type(row.value).__name__}, not JSON text")
            value = formats.index_value(row.value, max_depth)  # raw text: a string, as the seed reads it
            stamp = index_stamp(row.updated_at, now_ms)
        except FormatError as exc:
            problems[it] = (f"index row {it}: {exc}", "write JSON text (or plain text, read as a string) into "
                            "mesh_memory.value and Unix seconds into updated_at; the last good version stays on "
                            "the share and in the cache")
            continue
        text = formats.canonical(value)
        v = Version(stamp, str(row.node_id) or node, formats.digest_bytes(text))
        obs[it] = Obs(v, False, IndexMem(row, value, text.decode("utf-8")))
        problems[it] = None
    for it in skills:
        st = state.get(it)
        srow = srows.get(it)
        problems[it] = None
        if srow is None:
            obs[it] = ABSENT
            continue
        if st is not None and st.row_sig == srow.sig:
            obs[it] = Obs(base_of(st), True, None)
            continue
        try:
            if not isinstance(srow.content, str | None) or not isinstance(srow.path, str | None):
                raise FormatError("content and path must be text")
            stamp = index_stamp(srow.updated_at, now_ms)
        except FormatError as exc:
            problems[it] = (f"index row skill:{it.key}: {exc}", "fix the row in mesh_skills; "
                            "the last good version stays on the share and in the cache")
            continue
        content = srow.content.encode("utf-8", "surrogatepass") if srow.content is not None else None
        d = formats.skill_digest(content, srow.path, (st.aux or "") if st else "")
        v = Version(stamp, str(srow.source_node) or node, d)
        obs[it] = Obs(v, False, IndexSkill(srow))
    return obs, problems
