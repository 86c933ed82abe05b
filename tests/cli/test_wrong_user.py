"""A command run by a user who does not own the node's index refuses before touching
anything; no command ends in a PermissionError traceback.

The index belongs to a service user made for the test (`useradd`; CI runs as root).
Commands run as root, and as a third user: ``setpriv`` gives it CAP_DAC_OVERRIDE so that
it can run the interpreter (which lives under /root) and could write anywhere - what
protects the node is meshsync's own refusal.  Seen failing first: `put` as root left a
root-owned index.sqlite.lock and share file.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import uuid
from pathlib import Path

import pytest
from helpers import Mesh, MeshNode


@pytest.fixture
def users():
    names = [f"ms{uuid.uuid4().hex[:8]}{r}" for r in "ot"]
    for n in names:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", n], check=True)
    try:
        yield [(n, pwd.getpwnam(n).pw_uid) for n in names]
    finally:
        for n in names:
            subprocess.run(["userdel", n], check=False)


def as_user(uid: int) -> list[str]:
    """A command prefix running as ``uid`` (with the DAC capabilities to reach the interpreter)."""
    caps = "+dac_override,+dac_read_search"
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", f"--inh-caps={caps}",
            f"--ambient-caps={caps}", "--"]


def owners(root: Path) -> dict[str, int]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = os.lstat(p).st_uid
    return out


def test_a_command_run_by_another_user_refuses_before_touching_anything(mesh: Mesh, users):
    (owner, ouid), (third, tuid) = users
    a = mesh.node("a")
    a.cli("put", "mesh", "k", '"v"')
    a.cli("skill", "put", "tool", "-", input="---\nname: tool\ndescription: t\n---\nhi\n")
    for dirpath, dirs, files in os.walk(mesh.root):  # the node belongs to its service user
        for name in dirs + files:
            os.lchown(Path(dirpath) / name, ouid, ouid)
    os.chown(mesh.root, ouid, ouid)
    before = owners(mesh.root)
    assert set(before.values()) == {ouid}
    runs = [("root", a), (third, MeshNode(a.node_id, a.share, a.home, wrapper=as_user(tuid)))]
    for who, n in runs:
        for args in (["put", "mesh", "k2", "1"], ["rm", "mesh", "k"], ["sync"], ["run"], ["init"],
                     ["skill", "rm", "tool"], ["restore", "abcd1234"], ["deletes", "confirm"]):
            p = n.cli(*args, check=2)
            assert f"belongs to user {owner!r} and this command runs as {who!r}" in p.stderr, (args, p.stderr)
            assert f"sudo -u {owner} meshsync {' '.join(args)}" in p.stderr
            assert "Traceback" not in p.stderr
        # Reading is allowed, read-only.
        assert '"v"' in n.cli("get", "mesh", "k").stdout
        assert "mesh\tk\ta" in n.cli("ls").stdout
        st = n.cli("status").stdout
        assert "items     1 memory, 1 skills" in st and "Traceback" not in st
        p = n.cli("doctor", check=False)
        assert p.returncode in (0, 1, 2) and "Traceback" not in p.stdout + p.stderr
        assert owners(mesh.root) == before, f"{who} left a file of its own"
    # The service user's own commands still work.
    svc = MeshNode(a.node_id, a.share, a.home, wrapper=as_user(ouid))
    svc.cli("put", "mesh", "k3", "3")
    assert set(owners(mesh.root).values()) == {ouid}


def test_no_command_ends_in_a_traceback_on_a_file_it_may_not_write(mesh: Mesh):
    """A lock file left by another user (an older meshsync run with sudo): the service's
    commands say so in one line, exit 2 (systemd does not restart into it)."""
    a = mesh.node("a")
    lock = Path(str(a.index) + ".lock")
    lock.touch()
    os.chmod(lock, 0o444)
    locked_out = MeshNode(a.node_id, a.share, a.home, wrapper=["setpriv", "--bounding-set=-dac_override", "--"])
    for args in (["sync"], ["put", "mesh", "k", "1"], ["run"]):
        p = locked_out.cli(*args, check=2)
        assert "permission denied" in p.stderr and str(lock) in p.stderr and "Traceback" not in p.stderr
