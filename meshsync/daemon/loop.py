"""``meshsync run``: the long-running node.

One thread does all syncing; detectors only collect *which items* may have changed:

* the share: watchdog events (events mode) or the other nodes' journals every
  ``watch.poll_interval`` (poll mode), plus a full rescan every ``watch.rescan_interval``
  for edits made by hosts that run no meshsync;
* the index: ``PRAGMA data_version`` (a counter bumped by other connections' commits,
  no table read) checked every 50 ms, then the trigger-fed outbox says which items.

Changes are coalesced: the loop waits until no new change arrived for ``watch.debounce``
seconds (at most 1 s in all), then runs one targeted pass for the whole burst, so a
burst of 1,000 writes costs one cache rewrite, not 1,000.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

import orjson

from meshsync import config, logs
from meshsync.config import Settings
from meshsync.daemon.watch import ShareEvents, choose_mode
from meshsync.engine.node import Node
from meshsync.layout import ItemId
from meshsync.lock import IndexLock, Locked
from meshsync.replicas.index.store import IndexError_
from meshsync.replicas.share import journal
from meshsync.replicas.share.store import ShareUnavailable

log = logging.getLogger("meshsync")

INDEX_TICK = 0.05
LOCK_WAIT = 5.0  # seconds `meshsync run` waits for a CLI command holding the index lock
MAX_DELAY = 1.0


class Notifier:
    """sd_notify(3) over $NOTIFY_SOCKET, without libsystemd."""

    def __init__(self) -> None:
        addr = os.environ.get("NOTIFY_SOCKET")
        self.sock: socket.socket | None = None
        self.addr: str | None = None
        if addr:
            if addr.startswith("@"):
                addr = "\0" + addr[1:]
            self.addr = addr
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        self.watchdog = (float(usec) / 1e6 / 2 if usec and usec.isdigit() and (not pid or pid == str(os.getpid()))
                         else None)
        self.last_ping = 0.0
        self.last_status = ""

    def send(self, **fields: Any) -> None:
        if self.sock is None or self.addr is None:
            return
        msg = "\n".join(f"{k}={v}" for k, v in fields.items())
        try:
            self.sock.sendto(msg.encode(), self.addr)
        except OSError as exc:
            log.debug("sd_notify failed: %s", exc)

    def status(self, text: str) -> None:
        if text != self.last_status:
            self.last_status = text
            self.send(STATUS=text)

    def ping(self) -> None:
        if self.watchdog is not None and time.monotonic() - self.last_ping >= self.watchdog:
            self.last_ping = time.monotonic()
            self.send(WATCHDOG=1)


class Daemon:
    def __init__(self, settings: Settings, config_path: str | None):
        self.s = settings
        self.config_path = config_path
        self.stop = threading.Event()
        self.stop_signal: int | None = None  # set by the SIGTERM/SIGINT handler (see _on_stop)
        self.reload = False
        self.notify = Notifier()
        self.node = Node(settings)
        # Long passes tick the progress hook: keep systemd's watchdog fed meanwhile, and
        # show a progress line when started at a terminal (never in a log or journald).
        self.progress = logs.Progress() if sys.stderr.isatty() else None

        def tick(what: str, done: int, total: int | None) -> None:
            self.notify.ping()
            if self.progress is not None:
                self.progress(what, done, total)

        self.node.progress = tick
        self.mode, self.why = choose_mode(settings.watch.mode, settings.share)
        self.events = ShareEvents(settings.share, settings.node_id)
        self.journal = journal.JournalReader(settings.share, settings.node_id)
        self.available: bool | None = None
        self.pending: set[ItemId] = set()
        self.need_full = True
        self.first_change = 0.0
        self.last_change = 0.0
        self.last_full = 0.0
        self.last_poll = 0.0
        self.data_version = self.node.index.data_version()
        self.cache_seen = self.node.cache.memory_sig()
        self.cache_skills_seen = self.node.cache_skills_sig()
        self.cache_dirty = False
        # Items a pass left because their file changed between its read and its write
        # (see _pass_inner): run the next pass now.  Never twice in a row.
        self.retry_now = False
        self.retried = False

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
        self.reload = False
        try:
            new = config.load(self.config_path)
        except config.ConfigError as exc:
            log.error("SIGHUP: configuration not reloaded, keeping the running one: %s", str(exc).replace("\n", " "))
            return
        fixed = [k for k in ("node_id", "share", "index", "openclaw_home") if getattr(new, k) != getattr(self.s, k)]
        if fixed:
            log.error("SIGHUP: %s cannot change while running; restart the service to apply it. "
                      "Other settings were not reloaded either.", ", ".join(fixed))
            return
        self.s = new
        self.node.s = new
        old_mode = self.mode
        self.mode, self.why = choose_mode(new.watch.mode, new.share)
        log.info("SIGHUP: configuration reloaded (watch mode %s)", self.mode)
        if self.mode != old_mode:
            self._start_watch()
        self.need_full = True

    # --- the loop ----------------------------------------------------------------------------

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
        with self.node.index.write() as db:
            self.node.index.set_meta(db, daemon_watch=orjson.dumps({
                "mode": self.mode, "why": self.why, "pid": os.getpid(), "started": time.time(),
                "poll_interval": self.s.watch.poll_interval, "rescan_interval": self.s.watch.rescan_interval,
            }).decode())

    def _unavailable(self, exc: ShareUnavailable) -> None:
        if self.available is not False:
            log.warning("share unavailable: %s; nothing will be deleted, retrying every %gs",
                        exc, self.s.watch.poll_interval)
            self.node.record_unavailable(str(exc))
            self.events.stop()
        self.available = False
        self.need_full = True
        self.notify.status(f"share unavailable: {exc}")

    def _pass(self, items: set[ItemId] | None) -> None:
        try:
            self._pass_inner(items)
        finally:
            if self.progress is not None:
                self.progress.done()

    def _pass_inner(self, items: set[ItemId] | None) -> None:
        if self.available is False:
            # Say so before the pass that resumes: its results are visible to others
            # (index, cache) before it returns.
            try:
                self.node.share.check()
            except ShareUnavailable as exc:
                self._unavailable(exc)
                return
            log.info("share available again: resuming")
            self._start_watch()
            self.available = True
        try:
            stats = self.node.sync(items)
        except ShareUnavailable as exc:
            self._unavailable(exc)
            return
        self.available = True
        if self.node.deferred and not self.retried:
            # Changed on the share between our read and our write: most often another
            # node writing its normalised copy of the same hand edit just before us.
            # Waiting for that write's events and a debounce cost a fifth of the hand
            # edits 100 ms more; a file that keeps changing waits as usual next time.
            log.debug("looking again at once at %d item(s) changed while this pass wrote them",
                      len(self.node.deferred))
            if not self.pending and not self.cache_dirty:
                self.first_change = time.monotonic()
            self.pending.update(self.node.deferred)
            self.retry_now = self.retried = True
        else:
            self.retried = False
        if stats.cache_written:
            # Our own rewrite of mesh-memory.json is not a tool's write: without this the
            # next tick saw the new signature and ran another pass for nothing.  A tool
            # writing after us changes the signature again and is noticed as before.
            self.cache_seen = self.node.index.meta("cache_sig") or None
        if items is None:
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
        self.notify.status(f"watching ({self.mode}); last sync {time.strftime('%H:%M:%S')}"
                           + (f"; {c} problem(s), see meshsync status" if c else ""))

    def _collect(self) -> None:
        now = time.monotonic()
        items, full, jr = self.events.take()
        poll_tick = now - self.last_poll >= self.s.watch.poll_interval
        if poll_tick:
            self.last_poll = now
            jr = jr or self.mode == "poll"
            if self.available:
                try:
                    self.node.share.check()  # O(1): the root and its marker (R5)
                except ShareUnavailable as exc:
                    self._unavailable(exc)
        if jr and self.available:
            more, jfull = self.journal.poll()
            items |= more
            full = full or jfull
        try:
            dv = self.node.index.data_version()
        except Exception as exc:  # the index file vanished or is locked for long
            log.error("cannot read the index: %s", exc)
            dv = self.data_version
        if dv != self.data_version:
            self.data_version = dv
            _, out = self.node.index.outbox()
            items |= out
        cache_news = False
        if self.s.cache.writable:
            # A Phase 1 tool writing the cache: one stat per tick, the skills folder
            # once per poll interval (see cacheside.py).
            csig = self.node.cache.memory_sig()
            ssig = self.cache_skills_seen
            if poll_tick:
                ssig = self.node.cache_skills_sig()
            if csig != self.cache_seen or ssig != self.cache_skills_seen:
                self.cache_seen, self.cache_skills_seen = csig, ssig
                cache_news = True
        ri = self.s.watch.rescan_interval
        if ri and now - self.last_full >= ri:
            full = True
        if items or full or cache_news:
            # Only news moves the debounce clock: a change already waiting must not
            # postpone itself tick after tick.
            if not self.pending and not self.cache_dirty:
                self.first_change = now
            self.cache_dirty = self.cache_dirty or cache_news
            self.pending |= items
            self.last_change = now
            self.need_full = self.need_full or full

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        log.info("meshsync %s starting: node %s, share %s, watch %s (%s)", _version(), self.s.node_id,
                 self.s.share, self.mode, self.why)
        self.notify.status("starting: first full pass")
        self._start_watch()
        self._pass(None)
        self.notify.send(READY=1)
        if self.available:
            log.info("ready: first pass done, watching for changes")
        debounce = self.s.watch.debounce
        while not self.stop.is_set():
            if self.stop_signal is not None:
                log.info("received %s: finishing the work in flight", signal.Signals(self.stop_signal).name)
                self.stop.set()
                break
            self.notify.ping()
            if self.reload:
                self._do_reload()
            self._collect()
            now = time.monotonic()
            if self.need_full and (self.available is not False
                                   or now - self.last_full >= self.s.watch.poll_interval):
                self.pending.clear()
                self.last_full = now
                self._pass(None)
                continue
            if (self.pending or self.cache_dirty) and (self.retry_now or now - self.last_change >= debounce
                                                       or now - self.first_change >= MAX_DELAY):
                batch, self.pending, self.cache_dirty = self.pending, set(), False
                self.retry_now = False
                if self.available:
                    self._pass(batch)
                else:
                    self.need_full = True
                continue
            # Wake when the debounce of waiting news ends, not at the next tick after it:
            # ticks alone added up to a tick (50 ms) to every change's latency.
            timeout = INDEX_TICK
            if self.pending or self.cache_dirty:
                due = min(self.last_change + debounce, self.first_change + MAX_DELAY)
                timeout = min(timeout, max(0.0, due - now))
            self.events.wake.wait(timeout)
            self.events.wake.clear()
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
            return 2
        try:
            return d.run()
        finally:
            d.node.close()
    finally:
        lock.release()
