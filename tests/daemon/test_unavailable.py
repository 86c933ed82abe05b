"""R5: an unavailable share never deletes anything, is reported, and is resumed from.

A live daemon (``meshsync run``) on a bindfs mount of a "NAS" folder meets, one after
the other: the mount unmounted under it (an empty mount point is left), its
``.meshsync/`` marker removed, the share made unreadable (chmod 000; the node runs
without CAP_DAC_OVERRIDE, see fault_helpers), and the share path removed entirely.
Each time: no row leaves its index, its cache is not rewritten, ``status --json``, the
log and the systemd STATUS= line say "share unavailable" with the reason, and once the
share is back the node resumes by itself and converges with what another node (working
on the NAS folder directly) and a foreign SQLite client changed meanwhile.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from fault_helpers import NoDacNode, NotifySocket, require_no_dac, share_items
from helpers import Mesh, MeshNode, wait_for

UPSERT = ("INSERT INTO mesh_memory (scope, key, value, node_id, updated_at) VALUES (?, ?, ?, ?, ?) "
          "ON CONFLICT(scope, key) DO UPDATE SET value = excluded.value, node_id = excluded.node_id, "
          "updated_at = excluded.updated_at")

POLL = "0.3"


def _mount(real: Path, mnt: Path) -> None:
    subprocess.run(["bindfs", "--no-allow-other", str(real), str(mnt)], check=True)


def _umount(mnt: Path) -> None:
    if subprocess.run(["fusermount", "-u", str(mnt)], capture_output=True).returncode != 0:
        subprocess.run(["fusermount", "-u", "-z", str(mnt)], check=True)


def _is_mounted(mnt: Path) -> bool:
    return os.path.ismount(mnt)


def _rows(n: MeshNode) -> dict[str, tuple]:
    return {f"{s}:{k}": (v, nid, u) for s, k, v, nid, u in
            n.sql("SELECT scope, key, value, node_id, updated_at FROM mesh_memory")}


def _skill_rows(n: MeshNode) -> dict[str, tuple]:
    return {name: (c, p, src, u) for name, c, p, src, u in
            n.sql("SELECT name, content, path, source_node, updated_at FROM mesh_skills")}


def _skill_cache(n: MeshNode) -> dict[str, bytes]:
    d = n.cache_skills
    return {p.name: p.read_bytes() for p in d.iterdir()} if d.is_dir() else {}


def _converged(n: MeshNode, share: Path) -> bool:
    """Index == share == cache for every memory item (value, node, stamp)."""
    files = share_items(share)
    rows = _rows(n)
    cache = n.cache()
    if set(files) != set(rows) or set(rows) != set(cache):
        return False
    for k, f in files.items():
        v, nid, u = rows[k]
        if json.loads(v) != f["value"] or nid != f["node_id"] or u != f["updated_at"]:
            return False
        if cache[k] != {"value": f["value"], "nodeId": nid, "ts": u}:
            return False
    return True


@pytest.fixture
def nas(tmp_path: Path):
    real, mnt = tmp_path / "nas-real", tmp_path / "mnt"
    real.mkdir()
    mnt.mkdir()
    _mount(real, mnt)
    yield real, mnt
    os.chmod(real, 0o755)
    if mnt.exists() and _is_mounted(mnt):
        _umount(mnt)


# Each case: how the share is taken away, the words its reason must contain, how it is
# given back.
CASES = ["unmounted", "marker removed", "unreadable", "path removed"]


def _break(case: str, real: Path, mnt: Path, away: Path) -> None:
    if case == "unmounted":
        _umount(mnt)  # leaves the empty mount point, as an unmounted NAS does
        assert mnt.is_dir() and list(mnt.iterdir()) == []
    elif case == "marker removed":
        (real / ".meshsync").rename(away)
    elif case == "unreadable":
        os.chmod(real, 0)  # seen through the mount
    elif case == "path removed":
        _umount(mnt)
        mnt.rmdir()
    else:
        raise AssertionError(case)


def _restore(case: str, real: Path, mnt: Path, away: Path) -> None:
    if case == "unmounted":
        _mount(real, mnt)
    elif case == "marker removed":
        away.rename(real / ".meshsync")
    elif case == "unreadable":
        os.chmod(real, 0o755)
    elif case == "path removed":
        mnt.mkdir()
        _mount(real, mnt)


REASON_WORDS = {
    "unmounted": [".meshsync/ marker", "not mounted"],
    "marker removed": [".meshsync/ marker", "not mounted"],
    "unreadable": ["cannot be read", "Permission denied"],
    "path removed": ["does not exist"],
}


def _one_outage(a: NoDacNode, notify: NotifySocket, real: Path, mnt: Path, tmp_path: Path, n_case: int,
                case: str) -> None:
    rows, skills = _rows(a), _skill_rows(a)
    cache_bytes, skill_cache = a.cache_file.read_bytes(), _skill_cache(a)
    assert len(rows) >= 20 and "helper" in skills and skill_cache, case
    away = tmp_path / f"marker-away-{n_case}"
    _break(case, real, mnt, away)

    # Reported: log, systemd STATUS=, status --json, each with the reason.
    def told() -> str | None:
        lines = [x for x in a.log().splitlines() if "share unavailable:" in x]
        return lines[-1] if len(lines) >= n_case and all(w in lines[-1] for w in REASON_WORDS[case]) else None

    # The reason as it is now: a daemon that saw the mount point empty before it was
    # removed tells the first reason, then the new one.
    line = wait_for(told, 10, what=f"{case}: log says {REASON_WORDS[case]}")
    assert "nothing will be deleted" in line
    wait_for(lambda: any(s.startswith("share unavailable:") and all(w in s for w in REASON_WORDS[case])
                         for s in notify.statuses()[-3:]), 10, what=f"{case}: STATUS=")
    # `status --json` run by the operator (full root: for "unreadable" the share looks
    # fine to it, yet the daemon cannot read it) and plain `status` as the service user.
    op = MeshNode(a.node_id, a.share, a.home)
    st = op.status()
    assert st["share"]["available"] is False, (case, st["share"])
    for w in REASON_WORDS[case]:
        assert w in st["share"]["reason"], (case, st["share"])
    assert st["daemon"]["running"] is True
    text = a.cli("status").stdout
    assert "UNAVAILABLE" in text and REASON_WORDS[case][0] in text, text

    # Meanwhile: node M changes an item and adds one on the NAS; a foreign SQLite
    # client writes into A's index.  A retries several times, unavailable.
    chg, new = f"base{n_case}", f"new{n_case}"
    (real / "memory" / "mesh" / f"{chg}.json").write_text(json.dumps({"value": f"changed in {case}"}))
    (real / "memory" / "mesh" / f"{new}.json").write_text(json.dumps({"value": f"made in {case}"}))
    a.sql(UPSERT, ("mesh", f"local{n_case}", json.dumps(f"written on a during {case}"), "tool",
                   int(time.time())))
    t_end = time.monotonic() + 6 * float(POLL)
    wait_for(lambda: time.monotonic() > t_end, 10, what="some retries")

    # Nothing left the index or the cache while the share was away.
    now = _rows(a)
    for k, v in rows.items():
        assert now.get(k) == v, (case, k, now.get(k), v)
    assert set(now) == set(rows) | {f"mesh:local{n_case}"}, case
    assert _skill_rows(a) == skills, case
    assert a.cache_file.read_bytes() == cache_bytes, case
    assert _skill_cache(a) == skill_cache, case
    assert a.daemon.poll() is None, f"daemon died in {case}"
    if case in ("unmounted", "path removed"):
        assert not mnt.exists() or list(mnt.iterdir()) == [], "the daemon wrote into the mount point"

    # Back: A resumes by itself and converges with everything done meanwhile.
    _restore(case, real, mnt, away)
    wait_for(lambda: a.log().count("share available again") >= n_case, 15, what=f"{case}: resumed")
    wait_for(lambda: a.value("mesh", chg) == f"changed in {case}"
             and a.value("mesh", new) == f"made in {case}", 15, what=f"{case}: M's changes imported")
    f_local = real / "memory" / "mesh" / f"local{n_case}.json"
    wait_for(lambda: f_local.exists(), 15, what=f"{case}: A's local write exported")
    assert json.loads(f_local.read_text())["value"] == f"written on a during {case}"
    wait_for(lambda: _converged(a, real), 15, what=f"{case}: converged")
    wait_for(lambda: any(s.startswith("watching") for s in notify.statuses()[-2:]), 10,
             what=f"{case}: STATUS= back to watching")
    st = a.status()
    assert st["share"]["available"] is True and st["share"]["reason"] == "", st["share"]
    assert a.cache()[f"mesh:{chg}"]["value"] == f"changed in {case}"


def test_daemon_survives_every_kind_of_unavailable_share(mesh: Mesh, nas, tmp_path: Path):
    require_no_dac()
    real, mnt = nas
    # Node M works on the NAS folder itself (another host); node A is the daemon on the mount.
    m = mesh.node("m", share=real)
    for i in range(20):
        (real / "memory" / "mesh" / f"base{i}.json").write_text(json.dumps({"value": {"i": i}}))
    (real / "skills" / "helper").mkdir()
    (real / "skills" / "helper" / "SKILL.md").write_text("# helper\nbase\n")
    a = mesh.node("a", share=mnt, cls=NoDacNode)
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        a.start(NOTIFY_SOCKET=notify.path, MESHSYNC_WATCH__POLL_INTERVAL=POLL,
                MESHSYNC_WATCH__RESCAN_INTERVAL="2", MESHSYNC_LOG_LEVEL="info")
        wait_for(lambda: "ready: first pass done" in a.log(), 30, what="daemon ready")
        wait_for(lambda: _converged(a, real) and len(a.cache()) == 20, 20, what="first import")
        assert a.status()["watch"]["mode"] == "poll"

        for n_case, case in enumerate(CASES, 1):
            _one_outage(a, notify, real, mnt, tmp_path, n_case, case)

        # The other node sees every write A made while it was cut off.
        m.sync()
        for i in range(1, len(CASES) + 1):
            assert m.value("mesh", f"local{i}") is not None
        assert _converged(m, real) and _converged(a, real)
        assert _skill_cache(a)["helper.md"] == b"# helper\nbase\n"
        assert a.stop() == 0
    finally:
        notify.close()


def test_events_mode_share_moved_away_and_back(mesh: Mesh, tmp_path: Path):
    """A local share (inotify) renamed away, replaced by an empty folder, then put back:
    nothing is lost, and events work again afterwards."""
    a = mesh.node("a")
    a.cli("put", "mesh", "keep", '"me"')
    a.start(MESHSYNC_WATCH__POLL_INTERVAL=POLL)
    wait_for(lambda: "ready: first pass done" in a.log(), 30, what="ready")
    assert a.status()["watch"]["mode"] == "events"
    cache = a.cache_file.read_bytes()
    away = tmp_path / "share-away"
    mesh.share.rename(away)
    mesh.share.mkdir()  # an empty folder where the share was: looks like an empty share
    wait_for(lambda: "share unavailable:" in a.log(), 10, what="unavailable")
    assert "marker" in a.status()["share"]["reason"]
    a.sql(UPSERT, ("mesh", "meanwhile", '"kept"', "tool", int(time.time())))
    t_end = time.monotonic() + 6 * float(POLL)
    wait_for(lambda: time.monotonic() > t_end, 10, what="some retries")
    assert a.value("mesh", "keep") == "me" and a.cache_file.read_bytes() == cache
    assert list(mesh.share.iterdir()) == []
    mesh.share.rmdir()
    away.rename(mesh.share)
    wait_for(lambda: "share available again" in a.log(), 15, what="resumed")
    wait_for(lambda: (mesh.share / "memory/mesh/meanwhile.json").exists(), 10, what="export after resume")
    # Events work again: a hand edit is picked up without a full rescan.
    (mesh.share / "memory/mesh/after.json").write_text('{"value": "event"}')
    wait_for(lambda: a.cache().get("mesh:after", {}).get("value") == "event", 10, what="event after resume")
    assert a.cache()["mesh:keep"]["value"] == "me"
    assert a.stop() == 0


def test_init_refuses_a_share_path_with_items_but_no_marker(mesh: Mesh, tmp_path: Path):
    """The marker of a real share is gone (or this is the mount point of a NAS whose
    marker is missing): init must not adopt it as a new, empty share."""
    share = tmp_path / "share"
    (share / "memory" / "mesh").mkdir(parents=True)
    (share / "memory" / "mesh" / "x.json").write_text('{"value": 1}')
    (share / "skills" / "s").mkdir(parents=True)
    (share / "skills" / "s" / "SKILL.md").write_text("# s\n")
    before = sorted((p.relative_to(share).as_posix(), p.read_bytes() if p.is_file() else None)
                    for p in share.rglob("*"))
    n = mesh.node("x", share=share, init=False)
    p = n.cli("init", check=3)
    err = p.stderr
    assert ".meshsync/ marker" in err and "memory" in err, err
    assert "mount" in err and "--force" in err, err
    after = sorted((p.relative_to(share).as_posix(), p.read_bytes() if p.is_file() else None)
                   for p in share.rglob("*"))
    assert after == before
    assert not (share / ".meshsync").exists()
    # Nothing else is created either: no index that could later be synced against it.
    assert not n.index.exists()
    # The daemon on it reports the share unavailable and touches nothing.
    p = n.cli("sync", check=3)
    assert "share unavailable" in p.stderr and "marker" in p.stderr
    assert sorted((p.relative_to(share).as_posix(), p.read_bytes() if p.is_file() else None)
                  for p in share.rglob("*")) == before
