"""``meshsync doctor``: check a node's set-up, one line per check with a hint.

Every check returns pass, warn or fail; the exit code is 0 when all pass, 1 when some
warn, 2 when any fails.  Checks only read, except probe files (dot files, ignored by every
scanner) that are created and removed again: in the share's folders (writable, clock skew
against the file server), next to the index and in the cache.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import shutil
import stat
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

import orjson

from meshsync import layout
from meshsync.cli import doctor_syncthing, probes
from meshsync.cli.checks import FAIL, PASS, WARN, Check
from meshsync.cli.common import daemon_holder, dump_doc
from meshsync.config import Settings
from meshsync.daemon.watch import choose_mode
from meshsync.diagnose import os_hint
from meshsync.engine.clock import ServerClock
from meshsync.reconcile import FUTURE_MS
from meshsync.replicas.index import queries
from meshsync.replicas.index.store import REQUIRED, SCHEMA_VERSION
from meshsync.replicas.share import journal
from meshsync.replicas.share.store import Share, ShareUnavailable

SKEW_WARN_S = 2.0
SKEW_FAIL_S = 60.0


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
    clock = ServerClock(s.node_id)
    exc = clock.measure(share)
    if exc is not None:
        out.append(Check("share writable", FAIL, f"cannot write in {s.share / layout.META}: {exc.strerror}",
                         _write_hint(exc, "the share", "give the meshsync user write access to the share "
                                     "(share_files.group, mount options; docs/deployment.md)")))
    else:
        # meshsync writes in every scope and skill folder, not only in the marker.
        bad, first = [], None
        for rel in (layout.MEMORY, f"{layout.MEMORY}/mesh", f"{layout.MEMORY}/user", f"{layout.MEMORY}/node",
                    layout.SKILLS, f"{layout.META}/tombstones", journal.DIR, layout.HISTORY):
            d = s.share / rel
            if d.is_dir() and not d.is_symlink():
                err = probes.write_probe(d, layout.encode(s.node_id))
                if err:
                    bad.append(f"{rel}/ ({err.strerror})")
                    first = first or err
        if first is not None:
            out.append(Check("share writable", FAIL, f"cannot write in {', '.join(bad)}",
                             _write_hint(first, "the share", "give the meshsync user write access to the whole "
                                         "share, e.g. a common group and share_files.group (docs/deployment.md)")))
        else:
            out.append(Check("share writable", PASS, "probe files were written and removed"))
        assert clock.ahead_ms is not None  # measured: the probe was written
        skew = round(-clock.ahead_ms / 1000, 2) + 0.0  # + 0.0: no "-0.00"
        detail = f"file server clock is {skew:+.2f}s from this node's"
        if abs(skew) >= SKEW_FAIL_S:
            out.append(Check("clock skew (file server)", FAIL, detail,
                             "run NTP (chrony/systemd-timesyncd) on this node and on the NAS"))
        elif abs(skew) >= SKEW_WARN_S:
            out.append(Check("clock skew (file server)", WARN, detail,
                             "run NTP on both; meshsync tolerates minutes, but ordering gets coarser"))
        else:
            out.append(Check("clock skew (file server)", PASS, detail))
    out.append(_share_folders_check(s))
    out.append(_journal_check(s))
    out.extend(_node_skew(s))
    mode, why = choose_mode(s.watch.mode, s.share)
    out.append(Check("filesystem", PASS, f"watch mode {mode}: {why}"))
    if mode == "events":
        out.append(_inotify_check(s))
    return out


def _write_hint(exc: OSError, where: str, otherwise: str) -> str:
    """A full disk or a read-only mount said as such, not as a permission problem."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EPERM):
        return os_hint(exc, where)
    if exc.errno == errno.EROFS:
        return f"{where} is on a read-only mount: remount it read-write; {otherwise}"
    return otherwise


def _share_folders_check(s: Settings) -> Check:
    """Every folder of memory/ and skills/ can be listed: items below one that cannot are
    neither imported nor exported (R5, R12), however fine the top folders are."""
    bad: list[str] = []
    n = 0
    for top in (layout.MEMORY, layout.SKILLS):
        stack = [s.share / top]
        while stack:
            d = stack.pop()
            n += 1
            try:
                with os.scandir(d) as it:
                    stack.extend(Path(e.path) for e in it if e.is_dir(follow_symlinks=False)
                                 and not e.name.startswith("."))
            except FileNotFoundError:
                continue
            except OSError as exc:
                bad.append(f"{d.relative_to(s.share)}/ ({exc.strerror})")
    if bad:
        return Check("share folders", FAIL, f"cannot list {', '.join(bad[:5])}" + (" ..." if len(bad) > 5 else ""),
                     "give the meshsync user read and search access (chmod u+rx, or the share's group): "
                     "items below are left alone until then")
    return Check("share folders", PASS, f"all {n} folders of memory/ and skills/ can be listed")


def _journal_check(s: Settings) -> Check:
    """This node's journal (other nodes that poll learn of its writes from it) can be
    appended to: opened for writing, nothing written."""
    p = s.share / journal.path_of(s.node_id)
    if not p.exists():
        return Check("journal", PASS, f"{journal.path_of(s.node_id)} does not exist yet; the first export creates it")
    try:
        fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        os.close(fd)
    except OSError as exc:
        return Check("journal", FAIL, f"cannot write {journal.path_of(s.node_id)}: {exc.strerror}",
                     "nodes that poll see this node's writes only at their full rescan until it is fixed: "
                     + _write_hint(exc, "the share", "give the meshsync user write access to it"))
    return Check("journal", PASS, f"{journal.path_of(s.node_id)} can be written")


def _space_checks(s: Settings) -> list[Check]:
    """Free space where meshsync writes: a full disk stops exports, index writes or the
    cache (each retried until space is freed, R12)."""
    out = []
    for what, path in (("share", s.share), ("index", s.index.parent), ("cache", s.openclaw_home)):
        got = probes.free_bytes(path)
        name = f"free space ({what})"
        if got is None:
            out.append(Check(name, WARN, f"cannot read the free space of {path}"))
            continue
        free, size = got
        detail = f"{free / 1048576:.1f} MiB free of {size / 1048576:.1f} MiB at {probes.existing(path)}"
        hint = f"free space on the {what}'s disk; meshsync retries by itself"
        if free < probes.LOW_SPACE:
            out.append(Check(name, FAIL, detail, hint))
        elif free < 0.05 * size and free < 256 * 1048576:
            out.append(Check(name, WARN, detail, hint))
        else:
            out.append(Check(name, PASS, detail))
    return out


def _read_tail(p: Path, limit: int = 65536) -> bytes | None:
    """The last ``limit`` bytes of a regular file, never following a symlink nor
    blocking on a FIFO (the share is not trusted); None for anything else."""
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        return os.pread(fd, limit, max(0, st.st_size - limit))
    except OSError:
        return None
    finally:
        os.close(fd)


def _node_skew(s: Settings) -> list[Check]:
    """Each other node's clock against the file server's, from their journals' last line
    (the time the node wrote in it versus the journal file's mtime)."""
    out = []
    d = s.share / journal.DIR
    own = layout.encode(s.node_id) + ".log"
    try:
        names = sorted(n for n in os.listdir(d) if n.endswith(".log") and n != own)
    except OSError:
        return out
    now = time.time()
    for n in names:
        p = d / n
        try:
            mtime = os.lstat(p).st_mtime
        except OSError:
            continue
        data = _read_tail(p)
        lines = [ln for ln in (data or b"").splitlines() if ln.strip()]
        try:
            last = orjson.loads(lines[-1])
            ms = last["ms"]
            if not isinstance(ms, int | float) or isinstance(ms, bool):
                raise TypeError
            node = last.get("node")
            node = node if isinstance(node, str) else n[:-4]
        except (IndexError, KeyError, TypeError, AttributeError, orjson.JSONDecodeError):
            out.append(Check(f"clock skew ({n[:-4]})", WARN,
                             f"{p} has no readable last entry: this node's clock cannot be compared",
                             "that node's next write appends a good entry; delete the file if the node has left the mesh"))
            continue
        skew = ms / 1000 - mtime
        age = now - mtime
        when = f"{age / 86400:.0f} days ago" if age > 2 * 86400 else f"{age / 3600:.1f} h ago" \
            if age > 3600 else f"{max(age, 0):.0f}s ago"
        detail = f"node {node}'s clock is {skew:+.1f}s from the file server's (its last journal write, {when})"
        res = FAIL if abs(skew) >= SKEW_FAIL_S else WARN if abs(skew) >= SKEW_WARN_S else PASS
        out.append(Check(f"clock skew ({node})", res, detail,
                         "run NTP (chrony/systemd-timesyncd) on that node and on the file server"
                         if res != PASS else ""))
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
        h = queries.health(s.index)
    except queries.Error as exc:
        free = probes.free_bytes(s.index.parent)
        if free is not None and free[0] < probes.LOW_SPACE:
            # A full disk is not a damaged file: SQLite cannot even make its -shm file.
            return [Check("index", FAIL, f"cannot read {s.index}: {exc} (its disk is full: {free[0]} bytes free)",
                          "free space on the index's disk; the file itself is not damaged"), _index_writable(s)]
        return [Check("index", FAIL, f"cannot read {s.index}: {exc}",
                      "restore it from a backup or move it away; `meshsync init` + `meshsync sync` rebuilds it from the share")]
    qc, have, mode = h.quick_check, h.have, h.journal_mode
    out = []
    if qc != [("ok",)]:
        out.append(Check("index integrity", FAIL, "PRAGMA quick_check: " + "; ".join(r[0] for r in qc[:3]),
                         "move the index away and rebuild it with `meshsync init` and `meshsync sync`"))
    else:
        out.append(Check("index integrity", PASS, "PRAGMA quick_check ok"))
    out.append(_future_check(s))
    missing = sorted(REQUIRED - have)
    if missing:
        out.append(Check("index schema", FAIL, f"missing: {', '.join(missing)}",
                         "run any meshsync command once with write access to create them"))
    elif not h.has_schema or h.schema != SCHEMA_VERSION:
        out.append(Check("index schema", FAIL, f"schema version {h.schema if h.has_schema else '?'}, this meshsync needs {SCHEMA_VERSION}",
                         "upgrade or downgrade meshsync to the version that made this index"))
    else:
        out.append(Check("index schema", PASS, f"schema {SCHEMA_VERSION}, journal mode {mode}"))
    out.append(_index_writable(s))
    if out[-1].result == FAIL:
        return out
    if queries.index_locked(s.index):
        out.append(Check("index lock", FAIL, f"another program has held the index's write lock for more than "
                         f"{queries.LOCK_PROBE_S:g}s: the index is locked, meshsync's writes wait",
                         "find it (`fuser INDEX`) and end its transaction; the daemon waits index_busy_timeout, "
                         "then retries every few seconds"))
    else:
        out.append(Check("index lock", PASS, "no other program holds the index's write lock"))
    return out


def _index_writable(s: Settings) -> Check:
    """A real write next to the index (its -wal and -shm files live there too)."""
    exc = probes.write_probe(s.index.parent, "index")
    err = exc.strerror if exc is not None else None
    if err is None and not os.access(s.index, os.W_OK):
        err = "the index file is read-only"
    if err:
        hint = "give the meshsync user ownership of the index and its folder"
        return Check("index writable", FAIL, f"cannot write {s.index} and its -wal file in {s.index.parent}: {err}",
                     _write_hint(exc, "the index's folder", hint) if exc is not None else hint)
    return Check("index writable", PASS, f"{s.index} and its folder are writable")


def _future_check(s: Settings) -> Check:
    """Items stamped more than reconcile.FUTURE_MS ahead (by a node whose clock was far
    ahead, R12): they lose to every plausible write, and `repair-future-stamps` re-stamps
    them."""
    idx = queries.open_read_only(s.index)
    if idx is None:
        return Check("future stamps", WARN, f"cannot read {s.index}")
    try:
        ahead = int(idx.meta("clock_ahead") or 0)
        rows = queries.future_rows(idx, int(time.time()) - ahead + FUTURE_MS // 1000)
    except queries.Error as exc:
        return Check("future stamps", WARN, f"cannot read {s.index}: {exc}")
    finally:
        idx.close()
    if not rows:
        return Check("future stamps", PASS, "no item is stamped in the future")
    top = rows[0]
    return Check("future stamps", WARN, f"{len(rows)} item(s) stamped in the future, up to "
                 f"{(top.updated_at - time.time() + ahead) / 3600:.1f} h ahead (e.g. {top.item} by {top.node})",
                 "fix the clock of the node named, then `meshsync repair-future-stamps` re-stamps them at the file "
                 "server's time (a later write of any node wins over them meanwhile)")


def _index_state_checks(s: Settings) -> list[Check]:
    """What the index records about this node (R11): the node id it was made for, another
    index writing under the same node id, a mass delete held."""
    from meshsync.cli.deletes import FIX, describe
    from meshsync.engine import identity

    idx = queries.open_read_only(s.index) if s.index.exists() else None
    if idx is None:
        return []
    try:
        owner = idx.meta("node_id")
        h = queries.delete_hold(idx)
        clash = queries.node_clash(idx)
    except queries.Error:
        return []
    finally:
        idx.close()
    out = []
    if owner is not None and owner != s.node_id:
        out.append(Check("index owner", FAIL, f"{s.index} was made for node {owner!r}, not {s.node_id!r}",
                         f"run this node as {owner!r} (MESHSYNC_NODE_ID={owner}), or give node {s.node_id!r} "
                         "its own index (MESHSYNC_INDEX) and `meshsync init`"))
    else:
        out.append(Check("index owner", PASS, f"{s.index} serves node {s.node_id}"))
    if clash:
        out.append(Check("node id", FAIL, identity.describe(clash), identity.FIX))
    else:
        out.append(Check("node id", PASS, f"no other index writes under node id {s.node_id} on the share"))
    if h:
        out.append(Check("deletes held", FAIL, describe(h) + "; nothing was deleted", FIX))
    else:
        out.append(Check("deletes held", PASS, "no mass delete is waiting for a decision"))
    return out


def _probe_dir(d: Path, tag: str) -> str | None:
    """Create and remove a probe file in ``d``; the error text, or None when it worked.
    A real write, not os.access(): root passes access() on any mode bits, and only a
    write tells a read-only mount apart."""
    probe = d / f".meshsync-doctor-{tag}-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _existing_ancestor(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _cache_check(s: Settings) -> Check:
    home = s.openclaw_home
    if not home.exists():
        anc = _existing_ancestor(home)
        err = _probe_dir(anc, "cache") if anc.is_dir() else f"{anc} is not a folder"
        if err:
            return Check("cache", FAIL, f"{home} does not exist and cannot be created in {anc}: {err}",
                         "create it for the meshsync user, or set openclaw_home")
        return Check("cache", PASS, f"{home} does not exist yet; the first sync creates it")
    dirs = [home] + [d for d in (home / "mesh", home / "mesh" / "skills") if d.is_dir()]
    for d in dirs:
        exc = probes.write_probe(d, "cache")
        if exc is not None:
            return Check("cache", FAIL, f"cannot write in {d}: {exc.strerror}",
                         _write_hint(exc, "the cache", "give the meshsync user write access to it (chown -R), "
                                     "or set openclaw_home"))
    f = home / "mesh-memory.json"
    kind = probes.immutable(f) if f.exists() else None
    if kind:
        return Check("cache", FAIL, f"{f} is {kind}: meshsync cannot replace it",
                     f"remove the attribute (`chattr -{'i' if kind == 'immutable' else 'a'} {f}`); meshsync retries "
                     "by itself")
    return Check("cache", PASS, f"{home} is writable" + ("" if f.exists() else " (no mesh-memory.json yet)"))


def _daemon_check(s: Settings) -> Check:
    from meshsync.lock import IndexLock

    try:
        pid = IndexLock(s.index).holder()
    except OSError as exc:
        return Check("daemon", WARN, f"cannot read {s.index}.lock: {exc.strerror}")
    if pid:
        idx = queries.open_read_only(s.index) if s.index.exists() else None
        try:
            beat = idx.meta("daemon_beat") if idx is not None else None
        except queries.Error:
            beat = None
        finally:
            if idx is not None:
                idx.close()
        silence = probes.daemon_silence(pid, beat)
        if silence:
            return Check("daemon", FAIL, f"{silence}; it holds the index's lock, so no other meshsync can sync",
                         f"continue it (kill -CONT {pid}) or restart it (systemctl restart meshsync)")
        return Check("daemon", PASS, f"a meshsync daemon (pid {pid}) keeps this node in sync")
    return Check("daemon", WARN, "no meshsync daemon runs for this index: changes move only on `meshsync sync`",
                 "start it: `systemctl enable --now meshsync` (docs/deployment.md), or `meshsync run`")


def unit_of_cgroup(text: str) -> tuple[str, str] | None:
    """("system" or "user", unit name) of the service a process runs in, from its
    /proc/PID/cgroup (cgroup v2's ``0::`` line, or v1's ``name=systemd`` one); None
    outside a service (a login session's scope, a container)."""
    for line in text.splitlines():
        _, ctrl, path = (line.split(":", 2) + ["", ""])[:3]
        if ctrl not in ("", "name=systemd"):
            continue
        parts = [p for p in path.split("/") if p]
        for i in range(len(parts) - 1, -1, -1):
            if parts[i].endswith(".service"):
                user = any(re.fullmatch(r"user@\d+\.service", p) for p in parts[:i])
                return ("user" if user else "system"), parts[i]
        return None
    return None


def _systemctl_active() -> list[str]:
    """Active meshsync units, the template's instances included: "meshsync.service",
    "meshsync@openclaw.service", "user unit meshsync.service"..."""
    found = []
    for scope in ([], ["--user"]):
        try:
            r = subprocess.run(["systemctl", *scope, "list-units", "--type=service", "--state=active",
                                "--plain", "--no-legend", "--no-pager", "meshsync.service", "meshsync@*.service"],
                               capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            continue
        for line in r.stdout.splitlines():
            if line.split():
                found.append(("user unit " if scope else "") + line.split()[0])
    return found


def _systemd_check(s: Settings) -> Check:
    if not shutil.which("systemctl") or not Path("/run/systemd/system").exists():
        return Check("systemd unit", PASS, "systemd is not running here: nothing to check")
    running, pid = daemon_holder(s.index)
    try:
        cgroup = Path(f"/proc/{pid}/cgroup").read_text() if pid else None
    except OSError:  # gone meanwhile, or hidden (hidepid)
        cgroup = None
    if cgroup is not None:
        unit = unit_of_cgroup(cgroup)
        if unit is not None:  # the template's instances too (meshsync@USER.service)
            return Check("systemd unit", PASS, f"{unit[0]} unit {unit[1]} runs this node's daemon (pid {pid})")
        return Check("systemd unit", WARN, f"the daemon (pid {pid}) runs outside a systemd service (started by hand?)",
                     "run it under systemd so that it starts at boot and restarts on failure (docs/deployment.md)")
    active = _systemctl_active()
    if active:  # no daemon holds this index (yet): a unit runs, maybe for another configuration
        return Check("systemd unit", PASS if running else WARN, f"active: {', '.join(active)}"
                     + ("" if running else f"; none holds this node's index {s.index} (yet)"),
                     "" if running else "check that the unit runs with this configuration (-c / MESHSYNC_CONFIG)")
    return Check("systemd unit", WARN, "no active meshsync unit",
                 "install systemd/meshsync.service (docs/deployment.md) and `systemctl enable --now meshsync`, "
                 "or the template: `systemctl enable --now meshsync@USER`")


def run_checks(s: Settings) -> list[Check]:
    checks = [Check("configuration", PASS, f"valid (node {s.node_id})")]
    checks += _share_checks(s)
    checks += doctor_syncthing.doctor_checks(s)  # a Syncthing folder's state, when the share is one
    checks += _index_checks(s)
    checks += _index_state_checks(s)
    checks.append(_cache_check(s))
    checks += _space_checks(s)
    checks.append(_daemon_check(s))
    checks.append(_systemd_check(s))
    return checks


def exit_code(checks: list[Check]) -> int:
    results = {c.result for c in checks}
    return 2 if FAIL in results else 1 if WARN in results else 0


def as_json(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]


# --- the command ------------------------------------------------------------------------------


def cmd_doctor(s: Settings, a: argparse.Namespace) -> int:
    return print_checks(run_checks(s), a.json)


def print_checks(checks: list[Check], json_out: bool) -> int:
    """Print the checks (one line each, with its hint) or their JSON; return the exit code."""
    code = exit_code(checks)
    if json_out:
        print(dump_doc({"result": ["ok", "warnings", "failures"][code], "checks": as_json(checks)}))
        return code
    for c in checks:
        print(f"{c.result.upper():4}  {c.name}: {c.detail}" + (f"\n      -> {c.hint}" if c.hint else ""))
    print(["all checks passed", "some checks gave warnings", "some checks failed"][code])
    return code
