"""The share's stat walk of a memory folder: which files it takes as unchanged."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from meshsync.replicas.share.store import (
    FileEntry,
    FileRefused,
    KnownSigs,
    Share,
    Walk,
    sig_of,
    unpack_sig,
)

AN_HOUR_NS = 3600 * 10**9


@given(st.integers(0, 2**63 - 1), st.integers(0, 2**40), st.integers(1, 2**64 - 1), st.integers(0, 0o7777))
def test_packed_signature_reads_back_as_the_string(mtime, size, ino, perm):
    assert unpack_sig((mtime, size, ino, 0o100000 | perm)) == f"{mtime}:{size}:{ino}:{perm:o}"
    assert unpack_sig("odd") == "odd" and unpack_sig(None) is None


def _walk(share: Share, known: KnownSigs) -> Walk:
    walk = Walk(known=known)
    share.walk_memory_dir("memory/mesh", walk, time.time_ns())
    return walk


def test_walk_takes_only_settled_files_with_the_recorded_signature_as_unchanged(tmp_path: Path):
    root = tmp_path / "share"
    folder = root / "memory" / "mesh"
    folder.mkdir(parents=True)
    share = Share(root, max_file_bytes=1 << 20)
    old = time.time_ns() - AN_HOUR_NS
    names = ["same.json", "edited.json", "chmod.json", "young.json", "new.json", "dir.json"]
    for n in names[:5]:
        (folder / n).write_text('{"value": 1}')
        os.utime(folder / n, ns=(old, old))
    (folder / "dir.json").mkdir()
    recorded = {f"memory/mesh/{n}": sig_of(os.lstat(folder / n)) for n in names[:4]}
    recorded["memory/mesh/dir.json"] = recorded["memory/mesh/same.json"]
    (folder / "edited.json").write_text('{"value": 2}')  # same size, new mtime
    os.utime(folder / "edited.json", ns=(old + 10**9, old + 10**9))
    os.chmod(folder / "chmod.json", 0o600)  # only the permissions changed (R6)
    os.utime(folder / "young.json")  # touched just now: not settled, read again
    recorded["memory/mesh/young.json"] = sig_of(os.lstat(folder / "young.json"))
    known = KnownSigs(recorded.items())

    walk = _walk(share, known)
    assert walk.same == {"memory/mesh": ["same.json"]}
    assert walk.is_same("memory/mesh/same.json") and not walk.is_same("memory/mesh/edited.json")
    assert sorted(walk.memory) == ["memory/mesh/chmod.json", "memory/mesh/edited.json",
                                   "memory/mesh/new.json", "memory/mesh/young.json"]
    assert not walk.memory["memory/mesh/young.json"].settled
    assert walk.memory["memory/mesh/chmod.json"].sig == sig_of(os.lstat(folder / "chmod.json"))
    assert [p.path for p in walk.problems] == ["memory/mesh/dir.json"]  # a directory, reported
    assert walk.memory_entry("memory/mesh/same.json").sig == recorded["memory/mesh/same.json"]
    # A file found unchanged after a question about its folder was answered is found too.
    w = Walk(known=KnownSigs([("memory/mesh/a.json", "1:2:3:644"), ("memory/mesh/b.json", "4:5:6:644")]))
    w.add_memory(FileEntry("memory/mesh/a.json", "1:2:3:644", True))
    assert w.is_same("memory/mesh/a.json") and not w.is_same("memory/mesh/b.json")
    w.add_memory(FileEntry("memory/mesh/b.json", "4:5:6:644", True))
    assert w.is_same("memory/mesh/b.json") and w.has_memory("memory/mesh/b.json") and w.same_count() == 2


def test_a_second_walk_with_the_same_map_compares_packed_signatures(tmp_path: Path):
    """The first walk packs the signatures it found unchanged; read through the map they
    are still the recorded strings, and the next walk tells the same changes apart."""
    root = tmp_path / "share"
    folder = root / "memory" / "mesh"
    folder.mkdir(parents=True)
    share = Share(root, max_file_bytes=1 << 20)
    old = time.time_ns() - AN_HOUR_NS
    for n in ("a.json", "b.json", "c.json"):
        (folder / n).write_text('{"value": 1}')
        os.utime(folder / n, ns=(old, old))
    recorded = {f"memory/mesh/{n}": sig_of(os.lstat(folder / n)) for n in ("a.json", "b.json", "c.json")}
    known = KnownSigs(recorded.items())
    assert sorted(_walk(share, known).same["memory/mesh"]) == ["a.json", "b.json", "c.json"]
    assert all(type(v) is tuple for v in known.folders["memory/mesh"].values())
    assert {rel: known.get(rel) for rel in recorded} == recorded and known["memory/mesh/a.json"] == recorded["memory/mesh/a.json"]

    os.chmod(folder / "b.json", 0o600)
    (folder / "c.json").unlink()
    (folder / "c.json").mkdir()  # a directory where the file was
    walk = _walk(share, known)
    assert walk.same == {"memory/mesh": ["a.json"]}
    assert walk.is_same("memory/mesh/a.json") and not walk.is_same("memory/mesh/b.json")
    assert sorted(walk.memory) == ["memory/mesh/b.json"]
    assert [p.path for p in walk.problems] == ["memory/mesh/c.json"]


def test_a_read_returns_whole_files_or_refuses_one_that_grows_under_it(tmp_path: Path):
    """Share.read reads one byte more than the size fstat gave and stops there: a file
    that grows meanwhile must be refused, never returned cut at its old size."""
    root = tmp_path / "share"
    root.mkdir()
    share = Share(root, max_file_bytes=1 << 24)
    path = root / "grow.json"
    line = b"x" * 4095 + b"\n"
    path.write_bytes(line)
    stop = threading.Event()

    def grow() -> None:
        with open(path, "ab", buffering=0) as f:
            while not stop.is_set() and f.tell() < (1 << 23):
                f.write(line)

    writer = threading.Thread(target=grow)
    writer.start()
    refused = whole = 0
    try:
        deadline = time.monotonic() + 20
        while writer.is_alive() and time.monotonic() < deadline:
            try:
                data, st = share.read("grow.json")
            except FileRefused as exc:
                assert "while it was read" in exc.problem.reason or "while read" in exc.problem.reason
                refused += 1
                continue
            assert len(data) == st.st_size and len(data) % len(line) == 0 and data == line * (len(data) // len(line))
            whole += 1
    finally:
        stop.set()
        writer.join()
    data, st = share.read("grow.json")  # settled: read whole
    assert len(data) == st.st_size == path.stat().st_size
    assert refused + whole > 0


def test_write_many_refuses_a_link_in_the_way_and_writes_the_rest(tmp_path: Path):
    """A batch whose scope folder is a symlink: those files are refused (nothing written
    through the link), the others written, each answer in its job's place."""
    root, outside = tmp_path / "share", tmp_path / "outside"
    (root / "memory").mkdir(parents=True)
    outside.mkdir()
    (root / "memory" / "evil").symlink_to(outside)
    share = Share(root, max_file_bytes=1 << 20)
    try:
        got = share.write_many([("memory/evil/a.json", b"a", None), ("memory/ok/b.json", b"b", None),
                                ("memory/evil/c.json", b"c", None)])
    finally:
        share.close()
    assert [type(g).__name__ for g in got] == ["FileRefused", "stat_result", "FileRefused"]
    assert isinstance(got[0], FileRefused) and got[0].problem.path == "memory/evil"
    assert (root / "memory" / "ok" / "b.json").read_bytes() == b"b"
    assert list(outside.iterdir()) == []


def test_a_removed_folder_goes_whole_and_one_left_aside_is_swept_when_stale(tmp_path: Path):
    """Share.remove_tree renames a skill folder aside (one step) before emptying it, so an
    export landing in it meanwhile cannot leave it half-emptied (R1, R2 on a NAS).  A
    folder a killed delete left aside is never a skill, and a full pass's sweep removes
    it once stale, as it does our temporary files (R7)."""
    root = tmp_path / "share"
    skill = root / "skills" / "web"
    (skill / "scripts").mkdir(parents=True)
    for f in ("SKILL.md", "skill.json", "scripts/run.sh"):
        (skill / f).write_text(f)
    share = Share(root, max_file_bytes=1 << 20)
    share.remove_tree("skills/web")
    assert list((root / "skills").iterdir()) == []
    share.remove_tree("skills/web")  # gone already: nothing to do

    old = time.time_ns() - 2 * AN_HOUR_NS
    for name, ns in ((".meshsync-tmp-1-2-3", old), (".meshsync-tmp-4-5-6", None)):
        (root / "skills" / name / "sub").mkdir(parents=True)
        (root / "skills" / name / "SKILL.md").write_text("put aside")
        if ns is not None:
            os.utime(root / "skills" / name, ns=(ns, ns))
    walk = Walk()
    assert share.walk_subdirs("skills", walk) == []  # never a skill
    assert share.sweep_walked(walk) == 1
    assert [p.name for p in (root / "skills").iterdir()] == [".meshsync-tmp-4-5-6"]  # the fresh one stays
