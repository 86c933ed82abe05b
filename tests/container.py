"""A throwaway machine with systemd as PID 1, for running the units as they are shipped.

systemd is not PID 1 where the tests run, so `systemctl start` cannot be tried there.
``Container`` boots the host's own systemd in a systemd-nspawn container: its /usr is the
host's (read-only), its /etc a copy, everything else empty and private to the container.
Units started there get the real sandbox (mount namespaces for ProtectSystem= and
ReadWritePaths=, seccomp for SystemCallFilter=, capability bounds, no_new_privs, ...),
which is what makes their hardening testable.  Commands run inside through nsenter, as
root of the container (or as another user with runuser).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def need(tool: str, package: str) -> str:
    exe = shutil.which(tool)
    if exe is None:  # .ci/run installs it: a missing tool is a broken setup, not a skip
        pytest.fail(f"{tool} is not installed (apt-get install {package})")
    return exe


class Container:
    """One booted container; ``binds`` maps host paths to container paths (read-write),
    ``ro_binds`` likewise read-only.  Use as a context manager."""

    def __init__(self, root: Path, binds: dict[Path, str] | None = None,
                 ro_binds: dict[Path, str] | None = None, boot_timeout: float = 120) -> None:
        self.root = root
        self.log = root.parent / "container.log"
        self.binds = binds or {}
        self.ro_binds = ro_binds or {}
        self.boot_timeout = boot_timeout
        self.proc: subprocess.Popen | None = None
        self.leader = 0
        # nspawn keeps per-machine state under /run/systemd/nspawn/ by name: one name per
        # container, so that test runs side by side do not meet there.
        self.name = f"meshsync-test-{os.getpid()}-{secrets.token_hex(3)}"

    # --- lifetime ------------------------------------------------------------------------------

    def _make_root(self) -> None:
        r = self.root
        r.mkdir(parents=True)
        for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")):
            if Path("/" + link).is_symlink():
                (r / link).symlink_to(target)
        for d in ("usr/lib", "dev", "proc", "sys", "run", "tmp", "var/lib", "var/log", "var/tmp", "mnt", "home",
                  "opt", "srv", "root"):
            (r / d).mkdir(parents=True, exist_ok=True)
        (r / "root").chmod(0o755)  # the host's Python may live under /root (pyenv): readable
        (r / "tmp").chmod(0o1777)
        (r / "var/tmp").chmod(0o1777)
        # nspawn wants to see an OS tree before /usr is bound over it
        shutil.copy2("/usr/lib/os-release", r / "usr/lib/os-release")
        shutil.copytree("/etc", r / "etc", symlinks=True, ignore_dangling_symlinks=True,
                        ignore=shutil.ignore_patterns("machine-id", "fstab"))
        (r / "etc/machine-id").write_text("")
        (r / "etc/fstab").write_text("")
        # A quick boot: none of the host's own services, only what systemd needs.
        system = r / "etc/systemd/system"
        for wants in system.glob("*.target.wants"):
            shutil.rmtree(wants)

    def __enter__(self) -> Container:
        nspawn = need("systemd-nspawn", "systemd-container")
        need("nsenter", "util-linux")
        self._make_root()
        args = [nspawn, "--quiet", "--directory", str(self.root), "--register=no", "--keep-unit",
                "--machine", self.name, "--bind-ro=/usr"]
        args += [f"--bind={h}:{c}" for h, c in self.binds.items()]
        args += [f"--bind-ro={h}:{c}" for h, c in self.ro_binds.items()]
        args += ["--boot", "systemd.unit=multi-user.target"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MESHSYNC_", "NOTIFY_SOCKET"))}
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.log.open("w"),
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            self._wait_booted()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _children(self, pid: int) -> list[int]:
        out = []
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    stat = (p / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(p.name))
        return out

    def _wait_booted(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.boot_timeout
        state = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"systemd-nspawn exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            if not self.leader:
                kids = self._children(self.proc.pid)
                self.leader = kids[0] if kids else 0
            if self.leader:
                r = self.run("systemctl is-system-running", check=False, timeout=30)
                state = r.stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.2)
        pytest.fail(f"the container did not boot in {self.boot_timeout} s (state {state!r}):\n"
                    f"{self.log.read_text()[-3000:]}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        if self.leader and self.proc.poll() is None:
            self.run("systemctl poweroff --no-block", check=False, timeout=30)
        try:
            # A throwaway machine: a shutdown still busy after 20 s (seen under a loaded CI
            # machine) is cut short; nothing in it outlives the test.
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        # nspawn leaves its (empty) propagation folder when /run is not a tmpfs
        shutil.rmtree(Path("/run/systemd/nspawn/propagate") / self.name, ignore_errors=True)

    # --- inside ---------------------------------------------------------------------------------

    def run(self, script: str, user: str | None = None, check: bool = True, timeout: float = 120,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a bash script in the container, as root or as ``user``."""
        cmd = ["nsenter", "--target", str(self.leader), "--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup",
               "--root", "--wd", "env", "-i", f"PATH={PATH}", "HOME=/root", "LANG=C.UTF-8",
               *[f"{k}={v}" for k, v in (env or {}).items()]]
        if user:
            cmd += ["runuser", "-u", user, "--"]
        cmd += ["bash", "-eo", "pipefail", "-c", script]
        r = subprocess.run(cmd, text=True, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, cwd="/")
        if check and r.returncode != 0:
            pytest.fail(f"in the container{' as ' + user if user else ''}, exit {r.returncode}:\n{script}\n"
                        f"--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}")
        return r

    def wait(self, script: str, what: str, timeout: float = 60, user: str | None = None) -> str:
        """Run ``script`` until it succeeds; its output."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.run(script, user=user, check=False)
            if r.returncode == 0:
                return r.stdout
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: not within {timeout} s; last try:\n{r.stdout[-2000:]}{r.stderr[-2000:]}\n"
                            f"--- journal\n{self.run('journalctl --no-pager -n 60', check=False).stdout}")
            time.sleep(0.2)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        r = self.run(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props))
        return dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)


def python_binds() -> dict[Path, str]:
    """This interpreter's installation, at the same path in the container."""
    prefix = Path(sys.base_prefix).resolve()
    out = {prefix: str(prefix)}
    if Path(sys.prefix).resolve() != prefix:
        out[Path(sys.prefix).resolve()] = str(Path(sys.prefix).resolve())
    return out
