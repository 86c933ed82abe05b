"""``meshsync reload``: make the running daemon re-read its configuration, and say
whether it took it.

The units run it as ``ExecReload=``, so that ``systemctl reload meshsync`` fails when the
new configuration is refused.  systemd 252 (Debian 12) has no notification for "reload
failed": RELOADING=1 ... READY=1 (daemon/notify.py) only frame the reload, and a plain
``kill -HUP $MAINPID`` returns before the daemon even read the file.  So this sends the
SIGHUP, waits until the daemon records its verdict in the index (meta ``last_reload``,
numbered), and exits 0 (applied) or 2 (refused, the previous settings kept).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Any

import orjson

from meshsync import config
from meshsync.cli.common import CliError, daemon_holder, open_index
from meshsync.exits import EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE
from meshsync.replicas.index import queries

POLL = 0.05


def last_reload(s: config.Settings) -> dict[str, Any]:
    """The daemon's last recorded reload ({} if none)."""
    idx = open_index(s)
    try:
        raw = idx.meta("last_reload")
    except queries.Error as exc:
        raise CliError(f"cannot read {s.index}: {exc}") from None
    finally:
        idx.close()
    try:
        d = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        d = {}
    return d if isinstance(d, dict) else {}


def _signal(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise CliError(f"no process {pid}: the daemon is not running") from None
    except PermissionError:
        raise CliError(f"not allowed to signal process {pid} (run this as the daemon's user)") from None


def cmd_reload(s: config.Settings, a: argparse.Namespace) -> int:
    pid = a.pid or daemon_holder(s.index)[1]
    if not pid:
        raise CliError(f"no meshsync daemon runs for index {s.index}: nothing to reload "
                       "(a configuration change applies when it starts)")
    before = last_reload(s).get("seq", 0)
    _signal(pid)
    deadline = time.monotonic() + a.timeout
    while True:
        got = last_reload(s)
        if got.get("seq", 0) != before:
            break
        if time.monotonic() > deadline:
            print(f"meshsync: the daemon (pid {pid}) has not answered the reload within {a.timeout:g}s "
                  "(a long pass in flight?); it applies or refuses it after that pass: see its log",
                  file=sys.stderr)
            return EXIT_PROBLEMS
        time.sleep(POLL)
    if got.get("ok"):
        print(f"configuration reloaded by the daemon (pid {pid})")
        return EXIT_OK
    print(f"meshsync: configuration not reloaded, the daemon (pid {pid}) keeps its previous settings: "
          f"{got.get('reason')}", file=sys.stderr)
    return EXIT_USAGE


def refused_before_asking(a: argparse.Namespace, error: config.ConfigError) -> int:
    """The configuration does not load here either: the reload is refused.  The daemon
    named by ``--pid`` (systemd's $MAINPID) is still signalled, so that its log and
    status line say so too; it keeps its settings whatever happens."""
    if a.pid:
        try:
            _signal(a.pid)
        except CliError:
            pass
    print(f"meshsync: configuration not reloaded, the daemon keeps its previous settings: {error}",
          file=sys.stderr)
    return EXIT_USAGE
