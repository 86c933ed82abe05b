"""Commit: record what a pass saw and did, then bring the cache in step.

In order: the problems found (files, rows, refused writes) replace the old ones and the
outbox is acknowledged, with rows that could not go out requeued (R2, R9); the share's
journal names the items written; retention expires old tombstones and history; then
mesh-memory.json and mesh/skills/ are refreshed from the index (leaving alone any file
a Phase 1 tool wrote while the pass ran, R2), skill folders are mirrored, and last_pass
is recorded (cache_owed back to 0: the cache is in step, R7).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import orjson

from meshsync import layout
from meshsync.diagnose import os_hint
from meshsync.layout import SKILL
from meshsync.model import Pass, Problem
from meshsync.replicas.cache import skilldirs
from meshsync.replicas.cache.write import skills_sig_of
from meshsync.replicas.share import journal

from . import hold, identity
from .propagate import EXPORT

if TYPE_CHECKING:
    from .wiring import Replicas

log = logging.getLogger("meshsync")


def _json(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def finish(node: Replicas, p: Pass) -> None:
    before = node.index.error_reasons()
    record(node, p)
    hold.record(node, p)
    identity.check(node, p)
    append_journal(node, p)
    cache_ok = refresh_cache(node, p)
    skill_folders(node, p.changed_skills, p.full)
    record_faults(node, p)
    log_problems(before, node.index.error_reasons())
    last_pass(node, p, cache_ok)


def append_journal(node: Replicas, p: Pass) -> None:
    """Name the items written in this node's journal, with any a failed append owes.  A
    journal that cannot be written is reported (other nodes that poll then see these
    writes only at their full rescan) and its lines are kept for the next pass (R12)."""
    items = node.journal_owed + p.written
    if not items:
        return
    rel = journal.path_of(node.node)
    try:
        journal.append(node.share, node.node, items)
    except OSError as exc:
        node.journal_owed = items
        p.journal_problem = [Problem(rel, f"cannot be written: {exc.strerror}",
                                     "this node's writes still reach the share, but nodes that poll (NFS/SMB) "
                                     "see them only at their next full rescan: "
                                     + os_hint(exc, "the share's .meshsync/journal/ folder"))]
        p.faults[rel] = p.journal_problem[0].reason
        return
    node.journal_owed = []
    p.journal_problem = []


def refresh_cache(node: Replicas, p: Pass) -> bool:
    """mesh-memory.json, then mesh/skills/.  A cache that cannot be written (full disk,
    immutable file, permissions) is reported, stays owed (the next pass rewrites all of
    it) and never fails the pass: the index is in step already (R12).  True when both
    were brought in step."""
    failed = []
    for path, step in ((node.cache.memory_path, refresh_cache_memory), (node.cache.skills_dir, refresh_cache_skills)):
        try:
            step(node, p)
        except OSError as exc:
            failed.append(Problem(str(path), f"cannot be written: {exc.strerror}", os_hint(exc, "the cache")))
            p.faults[str(path)] = failed[-1].reason
    if failed or p.cache_problems is not None or p.stats.cache_written:
        # Looked at or rewritten this pass: its problems now are exactly these (a good
        # rewrite clears an old write failure; R12).
        p.cache_problems = (p.cache_problems or []) + failed
    return not failed


def record_faults(node: Replicas, p: Pass) -> None:
    """The cache's and the journal's problems as this pass found them (a good rewrite
    clears an old one); left as they are when the pass did not look."""
    kinds = [(kind, probs) for kind, probs in (("cache", p.cache_problems), ("journal", p.journal_problem))
             if probs is not None]
    if not kinds:
        return
    with node.index.write() as db:
        for kind, probs in kinds:
            node.index.replace_errors(db, kind, [(pr.path, pr.reason, pr.hint) for pr in probs])
    p.stats.errors += sum(len(probs) for _, probs in kinds)


LOG_AT_MOST = 20  # problems logged one by one per pass; the rest are counted (a share full of bad files)


def log_problems(before: dict[str, tuple[str, str, str]], after: dict[str, tuple[str, str, str]]) -> None:
    """Each problem, refusal and warning once, when it appears or its reason changes (R6,
    R9); each one that went, at INFO.  The errors table is the memory of what was told:
    a restart does not tell the same problems again."""
    new = [(path, e) for path, e in after.items() if before.get(path, ("", "", ""))[1] != e[1]]
    for path, (kind, reason, hint) in new[:LOG_AT_MOST]:
        what = "refused" if kind == "refused" else "warning" if kind == "warning" else "problem"
        log.warning("%s %s: %s%s", what, path.removeprefix("index:"), reason, f" -> {hint}" if hint else "")
    if len(new) > LOG_AT_MOST:
        log.warning("%d more problems (see `meshsync status`)", len(new) - LOG_AT_MOST)
    gone = [path for path in before if path not in after]
    for path in gone[:LOG_AT_MOST]:
        log.info("%s: fixed (no longer a problem)", path.removeprefix("index:"))
    if len(gone) > LOG_AT_MOST:
        log.info("%d more problems fixed", len(gone) - LOG_AT_MOST)


def record(node: Replicas, p: Pass) -> None:
    """Problems, the outbox, retention; the journal of what was written."""
    idx = node.index
    all_problems = (p.walk.problems if p.walk is not None else []) + p.problems
    index_problems = p.index_problems
    with idx.write() as db:
        if p.full:
            idx.replace_errors(db, "file", [(pr.path, pr.reason, pr.hint) for pr in all_problems])
        else:
            for pr in all_problems:
                idx.replace_errors_one(db, "file", pr.path, (pr.reason, pr.hint))
            bad = {pr.path for pr in all_problems}
            for rel in p.looked_ok:
                if rel not in bad:
                    idx.replace_errors_one(db, "file", rel, None)
        for it in p.refused_read:
            index_problems[it] = (f"index row {it} is in a scope this node may not read",
                                  "it stays local and is not exported; add the scope to scopes.read to sync it",
                                  "refused")
        fine: list[str] = []  # rows with no problem: their old errors go, in one statement
        for it, prob in index_problems.items():
            if prob is None:
                fine.append(f"index:{it}")
            else:
                idx.replace_errors_one(db, prob[2] if len(prob) > 2 else "index", f"index:{it}", prob)
        idx.clear_errors(db, fine)
        # Exports that failed (R12): queued like the rows above, and retried on a timer
        # by the daemon until the share takes them.
        p.retry.update((it, prob[0]) for it, prob in index_problems.items()
                       if prob and len(prob) > 2 and prob[2] == EXPORT)
        idx.ack_outbox(db, p.seq)
        # A refused or invalid row is not dropped: it stays queued, is reported by
        # every pass, and goes out once fixed (e.g. its scope made writable) (R9, R2).
        idx.requeue(db, sorted({it for it, prob in index_problems.items() if prob} | set(p.deferred)))
        if idx.meta("index_scanned") != "1":
            idx.set_meta(db, index_scanned="1")
        if p.full:
            s = node.s
            idx.expire(db, p.now_ms - int(s.tombstone_retention_days * 86_400_000),
                       p.now_ms - int(s.conflict_retention_days * 86_400_000))
            idx.check_fts(db)
    if p.full:
        prune_history(node, p)
    p.stats.errors = len(all_problems) + sum(1 for pr in index_problems.values() if pr)
    for pr in all_problems:
        log.debug("skipped %s: %s", pr.path, pr.reason)


PRUNE_EVERY_MS = 3_600_000  # the share's history is pruned at most once an hour (a full pass)


def prune_history(node: Replicas, p: Pass) -> None:
    """Retention of the share's history (R11): records are kept at least as long as
    tombstones and as conflict_retention_days, whichever is longer."""
    # Syncthing's copies of a record both nodes kept while apart (issue 17): every full
    # pass, so that none is left (R11); a stat of each month folder, a listing of those
    # changed since the last pass, no write when none.
    if node.share_detector.replicated and node.history.fold_copies():
        log.info("removed Syncthing's conflict copies of history records (the records keep the same versions)")
    # Remembered by the process, not in the index: an idle node writes nothing (R8); a
    # `meshsync sync` looks once per run (two listings of the history folder).
    if node.history_pruned is not None and p.now_ms - node.history_pruned < PRUNE_EVERY_MS:
        return
    node.history_pruned = p.now_ms
    s = node.s
    days = max(s.tombstone_retention_days, s.conflict_retention_days)
    n = node.history.prune(p.now_ms - int(days * 86_400_000))
    if n:
        log.info("removed %d month(s) of history older than %g days from the share", n, days)


def refresh_cache_memory(node: Replicas, p: Pass) -> None:
    """mesh-memory.json: rewritten (patched after a targeted pass) when a memory item
    moved, when it is not the file we wrote last, or all of it when a killed pass owed it."""
    idx = node.index
    cache_sig = idx.meta("cache_sig")
    if p.owed:  # a killed pass did not refresh the cache (R7): all of it, now
        p.changed_mem = True
        rows = {n: c for n, c, _p, _s, _u in idx.all_skill_rows()}
        gone = {it.key: None for it, st in idx.load_state(kind=SKILL).items()
                if st.deleted and it.key not in rows}
        p.changed_skills = {**gone, **rows, **p.changed_skills}
    if p.cache_side is not None and p.cache_side.unreadable:
        # A tool is writing mesh-memory.json (or left it broken): never overwrite it;
        # what this pass added stays "young" until the cache is written again.
        young = set(orjson.loads(idx.meta("cache_young") or "[]")) | p.young_added
        # The file still holds what our last write put there: the versions it had
        # before this pass stay the ones a stale copy would carry.
        replaced = {**p.cache_replaced, **orjson.loads(idx.meta("cache_prev") or "{}")}
        with idx.write() as db:
            idx.set_meta(db, cache_young=_json(sorted(young)), cache_prev=_json(replaced))
    elif p.changed_mem or cache_sig is None or cache_sig != node.cache.memory_sig():
        node.tick("writing cache", 0, None)
        # A full pass renders every entry again (and so mends anything a patch missed).
        sig = node.write_cache_memory(patch=not p.full)
        p.stats.cache_written = True
        with idx.write() as db:
            idx.set_meta(db, cache_sig=sig or "", cache_young=_json(sorted(p.young_added)),
                         cache_prev=_json(p.cache_replaced))


def refresh_cache_skills(node: Replicas, p: Pass) -> None:
    """mesh/skills/<name>.md for the skills that moved, and the signature the next
    pass compares to notice a tool's writes."""
    idx, cache, cw = node.index, node.cache, node.cache_writer
    changed_skills = p.changed_skills
    raced: set[str] = set()
    before = p.cache_skills_before
    if changed_skills or not cache.skills_dir.exists():
        live = {name: c for name, c in changed_skills.items() if c is not None}
        removed = [name for name, c in changed_skills.items() if c is None]
        if not cache.skills_dir.exists():
            live = {n: c for n, c, _p, _s, _u in idx.all_skill_rows() if c is not None}
        # A Phase 1 tool may have written a skill file while this pass ran (after it
        # looked): leave that file alone, the next pass imports it.  Removing or
        # overwriting it lost the tool's write, unrecorded (R2; found by the chaos test).
        if before is not None:
            now_stats = cw.skill_stats()
            raced = {n for n in (*live, *removed) if now_stats.get(cache.skill_path(n).name)
                     != before.get(cache.skill_path(n).name)}
            live = {n: c for n, c in live.items() if n not in raced}
            removed = [n for n in removed if n not in raced]
        cache.sync_skills(live, removed)
        cache.skills_dir.mkdir(parents=True, exist_ok=True)
        ours = {cache.skill_path(n).name for n in (*live, *removed)}
    else:
        ours = set()
    if before is None:
        ssig = "" if raced else cw.skills_sig()
    else:
        # The signature recorded as "seen" must not cover a file a tool wrote while
        # this pass ran and that is not ours: the next pass would skip it and the
        # tool's write was never imported (a skill dropped just after the cache
        # refresh was lost).  "" makes the next pass list mesh/skills/ again.
        now_stats = cw.skill_stats()
        foreign = any(now_stats.get(f) != before.get(f) for f in now_stats.keys() | before.keys()
                      if f not in ours)
        ssig = "" if raced or foreign else skills_sig_of(now_stats)
    if ssig != idx.meta("cache_skills_sig"):
        with idx.write() as db:
            idx.set_meta(db, cache_skills_sig=ssig or "")


def skill_folders(node: Replicas, changed: dict[str, str | None], full: bool) -> None:
    """Mirror skill folders into cache.skill_dirs, and warn about SKILL.md files
    OpenClaw would not load (the skill is still synced)."""
    targets = node.s.cache.skill_dirs
    if full:
        rows = {name: content for name, content, _p, _n, _u in node.index.all_skill_rows()}
        todo: dict[str, str | None] = {n: layout.item_path(layout.skill_id(n), node.node) for n in rows}
    else:
        rows = dict(changed)
        todo = {n: (layout.item_path(layout.skill_id(n), node.node) if c is not None else None)
                for n, c in changed.items()}
    if not todo:
        return
    warns: list[tuple[str, str, str]] = []
    for name, content in rows.items():
        if content is None:
            continue
        why = skilldirs.frontmatter_problem(content.encode("utf-8", "surrogatepass"))
        if why:
            warns.append((f"skill:{name}", why, "OpenClaw may not load it; add --- name: ... description: ... --- "
                          "at the top of SKILL.md (it is synced anyway)"))
    if targets:
        limits = skilldirs.Limits(node.s.limits.max_file_bytes, node.s.limits.max_skill_bytes)
        for w in skilldirs.mirror(node.share.root, targets, todo, set(rows) if full else None, node.node, limits):
            warns.append((w.path, w.reason, w.hint))
    with node.index.write() as db:
        if full:
            node.index.replace_errors(db, "warning", warns)
        else:
            for n in todo:
                node.index.replace_errors_one(db, "warning", f"skill:{n}", None)
            for path, why, hint in warns:
                node.index.replace_errors_one(db, "warning", path, (why, hint))


def last_pass(node: Replicas, p: Pass, cache_ok: bool = True) -> None:
    """What `status` shows; the cache is in step with the index again (R7), unless it
    could not be written (then the next pass rewrites all of it)."""
    stats = p.stats
    stats.seconds = round(time.monotonic() - p.t0, 4)  # as recorded for `status`
    with node.index.write() as db:
        node.index.set_meta(db, last_sync=str(time.time()), share_status="available", share_reason="",
                            last_pass=_json(stats.as_dict()), cache_owed="0" if cache_ok else "1",
                            clock_ahead=str(node.clock.far_ahead_ms() // 1000))
        if stats.changed or stats.to_index or stats.deleted:
            node.index.set_meta(db, last_change=_json({"at": time.time(), "items": stats.changed[:10],
                                                       "to_share": stats.to_share, "to_index": stats.to_index,
                                                       "deleted": stats.deleted}))
