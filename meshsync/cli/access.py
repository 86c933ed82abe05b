"""Who may run a command on this node's index, checked before anything is touched.

* R11: an index made for another node id is refused by every command (init included).
* A user who does not own the index (``sudo meshsync put`` on a node whose service runs
  as ``meshsync``) would leave files the service cannot replace: the lock file, WAL files,
  share files, cache entries owned by root, and the service then dies on a permission
  error.  Such a user may only read (``status``, ``doctor``, ``get``, ``ls``, the
  history): those commands open the index read-only for them.  Everything else is
  refused with the ``sudo -u OWNER`` to use.
* An OSError or SQLite error that still escapes a command is one clear line, never a
  traceback (:func:`explain`).
"""

from __future__ import annotations

import os
import pwd
import shlex
from pathlib import Path

from meshsync import config
from meshsync.cli.common import CliError, index_uid
from meshsync.exits import EXIT_USAGE


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def check_owner(s: config.Settings) -> None:
    """R11: an index made for another node id is refused, before it is touched."""
    from meshsync.replicas.index import queries
    from meshsync.replicas.index.store import wrong_node

    if s.index.exists():
        owner = queries.index_owner(s.index)
        if owner is not None and owner != s.node_id:
            raise CliError(wrong_node(s.index, owner, s.node_id), EXIT_USAGE)


def check_user(s: config.Settings, reads_only: bool, argv: list[str]) -> None:
    """A command that writes, run by a user who does not own the index: refused."""
    uid = index_uid(s)
    if uid is None or uid == os.geteuid() or reads_only:
        return
    owner, me = user_name(uid), user_name(os.geteuid())
    raise CliError(f"the index {s.index} belongs to user {owner!r} and this command runs as {me!r}: it would "
                   f"leave files {owner!r} cannot replace (the service would then fail); nothing was changed.\n"
                   f"  Run it as the owner: sudo -u {owner} meshsync {shlex.join(argv)}", EXIT_USAGE)


def explain(exc: PermissionError, s: config.Settings) -> str:
    """One line for a permission error that escaped a command: a file of another user
    (R11).  Other OS and SQLite errors are resource faults (common.fault_problem, R12)."""
    where = exc.filename or s.index
    owner = ""
    try:
        owner = f" (it belongs to {user_name(os.stat(Path(where)).st_uid)!r})"
    except OSError:
        pass
    return (f"permission denied: {where}{owner}; run meshsync as the user that owns the index and the share "
            f"(see `meshsync doctor`)")
