"""The share's history: versions that lost a conflict and the last values of deleted items.

R11: a mistake made on one node (or on the share itself) can be undone from any node.
The history therefore lives on the share, not in the index of the node that happened to
see the conflict or apply the delete::

    .meshsync/history/<yyyy-mm>/<why>-<id>.json             shared scopes and skills
    .meshsync/history/node/<node_id>/<yyyy-mm>/<why>-<id>.json   scope "node": its owner's only

One immutable file per record (formats.render_history), written atomically and only if
absent.  Its ``id`` is derived from what it keeps (why, item, version), so every node that
records the same beaten version or the same deleted value writes the same file, and a
person types the same ID on every node.  The month folder is the month the record was
written in: a record written again in a later month by another node is the same ID in
two folders, listed once.  Retention removes whole month folders (no file is read).

Nothing here runs on a pass that changes nothing: records are written when a pass beats
or deletes a version, listed on demand (`meshsync conflicts`, `deleted`, `status`), and
pruned at most once an hour by a full pass.  On a Syncthing folder a full pass also looks
for Syncthing's conflict copies of records (fold_copies): one stat per month folder, a
listing only of the folders that changed since the last one.
"""

from __future__ import annotations

import calendar
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from meshsync import formats, layout
from meshsync.formats import FormatError, HistoryRecord
from meshsync.layout import HISTORY, ItemId
from meshsync.payloads import absent
from meshsync.replicas.share.store import Changed, FileRefused, Share
from meshsync.replicas.share.walk import CONFLICT_MARK, SETTLE_NS

MONTH = re.compile(r"\d{4}-\d{2}")
NAME = re.compile(r"(beaten|deleted)-([0-9a-f]{12})\.json")
MIN_PREFIX = 4  # the shortest ID prefix `meshsync restore` accepts


def month_of(ms: int) -> str:
    return time.strftime("%Y-%m", time.gmtime(ms / 1000))


def month_end_ms(month: str) -> int:
    """The first millisecond after ``month`` (UTC)."""
    y, m = int(month[:4]), int(month[5:])
    y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return calendar.timegm((y, m, 1, 0, 0, 0)) * 1000


@dataclass
class Listing:
    """What a walk of the history found: records (one per ID, newest first) and the
    files that could not be read as records (path, reason)."""

    records: list[HistoryRecord] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)


class History:
    """One node's view of the share's history."""

    def __init__(self, share: Share, node: str) -> None:
        self.share = share
        self.node = node
        self.own = f"{HISTORY}/node/{layout.encode(node)}"
        # Month folders fold_copies listed and found without a copy, with the signature
        # they had (see fold_copies); and how many it listed last time (tests, benchmarks).
        self.clean: dict[str, tuple[int, int, int, int]] = {}
        self.listed = 0

    # --- writing -----------------------------------------------------------------------

    def folder(self, owner: str) -> str:
        return HISTORY if not owner else f"{HISTORY}/node/{layout.encode(owner)}"

    def keep(self, rec: HistoryRecord) -> str:
        """Write ``rec`` unless a record with its ID is there already (another node kept
        the same version); returns its path.  Raises OSError or FileRefused when it cannot
        be written: the caller must not let the version go then (R2, R11)."""
        rel = f"{self.folder(rec.owner)}/{month_of(rec.recorded_at)}/{rec.why}-{rec.id}.json"
        if self.share.lstat(rel) is not None:
            return rel
        try:
            self.share.write(rel, formats.render_history(rec), absent)
        except Changed:
            pass  # another node wrote the same record meanwhile
        return rel

    # --- reading ------------------------------------------------------------------------

    def _months(self, base: str) -> list[str]:
        try:
            names = os.listdir(self.share.root / base)
        except OSError:
            return []
        return sorted((n for n in names if MONTH.fullmatch(n)), reverse=True)

    def files(self) -> Iterator[tuple[str, str, str]]:
        """(path, why, id) of every record this node may read, newest month first."""
        for base in (HISTORY, self.own):
            for month in self._months(base):
                d = f"{base}/{month}"
                try:
                    names = os.listdir(self.share.root / d)
                except OSError:
                    continue
                for name in sorted(names):
                    m = NAME.fullmatch(name)
                    if m:
                        yield f"{d}/{name}", m.group(1), m.group(2)

    def counts(self, readable: Callable[[ItemId], bool] | None = None) -> dict[str, int]:
        """How many records of each kind (file names only, no file read, unless a scope
        filter must look inside)."""
        if readable is not None:
            got = self.list(readable=readable).records
            return {w: sum(1 for r in got if r.why == w) for w in formats.HISTORY_WHY}
        ids: dict[str, set[str]] = {w: set() for w in formats.HISTORY_WHY}
        for _rel, why, rid in self.files():
            ids[why].add(rid)
        return {w: len(s) for w, s in ids.items()}

    def list(self, why: str | None = None, readable: Callable[[ItemId], bool] | None = None,
             prefix: str = "", limit: int | None = None) -> Listing:
        """The records (of ``why``, whose ID starts with ``prefix``), newest first, one per
        ID, at most ``limit``; only items ``readable`` by this node (R9).  Files are read
        newest first (records are never rewritten: their mtime is when they were kept),
        so a short listing reads few of them."""
        out = Listing()
        found = []
        for rel, w, rid in self.files():
            if (why is None or w == why) and rid.startswith(prefix):
                st = self.share.lstat(rel)
                found.append((st.st_mtime_ns if st is not None else 0, rel, w, rid))
        found.sort(reverse=True)
        seen: set[str] = set()
        for _mt, rel, w, rid in found:
            if rid in seen:
                continue
            if limit is not None and len(out.records) >= limit:
                break
            try:
                data, _ = self.share.read(rel)
                rec = formats.parse_history(data)
            except (FileRefused, FormatError, OSError) as exc:
                reason = exc.problem.reason if isinstance(exc, FileRefused) else str(exc)
                out.unreadable.append((rel, reason))
                continue
            if rec.id != rid or rec.why != w:
                out.unreadable.append((rel, "its id or kind does not match its file name"))
                continue
            if (rec.owner and rec.owner != self.node) or (readable is not None and not readable(rec.item)):
                continue
            seen.add(rid)
            out.records.append(rec)
        out.records.sort(key=lambda r: (r.recorded_at, r.id), reverse=True)
        return out

    # --- Syncthing -------------------------------------------------------------------------

    def fold_copies(self, now_ns: int | None = None) -> int:
        """Remove Syncthing's conflict copies of records (two nodes apart kept the same
        version: one record name, two files); returns how many.  A record's name is the
        version it keeps, so the copy keeps nothing the record does not.  A copy whose
        record is gone is put back under the record's name first (R2, R11).

        Runs on every full pass of a Syncthing folder, where the history holds a file per
        record (a year of it: thousands): a month folder whose signature (mtime, ctime,
        inode, device) is the one it had when it was last listed and held no copy is not
        listed again.  A copy arriving creates or renames an entry there, which moves the
        folder's mtime and ctime (a ``touch`` back of the mtime still moves the ctime);
        a folder changed in the last SETTLE_NS is listed again on the next pass, as the
        walk does with files (a change within the same clock tick keeps the mtime)."""
        now = time.time_ns() if now_ns is None else now_ns
        n, listed, clean = 0, 0, {}
        for base in (HISTORY, self.own):
            for month in self._months(base):
                d = f"{base}/{month}"
                try:
                    st = self.share.lstat(d)
                except OSError:
                    st = None
                sig = None if st is None else (st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
                if sig is not None and self.clean.get(d) == sig:
                    clean[d] = sig
                    continue
                listed += 1
                folded, left = self._fold_folder(d)
                n += folded
                if sig is not None and not folded and not left and now - max(sig[0], sig[1]) > SETTLE_NS:
                    clean[d] = sig  # signature taken before the listing: a later change moves it
        self.clean, self.listed = clean, listed
        return n

    def _fold_folder(self, d: str) -> tuple[int, bool]:
        """fold_copies in one month folder: (copies removed, whether any was left for the
        next pass or the folder could not be listed)."""
        try:
            names = set(os.listdir(self.share.root / d))
        except OSError:
            return 0, True
        n, left = 0, False
        for name in sorted(names):
            if CONFLICT_MARK not in name or name.startswith("."):
                continue
            orig = name.split(CONFLICT_MARK, 1)[0] + ".json"
            if not NAME.fullmatch(orig):
                continue
            try:
                if orig not in names:
                    data, _ = self.share.read(f"{d}/{name}")
                    self.share.write(f"{d}/{orig}", data, absent)
                    names.add(orig)
                self.share.remove(f"{d}/{name}")
                n += 1
            except (FileRefused, Changed, OSError):
                left = True  # looked at again at the next full pass
        return n, left

    # --- retention ------------------------------------------------------------------------

    def prune(self, horizon_ms: int) -> int:
        """Remove the month folders that ended before ``horizon_ms``, in the shared part
        and in this node's own; returns how many."""
        n = 0
        for base in (HISTORY, self.own):
            for month in self._months(base):
                if month_end_ms(month) < horizon_ms:
                    self.share.remove_tree(f"{base}/{month}")
                    n += 1
        return n


def record(why: str, item: ItemId, owner: str, stamp: int, node: str, digest: str, *, value: bytes | None = None,
           content: str | None = None, path: str | None = None, by_stamp: int, by_node: str, by_deleted: bool,
           side: str, recorded_by: str, now_ms: int | None = None) -> HistoryRecord:
    """A record of ``why`` ("beaten" or "deleted") for version (stamp, node, digest) of ``item``."""
    return HistoryRecord(formats.history_id(why, item, owner, stamp, node, digest), why, item, owner, stamp, node,
                         digest, value, content, path, by_stamp, by_node, by_deleted, side, recorded_by,
                         int(time.time() * 1000) if now_ms is None else now_ms)
