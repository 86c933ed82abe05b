"""``meshsync status`` and each item's sync state (also shown by get, ls and skill get/ls).

Everything here reads the index (and, for status, checks the share's root): no pass
runs, so the answers are the same with and without a running daemon.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import orjson

from meshsync import config
from meshsync.cli import probes
from meshsync.cli.common import daemon_holder, dump_doc, other_user, when
from meshsync.cli.conflicts import as_json, row_json
from meshsync.cli.deletes import hold_json
from meshsync.exits import EXIT_OK
from meshsync.layout import ItemId
from meshsync.reconcile import FUTURE_MS
from meshsync.replicas.index import queries
from meshsync.replicas.index.store import UNUSABLE, Index, IndexError_
from meshsync.replicas.share.history import History
from meshsync.replicas.share.store import Share, ShareUnavailable

# --- item states ---------------------------------------------------------------------------

IN_SYNC, PENDING, CONFLICT, REFUSED, ERROR = "in sync", "pending", "conflict", "refused", "error"


def is_refusal(e: dict[str, Any]) -> bool:
    """An error row that records a refused export (R9), not a broken file or row."""
    # Older indexes recorded refusals with kind "index"; their reason says "refused".
    return e["kind"] == "refused" or (e["kind"] == "index" and "refused" in e["reason"])


class ItemStates:
    """Each item's sync state, from the index alone (no share access, so it also works
    while the share is unavailable):

    - refused:  the node may not export it (an error of kind "refused"): it stays local;
    - error:    its index row or its share file is invalid (an "index" or "file" error);
    - pending:  a local change not yet synced (an outbox row, or the row differs from
                the version last synced, meshsync_state.row_sig), also while its export
                fails and is retried (an "export" error: its reason is shown, R12);
    - conflict: the current version won a conflict; the beaten one is in
                `meshsync conflicts` (until the item changes again);
    - in sync:  otherwise.
    """

    def __init__(self, idx: Index, node_id: str):
        from meshsync.daemon.watch import item_of_rel

        self.outbox = queries.outbox_items(idx)
        self.synced = queries.synced_versions(idx)
        self.errors: dict[str, dict[str, Any]] = {}
        self.warnings: dict[str, dict[str, Any]] = {}
        self.file_errors: dict[ItemId, dict[str, Any]] = {}
        for e in idx.errors():
            if e["kind"] == "file":
                try:
                    it = item_of_rel(e["path"], node_id)
                except Exception:  # a path outside the layout: no item to blame
                    it = None
                if isinstance(it, ItemId):
                    self.file_errors.setdefault(it, e)
            elif e["kind"] == "warning":
                self.warnings.setdefault(e["path"], e)
            else:
                self.errors[e["path"]] = e
        self.won: dict[ItemId, list[tuple[int, int, str]]] = {}
        for w in queries.conflict_wins(idx):
            self.won.setdefault(w.item, []).append((w.id, w.winner_stamp, w.winner_node))

    def of(self, it: ItemId, row_sig: str | None) -> dict[str, Any]:
        """{"state": ..., plus "reason"/"hint", "conflict_id" or "warning" where they apply}."""
        st = self._state(it, row_sig)
        w = self.warnings.get(str(it))
        if w is not None:
            st["warning"] = w["reason"]
        return st

    def _state(self, it: ItemId, row_sig: str | None) -> dict[str, Any]:
        e = self.errors.get(f"index:{it}")
        if e is not None:
            state = PENDING if e["kind"] == "export" else REFUSED if is_refusal(e) else ERROR
            return {"state": state, "reason": e["reason"], "hint": e["hint"]}
        fe = self.file_errors.get(it)
        if fe is not None:
            return {"state": ERROR, "reason": f"{fe['path']}: {fe['reason']}", "hint": fe["hint"]}
        synced = self.synced.get(it)
        if it in self.outbox or synced is None or synced[0] != row_sig:
            return {"state": PENDING}
        for cid, wstamp, wnode in reversed(self.won.get(it, [])):
            if (wstamp, wnode) == synced[1:]:
                return {"state": CONFLICT, "conflict_id": str(cid)}  # a history ID (a string, docs/json.md)
        return {"state": IN_SYNC}


def row_sig(fn, *args: Any) -> str | None:
    """``fn(*args)`` (memory_row_sig or skill_row_sig), None for a row no pass could sync."""
    try:
        return fn(*args)
    except (AttributeError, TypeError):  # a foreign client stored something odd: not synced
        return None


def state_text(st: dict[str, Any]) -> str:
    if st["state"] == CONFLICT:
        return f"conflict (#{st['conflict_id']})"
    return st["state"]


def state_note(st: dict[str, Any]) -> str:
    """The state with its reason and warning, for the ``# from ...`` line at a terminal."""
    return (state_text(st) + (f": {st['reason']}" if "reason" in st else "")
            + (f" (warning: {st['warning']})" if "warning" in st else ""))


# --- status data -----------------------------------------------------------------------------


def status_data(s: config.Settings) -> dict[str, Any]:
    """Everything `meshsync status` shows, in the shape of `status --json`
    (docs/schemas/status.json); read from the index and the share only, so it works the
    same with and without a running daemon."""
    share = Share(s.share, max_file_bytes=s.limits.max_file_bytes)
    try:
        share.check()
        avail, reason = True, ""
    except ShareUnavailable as exc:
        avail, reason = False, str(exc)
    running, pid = daemon_holder(s.index)
    out: dict[str, Any] = {
        "node_id": s.node_id,
        "share": {"path": str(s.share), "available": avail, "reason": reason},
        "index": str(s.index),
        "cache": str(s.openclaw_home),
        "daemon": {"running": running, "pid": pid},
    }
    out["faults"] = faults = resource_faults(s, avail)
    if not s.index.exists():
        out["initialised"] = False
        if running:
            # R12: not "running" and "not created yet" side by side: the file was deleted
            # under the daemon, which stops by itself at its next check (exit 6).
            faults.append(_fault("index", f"the index {s.index} was deleted while the daemon (pid {pid}) runs "
                                 "on it; the daemon stops by itself (exit 6)",
                                 "once it has stopped: `meshsync init`, then start the daemon again (the index is "
                                 "rebuilt from the share; local writes not exported yet are lost with the file)"))
        return out
    try:
        if other_user(s):  # read-only: a write connection could leave this user's files there
            raise IndexError_(f"index {s.index} belongs to another user")
        idx = Index(s.index)
    except IndexError_ as exc:
        idx = queries.open_read_only(s.index)
        if idx is None or any(w in str(exc) for w in UNUSABLE):
            out["initialised"] = True
            out["index_error"] = str(exc)
            faults.append(_fault("index", str(exc), INDEX_HINT))
        if idx is None:
            return out
        out["index_read_only"] = True
    try:
        out["initialised"] = True
        _index_status(idx, out, daemon_runs=running, share_ok=avail)
        # R12: a damaged page that no count above happened to read is a fault all the
        # same (0.15 s at 100k items).
        damage = idx.quick_check() if "index_error" not in out else None
        if damage:
            out["index_error"] = f"the index {s.index} is damaged: database disk image is malformed ({damage})"
            faults.append(_fault("index", out["index_error"], INDEX_HINT))
    except queries.Error as exc:
        out["index_error"] = f"cannot read index {s.index}: {exc} (see `meshsync doctor`)"
        faults.append(_fault("index", out["index_error"], INDEX_HINT))
    finally:
        idx.close()
    if avail and "counts" in out:
        _history_status(s, share, out)
    if "index_error" not in out and not out.get("index_read_only") and queries.index_locked(s.index):
        faults.append(_fault("index", f"the index is locked by another program: its write lock has been held "
                             f"for more than {queries.LOCK_PROBE_S:g}s",
                             "find the program (`fuser INDEX`) and end its transaction; the daemon waits "
                             "index_busy_timeout, then retries every few seconds"))
    if "counts" in out:  # one counter per meaning: faults apart from the recorded problems
        out["counts"]["faults"] = len(faults)
    if not running:
        from meshsync.daemon.watch import choose_mode

        mode, why = choose_mode(s.watch.mode, s.share)
        out["watch_planned"] = {"mode": mode, "why": why}
    return out


def _history_status(s: config.Settings, share: Share, out: dict[str, Any]) -> None:
    """Conflicts from the share's history (R11): the same on every node.  (Without the
    share, ``_index_status`` left those this node saw itself.)"""
    from meshsync.cli.conflicts import readable

    hist = History(share, s.node_id)
    counts = hist.counts()
    out["counts"]["conflicts"] = counts["beaten"]
    out["counts"]["deleted_kept"] = counts["deleted"]
    out["conflicts"] = [as_json(r, with_value=False) for r in hist.list("beaten", readable(s), limit=20).records]


INDEX_HINT = ("see `meshsync doctor`; a damaged index is moved away and rebuilt from the share with "
              "`meshsync init` and `meshsync sync` (docs/troubleshooting.md)")


def _fault(what: str, reason: str, hint: str) -> dict[str, str]:
    return {"what": what, "reason": reason, "hint": hint}


def resource_faults(s: config.Settings, share_ok: bool) -> list[dict[str, str]]:
    """Faults of the node's resources as they are now (R12), whatever the last pass
    recorded: a full disk under the index, the cache or the share."""
    out = []
    places = [("index", s.index.parent, "the index's disk"), ("cache", s.openclaw_home, "the cache's disk")]
    if share_ok:
        places.append(("share", s.share, "the share"))
    for what, path, name in places:
        got = probes.free_bytes(path)
        if got is not None and got[0] < probes.LOW_SPACE:
            out.append(_fault(what, f"{name} is full ({got[0]} bytes free)",
                              f"free space on {name}; meshsync retries by itself every few seconds"))
    return out


def _index_status(idx: Index, out: dict[str, Any], daemon_runs: bool, share_ok: bool) -> None:
    """The index's part of ``status_data``: counts, last pass, problems and conflicts."""
    counts = idx.counts()
    last = idx.meta("last_sync")
    out["last_sync"] = float(last) if last else None
    lp = idx.meta("last_pass")
    out["last_pass"] = pass_json(orjson.loads(lp)) if lp else None
    out["watch"] = orjson.loads(idx.meta("daemon_watch") or "null") if daemon_runs else None
    if daemon_runs:
        pid = out["daemon"]["pid"]
        silence = probes.daemon_silence(str(pid) if pid else None, idx.meta("daemon_beat"))
        out["daemon"]["responding"] = silence is None
        if silence:
            out["faults"].append(_fault("daemon", silence, "continue it (kill -CONT PID) or restart it "
                                        "(systemctl restart meshsync); pending changes wait until then"))
    out["last_change"] = orjson.loads(idx.meta("last_change") or "null")
    # R5: the daemon may be locked out (permissions) where this user is not; its
    # own last check counts, or status says "available" while nothing syncs.
    if daemon_runs and share_ok and idx.meta("share_status") == "unavailable":
        out["share"].update(available=False, reason=f"the daemon reports: {idx.meta('share_reason')}")
    out["delete_hold"] = hold_json(queries.delete_hold(idx))  # R11: deletes held until confirmed
    out["node_clash"] = clash_json(queries.node_clash(idx))  # R11: another index writes under this node id
    # Every recorded problem, refused write (R9) and warning, each with its kind; a
    # refusal recorded by an older index (kind "index") is shown as kind "refused".
    errors = [dict(e, kind="refused") if is_refusal(e) else e for e in idx.errors()]
    out["errors"] = errors
    # Without the share, the conflicts this node saw itself (_history_status replaces them).
    out["conflicts"] = [row_json(c) for c in idx.conflicts(20)]
    _clock_faults(idx, out["faults"])
    # Rows held back as bad or refused are not pending; one whose export failed is (it
    # goes out by itself once the share takes it, R12).
    held = {e["path"] for e in errors if e["path"].startswith("index:") and e["kind"] != "export"}
    pending = {f"index:{it}" for it in queries.outbox_items(idx)}
    refused = sum(1 for e in errors if e["kind"] == "refused")
    warnings = sum(1 for e in errors if e["kind"] == "warning")
    # One counter per meaning: problems + refused + warnings == len(errors).
    out["counts"] = {
        "memory": counts["memory"], "skills": counts["skills"], "tombstones": counts["tombstones"],
        "pending": len(pending - held),  # items with a local change waiting for a pass
        "problems": len(errors) - refused - warnings, "refused": refused, "warnings": warnings,
        "conflicts": counts["conflicts"],
    }


def _clock_faults(idx: Index, faults: list[dict[str, str]]) -> None:
    """R12: this node's clock far ahead of the file server's (measured by the last pass),
    and items stamped in the future (by such a clock, before it was caught)."""
    ahead = int(idx.meta("clock_ahead") or 0)
    if ahead > 0:
        faults.append(_fault("clock", f"this node's clock is {ahead}s ahead of the file server's; its writes "
                             "are stamped with the file server's time meanwhile",
                             "run NTP (chrony or systemd-timesyncd) on this node"))
    future = queries.future_rows(idx, int(time.time()) - ahead + FUTURE_MS // 1000)
    if future:
        faults.append(_fault("clock", f"{len(future)} item(s) are stamped in the future, up to "
                             f"{(future[0].updated_at - time.time() + ahead) / 3600:.1f} h ahead (e.g. "
                             f"{future[0].item} by {future[0].node})",
                             "fix that node's clock, then run `meshsync repair-future-stamps`"))


def clash_json(c: dict[str, Any] | None) -> dict[str, Any] | None:
    """Another index writing under this node's id (engine/identity.py), as `status --json`
    shows it: its node file's index, host and pid, when it wrote it and when this node
    last saw it (Unix seconds)."""
    if c is None:
        return None
    return {"node_id": c["node_id"], "index": c.get("index"), "host": c.get("host"),
            "pid": c.get("pid"), "at": c.get("at"), "seen_at": c["seen_at"]}


def pass_json(d: dict[str, Any]) -> dict[str, Any]:
    """A pass's figures (PassStats.as_dict) as `sync --json` and `status --json` show
    them: ``skipped`` is every file or row skipped or refused in that pass (the pass's
    own "errors" count, exit 1 when not 0), named apart from status's ``problems``."""
    return {("skipped" if k == "errors" else k): v for k, v in d.items()}


# --- meshsync status ---------------------------------------------------------------------------


def cmd_status(s: config.Settings, a: argparse.Namespace) -> int:
    d = status_data(s)
    if a.json:
        print(dump_doc(d))
        return EXIT_OK
    _print_where(d)
    for f in d.get("faults", []):
        print(f"FAULT     {f['reason']}\n    -> {f['hint']}")
    if not d.get("initialised"):
        if not d["daemon"]["running"]:
            print("index not created yet: run `meshsync init`")
        return EXIT_OK
    if d.get("index_read_only"):
        print("index     opened read-only: this user cannot write it (see `meshsync doctor`)")
    if d.get("index_error") and "pending" not in d.get("counts", {}):
        return EXIT_OK  # the index could not be read through: the FAULT line says why
    _print_activity(d)
    _print_problems(d)
    _print_conflicts(d)
    return EXIT_OK


def _print_where(d: dict[str, Any]) -> None:
    """Node, share, index, cache, daemon and watch mode."""
    sh = d["share"]
    print(f"node      {d['node_id']}")
    print(f"share     {sh['path']}  " + ("available" if sh["available"] else f"UNAVAILABLE: {sh['reason']}"))
    print(f"index     {d['index']}")
    print(f"cache     {d['cache']}")
    dm = d["daemon"]
    print("daemon    " + (f"running (pid {dm['pid']})" + ("" if dm.get("responding", True) else " but not responding")
                          if dm["running"] else "not running: changes move only on `meshsync sync` (start `meshsync run`)"))
    if d.get("watch"):
        print(f"watch     {d['watch'].get('mode')} ({d['watch'].get('why', '')})")
    elif d.get("watch_planned"):
        print(f"watch     {d['watch_planned']['mode']} once the daemon runs ({d['watch_planned']['why']})")


def _print_activity(d: dict[str, Any]) -> None:
    """Counts, pending changes, the last pass and the last change applied."""
    c = d["counts"]
    print(f"items     {c['memory']} memory, {c['skills']} skills, {c['tombstones']} tombstones")
    print(f"pending   {c['pending']} local changes not yet synced"
          + ("" if c["pending"] == 0 or d["daemon"]["running"] else " (run `meshsync sync` or start the daemon)"))
    if d["last_sync"]:
        ago = time.time() - d["last_sync"]
        lp = d.get("last_pass") or {}
        took = f", took {lp['seconds']:.2f}s" if isinstance(lp.get("seconds"), int | float) else ""
        print(f"last sync {when(d['last_sync'])} ({_ago(ago)} ago{took})")
    else:
        print("last sync never")
    lc = d.get("last_change")
    if lc:
        print(f"last change applied {when(lc['at'])}: {', '.join(lc['items'][:3])}"
              + (" ..." if len(lc["items"]) > 3 else ""))


def _print_problems(d: dict[str, Any]) -> None:
    """A held mass delete, a node-id clash; problems, refused writes and warnings, at
    most 50 of each."""
    from meshsync.cli.deletes import FIX, describe

    clash = d.get("node_clash")
    if clash:
        from meshsync.engine import identity

        print(f"CLASH     {identity.describe(clash)}\n    -> {identity.FIX}")
    h = d.get("delete_hold")
    if h:
        print(f"HELD      {describe(h)}; nothing was deleted (`meshsync deletes`)\n    -> {FIX}")
    refused = [e for e in d["errors"] if e["kind"] == "refused"]
    errs = [e for e in d["errors"] if e["kind"] not in ("refused", "warning")]
    print(f"problems  {len(errs)}")
    _print_errors(errs, lambda p: p)
    print(f"refused   {len(refused)}" + (" local writes this node may not export (they stay local)" if refused else ""))
    _print_errors(refused, lambda p: p.removeprefix("index:"))
    warns = [e for e in d["errors"] if e["kind"] == "warning"]
    if warns:
        print(f"warnings  {len(warns)} (synced anyway)")
        _print_errors(warns, lambda p: p)


def _print_errors(errs: list[dict[str, Any]], name: Callable[[str], str]) -> None:
    """At most 50 error rows, each with its hint; ``name`` shows a row's path."""
    for e in errs[:50]:
        print(f"  {name(e['path'])}: {e['reason']}" + (f"\n    -> {e['hint']}" if e["hint"] else ""))
    if len(errs) > 50:
        print(f"  ... and {len(errs) - 50} more (meshsync status --json)")


def _print_conflicts(d: dict[str, Any]) -> None:
    c = d["counts"]
    print(f"conflicts {c['conflicts']}")
    for cf in d["conflicts"][:10]:
        print(f"  #{cf['id']} {cf['item']}: version of {cf['beaten']['node']} beaten by {cf['winner']['node']}")
    if c["conflicts"]:
        print("  (beaten versions: `meshsync conflicts`; restore one with `meshsync conflicts restore ID`)")
    if c.get("deleted_kept"):
        print(f"deleted   {c['deleted_kept']} deleted items kept in the history (`meshsync deleted`; "
              "`meshsync restore ID`)")


def _ago(sec: float) -> str:
    if sec < 120:
        return f"{max(sec, 0):.0f}s"
    if sec < 7200:
        return f"{sec / 60:.0f} min"
    if sec < 2 * 86400:
        return f"{sec / 3600:.1f} h"
    return f"{sec / 86400:.0f} days"
