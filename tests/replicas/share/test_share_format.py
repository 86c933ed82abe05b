"""The share-format version in ``.meshsync/format`` (issue 20): written by ``init``,
created on a share made before it existed, and a share upgraded to a newer format by a
newer meshsync is left alone by an older one -- unavailable with the reason, nothing
written (R5), until this node is upgraded.

Real `meshsync` processes on a real folder; "untouched" is checked byte for byte and
inode for inode over the whole share."""

from __future__ import annotations

import json
import os
from pathlib import Path

from fault_helpers import NotifySocket
from helpers import Mesh, memfile, wait_for

from meshsync import layout

FORMAT = Path(layout.META) / "format"


def tree(root: Path) -> dict[str, tuple]:
    """Every path under root with its inode, size, mtime and bytes: what "nothing was
    written" means."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            st = os.lstat(p)
            data = p.read_bytes() if p.is_file() and not p.is_symlink() else b""
            out[str(p.relative_to(root))] = (st.st_ino, st.st_size, st.st_mtime_ns, data)
    return out


def test_init_writes_the_format_and_a_pass_adds_it_to_an_older_share(mesh: Mesh):
    a = mesh.node("a")
    assert (mesh.share / FORMAT).read_text() == f"{layout.SHARE_FORMAT}\n"
    assert layout.SHARE_FORMAT == 1
    # A share made before the format file existed: the next pass writes it.
    (mesh.share / FORMAT).unlink()
    a.cli("put", "mesh", "k", "1")
    assert (mesh.share / FORMAT).read_text() == "1\n"
    # An idle pass leaves it alone (R8).
    before = os.lstat(mesh.share / FORMAT)
    a.sync()
    after = os.lstat(mesh.share / FORMAT)
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_a_newer_format_makes_the_share_unavailable_and_nothing_is_written(mesh: Mesh):
    a = mesh.node("a")
    a.cli("put", "mesh", "kept", '"before the upgrade"')
    (mesh.share / FORMAT).write_text("2\n")
    memfile(mesh.share, "mesh", "new.json").write_text('{"value": "written in format 2"}')
    share_before, cache_before = tree(mesh.share), a.cache_file.read_bytes()
    why = "this share was upgraded to format 2 by a newer meshsync; upgrade this node"

    p = a.sync(check=3)
    assert why in p.stderr and "nothing was changed" in p.stderr
    p = a.cli("put", "mesh", "local", '"while refused"')
    assert "kept in the index; not exported" in p.stdout and why in p.stdout
    p = a.cli("init", check=3)
    assert why in p.stderr
    st = a.status()
    assert st["share"]["available"] is False and why in st["share"]["reason"]
    doctor = json.loads(a.cli("doctor", "--json", check=2).stdout)
    share = next(c for c in doctor["checks"] if c["name"] == "share")
    assert share["result"] == "fail" and why in share["detail"]

    assert tree(mesh.share) == share_before  # not one byte, not one rename
    assert a.cache_file.read_bytes() == cache_before
    assert a.row("mesh", "new") is None and a.value("mesh", "kept") == "before the upgrade"


def test_the_daemon_waits_on_a_newer_format_and_resumes_when_it_can_read_it(mesh: Mesh, tmp_path):
    """The daemon reports the share unavailable (status, STATUS= to systemd), writes
    nothing, and syncs again once the format is one it knows (here: put back, as an
    upgraded node would see it)."""
    a = mesh.node("a")
    (mesh.share / FORMAT).write_text("7\n")
    memfile(mesh.share, "mesh", "waiting.json").write_text('{"value": 1}')
    before = tree(mesh.share)
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        a.start(NOTIFY_SOCKET=notify.path, MESHSYNC_WATCH__POLL_INTERVAL="0.2")
        wait_for(lambda: any("upgraded to format 7" in s for s in notify.statuses()), 20,
                 what="STATUS= naming the newer format")
        wait_for(lambda: "upgraded to format 7" in a.status()["share"]["reason"], 10, what="status says why")
        a.cli("put", "mesh", "local", "2")
        wait_for(lambda: "format 7" in a.log(), 10, what="the daemon logs why")
        assert tree(mesh.share) == before
        (mesh.share / FORMAT).write_text("1\n")
        wait_for(lambda: a.value("mesh", "waiting") == 1, 20, what="the daemon resumed")
        wait_for(lambda: memfile(mesh.share, "mesh", "local.json").exists(), 20, what="the local write exported")
        assert a.stop() == 0
    finally:
        notify.close()


def test_an_unreadable_format_file_is_not_guessed_at(mesh: Mesh):
    """Something that is not a format number (a hand edit, a broken copy): meshsync
    cannot know what the share's files mean, so it writes nothing and says so."""
    a = mesh.node("a")
    before = tree(mesh.share)
    for text in ("two\n", "", "0\n", "1.5\n"):
        (mesh.share / FORMAT).write_text(text)
        before = tree(mesh.share)
        p = a.sync(check=3)
        assert ".meshsync/format" in p.stderr and "not a share format this meshsync knows" in p.stderr, p.stderr
        assert tree(mesh.share) == before
