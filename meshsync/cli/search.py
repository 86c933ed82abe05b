"""``meshsync search TEXT``: full-text search over the index's memory items.

The index keeps the seed's FTS5 table ``mesh_memory_fts`` (scope, key, content) current
for every row however it got there; this asks it, as the seed's HTTP API does with
``POST /mesh/query``.  Only scopes this node may read are shown (R9): the index may hold
rows of other scopes that a foreign client wrote, which a pass never imports nor shows.
"""

from __future__ import annotations

import argparse
import sys
from itertools import islice

import orjson

from meshsync import config
from meshsync.cli.common import CliError, dump_doc, open_index, scope_arg, when
from meshsync.exits import EXIT_NOT_FOUND, EXIT_OK
from meshsync.replicas.index import queries

# The scope column is not searched: every row of scope "mesh" holds the word "mesh".
COLUMNS = "{key content}"


def words_query(text: str) -> str:
    """An FTS5 expression requiring every word of ``text`` in the key or the value.

    Each word is quoted, so that punctuation (``user.preferences``, ``-``, ``:``) is
    never read as FTS5 syntax; a trailing ``*`` keeps its meaning (a prefix)."""
    parts = []
    for w in text.split():
        star = w.endswith("*") and len(w) > 1
        w = w[:-1] if star else w
        parts.append('"' + w.replace('"', '""') + '"' + ("*" if star else ""))
    if not parts:
        raise CliError("give at least one word to search for")
    return f"{COLUMNS} : ({' '.join(parts)})"


def cmd_search(s: config.Settings, a: argparse.Namespace) -> int:
    if a.limit < 1:
        raise CliError(f"--limit must be at least 1 (got {a.limit})")
    if a.scope is not None:
        scope_arg(a.scope)
        if not s.may_read(a.scope):
            raise CliError(f"this node may not read scope {a.scope!r} (scopes.read = {s.scopes.read})")
    text = " ".join(a.text)  # `meshsync search hello world` and `search "hello world"` alike
    match = text if a.fts else words_query(text)
    idx = open_index(s)
    try:
        readable = (h for h in queries.search_memory(idx, match, a.scope) if s.may_read(h.scope))
        hits = list(islice(readable, a.limit + 1))  # one more: whether there are more
    except queries.BadQuery as exc:
        raise CliError(f"{text!r} is not a valid full-text query ({exc}); see "
                       "https://sqlite.org/fts5.html#full_text_query_syntax, or drop --fts "
                       "to search for plain words") from None
    finally:
        idx.close()
    truncated = len(hits) > a.limit
    hits = hits[:a.limit]
    if a.json:
        print(dump_doc({"query": text, "results": [_json_hit(h) for h in hits], "truncated": truncated}))
    else:
        for h in hits:
            print(f"{h.scope}\t{h.key}\t{h.node_id}\t{when(h.updated_at)}\t{_one_line(h.snippet)}")
        if truncated:
            print(f"(first {a.limit} shown; --limit N for more)", file=sys.stderr)
    if not hits:
        where = f" in scope {a.scope}" if a.scope else ""
        print(f"meshsync: no memory item matches {text!r}{where}", file=sys.stderr)
        return EXIT_NOT_FOUND
    return EXIT_OK


def _json_hit(h: queries.SearchHit) -> dict:
    # The value as JSON (a foreign client's non-JSON text is shown as the string it is, R10).
    try:
        value = orjson.loads(h.value)
    except (orjson.JSONDecodeError, TypeError):
        value = h.value
    return {"scope": h.scope, "key": h.key, "value": value, "node_id": h.node_id,
            "updated_at": h.updated_at, "snippet": h.snippet}


def _one_line(text: str) -> str:
    return " ".join(text.split())
