"""The service definitions: the systemd units verify, the system unit's hardening scores
2.0 or less in `systemd-analyze security`, every unit is ordered after the NAS mount
without requiring it and stops retrying a bad configuration, the install path is the one
docs/deployment.md uses, and the launchd agent for macOS is well-formed."""

from __future__ import annotations

import os
import plistlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "systemd"
SYSTEM = SYSTEMD / "meshsync.service"
TEMPLATE = SYSTEMD / "meshsync@.service"
USER = SYSTEMD / "meshsync-user.service"
PLIST = REPO / "launchd" / "local.meshsync.plist"
DEPLOYMENT = REPO / "docs" / "deployment.md"
VENV_BIN = "/opt/meshsync/venv/bin/meshsync"
MAX_EXPOSURE = 2.0


def unit_settings(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            k, v = line.split("=", 1)
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def last(path: Path) -> dict[str, str]:
    return {k: v[-1] for k, v in unit_settings(path).items()}


def words(path: Path, key: str) -> list[str]:
    return [w for v in unit_settings(path).get(key, []) for w in v.split()]


def tool(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:  # .ci/run installs it: a missing tool is a broken setup, not a skip
        pytest.fail(f"{name} is not installed (apt-get install systemd)")
    return exe


def real_exec(unit: Path, key: str = "ExecStart") -> str:
    """The unit's ExecStart (or ExecReload) with the program replaced by one that exists here."""
    orig = unit_settings(unit)[key][0]
    prog, _, args = orig.partition(" ")
    assert Path(prog).name == "meshsync" and args in ("run", "reload --pid $MAINPID"), orig
    installed = shutil.which("meshsync")
    if installed:
        return f"{installed} {args}"
    return f"{sys.executable} -m meshsync {args}"


def verify(unit: Path, tmp_path: Path, user: bool) -> None:
    exe = tool("systemd-analyze")
    d = tmp_path / ("user" if user else "system")
    d.mkdir()
    text = unit.read_text(encoding="utf-8")
    for key in ("ExecStart", "ExecReload"):
        text = re.sub(rf"^{key}=.*$", lambda _m, k=key: f"{k}=" + real_exec(unit, k), text, flags=re.M)
    name = unit.name
    (d / name).write_text(text, encoding="utf-8")
    env = dict(os.environ)
    cmd = [exe]
    if user:
        runtime = tmp_path / "runtime"
        runtime.mkdir(mode=0o700)
        env["XDG_RUNTIME_DIR"] = str(runtime)
        cmd.append("--user")
    cmd += ["verify", str(d / name)]
    r = subprocess.run(cmd, cwd=d, env=env, text=True, capture_output=True, timeout=120)
    stem = name.split("@")[0]
    own = [ln for ln in (r.stdout + r.stderr).splitlines() if stem in ln or str(d) in ln]
    assert r.returncode == 0 and not own, (
        f"systemd-analyze verify {unit.name} failed (exit {r.returncode}):\n{r.stdout}{r.stderr}")


def exposure(unit: Path) -> tuple[float, str]:
    """`systemd-analyze security --offline=yes UNIT`'s overall exposure level and its output."""
    r = subprocess.run([tool("systemd-analyze"), "security", "--offline=yes", str(unit)], text=True,
                       capture_output=True, timeout=120)
    m = re.search(r"^→ Overall exposure level for \S+: (\d+\.\d+) ", r.stdout, re.M)
    assert m, f"no overall exposure level in the output (exit {r.returncode}):\n{r.stdout}{r.stderr}"
    return float(m.group(1)), r.stdout


# --- verification and score ----------------------------------------------------------------


def test_system_unit_verifies(tmp_path):
    verify(SYSTEM, tmp_path, user=False)


def test_template_unit_verifies(tmp_path):
    verify(TEMPLATE, tmp_path, user=False)


def test_user_unit_verifies(tmp_path):
    verify(USER, tmp_path, user=True)


@pytest.mark.parametrize("unit", [SYSTEM, TEMPLATE], ids=["meshsync.service", "meshsync@.service"])
def test_security_exposure_is_at_most_2(unit):
    level, out = exposure(unit)
    assert level <= MAX_EXPOSURE, f"{unit.name}: exposure {level} > {MAX_EXPOSURE}:\n{out}"


def test_the_score_falls_without_the_hardening(tmp_path):
    """The parse above reads the real figure: the same unit without its hardening block
    scores far worse (6.6 before the hardening was added)."""
    text = SYSTEM.read_text(encoding="utf-8")
    bare = text[:text.index("# --- Hardening")] + text[text.index("[Install]"):]
    (tmp_path / "meshsync.service").write_text(bare, encoding="utf-8")
    level, out = exposure(tmp_path / "meshsync.service")
    assert level > 5.0, out


# --- what the units say -------------------------------------------------------------------


def mount_unit(path: str) -> str:
    r = subprocess.run([tool("systemd-escape"), "-p", "--suffix=mount", path], text=True, capture_output=True,
                       timeout=30, check=True)
    return r.stdout.strip()


@pytest.mark.parametrize("unit", [SYSTEM, TEMPLATE], ids=["meshsync.service", "meshsync@.service"])
def test_ordered_after_the_share_mount_without_requiring_it(unit):
    s = unit_settings(unit)
    for key in ("RequiresMountsFor", "Requires", "BindsTo", "Requisite", "PartOf"):
        assert key not in s, f"{unit.name}: {key}= would stop meshsync with the NAS mount"
    share = words(unit, "ReadWritePaths")[0]
    assert share == "/mnt/nas/openclaw-mesh"
    mount = mount_unit(share)
    assert mount in words(unit, "After") and mount in words(unit, "Wants"), (unit.name, mount)
    assert "remote-fs.target" in words(unit, "After")


@pytest.mark.parametrize("unit", [SYSTEM, TEMPLATE, USER], ids=["system", "template", "user"])
def test_a_bad_configuration_is_not_retried_forever(unit):
    one = last(unit)
    assert one["Restart"] == "on-failure"
    # meshsync's exit codes for a bad configuration (2) and an index it cannot use (6)
    assert one["RestartPreventExitStatus"] == "2 6"
    assert one["StartLimitBurst"] and one["StartLimitIntervalSec"]
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["WatchdogSec"] == "60"


def test_system_unit_settings():
    s = unit_settings(SYSTEM)
    one = last(SYSTEM)
    assert one["User"] == "meshsync" and one["Group"] == "meshsync"
    assert one["ExecStart"] == f"{VENV_BIN} run"
    assert "MESHSYNC_CONFIG=/etc/meshsync/config.yaml" in s["Environment"]
    assert one["NoNewPrivileges"] == "yes" and one["PrivateTmp"] == "yes"
    assert one["ProtectSystem"] == "strict"
    assert one["ProtectHome"] == "read-only"
    assert one["StateDirectory"] == "meshsync"
    rw = words(SYSTEM, "ReadWritePaths")
    assert rw == ["/mnt/nas/openclaw-mesh", "/var/lib/meshsync", "/home/openclaw/.openclaw"]
    assert one["WantedBy"] == "multi-user.target"
    # Documentation= names docs that the wheel installs into the virtualenv
    docs = s["Documentation"]
    assert docs
    for uri in docs:
        rel = uri.removeprefix("file:/opt/meshsync/venv/share/doc/meshsync/")
        assert rel != uri and (REPO / "docs" / rel).is_file(), uri


def test_template_runs_as_the_instance_user():
    s = unit_settings(TEMPLATE)
    one = last(TEMPLATE)
    assert one["User"] == "%i" and "Group" not in s
    assert "MESHSYNC_CONFIG=/etc/meshsync/%i.yaml" in s["Environment"]
    assert one["ExecStart"] == f"{VENV_BIN} run"
    assert words(TEMPLATE, "ReadWritePaths")[1:] == ["-/home/%i/.local/share/meshsync", "-/home/%i/.openclaw"]
    # the same hardening as the system unit, directive for directive
    hard = {k: v for k, v in unit_settings(SYSTEM).items() if k not in (
        "User", "Group", "Environment", "ReadWritePaths", "StateDirectory", "StateDirectoryMode",
        "Description", "Documentation", "After", "Wants", "WantedBy")}
    assert {k: v for k, v in s.items() if k in hard} == hard


def test_user_unit_settings():
    s = unit_settings(USER)
    one = last(USER)
    assert "User" not in s and "Group" not in s
    assert one["ExecStart"] == "%h/.local/bin/meshsync run"
    assert one["WantedBy"] == "default.target"
    text = USER.read_text(encoding="utf-8")
    assert "pipx install" in text and "uv tool install" in text
    assert not re.search(r"^#\s*(python3 -m )?pip install --user", text, re.M), (
        "pip install --user fails on Debian 12 (PEP 668): recommend pipx or uv")


def test_one_install_path_everywhere():
    """The units start the script where docs/deployment.md installs it, and the docs
    name no other path for it."""
    doc = DEPLOYMENT.read_text(encoding="utf-8")
    assert "python3 -m venv /opt/meshsync/venv" in doc
    assert VENV_BIN in doc
    for unit in (SYSTEM, TEMPLATE):
        assert last(unit)["ExecStart"].split()[0] == VENV_BIN
    assert "ExecStart=/usr/local/bin/meshsync" not in doc


def test_launchd_agent():
    with PLIST.open("rb") as f:
        p = plistlib.load(f)
    assert p["Label"] == PLIST.stem == "local.meshsync"
    prog, *args = p["ProgramArguments"]
    assert prog == "/Users/USERNAME/.local/bin/meshsync" and args == ["run"]
    assert p["EnvironmentVariables"]["MESHSYNC_CONFIG"] == "/Users/USERNAME/.config/meshsync/config.yaml"
    assert p["RunAtLoad"] is True and p["KeepAlive"] == {"SuccessfulExit": False}
    assert p["ThrottleInterval"] >= 10
    doc = DEPLOYMENT.read_text(encoding="utf-8")
    assert "launchd/local.meshsync.plist" in doc and "untested on a real\n  Mac" in doc
