"""What every command module shares: exit codes, :class:`CliError`, JSON output, opening
the index or the engine, exporting a write, and the small formatters.

Kept apart from ``main.py`` so that the command modules can import it while ``main.py``
imports them (to build the parser) without a cycle.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from meshsync import config, formats, layout
from meshsync.layout import ItemId
from meshsync.lock import IndexLock, Locked
from meshsync.replicas.index.store import Index, IndexError_
from meshsync.replicas.share.store import ShareUnavailable

if TYPE_CHECKING:
    from meshsync.engine.node import Node

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_NOT_FOUND, EXIT_BUSY = range(6)


class CliError(Exception):
    """A refusal reported to the operator as ``meshsync: MESSAGE`` with exit ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


# The version of the --json documents' shapes (docs/json.md, docs/schemas/): raised when a
# field is removed, renamed or changes type or meaning; new fields do not raise it.
JSON_SCHEMA_VERSION = 1


def dump(obj: Any) -> str:
    """JSON text: indented, keys as given."""
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()


def dump_doc(obj: dict[str, Any]) -> str:
    """A ``--json`` document: always an object, ``schema_version`` first (every command
    prints this way; docs/json.md)."""
    return dump({"schema_version": JSON_SCHEMA_VERSION, **obj})


def parse_value(text: str) -> Any:
    """A memory value given on the command line, which must be JSON."""
    try:
        return formats.loads(text)
    except formats.FormatError as exc:
        raise CliError(f"VALUE is not valid JSON ({exc}); nothing was changed.\n"
                       "  Strings need quotes inside the shell quotes, e.g. meshsync put mesh greeting '\"hello\"'") from None


def scope_arg(scope: str) -> str:
    """A scope given on the command line, checked before anything is written."""
    if not layout.valid_scope(scope):
        raise CliError(f"scope {scope!r} is not one of: mesh, node, user:<id>")
    return scope


def open_node(settings: config.Settings) -> Node:
    """The engine, for commands that write (imported here, not at the top: reads such as
    ``get`` and ``status`` start faster without it)."""
    from meshsync.engine.node import Node

    try:
        return Node(settings)
    except IndexError_ as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def open_index(s: config.Settings) -> Index:
    """The existing index, for commands that only read it."""
    try:
        return Index(s.index, create=False)
    except IndexError_ as exc:
        raise CliError(str(exc)) from None


def daemon_holder(index: Path) -> tuple[bool, int | None]:
    """Whether a daemon holds ``index``'s lock, and its pid as a number (None while it
    has not written it yet: the lock file is written just after it is taken)."""
    h = IndexLock(index).holder()
    if h is None:
        return False, None
    return True, int(h) if h.isdigit() else None


def sync_after_write(settings: config.Settings, items: list[ItemId]) -> str:
    """Export a CLI write now when no daemon runs; otherwise the daemon picks it up."""
    lock = IndexLock(settings.index)
    try:
        lock.acquire()
    except Locked:
        return "the running daemon will export it"
    try:
        node = open_node(settings)
        try:
            node.sync(items)
            if {f"index:{it}" for it in items} & {e["path"] for e in node.index.errors()}:
                return "kept in the index; not exported (see `meshsync status`)"
            return "exported to the share"
        except ShareUnavailable as exc:
            node.record_unavailable(str(exc))
            return f"kept in the index; not exported: {exc}"
        finally:
            node.close()
    finally:
        lock.release()


def when(ts: Any) -> str:
    """A stored time (seconds) as local time; a foreign client's odd value as it is."""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    except (TypeError, ValueError, OverflowError, OSError):
        return repr(ts)
