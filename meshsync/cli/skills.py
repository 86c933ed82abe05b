"""``meshsync skill put/get/rm/ls``: shared skills (their SKILL.md content).

Same shape as ``memory.py``: reads from the index with each skill's sync state, writes
through the engine, exported at once when no daemon runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from meshsync import config, layout
from meshsync.cli.common import (
    CliError,
    dump_doc,
    open_index,
    open_node,
    report_write,
    secret_hits,
    when,
)
from meshsync.cli.status import ItemStates, row_sig, state_note, state_text
from meshsync.exits import EXIT_NOT_FOUND, EXIT_OK
from meshsync.replicas.index import queries
from meshsync.replicas.index.store import skill_row_sig


def _read_skill_file(s: config.Settings, file: str) -> str:
    """SKILL.md content from ``file`` (``-``: stdin), refused before any write if it is
    not UTF-8 text or over ``limits.max_skill_bytes``."""
    if file == "-":
        data = sys.stdin.buffer.read()
    else:
        try:
            data = Path(file).read_bytes()
        except OSError as exc:
            raise CliError(f"cannot read {file}: {exc.strerror}") from None
    try:
        content = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CliError(f"{file} is not UTF-8 text; nothing was changed") from None
    if len(data) > s.limits.max_skill_bytes:
        raise CliError(f"{file} is {len(data)} bytes, over limits.max_skill_bytes ({s.limits.max_skill_bytes})")
    return content


def cmd_skill_put(s: config.Settings, a: argparse.Namespace) -> int:
    content = _read_skill_file(s, a.file)
    node = open_node(s)
    try:
        node.put_skill(a.name, content, None)
    finally:
        node.close()
    item = layout.skill_id(a.name)
    return report_write(f"stored skill {a.name}", [item], s, secret_hits(s, item, content=content))


def cmd_skill_get(s: config.Settings, a: argparse.Namespace) -> int:
    idx = open_index(s)
    try:
        r = queries.skill_row(idx, a.name)
        st = ItemStates(idx, s.node_id).of(layout.skill_id(a.name), row_sig(skill_row_sig, *r)) if r else None
    finally:
        idx.close()
    if r is None or st is None:
        print(f"meshsync: no skill {a.name}", file=sys.stderr)
        return EXIT_NOT_FOUND
    if a.json:
        print(dump_doc({"name": a.name, "content": r.content, "path": r.path, "source_node": r.source_node,
                        "updated_at": r.updated_at, **st}))
    else:
        text = r.content if r.content is not None else f"(reference to {r.path})\n"
        sys.stdout.write(text)
        if sys.stdout.isatty():
            print(("" if text.endswith("\n") else "\n")
                  + f"# skill {a.name} from {r.source_node} at {when(r.updated_at)}, {state_note(st)}")
    return EXIT_OK


def cmd_skill_rm(s: config.Settings, a: argparse.Namespace) -> int:
    node = open_node(s)
    try:
        found = node.delete_item(layout.skill_id(a.name))
    finally:
        node.close()
    if not found:
        print(f"meshsync: no skill {a.name}", file=sys.stderr)
        return EXIT_NOT_FOUND
    return report_write(f"deleted skill {a.name}", [layout.skill_id(a.name)], s)


def cmd_skill_ls(s: config.Settings, a: argparse.Namespace) -> int:
    idx = open_index(s)
    try:
        rows = queries.skill_listing(idx)
        states = ItemStates(idx, s.node_id)
        st = [states.of(layout.skill_id(r.name), row_sig(skill_row_sig, r.content, r.path, r.source_node, r.updated_at))
              for r in rows]
    finally:
        idx.close()
    if a.json:
        print(dump_doc({"skills": [{"name": r.name, "source_node": r.source_node, "updated_at": r.updated_at,
                                    "bytes": r.bytes, "path": r.path, **x} for r, x in zip(rows, st, strict=True)]}))
    else:
        for r, x in zip(rows, st, strict=True):
            print(f"{r.name}\t{r.source_node}\t{when(r.updated_at)}\t{state_text(x)}")
    return EXIT_OK
