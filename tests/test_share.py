"""The share's stat walk of a memory folder: which files it takes as unchanged."""

from __future__ import annotations

import os
import time
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from meshsync.share import KnownSigs, Share, Walk, pack_sig, sig_of, unpack_sig

AN_HOUR_NS = 3600 * 10**9


@given(st.integers(0, 2**63 - 1), st.integers(0, 2**40), st.integers(1, 2**64 - 1), st.integers(0, 0o7777))
def test_packed_signature_reads_back_as_the_string(mtime, size, ino, perm):
    sig = f"{mtime}:{size}:{ino}:{perm:o}"
    packed = pack_sig(sig)
    assert packed == (mtime, size, ino, 0o100000 | perm)
    assert unpack_sig(packed) == sig


def test_strings_that_are_not_signatures_stay_strings():
    for odd in ("", "abc", "1:2:3", "1:2:3:9", "1:2:3:4:5", "x:2:3:4"):
        assert pack_sig(odd) == odd and unpack_sig(odd) == odd
    known = KnownSigs([("memory/mesh/a.json", "1:2:3:644"), ("skills/s", "1:2:3:644"), ("memory/mesh/b.json", None)])
    assert known.get("memory/mesh/a.json") == "1:2:3:644" and known["memory/mesh/a.json"] == "1:2:3:644"
    assert known.folders["memory/mesh"]["a.json"] == (1, 2, 3, 0o100644)
    assert known.folders["skills"]["s"] == "1:2:3:644"  # only memory files are packed
    assert "memory/mesh/b.json" in known and known.get("memory/mesh/b.json") is None
    assert sorted(known) == ["memory/mesh/a.json", "memory/mesh/b.json", "skills/s"] and len(known) == 3


def _walk(share: Share, known: dict[str, str]) -> Walk:
    walk = Walk(known=KnownSigs(known.items()))
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
    known = {f"memory/mesh/{n}": sig_of(os.lstat(folder / n)) for n in names[:4]}
    known["memory/mesh/dir.json"] = known["memory/mesh/same.json"]
    (folder / "edited.json").write_text('{"value": 2}')  # same size, new mtime
    os.utime(folder / "edited.json", ns=(old + 10**9, old + 10**9))
    os.chmod(folder / "chmod.json", 0o600)  # only the permissions changed (R6)
    os.utime(folder / "young.json")  # touched just now: not settled, read again
    known["memory/mesh/young.json"] = sig_of(os.lstat(folder / "young.json"))

    walk = _walk(share, known)
    assert walk.same == {"memory/mesh": {"same.json"}}
    assert sorted(walk.memory) == ["memory/mesh/chmod.json", "memory/mesh/edited.json",
                                   "memory/mesh/new.json", "memory/mesh/young.json"]
    assert not walk.memory["memory/mesh/young.json"].settled
    assert walk.memory["memory/mesh/chmod.json"].sig == sig_of(os.lstat(folder / "chmod.json"))
    assert [p.path for p in walk.problems] == ["memory/mesh/dir.json"]  # a directory, reported
    assert walk.memory_entry("memory/mesh/same.json").sig == known["memory/mesh/same.json"]
