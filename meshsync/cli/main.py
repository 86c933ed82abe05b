"""The ``meshsync`` command line.

Exit codes (also in ``meshsync --help``):
  0  done
  1  done, but some files or rows were skipped (see ``meshsync status``)
  2  bad arguments or configuration; nothing was changed
  3  the share is unavailable (not mounted, no marker, unreadable); nothing was changed
  4  the item does not exist
  5  another meshsync process (the daemon) holds the index
"""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from meshsync import __version__, config, formats, layout, logs
from meshsync.layout import MEM, ItemId
from meshsync.lock import IndexLock, Locked
from meshsync.replicas.index.store import Index, IndexError_, memory_row_sig, skill_row_sig
from meshsync.replicas.share.store import Share, ShareUnavailable

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_NOT_FOUND, EXIT_BUSY = range(6)

log = logging.getLogger("meshsync")

EPILOG = """exit codes:
  0  done
  1  done, but some files or rows were skipped (see `meshsync status`)
  2  bad arguments or configuration; nothing was changed
  3  the share is unavailable (not mounted, no marker, unreadable); nothing was changed
  4  the item does not exist
  5  another meshsync process (the daemon) holds the index

configuration: -c FILE or $MESHSYNC_CONFIG (YAML), and MESHSYNC_* variables,
e.g. MESHSYNC_SHARE, MESHSYNC_NODE_ID, MESHSYNC_WATCH__POLL_INTERVAL.
"""


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


def _dump(obj: Any) -> str:
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()


def _parse_value(text: str) -> Any:
    try:
        return formats.loads(text)
    except formats.FormatError as exc:
        raise CliError(f"VALUE is not valid JSON ({exc}); nothing was changed.\n"
                       "  Strings need quotes inside the shell quotes, e.g. meshsync put mesh greeting '\"hello\"'") from None


def _scope(scope: str) -> str:
    if not layout.valid_scope(scope):
        raise CliError(f"scope {scope!r} is not one of: mesh, node, user:<id>")
    return scope


def _node(settings: config.Settings):
    from meshsync.engine.node import Node

    try:
        return Node(settings)
    except IndexError_ as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def _sync_after_write(settings: config.Settings, items: list[ItemId]) -> str:
    """Export a CLI write now when no daemon runs; otherwise the daemon picks it up."""
    lock = IndexLock(settings.index)
    try:
        lock.acquire()
    except Locked:
        return "the running daemon will export it"
    try:
        node = _node(settings)
        try:
            node.sync(items)
            if {f"index:{it}" for it in items} & {e["path"] for e in node.index.errors()}:
                return "kept in the index; not exported (see `meshsync status`)"
            return "exported to the share"
        except ShareUnavailable as exc:
            node.record_unavailable(str(exc))
            return f"kept in the index; not exported: {exc}"
        finally:
            node.close()
    finally:
        lock.release()


# --- item states ---------------------------------------------------------------------------

IN_SYNC, PENDING, CONFLICT, REFUSED, ERROR = "in sync", "pending", "conflict", "refused", "error"


def _is_refusal(e: dict[str, Any]) -> bool:
    # Older indexes recorded refusals with kind "index"; their reason says "refused".
    return e["kind"] == "refused" or (e["kind"] == "index" and "refused" in e["reason"])


class ItemStates:
    """Each item's sync state, from the index alone (no share access, so it also works
    while the share is unavailable):

    - refused:  the node may not export it (an error of kind "refused"): it stays local;
    - error:    its index row or its share file is invalid (an "index" or "file" error);
    - pending:  a local change not yet synced (an outbox row, or the row differs from
                the version last synced, meshsync_state.row_sig);
    - conflict: the current version won a conflict; the beaten one is in
                `meshsync conflicts` (until the item changes again);
    - in sync:  otherwise.
    """

    def __init__(self, idx: Index, node_id: str):
        from meshsync.daemon.watch import item_of_rel

        db = idx.db
        self.outbox = {ItemId(k, s, key) for k, s, key in
                       db.execute("SELECT DISTINCT kind, scope, key FROM meshsync_outbox")}
        self.synced: dict[ItemId, tuple[str | None, int, str]] = {
            ItemId(k, s, key): (sig, stamp, node) for k, s, key, sig, stamp, node in
            db.execute("SELECT kind, scope, key, row_sig, stamp, node FROM meshsync_state WHERE deleted = 0")}
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
        for cid, k, s, key, wstamp, wnode in db.execute(
                "SELECT id, kind, scope, key, winner_stamp, winner_node FROM meshsync_conflicts ORDER BY id"):
            self.won.setdefault(ItemId(k, s, key), []).append((cid, wstamp, wnode))

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
            return {"state": REFUSED if _is_refusal(e) else ERROR, "reason": e["reason"], "hint": e["hint"]}
        fe = self.file_errors.get(it)
        if fe is not None:
            return {"state": ERROR, "reason": f"{fe['path']}: {fe['reason']}", "hint": fe["hint"]}
        synced = self.synced.get(it)
        if it in self.outbox or synced is None or synced[0] != row_sig:
            return {"state": PENDING}
        for cid, wstamp, wnode in reversed(self.won.get(it, [])):
            if (wstamp, wnode) == synced[1:]:
                return {"state": CONFLICT, "conflict_id": cid}
        return {"state": IN_SYNC}


def _row_sig(fn, *args: Any) -> str | None:
    try:
        return fn(*args)
    except (AttributeError, TypeError):  # a foreign client stored something odd: not synced
        return None


def _when(ts: Any) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    except (TypeError, ValueError, OverflowError, OSError):
        return repr(ts)


def _state_text(st: dict[str, Any]) -> str:
    if st["state"] == CONFLICT:
        return f"conflict (#{st['conflict_id']})"
    return st["state"]


# --- commands ------------------------------------------------------------------------------


def cmd_init(s: config.Settings, a: argparse.Namespace) -> int:
    share = Share(s.share, max_file_bytes=s.limits.max_file_bytes)
    root = s.share
    if root.exists() and not (root / layout.META).is_dir():
        entries = [e for e in os.listdir(root) if not e.startswith(".")] if root.is_dir() else ["?"]
        if entries and not a.force:
            raise CliError(
                f"{root} already holds files ({', '.join(sorted(entries)[:5])}) but no {layout.META}/ marker.\n"
                "  If the NAS is not mounted, mount it first: initialising the mount point would hide the real share.\n"
                "  If this really is a new share, run `meshsync init --force`.", EXIT_UNAVAILABLE)
    try:
        root.mkdir(parents=True, exist_ok=True)
        share.initialise()
    except OSError as exc:
        raise CliError(f"cannot create the share layout in {root}: {exc.strerror}", EXIT_UNAVAILABLE) from None
    try:
        Index(s.index).close()
    except IndexError_ as exc:
        raise CliError(str(exc)) from None
    print(f"share ready: {root}\nindex ready: {s.index}\nnode id: {s.node_id}")
    return EXIT_OK


def cmd_sync(s: config.Settings, a: argparse.Namespace) -> int:
    lock = IndexLock(s.index)
    try:
        lock.acquire()
    except Locked as exc:
        raise CliError(f"a meshsync daemon (pid {exc.pid}) is running on {s.index}; it keeps the node "
                       "in sync already (see `meshsync status`)", EXIT_BUSY) from None
    try:
        node = _node(s)
        if sys.stderr.isatty() and not a.json:
            node.progress = logs.Progress()
        try:
            stats = node.sync(full_index=a.full)
        except ShareUnavailable as exc:
            node.record_unavailable(str(exc))
            if a.json:
                print(_dump({"ok": False, "share": "unavailable", "reason": str(exc)}))
            print(f"meshsync: share unavailable: {exc}\n  nothing was changed in the index or the cache.",
                  file=sys.stderr)
            return EXIT_UNAVAILABLE
        finally:
            if node.progress is not None:
                node.progress.done()
            node.close()
    finally:
        lock.release()
    if a.json:
        print(_dump({"ok": stats.errors == 0, **stats.as_dict()}))
    else:
        print(f"synced in {stats.seconds:.2f}s: {stats.scanned} items scanned, {stats.read} read, "
              f"{stats.to_share} written to the share, {stats.to_index} to the index, "
              f"{stats.deleted} deleted, {stats.conflicts} conflicts, {stats.errors} problems"
              + (", cache rewritten" if stats.cache_written else ""))
        if stats.errors:
            print("  some files or rows were skipped: see `meshsync status`", file=sys.stderr)
    return EXIT_PROBLEMS if stats.errors else EXIT_OK


def status_data(s: config.Settings) -> dict[str, Any]:
    """Everything `meshsync status` shows; read from the index and the share only, so it
    works the same with and without a running daemon."""
    share = Share(s.share, max_file_bytes=s.limits.max_file_bytes)
    try:
        share.check()
        avail, reason = True, ""
    except ShareUnavailable as exc:
        avail, reason = False, str(exc)
    holder = IndexLock(s.index).holder()
    out: dict[str, Any] = {
        "node_id": s.node_id,
        "share": {"path": str(s.share), "available": avail, "reason": reason},
        "index": str(s.index),
        "cache": str(s.openclaw_home),
        "daemon": {"running": holder is not None, "pid": holder},
    }
    if not s.index.exists():
        out["initialised"] = False
        return out
    try:
        idx = Index(s.index)
    except IndexError_ as exc:
        idx = _read_only_index(s.index)
        if idx is None:
            out["initialised"] = True
            out["index_error"] = str(exc)
            return out
        out["index_read_only"] = True
    try:
        out["initialised"] = True
        out["counts"] = idx.counts()
        last = idx.meta("last_sync")
        out["last_sync"] = float(last) if last else None
        lp = idx.meta("last_pass")
        out["last_pass"] = orjson.loads(lp) if lp else None
        out["watch"] = orjson.loads(idx.meta("daemon_watch") or "null") if holder else None
        out["last_change"] = orjson.loads(idx.meta("last_change") or "null")
        # R5: the daemon may be locked out (permissions) where this user is not; its
        # own last check counts, or status says "available" while nothing syncs.
        if holder and avail and idx.meta("share_status") == "unavailable":
            out["share"].update(available=False, reason=f"the daemon reports: {idx.meta('share_reason')}")
        out["errors"] = idx.errors()
        out["conflicts"] = idx.conflicts(20)
        for c in out["conflicts"]:
            c.pop("loser_value", None)
        # Refused writes (R9): local changes this node may not export; they stay local.
        out["refused"] = [e for e in out["errors"] if _is_refusal(e)]
        # Warnings (e.g. a SKILL.md OpenClaw may not load): synced anyway, shown apart.
        out["warnings"] = [e for e in out["errors"] if e["kind"] == "warning"]
        held = {e["path"] for e in out["errors"] if e["path"].startswith("index:")}
        pending = {f"index:{ItemId(k, sc, key)}" for k, sc, key in
                   idx.db.execute("SELECT DISTINCT kind, scope, key FROM meshsync_outbox")}
        out["counts"]["pending"] = len(pending - held)  # local changes waiting for a pass
        out["counts"]["refused"] = len(out["refused"])
        out["counts"]["warnings"] = len(out["warnings"])
        out["counts"]["problems"] = len(out["errors"]) - len(out["refused"]) - len(out["warnings"])
    except sqlite3.Error as exc:
        out["index_error"] = f"cannot read index {s.index}: {exc} (see `meshsync doctor`)"
    finally:
        idx.close()
    if not holder:
        from meshsync.daemon.watch import choose_mode

        mode, why = choose_mode(s.watch.mode, s.share)
        out["watch_planned"] = {"mode": mode, "why": why}
    return out


def _read_only_index(path: Path) -> Index | None:
    """The index opened for reading only, for a user (or a mount) that may not write it:
    read-only first, then immutable (a WAL database on a read-only file system cannot be
    opened otherwise; nobody can be writing it there)."""
    for uri in (f"file:{path}?mode=ro", f"file:{path}?immutable=1"):
        try:
            db = sqlite3.connect(uri, uri=True, timeout=10)
            db.execute("SELECT count(*) FROM meshsync_meta").fetchone()
        except sqlite3.Error:
            continue
        idx = Index.__new__(Index)  # the query methods only need .db
        idx.path, idx.db = Path(path), db
        return idx
    return None


def cmd_status(s: config.Settings, a: argparse.Namespace) -> int:
    d = status_data(s)
    if a.json:
        print(_dump(d))
        return EXIT_OK
    sh = d["share"]
    print(f"node      {d['node_id']}")
    print(f"share     {sh['path']}  " + ("available" if sh["available"] else f"UNAVAILABLE: {sh['reason']}"))
    print(f"index     {d['index']}")
    print(f"cache     {d['cache']}")
    dm = d["daemon"]
    print("daemon    " + (f"running (pid {dm['pid']})" if dm["running"]
                          else "not running: changes move only on `meshsync sync` (start `meshsync run`)"))
    if d.get("watch"):
        print(f"watch     {d['watch'].get('mode')} ({d['watch'].get('why', '')})")
    elif d.get("watch_planned"):
        print(f"watch     {d['watch_planned']['mode']} once the daemon runs ({d['watch_planned']['why']})")
    if not d.get("initialised"):
        print("index not created yet: run `meshsync init`")
        return EXIT_OK
    if d.get("index_read_only"):
        print("index     opened read-only: this user cannot write it (see `meshsync doctor`)")
    if d.get("index_error"):
        print(f"INDEX     {d['index_error']}")
        if "counts" not in d:
            return EXIT_OK
    c = d["counts"]
    print(f"items     {c['memory']} memory, {c['skills']} skills, {c['tombstones']} tombstones")
    print(f"pending   {c['pending']} local changes not yet synced"
          + ("" if c["pending"] == 0 or dm["running"] else " (run `meshsync sync` or start the daemon)"))
    if d["last_sync"]:
        ago = time.time() - d["last_sync"]
        lp = d.get("last_pass") or {}
        took = f", took {lp['seconds']:.2f}s" if isinstance(lp.get("seconds"), int | float) else ""
        print(f"last sync {_when(d['last_sync'])} ({_ago(ago)} ago{took})")
    else:
        print("last sync never")
    lc = d.get("last_change")
    if lc:
        print(f"last change applied {_when(lc['at'])}: {', '.join(lc['items'][:3])}"
              + (" ..." if len(lc["items"]) > 3 else ""))
    refused = d["refused"]
    errs = [e for e in d["errors"] if not _is_refusal(e) and e["kind"] != "warning"]
    print(f"problems  {len(errs)}")
    for e in errs[:50]:
        print(f"  {e['path']}: {e['reason']}" + (f"\n    -> {e['hint']}" if e["hint"] else ""))
    if len(errs) > 50:
        print(f"  ... and {len(errs) - 50} more (meshsync status --json)")
    print(f"refused   {len(refused)}" + (" local writes this node may not export (they stay local)" if refused else ""))
    for e in refused[:50]:
        print(f"  {e['path'].removeprefix('index:')}: {e['reason']}" + (f"\n    -> {e['hint']}" if e["hint"] else ""))
    if len(refused) > 50:
        print(f"  ... and {len(refused) - 50} more (meshsync status --json)")
    warns = d.get("warnings", [])
    if warns:
        print(f"warnings  {len(warns)} (synced anyway)")
        for e in warns[:50]:
            print(f"  {e['path']}: {e['reason']}" + (f"\n    -> {e['hint']}" if e["hint"] else ""))
        if len(warns) > 50:
            print(f"  ... and {len(warns) - 50} more (meshsync status --json)")
    print(f"conflicts {c['conflicts']}")
    for cf in d["conflicts"][:10]:
        item = f"{cf['scope']}:{cf['key']}" if cf["kind"] == MEM else f"skill:{cf['key']}"
        print(f"  #{cf['id']} {item}: version of {cf['loser_node']} beaten by {cf['winner_node']}")
    if c["conflicts"]:
        print("  (beaten versions: `meshsync conflicts`; restore one with `meshsync conflicts restore ID`)")
    return EXIT_OK


def _ago(sec: float) -> str:
    if sec < 120:
        return f"{max(sec, 0):.0f}s"
    if sec < 7200:
        return f"{sec / 60:.0f} min"
    if sec < 2 * 86400:
        return f"{sec / 3600:.1f} h"
    return f"{sec / 86400:.0f} days"


def _open_index(s: config.Settings) -> Index:
    try:
        return Index(s.index, create=False)
    except IndexError_ as exc:
        raise CliError(str(exc)) from None


def cmd_get(s: config.Settings, a: argparse.Namespace) -> int:
    idx = _open_index(s)
    try:
        r = idx.db.execute("SELECT value, node_id, updated_at FROM mesh_memory WHERE scope = ? AND key = ?",
                           (a.scope, a.key)).fetchone()
        st = ItemStates(idx, s.node_id).of(layout.memory_id(a.scope, a.key), _row_sig(memory_row_sig, *r)) \
            if r else None
    finally:
        idx.close()
    if r is None:
        print(f"meshsync: no item {a.scope}:{a.key}", file=sys.stderr)
        return EXIT_NOT_FOUND
    if a.json:
        value = orjson.Fragment(r[0]) if isinstance(r[0], str) and r[0] else r[0]
        print(_dump({"scope": a.scope, "key": a.key, "value": value, "node_id": r[1],
                     "updated_at": r[2], **st}))
    else:
        print(_dump(orjson.Fragment(r[0])) if r[0] else r[0])
        if sys.stdout.isatty():  # for a person, where it came from; a script gets the value only
            print(f"# from {r[1]} at {_when(r[2])}, {_state_text(st)}"
                  + (f": {st['reason']}" if "reason" in st else "")
                  + (f" (warning: {st['warning']})" if "warning" in st else ""))
    return EXIT_OK


def cmd_put(s: config.Settings, a: argparse.Namespace) -> int:
    scope = _scope(a.scope)
    value = _parse_value(a.value)
    if not s.may_write(scope):
        raise CliError(f"this node may not write scope {scope!r} (scopes.write = {s.scopes.write}); nothing was changed")
    node = _node(s)
    try:
        node.put_memory(scope, a.key, value)
    finally:
        node.close()
    print(f"stored {scope}:{a.key}; {_sync_after_write(s, [layout.memory_id(scope, a.key)])}")
    return EXIT_OK


def cmd_rm(s: config.Settings, a: argparse.Namespace) -> int:
    scope = _scope(a.scope)
    if not s.may_write(scope):
        raise CliError(f"this node may not write scope {scope!r} (scopes.write = {s.scopes.write}); nothing was changed")
    node = _node(s)
    try:
        found = node.delete_item(layout.memory_id(a.scope, a.key))
    finally:
        node.close()
    if not found:
        print(f"meshsync: no item {a.scope}:{a.key}", file=sys.stderr)
        return EXIT_NOT_FOUND
    print(f"deleted {a.scope}:{a.key}; {_sync_after_write(s, [layout.memory_id(a.scope, a.key)])}")
    return EXIT_OK


def cmd_ls(s: config.Settings, a: argparse.Namespace) -> int:
    idx = _open_index(s)
    try:
        q = "SELECT scope, key, node_id, updated_at, length(value), value FROM mesh_memory"
        if a.scope:
            rows = idx.db.execute(q + " WHERE scope = ? ORDER BY scope, key", (a.scope,)).fetchall()
        else:
            rows = idx.db.execute(q + " ORDER BY scope, key").fetchall()
        states = ItemStates(idx, s.node_id)
        st = [states.of(layout.memory_id(r[0], r[1]), _row_sig(memory_row_sig, r[5], r[2], r[3])) for r in rows]
    finally:
        idx.close()
    if a.json:
        print(_dump([{"scope": r[0], "key": r[1], "node_id": r[2], "updated_at": r[3], "bytes": r[4], **x}
                     for r, x in zip(rows, st, strict=True)]))
    else:
        for r, x in zip(rows, st, strict=True):
            print(f"{r[0]}\t{r[1]}\t{r[2]}\t{_when(r[3])}\t{_state_text(x)}")
    return EXIT_OK


def cmd_skill_put(s: config.Settings, a: argparse.Namespace) -> int:
    if a.file == "-":
        data = sys.stdin.buffer.read()
    else:
        try:
            data = Path(a.file).read_bytes()
        except OSError as exc:
            raise CliError(f"cannot read {a.file}: {exc.strerror}") from None
    try:
        content = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CliError(f"{a.file} is not UTF-8 text; nothing was changed") from None
    if len(data) > s.limits.max_skill_bytes:
        raise CliError(f"{a.file} is {len(data)} bytes, over limits.max_skill_bytes ({s.limits.max_skill_bytes})")
    node = _node(s)
    try:
        node.put_skill(a.name, content, None)
    finally:
        node.close()
    print(f"stored skill {a.name}; {_sync_after_write(s, [layout.skill_id(a.name)])}")
    return EXIT_OK


def cmd_skill_get(s: config.Settings, a: argparse.Namespace) -> int:
    idx = _open_index(s)
    try:
        r = idx.db.execute("SELECT content, path, source_node, updated_at FROM mesh_skills WHERE name = ?",
                           (a.name,)).fetchone()
        st = ItemStates(idx, s.node_id).of(layout.skill_id(a.name), _row_sig(skill_row_sig, *r)) if r else None
    finally:
        idx.close()
    if r is None:
        print(f"meshsync: no skill {a.name}", file=sys.stderr)
        return EXIT_NOT_FOUND
    if a.json:
        print(_dump({"name": a.name, "content": r[0], "path": r[1], "source_node": r[2], "updated_at": r[3], **st}))
    else:
        text = r[0] if r[0] is not None else f"(reference to {r[1]})\n"
        sys.stdout.write(text)
        if sys.stdout.isatty():
            print(("" if text.endswith("\n") else "\n") + f"# skill {a.name} from {r[2]} at {_when(r[3])}, "
                  f"{_state_text(st)}" + (f": {st['reason']}" if "reason" in st else "")
                  + (f" (warning: {st['warning']})" if "warning" in st else ""))
    return EXIT_OK


def cmd_skill_rm(s: config.Settings, a: argparse.Namespace) -> int:
    node = _node(s)
    try:
        found = node.delete_item(layout.skill_id(a.name))
    finally:
        node.close()
    if not found:
        print(f"meshsync: no skill {a.name}", file=sys.stderr)
        return EXIT_NOT_FOUND
    print(f"deleted skill {a.name}; {_sync_after_write(s, [layout.skill_id(a.name)])}")
    return EXIT_OK


def cmd_skill_ls(s: config.Settings, a: argparse.Namespace) -> int:
    idx = _open_index(s)
    try:
        rows = idx.db.execute("SELECT name, source_node, updated_at, length(content), path, content FROM mesh_skills"
                              " ORDER BY name").fetchall()
        states = ItemStates(idx, s.node_id)
        st = [states.of(layout.skill_id(r[0]), _row_sig(skill_row_sig, r[5], r[4], r[1], r[2])) for r in rows]
    finally:
        idx.close()
    if a.json:
        print(_dump([{"name": r[0], "source_node": r[1], "updated_at": r[2], "bytes": r[3], "path": r[4], **x}
                     for r, x in zip(rows, st, strict=True)]))
    else:
        for r, x in zip(rows, st, strict=True):
            print(f"{r[0]}\t{r[1]}\t{_when(r[2])}\t{_state_text(x)}")
    return EXIT_OK


def _conflict_row(c: dict[str, Any]) -> dict[str, Any]:
    item = f"{c['scope']}:{c['key']}" if c["kind"] == MEM else f"skill:{c['key']}"
    return {
        "id": c["id"], "item": item, "kind": "memory" if c["kind"] == MEM else "skill",
        "scope": c["scope"], "key": c["key"], "seen_at": c["at"] / 1000, "seen_on": c["side"],
        "beaten": {"node": c["loser_node"], "updated_at_ms": c["loser_stamp"], "value": c.get("loser_value")},
        "winner": {"node": c["winner_node"], "updated_at_ms": c["winner_stamp"],
                   "deleted": bool(c["winner_deleted"])},
    }


def cmd_conflicts(s: config.Settings, a: argparse.Namespace) -> int:
    idx = _open_index(s)
    try:
        rows = [_conflict_row(c) for c in idx.conflicts(a.limit)]
    finally:
        idx.close()
    if a.json:
        for r in rows:
            v = r["beaten"]["value"]
            if v is not None and r["kind"] == "memory":
                r["beaten"]["value"] = orjson.Fragment(v)
        print(_dump(rows))
        return EXIT_OK
    if not rows:
        print("no conflicts recorded")
    for r in rows:
        w, b = r["winner"], r["beaten"]
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["seen_at"]))
        print(f"#{r['id']}  {r['item']}  seen {when}\n"
              f"    beaten: {b['node']} at {_ms(b['updated_at_ms'])}: {_short(b['value'])}\n"
              f"    winner: {w['node']} at {_ms(w['updated_at_ms'])}" + (" (delete)" if w["deleted"] else ""))
    if rows:
        print("restore one with: meshsync conflicts restore ID")
    return EXIT_OK


def _ms(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) + f".{ms % 1000:03d}"


def _short(v: str | None, n: int = 60) -> str:
    if v is None:
        return "(no content)"
    return v if len(v) <= n else v[: n - 3] + "..."


def cmd_conflicts_restore(s: config.Settings, a: argparse.Namespace) -> int:
    idx = _open_index(s)
    try:
        r = idx.db.execute("SELECT kind, scope, key, loser_value FROM meshsync_conflicts WHERE id = ?",
                           (a.id,)).fetchone()
    finally:
        idx.close()
    if r is None:
        print(f"meshsync: no conflict #{a.id} (see `meshsync conflicts`)", file=sys.stderr)
        return EXIT_NOT_FOUND
    kind, scope, key, value = r
    if value is None:
        raise CliError(f"conflict #{a.id} kept no content to restore")
    node = _node(s)
    try:
        if kind == MEM:
            if not s.may_write(scope):
                raise CliError(f"this node may not write scope {scope!r}; nothing was changed")
            node.put_memory(scope, key, formats.loads(value))
            item = layout.memory_id(scope, key)
        else:
            node.put_skill(key, value, None)
            item = layout.skill_id(key)
    finally:
        node.close()
    print(f"restored {item} from conflict #{a.id} as a new write; {_sync_after_write(s, [item])}")
    return EXIT_OK


def cmd_doctor(s: config.Settings, a: argparse.Namespace) -> int:
    from meshsync.cli import doctor

    checks = doctor.run_checks(s)
    return _print_checks(checks, a.json)


def _print_checks(checks: list, as_json: bool) -> int:
    from meshsync.cli import doctor

    code = doctor.exit_code(checks)
    if as_json:
        print(_dump({"result": ["ok", "warnings", "failures"][code], "checks": doctor.as_json(checks)}))
        return code
    for c in checks:
        print(f"{c.result.upper():4}  {c.name}: {c.detail}" + (f"\n      -> {c.hint}" if c.hint else ""))
    print(["all checks passed", "some checks gave warnings", "some checks failed"][code])
    return code


def cmd_run(s: config.Settings, a: argparse.Namespace) -> int:
    from meshsync.daemon.loop import run

    return run(s, a.config)


# --- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="meshsync",
        description="Keep a shared folder, this node's SQLite index and its OpenClaw cache in step.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", metavar="FILE", help="YAML configuration file (default: $MESHSYNC_CONFIG)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="override log_level")
    p.add_argument("--version", action="version", version=f"meshsync {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, fn, help: str, desc: str | None = None) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=desc or help, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(fn=fn)
        return sp

    sp = add("init", cmd_init, "create the share layout, its .meshsync/ marker and the index (idempotent)",
             "Create the share layout and marker (idempotent) and this node's index. Refuses a folder that "
             "already holds files but no marker: that is usually an unmounted NAS.")
    sp.add_argument("--force", action="store_true", help="initialise a non-empty folder that has no marker")
    add("run", cmd_run, "run the daemon in the foreground (systemd runs this)")
    sp = add("doctor", cmd_doctor, "check the set-up: share, clocks, watch limits, index, cache, systemd",
             "Check this node's set-up, one line per check with a hint. Exit 0 when all pass, "
             "1 when some warn, 2 when any fails.")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp = add("sync", cmd_sync, "one full two-way pass, then exit (exit 3 if the share is unavailable)")
    sp.add_argument("--full", action="store_true", help="also re-read every index row, not just the changed ones")
    sp.add_argument("--json", action="store_true", help="print the pass's figures as JSON")
    sp = add("status", cmd_status, "share availability, counts, last sync, per-file errors, conflicts")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp = add("get", cmd_get, "print a memory item's value", "Print the value of memory item SCOPE KEY.")
    sp.add_argument("scope", help="node, mesh or user:<id>")
    sp.add_argument("key")
    sp.add_argument("--json", action="store_true", help="print the whole row as JSON")
    sp = add("put", cmd_put, "write a memory item", "Write memory item SCOPE KEY with the JSON VALUE.")
    sp.add_argument("scope", help="node, mesh or user:<id>")
    sp.add_argument("key")
    sp.add_argument("value", help="a JSON value, e.g. '{\"shortAnswers\": true}' or '\"text\"'")
    sp = add("rm", cmd_rm, "delete a memory item everywhere")
    sp.add_argument("scope")
    sp.add_argument("key")
    sp = add("ls", cmd_ls, "list memory items (scope, key, node, time)")
    sp.add_argument("scope", nargs="?", help="only this scope")
    sp.add_argument("--json", action="store_true")

    cf = add("conflicts", cmd_conflicts, "list beaten versions kept in the conflict history (R2)",
             "List versions that lost a conflict on this node (newest first), with both sides. "
             "`meshsync conflicts restore ID` writes the beaten version back as a new write.")
    cf.add_argument("--json", action="store_true", help="machine-readable output, with the beaten values")
    cf.add_argument("--limit", type=int, default=50, help="how many to show (default 50)")
    csub = cf.add_subparsers(dest="conflicts_command", metavar="SUBCOMMAND")
    sp = csub.add_parser("restore", help="write a beaten version back as a new write",
                         description="Write the beaten version of conflict ID back as a new write; "
                         "it then wins everywhere like any newer write.")
    sp.add_argument("id", type=int)
    sp.set_defaults(fn=cmd_conflicts_restore)

    sk = sub.add_parser("skill", help="skills: put, get, rm, ls", description="Manage shared skills.")
    ssub = sk.add_subparsers(dest="skill_command", metavar="SUBCOMMAND", required=True)

    def sadd(name: str, fn, help: str) -> argparse.ArgumentParser:
        sp = ssub.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=fn)
        return sp

    sp = sadd("put", cmd_skill_put, "store a skill's SKILL.md content from FILE (or - for stdin)")
    sp.add_argument("name")
    sp.add_argument("file")
    sp = sadd("get", cmd_skill_get, "print a skill's content")
    sp.add_argument("name")
    sp.add_argument("--json", action="store_true")
    sp = sadd("rm", cmd_skill_rm, "delete a skill everywhere")
    sp.add_argument("name")
    sp = sadd("ls", cmd_skill_ls, "list skills")
    sp.add_argument("--json", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        overrides = {"log_level": a.log_level} if a.log_level else {}
        settings = config.load(a.config, **overrides)
    except config.ConfigError as exc:
        if getattr(a, "fn", None) is cmd_doctor:
            # doctor reports a bad configuration as its first (failed) check, in its own format.
            from meshsync.cli.doctor import FAIL, Check

            hint = "fix the setting named above (docs/configuration.md); meshsync stops with exit 2 until then"
            return _print_checks([Check("configuration", FAIL, str(exc), hint)], a.json)
        print(f"meshsync: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logs.setup(settings.log_level)
    try:
        return a.fn(settings, a)
    except CliError as exc:
        print(f"meshsync: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `meshsync status | head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
