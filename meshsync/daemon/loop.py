"""``meshsync run``: the long-running node.

One thread does all syncing; the change sources (``sources.py``) only say *which items*
may have changed:

* the share: watchdog events (events mode) or the other nodes' journals every
  ``watch.poll_interval`` (poll mode), plus a full rescan every ``watch.rescan_interval``
  for edits made by hosts that run no meshsync;
* the index: ``PRAGMA data_version`` (a counter bumped by other connections' commits,
  no table read) checked every 50 ms, then the trigger-fed outbox says which items;
* the cache: the signature of mesh-memory.json and of its skills folder.

Changes are coalesced: the loop waits until no new change arrived for ``watch.debounce``
seconds (at most 1 s in all), then runs one targeted pass for the whole burst, so a
burst of 1,000 writes costs one cache rewrite, not 1,000.

Each turn of the loop (:meth:`Daemon.run`) reads as its steps: stop if asked, feed the
watchdog, reload if asked, collect news from the sources, then run a full pass if one
is due, else the waiting batch if its debounce is over, else wait for the next event or
tick.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from typing import Any

import orjson

from meshsync import config, logs
from meshsync.config import Settings
from meshsync.daemon.notify import Notifier
from meshsync.daemon.retry import Faults
from meshsync.daemon.sources import (
    CacheWrites,
    Changes,
    ChangeSource,
    IndexWrites,
    OtherJournals,
    ShareFileEvents,
    Tick,
)
from meshsync.daemon.watch import ShareEvents, choose_mode
from meshsync.diagnose import index_problem
from meshsync.engine.detect import wal_repaired
from meshsync.engine.node import Node
from meshsync.exits import EXIT_FAULT
from meshsync.layout import ItemId
from meshsync.lock import IndexLock, Locked
from meshsync.replicas.index import queries
from meshsync.replicas.index.store import IndexError_, IndexGone, unusable
from meshsync.replicas.share import journal
from meshsync.replicas.share.store import ShareUnavailable

log = logging.getLogger("meshsync")

INDEX_TICK = 0.05
BEAT_S = 10.0  # seconds between heartbeats in the index (status: probes.BEAT_STALE_S)
LOCK_WAIT = 5.0  # seconds `meshsync run` waits for a CLI command holding the index lock
MAX_DELAY = 1.0

__all__ = ["Daemon", "Notifier", "run", "INDEX_TICK", "LOCK_WAIT", "MAX_DELAY"]


class Daemon:
    def __init__(self, settings: Settings, config_path: str | None):
        self.s = settings
        self.config_path = config_path
        self.stop = threading.Event()
        self.stop_signal: int | None = None  # set by the SIGTERM/SIGINT handler (see _on_stop)
        self.reload = False
        self.reload_refused: str | None = None  # why the last reload was refused (None: it was not)
        self.base_status = "starting"
        self.notify = Notifier()
        self.node = Node(settings)
        # Long passes tick the progress hook: keep systemd's watchdog fed meanwhile, and
        # show a progress line when started at a terminal (never in a log or journald).
        self.progress = logs.Progress() if sys.stderr.isatty() else None

        def tick(what: str, done: int, total: int | None) -> None:
            self.notify.ping()
            self.notify.starting(what, done, total)  # the first pass: extends the start timeout
            self._beat()
            if self.progress is not None:
                self.progress(what, done, total)

        self.node.progress = tick
        self.mode, self.why = choose_mode(settings.watch.mode, settings.share)
        self.events = ShareEvents(settings.share, settings.node_id)
        self.journal = journal.JournalReader(settings.share, settings.node_id)
        self.cache_writes = CacheWrites(self.node)
        self.sources: list[ChangeSource] = [ShareFileEvents(self.events), OtherJournals(self.journal, self.events),
                                            IndexWrites(self.node), self.cache_writes]
        self.available: bool | None = None
        self.unavailable_why = ""  # the reason last told, while the share is unavailable
        self.pending: set[ItemId] = set()
        self.need_full = True
        self.first_change = 0.0
        self.last_change = 0.0
        self.last_full = 0.0
        self.last_poll = 0.0
        self.cache_dirty = False
        # Items a pass left because their file changed between its read and its write
        # (see _after_pass): run the next pass now.  Never twice in a row.
        self.retry_now = False
        self.retried = False
        self.last_beat = 0.0  # time.monotonic() of the last heartbeat written (see _beat)
        # Exports, cache or journal writes and whole passes that a resource fault stopped:
        # tried again on a timer with backoff, not only at the next full rescan (R12).
        self.faults = Faults()
        self.later: set[ItemId] = set()  # items still changing after the retry at once: next poll tick

    # --- signals -------------------------------------------------------------------------

    # A handler runs in the main thread between two bytecodes, possibly while that thread
    # holds a threading lock (inside events.wake.wait() or .clear()): taking one here
    # (Event.set) deadlocked the daemon on SIGTERM (found by the chaos test).  Handlers
    # only set plain attributes; the loop looks at them at least every INDEX_TICK.

    def _on_stop(self, signum: int, frame: Any) -> None:
        self.stop_signal = signum

    def _on_hup(self, signum: int, frame: Any) -> None:
        self.reload = True

    def _do_reload(self) -> None:
        """SIGHUP: re-read the configuration and apply it, or keep the running one and
        say why.  systemd sees RELOADING=1 ... READY=1 around it, with STATUS= telling a
        refusal; the outcome is recorded in the index, where `meshsync reload` (the
        units' ExecReload=) waits for it and fails with the reason: systemd 252 has no
        notification for a failed reload, only a failed ExecReload=."""
        self.reload = False
        self.notify.reloading()
        refused = self._reload_settings()
        self.reload_refused = refused
        self._record_reload(refused)
        if refused:
            self.notify.reloaded(f"reload refused, previous settings kept: {refused}")
        else:
            self.notify.reloaded(self._status_line())

    def _reload_settings(self) -> str | None:
        """Load and apply the configuration; None when applied, else why not."""
        try:
            new = config.load(self.config_path)
        except config.ConfigError as exc:
            why = str(exc).replace("\n", " ")
            log.error("SIGHUP: configuration not reloaded, keeping the running one: %s", why)
            return why
        fixed = [k for k in ("node_id", "share", "index", "openclaw_home") if getattr(new, k) != getattr(self.s, k)]
        if fixed:
            log.error("SIGHUP: %s cannot change while running; restart the service to apply it. "
                      "Other settings were not reloaded either.", ", ".join(fixed))
            return f"{', '.join(fixed)} cannot change while running; restart the service to apply it"
        self.s = new
        self.node.s = new
        old_mode = self.mode
        self.mode, self.why = choose_mode(new.watch.mode, new.share)
        log.info("SIGHUP: configuration reloaded (watch mode %s)", self.mode)
        if self.mode != old_mode:
            self._start_watch()
        self.need_full = True
        return None

    def _record_reload(self, refused: str | None) -> None:
        """The reload's outcome in the index (meta last_reload), numbered, for `meshsync
        reload` and `status`."""
        try:
            prev = orjson.loads(self.node.index.meta("last_reload") or "{}")
            seq = prev.get("seq", 0) + 1 if isinstance(prev, dict) and isinstance(prev.get("seq"), int) else 1
            with self.node.index.write() as db:
                self.node.index.set_meta(db, last_reload=orjson.dumps({
                    "seq": seq, "pid": os.getpid(), "at": time.time(), "ok": refused is None,
                    "reason": refused}).decode())
        except (queries.Error, orjson.JSONDecodeError) as exc:
            log.warning("cannot record the reload's outcome in the index: %s", exc)

    def _status_line(self, text: str | None = None) -> str:
        """The unit's status line: ``text`` (or the last one), with a refused reload
        noted until a reload succeeds."""
        if text is not None:
            self.base_status = text
        if self.reload_refused:
            return f"{self.base_status}; last reload refused, previous settings kept (see the log)"
        return self.base_status

    # --- watching and the share's availability --------------------------------------------

    def _start_watch(self) -> None:
        if self.mode == "events":
            try:
                self.events.start()
            except OSError as exc:
                log.warning("cannot watch %s for events (%s): polling instead", self.s.share, exc)
                self.mode, self.why = "poll", f"events unavailable: {exc}"
        else:
            self.events.stop()
        self._record_watch()

    def _record_watch(self) -> None:
        try:
            with self.node.index.write() as db:
                self.node.index.set_meta(db, daemon_watch=orjson.dumps({
                    "mode": self.mode, "why": self.why, "pid": os.getpid(), "started": time.time(),
                    "poll_interval": self.s.watch.poll_interval, "rescan_interval": self.s.watch.rescan_interval,
                }).decode())
        except sqlite3.Error as exc:  # a locked or full index: status shows the watch mode planned
            if unusable(exc):
                raise
            log.debug("watch mode not recorded: %s", exc)

    def _unavailable(self, exc: ShareUnavailable) -> None:
        # Told when the share goes, and again when the reason changes while it is away (an
        # unmounted NAS whose mount point is then removed): the log and `status` say why
        # it is unavailable now, not why it was at first (R5).
        if self.available is not False or str(exc) != self.unavailable_why:
            log.warning("share unavailable: %s; nothing will be deleted, retrying every %gs",
                        exc, self.s.watch.poll_interval)
            try:
                self.node.record_unavailable(str(exc))
            except sqlite3.Error as err:
                if unusable(err):
                    raise
            if self.available is not False:
                self.events.stop()
        self.available = False
        self.unavailable_why = str(exc)
        self.need_full = True
        self.notify.status(self._status_line(f"share unavailable: {exc}"))

    def _resumed(self) -> bool:
        """Before a pass while the share was unavailable: whether it is back (R5)."""
        try:
            self.node.share.check()
        except ShareUnavailable as exc:
            self._unavailable(exc)
            return False
        log.info("share available again: resuming")
        self._start_watch()
        self.available = True
        return True

    # --- passes ------------------------------------------------------------------------------

    def _pass(self, items: set[ItemId] | None) -> None:
        """One pass: of ``items``, or a full one (None)."""
        try:
            # Say so before the pass that resumes: its results are visible to others
            # (index, cache) before it returns.
            if self.available is False and not self._resumed():
                return
            try:
                stats = self.node.sync(items)
            except ShareUnavailable as exc:
                self._unavailable(exc)
                return
            except (sqlite3.Error, OSError, IndexError_) as exc:
                self._pass_failed(items, exc)
                return
            self.available = True
            self._after_pass(stats, full=items is None)
        finally:
            if self.progress is not None:
                self.progress.done()

    def _after_pass(self, stats: Any, full: bool) -> None:
        self._retry_deferred()
        self.faults.after_pass(self.node.retry, self.node.faults, time.monotonic())
        if stats.cache_written:
            # Our own rewrite of mesh-memory.json is not a tool's write: without this the
            # next tick saw the new signature and ran another pass for nothing.
            self.cache_writes.own_write(self.node.index.meta("cache_sig") or None)
        if full:
            self.last_full = time.monotonic()
            self.need_full = False
        done = stats.to_share + stats.to_index + stats.deleted
        if done or stats.conflicts:
            log.info("synced %d item(s): %d to the share, %d to the index, %d deleted, %d conflict(s)%s",
                     stats.reconciled, stats.to_share, stats.to_index, stats.deleted, stats.conflicts,
                     ", cache rewritten" if stats.cache_written else "")
        elif stats.full:
            log.debug("full pass: no change (%d items, %.2fs)", stats.scanned, stats.seconds)
        c = stats.errors
        faults = self.faults.reasons()
        self.notify.status(self._status_line(
            f"fault: {'; '.join(faults)}; retrying" if faults else
            f"watching ({self.mode}); last sync {time.strftime('%H:%M:%S')}"
            + (f"; {c} problem(s), see meshsync status" if c else "")))

    def _pass_failed(self, items: set[ItemId] | None, exc: Exception) -> None:
        """A pass stopped by an index or OS error: retried later with backoff (R12); an
        index that cannot be used any more (damaged, deleted) stops the daemon."""
        if unusable(exc):
            raise exc
        self.node.index.rollback()
        reason = index_problem(exc, self.s.index_busy_timeout)
        self.faults.pass_failed(items, reason, time.monotonic())
        self.notify.status(self._status_line(f"fault: {reason}; retrying"))

    def _retry_deferred(self) -> None:
        """Items the pass left because their file changed between its read and its write
        (most often another node writing its normalised copy of the same hand edit just
        before us): looked at again at once.  Waiting for that write's events and a
        debounce cost a fifth of the hand edits 100 ms more; a file that keeps changing
        waits as usual next time."""
        if self.node.deferred and not self.retried:
            log.debug("looking again at once at %d item(s) changed while this pass wrote them",
                      len(self.node.deferred))
            if not self.pending and not self.cache_dirty:
                self.first_change = time.monotonic()
            self.pending.update(self.node.deferred)
            self.retry_now = self.retried = True
        else:
            # Still changing: looked at again at the next poll tick.  Without it, a poll-mode
            # node (no events) left such an item until the next rescan, minutes away, out
            # of step with the share (R1; a network mount's attribute cache makes a read
            # look changed for about a second after another host's write).
            self.later.update(self.node.deferred)
            self.retried = False

    # --- collecting news ---------------------------------------------------------------------

    def _tick(self) -> Tick:
        """Now, whether a poll tick is due and, on one, the share's O(1) check (its root
        and marker, R5)."""
        now = time.monotonic()
        poll = now - self.last_poll >= self.s.watch.poll_interval
        if poll:
            self.last_poll = now
            if self.node.index.check_file():  # deleted or replaced under us: IndexGone stops the daemon (R12)
                wal_repaired(self.node)
            if self.available:
                try:
                    self.node.share.check()
                except ShareUnavailable as exc:
                    self._unavailable(exc)
        return Tick(now=now, poll=poll, share_available=bool(self.available), polling=self.mode == "poll")

    def _collect(self) -> None:
        """Ask every source what changed and add it to the waiting batch."""
        tick = self._tick()
        news = Changes()
        for source in self.sources:
            news.add(source.changes(tick))
        if tick.poll and self.later:
            news.items |= self.later
            self.later = set()
        ri = self.s.watch.rescan_interval
        if ri and tick.now - self.last_full >= ri:
            news.full = True
        items, again = self.faults.due(tick.now)
        news.items |= items
        news.cache = news.cache or again  # a pass without items: the cache, the journal, a failed pass
        if news:
            # Only news moves the debounce clock: a change already waiting must not
            # postpone itself tick after tick.
            if not self.pending and not self.cache_dirty:
                self.first_change = tick.now
            self.cache_dirty = self.cache_dirty or news.cache
            self.pending |= news.items
            self.last_change = tick.now
            self.need_full = self.need_full or news.full

    # --- the loop ----------------------------------------------------------------------------

    def _full_pass_due(self, now: float) -> bool:
        # While the share is unavailable, a full pass (which first checks it) at most
        # every poll interval.
        return self.need_full and (self.available is not False
                                   or now - self.last_full >= self.s.watch.poll_interval)

    def _batch_due(self, now: float) -> bool:
        return bool(self.pending or self.cache_dirty) and (
            self.retry_now or now - self.last_change >= self.s.watch.debounce
            or now - self.first_change >= MAX_DELAY)

    def _run_batch(self) -> None:
        batch, self.pending, self.cache_dirty = self.pending, set(), False
        self.retry_now = False
        if self.available:
            self._pass(batch)
        else:
            self.need_full = True

    def _wait(self, now: float) -> None:
        """Until the next tick, an event, or the end of the waiting batch's debounce (not
        the next tick after it: ticks alone added up to 50 ms to every change's latency)."""
        timeout = self.faults.wait(now, INDEX_TICK)
        if self.pending or self.cache_dirty:
            due = min(self.last_change + self.s.watch.debounce, self.first_change + MAX_DELAY)
            timeout = min(timeout, max(0.0, due - now))
        self.events.wake.wait(timeout)
        self.events.wake.clear()

    def _beat(self) -> None:
        """Record that the daemon's loop turns (at most every BEAT_S): status and doctor
        tell a live daemon from one that holds its lock but is stopped or hung (R12)."""
        now = time.monotonic()
        if now - self.last_beat < BEAT_S or self.faults.passes.failing or self.node.index.db.in_transaction:
            return
        self.last_beat = now
        try:
            with self.node.index.write() as db:
                self.node.index.set_meta(db, daemon_beat=str(time.time()))
        except sqlite3.Error as exc:
            if unusable(exc):
                raise
            log.debug("heartbeat not recorded: %s", exc)

    def _stop_requested(self) -> bool:
        if self.stop_signal is not None:
            log.info("received %s: finishing the work in flight", signal.Signals(self.stop_signal).name)
            self.stop.set()
        return self.stop.is_set()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        log.info("meshsync %s starting: node %s, share %s, watch %s (%s)", _version(), self.s.node_id,
                 self.s.share, self.mode, self.why)
        self.notify.status("starting: first full pass")
        self._start_watch()
        self._pass(None)
        self.notify.ready()
        if self.available:
            log.info("ready: first pass done, watching for changes")
        while not self._stop_requested():
            self.notify.ping()
            self._beat()
            if self.reload:
                self._do_reload()
            self._collect()
            now = time.monotonic()
            if self.faults.blocked(now):
                self._wait(now)  # a pass fault lasts: nothing runs before its retry (R12)
            elif self._full_pass_due(now):
                self.pending.clear()
                self.last_full = now
                self._pass(None)
            elif self._batch_due(now):
                self._run_batch()
            else:
                self._wait(now)
        self.notify.send(STOPPING=1)
        self.events.stop()
        if self.pending and self.available:
            self._pass(self.pending)
        log.info("stopped")
        return 0


def _version() -> str:
    from meshsync import __version__

    return __version__


def run(settings: Settings, config_path: str | None = None) -> int:
    lock = IndexLock(settings.index)
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            lock.acquire()
            break
        except PermissionError:
            raise  # another user's lock file or folder: the wrong-user message, exit 2 (cli/main.py, R11)
        except OSError as exc:  # the index's folder cannot be made or written
            print(f"meshsync: cannot create the index's folder {settings.index.parent}: {exc.strerror}",
                  file=sys.stderr)
            return EXIT_FAULT
        except Locked as exc:
            # A CLI command exporting its write (or `status` probing the lock) holds it
            # for a moment: wait for that rather than exit; a CLI write made while the
            # daemon started made it exit 5 (found by the chaos test).  A running daemon
            # holds the lock for good: refused once LOCK_WAIT has passed.
            if time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            print(f"meshsync: another meshsync process (pid {exc.pid or '?'}) is already running on index "
                  f"{settings.index}; two writers would race. Stop it first (systemctl stop meshsync).",
                  file=sys.stderr)
            return 5
    try:
        try:
            d = Daemon(settings, config_path)
        except IndexError_ as exc:
            print(f"meshsync: {exc}", file=sys.stderr)
            return EXIT_FAULT
        try:
            return _run_checked(d, settings)
        finally:
            d.events.stop()
            d.notify.close()
            d.node.close()
    finally:
        lock.release()


def _run_checked(d: Daemon, settings: Settings) -> int:
    """Run the daemon on an index that is sound; stop once, with exit code 6 (which the
    units do not restart on), when it is damaged, deleted or replaced (R12): a restart
    loop would change nothing, and writing on into a file nobody reads loses work."""
    try:
        damage = d.node.index.quick_check()
        if damage:
            raise sqlite3.DatabaseError(f"database disk image is malformed (PRAGMA quick_check: {damage})")
        return d.run()
    except (IndexError_, sqlite3.DatabaseError) as exc:
        if not unusable(exc):
            raise
        d.notify.send(STATUS=f"stopped: the index cannot be used: {exc}")
        if isinstance(exc, IndexGone):
            log.error("stopping (exit 6): %s. Nothing more is written to it; run `meshsync init` (with the "
                      "daemon stopped it rebuilds the index from the share) and start the daemon again", exc)
        else:
            log.error("stopping (exit 6): the index %s cannot be used: %s. Stop the service, move the file "
                      "away, then `meshsync init` and `meshsync sync` rebuild it from the share "
                      "(docs/troubleshooting.md)", settings.index, exc)
        return EXIT_FAULT
