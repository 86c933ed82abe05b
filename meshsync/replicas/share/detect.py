"""The share side of a pass: which items changed on the share, and what each holds now.

A full pass walks the share (walk.py) and reads only the files whose stat signature is
not the one the last pass recorded; a targeted pass (the daemon's events) looks at a
known set of items.  Detection sees what the last pass synced through a small interface
(:class:`Known`: the base of an item, and which item a share path held) and its settings
through :class:`Config`; it knows nothing of the index or the cache.

Every file refused is reported (a Problem: file, reason, what to do), never taken as a
delete (R6); a folder that could not be listed leaves its items unknown, never gone (R5).
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from operator import itemgetter
from typing import Protocol

from meshsync import formats, layout
from meshsync.formats import FormatError
from meshsync.layout import MEM, NOT_UTF8_NAME, not_unicode
from meshsync.model import ABSENT, ItemId, Obs, Pass, Problem, State, Version, base_live, base_of
from meshsync.payloads import CopySkill, ShareFile, ShareMem, ShareSkill
from meshsync.reconcile import effective
from meshsync.replicas.share import copies, memread, syncthing
from meshsync.replicas.share.store import (
    CHANGED_WHILE_READ,
    FileEntry,
    FileRefused,
    Share,
    Walk,
    settled,
    sig_of,
)

BATCH = 500  # items a first import hands to the rest of the pipeline at a time


class Config(Protocol):
    """What share detection needs of the node's settings (engine/plan.py's Policy)."""

    node: str
    max_json_depth: int
    max_skill_bytes: int
    tombstone_retention_ms: int

    def readable(self, item: ItemId) -> bool: ...
    def may_read(self, scope: str) -> bool: ...


class Known(Protocol):
    """What the last pass recorded (the index, seen from the share's side)."""

    def items_at(self, rels: list[str]) -> dict[str, ItemId]: ...


def as_found(obs: Obs, st: State | None, rel: str, node: str, skill: bool = False) -> Obs:
    """The share side of a file read this pass, seen against what the last pass synced.

    A file meshsync wrote (trusted ``rev``) stands for the version it claims.  A file
    written by a person or another program (no valid ``rev``) stands for the version
    derived from the file alone (``derived``: stamp max(declared + 1, mtime), its node or
    FOREIGN_NODE), the same on every node, and it is taken as written: no share write
    is planned for it (R10).  R3 holds because an edit's mtime, or its declared stamp
    + 1, orders after the version it edited; only when neither does (the file server's
    clock behind this node's base) is the edit stamped after the base by reconcile and
    rewritten in meshsync's rendering, so that every node then reads the same version.
    The bytes this node last synced stand for its base (their version may differ only
    by a newer mtime: a touch, taken like any other node reading the file would)."""
    v = obs.version
    assert v is not None
    base = base_of(st)
    if base is not None and not base.deleted and st.share_hash == obs.payload.hash and st.rel == rel:  # type: ignore[union-attr]
        if obs.trusted and skill:
            # A skill's hash covers its files, not what skill.json claims: a trusted
            # skill.json naming another version of the same content (another node's
            # rendering of the same folder) is a change, or nodes keep different
            # source_node values forever (R1).
            return Obs(base if v.same(base) else v, True, obs.payload)
        if obs.trusted or v.order <= base.order:
            return Obs(base, True, obs.payload)
        return Obs(v, True, obs.payload)  # the same bytes touched since: as a node reading it first takes them
    if obs.trusted or base is None or base.deleted or v.order > base.order:
        return Obs(v, True, obs.payload)
    if v.same(base):
        return Obs(base, True, obs.payload)
    # The file alone cannot order the edit after the base: today's rule (R3).
    return Obs(Version(v.stamp, node if v.node == formats.FOREIGN_NODE else v.node, v.digest), False, obs.payload)


def against_tombstone(cur: Obs, tv: Version, st: State | None, replicated: bool = False) -> Obs:
    """The share side of an item whose file and tombstone are both on the share.

    Seen from this node: when the file is the one it last synced (its base, live), the
    tombstone is a delete from elsewhere that arrived first (Syncthing may deliver it
    before the file's removal): the newer of the two wins (R4).  Otherwise (this node's
    base is the tombstone, or the file is not what it last synced) the file appeared
    after the delete: a restore (a NAS snapshot, ``#recycle``, ``mv backup.json``), a
    person's act, newer than the delete.  It wins, stamped after the tombstone, and is
    written again if that changed its version, so that every node reads the same one
    (R10).  Either way the side is dirty: propagation removes the loser.  meshsync's own
    delete removes the file before it writes the tombstone (replicas/share/write.py), so
    a crash in between never leaves "file + tombstone" to be read as a restore (R7).

    ``replicated`` (a share Syncthing keeps, each node its own copy): a file meshsync wrote
    (trusted) that appears after the tombstone is what Syncthing does with an update made
    while the nodes were apart (a change beats a delete there), not a person's restore:
    the newer of the two wins (R4).  Restore a deleted item there with `meshsync restore`."""
    v = cur.version
    assert v is not None
    base = base_of(st)
    if replicated and cur.trusted and v.order < tv.order:
        return Obs(tv, True, cur.payload, dirty=True)
    if base is not None and not base.deleted and v.same(base):
        if effective(cur, base, 0, "").order < tv.order:  # type: ignore[union-attr]
            return Obs(tv, True, cur.payload, dirty=True)
        return Obs(v, cur.trusted, cur.payload, dirty=True)
    if v.stamp > tv.stamp:
        return Obs(v, cur.trusted, cur.payload, dirty=True)
    return Obs(Version(tv.stamp + 1, v.node, v.digest), False, cur.payload, dirty=True)


def decoded(segment: str) -> str | None:
    try:
        return layout.decode(segment)
    except layout.LayoutError:
        return None


class ShareDetector:
    """Share detection for one node, kept between passes (tombstones read, the helper)."""

    def __init__(self, share: Share, cfg: Config, own_sigs: dict[str, str]) -> None:
        self.share = share
        # Each node's own copy kept by Syncthing (R4: see against_tombstone; conflict
        # copies).  Looked at again by every full walk: Syncthing makes `.stfolder` when
        # the folder is shared, which may be after this process started.
        self.replicated = syncthing.is_syncthing_folder(share.root)
        self.cfg = cfg
        self.own_sigs = own_sigs  # signatures of files this process wrote (our own echo)
        self.tombs_read: dict[str, tuple[str, tuple[ItemId, int, str]]] = {}  # rel -> signature, content
        # A pass with this many memory files to read reads them with a helper process
        # (memread.Helper; 0: never); helper_read counts the files it read in the last such pass.
        self.readahead_min = memread.MIN_FILES
        self.helper_read = 0
        self.helper: memread.Helper | None = None  # started before the walk of a first import
        self.tick: Callable[[str, int, int | None], None] = lambda what, done, total: None

    def close_helper(self) -> None:
        if self.helper is not None:  # a pass that failed before it read anything
            self.helper.close()
            self.helper = None

    def start_helper_early(self) -> None:
        """A first import reads every file: the helper process starts during the walk."""
        if self.readahead_min:
            self.helper = memread.Helper.start(self.share, self.cfg.node, self.cfg.max_json_depth)

    # --- the walk ------------------------------------------------------------------------

    def walk(self, walk: Walk, now_ns: int) -> None:
        sh, cfg = self.share, self.cfg
        self.replicated = syncthing.is_syncthing_folder(sh.root)
        for top in (layout.MEMORY, layout.SKILLS):
            st = sh.lstat(top)
            if st is None or not stat.S_ISDIR(st.st_mode):
                walk.unknown.append(top)
                walk.problems.append(Problem(top, "the share's top-level folder is missing or not a folder",
                                             "run `meshsync init` to recreate it; nothing was deleted"))
        if not walk.is_unknown(layout.MEMORY):
            self.tick("scanning share", 0, None)
            if cfg.may_read("mesh"):
                sh.walk_memory_dir(f"{layout.MEMORY}/mesh", walk, now_ns)
            for name in sh.walk_subdirs(f"{layout.MEMORY}/user", walk):
                self.tick("scanning share", len(walk.memory) + walk.same_count(), None)
                if not_unicode(name) or not_unicode(decoded(name)):  # R6: see read_memory
                    walk.problems.append(Problem(f"{layout.MEMORY}/user/{name}", "folder " + NOT_UTF8_NAME[5:],
                                                 "rename it to a name that is valid UTF-8"))
                    continue
                try:
                    uid = layout.decode(name)
                except layout.Shortened:
                    uid = None
                except layout.LayoutError as exc:
                    walk.problems.append(Problem(f"{layout.MEMORY}/user/{name}", f"folder name: {exc}",
                                                 layout.renamed_hint(f"{layout.MEMORY}/user", name, "",
                                                                     lambda t: sh.lstat(t) is not None, "user")))
                    continue
                if uid is None or cfg.may_read("user:" + uid):
                    sh.walk_memory_dir(f"{layout.MEMORY}/user/{name}", walk, now_ns)
            if cfg.may_read("node"):
                sh.walk_memory_dir(f"{layout.MEMORY}/node/{layout.encode(cfg.node)}", walk, now_ns)
        if not walk.is_unknown(layout.SKILLS):
            names = sh.walk_subdirs(layout.SKILLS, walk)
            for i, name in enumerate(names):
                rel = f"{layout.SKILLS}/{name}"
                walk.skills[rel] = sh.walk_skill(rel, walk, now_ns)
                if i % 50 == 0:
                    self.tick("scanning skills", i, len(names))
        sh.walk_tombstones(walk, now_ns)

    # --- a full pass: what changed since the last one ---------------------------------------

    def changed(self, p: Pass, known: Known,
                settle: Callable[[dict[ItemId, Obs]], None] | None = None) -> set[ItemId]:
        """The share side of what changed.  With ``settle`` (a first import), memory files
        are taken in name order and handed to it in batches as soon as they are read: such
        an item has every side known already (the index and cache were looked at before
        the walk, and nothing else on the share names it unless a tombstone does), and its
        index writes overlap the helper process's reading of the next files."""
        walk = p.walk
        assert walk is not None
        kn = walk.known
        to_read = list(walk.memory.items())  # the walk set aside the memory files known unchanged
        if settle is not None:
            to_read.sort(key=itemgetter(0))  # key order, as in the engine's plan
        skills = [(rel, sd) for rel, sd in walk.skills.items()
                  if not sd.settled or kn.get(rel, 0) != sd.sig]
        if kn:
            seen = (walk.same_count() + sum(1 for rel in walk.memory if rel in kn)
                    + sum(1 for rel in walk.skills if rel in kn))
            gone = ([] if seen == len(kn) else
                    [rel for rel in kn if rel not in walk.memory and rel not in walk.skills and not walk.is_same(rel)])
            ids = known.items_at([rel for rel, _ in (*to_read, *skills) if rel in kn] + gone)
        else:  # nothing recorded (a first import): nothing known is gone or has an item
            gone, ids = [], {}
        p.state.want(ids.values(), len(kn), len(to_read) + len(skills) + len(gone))
        changed = self._changed_memory(p, to_read, ids, settle)
        changed |= self._changed_skills(p, skills, ids)
        # Items the share had at the last pass and no longer has.
        for rel in gone:
            it = ids.get(rel)
            if it is None:
                continue
            if walk.is_unknown(rel) or not self.cfg.readable(it):
                continue
            changed.add(it)
        return changed

    def _helper_for(self, total: int) -> memread.Helper | None:
        helper, self.helper = self.helper, None
        self.helper_read = 0
        if helper is None and self.readahead_min and total >= self.readahead_min:
            helper = memread.Helper.start(self.share, self.cfg.node, self.cfg.max_json_depth)
        elif helper is not None and total < memread.CHUNK * 4:
            helper.close()
            helper = None
        return helper

    def _changed_memory(self, p: Pass, to_read: list, ids: dict[str, ItemId],
                        settle: Callable[[dict[ItemId, Obs]], None] | None) -> set[ItemId]:
        changed: set[ItemId] = set()
        total = len(to_read)
        helper = self._helper_for(total)
        tombs = p.walk.tombstones  # type: ignore[union-attr]
        state, stats, share_obs, unknown = p.state, p.stats, p.share_obs, p.share_unknown
        batch: dict[ItemId, Obs] = {}
        try:
            readings = memread.read_all(self.share, [rel for rel, _ in to_read], self.cfg.node,
                                        self.cfg.max_json_depth, helper)
            phase = "importing memory files" if settle is not None else "reading changed memory files"
            for n, (pos, got) in enumerate(readings):
                if n % 500 == 0:
                    self.tick(phase, n, total)
                rel, fe = to_read[pos]
                it = ids.get(rel)
                stats.read += 1
                got = self.read_memory(rel, fe.sig if fe.settled else None, p.problems, got)
                if got is None:
                    if it is not None:
                        unknown.add(it)
                        if p.problems and p.problems[-1].reason == CHANGED_WHILE_READ:
                            p.deferred.append(it)  # looked at again shortly (daemon/loop.py)
                    continue
                it2, obs = got
                if it is not None and it2 != it:
                    unknown.add(it)
                st = state.get(it2)
                obs = as_found(obs, st, rel, self.cfg.node)
                if st is not None and obs.version is not None and obs.version.same(base_of(st)) and \
                        st.share_sig == obs.payload.sig and st.share_hash == obs.payload.hash:
                    continue
                if settle is not None and (not tombs or layout.tombstone_path(it2, self.cfg.node) not in tombs):
                    batch[it2] = obs
                    if len(batch) >= BATCH:
                        settle(batch)
                        batch = {}
                    continue
                share_obs[it2] = obs
                changed.add(it2)
            if batch and settle is not None:
                settle(batch)
        finally:
            if helper is not None:
                helper.close()
                self.helper_read = helper.answered
        return changed

    def _changed_skills(self, p: Pass, skills: list, ids: dict[str, ItemId]) -> set[ItemId]:
        changed: set[ItemId] = set()
        for rel, sd in skills:
            it = ids.get(rel)
            p.stats.read += 1
            got = self.read_skill(sd.rel, sd.files, sd.sig if sd.settled else None, p.problems)
            if got is None:
                if it is not None:
                    p.share_unknown.add(it)
                continue
            it2, obs = got
            st = p.state.get(it2)
            if obs.version is None:  # an empty folder: reported, absent unless synced there (R6, R12)
                p.problems.append(_empty_skill(rel))
                if base_live(st):
                    p.share_unknown.add(it2)
                continue
            obs = as_found(obs, st, rel, self.cfg.node, skill=True)
            if st is not None and obs.version is not None and obs.version.same(base_of(st)) and \
                    st.share_sig == obs.payload.sig and st.share_hash == obs.payload.hash:
                continue
            p.share_obs[it2] = obs
            changed.add(it2)
        return changed

    def unread(self, it: ItemId, st: State | None, walk: Walk) -> Obs | None:
        """The share side of an item the walk did not read: its file is still the one
        last synced (signature unchanged), or it is absent; None (unknown) when its folder
        could not be listed (R5: never taken as absent, which read as a delete)."""
        if st is not None and not st.deleted and st.rel is not None:
            fe = walk.memory_entry(st.rel) if it.kind == MEM else walk.skills.get(st.rel)
            if fe is not None:
                return Obs(base_of(st), True, ShareFile(fe.sig if fe.settled else None, fe.sig))
        if walk.unknown:
            try:
                rel = st.rel if st is not None and st.rel else layout.item_path(it, self.cfg.node)
            except layout.LayoutError:
                return ABSENT
            if walk.is_unknown(rel):
                return None
        return ABSENT

    # --- reading one item -------------------------------------------------------------------

    def read_memory(self, rel: str, sig: str | None, problems: list[Problem],
                    got: memread.Read | Problem | None | bool = False,
                    as_rel: str | None = None) -> tuple[ItemId, Obs] | None:
        """The share side of one memory file; ``got`` is its reading by memread.read_all
        (False: read it here, as the file at ``as_rel`` when it is a conflict copy)."""
        if got is False:
            got = memread.read(self.share, rel, self.cfg.node, self.cfg.max_json_depth, as_rel)
        if got is None:
            return None
        if isinstance(got, Problem):
            problems.append(got)
            return None
        rec, h, mtime_ns, read_sig = got  # type: ignore[misc]
        it = layout.memory_id(rec.scope, rec.key)
        if not self.cfg.readable(it):
            return None
        if rec.trusted:
            v = Version(rec.stamp, rec.node, rec.digest)  # type: ignore[arg-type]
        else:
            # Derived from the file alone (R10, see as_found): an edited file comes after
            # the version it still names, even when this node never saw that version and
            # the file's mtime is behind its stamp (R3).
            declared = rec.stamp + 1 if rec.stamp is not None else 0
            v = Version(max(declared, mtime_ns // 1_000_000), rec.node or formats.FOREIGN_NODE, rec.digest)
        return it, Obs(v, rec.trusted, ShareMem(rec, sig, h, read_sig))

    def read_skill(self, rel: str, files: list, sig: str | None, problems: list[Problem],
                   copies: dict[str, FileEntry] | None = None) -> tuple[ItemId, Obs] | None:
        return read_skill(self.share, self.cfg, rel, files, sig, problems, copies)

    def conflict_copies(self, p: Pass) -> set[ItemId]:
        """Syncthing's conflict copies the walk found, as more observations of their
        items (replicas/share/copies.py)."""
        return copies.observe(self, p)

    # --- a targeted pass ----------------------------------------------------------------------

    def observe(self, p: Pass, item: ItemId, st: State | None) -> None:
        """Targeted detection of one item (the daemon's per-change path)."""
        if not self.cfg.readable(item):
            return
        try:
            rel = layout.item_path(item, self.cfg.node)
        except layout.LayoutError:
            return
        try:
            lst = self.share.lstat(rel)
        except OSError as exc:  # a folder on the way that may not be searched (chmod 000)
            # R5, R6, R12: unknown, never absent; reported like the full pass reports it.
            p.problems.append(Problem(rel, f"cannot be examined: {exc.strerror}", "check permissions"))
            p.share_unknown.add(item)
            return
        if (lst is not None and st is not None and not st.deleted and item.kind == MEM
                and st.share_sig is not None and self.own_sigs.get(rel) == sig_of(lst) and st.rel == rel):
            # (Not for a fresh export of ours, not yet read back settled: on a network
            # mount this lstat may come from the attribute cache while another node's
            # export has replaced ours; the bytes tell, see engine/plan.py base_seen.)
            p.share_obs[item] = Obs(base_of(st), True, ShareFile(sig_of(lst)))  # our own write
            return
        tomb = self.read_tomb(item)
        if lst is None:
            p.share_obs[item] = tomb or ABSENT
            p.looked_ok.append(rel)
            return
        if (tomb is None and item.kind == MEM and st is not None and not st.deleted and st.rel == rel
                and settled(lst, p.now_ns) and st.share_sig == sig_of(lst)):
            # The file last synced, unchanged (same rule as the full pass: a settled file
            # whose stat signature is the recorded one is not read again).
            p.share_obs[item] = Obs(base_of(st), True, ShareFile(st.share_sig))
            p.looked_ok.append(rel)
            return
        p.stats.read += 1
        if item.kind == MEM:
            got = self.read_memory(rel, sig_of(lst) if settled(lst, p.now_ns) else None, p.problems)
        else:
            walk = p.walk
            assert walk is not None
            sd = self.share.walk_skill(rel, walk, p.now_ns)
            p.problems.extend(walk.problems)
            walk.problems.clear()
            got = self.read_skill(rel, sd.files, sd.sig if sd.settled else None, p.problems)
        if got is None or got[0] != item:
            p.share_unknown.add(item)
            if p.problems and p.problems[-1].reason == CHANGED_WHILE_READ:
                p.deferred.append(item)  # looked at again shortly (daemon/loop.py), in poll mode too
            return
        if got[1].version is None:  # an empty skill folder: absent unless the skill was synced there
            p.problems.append(_empty_skill(rel))
            if base_live(st):
                p.share_unknown.add(item)
            else:
                p.share_obs[item] = tomb or ABSENT
                p.looked_ok += [f"{rel}/{layout.SKILL_MD}", f"{rel}/{layout.SKILL_JSON}"]
            return
        # Its earlier errors (e.g. read mid-write) go now, not at the next full rescan.
        p.looked_ok += [rel] if item.kind == MEM else [rel, f"{rel}/{layout.SKILL_MD}", f"{rel}/{layout.SKILL_JSON}"]
        obs = as_found(got[1], st, rel, self.cfg.node, skill=item.kind != MEM)
        if tomb is not None and tomb.version is not None:
            obs = against_tombstone(obs, tomb.version, st, self.replicated)
        p.share_obs[item] = obs

    def read_tomb(self, item: ItemId) -> Obs | None:
        rel = layout.tombstone_path(item, self.cfg.node)
        try:
            data, _ = self.share.read(rel, 64 * 1024)
            t_item, stamp, node = formats.parse_tombstone(data)
        except (FileRefused, FormatError, OSError):  # none, or ours and broken: no protection lost to a crash
            return None
        if t_item != item:
            return None
        return Obs(Version(stamp, node, deleted=True), True, None)

    # --- tombstones ---------------------------------------------------------------------------

    def _tombstone(self, rel: str, fe: FileEntry, seen: dict) -> tuple[ItemId, int, str] | None:
        """One tombstone's content, read once (see tombstones())."""
        hit = seen.get(rel)
        try:
            if hit is not None and fe.settled and hit[0] == fe.sig:
                item, stamp, node = hit[1]
            else:
                data, _ = self.share.read(rel, 64 * 1024)
                item, stamp, node = formats.parse_tombstone(data)
            if fe.settled:
                self.tombs_read[rel] = (fe.sig, (item, stamp, node))
            if layout.tombstone_path(item, self.cfg.node) != rel:
                return None  # another node's node-scope tombstone, or a stray file
        except (FileRefused, FormatError, FileNotFoundError, layout.LayoutError):
            return None  # tombstones are ours; a broken one only loses its protection
        return item, stamp, node

    def tombstones(self, p: Pass) -> set[ItemId]:
        """Fold the share's tombstones into its observations.  When a file and a
        tombstone both exist, see against_tombstone."""
        walk = p.walk
        assert walk is not None
        changed: set[ItemId] = set()
        horizon = p.now_ms - self.cfg.tombstone_retention_ms
        if syncthing.is_syncthing_folder(self.share.root):  # R4: one tombstone per item, no copies
            syncthing.fold_tombstone_copies(self.share, walk.tombstones)
        # Tombstones are written once and never edited: one read each, not one per pass
        # (a settled file with the signature it had when last read holds the same bytes).
        seen, self.tombs_read = self.tombs_read, {}
        for rel, fe in walk.tombstones.items():
            got = self._tombstone(rel, fe, seen)
            if got is None:
                continue
            item, stamp, node = got
            if stamp < horizon:
                self.share.remove(rel)
                continue
            if not self.cfg.readable(item):
                continue
            tv = Version(stamp, node, deleted=True)
            st = p.state.get(item)
            item_rel = layout.item_path(item, self.cfg.node)
            cur = p.share_obs.get(item)
            present = walk.has_memory(item_rel) if item.kind == MEM else item_rel in walk.skills
            if cur is None and present:
                if walk.is_unknown(item_rel) or not base_live(st):
                    continue  # the file could not be read: leave both alone this time
                fe2 = walk.memory_entry(item_rel) if item.kind == MEM else walk.skills.get(item_rel)
                cur = Obs(base_of(st), True, ShareFile(fe2.sig if fe2 else None))
            if cur is None or cur.version is None:
                p.share_obs[item] = Obs(tv, True, None)
                if st is None or not (st.deleted and st.stamp == stamp and st.node == node):
                    changed.add(item)
                continue
            p.share_obs[item] = against_tombstone(cur, tv, st, self.replicated)
            changed.add(item)
        return changed


def _empty_skill(rel: str) -> Problem:
    return Problem(rel, "skill folder is empty", "add a SKILL.md, or remove the folder; an export that failed "
                   "part-way (a full share) leaves one behind and fills it once the share has space")


def _skill_name(share: Share, cfg: Config, rel: str, name_seg: str, meta: formats.SkillMeta | None,
                problems: list[Problem]) -> str | None:
    """The skill a folder is: its name decides, as a memory file's name does (R10).  A
    folder renamed by hand (`mv skills/alpha skills/beta`) is the skill beta; skill.json's
    stale name is ignored, neither refused nor rewritten (its rev, made for alpha, no
    longer matches, so beta's version derives from the folder, after alpha's stamp).  A
    shortened folder name takes the full name from skill.json."""
    try:
        name: str | None = layout.decode(name_seg)
    except layout.Shortened:
        name = meta.name if meta else None
    except layout.LayoutError as exc:
        problems.append(Problem(rel, f"folder name: {exc}", layout.renamed_hint(
            layout.SKILLS, name_seg, "", lambda t: share.lstat(t) is not None, "skill")))
        return None
    if name is None or layout.item_path(layout.skill_id(name), cfg.node) != rel:
        problems.append(Problem(rel, "skill folder name does not match the name in skill.json",
                                "rename the folder or fix skill.json's name"))
        return None
    return name


class _SkillFiles:
    """What a skill folder's files hold, read once (see read_skill)."""

    def __init__(self) -> None:
        self.content: bytes | None = None
        self.meta: formats.SkillMeta | None = None
        self.own_meta = True  # False: a copy's version, whose skill.json is the share file's
        self.extras: list[tuple[str, str]] = []
        self.newest = 0
        self.newest_content = 0  # the same without skill.json
        self.mtimes: dict[str, int] = {}  # SKILL.md / skill.json -> mtime (ns)


def _read_skill_files(share: Share, cfg: Config, rel: str, files: list, problems: list[Problem],
                      copies: dict[str, FileEntry] | None) -> _SkillFiles | None:
    """Read a skill folder's files (with ``copies``: each copy in place of its file);
    None (reported) when SKILL.md or skill.json cannot be read."""
    got = _SkillFiles()
    got.own_meta = copies is None  # a copy's version claims only what its own skill.json says
    entries = [(fe.rel, fe) for fe in files]
    if copies:
        entries = sorted({**dict(entries), **copies}.items())
    for orig, fe in entries:
        sub = orig[len(rel) + 1:]
        from_copy = copies is not None and orig in copies
        limit = cfg.max_skill_bytes if sub == layout.SKILL_MD else None
        try:
            # The hint names the limit that applies (it said max_file_bytes for a SKILL.md).
            data, st = share.read(fe.rel, limit, "limits.max_skill_bytes" if limit else "limits.max_file_bytes")
        except FileRefused as exc:
            problems.append(exc.problem)
            if sub in (layout.SKILL_MD, layout.SKILL_JSON):
                return None
            continue
        except FileNotFoundError:
            return None
        if copies is None or from_copy:
            got.newest = max(got.newest, st.st_mtime_ns // 1_000_000)
            if sub != layout.SKILL_JSON:
                got.newest_content = max(got.newest_content, st.st_mtime_ns // 1_000_000)
        if sub in (layout.SKILL_MD, layout.SKILL_JSON) and not from_copy:
            got.mtimes[sub] = st.st_mtime_ns
        if sub == layout.SKILL_MD:
            got.content = data
        elif sub == layout.SKILL_JSON:
            got.own_meta = got.own_meta or from_copy
            try:
                got.meta = formats.parse_skill_json(data)
            except FormatError as exc:
                problems.append(Problem(fe.rel, str(exc), "fix skill.json or delete it (it is optional)"))
                return None
        else:
            got.extras.append((sub, formats.digest_bytes(data)))
    return got


def _claims_these_files(meta: formats.SkillMeta | None, digest: str) -> bool:
    """Whether skill.json's rev was made for these very files under the name it gives (a
    folder renamed by hand, R10): then it is no delivery half-way."""
    return bool(meta and meta.name and meta.rev and meta.node and meta.stamp is not None
                and meta.rev == formats.rev(layout.skill_id(meta.name), digest, meta.stamp, meta.node))


def stale_claim(meta: formats.SkillMeta | None, mtimes: dict[str, int], digest: str) -> bool:
    """Whether skill.json names another version than these files and was written after
    SKILL.md: it then says nothing of when these files were written.  Syncthing (or a
    copy to a NAS) brings a folder one file at a time, keeping each file's mtime: the new
    skill.json beside the old SKILL.md, its stamp + 1 taken for the old text, would beat
    the new version with the old text (R1, R2).  A hand edit of SKILL.md is newer than
    skill.json, and a folder renamed by hand keeps a skill.json made for these very files:
    both keep the claim (R3, R10)."""
    md, js = mtimes.get(layout.SKILL_MD), mtimes.get(layout.SKILL_JSON)
    return (bool(meta and meta.rev) and md is not None and js is not None and md < js
            and not _claims_these_files(meta, digest))


def read_skill(share: Share, cfg: Config, rel: str, files: list, sig: str | None,
               problems: list[Problem], copies: dict[str, FileEntry] | None = None) -> tuple[ItemId, Obs] | None:
    """The share side of one skill folder (its files as the walk listed them).  With
    ``copies`` (a file's path -> its conflict copy), the folder as those copies make it
    (replicas/share/copies.py): what it claims is taken from the copies alone."""
    name_seg = rel.rsplit("/", 1)[-1]
    if not_unicode(name_seg) or not_unicode(decoded(name_seg)):  # R6: see read_memory
        problems.append(Problem(rel, "folder " + NOT_UTF8_NAME[5:], "rename it to a name that is valid UTF-8"))
        return None
    f = _read_skill_files(share, cfg, rel, files, problems, copies)
    if f is None:
        return None
    content, meta = f.content, f.meta
    name = _skill_name(share, cfg, rel, name_seg, meta, problems)
    if name is None:
        return None
    path = meta.path if meta else None
    if not files and not copies:
        # An empty folder (e.g. left by an export that failed part-way on a full share):
        # not a version of the skill.  The caller takes it as absent when the skill has no
        # synced version there, and as unreadable otherwise (R6, R12).
        return layout.skill_id(name), ABSENT
    if content is None and path is None:
        problems.append(Problem(rel, "skill folder has no SKILL.md (and skill.json gives no path)",
                                "add a SKILL.md; the folder is ignored until then"))
        return None
    if content is not None:
        try:
            content.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(Problem(f"{rel}/{layout.SKILL_MD}", "is not UTF-8 text", "save it as UTF-8"))
            return None
    ex = formats.extras_digest(f.extras)
    digest = formats.skill_digest(content, path, ex)
    it = layout.skill_id(name)
    trusted = bool(meta and meta.rev and meta.node and meta.stamp is not None
                   and meta.rev == formats.rev(it, digest, meta.stamp, meta.node))
    if trusted:
        v = Version(meta.stamp, meta.node, digest)  # type: ignore[union-attr,arg-type]
    else:
        # Derived from the folder alone (R10, see as_found): after the version skill.json
        # names (a copy's version: only its own skill.json's), or its newest file's mtime.
        stale = f.own_meta and stale_claim(meta, f.mtimes, digest)
        claims = meta if f.own_meta and not stale else None
        declared = claims.stamp + 1 if claims and claims.stamp is not None else 0
        newest = f.newest_content if stale else f.newest
        v = Version(max(declared, newest), (claims.node if claims and claims.node else formats.FOREIGN_NODE), digest)
    if copies:
        own = (f"{rel}/{layout.SKILL_MD}", f"{rel}/{layout.SKILL_JSON}")  # an export writes these itself
        return it, Obs(v, True, CopySkill(content, path, ex, None, digest, None,
                                          copies=tuple((fe.rel, fe.sig) for fe in copies.values()),
                                          moves=tuple((fe.rel, orig, fe.sig) for orig, fe in sorted(copies.items())
                                                      if orig not in own)))
    md = next((fe.sig for fe in files if fe.rel == f"{rel}/{layout.SKILL_MD}"), "")
    return it, Obs(v, trusted, ShareSkill(content, path, ex, sig, digest, md, _replaced(meta, trusted)))


def _replaced(meta: formats.SkillMeta | None, trusted: bool) -> str | None:
    """What a skill folder says its writer replaced (R2 on a NAS, engine/plan.py
    base_seen; see formats.MemoryRecord.replaces): a skill.json whose rev matches these
    files speaks for them ("" when it names nothing: written by an older meshsync, or
    over no version).  A skill.json of meshsync's beside files it was not written for
    names nothing either (""): an export writes SKILL.md and skill.json with two
    renames, so two racing exports can leave one node's SKILL.md beside another's
    skill.json, and neither writer saw what it replaced.  A folder with no skill.json of
    meshsync's is a person's or another program's (None, R10)."""
    if meta is None or not meta.rev:
        return None
    return (meta.replaces or "") if trusted else ""
