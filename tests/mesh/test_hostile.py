"""R6: a corpus of hostile and broken files dropped into a live share.

Two daemons (``meshsync run``, events mode, a full rescan every 2 s) share one folder.
Most corpus entries break an item that had a good version everywhere; the rest are new
names.  Then: both daemons keep running and keep syncing everything else; each bad file
has exactly one error in ``status --json`` (path, reason with the right words, hint);
every bad file is left exactly as it was (bytes, inode, type, link target); the last good
version of each broken item stays in both indexes and caches; nothing outside the share
(``/etc/passwd`` behind a symlink) is read into an item or written.

The nodes run without CAP_DAC_OVERRIDE so that a chmod-000 file is really unreadable to
them (see fault_helpers).  A second test changes the limits by environment variable.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

from fault_helpers import NoDacNode, fingerprint, require_no_dac, sha
from helpers import Mesh, wait_for

DEEP = 100  # nesting of the deep value: beyond the default limits.max_json_depth (64)
MB = 1024 * 1024

# Items that had a good version before they were broken: key -> how they are broken.
BROKEN = ["invalid", "truncated", "notobject", "novalue", "badutf8", "bom", "deep", "huge", "empty",
          "fifo", "sock", "link", "unreadable", "device"]

# Words the error's reason must contain, per share path (lower-cased comparison).
REASON = {
    "memory/mesh/invalid.json": ["invalid json"],
    "memory/mesh/truncated.json": ["invalid json"],
    "memory/mesh/notobject.json": ["json object", "array"],
    "memory/mesh/novalue.json": ['"value"'],
    "memory/mesh/badutf8.json": ["utf-8"],
    "memory/mesh/bom.json": ["byte-order mark"],
    "memory/mesh/deep.json": ["nested deeper than 65"],
    "memory/mesh/huge.json": ["over the 10485760-byte limit"],
    "memory/mesh/empty.json": ["empty"],
    "memory/mesh/fifo.json": ["fifo"],
    "memory/mesh/sock.json": ["socket"],
    "memory/mesh/link.json": ["symbolic link"],
    "memory/mesh/unreadable.json": ["permission denied"],
    "memory/mesh/dir.json": ["directory where a file was expected"],
    "memory/mesh/device.json": ["device node"],
    "memory/mesh/Key.json": ["not in meshsync's encoding"],
    "skills/bigskill/SKILL.md": [f"over the {MB}-byte limit"],
    "skills/loop": ["symbolic link"],
    "memory/user/loop": ["symbolic link"],
    # Names that are not UTF-8 (bytes given to os.open) are shown with \xNN escapes.
    "memory/mesh/bad\\xffname.json": ["not valid utf-8"],
    "skills/sk\\xff": ["not valid utf-8"],
    "memory/user/u\\xff": ["not valid utf-8"],
    "memory/mesh/x%ed%b3%bf.json": ["not valid utf-8", "lone surrogate"],  # decodes to "x\udcff"
}
BAD_NAMES = [b"memory/mesh/bad\xffname.json", b"skills/sk\xff/SKILL.md", b"memory/user/u\xff/k.json",
             b"memory/mesh/x%ed%b3%bf.json"]
HINT = {
    "memory/mesh/huge.json": "max_file_bytes",
    "skills/bigskill/SKILL.md": "max_skill_bytes",
    "memory/mesh/Key.json": "^key.json",
    "memory/mesh/unreadable.json": "readable",
}


def _good(k: str):
    return {"good": k, "n": len(k)}


def _start(n: NoDacNode, **env: str) -> None:
    n.start(MESHSYNC_WATCH__RESCAN_INTERVAL="2", MESHSYNC_LOG_LEVEL="info", **env)
    wait_for(lambda: "ready: first pass done" in n.log(), 30, what=f"{n.node_id} ready")


def _node(mesh: Mesh, node_id: str, **env: str) -> NoDacNode:
    return mesh.node(node_id, cls=NoDacNode, **env)


def _has_good_versions(n: NoDacNode) -> bool:
    c = n.cache()
    if any(c.get(f"mesh:{k}", {}).get("value") != _good(k) for k in [*BROKEN, "key"]):
        return False
    return (n.cache_skills / "bigskill.md").exists()


def _make_corpus(m: Path, share: Path, tmp_path: Path) -> list[Path]:
    """Break the items of BROKEN and add the new bad names; returns every bad path."""
    w = {
        "invalid": b'{"value": [1, 2,',
        "truncated": (m / "truncated.json").read_bytes()[:25],
        "notobject": b"[1, 2, 3]",
        "novalue": b'{"scope": "mesh", "key": "novalue", "val": 1}',
        "badutf8": b'{"value": "caf\xe9 \xff"}',
        "bom": b'\xef\xbb\xbf{"value": "bom"}',
        "deep": b'{"value": ' + b"[" * DEEP + b"1" + b"]" * DEEP + b"}",
        "empty": b"",
    }
    for k, data in w.items():
        (m / f"{k}.json").write_bytes(data)
    with open(m / "huge.json", "wb") as f:  # 50 MB, a valid document
        f.write(b'{"value": "')
        for _ in range(50):
            f.write(b"x" * MB)
        f.write(b'"}')
    # Special files replace the good ones atomically (made under a dot name, which every
    # scanner ignores, then renamed over): an unlink first would be a real delete (R4).
    os.mkfifo(m / ".new-fifo")
    os.mknod(m / ".new-sock", stat.S_IFSOCK | 0o644)
    os.symlink("/etc/passwd", m / ".new-link")
    try:
        os.mknod(m / ".new-device", stat.S_IFCHR | 0o644, os.makedev(1, 3))  # like /dev/null
    except PermissionError:  # no CAP_MKNOD in this container: a FIFO stands in
        os.mkfifo(m / ".new-device")
        REASON["memory/mesh/device.json"] = ["fifo"]
    for k in ("fifo", "sock", "link", "device"):
        os.rename(m / f".new-{k}", m / f"{k}.json")
    (m / "dir.json").mkdir()  # a new name: a directory cannot be renamed over a file
    (m / "dir.json" / "inner.json").write_text('{"value": "inside a dir named like a file"}')
    os.chmod(m / "unreadable.json", 0)
    (m / "Key.json").write_text('{"value": "upper-case twin"}')
    for name in BAD_NAMES:
        path = os.fsencode(share) + b"/" + name
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, b'{"value": "bad name"}')
        os.close(fd)
    # Renamed over the good SKILL.md: written in place, its truncate-then-write shows an
    # empty SKILL.md for a moment, a valid (empty) skill that a pass may take before the
    # oversized bytes arrive (under load it did).  What a half-written file does is
    # tests/mesh/test_foreign.py::test_a_file_still_being_written_is_not_imported_half_written.
    (share / "skills" / "bigskill" / ".SKILL.md.new").write_bytes(b"# big\n" + b"y" * (MB + 10))
    os.rename(share / "skills" / "bigskill" / ".SKILL.md.new", share / "skills" / "bigskill" / "SKILL.md")
    os.symlink(".", share / "skills" / "loop")
    os.symlink(".", share / "memory" / "user" / "loop")
    bad = [m / f"{k}.json" for k in BROKEN] + [m / "Key.json", m / "dir.json", share / "skills" / "bigskill" / "SKILL.md",
                                                share / "skills" / "loop", share / "memory" / "user" / "loop"]
    return bad + [share / os.fsdecode(name) for name in BAD_NAMES]


def _errors(n: NoDacNode) -> dict[str, dict]:
    errs = n.status()["errors"]
    paths = [e["path"] for e in errs]
    assert len(paths) == len(set(paths)), paths
    return {e["path"]: e for e in errs if e["kind"] == "file"}


def _check_errors(n: NoDacNode, errs: dict[str, dict]) -> None:
    assert set(errs) == set(REASON), (n.node_id, sorted(set(errs) ^ set(REASON)))
    for path, words in REASON.items():
        e = errs[path]
        assert e["reason"] and e["hint"], (n.node_id, e)
        for w in words:
            assert w in e["reason"].lower(), (n.node_id, path, e["reason"])
        if path in HINT:
            assert HINT[path] in e["hint"], (n.node_id, path, e["hint"])


def test_hostile_corpus_in_a_live_share(mesh: Mesh, tmp_path: Path):
    require_no_dac()
    a, b = _node(mesh, "a"), _node(mesh, "b")
    m = mesh.share / "memory" / "mesh"
    for k in [*BROKEN, "key"]:
        (m / f"{k}.json").write_text(json.dumps({"value": _good(k)}))
    (mesh.share / "skills" / "bigskill").mkdir()
    (mesh.share / "skills" / "bigskill" / "SKILL.md").write_text("# big\ngood version\n")
    _start(a)
    _start(b)
    assert a.status()["watch"]["mode"] == "events"
    wait_for(lambda: _has_good_versions(a) and _has_good_versions(b), 30, what="good versions everywhere")
    # Taken as written (R10): no node rewrites the hand-made files it imported.
    assert not any("rev" in json.loads((m / f"{k}.json").read_bytes()) for k in BROKEN)
    good_rows = {n.node_id: n.sql("SELECT scope, key, value, node_id, updated_at FROM mesh_memory ORDER BY key")
                 for n in (a, b)}
    good_cache = {n.node_id: n.cache() for n in (a, b)}
    passwd = sha(Path("/etc/passwd"))

    t_corpus = time.time()
    bad = _make_corpus(m, mesh.share, tmp_path)
    before = {p: fingerprint(p) for p in bad}
    assert len(before) == len(REASON) == 23

    # Everything else keeps syncing: a good file and a foreign SQLite write made after the
    # corpus reach the other node's cache.
    (m / "after.json").write_text('{"value": "written after the corpus"}')
    a.sqlite3_cli("INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) VALUES "
                  "('mesh', 'fromsql', '\"sql after the corpus\"', 'tool', strftime('%s','now'));")
    wait_for(lambda: b.cache().get("mesh:after", {}).get("value") == "written after the corpus", 20,
             what="good file reaches b's cache")
    wait_for(lambda: b.cache().get("mesh:fromsql", {}).get("value") == "sql after the corpus", 20,
             what="foreign write on a reaches b's cache")
    # Both have run full passes over the corpus (the periodic rescan), not only event passes.
    for n in (a, b):
        wait_for(lambda n=n: (n.status()["last_pass"] or {}).get("full")
                 and n.status()["last_pass"]["started"] > t_corpus + 1, 20, what=f"{n.node_id} full pass")
        assert n.daemon.poll() is None, f"{n.node_id} died:\n{n.log()[-3000:]}"
        _check_errors(n, _errors(n))

    # Nothing bad was imported; the last good version of each broken item stays everywhere.
    for n in (a, b):
        rows = n.sql("SELECT scope, key, value, node_id, updated_at FROM mesh_memory ORDER BY key")
        expect = sorted(good_rows[n.node_id] + [r for r in rows if r[1] in ("after", "fromsql")], key=lambda r: r[1])
        assert rows == expect, n.node_id
        cache = n.cache()
        assert set(cache) == set(good_cache[n.node_id]) | {"mesh:after", "mesh:fromsql"}, n.node_id
        for k in BROKEN:
            assert cache[f"mesh:{k}"] == good_cache[n.node_id][f"mesh:{k}"], (n.node_id, k)
            assert n.value("mesh", k) == _good(k), (n.node_id, k)
        assert (n.cache_skills / "bigskill.md").read_text() == "# big\ngood version\n", n.node_id
        assert n.sql("SELECT content FROM mesh_skills WHERE name = 'bigskill'") == [("# big\ngood version\n",)]
        assert n.value("mesh", "Key") is None and n.value("mesh", "key") == _good("key")
        assert "root:" not in n.cache_file.read_text()
    # Every bad file is exactly as it was; nothing outside the share was touched.
    for p in bad:
        assert fingerprint(p) == before[p], p
    assert sha(Path("/etc/passwd")) == passwd
    assert (m / "dir.json" / "inner.json").read_text() == '{"value": "inside a dir named like a file"}'
    assert not [p for p in mesh.share.rglob(".meshsync-tmp-*")]

    # Another full pass later: still exactly one error per bad file, nothing rewritten.
    t2 = time.time()
    for n in (a, b):
        wait_for(lambda n=n: n.status()["last_pass"]["full"] and n.status()["last_pass"]["started"] > t2, 20,
                 what=f"{n.node_id} another full pass")
        _check_errors(n, _errors(n))
    for p in bad:
        assert fingerprint(p) == before[p], p

    # Repairing a file by hand clears its error and the repair becomes the new version.
    (m / "invalid.json").write_text('{"value": "repaired"}')
    wait_for(lambda: b.cache().get("mesh:invalid", {}).get("value") == "repaired", 20, what="repair reaches b")
    wait_for(lambda: "memory/mesh/invalid.json" not in _errors(a), 20, what="error cleared on a")
    os.chmod(m / "unreadable.json", 0o644)  # let pytest clean up
    assert a.stop() == 0 and b.stop() == 0


def test_limits_are_configurable(mesh: Mesh):
    """Lower limits by environment variable: refused with the right words; back to the
    defaults (a restart): imported."""
    a = mesh.node("a")
    m = mesh.share / "memory" / "mesh"
    (m / "mid.json").write_bytes(b'{"value": "' + b"m" * 5000 + b'"}')
    (m / "nested.json").write_text('{"value": [[[[1]]]]}')
    (mesh.share / "skills" / "s").mkdir()
    (mesh.share / "skills" / "s" / "SKILL.md").write_bytes(b"s" * 3000)
    (m / "small.json").write_text('{"value": "fits"}')
    a.start(MESHSYNC_LIMITS__MAX_FILE_BYTES="4096", MESHSYNC_LIMITS__MAX_SKILL_BYTES="2048",
            MESHSYNC_LIMITS__MAX_JSON_DEPTH="3")
    wait_for(lambda: "ready: first pass done" in a.log(), 30, what="ready")
    errs = {e["path"]: e for e in a.status()["errors"]}
    assert "over the 4096-byte limit" in errs["memory/mesh/mid.json"]["reason"]
    assert "max_file_bytes" in errs["memory/mesh/mid.json"]["hint"]
    assert "nested deeper than 4" in errs["memory/mesh/nested.json"]["reason"]
    assert "over the 2048-byte limit" in errs["skills/s/SKILL.md"]["reason"]
    assert "max_skill_bytes" in errs["skills/s/SKILL.md"]["hint"]
    assert a.value("mesh", "small") == "fits" and a.value("mesh", "mid") is None
    assert a.stop() == 0
    a.start()
    wait_for(lambda: "ready: first pass done" in a.log().split("stopped")[-1], 30, what="ready again")
    assert a.value("mesh", "mid") == "m" * 5000 and a.value("mesh", "nested") == [[[[1]]]]
    assert a.sql("SELECT length(content) FROM mesh_skills WHERE name = 's'") == [(3000,)]
    assert [e for e in a.status()["errors"] if e["kind"] != "warning"] == []  # (no frontmatter: a warning)
    assert a.stop() == 0


def test_error_goes_once_the_file_is_fixed_without_waiting_for_a_rescan(mesh: Mesh):
    """A file's error leaves status as soon as the change event's pass reads the fixed
    file (full rescans are minutes apart); the same for a bad file that is removed."""
    a = mesh.node("a")
    a.start(MESHSYNC_WATCH__RESCAN_INTERVAL="3600")
    wait_for(lambda: "ready: first pass done" in a.log(), 30, what="ready")
    m = mesh.share / "memory" / "mesh"
    (m / "fixme.json").write_text('{"value": [1,')
    (m / "dropme.json").write_text("not json")
    paths = {"memory/mesh/fixme.json", "memory/mesh/dropme.json"}
    wait_for(lambda: paths <= {e["path"] for e in a.status()["errors"]}, 15, what="errors reported")
    (m / "fixme.json").write_text('{"value": [1, 2]}')
    (m / "dropme.json").unlink()
    wait_for(lambda: a.value("mesh", "fixme") == [1, 2], 15, what="fixed file imported")
    wait_for(lambda: not paths & {e["path"] for e in a.status()["errors"]}, 15, what="errors gone")
    assert a.stop() == 0
