"""Change journals: how nodes tell each other what they wrote, cheaply, on any share.

On NFS/SMB a write made by another host raises no event here.  Instead of walking 100k
files every few seconds, each node appends the items it wrote to its own journal,
``.meshsync/journal/<node>.log`` (one JSON line per pass).  A polling node stats the
journal folder (one entry per node, so O(nodes)) and reads only the new bytes of the
journals that grew.  Each journal has one writer, so appends never interleave; a reader
consumes complete lines only, so a half-written line is read on the next poll.

Journals are rotated (renamed to ``<node>.log.1``) past a size limit; a reader that
sees a journal shrink or change inode asks for a full pass, which is always correct.
Changes by hosts that do not run meshsync are caught by the periodic full rescan.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

import orjson

from meshsync import layout
from meshsync.layout import ItemId

DIR = f"{layout.META}/journal"
ROTATE_BYTES = 4 * 1024 * 1024
CHUNK = 1000


def path_of(node: str) -> str:
    return f"{DIR}/{layout.encode(node)}.log"


def append(share, node: str, items: Iterable[ItemId]) -> None:
    """Append one line per chunk of items this node wrote (node-scope items stay private)."""
    public = [[it.kind, it.scope, it.key] for it in items if it.scope != "node"]
    if not public:
        return
    d = share.root / DIR
    d.mkdir(parents=True, exist_ok=True)
    p = share.root / path_of(node)
    try:
        if p.stat().st_size > ROTATE_BYTES:
            os.replace(p, p.with_name(p.name + ".1"))
    except FileNotFoundError:
        pass
    ms = int(time.time() * 1000)
    data = b"".join(
        orjson.dumps({"ms": ms, "node": node, "items": public[i:i + CHUNK]}) + b"\n"
        for i in range(0, len(public), CHUNK)
    )
    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


@dataclass(slots=True)
class _Pos:
    ino: int
    offset: int
    size: int
    mtime: int


class JournalReader:
    """Tails every other node's journal; ``poll()`` returns (items, need_full_pass)."""

    def __init__(self, share_root, own_node: str):
        self.root = share_root
        self.own = layout.encode(own_node) + ".log"
        self.pos: dict[str, _Pos] = {}
        self.primed = False

    def prime(self) -> None:
        """Start from the journals' current ends (a full pass has just run)."""
        self.pos.clear()
        for name, st in self._list():
            self.pos[name] = _Pos(st.st_ino, st.st_size, st.st_size, st.st_mtime_ns)
        self.primed = True

    def _list(self) -> list[tuple[str, os.stat_result]]:
        out = []
        try:
            with os.scandir(self.root / DIR) as it:
                for e in it:
                    if e.name.endswith(".log") and e.name != self.own:
                        try:
                            out.append((e.name, e.stat(follow_symlinks=False)))
                        except OSError:
                            pass
        except OSError:
            pass
        return out

    def poll(self) -> tuple[set[ItemId], bool]:
        items: set[ItemId] = set()
        full = False
        for name, st in self._list():
            p = self.pos.get(name)
            if p is not None and p.ino == st.st_ino and p.size == st.st_size and p.mtime == st.st_mtime_ns:
                continue
            if p is None:
                p = _Pos(st.st_ino, 0, 0, 0)  # a node we had not seen yet: read it all
            elif p.ino != st.st_ino or st.st_size < p.offset:
                full = True  # rotated or truncated: we may have missed lines
                p = _Pos(st.st_ino, 0, 0, 0)
            try:
                with open(self.root / DIR / name, "rb") as f:
                    f.seek(p.offset)
                    data = f.read(st.st_size - p.offset + 65536)
            except OSError:
                continue
            end = data.rfind(b"\n")
            if end >= 0:
                for line in data[: end + 1].splitlines():
                    try:
                        doc = orjson.loads(line)
                        for kind, scope, key in doc["items"]:
                            items.add(ItemId(kind, scope, key))
                    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                        full = True
                p.offset += end + 1
            p.ino, p.size, p.mtime = st.st_ino, st.st_size, st.st_mtime_ns
            self.pos[name] = p
        return items, full
