"""docs/deployment.md, run: its marked command blocks, in order, as root of a throwaway
machine with systemd as PID 1 (tests/container.py), then the shipped units under systemd
with their hardening: the daemon works inside the sandbox, the sandbox is really applied,
a late NAS mount and a bad configuration behave as the unit promises, the template runs
as its user; and the guide's restore procedure, run with real nodes."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from container import Container, python_binds
from helpers import Mesh

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "deployment.md"
CFG = "/etc/meshsync/config.yaml"
MS = "/opt/meshsync/venv/bin/meshsync"
SHARE = "/mnt/nas/openclaw-mesh"

# The blocks the test runs, in the guide's order; the others are stood in for (install:
# this checkout; the NFS/SMB mount: a bind mount) or need what a test machine lacks.
RUN = ["user", "cache-permissions", "mount-point", "smb-credentials", "config", "config-check",
       "share-root", "init", "share-permissions",
       "service", "check", "backup"]
NOT_RUN = {"install", "upgrade"}


def blocks() -> dict[str, str]:
    """The guide's marked blocks by name: `<!-- deploy: NAME ... -->` then a sh fence
    (indented as a list item's or not)."""
    text = DOC.read_text(encoding="utf-8")
    found = re.findall(r"^( *)<!-- deploy: ([\w-]+)[^\n]*-->\n\1```sh\n(.*?)\n\1```", text, re.M | re.S)
    out = {}
    for indent, name, body in found:
        assert name not in out, f"two blocks named {name}"
        out[name] = "\n".join(ln.removeprefix(indent) for ln in body.splitlines())
    return out


def test_the_guide_marks_its_blocks():
    b = blocks()
    assert set(RUN) | NOT_RUN | {"template", "restore", "uninstall"} == set(b), sorted(b)
    assert b["install"].splitlines()[1:] == ["python3 -m venv /opt/meshsync/venv",
                                            "/opt/meshsync/venv/bin/pip install -c /path/to/meshsync/constraints.txt "
                                            "/path/to/meshsync"]
    for name, body in b.items():
        for line in body.splitlines():
            if "meshsync -c" in line or line.startswith(MS):
                assert line.startswith(("runuser -u meshsync --", "runuser -u openclaw --", "mountpoint")), (
                    f"block {name}: meshsync must not run as root: {line}")


def stand_in_install(c: Container) -> None:
    """What `pip install` into /opt/meshsync/venv gives: the script and share/ files."""
    c.run(f"""
install -d /opt/meshsync/venv/bin /opt/meshsync/venv/share/meshsync/systemd /opt/meshsync/venv/share/doc/meshsync
printf '#!/bin/sh\\nPYTHONPATH=/srv/meshsync-src exec {sys.executable} -m meshsync "$@"\\n' > {MS}
chmod 0755 {MS}
cp /srv/meshsync-src/systemd/*.service /opt/meshsync/venv/share/meshsync/systemd/
cp /srv/meshsync-src/config.example.yaml /opt/meshsync/venv/share/meshsync/
cp /srv/meshsync-src/docs/*.md /opt/meshsync/venv/share/doc/meshsync/
""")


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A container set up by the guide's blocks, meshsync.service running."""
    tmp = tmp_path_factory.mktemp("deploy")
    nas = tmp / "nas"
    nas.mkdir()
    # A copy of what the install would bring, so that no block (uninstall's rm -rf) can
    # reach this checkout.
    src = tmp / "src"
    for part in ("meshsync", "systemd", "docs"):
        shutil.copytree(REPO / part, src / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "config.example.yaml", src)
    with Container(tmp / "root", binds={nas: "/srv/nas"},
                   ro_binds={**python_binds(), src: "/srv/meshsync-src"}) as c:
        c.run("useradd --create-home --shell /bin/bash openclaw")  # OpenClaw's own user, already there
        stand_in_install(c)
        b = blocks()
        out = {}
        for name in RUN:
            if name == "share-root":  # the NAS, mounted (a bind mount stands in for NFS/SMB)
                c.run(f"mount --bind /srv/nas {SHARE}")
            out[name] = c.run(b[name])
        yield c, out, nas


def pid_of(c: Container, unit: str) -> int:
    pid = int(c.show(unit, "MainPID")["MainPID"])
    assert pid > 0, c.run(f"systemctl status {unit} --no-pager", check=False).stdout
    return pid


def status(c: Container, user: str = "meshsync", cfg: str = CFG) -> dict:
    return json.loads(c.run(f"{MS} -c {cfg} status --json", user=user).stdout)


def test_the_guide_sets_up_a_running_node(deployed):
    c, out, nas = deployed
    assert "index ready: /var/lib/meshsync/index.sqlite" in out["init"].stdout
    assert (nas / ".meshsync").is_dir(), "the first node's init created the marker on the NAS"
    assert c.show("meshsync", "ActiveState")["ActiveState"] == "active"
    d = status(c)
    assert d["node_id"] == "linux-box" and d["share"]["available"] and d["daemon"]["running"], d
    assert "Active: active (running)" in out["service"].stdout
    # files the guide makes: modes and owners
    st = c.run("stat -c '%a %U %G %n' /etc/meshsync /etc/meshsync/config.yaml /etc/meshsync/smb-credentials "
               "/home/openclaw/.openclaw").stdout.splitlines()
    assert st == ["750 root meshsync /etc/meshsync", "640 root meshsync /etc/meshsync/config.yaml",
                  "600 root root /etc/meshsync/smb-credentials", "2770 openclaw openclaw-mesh /home/openclaw/.openclaw"]
    # doctor: exit 0, and it names the unit the daemon runs in
    assert "system unit meshsync.service runs this node's daemon" in out["check"].stdout, out["check"].stdout
    assert c.run("ls /root/meshsync-backup").stdout.count("index-") == 1


def test_system_unit_runs_hardened_under_systemd(deployed):
    c, _, nas = deployed
    pid = pid_of(c, "meshsync")
    proc = c.run(f"cat /proc/{pid}/status").stdout
    fields = dict(re.findall(r"^(\w+):\s*(.*)$", proc, re.M))
    assert fields["NoNewPrivs"] == "1" and fields["Seccomp"] == "2", proc
    assert int(fields["CapBnd"], 16) == 0 and int(fields["CapEff"], 16) == 0, proc
    assert c.run(f"ps -o user= -p {pid}").stdout.strip() == "meshsync"
    mounts = c.run(f"cat /proc/{pid}/mountinfo").stdout.splitlines()

    def opts(path: str) -> str:
        rows = [m.split() for m in mounts if m.split()[4] == path]
        assert rows, f"no mount at {path} in the daemon's namespace"
        return rows[-1][5]
    assert opts("/usr").startswith("ro") and opts("/").startswith("ro")
    proc_opts = [m.split(" - ")[1] for m in mounts if m.split()[4] == "/proc"][-1]
    assert "hidepid=invisible" in proc_opts and "subset=pid" in proc_opts, proc_opts  # ProtectProc, ProcSubset
    for path in (SHARE, "/var/lib/meshsync", "/home/openclaw/.openclaw"):
        assert opts(path).startswith("rw"), path
    # the daemon works inside: a put through the CLI is exported, a share file is imported
    c.run(f"{MS} -c {CFG} put mesh from-cli '{{\"n\": 1}}'", user="meshsync")
    c.run(f"{MS} -c {CFG} put user:alice note '\"in a folder the daemon makes\"'", user="meshsync")
    c.wait(f"test -f {SHARE}/memory/mesh/from-cli.json", "the daemon exported the put")
    c.wait(f"test -f {SHARE}/memory/user/alice/note.json", "the daemon exported into a new folder")
    (nas / "memory" / "mesh" / "from-nas.json").write_text('{"value": "hand edit"}')
    c.wait("grep -q from-nas /home/openclaw/.openclaw/mesh-memory.json", "the hand edit reached the cache")
    st = c.run(f"stat -c '%a %G' {SHARE}/memory/mesh/from-cli.json {SHARE}/memory/mesh "
               f"{SHARE}/memory/user/alice").stdout.split("\n")
    assert st[0] == "660 openclaw-mesh", st  # share_files.file_mode and .group (fchown under the filter)
    for folder in st[1:3]:  # the guide's chmod, and UMask=0007 for the daemon's own folders
        assert folder.split()[1] == "openclaw-mesh" and int(folder.split()[0], 8) & 0o070 == 0o070, st
    assert status(c)["watch"]["mode"] in ("events", "poll")  # /proc/self/mountinfo read under ProcSubset=pid
    # reload: accepted (ExecReload= waits for the daemon's verdict, under the sandbox) ...
    c.run("systemctl reload meshsync")
    c.wait("journalctl -u meshsync --no-pager | grep -q 'SIGHUP: configuration reloaded'", "reloaded")
    # ... and a rejected one fails `systemctl reload` visibly, the daemon running on with
    # its previous settings and its status line saying so (systemd 252: no failed-reload
    # notification exists; the failed ExecReload= is what makes systemctl fail).
    bad = c.run(f"cp {CFG} /tmp/good.yaml && echo 'watch: {{mode: bogus}}' >> {CFG} && systemctl reload meshsync",
                check=False)
    assert bad.returncode != 0, bad.stdout + bad.stderr
    c.wait("journalctl -u meshsync --no-pager | grep -q 'configuration not reloaded'", "bad reload logged")
    c.wait("systemctl show meshsync -p StatusText | grep -q '=reload refused, previous settings kept: .*watch.mode'",
           "the refusal in the unit's status line")
    c.run(f"cp /tmp/good.yaml {CFG}")
    assert c.show("meshsync", "ActiveState")["ActiveState"] == "active"
    c.run("systemctl reload meshsync")
    c.wait("systemctl show meshsync -p StatusText | grep -vq 'refused'", "a good reload clears the note")
    # nothing failed in the sandbox: no error in the log, no denied call (but the refused
    # reload, which systemd logs as its control process's failure)
    log = c.run("journalctl -u meshsync --no-pager -p warning").stdout
    errors = [ln for ln in log.splitlines() if "meshsync" in ln and "configuration not reloaded" not in ln
              and "Control process exited" not in ln and "Reload failed" not in ln
              and "-- " not in ln[:3]]
    assert not errors, log


def test_the_service_outlives_a_missing_nas_and_picks_it_up(deployed):
    c, _, _ = deployed
    c.run(f"systemctl stop meshsync && umount {SHARE}")
    c.run("systemctl start meshsync")  # returns: READY=1 comes with the share unavailable too
    assert c.show("meshsync", "ActiveState")["ActiveState"] == "active"
    d = status(c)
    assert not d["share"]["available"], d
    c.run(f"mount --bind /srv/nas {SHARE}")
    c.wait(f"{MS} -c {CFG} status --json | grep -q '\"available\": true'", "the daemon saw the NAS mounted",
           user="meshsync")
    c.run(f"{MS} -c {CFG} put mesh after-mount '2'", user="meshsync")
    c.wait(f"test -f {SHARE}/memory/mesh/after-mount.json", "the daemon exported onto the late mount")
    assert c.show("meshsync", "NRestarts")["NRestarts"] == "0"


def test_a_bad_configuration_is_not_restarted(deployed):
    c, _, _ = deployed
    c.run(f"cp {CFG} /tmp/good.yaml && echo 'watch: {{mode: bogus}}' >> {CFG}")
    r = c.run("systemctl restart meshsync", check=False)
    assert r.returncode != 0
    c.wait("systemctl show meshsync -p ActiveState | grep -q =failed", "the unit stays failed")
    s = c.show("meshsync", "ActiveState", "SubState", "NRestarts", "ExecMainStatus", "Result")
    assert s == {"ActiveState": "failed", "SubState": "failed", "NRestarts": "0", "ExecMainStatus": "2",
                 "Result": "exit-code"}, s
    assert "watch.mode" in c.run("journalctl -u meshsync --no-pager -n 20").stdout
    c.run(f"cp /tmp/good.yaml {CFG} && systemctl reset-failed meshsync && systemctl start meshsync")
    assert c.show("meshsync", "ActiveState")["ActiveState"] == "active"


def test_the_template_runs_as_the_openclaw_user(deployed):
    c, _, _ = deployed
    c.run("systemctl disable --now meshsync")  # one node id per OpenClaw home
    c.run(blocks()["template"])
    pid = pid_of(c, "meshsync@openclaw")
    assert c.run(f"ps -o user= -p {pid}").stdout.strip() == "openclaw"
    fields = dict(re.findall(r"^(\w+):\s*(.*)$", c.run(f"cat /proc/{pid}/status").stdout, re.M))
    assert fields["NoNewPrivs"] == "1" and fields["Seccomp"] == "2"
    d = status(c, "openclaw", "/etc/meshsync/openclaw.yaml")
    assert d["node_id"] == "linux-box-openclaw" and d["share"]["available"] and d["daemon"]["running"], d
    assert d["index"] == "/home/openclaw/.local/share/meshsync/index.sqlite"
    # doctor recognises the template's instance (it warned "no active meshsync unit")
    doc = c.run(f"{MS} -c /etc/meshsync/openclaw.yaml doctor", user="openclaw", check=False).stdout
    assert f"system unit meshsync@openclaw.service runs this node's daemon (pid {pid})" in doc, doc
    c.run(f"{MS} -c /etc/meshsync/openclaw.yaml put mesh from-template '3'", user="openclaw")
    c.wait(f"test -f {SHARE}/memory/mesh/from-template.json", "the template's daemon exported")
    c.run("systemctl disable --now meshsync@openclaw")


def user_unit_commands() -> str:
    """The install lines in the user unit's comment, after `# Then`, up to the blank line."""
    lines = (REPO / "systemd" / "meshsync-user.service").read_text(encoding="utf-8").splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("# Then"))
    body = []
    for ln in lines[start + 1:]:
        if not ln.startswith("#   "):
            break
        body.append(ln.removeprefix("#   "))
    assert len(body) >= 5, body
    return "\n".join(body)


def test_the_user_unit_runs_under_the_users_systemd(deployed):
    """The user unit, installed by the commands in its own comment (pipx's script stood in
    for), runs under the user's systemd as that user, Type=notify included."""
    c, _, _ = deployed
    c.run(f"mkdir -p ~/.local/bin && ln -s {MS} ~/.local/bin/meshsync", user="openclaw")
    uid = c.run("id -u openclaw").stdout.strip()
    env = {"XDG_RUNTIME_DIR": f"/run/user/{uid}"}
    script = user_unit_commands().replace('loginctl enable-linger "$USER"', "loginctl enable-linger openclaw")
    # "then edit it": this account's node (the template's, stopped above) keeps its node id;
    # its index refuses any other (R11).
    copy = "cp config.example.yaml ~/.config/meshsync/config.yaml"
    assert copy in script
    script = script.replace(copy, copy + " && echo 'node_id: linux-box-openclaw' >> ~/.config/meshsync/config.yaml")
    linger, rest = script.split("\n", 1)
    c.run(linger)  # a user may do this for themselves only where polkit lets them; root may
    c.wait(f"test -S /run/user/{uid}/systemd/private", "the user's systemd started")
    c.run("cd /srv/meshsync-src && export PATH=$HOME/.local/bin:$PATH\n" + rest, user="openclaw", env=env)
    out = c.run("systemctl --user show meshsync -p ActiveState -p MainPID", user="openclaw", env=env).stdout
    assert "ActiveState=active" in out, out
    pid = re.search(r"MainPID=(\d+)", out).group(1)
    assert c.run(f"ps -o user= -p {pid}").stdout.strip() == "openclaw"
    c.run("systemctl --user disable --now meshsync", user="openclaw", env=env)


def test_uninstall_leaves_the_share(deployed):
    c, _, nas = deployed
    c.run(blocks()["uninstall"])
    assert c.run("id meshsync", check=False).returncode != 0
    assert c.run("test -e /opt/meshsync/venv || test -e /etc/meshsync || test -e /var/lib/meshsync",
                 check=False).returncode != 0
    assert (nas / ".meshsync").is_dir() and (nas / "memory" / "mesh" / "from-cli.json").is_file()


# --- the restore procedure, with real nodes -------------------------------------------------------


def test_restoring_a_share_backup_with_fresh_indexes_keeps_later_writes(mesh: Mesh, tmp_path):
    """Section 9: the share comes back from a backup older than the nodes' last writes.
    With fresh indexes (the caches kept) the later writes survive; the later delete does
    not (its tombstone was not in the backup)."""
    a, b = mesh.node("a"), mesh.node("b")
    a.cli("put", "mesh", "before", '"v1"')
    a.cli("put", "mesh", "deleted-later", '"x"')
    b.sync()
    backup = tmp_path / "backup"
    shutil.copytree(mesh.share, backup)
    a.cli("put", "mesh", "after", '"new"')
    a.cli("put", "mesh", "before", '"v2"')
    a.cli("rm", "mesh", "deleted-later")
    b.sync()
    # the NAS loses the share; the backup goes back in place; every node gets a new index
    shutil.rmtree(mesh.share)
    shutil.copytree(backup, mesh.share)
    for n in (a, b):
        for f in n.index.parent.glob(n.index.name + "*"):
            f.rename(f.with_name(f.name.replace("index.sqlite", "index.sqlite.before-restore")))
        n.cli("init")
    a.sync()
    b.sync()
    a.sync()
    for n in (a, b):
        assert n.value("mesh", "after") == "new" and n.value("mesh", "before") == "v2"
        assert n.value("mesh", "deleted-later") == "x"  # back: delete it again
    assert json.loads((mesh.share / "memory/mesh/after.json").read_text())["value"] == "new"
