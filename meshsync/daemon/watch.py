"""Change detection for the daemon: which items may have changed, and where to look.

* ``choose_mode`` picks events or polling from the share's filesystem type (fstype.py:
  mountinfo on Linux, statfs on macOS): kernel
  events (inotify) only report writes made through this kernel, so network and FUSE
  filesystems, written by other hosts, are polled (through the journals, see
  ``journal.py``, plus a slower full rescan).
* ``ShareEvents`` turns watchdog events into item ids.  Editors that save by rename,
  by truncate-and-write or in several writes all end in an event for the final path;
  the pass reads the file after the burst has settled (debounce), and the share's
  compare-and-set and signature checks catch a write still in progress on the next
  event.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from meshsync import layout
from meshsync.daemon.fstype import fs_type as fs_type  # re-exported: where callers looked for it
from meshsync.layout import ItemId
from meshsync.replicas.share.store import item_of_memory_rel
from meshsync.replicas.share.walk import is_conflict_copy

# Type names as Linux's mountinfo and macOS's statfs give them.  Events (inotify,
# FSEvents) only report writes made through this kernel: local filesystems only.
LOCAL_FS = {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "zfs", "f2fs", "reiserfs", "jfs",
            "apfs", "hfs", "hfsplus", "overlay", "ramfs", "bcachefs", "nilfs2", "msdos", "exfat"}
REMOTE_HINT = ("nfs", "cifs", "smb", "fuse", "9p", "ceph", "gluster", "afs", "davfs", "sshfs",
               "lustre", "gpfs", "beegfs", "ocfs", "vboxsf", "virtiofs", "webdav")


def choose_mode(setting: str, share: Path) -> tuple[str, str]:
    """(mode, why) for watch.mode = auto|events|poll, from the share's filesystem."""
    fst, mnt = fs_type(share)
    return mode_for(setting, fst, mnt)


def mode_for(setting: str, fst: str, mnt: str) -> tuple[str, str]:
    """(mode, why) for watch.mode ``setting`` on a filesystem of type ``fst`` mounted at ``mnt``."""
    if setting in ("events", "poll"):
        return setting, f"forced by watch.mode (filesystem {fst or 'unknown'})"
    if fst in LOCAL_FS:
        return "events", f"{fst} at {mnt} is a local filesystem"
    if any(h in fst for h in REMOTE_HINT):
        return "poll", f"{fst} at {mnt} is a network or FUSE filesystem: other hosts' writes raise no events"
    return "poll", f"unknown filesystem {fst or '?'} at {mnt or '?'}: polling is the safe choice"


def item_of_rel(rel: str, node_id: str, is_dir: bool = False) -> ItemId | None | bool:
    """The item a share path belongs to; None for paths that are no item; True when
    only a full pass can tell (a whole folder moved, a shortened name, a name a full
    pass reports as badly formed)."""
    parts = rel.split("/")
    if parts[0] == layout.META and parts[1:2] in (["tombstones"], ["history"]) and is_conflict_copy(parts[-1]):
        # Syncthing's copy of a tombstone or a history record: a full pass folds it
        # (syncthing.fold_tombstone_copies, R4; commit.prune_history, R11)
        return True
    if parts[0] in (layout.MEMORY, layout.SKILLS) and is_conflict_copy(parts[-1]):
        return True  # Syncthing's copy of an item's file: a full pass folds it (share/copies.py, R2)
    if any(layout.is_ignored_name(p) for p in parts if p != layout.META):
        return None
    if not is_dir and layout.is_editor_file(parts[-1]):
        return None
    if parts[0] == layout.META:
        if len(parts) > 2 and parts[1] == "tombstones":
            rest = "/".join(parts[2:])
            if parts[2] == layout.SKILLS and len(parts) == 4 and parts[3].endswith(".json"):
                try:
                    return layout.skill_id(layout.decode(parts[3][:-5]))
                except layout.LayoutError:
                    return True
            return item_of_rel(rest, node_id) if parts[2] == layout.MEMORY else None
        return None
    if parts[0] == layout.MEMORY:
        if len(parts) < 3 or not parts[-1].endswith(".json"):
            return True if len(parts) <= 3 else None  # a scope folder came or went
        if len(parts) == 4 and parts[1] == "node" and parts[2] != layout.encode(node_id):
            return None  # another node's own scope
        try:
            scope, key = item_of_memory_rel(rel, node_id)
        except layout.LayoutError:
            # A badly named file (a hand-made `My Notes.json`): a full pass reports it
            # now, not at the next periodic rescan (R6, R10).
            return True if len(parts) <= 4 else None
        if scope is None or key is None:
            return True
        return layout.memory_id(scope, key)
    if parts[0] == layout.SKILLS and len(parts) >= 2:
        try:
            return layout.skill_id(layout.decode(parts[1]))
        except layout.LayoutError:
            return True
    if parts[0] in (layout.MEMORY, layout.SKILLS) and len(parts) == 1:
        return True
    return None


class ShareEvents:
    """Collects watchdog events on the share into a set of items (thread-safe)."""

    def __init__(self, root: Path, node_id: str):
        self.root = Path(root)
        self.node_id = node_id
        self.lock = threading.Lock()
        self.items: set[ItemId] = set()
        self.full = False
        self.journal = False
        self.wake = threading.Event()
        self.observer = None

    def _rel(self, path: str) -> str | None:
        root = str(self.root)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not path.startswith(root + "/"):
            return None
        return path[len(root) + 1:]

    def dispatch(self, event) -> None:
        """watchdog handler entry point (called on the observer thread).  Reads and a
        folder's own mtime changes never arrive here: start() asks for change events only
        (its event_filter)."""
        for p in (getattr(event, "src_path", None), getattr(event, "dest_path", None)):
            if not p:
                continue
            rel = self._rel(p)
            if rel is None:
                continue
            if rel.startswith(f"{layout.META}/journal/"):
                with self.lock:
                    self.journal = True
                self.wake.set()
                continue
            it = item_of_rel(rel, self.node_id, bool(getattr(event, "is_directory", False)))
            if it is None:
                continue
            with self.lock:
                if it is True:
                    self.full = True
                else:
                    self.items.add(it)  # type: ignore[arg-type]
            self.wake.set()

    def take(self) -> tuple[set[ItemId], bool]:
        """The items events named since the last call, and whether only a full pass can tell."""
        with self.lock:
            items, full = self.items, self.full
            self.items, self.full = set(), False
        return items, full

    def take_journal(self) -> bool:
        """Whether a journal file changed since the last call (another node wrote items)."""
        with self.lock:
            journal, self.journal = self.journal, False
        return journal

    def start(self) -> None:
        from watchdog import events as ev
        from watchdog.observers import Observer

        self.stop()
        obs = Observer()
        # Only the events that can mean a change.  Unfiltered, inotify also reports every
        # open and every close after a read: the observer thread decoded two events for
        # each file a pass read (200k in a 100k import) and took the GIL from the pass for
        # each, so a daemon's first import ran 3-4x slower than the same pass in-process.
        # touch and chmod (IN_ATTRIB) are their own event classes in watchdog 6+ (a
        # modification before): an mtime-only change must still be seen.
        names = ("FileCreatedEvent", "FileModifiedEvent", "FileAttribEvent", "FileClosedEvent", "FileDeletedEvent",
                 "FileMovedEvent", "DirCreatedEvent", "DirAttribEvent", "DirDeletedEvent", "DirMovedEvent")
        wanted = [getattr(ev, n) for n in names if hasattr(ev, n)]
        obs.schedule(self, str(self.root), recursive=True, event_filter=wanted)
        obs.daemon = True
        obs.start()
        self.observer = obs

    def stop(self) -> None:
        if self.observer is not None:
            obs, self.observer = self.observer, None
            try:
                obs.stop()
            except Exception as exc:
                # watchdog's inotify bookkeeping raises (e.g. KeyError on a watched
                # folder that was deleted or moved away meanwhile, watchdog issue #758)
                # while it unschedules.  Stopping must never crash the daemon: it runs on
                # SIGTERM (before the last pass) and when the share becomes unavailable.
                logging.getLogger("meshsync").debug("stopping the share watcher: %r", exc)
            obs.join(timeout=5)
