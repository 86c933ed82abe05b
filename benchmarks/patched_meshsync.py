"""``meshsync`` with the watch fix proposed in docs/benchmarks.md, applied by
monkeypatching (benchmark-only: meshsync/ itself is not modified).

``ShareEvents.dispatch`` treats every watchdog event as a change.  watchdog >= 4 also
reports reads (``opened``, ``closed_no_write``), so every pass's own reads trigger the
next pass on the same items, forever, on every events-mode node; and a directory's
``modified`` event (any file created or renamed in it, including meshsync's own atomic
writes) maps to "a scope folder came or went", i.e. a full pass.  The filter drops both.

    python3 benchmarks/patched_meshsync.py run    # same arguments as `meshsync`
"""

from __future__ import annotations

import sys

import dataset  # noqa: F401  (puts meshsync on sys.path)

from meshsync import cli, watch

IGNORED = frozenset({"opened", "closed_no_write"})
_dispatch = watch.ShareEvents.dispatch


def dispatch(self: watch.ShareEvents, event: object) -> None:
    kind = getattr(event, "event_type", "")
    if kind in IGNORED or (kind == "modified" and getattr(event, "is_directory", False)):
        return
    _dispatch(self, event)


watch.ShareEvents.dispatch = dispatch  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(cli.main())
