"""``meshsync doctor`` on a share that Syncthing keeps: ask Syncthing about the folder.

* ``.stignore`` patterns (:class:`Ignores`), to check that the node-local files do not
  travel and that meshsync's shared files do;
* the REST API (:class:`Api`, stdlib urllib only: a handful of GETs does not justify a
  dependency), for the folder's state: paused, errors, out of sync, last scan, watcher.

:func:`doctor_checks` turns all this into ``meshsync doctor`` lines.  meshsync only reads
from Syncthing; it never changes Syncthing's configuration.  (Syncthing's file names,
which the engine reads, are meshsync/replicas/share/syncthing.py.)
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from meshsync import layout
from meshsync.cli.checks import FAIL, PASS, WARN, Check
from meshsync.config import Settings
from meshsync.replicas.share import journal
from meshsync.replicas.share.store import TMP_PREFIX
from meshsync.replicas.share.syncthing import IGNORE_FILE, MARKER, is_syncthing_folder

API_TIMEOUT_S = 5.0

# --- .stignore ---------------------------------------------------------------------------------


def _glob_regex(glob: str) -> str:
    """Syncthing's glob syntax (separator "/") as a regular expression."""
    out, i, n = [], 0, len(glob)
    depth = 0  # inside {a,b}
    while i < n:
        c = glob[i]
        if c == "\\" and i + 1 < n:
            out.append(re.escape(glob[i + 1]))
            i += 2
            continue
        if c == "*":
            if glob.startswith("**", i):
                out.append(".*")
                i += 2
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = glob.find("]", i + 2)
            if j < 0:
                out.append(re.escape(c))
            else:
                body = glob[i + 1:j]
                body = "^" + body[1:] if body.startswith("!") else body
                out.append(f"[{body.replace(chr(92), chr(92) * 2)}]")
                i = j
        elif c == "{":
            depth += 1
            out.append("(?:")
        elif c == "}" and depth:
            depth -= 1
            out.append(")")
        elif c == "," and depth:
            out.append("|")
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out) + ")" * depth


@dataclass(frozen=True, slots=True)
class _Pattern:
    text: str
    regex: re.Pattern[str]
    include: bool  # a "!" pattern: matching paths are not ignored


class Ignores:
    """A folder's ignore patterns, matched as Syncthing does: the first pattern that
    matches a path decides; "!" keeps a path; "(?i)" ignores case; "(?d)" changes only
    what Syncthing may delete; a pattern without a leading "/" matches at any depth; a
    pattern that matches a directory covers everything in it."""

    def __init__(self, lines: list[str]):
        self.lines = lines
        self.patterns: list[_Pattern] = []
        for raw in lines:
            line = raw.strip()
            if not line or line.startswith("//") or line.startswith(("#include", "#escape")):
                continue
            include, flags, seen = False, 0, set()
            while True:  # the prefixes, in any order, each once (as Syncthing reads them)
                head = "!" if line.startswith("!") else line[:4]
                if head not in ("!", "(?i)", "(?d)") or head in seen:
                    break
                seen.add(head)
                include = include or head == "!"
                flags = re.IGNORECASE if head == "(?i)" else flags
                line = line[len(head):]
            line = line.rstrip("/")
            while line.startswith("**/"):  # "**/x" matches x at the top as well
                line = line[3:]
            if not line:
                continue
            body = _glob_regex(line.lstrip("/"))
            anchor = "" if line.startswith("/") else "(?:.*/)?"
            self.patterns.append(_Pattern(raw.strip(), re.compile(f"{anchor}(?:{body})(?:/.*)?", flags), include))

    def match(self, rel: str) -> _Pattern | None:
        """The pattern that decides for the share-relative path ``rel`` (None: none)."""
        for p in self.patterns:
            if p.regex.fullmatch(rel):
                return p
        return None

    def ignored(self, rel: str) -> bool:
        p = self.match(rel)
        return p is not None and not p.include


def read_ignore_file(root: Path) -> tuple[list[str], list[str]]:
    """The lines of ``root/.stignore`` with its ``#include`` files expanded (relative to
    the folder, as Syncthing reads them), and the problems met on the way."""
    lines: list[str] = []
    problems: list[str] = []

    def read(p: Path, depth: int) -> None:
        try:
            text = p.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            if p.name != IGNORE_FILE:
                problems.append(f"#include {p.relative_to(root)} is missing")
            return
        except OSError as exc:
            problems.append(f"cannot read {p}: {exc.strerror}")
            return
        for line in text.splitlines():
            s = line.strip()
            if s.startswith("#include ") and depth < 8:
                inc = root / s[len("#include "):].strip().lstrip("/")
                if not os.path.realpath(inc).startswith(os.path.realpath(root) + os.sep):
                    problems.append(f"#include {inc.name} points outside the folder; not read")
                else:
                    read(inc, depth + 1)
            else:
                lines.append(line)

    read(root / IGNORE_FILE, 0)
    return lines, problems


# --- the REST API --------------------------------------------------------------------------------


class SyncthingError(Exception):
    """Syncthing's API could not answer; the message says why, for an operator."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    url: str
    key: str
    source: str  # where the address and key came from, for messages


@dataclass
class FolderState:
    """What Syncthing says about the share's folder."""

    id: str
    label: str
    paused: bool
    watcher: bool
    watcher_delay_s: float
    rescan_s: int
    versioning: str
    state: str = ""
    error: str = ""
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, error) Syncthing could not sync
    need_items: int = 0
    need_bytes: int = 0
    last_scan: datetime | None = None
    devices: list[str] = field(default_factory=list)  # the other devices sharing the folder
    connected: list[str] = field(default_factory=list)  # those of them connected now


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def _time(text: str | None) -> datetime | None:
    """Syncthing's RFC 3339 times; its zero time ("0001-01-01T00:00:00Z") means never."""
    if not text or text.startswith("0001-"):
        return None
    try:
        return datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", text.replace("Z", "+00:00")))
    except ValueError:
        return None


class Api:
    """Syncthing's REST API, read-only, with the GUI's API key."""

    def __init__(self, endpoint: Endpoint, timeout: float = API_TIMEOUT_S):
        self.endpoint = endpoint
        self.timeout = timeout
        u = urllib.parse.urlsplit(endpoint.url)
        self._ctx = None
        if u.scheme == "https" and _loopback(u.hostname or ""):
            # The GUI's certificate is self-signed; on loopback there is nobody in between.
            self._ctx = ssl.create_default_context()
            self._ctx.check_hostname = False
            self._ctx.verify_mode = ssl.CERT_NONE

    def get(self, path: str, **params: str) -> Any:
        url = self.endpoint.url.rstrip("/") + path + ("?" + urllib.parse.urlencode(params) if params else "")
        req = urllib.request.Request(url, headers={"X-API-Key": self.endpoint.key})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._ctx) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as exc:
            body = exc.read().decode("utf-8", "replace").strip()
            if exc.code in (401, 403):
                raise SyncthingError(f"Syncthing at {self.endpoint.url} refused the API key from "
                                     f"{self.endpoint.source} (HTTP {exc.code})") from None
            raise SyncthingError(f"Syncthing at {self.endpoint.url} answered {path} with HTTP {exc.code}"
                                 + (f": {body}" if body else "")) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SyncthingError(f"cannot reach Syncthing's API at {self.endpoint.url} "
                                 f"(from {self.endpoint.source}): {reason}") from None
        except ValueError as exc:
            raise SyncthingError(f"Syncthing at {self.endpoint.url} answered {path} with no JSON: {exc}") from None

    def folder_config(self, root: Path) -> dict | None:
        """The configuration of the folder whose path is ``root`` (None: no such folder)."""
        want = os.path.realpath(root)
        for f in self.get("/rest/config/folders") or []:
            if os.path.realpath(os.path.expanduser(f.get("path", ""))) == want:
                return f
        return None

    def folder_state(self, cfg: dict) -> FolderState:
        fid = cfg["id"]
        st = FolderState(fid, cfg.get("label") or fid, bool(cfg.get("paused")), bool(cfg.get("fsWatcherEnabled")),
                         float(cfg.get("fsWatcherDelayS") or 0), int(cfg.get("rescanIntervalS") or 0),
                         (cfg.get("versioning") or {}).get("type") or "")
        me = (self.get("/rest/system/status") or {}).get("myID", "")
        st.devices = [d["deviceID"] for d in cfg.get("devices", []) if d.get("deviceID") != me]
        conns = (self.get("/rest/system/connections") or {}).get("connections") or {}
        st.connected = [d for d in st.devices if (conns.get(d) or {}).get("connected")]
        if st.paused:
            return st  # a paused folder has no state, errors or statistics to ask for
        db = self.get("/rest/db/status", folder=fid) or {}
        st.state, st.error = db.get("state", ""), db.get("error") or db.get("invalid") or ""
        st.need_items, st.need_bytes = int(db.get("needTotalItems") or 0), int(db.get("needBytes") or 0)
        errs = (self.get("/rest/folder/errors", folder=fid) or {}).get("errors") or []
        st.failed = [(e.get("path", ""), (e.get("error") or "").strip()) for e in errs]
        stats = (self.get("/rest/stats/folder") or {}).get(fid) or {}
        st.last_scan = _time(stats.get("lastScan"))
        return st

    def ignore_lines(self, folder_id: str) -> tuple[list[str], list[str]]:
        """The folder's patterns as Syncthing expanded them (#include resolved), and the
        error Syncthing met reading them (then the lines as written)."""
        d = self.get("/rest/db/ignores", folder=folder_id) or {}
        err = [f"Syncthing says: {d['error']}"] if d.get("error") else []
        return list(d.get("expanded") or d.get("ignore") or []), err


def config_candidates() -> list[Path]:
    """Where Syncthing keeps config.xml for this user (newest layout first)."""
    home = Path.home()
    state = Path(os.environ.get("XDG_STATE_HOME") or home / ".local" / "state")
    conf = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    return [state / "syncthing" / "config.xml", conf / "syncthing" / "config.xml",
            home / "Library" / "Application Support" / "Syncthing" / "config.xml"]


def _read_config_xml(p: Path) -> ET.Element | None:
    try:
        return ET.fromstring(p.read_bytes())
    except (OSError, ET.ParseError):
        return None


def endpoint(s: Settings) -> tuple[Endpoint | None, str]:
    """The API address and key: from the settings, else from Syncthing's config.xml.
    Returns (None, why) when neither gives both."""
    url = s.syncthing.api_url
    key = s.syncthing.api_key.get_secret_value() if s.syncthing.api_key else None
    if url and key:
        return Endpoint(url, key, "syncthing.api_url/api_key"), ""
    paths = [s.syncthing.config_xml] if s.syncthing.config_xml else config_candidates()
    for p in paths:
        root = _read_config_xml(p)
        if root is None:
            continue
        gui = root.find("gui")
        if gui is None or gui.get("enabled", "true") == "false":
            return None, f"the GUI/API is disabled in {p}"
        addr = (gui.findtext("address") or "").strip()
        if addr.startswith("unix"):
            return None, f"{p} has the GUI on a Unix socket; set syncthing.api_url"
        host, _, port = addr.rpartition(":")
        if host in ("", "0.0.0.0", "[::]", "::"):
            host = "127.0.0.1"
        scheme = "https" if gui.get("tls") == "true" else "http"
        source = " and ".join(x for x in ("syncthing.api_url" if url else "", "syncthing.api_key" if key else "")
                              if x) or str(p)
        source += f" and {p}" if source != str(p) else ""
        url = url or f"{scheme}://{host}:{port}"
        key = key or (gui.findtext("apikey") or "").strip()
        if not key:
            return None, f"{p} has no API key; set one in Syncthing's GUI (Actions, Settings)"
        return Endpoint(url, key, source), ""
    where = str(s.syncthing.config_xml) if s.syncthing.config_xml else "Syncthing's usual places"
    return None, f"no API address and key: syncthing.api_url/api_key are not set and no readable config.xml in {where}"


# --- doctor ------------------------------------------------------------------------------------

# Paths meshsync shares: ignoring any of them splits the mesh without a word (R1).
SHARED_SAMPLES = (f"{layout.META}/README", f"{layout.TOMBSTONES}/memory/mesh/x.json", f"{journal.DIR}/x.log",
                  "memory/mesh/x.json", "memory/user/x/y.json", "memory/node/x/y.json",
                  "skills/x/SKILL.md", "skills/x/scripts/run.sh")
TMP_SAMPLES = (f"memory/mesh/{TMP_PREFIX}1-2-3", f"skills/x/{TMP_PREFIX}1-2-3", f"{layout.TOMBSTONES}/{TMP_PREFIX}1-2-3")
IGNORE_TMP = f"(?d){TMP_PREFIX}*"


def _age(t: datetime) -> str:
    s = max(0, (datetime.now(UTC) - t).total_seconds())
    return f"{s:.0f}s ago" if s < 3600 else f"{s / 3600:.1f} h ago" if s < 2 * 86400 else f"{s / 86400:.0f} days ago"


def _state_check(st: FolderState) -> Check:
    """One line for the folder's state: the worst of paused, errors, out of sync, apart."""
    name = f'folder "{st.label}" ({st.id})'
    if st.paused:
        return Check("syncthing state", FAIL, f"{name} is paused: no change reaches or leaves this node",
                     "resume the folder in Syncthing (GUI: the folder, Resume)")
    if st.state == "error" or st.error:
        return Check("syncthing state", FAIL, f"{name} is stopped: {st.error or 'state error'}",
                     "fix what Syncthing names (a missing .stfolder means the folder path is not the "
                     "real folder: a disk not mounted?), then rescan it in Syncthing")
    if st.failed:
        eg = "; ".join(f"{p}: {e}" for p, e in st.failed[:3])
        return Check("syncthing state", FAIL, f"{name}: {len(st.failed)} file(s) cannot be synced ({eg})",
                     "see Syncthing's GUI (the folder, Failed Items): disk space, permissions, names")
    scan = f"last scan {_age(st.last_scan)}" if st.last_scan else "never scanned"
    peers = f"{len(st.connected)} of {len(st.devices)} other device(s) connected"
    if st.need_items or st.need_bytes:
        return Check("syncthing state", WARN,
                     f"{name}: {st.need_items} item(s), {st.need_bytes} bytes still to pull ({st.state}, {peers})",
                     "wait for Syncthing to finish; meshsync imports each file as it arrives")
    if st.devices and not st.connected:
        return Check("syncthing state", WARN, f"{name} is up to date here, but {peers}: this node is apart",
                     "meshsync works on this replica meanwhile; the nodes converge when Syncthing "
                     "reconnects (check the other nodes, their addresses, firewalls)")
    if st.last_scan is None:
        return Check("syncthing state", WARN, f"{name} has never been scanned ({st.state or 'no state'})",
                     "wait for Syncthing's first scan, or start a rescan in its GUI")
    return Check("syncthing state", PASS, f"{name} is {st.state or 'idle'} and up to date; {scan}; {peers}")


def _watcher_check(watcher: bool, delay_s: float, rescan_s: int) -> Check:
    if watcher:
        return Check("syncthing watcher", PASS, f"fsWatcherEnabled: changes are sent after {delay_s:g}s")
    return Check("syncthing watcher", WARN,
                 f"fsWatcherEnabled is off: a change made here reaches the other nodes only at the next "
                 f"rescan (every {rescan_s}s)",
                 "turn on \"Watch for Changes\" in the folder's settings (Advanced)")


def _inside(p: Path, root: Path) -> str | None:
    """p's path relative to root when p lies inside it, else None."""
    try:
        return Path(os.path.realpath(p)).relative_to(os.path.realpath(root)).as_posix()
    except ValueError:
        return None


def _ignores_check(s: Settings, lines: list[str], source: str, problems: list[str]) -> Check:
    ign = Ignores(lines)
    shared = [r for r in SHARED_SAMPLES if ign.ignored(r)]
    if shared:
        pats = sorted({ign.match(r).text for r in shared})
        return Check("syncthing ignores", FAIL,
                     f"files meshsync shares ({', '.join(shared[:3])}) are ignored by {', '.join(pats)} in {source}",
                     "remove those patterns: without .meshsync/, memory/ and skills/ the nodes never converge")
    local: list[str] = []
    for what, p in (("the index", s.index), ("the index's WAL", Path(f"{s.index}-wal")),
                    ("the cache", s.openclaw_home)):
        rel = _inside(p, s.share)
        if rel is not None and rel != "." and not ign.ignored(rel):
            local.append(f"{what} {rel}")
    if local:
        return Check("syncthing ignores", FAIL,
                     f"{', '.join(local)} in the share not excluded by {source}: Syncthing would copy this "
                     "node's own files to every node (an index copied while written is corrupt)",
                     "move the index and openclaw_home out of the share (best), or add them to .stignore")
    extra = f" ({'; '.join(problems)})" if problems else ""
    if not all(ign.ignored(r) for r in TMP_SAMPLES):
        return Check("syncthing ignores", WARN,
                     f"meshsync's temporary files ({TMP_PREFIX}*) not excluded by {source}{extra}: "
                     "Syncthing may copy one caught mid-write, or a crash's leftover, to the other nodes",
                     f"add the line {IGNORE_TMP} to .stignore in the share (on every node)")
    if problems:
        return Check("syncthing ignores", WARN, f"{source}: {'; '.join(problems)}", "fix the #include lines")
    return Check("syncthing ignores", PASS,
                 f"{source}: meshsync's temporary files excluded, none of the files it shares")


def _xml_folder(p: Path, root: Path) -> ET.Element | None:
    """The <folder> of config.xml at ``p`` whose path is ``root``, when readable."""
    cfg = _read_config_xml(p)
    want = os.path.realpath(root)
    for f in cfg.findall("folder") if cfg is not None else []:
        if os.path.realpath(os.path.expanduser(f.get("path", ""))) == want:
            return f
    return None


def _api_checks(s: Settings, marker: bool) -> tuple[list[Check], FolderState | None,
                                                    tuple[list[str], list[str]] | None]:
    """The folder's line (when the marker is missing) and its state through the API:
    (checks, the state if Syncthing told it, the ignore patterns if Syncthing told them)."""
    root = s.share
    ep, why = endpoint(s)
    if ep is None:
        return [Check("syncthing state", WARN, f"not checked: {why}",
                      "set syncthing.api_url and MESHSYNC_SYNCTHING__API_KEY (docs/configuration.md)")], None, None
    api = Api(ep)
    try:
        cfg = api.folder_config(root)
        if cfg is None:
            if not marker:
                return [_not_a_folder(root)], None, None
            return [Check("syncthing state", FAIL, f"Syncthing at {ep.url} syncs no folder at {root}",
                          "point share at the path of the folder Syncthing syncs (see its GUI), or "
                          "syncthing.api_url at this node's Syncthing")], None, None
        state = api.folder_state(cfg)
        lines = api.ignore_lines(state.id)
    except SyncthingError as exc:
        if not marker:
            return [_not_a_folder(root)], None, None
        return [Check("syncthing state", WARN, f"not checked: {exc}",
                      "check syncthing.api_url and the API key, and that Syncthing runs")], None, None
    out = []
    if not marker:
        # Syncthing stops a folder whose marker is gone rather than take it for empty
        # (meshsync does the same with .meshsync/, R5): the state line says so too.
        out.append(Check("syncthing folder", FAIL, f"Syncthing syncs {root} as folder {state.id}, but its "
                         f"{MARKER} marker is missing", "if a disk is not mounted there, mount it; restore "
                         f"{MARKER} (an empty folder) only if this really is the folder's data"))
    return out + [_state_check(state)], state, lines


def _not_a_folder(root: Path) -> Check:
    return Check("syncthing folder", WARN, f"syncthing.* is set, but {root} has no {MARKER}: it is not a "
                 "folder Syncthing syncs (or Syncthing has not started it yet)",
                 "point share at the Syncthing folder's path, or unset syncthing.*")


def doctor_checks(s: Settings) -> list[Check]:
    """``meshsync doctor``'s lines for a share kept by Syncthing; none for other shares,
    unless syncthing.* is set (then the API is asked whether it syncs the share)."""
    root = s.share
    marker = is_syncthing_folder(root)
    if not marker and not (s.syncthing.api_url or s.syncthing.api_key or s.syncthing.config_xml):
        return []
    out = []
    if marker:
        out.append(Check("syncthing folder", PASS, f"{root} is a Syncthing folder ({MARKER}): Syncthing "
                         "replicates it between the nodes, meshsync keeps it in step with this node's index "
                         "and cache"))
    checks, state, lines = _api_checks(s, marker)
    out += checks
    if not marker and state is None:
        return out
    if state is not None:
        out.append(_watcher_check(state.watcher, state.watcher_delay_s, state.rescan_s))
    else:
        xml = next((p for p in ([s.syncthing.config_xml] if s.syncthing.config_xml else config_candidates())
                    if p.is_file()), None)
        f = _xml_folder(xml, root) if xml else None
        if f is not None:
            out.append(_watcher_check(f.get("fsWatcherEnabled") == "true", float(f.get("fsWatcherDelayS") or 0),
                                      int(f.get("rescanIntervalS") or 0)))
    if lines is not None and state is not None:
        out.append(_ignores_check(s, lines[0], f"folder {state.id}'s ignore patterns", lines[1]))
    else:
        lines, problems = read_ignore_file(root)
        out.append(_ignores_check(s, lines, str(root / IGNORE_FILE), problems))
    return out
