"""What every command module shares: :class:`CliError`, JSON output, opening the index or
the engine, holding the index's lock, exporting a write, and the small formatters (the
exit codes are meshsync/exits.py, which the daemon uses too).

Kept apart from ``main.py`` so that the command modules can import it while ``main.py``
imports them (to build the parser) without a cycle.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from meshsync import config, formats, layout
from meshsync.exits import (
    EXIT_FAULT,
    EXIT_OK,
    EXIT_PROBLEMS,
    EXIT_REFUSED,
    EXIT_USAGE,
)
from meshsync.layout import ItemId
from meshsync.lock import IndexLock, Locked
from meshsync.replicas.index.store import Index, IndexError_
from meshsync.replicas.share.store import ShareUnavailable

if TYPE_CHECKING:
    from meshsync.engine.node import Node



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
        raise CliError(str(exc), EXIT_FAULT) from None


def index_uid(s: config.Settings) -> int | None:
    try:
        return os.stat(s.index).st_uid
    except OSError:
        return None


def other_user(s: config.Settings) -> bool:
    """This process is not the index's owner (it must not write anything)."""
    uid = index_uid(s)
    return uid is not None and uid != os.geteuid()


def open_index(s: config.Settings) -> Index:
    """The existing index, for commands that only read it (read-only for a user who does
    not own it: opening it for writing could leave files of this user next to it)."""
    from meshsync.replicas.index import queries

    if other_user(s):
        idx = queries.open_read_only(s.index)
        if idx is None:
            raise CliError(f"cannot read index {s.index} as this user (see `meshsync doctor`)")
        return idx
    try:
        return Index(s.index, create=False)
    except IndexError_ as exc:
        raise CliError(str(exc), EXIT_FAULT if s.index.exists() else EXIT_USAGE) from None


@contextmanager
def command_lock(s: config.Settings) -> Iterator[str | None]:
    """Hold the index's lock while a command syncs by itself (one writer per index, R12).
    Yields None when this command holds it, else the running daemon's pid ("" not yet
    written): the caller decides what a running daemon means for it.  A lock folder the
    index's owner cannot create is exit 6; another user's lock file escapes as
    PermissionError (the wrong-user message, exit 2: cli/main.py)."""
    lock = IndexLock(s.index)
    try:
        lock.acquire()
    except Locked as exc:
        daemon: str | None = exc.pid
    except PermissionError:
        raise
    except OSError as exc:
        raise CliError(f"cannot create the index's folder {s.index.parent}: {exc.strerror}", EXIT_FAULT) from None
    else:
        daemon = None
    if daemon is not None:
        yield daemon
        return
    try:
        yield None
    finally:
        lock.release()


def daemon_holder(index: Path) -> tuple[bool, int | None]:
    """Whether a daemon holds ``index``'s lock, and its pid as a number (None while it
    has not written it yet: the lock file is written just after it is taken)."""
    h = IndexLock(index).holder()
    if h is None:
        return False, None
    return True, int(h) if h.isdigit() else None


def fault_problem(exc: BaseException, s: config.Settings) -> str:
    """The one line a command prints for an OS or SQLite error it could not get past
    (exit 6, never a traceback: R12)."""
    if isinstance(exc, sqlite3.Error):
        return (f"the index {s.index} cannot be used: {exc} (a damaged file, a full disk or another program's "
                "lock; see `meshsync doctor` and docs/troubleshooting.md)")
    name = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    return f"{getattr(exc, 'strerror', None) or exc}{name}; see `meshsync doctor`"


def secret_hits(s: config.Settings, item: ItemId, value: Any = None, content: str | None = None) -> list[str]:
    """The secret-guard rules a local write of ``item`` matches (the allow lists applied):
    what the pass that exports it will refuse (engine/propagate.py applies the same rules)."""
    from meshsync import secretguard

    g = s.secrets
    if not g.guard or str(item) in g.allow_items:
        return []
    hits = (secretguard.scan_value(value, item.key) if content is None
            else secretguard.scan_bytes(content.encode("utf-8", "surrogatepass")))
    return [h for h in hits if h not in g.allow_rules]


def sync_after_write(settings: config.Settings, items: list[ItemId],
                     refused: list[str] | None = None) -> tuple[str, int, str]:
    """Export a CLI write now when no daemon runs; otherwise the daemon picks it up.
    Returns (what happened, the exit code, the refusal to tell on stderr or "").
    ``refused``: the secret-guard rules the write matches (secret_hits), so that the
    command exits EXIT_REFUSED also when the daemon is the one that keeps it local."""
    with command_lock(settings) as daemon:
        if daemon is not None:
            if refused:
                return ("kept in this node's index; the running daemon does not export it", EXIT_REFUSED,
                        f"{items[0]} not exported: it looks like a secret ({', '.join(refused)}); it stays in this "
                        f"node's index only.\n  -> remove the secret, or allow it with secrets.allow_items "
                        f"[\"{items[0]}\"] (see `meshsync status`)")
            return "the running daemon will export it", EXIT_OK, ""
        node = open_node(settings)
        try:
            node.sync(items)
            errs = {e["path"]: e for e in node.index.errors()}
            for it in items:
                e = errs.get(f"index:{it}")
                if e is not None and e["kind"] == "refused":
                    return ("kept in this node's index only; not exported", EXIT_REFUSED,
                            f"{e['reason']}\n  -> {e['hint']}")
                if e is not None:
                    return "kept in the index; not exported (see `meshsync status`)", EXIT_PROBLEMS, e["reason"]
            if node.faults:
                # Stored and exported, but the cache or the journal could not be written:
                # said, and exit 1, never a traceback (R12).
                return ("exported to the share, but " + "; ".join(f"{p} {why}" for p, why in node.faults.items())
                        + " (see `meshsync status`; the daemon retries it)", EXIT_PROBLEMS, "")
            return "exported to the share", EXIT_OK, ""
        except ShareUnavailable as exc:
            node.record_unavailable(str(exc))
            return f"kept in the index; not exported: {exc}", EXIT_OK, ""
        finally:
            node.close()


def report_write(what: str, items: list[ItemId], s: config.Settings, refused: list[str] | None = None) -> int:
    """Print ``what`` (e.g. "stored mesh:k") and how its export went; the exit code."""
    import sys

    msg, code, why = sync_after_write(s, items, refused)
    print(f"{what}; {msg}")
    if why:
        print(f"meshsync: {why}", file=sys.stderr)
    return code


def when(ts: Any) -> str:
    """A stored time (seconds) as local time; a foreign client's odd value as it is."""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    except (TypeError, ValueError, OverflowError, OSError):
        return repr(ts)
