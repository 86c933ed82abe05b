"""``meshsync doctor``: check a node's set-up, one line per check with a hint.

Every check returns pass, warn or fail; the exit code is 0 when all pass, 1 when some
warn, 2 when any fails.  Checks only read, except two probe files that are created and
removed again (share writable, clock skew) inside ``.meshsync/``.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from . import journal, layout
from .config import Settings
from .index import REQUIRED, SCHEMA_VERSION
from .share import Share, ShareUnavailable
from .watch import choose_mode

PASS, WARN, FAIL = "pass", "warn", "fail"
SKEW_WARN_S = 2.0
SKEW_FAIL_S = 60.0


@dataclass
class Check:
    name: str
    result: str
    detail: str
    hint: str = ""


def _share_checks(s: Settings) -> list[Check]:
    out: list[Check] = []
    share = Share(s.share, max_file_bytes=s.limits.max_file_bytes)
    try:
        share.check()
    except ShareUnavailable as exc:
        out.append(Check("share", FAIL, str(exc),
                         "mount the share (see docs/deployment.md), or run `meshsync init` for a new one"))
        return out
    out.append(Check("share", PASS, f"{s.share} is mounted and has its {layout.META}/ marker"))
    probe = s.share / layout.META / f".doctor-{s.node_id}-{os.getpid()}"
    try:
        t0 = time.time()
        probe.write_bytes(b"probe")
        t1 = time.time()
        mtime = probe.stat().st_mtime
        probe.unlink()
        out.append(Check("share writable", PASS, "a probe file was written and removed"))
        skew = mtime - (t0 + t1) / 2
        detail = f"file server clock is {skew:+.2f}s from this node's"
        if abs(skew) >= SKEW_FAIL_S:
            out.append(Check("clock skew (file server)", FAIL, detail,
                             "run NTP (chrony/systemd-timesyncd) on this node and on the NAS"))
        elif abs(skew) >= SKEW_WARN_S:
            out.append(Check("clock skew (file server)", WARN, detail,
                             "run NTP on both; meshsync tolerates minutes, but ordering gets coarser"))
        else:
            out.append(Check("clock skew (file server)", PASS, detail))
    except OSError as exc:
        out.append(Check("share writable", FAIL, f"cannot write in {s.share / layout.META}: {exc.strerror}",
                         "give the meshsync user write access to the share (share_files.group, mount options)"))
    out.extend(_node_skew(s))
    mode, why = choose_mode(s.watch.mode, s.share)
    out.append(Check("filesystem", PASS, f"watch mode {mode}: {why}"))
    if mode == "events":
        out.append(_inotify_check(s))
    return out


def _node_skew(s: Settings) -> list[Check]:
    """Each other node's clock against the file server's, from their journals' last line
    (the time the node wrote in it versus the journal file's mtime)."""
    out = []
    d = s.share / journal.DIR
    try:
        names = sorted(n for n in os.listdir(d) if n.endswith(".log"))
    except OSError:
        return out
    for n in names:
        p = d / n
        try:
            with open(p, "rb") as f:
                f.seek(max(0, p.stat().st_size - 65536))
                lines = f.read().splitlines()
            mtime = p.stat().st_mtime
            last = orjson.loads(lines[-1])
        except (OSError, IndexError, orjson.JSONDecodeError):
            continue
        skew = last["ms"] / 1000 - mtime
        node = last.get("node", n[:-4])
        detail = f"node {node}'s clock is {skew:+.1f}s from the file server's (last journal write)"
        res = FAIL if abs(skew) >= SKEW_FAIL_S else WARN if abs(skew) >= SKEW_WARN_S else PASS
        out.append(Check(f"clock skew ({node})", res, detail,
                         "run NTP on that node" if res != PASS else ""))
    return out


def _inotify_check(s: Settings) -> Check:
    try:
        limit = int(Path("/proc/sys/fs/inotify/max_user_watches").read_text())
    except (OSError, ValueError):
        return Check("inotify watches", WARN, "cannot read fs.inotify.max_user_watches")
    dirs = 0
    for _root, dnames, _f in os.walk(s.share):
        dirs += 1
        dnames[:] = [d for d in dnames if not d.startswith(".") or d == layout.META]
    detail = f"{dirs} directories to watch, limit {limit}"
    if dirs * 2 > limit:
        return Check("inotify watches", FAIL if dirs > limit else WARN, detail,
                     "raise it: sysctl fs.inotify.max_user_watches=524288 (and in /etc/sysctl.d/)")
    return Check("inotify watches", PASS, detail)


def _index_checks(s: Settings) -> list[Check]:
    if not s.index.exists():
        return [Check("index", FAIL, f"{s.index} does not exist", "run `meshsync init`")]
    try:
        db = sqlite3.connect(f"file:{s.index}?mode=ro", uri=True, timeout=10)
        try:
            qc = db.execute("PRAGMA quick_check").fetchall()
            have = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table','trigger')")}
            mode = db.execute("PRAGMA journal_mode").fetchone()[0]
            ver = db.execute("SELECT v FROM meshsync_meta WHERE k = 'schema'").fetchone() if "meshsync_meta" in have else None
        finally:
            db.close()
    except sqlite3.Error as exc:
        return [Check("index", FAIL, f"cannot read {s.index}: {exc}",
                      "restore it from a backup or move it away; `meshsync init` + `meshsync sync` rebuilds it from the share")]
    out = []
    if qc != [("ok",)]:
        out.append(Check("index integrity", FAIL, "PRAGMA quick_check: " + "; ".join(r[0] for r in qc[:3]),
                         "move the index away and rebuild it with `meshsync init` and `meshsync sync`"))
    else:
        out.append(Check("index integrity", PASS, "PRAGMA quick_check ok"))
    missing = sorted(REQUIRED - have)
    if missing:
        out.append(Check("index schema", FAIL, f"missing: {', '.join(missing)}",
                         "run any meshsync command once with write access to create them"))
    elif ver is None or ver[0] != SCHEMA_VERSION:
        out.append(Check("index schema", FAIL, f"schema version {ver[0] if ver else '?'}, this meshsync needs {SCHEMA_VERSION}",
                         "upgrade or downgrade meshsync to the version that made this index"))
    else:
        out.append(Check("index schema", PASS, f"schema {SCHEMA_VERSION}, journal mode {mode}"))
    return out


def _cache_check(s: Settings) -> Check:
    home = s.openclaw_home
    probe_dir = home if home.exists() else home.parent
    if not os.access(probe_dir, os.W_OK):
        return Check("cache", FAIL, f"{probe_dir} is not writable", "fix its ownership or set openclaw_home")
    return Check("cache", PASS, f"{home} is writable")


def _systemd_check() -> Check:
    if not shutil.which("systemctl") or not Path("/run/systemd/system").exists():
        return Check("systemd unit", PASS, "systemd is not running here: nothing to check")
    for args in (["systemctl", "is-active", "meshsync"], ["systemctl", "--user", "is-active", "meshsync"]):
        try:
            r = subprocess.run(args, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if r.stdout.strip() == "active":
            return Check("systemd unit", PASS, f"{' '.join(args[:-2])} unit meshsync is active")
    return Check("systemd unit", WARN, "no active meshsync unit",
                 "install systemd/meshsync.service (docs/deployment.md) and `systemctl enable --now meshsync`")


def run_checks(s: Settings) -> list[Check]:
    checks = [Check("configuration", PASS, f"valid (node {s.node_id})")]
    checks += _share_checks(s)
    checks += _index_checks(s)
    checks.append(_cache_check(s))
    checks.append(_systemd_check())
    return checks


def exit_code(checks: list[Check]) -> int:
    results = {c.result for c in checks}
    return 2 if FAIL in results else 1 if WARN in results else 0


def as_json(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]
