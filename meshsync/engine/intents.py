"""Crash recovery of exports: the version each export of an index row is about to write.

Before a batch's share writes, the pass notes in the index (meta ``export_intents``)
the version each export of an index row will write; the batch's index commit clears
it.  A pass killed in between loses the new base: the exported file then looked
concurrent with a later write of the same row, and within the same second the older
one could win (R7, R2).  The next pass first gives each export whose file is on the
share exactly as noted the base the killed pass would have committed.
"""

from __future__ import annotations

import logging

import orjson

from meshsync import formats, layout
from meshsync.layout import MEM
from meshsync.model import INDEX, SHARE, ItemId, State
from meshsync.replicas.index.store import Index, memory_row_sig
from meshsync.replicas.share.store import FileRefused, Share

log = logging.getLogger("meshsync")


def record(index: Index, chunk: list) -> None:
    """Note the exports of index rows that ``chunk`` (item, plan, sides) will write."""
    out = []
    for it, plan, sides in chunk:
        win = plan.winner
        src = sides[plan.source].payload if plan.source in sides else None
        text = src.mem_text() if src is not None and plan.source == INDEX else None
        if (it.kind == MEM and win is not None and not win.deleted and not plan.refused
                and SHARE in plan.write and text is not None):
            out.append([it.scope, it.key, win.stamp, win.node, win.digest,
                        memory_row_sig(text, win.node, win.stamp // 1000)])
    if out:
        with index.write() as db:
            index.set_meta(db, export_intents=orjson.dumps(out).decode())


def recover(index: Index, share: Share, node: str, max_depth: int) -> None:
    """After a killed pass: an export whose file is on the share exactly as noted gets
    the base the killed pass would have committed."""
    raw = index.meta("export_intents")
    if not raw:
        return
    fixed: list[tuple[ItemId, State]] = []
    for scope, key, stamp, vnode, digest, row_sig in orjson.loads(raw):
        it = layout.memory_id(scope, key)
        try:
            rel = layout.item_path(it, node)
            data, _ = share.read(rel)
            rec = formats.parse_memory(data, scope, key, max_depth)
        except (FileRefused, formats.FormatError, OSError, layout.LayoutError):
            continue
        if rec.trusted and (rec.stamp, rec.node, rec.digest) == (stamp, vnode, digest):
            fixed.append((it, State(stamp, vnode, digest, False, None, formats.digest_bytes(data), row_sig, rel)))
    with index.write() as db:
        index.put_states(db, fixed)
        index.clear_meta(db, "export_intents")
    if fixed:
        log.info("recovered the exports of an interrupted pass: %d item(s)", len(fixed))
