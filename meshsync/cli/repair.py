"""``meshsync repair-future-stamps``: re-stamp items a clock far ahead stamped in the future.

A node whose clock was a day ahead stamped its writes a day ahead (before R12's guard
caught it, or under an older meshsync).  Such versions lose to any plausible write
already (reconcile.py), but they keep their odd ``updated_at`` until someone writes the
item again.  This command writes each of them again, unchanged, as a new write of this
node stamped with the file server's time (measured with a probe file in the share, as
the engine measures it: engine/clock.py); the daemon, or the pass this command runs when
no daemon does, exports them and every node takes them.
"""

from __future__ import annotations

import argparse
import time

from meshsync import config
from meshsync.cli.common import CliError, open_node, report_write
from meshsync.engine.clock import ServerClock
from meshsync.exits import EXIT_OK, EXIT_UNAVAILABLE
from meshsync.reconcile import FUTURE_MS
from meshsync.replicas.share.store import Share, ShareUnavailable


def cmd_repair_future_stamps(s: config.Settings, a: argparse.Namespace) -> int:
    share = Share(s.share, max_file_bytes=s.limits.max_file_bytes)
    try:
        share.check()
    except ShareUnavailable as exc:
        raise CliError(f"share unavailable: {exc}; the file server's clock cannot be read", EXIT_UNAVAILABLE) from None
    clock = ServerClock(s.node_id)
    clock.measure(share)
    if clock.ahead_ms is None:
        raise CliError("cannot read the file server's clock: a probe file cannot be written in the share's "
                       ".meshsync/ (see `meshsync doctor`)", EXIT_UNAVAILABLE)
    server_now = int(time.time() - clock.ahead_ms / 1000)
    node = open_node(s)
    try:
        items = node.index.restamp_future(server_now + FUTURE_MS // 1000, server_now, s.node_id)
    finally:
        node.close()
    if not items:
        print("no item is stamped in the future")
        return EXIT_OK
    return report_write(f"re-stamped {len(items)} item(s) at the file server's time "
                        f"({time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(server_now))})", items, s)
