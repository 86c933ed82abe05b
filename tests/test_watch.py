"""The share watcher (watch.ShareEvents) on a real folder with watchdog's inotify observer."""

from __future__ import annotations

from pathlib import Path

from helpers import wait_for

from meshsync.daemon.watch import ShareEvents
from meshsync.layout import memory_id


def test_reads_raise_no_events_and_writes_do(tmp_path: Path):
    """A pass reads every file it imports.  Unfiltered, inotify reported an open and a
    close for each read, and the observer thread decoded every one of them while the
    pass ran (a daemon's first import of 100k files took 3-4x the time of the same pass
    in-process).  Reads must not reach the watcher at all; writes, touches and deletes
    must."""
    folder = tmp_path / "share" / "memory" / "mesh"
    folder.mkdir(parents=True)
    files = [folder / f"k{i}.json" for i in range(50)]
    for f in files:
        f.write_bytes(b'{"value": 1}\n')
    seen: list[str] = []

    class Recording(ShareEvents):
        def dispatch(self, event) -> None:
            seen.append(event.event_type)
            super().dispatch(event)

    ev = Recording(tmp_path / "share", "a")
    ev.start()
    got: set = set()

    def arrived(item) -> bool:
        got.update(ev.take()[0])
        return item in got

    try:
        for f in files:
            f.read_bytes()
        # inotify delivers events in order: once this write's event is in, the reads'
        # events (if any were reported) have been dispatched before it.
        (folder / "new.json").write_bytes(b'{"value": 2}\n')
        wait_for(lambda: arrived(memory_id("mesh", "new")), 10, what="the write's event")
        assert seen and not {"opened", "closed_no_write"} & set(seen), seen
        files[3].touch()  # an mtime change alone (IN_ATTRIB)
        wait_for(lambda: arrived(memory_id("mesh", "k3")), 10, what="the touch's event")
        files[7].unlink()
        wait_for(lambda: arrived(memory_id("mesh", "k7")), 10, what="the delete's event")
        (folder / "k9.json").rename(folder / "k10.tmp.json")
        wait_for(lambda: arrived(memory_id("mesh", "k9")), 10, what="the move's event")
    finally:
        ev.stop()
