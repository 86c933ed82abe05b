"""Plan: each item's sides -> reconcile -> a Plan, under this node's scope rules.

The conflict rule itself is meshsync/reconcile.py (pure); this module only gathers an
item's observations, decides which sides this node may write (R9: WRITE_ALL for a scope
it may write, WRITE_LOCAL for one it may only read) and refuses items it must not
handle (a scope it may not read, an invalid scope).
"""

from __future__ import annotations

from collections.abc import Callable

from meshsync import formats, layout
from meshsync.config import Settings
from meshsync.layout import MEM, SKILL
from meshsync.model import CACHE, INDEX, SHARE, ItemId, Obs, Pass, Plan, RowProblem, State, base_of
from meshsync.reconcile import reconcile

# The sides a pass may write for an item of a scope this node may write, or only read.
WRITE_ALL = frozenset({SHARE, INDEX, CACHE})
WRITE_LOCAL = frozenset({INDEX, CACHE})

Planned = tuple[ItemId, Plan, dict[str, Obs]]


class Policy:
    """This node's settings as the pass asks them: scopes it may read and write, limits.
    Detection on each replica gets this object (share/detect.py's Config)."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.node = settings.node_id
        self._may_read: dict[str, bool] = {}  # scope -> self.s.may_read(scope)
        self._may_write: dict[str, bool] = {}
        self._scopes_of = settings  # the settings those answers came from

    @property
    def max_json_depth(self) -> int:
        return self.s.limits.max_json_depth

    @property
    def max_skill_bytes(self) -> int:
        return self.s.limits.max_skill_bytes

    @property
    def tombstone_retention_ms(self) -> int:
        return int(self.s.tombstone_retention_days * 86_400_000)

    def may_read(self, scope: str) -> bool:
        return self.s.may_read(scope)

    def readable(self, item: ItemId) -> bool:
        return item.kind == SKILL or self._scope_ok(item.scope, self._may_read, Settings.may_read)

    def writable(self, item: ItemId) -> bool:
        return item.kind == SKILL or self._scope_ok(item.scope, self._may_write, Settings.may_write)

    def _scope_ok(self, scope: str, answers: dict[str, bool], ask: Callable[[Settings, str], bool]) -> bool:
        # Asked several times for every item of a pass, and a mesh has few scopes.  The
        # answers are remembered per settings object: a reload (SIGHUP) replaces it.
        if self._scopes_of is not self.s:
            self._scopes_of = self.s
            self._may_read.clear()
            self._may_write.clear()
        ok = answers.get(scope)
        if ok is None:
            ok = answers[scope] = ask(self.s, scope)
        return ok


def readable_items(policy: Policy, p: Pass, items: list[ItemId]) -> list[ItemId]:
    """The items this node may read; the others are reported (R9) and left alone."""
    may: list[ItemId] = []
    for it in items:
        (may if policy.readable(it) else p.refused_read).append(it)
    return may


def base_seen(it: ItemId, st: State | None, share: Obs | None) -> bool:
    """Whether whoever replaced this node's base on the share had seen it (R2 on a NAS).

    An export is compare-and-set against the file its writer saw, checked with lstat just
    before the rename; a network client (NFS, SMB) answers lstat from its attribute cache
    (about a second, ``actimeo``), so a concurrent export can replace a fresh one it never
    saw.  No check closes that race; instead the loser notices: until this node has read
    its base back from the share settled (``share_sig`` recorded: older than SETTLE_NS,
    longer than a racing writer's stale window), a meshsync file that replaced it and does
    not name it as the version it replaced (``replaces``) did not derive from it, so the
    base is kept as beaten if it loses.  Recording it twice is harmless: history records
    are named by what they keep.  Memory files and skills alike: a skill's skill.json
    names what it replaced too (see replicas/share/detect.py _replaced, which also covers
    one export's SKILL.md left beside another's skill.json)."""
    if st is None or st.deleted or st.share_sig is not None or share is None:
        return True
    v = share.version
    if v is None or v.deleted or share.payload is None or v.same(base_of(st)):
        return True
    replaces = share.payload.replaces()
    return replaces is None or replaces == formats.rev(it, st.digest, st.stamp, st.node)


def plan(policy: Policy, p: Pass, items: list[ItemId], share_obs: dict[ItemId, Obs],
         index_obs: dict[ItemId, Obs]) -> list[Planned]:
    """Reconcile ``items`` (in key order) from their sides."""
    share_unknown = p.share_unknown
    cache_obs = p.cache_side.obs if p.cache_side is not None else {}
    index_problems: dict[ItemId, RowProblem] = p.index_problems
    plans: list[Planned] = []
    for it in items:
        sides: dict[str, Obs] = {}
        if it in share_obs and it not in share_unknown:
            sides[SHARE] = share_obs[it]
            # Conflict copies are more share sides ("copy:<path>"), only beside a share
            # side that was seen (replicas/share/copies.py).
            sides.update(p.share_copies.get(it, ()))
        if it in index_obs:
            sides[INDEX] = index_obs[it]
        if it in cache_obs:
            sides[CACHE] = cache_obs[it]
        if it.kind == MEM and not layout.valid_scope(it.scope):
            index_problems[it] = (f"index row {it} has scope {it.scope!r}, which is not node, mesh or user:<id>",
                                  "fix the scope; the row stays local and is not exported")
            continue
        if SHARE not in sides and INDEX not in sides and CACHE not in sides:
            continue
        writable = WRITE_ALL if policy.writable(it) else WRITE_LOCAL
        st = p.state.get(it)
        pl = reconcile(base_of(st), sides, now_ms=p.now_ms, node=policy.node, writable=writable,
                       base_seen=base_seen(it, st, sides.get(SHARE)))
        plans.append((it, pl, sides))
    p.stats.reconciled += len(plans)
    return plans
