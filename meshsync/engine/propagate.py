"""Propagate: carry each plan's winner to the sides it names, a batch at a time.

Per batch of BATCH plans (:class:`ExportBatch`, like Syncthing's FileInfoBatch: it owns
its flush and its errors):

1. the export intents of its index rows are noted (intents.py, R7);
2. each plan's share write is decided, compare-and-set against what detection saw
   (R2): memory files are queued and written together (Share.write_many, several
   threads), skills and tombstones at once;
3. one short index transaction writes the rows (compare-and-set against the row the
   pass saw: a foreign write since is left for the next pass), the states, the
   conflict history, and clears the intents.

An item whose write was refused or raced leaves the batch (its state is not written):
the next pass sees it again.  The cache is written later, by commit.py.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from typing import TYPE_CHECKING, Any

import orjson

from meshsync import faults, formats, layout
from meshsync.diagnose import os_hint
from meshsync.layout import MEM
from meshsync.model import (
    CACHE,
    CHANGED_SAMPLE,
    INDEX,
    SHARE,
    ItemId,
    Obs,
    Pass,
    Plan,
    Problem,
    State,
    Version,
    base_live,
    base_of,
)
from meshsync.payloads import MISSING, Check, IndexSkill, Payload
from meshsync.replicas.cache.detect import cache_key
from meshsync.replicas.index.store import MemoryRow
from meshsync.replicas.index.write import SKIP, write_row
from meshsync.replicas.share import write as share_write
from meshsync.replicas.share.store import Changed, FileRefused, settled, sig_of

from . import intents, keep
from .plan import Planned

if TYPE_CHECKING:
    from .wiring import Replicas

log = logging.getLogger("meshsync")

BATCH = 500  # rows per index write transaction: short, so other writers are never starved

Pending = tuple[ItemId, Plan, dict[str, Obs], State | None]


def propagate(node: Replicas, p: Pass, plans: list[Planned], tick: bool = True) -> None:
    """Apply ``plans`` (in key order), BATCH at a time."""
    faults.hit("propagate.start")
    batch = ExportBatch(node, p)
    total = len(plans)
    for n, (it, plan, sides) in enumerate(plans):
        if tick and n % 500 == 0:
            node.tick("applying", n, total)
        if n % BATCH == 0:
            intents.record(node.index, plans[n:n + BATCH])
        batch.add(it, plan, sides)
        if len(batch.pending) >= BATCH:
            batch.flush()
    batch.flush()


def _absent_in_index(plan: Plan, sides: dict[str, Obs]) -> bool:
    """A live winner for an item the index did not have when we looked: inserted with ON
    CONFLICT DO NOTHING, its own compare-and-set (the fast path of the index commit)."""
    ix = sides.get(INDEX)
    return ix is not None and ix.version is None and plan.winner is not None and not plan.winner.deleted


# The error kind of an export that failed (a full or read-only share, a folder it may not
# write): the item stays queued, counts as pending in `status` and is retried on a timer
# by the daemon (R12); the cache keeps its last synced version meanwhile.
EXPORT = "export"


def _failed_path(exc: OSError, rel: str) -> str:
    """The share path an OSError names (e.g. a skill's SKILL.md), else ``rel``."""
    name = exc.filename if isinstance(exc.filename, str) else None
    return name if name and not name.startswith("/") else rel


def _fmt_ms(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def _replaces(it: ItemId, sh_obs: Obs | None, st: State | None) -> str | None:
    """The version an export replaces on the share, as every reader of that file names it
    (its rev; None: none).  A node whose fresh export it was then knows it was seen, not
    lost (R2 on a NAS, plan.base_seen).  Memory files and skill.json alike."""
    seen_v = sh_obs.version if sh_obs is not None else None
    if sh_obs is not None and not sh_obs.trusted and st is not None and not st.deleted:
        seen_v = base_of(st)  # a hand edit stamped after the base it edited (R3)
    if seen_v is None or seen_v.deleted:
        return None
    return formats.rev(it, seen_v.digest, seen_v.stamp, seen_v.node)


def _source(plan: Plan, sides: dict[str, Obs]) -> Payload | None:
    return sides[plan.source].payload if plan.source in sides else None


class ExportBatch:
    """Up to BATCH plans between their share writes and their index commit."""

    def __init__(self, node: Replicas, p: Pass) -> None:
        self.node = node
        self.p = p
        self.pending: list[Pending] = []
        # Memory files add() rendered, written a batch at a time by flush():
        # (item, rel, bytes, compare-and-set, the state the item gets once written).
        self.queued: list[tuple[ItemId, str, bytes, Check | None, State]] = []
        self.moved = False  # a readable item of the batch changed: the cache is owed (R7)
        self.records: dict[ItemId, dict[tuple[int, str, str], str]] = {}  # beaten version -> history ID

    def add(self, it: ItemId, plan: Plan, sides: dict[str, Obs]) -> None:
        st = self.p.state.get(it)
        # What the plan lets go is kept on the share first (R11): a version that cannot
        # be kept is not let go this pass.
        recs = keep.records(self.node, it, plan, sides, st)
        why = keep.write(self.node, it, recs) if recs else None
        if why is not None:
            self.p.index_problems[it] = (f"cannot keep the version {it} loses in the share's history: {why}",
                                         "check the share's permissions and free space (.meshsync/history/); "
                                         "the item waits until it can be kept")
            self.pending.append((it, plan, sides, None))
            return
        self.records[it] = {(r.stamp, r.node, r.digest): r.id for r in recs if r.why == "beaten"}
        self.pending.append((it, plan, sides, self._to_share(it, plan, sides, st)))

    def flush(self) -> None:
        """Write the queued memory files, then commit the batch's index rows."""
        if not self.pending:
            return
        pending = self._write_queued(self.pending)
        self.pending = []
        faults.hit("propagate.before_index_commit")
        self._commit_index(pending)

    # --- the share ------------------------------------------------------------------------

    def _secret_hits(self, it: ItemId, payload: Payload | None) -> list[str]:
        """Secret-guard rules a local write matches, less the allowed ones."""
        g = self.node.s.secrets
        if not g.guard or str(it) in g.allow_items or payload is None:
            return []
        return [h for h in payload.secret_hits(it.key) if h not in g.allow_rules]

    def _winner_value(self, it: ItemId, payload: Payload | None) -> Any:
        """The winning value; from the index row when the winner was not read this pass."""
        value = payload.mem_value() if payload is not None else MISSING
        if value is not MISSING:
            return value
        row = self.node.index.memory_rows([it]).get(it)
        if row is None:
            raise FileRefused(Problem(layout.item_path(it, self.node.node), "no value to write for this item", ""))
        return formats.index_value(row.value, self.node.policy.max_json_depth)

    def _to_share(self, it: ItemId, plan: Plan, sides: dict[str, Obs], st: State | None) -> State | None:
        """Write the share side; return the state the item will have once the index is
        written too (None: leave the item for the next pass)."""
        win = plan.winner
        index_problems = self.p.index_problems  # (the name tests/project/test_docs.py finds reported messages by)
        if plan.refused:
            index_problems[it] = (f"local write to {it} refused: this node may not write scope {it.scope!r}",
                                  "add the scope to scopes.write, or undo the write; it stays local meanwhile",
                                  "refused")  # its own error kind: status lists refused writes apart
            self.p.stats.refused += 1
            return None
        if win is None:
            return None
        sh_obs = sides.get(SHARE)
        if sh_obs is None and self.node.policy.writable(it) and (st is None or not base_of(st).same(win)):
            # R12, R2: the share side could not be read this pass (an unreadable file or
            # folder), so nothing says it holds this new version: it is never recorded as
            # synced (the next pass would take the share's silence for agreement and the
            # version never left this node).  The item stays queued and is retried.
            index_problems[it] = (f"{it} not exported: its share side cannot be read",
                                  "see the problem of its file or folder in the share (meshsync status); "
                                  "the write stays local and is retried until it can be read", EXPORT)
            return None
        src = _source(plan, sides)
        rel = layout.item_path(it, self.node.node)
        share_sig = st.share_sig if st else None
        share_hash = st.share_hash if st else None
        aux = st.aux if st else None
        seen = sh_obs.payload.share_read() if sh_obs is not None and sh_obs.payload is not None else None
        if seen is not None:
            share_sig, share_hash = seen
            extras = sh_obs.payload.skill_extras()  # type: ignore[union-attr]
            if extras is not None:
                aux = extras
        elif sh_obs is None and (st is None or not base_of(st).same(win)):
            # The share could not be looked at (an unreadable file): whatever it holds is
            # not this new version, so its old bytes must not read as "unchanged" later.
            share_sig = share_hash = None
        if SHARE not in plan.write:
            if plan.source == SHARE and src is not None and not self._still_as_read(it, rel, src):
                return None
            return State(win.stamp, win.node, win.digest, win.deleted, share_sig, share_hash,
                         st.row_sig if st else None, None if win.deleted else rel, aux)
        if (not win.deleted and sh_obs is not None and sh_obs.dirty and sh_obs.trusted
                and sh_obs.version is not None and sh_obs.version.same(win)):
            if not self._drop_tombstone(it):
                return None
            return State(win.stamp, win.node, win.digest, False, share_sig, share_hash,
                         st.row_sig if st else None, rel, aux)
        faults.hit("propagate.before_export", it)
        if plan.source in (INDEX, CACHE) and not win.deleted:
            hits = self._secret_hits(it, src)
            if hits:
                index_problems[it] = (f"{it} not exported: it looks like a secret ({', '.join(hits)})",
                                      f"remove the secret, or allow it with secrets.allow_items [\"{it}\"] "
                                      f"or secrets.allow_rules {orjson.dumps(hits).decode()}; it stays local meanwhile",
                                      "refused")
                self.p.stats.refused += 1
                return None
        if it.kind == MEM and not win.deleted:
            # Written with the rest of the batch (_write_queued), compare-and-set included.
            try:
                data = formats.render_memory(it, self._winner_value(it, src), win.digest, win.stamp, win.node,
                                             self.node.s.limits.max_file_bytes, _replaces(it, sh_obs, st))
            except formats.TooLarge as exc:
                self._refuse_too_large(it, exc, "limits.max_file_bytes")
                return None
            new = State(win.stamp, win.node, win.digest, False, None, formats.digest_bytes(data),
                        st.row_sig if st else None, rel, aux)
            self.queued.append((it, rel, data, share_write.mem_check(sh_obs), new))
            return new
        return self._export_now(it, plan, rel, sh_obs, src, st, aux)

    def _still_as_read(self, it: ItemId, rel: str, src: Payload) -> bool:
        """A file another program wrote, taken as written (no share write follows to
        compare-and-set it), but read in the seconds after it changed: it may still be
        being written (an editor's truncate-then-write).  Unless it is still what was
        read, the item waits for the next pass (R6, R7: a half-written file is never
        imported; the daemon looks again at once)."""
        got = src.import_check()
        if got is None or got[1](self.node.share.lstat(rel + got[0])):
            return True
        self.p.deferred.append(it)
        return False

    def _drop_tombstone(self, it: ItemId) -> bool:
        """The share holds the winner already and only a tombstone beside it is stale (a
        restore, R10): the tombstone goes, the file is left as it was written."""
        try:
            share_write.drop_tombstone(self.node.share, it, self.node.node)
        except OSError as exc:
            self.p.index_problems[it] = (f"cannot remove the tombstone of {it} on the share: {exc.strerror}",
                                         "check the share's permissions; retried on the next pass")
            return False
        self.p.stats.to_share += 1
        self.p.written.append(it)
        return True

    def _refuse_too_large(self, it: ItemId, exc: formats.TooLarge, setting: str) -> None:
        """An export whose file the readers would refuse is not written (R10): reported as
        a refused write (status, `ls`), logged, and the item stays local meanwhile."""
        self.p.index_problems[it] = (f"{it} not exported: {exc}",
                                     f"shrink it, or raise {setting} on every node; it stays local meanwhile",
                                     "refused")
        self.p.stats.refused += 1
        log.warning("%s not exported: %s (%s)", it, exc, setting)

    def _export_now(self, it: ItemId, plan: Plan, rel: str, sh_obs: Obs | None, src: Payload | None,
                    st: State | None, aux: str | None) -> State | None:
        """A skill or a delete, written at once (compare-and-set first)."""
        win = plan.winner
        assert win is not None
        share, p = self.node.share, self.p
        index_problems = p.index_problems
        digest = win.digest
        share_sig = share_hash = None
        try:
            if not share_write.unchanged(share, rel, sh_obs, it) or not share_write.copies_unchanged(share, src):
                # Changed since we looked, or a file we could not read is in the way:
                # keep the item queued so a local write is not forgotten (R2).
                p.deferred.append(it)
                return None
            if win.deleted:
                share_write.export_delete(share, it, rel, win, self.node.node, sh_obs)
            else:
                extras = sh_obs.payload.skill_extras() if sh_obs is not None and sh_obs.payload is not None else None
                if src is not None and src.copy_moves():
                    extras = src.skill_extras()  # a conflict copy's version brings its own files
                if extras is None:
                    extras = aux or ""
                if src is None or src.skill_bytes() is None:
                    # The winner was not read this pass (e.g. the base beat an older share version).
                    row = self.node.index.skill_rows([it]).get(it)
                    if row is None:
                        raise FileRefused(Problem(rel, "no content to write for the skill", ""))
                    src = IndexSkill(row)
                digest = share_write.export_skill(share, it, rel, win, self.node.node, src, extras,
                                                  self.node.s.limits.max_skill_bytes, _replaces(it, sh_obs, st))
                share_hash, aux = digest, extras
            p.stats.to_share += 1
            p.written.append(it)
        except formats.TooLarge as exc:
            self._refuse_too_large(it, exc, "limits.max_skill_bytes")
            return None
        except FileRefused as exc:
            index_problems[it] = (f"cannot write {exc.problem.path} on the share: {exc.problem.reason}",
                                  exc.problem.hint, EXPORT)
            return None
        except OSError as exc:
            index_problems[it] = (f"cannot write {_failed_path(exc, rel)} on the share: {exc.strerror}",
                                  os_hint(exc, "the share"), EXPORT)
            return None
        return State(win.stamp, win.node, digest, win.deleted, share_sig, share_hash,
                     st.row_sig if st else None, None if win.deleted else rel, aux)

    def _write_queued(self, pending: list[Pending]) -> list[Pending]:
        """Write the batch's memory files (queued by _to_share) several at a time, and
        complete their states; an item whose write was refused leaves the batch (None)."""
        queued, self.queued = self.queued, []
        if not queued:
            return pending
        node, p = self.node, self.p
        index_problems = p.index_problems
        got = node.share.write_many([(rel, data, check) for _, rel, data, check, _ in queued])
        if len(node.own_sigs) > 200_000:
            node.own_sigs.clear()
        now_ns = time.time_ns()
        failed: set[ItemId] = set()
        for (it, rel, _, _, new), res in zip(queued, got, strict=True):
            if isinstance(res, os.stat_result):
                sig = node.own_sigs[rel] = sig_of(res)
                new.share_sig = sig if settled(res, now_ns) else None
                node.share.remove(f"{layout.TOMBSTONES}/{rel}")  # layout.tombstone_path of a memory item
                p.stats.to_share += 1
                p.written.append(it)
                continue
            failed.add(it)
            if isinstance(res, Changed):
                # Changed since we looked, or a file we could not read is in the way:
                # keep the item queued so a local write is not forgotten (R2).
                p.deferred.append(it)
            elif isinstance(res, FileRefused):
                index_problems[it] = (f"cannot write {res.problem.path} on the share: {res.problem.reason}",
                                      res.problem.hint, EXPORT)
            else:
                index_problems[it] = (f"cannot write {rel} on the share: {getattr(res, 'strerror', None) or res}",
                                      os_hint(res, "the share"), EXPORT)
        if not failed:
            return pending
        return [(it, plan, sides, None if it in failed else new) for it, plan, sides, new in pending]

    # --- the index ------------------------------------------------------------------------

    def _commit_index(self, pending: list[Pending]) -> None:
        idx, p = self.node.index, self.p
        states: list[tuple[ItemId, State]] = []  # written with one executemany, see below
        self.moved = False
        with idx.write() as db:
            # Rows we saw absent, inserted in one statement; a row a foreign insert put
            # there first is left alone and not in bulk_done, so the per-row path below
            # skips it until the next pass.
            bulk_done = self._bulk_insert(db, pending)
            # The rows the compare-and-set below reads, read together (each item's own
            # row is only written by its own turn of the loop, so they cannot change).
            cur_rows = idx.memory_rows([
                it for it, plan, sides, new in pending
                if new is not None and it.kind == MEM and not _absent_in_index(plan, sides)], db)
            for it, plan, sides, new in pending:
                if new is not None and self._index_item(db, it, plan, sides, new, cur_rows, bulk_done):
                    states.append((it, new))
                    p.state[it] = new
            idx.put_states(db, states)
            if self.moved:
                idx.set_meta(db, cache_owed="1")  # with the rows it is owed for; see commit.py
            idx.clear_meta(db, "export_intents")  # see intents.py
        self._remove_copies(pending, {it for it, _ in states})

    def _remove_copies(self, pending: list[Pending], done: set[ItemId]) -> None:
        """Syncthing's conflict copies of the items just committed: their versions are
        recorded now (the winner on every side, a loser in the conflict history), so the
        copies go (R2: never before).  Only by a node that may write the item's scope."""
        policy = self.node.policy
        copies = [c for it, _, sides, _ in pending if it in done and policy.writable(it)
                  for o in sides.values() if o.payload is not None for c in o.payload.conflict_copies()]
        for rel in share_write.remove_copies(self.node.share, copies) if copies else ():
            log.info("conflict copy %s folded: its version is recorded", rel)

    def _index_item(self, db: sqlite3.Connection, it: ItemId, plan: Plan, sides: dict[str, Obs], new: State,
                    cur_rows: dict[ItemId, MemoryRow], bulk_done: set[ItemId]) -> bool:
        """One item's row, compare-and-set; True when its new state is to be written."""
        idx, p = self.node.index, self.p
        win = plan.winner
        assert win is not None
        ix = sides.get(INDEX)
        seen_sig = None
        if ix is not None and ix.version is not None:
            seen_sig = ix.payload.row_sig() if ix.payload is not None else (
                p.state[it].row_sig if it in p.state else None)
        # A row we saw absent is inserted with ON CONFLICT DO NOTHING below, which
        # is its own compare-and-set: no read needed (the bulk-import path).
        fast_insert = it.kind == MEM and _absent_in_index(plan, sides)
        if fast_insert:
            cur_sig = None
        elif it.kind == MEM:
            r = cur_rows.get(it)
            cur_sig = r.sig if r is not None else None
        else:
            cur_sig = idx.current_row_sig(db, it)
        if ix is not None and cur_sig != seen_sig:
            # A foreign write landed since we looked: the row waits for the next
            # pass.  An export of the row we saw, now on the share, is the base all
            # the same, or it looks concurrent with the row's newer write and, within
            # the same second, could beat it: a committed write lost (R1, R2).
            if SHARE in plan.write and plan.source == INDEX:
                new.row_sig = seen_sig
                return True
            return False
        src = _source(plan, sides)
        if win.deleted:
            if cur_sig is not None:
                rid = idx.delete_row(db, it)
                if rid is not None:
                    self.node.cache_writer.dirty_ids.add(rid)
                p.stats.to_index += 1
            row_sig = None
            p.stats.deleted += 1 if base_live(p.state.get(it)) else 0
        else:
            row_sig, wrote = write_row(idx, db, it, win, src, ix.version if ix is not None else None,
                                       cur_sig, fast_insert, bulk_done)
            if row_sig is SKIP:
                return False
            p.stats.to_index += wrote
        new.row_sig = row_sig
        self._record_move(db, it, plan, win, src)
        return True

    def _record_move(self, db: sqlite3.Connection, it: ItemId, plan: Plan, win: Version,
                     src: Payload | None) -> None:
        """What the pass reports and the cache refresh needs of an item that changed;
        the versions it beat go to the conflict history."""
        p, idx = self.p, self.node.index
        old = p.state.get(it)
        moved = old is None or not base_of(old).same(win)
        if moved:
            if len(p.stats.changed) < CHANGED_SAMPLE:
                p.stats.changed.append(str(it))
            if it.kind == MEM and not win.deleted and (old is None or old.deleted):
                p.young_added.add(cache_key(it))
            if it.kind == MEM and old is not None and not old.deleted:
                p.cache_replaced.setdefault(cache_key(it), [old.digest, old.stamp // 1000, old.node])
        if moved and self.node.policy.readable(it):
            self.moved = True
            if it.kind == MEM:
                p.changed_mem = True
            else:
                got = src.skill_row() if src is not None else None
                p.changed_skills[it.key] = (None if win.deleted else
                                            got[0] if got is not None else idx.skill_content(db, it.key))
        kept = self.records.get(it, {})
        for side, v, payload in plan.beaten:
            idx.add_conflict(db, it, side, v.stamp, v.node, payload.loser_text() if payload is not None else None,
                             win.stamp, win.node, win.deleted, kept.get((v.stamp, v.node, v.digest)))
            p.stats.conflicts += 1
            log.warning("conflict on %s: version from %s (%s) beaten by %s (%s)", it, v.node,
                        _fmt_ms(v.stamp), win.node, _fmt_ms(win.stamp))

    def _bulk_insert(self, db: sqlite3.Connection, pending: list[Pending]) -> set[ItemId]:
        """Insert in one statement the memory rows of ``pending`` that the index did not
        have when we looked (the bulk-import path of _commit_index).  Returns the items
        inserted.  A row a foreign client inserted since we looked is left as it is (ON
        CONFLICT DO NOTHING) and its item is not returned: the per-row compare-and-set
        then skips it, and the next pass syncs the foreign row."""
        rows: dict[ItemId, tuple[str, str, str, str, int]] = {}
        for it, plan, sides, new in pending:
            win = plan.winner
            if new is None or win is None or it.kind != MEM or not _absent_in_index(plan, sides):
                continue
            src = _source(plan, sides)
            text = src.mem_text() if src is not None else None
            if text is not None:
                rows[it] = (it.scope, it.key, text, win.node, win.stamp // 1000)
        if len(rows) < 2:
            return set()
        got = self.node.index.insert_new_memory_rows(db, rows)
        if len(got) != len(rows):
            log.debug("bulk insert: %d of %d rows appeared meanwhile and were left alone",
                      len(rows) - len(got), len(rows))
        faults.hit("propagate.bulk_inserted", got, pending)
        return got
