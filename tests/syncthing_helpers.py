"""Real Syncthing for tests: N `syncthing` processes on 127.0.0.1, one shared folder.

No mock: each instance is the Debian package's `syncthing` (1.19) with its own home made
by `syncthing generate`, its config.xml edited before the first start so that it talks
only to its peers on loopback:

* GUI/REST on 127.0.0.1:<free port> with a known API key; listen on tcp://127.0.0.1:<free
  port>; every peer device listed with its explicit address;
* global and local discovery, relays, NAT, usage and crash reporting, auto-upgrade off;
* one folder, same id on every instance, at that instance's own share directory, with the
  watcher on (1 s delay) and a short rescan interval.

``SyncthingMesh`` starts them and stops them (the ``syncthing`` fixture in
tests/mesh/test_syncthing.py makes sure no process outlives its test).  A node can be taken
"apart" (its process stopped, or its devices paused) and brought back.  Waiting is done by
polling the REST API (``/rest/db/status``, ``/rest/db/completion``) or the files with a
deadline, never by sleeping.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import wait_for

FOLDER_ID = "meshsync-share"
SYNCTHING = shutil.which("syncthing") or "/usr/bin/syncthing"
WATCHER_DELAY_S = 1
RESCAN_S = 10


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _set(parent: ET.Element, tag: str, text: str) -> None:
    el = parent.find(tag)
    if el is None:
        el = ET.SubElement(parent, tag)
    el.text = text


@dataclass
class SyncthingNode:
    """One Syncthing instance: its home (config, keys, database), its folder and ports."""

    name: str
    home: Path
    folder: Path
    gui_port: int = field(default_factory=free_port)
    listen_port: int = field(default_factory=free_port)
    api_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    device_id: str = ""
    proc: subprocess.Popen | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.gui_port}"

    @property
    def config_xml(self) -> Path:
        return self.home / "config.xml"

    @property
    def log_path(self) -> Path:
        return self.home / "syncthing.log"

    # --- set-up ---------------------------------------------------------------------------

    def generate(self) -> None:
        """`syncthing generate`: keys and a default config.xml; reads the device id."""
        self.home.mkdir(parents=True, exist_ok=True)
        p = subprocess.run([SYNCTHING, "generate", f"--home={self.home}", "--no-default-folder"],
                           capture_output=True, text=True, timeout=60, env=self._env())
        if p.returncode != 0:
            raise AssertionError(f"syncthing generate failed: {p.stdout}{p.stderr}")
        root = ET.parse(self.config_xml).getroot()
        self.device_id = root.find("device").get("id")
        assert self.device_id, p.stdout

    def configure(self, peers: list[SyncthingNode], folder_id: str = FOLDER_ID) -> None:
        """Write the loopback-only configuration, the peers and the shared folder."""
        tree = ET.parse(self.config_xml)
        root = tree.getroot()
        gui = root.find("gui")
        _set(gui, "address", f"127.0.0.1:{self.gui_port}")
        _set(gui, "apikey", self.api_key)
        opts = root.find("options")
        for tag, text in {
            "listenAddress": f"tcp://127.0.0.1:{self.listen_port}",
            "globalAnnounceEnabled": "false", "localAnnounceEnabled": "false",
            "relaysEnabled": "false", "natEnabled": "false",
            "urAccepted": "-1", "urSeen": "3", "crashReportingEnabled": "false",
            "autoUpgradeIntervalH": "0", "startBrowser": "false",
            "reconnectionIntervalS": "1", "setLowPriority": "false",
            "progressUpdateIntervalS": "-1", "stunServer": "",
        }.items():
            _set(opts, tag, text)
        # The own device first (generated), then every peer with its explicit address.
        template = root.find("defaults/device")
        for el in root.findall("device"):
            if el.get("id") != self.device_id:
                root.remove(el)
        own = root.find("device")
        own.set("name", self.name)
        _set(own, "address", f"tcp://127.0.0.1:{self.listen_port}")
        for i, peer in enumerate(p for p in peers if p is not self):
            dev = ET.fromstring(ET.tostring(template))
            dev.set("id", peer.device_id)
            dev.set("name", peer.name)
            _set(dev, "address", f"tcp://127.0.0.1:{peer.listen_port}")
            root.insert(list(root).index(own) + 1 + i, dev)
        # The folder: a copy of the generated defaults, shared with every peer.
        for el in root.findall("folder"):
            root.remove(el)
        folder = ET.fromstring(ET.tostring(root.find("defaults/folder")))
        folder.set("id", folder_id)
        folder.set("label", folder_id)
        folder.set("path", str(self.folder))
        folder.set("rescanIntervalS", str(RESCAN_S))
        folder.set("fsWatcherEnabled", "true")
        folder.set("fsWatcherDelayS", str(WATCHER_DELAY_S))
        for el in folder.findall("device"):
            folder.remove(el)
        for n in [self, *(p for p in peers if p is not self)]:
            d = ET.SubElement(folder, "device", {"id": n.device_id, "introducedBy": ""})
            ET.SubElement(d, "encryptionPassword").text = ""
        root.insert(list(root).index(gui), folder)
        tree.write(self.config_xml, encoding="unicode")

    # --- the process -------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ST")}
        env.update({"STNODEFAULTFOLDER": "1", "STNOUPGRADE": "1", "STNORESTART": "1",
                    "HOME": str(self.home)})
        return env

    def start(self) -> None:
        """Start `syncthing serve` and wait until its REST API answers."""
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Start `syncthing serve` (see wait_ready: several instances start side by side)."""
        assert self.proc is None or self.proc.poll() is not None, f"syncthing {self.name} runs already"
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [SYNCTHING, "serve", f"--home={self.home}", "--no-browser", "--no-restart", "--no-upgrade",
                 "--logflags=3", "--logfile=-"],
                stdout=log, stderr=subprocess.STDOUT, env=self._env(), start_new_session=True)

    def wait_ready(self) -> None:
        """Wait until the REST API answers; fail at once, with its log, if it exited."""
        def ready() -> bool:
            return not self.running or self.get("/rest/system/ping").get("ping") == "pong"
        wait_for(ready, 60, interval=0.1, what=f"syncthing {self.name}'s REST API on {self.api_url}")
        if not self.running:
            raise AssertionError(f"syncthing {self.name} exited; its log:\n{self.log()[-3000:]}")

    def terminate(self) -> None:
        """Ask the process to stop (SIGTERM to its group) without waiting: see stop()."""
        if self.proc is not None and self.proc.poll() is None:
            _killpg(self.proc.pid, signal.SIGTERM)

    def stop(self, timeout: float = 30) -> None:
        """Stop the process (SIGTERM, then SIGKILL after ``timeout``) and reap it."""
        if self.proc is None:
            return
        # Syncthing runs as a monitor process and its child, in a session of their own:
        # signal the group, so that neither can be left behind.
        pgid = self.proc.pid
        if self.proc.poll() is None:
            _killpg(pgid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _killpg(pgid, signal.SIGKILL)
                self.proc.wait()
        _killpg(pgid, signal.SIGKILL)  # a child that outlived its monitor
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # --- REST ------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.api_url + path, data=data, method=method,
                                     headers={"X-API-Key": self.api_key, "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
        return json.loads(raw) if raw.strip() else None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def db_status(self, folder_id: str = FOLDER_ID) -> dict:
        return self.get(f"/rest/db/status?folder={folder_id}")

    def completion(self, peer: SyncthingNode, folder_id: str = FOLDER_ID) -> dict:
        return self.get(f"/rest/db/completion?folder={folder_id}&device={peer.device_id}")

    def connected(self, peer: SyncthingNode) -> bool:
        conns = self.get("/rest/system/connections")["connections"]
        return bool(conns.get(peer.device_id, {}).get("connected"))

    def scan(self, folder_id: str = FOLDER_ID) -> None:
        """Ask for a scan now (the call returns once the scan is done)."""
        self.request("POST", f"/rest/db/scan?folder={folder_id}", timeout=120)

    def set_folder(self, folder_id: str = FOLDER_ID, **changes: Any) -> None:
        """Change the folder's configuration live (e.g. paused=True, fsWatcherEnabled=False)."""
        self.request("PATCH", f"/rest/config/folders/{folder_id}", changes)

    def pause_peers(self) -> None:
        """Cut this node off from every peer without stopping it (devices paused)."""
        self.request("POST", "/rest/system/pause")

    def resume_peers(self) -> None:
        self.request("POST", "/rest/system/resume")


class SyncthingMesh:
    """N Syncthing instances under ``root``, each sharing FOLDER_ID at ``root/<name>/share``."""

    def __init__(self, root: Path, names: list[str], folder_id: str = FOLDER_ID):
        self.root = root
        self.folder_id = folder_id
        self.nodes = {n: SyncthingNode(n, root / f"st-{n}", root / f"share-{n}") for n in names}

    def __getitem__(self, name: str) -> SyncthingNode:
        return self.nodes[name]

    def start(self) -> SyncthingMesh:
        """Generate, configure and start every instance; wait until all are connected."""
        nodes = list(self.nodes.values())
        for n in nodes:
            n.generate()
        for n in nodes:
            n.configure(nodes, self.folder_id)
        for n in nodes:  # side by side: a start takes a second or two, mostly waiting
            n.launch()
        for n in nodes:
            n.wait_ready()
        self.wait_connected()
        return self

    def wait_connected(self, timeout: float = 60) -> None:
        running = [n for n in self.nodes.values() if n.running]
        wait_for(lambda: all(a.connected(b) for a in running for b in running if a is not b), timeout,
                 interval=0.2, what="every running syncthing connected to every other")

    def in_sync(self) -> bool:
        """Every running instance idle, with nothing to pull, and seeing each running peer
        100% complete: what one of them has, all have."""
        running = [n for n in self.nodes.values() if n.running]
        for a in running:
            st = a.db_status(self.folder_id)
            if st["state"] != "idle" or st["needTotalItems"] or st.get("pullErrors"):
                return False
        for a in running:
            for b in running:
                if a is not b:
                    c = a.completion(b, self.folder_id)
                    if c["completion"] < 100 or c["needItems"] or c["needDeletes"]:
                        return False
        return True

    def wait_in_sync(self, timeout: float = 60, scan: bool = True) -> None:
        """Scan every running instance (so that changes not yet seen by a watcher count),
        then wait until :meth:`in_sync` holds twice in a row."""
        if scan:
            for n in self.nodes.values():
                if n.running:
                    n.scan(self.folder_id)
        seen = [0]

        def twice() -> bool:
            seen[0] = seen[0] + 1 if self.in_sync() else 0
            return seen[0] >= 2

        wait_for(twice, timeout, interval=0.2, what="syncthing folders in sync")

    def stop(self) -> None:
        for n in self.nodes.values():  # every one asked first: they stop side by side
            n.terminate()
        errors = []
        for n in self.nodes.values():
            try:
                n.stop()
            except Exception as exc:  # stop the others anyway
                errors.append(exc)
        if errors:
            raise errors[0]


def wait_file(path: Path, content: bytes | None = None, timeout: float = 60) -> None:
    """Wait until ``path`` exists (with ``content``, when given): a file arrived by Syncthing."""
    wait_for(lambda: path.is_file() and (content is None or path.read_bytes() == content), timeout,
             interval=0.1, what=f"{path} to arrive" + (" with its content" if content is not None else ""))


def wait_gone(path: Path, timeout: float = 60) -> None:
    wait_for(lambda: not path.exists(), timeout, interval=0.1, what=f"{path} to be deleted")
