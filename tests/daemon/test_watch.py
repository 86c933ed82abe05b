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


# --- the share's filesystem type: Linux's mountinfo, macOS's statfs (issue 20) -------------------


def _darwin_statfs_bytes(fstype: bytes, mnton: bytes, mntfrom: bytes) -> bytes:
    """A ``struct statfs`` as macOS fills it in (sys/mount.h, 64-bit inodes), packed field
    by field with explicit little-endian sizes, independently of the ctypes structure."""
    import struct

    return struct.pack("<IiQQQQQiiIIII16s1024s1024sI7I",
                       4096, 1 << 20, 100, 50, 40, 1000, 900, 0x1234, 0x5678, 501, 0x1a, 0x4000, 0,
                       fstype, mnton, mntfrom, 0, *[0] * 7)


def test_darwin_statfs_layout_and_parsing():
    """The ctypes structure matches Darwin's layout byte for byte (offsets from the
    header), and the type name and mount point come out of a filled-in buffer.  Runs on
    Linux: the call itself (libc's statfs$INODE64 / statfs) is untested on a real Mac."""
    import ctypes

    from meshsync.daemon.fstype import DarwinStatfs, parse_darwin_statfs

    assert ctypes.sizeof(DarwinStatfs) == 2168
    offsets = {name: getattr(DarwinStatfs, name).offset for name, *_ in DarwinStatfs._fields_}
    assert (offsets["f_fsid"], offsets["f_owner"], offsets["f_type"], offsets["f_fssubtype"]) == (48, 56, 60, 68)
    assert (offsets["f_fstypename"], offsets["f_mntonname"], offsets["f_mntfromname"]) == (72, 88, 1112)
    assert offsets["f_flags_ext"] == 2136
    raw = _darwin_statfs_bytes(b"smbfs", b"/Volumes/openclaw-mesh", b"//guest@nas/openclaw-mesh")
    assert len(raw) == 2168
    assert parse_darwin_statfs(raw) == ("smbfs", "/Volumes/openclaw-mesh")
    raw = _darwin_statfs_bytes(b"apfs", b"/System/Volumes/Data", b"/dev/disk3s5")
    assert parse_darwin_statfs(raw) == ("apfs", "/System/Volumes/Data")
    full = _darwin_statfs_bytes(b"macfuse" + b"x" * 9, b"/Volumes/" + b"m" * 1015, b"")  # no NUL at all
    fst, mnt = parse_darwin_statfs(full)
    assert fst == "macfusexxxxxxxxx" and len(mnt) == 1024


def test_macos_filesystem_names_choose_the_watch_mode():
    """auto: events on a Mac's own disks (FSEvents), polling on its network and FUSE mounts."""
    from meshsync.daemon.watch import mode_for

    for fst in ("apfs", "hfs", "msdos", "exfat", "ext4"):
        assert mode_for("auto", fst, "/x")[0] == "events", fst
    for fst in ("smbfs", "nfs", "afpfs", "webdav", "macfuse", "osxfuse", "cifs", "fuse.sshfs", ""):
        assert mode_for("auto", fst, "/x")[0] == "poll", fst
    assert mode_for("events", "smbfs", "/x") == ("events", "forced by watch.mode (filesystem smbfs)")


def test_linux_reads_the_filesystem_from_mountinfo(tmp_path: Path):
    from meshsync.daemon.fstype import fs_type

    fst, mnt = fs_type(tmp_path)
    assert fst and mnt and str(tmp_path).startswith(mnt.rstrip("/") + "/")
