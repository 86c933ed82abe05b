"""R2 on a NAS: writers racing on one key through separate network-mount clients.

Each node sees the share through its own bindfs FUSE view of one folder, as machines
see one NFS/SMB export: a write through one view raises no event on the others, and each
view's kernel answers ``lstat`` from an attribute cache (about 1 s, like ``actimeo=1``).
The compare-and-set just before an export's rename can therefore pass on a stale
attribute and replace another node's fresh export it never saw.  Whatever the outcome
of that race, every write must end as the winner or in the share's conflict history,
listed by ``meshsync conflicts`` on every node.

Issue 16 (found at aa07162): 9-11 of 30 beaten versions ended in no node's history.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Mesh, MeshNode, wait_for
from sync_helpers import mem_path

ROUNDS = 6


@pytest.fixture
def nas3(tmp_path: Path) -> Iterator[tuple[Path, list[Path]]]:
    """Three bindfs views of one folder: three machines on one NAS."""
    real = tmp_path / "nas-real"
    real.mkdir()
    mounts: list[Path] = []
    try:
        for name in ("mount-a", "mount-b", "mount-c"):
            m = tmp_path / name
            m.mkdir()
            subprocess.run(["bindfs", "--no-allow-other", str(real), str(m)], check=True)
            mounts.append(m)
        yield real, mounts
    finally:
        for m in reversed(mounts):
            subprocess.run(["fusermount", "-u", str(m)], check=False)


def _ready(n: MeshNode) -> bool:
    st = n.status()
    return bool(st.get("daemon", {}).get("running")) and st.get("last_sync") is not None


def _put_at_once(nodes: list[MeshNode], key: str, values: list[dict]) -> None:
    """The barrier: every daemon is paused (SIGSTOP) while each node's `meshsync put`
    writes its index, then all resume together (SIGCONT) and export at the same instant.
    (Without it, a daemon could import another node's write before its own put landed:
    a write made after seeing that version, which overwrites it rightly.)"""
    for n in nodes:
        assert n.daemon is not None
        n.daemon.send_signal(signal.SIGSTOP)
    try:
        procs = [subprocess.Popen([sys.executable, "-m", "meshsync", "put", "mesh", key, json.dumps(v)],
                                  env=n.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for n, v in zip(nodes, values, strict=True)]
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, (out, err)
    finally:
        for n in nodes:
            assert n.daemon is not None
            n.daemon.send_signal(signal.SIGCONT)


def _history(n: MeshNode) -> list[dict]:
    """The share's conflict history as ``n`` lists it (docs/schemas/conflicts.json)."""
    return n.cli_json("conflicts", "--limit", "1000")["conflicts"]


def test_same_instant_writes_on_network_mounts_are_each_kept(mesh: Mesh, nas3):
    real, mounts = nas3
    nodes = [mesh.node(name, share=m) for name, m in zip("abc", mounts, strict=True)]
    for n in nodes:
        n.start(MESHSYNC_WATCH__POLL_INTERVAL="0.3")
    wait_for(lambda: all(_ready(n) for n in nodes), 30, what="daemons ready")
    assert all(n.status()["watch"]["mode"] == "poll" for n in nodes)
    winners, written = [], []
    for r in range(ROUNDS):
        values = [{"round": r, "by": n.node_id} for n in nodes]
        written += values
        _put_at_once(nodes, "race", values)

        def settled(r: int = r) -> dict | None:
            got = {json.dumps(n.value("mesh", "race"), sort_keys=True) for n in nodes}
            on_share = json.loads(mem_path(real, "mesh", "race").read_text())["value"]
            if len(got) == 1 and json.loads(got.pop()) == on_share and on_share.get("round") == r:
                return on_share
            return None

        winners.append(wait_for(settled, 30, interval=0.1, what=f"round {r} converged"))
    # Every write is its round's winner or a beaten version in the share's history, and
    # every node lists the same history (it is on the share, R11).
    listed = [_history(n) for n in nodes]
    assert all(sorted(h["id"] for h in x) == sorted(h["id"] for h in listed[0]) for x in listed)
    beaten = [h["beaten"]["value"] for h in listed[0]]
    lost = [v for v in written if v not in winners and v not in beaten]
    assert not lost, f"{len(lost)} of {len(written) - ROUNDS} beaten versions in no history: {lost}"
    for n in nodes:
        assert n.stop() == 0
