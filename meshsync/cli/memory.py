"""``meshsync get/put/rm/ls``: memory items.

Reads come from the index (with each item's sync state, see ``status.ItemStates``);
writes go into the index through the engine and are exported at once when no daemon
runs (``common.report_write``), as a foreign client's write would be by the daemon.
"""

from __future__ import annotations

import argparse
import sys

import orjson

from meshsync import config, formats, layout
from meshsync.cli.common import (
    CliError,
    dump,
    dump_doc,
    open_index,
    open_node,
    parse_value,
    report_write,
    scope_arg,
    secret_hits,
    when,
)
from meshsync.cli.status import ItemStates, row_sig, state_note, state_text
from meshsync.exits import EXIT_NOT_FOUND, EXIT_OK
from meshsync.replicas.index import queries
from meshsync.replicas.index.store import memory_row_sig


def cmd_get(s: config.Settings, a: argparse.Namespace) -> int:
    idx = open_index(s)
    try:
        r = queries.memory_row(idx, a.scope, a.key)
        st = ItemStates(idx, s.node_id).of(layout.memory_id(a.scope, a.key), row_sig(memory_row_sig, *r)) \
            if r else None
    finally:
        idx.close()
    if r is None or st is None:
        print(f"meshsync: no item {a.scope}:{a.key}", file=sys.stderr)
        return EXIT_NOT_FOUND
    if a.json:
        # A value that is not JSON text is the string it spells (R10, as the seed reads it).
        value = orjson.Fragment(formats.json_text(r.value)) if isinstance(r.value, str) else r.value
        print(dump_doc({"scope": a.scope, "key": a.key, "value": value, "node_id": r.node_id,
                        "updated_at": r.updated_at, **st}))
    else:
        print(dump(orjson.Fragment(formats.json_text(r.value))) if isinstance(r.value, str) else r.value)
        if sys.stdout.isatty():  # for a person, where it came from; a script gets the value only
            print(f"# from {r.node_id} at {when(r.updated_at)}, {state_note(st)}")
    return EXIT_OK


def _writable_scope(s: config.Settings, scope: str) -> str:
    scope = scope_arg(scope)
    if not s.may_write(scope):
        raise CliError(f"this node may not write scope {scope!r} (scopes.write = {s.scopes.write}); nothing was changed")
    return scope


def _value_text(arg: str) -> str:
    """VALUE as given, or stdin's whole text for ``-``: a value over the kernel's
    per-argument limit (128 KiB) cannot be passed as an argument at all.  The string
    "-" itself is the JSON ``'"-"'``, so the bare dash is free for this."""
    if arg != "-":
        return arg
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise CliError("the VALUE read from stdin is not UTF-8 text; nothing was changed") from None


def cmd_put(s: config.Settings, a: argparse.Namespace) -> int:
    scope = scope_arg(a.scope)
    value = parse_value(_value_text(a.value))
    _writable_scope(s, scope)
    node = open_node(s)
    try:
        node.put_memory(scope, a.key, value)
    finally:
        node.close()
    item = layout.memory_id(scope, a.key)
    return report_write(f"stored {item}", [item], s, secret_hits(s, item, value))


def cmd_rm(s: config.Settings, a: argparse.Namespace) -> int:
    _writable_scope(s, a.scope)
    node = open_node(s)
    try:
        found = node.delete_item(layout.memory_id(a.scope, a.key))
    finally:
        node.close()
    if not found:
        print(f"meshsync: no item {a.scope}:{a.key}", file=sys.stderr)
        return EXIT_NOT_FOUND
    return report_write(f"deleted {a.scope}:{a.key}", [layout.memory_id(a.scope, a.key)], s)


def cmd_ls(s: config.Settings, a: argparse.Namespace) -> int:
    idx = open_index(s)
    try:
        rows = queries.memory_listing(idx, a.scope)
        states = ItemStates(idx, s.node_id)
        st = [states.of(layout.memory_id(r.scope, r.key), row_sig(memory_row_sig, r.value, r.node_id, r.updated_at))
              for r in rows]
    finally:
        idx.close()
    if a.json:
        print(dump_doc({"items": [{"scope": r.scope, "key": r.key, "node_id": r.node_id,
                                   "updated_at": r.updated_at, "bytes": r.bytes, **x}
                                  for r, x in zip(rows, st, strict=True)]}))
    else:
        for r, x in zip(rows, st, strict=True):
            print(f"{r.scope}\t{r.key}\t{r.node_id}\t{when(r.updated_at)}\t{state_text(x)}")
    return EXIT_OK
