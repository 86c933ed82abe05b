"""The cache as a third replica: what Phase 1 tools wrote into it since our last write.

Phase 1 tools read ``mesh-memory.json``, change one entry and write the whole file back,
not atomically, and drop skills as ``mesh/skills/<name>.md``.  Such writes are local
writes like any other (R2).  How they are told apart from noise:

* a file that is not one complete JSON object is mid-write (or broken): retried on the
  next pass, never read as empty;
* an entry whose value, ``ts`` or ``nodeId`` differs from the last synced version is a
  write, stamped after that version (it was made by someone who saw it, R3);
* an entry that holds exactly the version our last write replaced (updated or deleted
  since) is a stale copy written back — a tool that read the file just before that
  write — not a write: it would otherwise beat the newer version or bring a deleted
  item back (the next write puts the current version back);
* an entry that is *missing* is a delete only when the item had already been in the
  cache for two of our writes (``young`` lists the keys our last write added: a tool
  that read the file just before that write and wrote it back just after never saw
  them, so their absence is a lost update, and they are put back);
* if a write drops more than a tenth of the entries at once, it is taken as a stale or
  truncated copy: nothing is deleted and the drop is reported;
* a skill file is a write when its bytes differ from the skill's content; a missing
  skill file is a delete only while the skills folder still holds other files of ours.
"""

from __future__ import annotations

import os

from meshsync import formats, layout
from meshsync.layout import MEM, ItemId
from meshsync.model import ABSENT, CacheSide, Obs, Problem, State, Version
from meshsync.payloads import CacheEntry, CacheSkill
from meshsync.replicas.cache.store import Cache, CacheUnreadable, parse_memory

MASS_DROP_FRACTION = 0.10
MASS_DROP_MIN = 10


def cache_key(it: ItemId) -> str:
    return f"{it.scope}:{it.key}"


def detect_memory(cache: Cache, state: dict[ItemId, State], live_keys: dict[str, ItemId],
                  young: set[str], node: str, readable,
                  replaced: dict[str, list] | None = None, claims: bool = False) -> CacheSide:
    """Compare a changed mesh-memory.json with the synced state.  ``live_keys`` maps
    each cache key we last wrote to its item; ``replaced`` maps each key our last write
    changed or removed to the version it had before, as [digest, ts, nodeId].  With
    ``claims`` (a new index, no synced state to compare with) each entry is the version
    it claims (its ts and nodeId), not a write made now (R12: a rebuild writes nothing)."""
    replaced = replaced or {}
    side = CacheSide()
    try:
        data = cache.memory_path.read_bytes()
    except FileNotFoundError:
        return side  # gone entirely: rewritten from the index, nothing deleted
    except OSError as exc:
        side.unreadable = True
        side.problems.append(Problem(str(cache.memory_path), f"cannot be read: {exc.strerror}",
                                     "fix its permissions; it is not rewritten meanwhile"))
        return side
    try:
        entries = parse_memory(data)
    except CacheUnreadable as exc:
        side.unreadable = True
        side.problems.append(Problem(str(cache.memory_path), str(exc),
                                     "retried on the next change; meshsync does not overwrite it meanwhile"))
        return side
    mtime_ms = int(os.stat(cache.memory_path).st_mtime_ns // 1_000_000)
    for ck, e in entries.items():
        it = live_keys.get(ck) or _item_of(e)
        if it is None or not readable(it):
            continue
        st = state.get(it)
        if st is not None and not st.deleted and e.digest == st.digest and e.ts == st.stamp // 1000 \
                and (e.node is None or e.node == st.node):
            continue  # unchanged
        prev = replaced.get(ck)
        if prev is not None and e.digest == prev[0] and e.ts == prev[1] and (e.node is None or e.node == prev[2]):
            continue  # the version our last write replaced, written back by a stale copy: not a write
        if claims:
            side.obs[it] = Obs(Version((e.ts or 0) * 1000, e.node or node, e.digest), True, e)
            continue
        # The file's mtime says when the tool wrote; an unchanged or zero ts must not
        # date the write in the past (it still comes after the base: reconcile bumps it).
        declared = max(e.ts * 1000 if e.ts is not None else 0, mtime_ms)
        side.obs[it] = Obs(Version(declared, e.node or node, e.digest), False, e)
    missing = [(ck, it) for ck, it in live_keys.items() if ck not in entries]
    if missing:
        if len(missing) > max(MASS_DROP_MIN, MASS_DROP_FRACTION * len(live_keys)):
            side.events.append(Problem(
                str(cache.memory_path),
                f"a write dropped {len(missing)} of {len(live_keys)} entries at once; taken as a stale "
                "or truncated copy, nothing was deleted",
                "delete items with `meshsync rm` or by removing a few entries at a time"))
        else:
            for ck, it in missing:
                if ck in young:
                    continue  # added by our last write: the tool never saw it (lost update)
                side.obs[it] = ABSENT
    return side


def _item_of(e: CacheEntry) -> ItemId | None:
    if not layout.valid_scope(e.scope):
        return None
    return layout.memory_id(e.scope, e.key)


def detect_skills(cache: Cache, state: dict[ItemId, State], contents: dict[str, str | None],
                  node: str) -> CacheSide:
    """Compare mesh/skills/*.md with the skills' contents (name -> SKILL.md text)."""
    side = CacheSide()
    d = cache.skills_dir
    try:
        entries = {e.name: e for e in os.scandir(d) if e.name.endswith(".md") and not e.name.startswith(".")}
    except FileNotFoundError:
        return side
    except OSError as exc:
        side.problems.append(Problem(str(d), f"cannot be listed: {exc.strerror}", "fix its permissions"))
        return side
    by_file = {cache.skill_path(n).name: n for n in contents}
    for fname, e in entries.items():
        name = by_file.get(fname, fname[:-3])
        it = layout.skill_id(name)
        try:
            if not e.is_file(follow_symlinks=False):
                continue
            data = open(e.path, "rb").read()
            text = data.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            side.problems.append(Problem(e.path, f"cannot be imported: {exc}", "save it as UTF-8 text"))
            continue
        if contents.get(name) == text:
            continue
        st = state.get(it)
        mtime_ms = e.stat(follow_symlinks=False).st_mtime_ns // 1_000_000
        digest = formats.skill_digest(data, None, (st.aux or "") if st else "")
        side.obs[it] = Obs(Version(mtime_ms, node, digest), False, CacheSkill(text, mtime_ms))
    ours_left = any(f in entries for f in by_file)
    if ours_left:
        for fname, name in by_file.items():
            if fname not in entries and contents.get(name) is not None:
                side.obs[layout.skill_id(name)] = ABSENT
    return side


__all__ = ["CacheSide", "CacheSkill", "cache_key", "detect_memory", "detect_skills", "MEM"]
