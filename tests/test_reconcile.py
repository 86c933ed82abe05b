"""The pure reconciliation core (SPEC section 5: R1-R4, R9)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshsync.reconcile import (
    ABSENT,
    CACHE,
    COPY,
    INDEX,
    SHARE,
    SIDES,
    Obs,
    Plan,
    Version,
    effective,
    reconcile,
)

NODES = ("a", "b", "c")
DIGESTS = ("d1", "d2", "d3")
T0 = 1_764_230_400_000
SKEW = 10 * 60 * 1000  # ten minutes of clock skew
ALL = frozenset(SIDES)

# Stamps cluster around T0 so that ties on the stamp (and on the node) are common.
stamps = st.one_of(st.integers(T0, T0 + 3), st.integers(T0 - SKEW, T0 + SKEW))
live = st.builds(Version, stamps, st.sampled_from(NODES), st.sampled_from(DIGESTS))
tomb = st.builds(lambda s, n: Version(s, n, deleted=True), stamps, st.sampled_from(NODES))
versions = st.one_of(live, live, tomb)


@st.composite
def observations(draw, base):
    kind = draw(st.sampled_from(["absent", "version", "version", "base"] if base else ["absent", "version"]))
    dirty = draw(st.integers(0, 3)) == 0
    if kind == "absent":
        return Obs(None, dirty=dirty)
    v = base if kind == "base" else draw(versions)
    return Obs(v, draw(st.booleans()), payload=("payload", v), dirty=dirty)


@st.composite
def situations(draw):
    base = draw(st.none() | versions)
    names = draw(st.sets(st.sampled_from(SIDES), min_size=1))
    sides = {name: draw(observations(base)) for name in sorted(names)}
    now = draw(st.one_of(st.just(T0), stamps))
    node = draw(st.sampled_from(NODES))
    return base, sides, now, node


PROPS = settings(max_examples=150, deadline=None)


def run(base, sides, now=T0, node="a", writable=ALL) -> Plan:
    return reconcile(base, sides, now_ms=now, node=node, writable=writable)


def cands(base, sides, now, node):
    out = {}
    for s, o in sides.items():
        v = effective(o, base, now, node)
        if v is not None:
            out[s] = v
    return out


def applied(plan: Plan, sides: dict[str, Obs]) -> dict[str, Obs]:
    """The sides once the plan's writes are done (a tombstone lives on the share only)."""
    win = plan.winner
    out = {}
    for s, o in sides.items():
        if s not in plan.write:
            out[s] = o
        elif win is not None and win.deleted and s != SHARE:
            out[s] = ABSENT
        else:
            out[s] = Obs(win, True, payload=("payload", win))
    return out


def at_winner(s: str, win: Version) -> Obs:
    return ABSENT if win.deleted and s != SHARE else Obs(win, True)


# --- properties ------------------------------------------------------------------------------


@PROPS
@given(situations(), st.permutations(list(SIDES)), st.sets(st.sampled_from(SIDES)))
def test_outcome_does_not_depend_on_side_order(sit, order, writable):
    base, sides, now, node = sit
    writable = frozenset(writable)
    p1 = run(base, sides, now, node, writable)
    permuted = {s: sides[s] for s in order if s in sides}
    p2 = run(base, permuted, now, node, writable)
    assert (p1.winner, p1.source, p1.write, p1.refused) == (p2.winner, p2.source, p2.write, p2.refused)
    assert [(s, v) for s, v, _ in p1.beaten] == [(s, v) for s, v, _ in p2.beaten]


@PROPS
@given(situations())
def test_writes_are_exactly_the_sides_not_at_the_winner(sit):
    base, sides, now, node = sit
    plan = run(base, sides, now, node)
    win = plan.winner
    assert plan.write <= set(sides)
    assert plan.quiet == (not plan.write)
    if win is None:
        assert not plan.write
        return
    for s, o in sides.items():
        cur = o.version
        at_win = cur is not None and cur.same(win)
        if s in plan.write:
            # Never rewrite a side that already holds the winner, unless it must be normalised.
            assert not at_win or not o.trusted or o.dirty
        elif win.deleted:
            assert cur is None or cur.same(win)
        else:
            assert at_win and o.trusted and not o.dirty


@PROPS
@given(situations())
def test_plans_converge(sit):
    base, sides, now, node = sit
    plan = run(base, sides, now, node)
    win = plan.winner
    if win is None:
        return
    # The sides as the plan leaves them.
    after = applied(plan, sides)
    again = run(win, after, now + 1000, node)
    assert again.winner == win
    assert again.write == set()
    assert again.beaten == [] and again.refused == []
    # Every side holding the winner (as another node that took it would see them).
    settled = {s: at_winner(s, win) for s in sides}
    for other in NODES:
        again = run(win, settled, now + 5000, other)
        assert again.winner == win and again.quiet and again.beaten == []


@PROPS
@given(situations())
def test_newest_wins(sit):
    base, sides, now, node = sit
    plan = run(base, sides, now, node)
    cs = cands(base, sides, now, node)
    if not cs:
        assert plan.winner == (base if base is not None and base.deleted else None)
        return
    win = plan.winner
    assert win == max(cs.values(), key=lambda v: v.order)
    assert cs[plan.source] == win
    for o in sides.values():
        if o.trusted and o.version is not None:
            assert win.order >= o.version.order
    # Fresh (untrusted) writes always come after the base they replaced (R3).
    if base is not None:
        for s, o in sides.items():
            if s in cs and not o.trusted and not (o.version is not None and o.version.same(base)):
                assert cs[s].stamp > base.stamp


@PROPS
@given(situations())
def test_beaten_versions_are_kept(sit):
    base, sides, now, node = sit
    plan = run(base, sides, now, node)
    win = plan.winner
    beaten_digests = [v.digest for _, v, _ in plan.beaten]
    assert len(beaten_digests) == len(set(beaten_digests))  # each losing content once
    for s, v, payload in plan.beaten:
        assert not v.deleted and v.digest != win.digest
        assert base is None or not v.same(base)
        assert effective(sides[s], base, now, node) == v
        assert payload is sides[s].payload
    for v in cands(base, sides, now, node).values():
        if not v.deleted and v.digest != win.digest and not (base is not None and v.same(base)):
            assert v.digest in beaten_digests


@PROPS
@given(situations(), st.sets(st.sampled_from(SIDES)))
def test_refused_writes_are_reported_never_silently_dropped(sit, writable):
    base, sides, now, node = sit
    writable = frozenset(writable)
    full = run(base, sides, now, node)
    plan = run(base, sides, now, node, writable)
    assert plan.write <= writable
    cs = cands(base, sides, now, node)
    if SHARE in writable or SHARE not in cs:
        # Only the writes change; the decision is the same as with every side writable.
        assert plan.winner == full.winner and plan.source == full.source
        assert plan.write == full.write & writable
        blocked = full.write - writable
        if blocked and plan.source not in blocked:
            assert sorted(s for s, _ in plan.refused) == sorted(blocked)
            assert all(v == plan.winner for _, v in plan.refused)
        else:
            assert plan.refused == []
        return
    # A node that may not write the share follows it, unless a side holds a local change
    # (anything but the base), which wins by the usual order and is reported as refused.
    local = {s: v for s, v in cs.items() if s != SHARE and not (base is not None and v.same(base))}
    win = max([cs[SHARE], *local.values()], key=lambda v: v.order)
    assert plan.winner == win
    assert SHARE not in plan.write
    refused = [side for side, _ in plan.refused]
    assert all(v == win for _, v in plan.refused) and set(refused) <= set(sides) - writable
    if plan.source == SHARE:
        assert SHARE not in refused  # importing is never refused
    else:
        assert plan.source in local
        cur = sides[SHARE].version
        stale = cur is None or not cur.deleted if win.deleted else not (cur and cur.same(win) and sides[SHARE].trusted)
        if plan.source in writable and stale:
            assert SHARE in refused


@PROPS
@given(live, st.integers(1, SKEW), st.sampled_from(NODES), st.sampled_from(DIGESTS), st.sampled_from(NODES),
       st.integers(-SKEW, SKEW))
def test_r3_a_write_after_v_beats_v_whatever_the_clock(v, behind, wnode, wdigest, node, drift):
    now = v.stamp + drift
    w = Version(v.stamp - behind, wnode, wdigest)
    plan = run(v, {SHARE: Obs(v, True), INDEX: Obs(w, False, payload="row")}, now, node)
    assert plan.source == INDEX
    assert plan.winner.order > v.order
    assert (plan.winner.node, plan.winner.digest, plan.winner.deleted) == (wnode, wdigest, False)
    assert SHARE in plan.write and INDEX in plan.write  # the row gets the stamp the share got
    # A hand edit of the share file wins over the version it edited, too.
    plan = run(v, {SHARE: Obs(w, False, payload="file"), INDEX: Obs(v, True)}, now, node)
    assert plan.source == SHARE and plan.winner.order > v.order and INDEX in plan.write
    # And a write after a delete brings the item back.
    t = Version(v.stamp, v.node, deleted=True)
    plan = run(t, {SHARE: Obs(t, True), INDEX: Obs(w, False)}, now, node)
    assert not plan.winner.deleted and plan.winner.order > t.order and plan.source == INDEX
    # A delete beats the base it deleted.
    for gone in (INDEX, SHARE):
        other = SHARE if gone == INDEX else INDEX
        plan = run(v, {gone: ABSENT, other: Obs(v, True)}, now, node)
        assert plan.winner.deleted and plan.winner.stamp > v.stamp and plan.source == gone
        assert other in plan.write
        assert SHARE in plan.write  # the share loses its file or gets the tombstone (for offline nodes)


@PROPS
@given(live, st.integers(1, SKEW), st.sampled_from(NODES), st.sampled_from(NODES), st.integers(-SKEW, SKEW),
       st.booleans())
def test_r4_offline_node_never_resurrects(v, later, tnode, node, drift, with_cache):
    t = Version(v.stamp + later, tnode, deleted=True)
    sides = {SHARE: Obs(t, True), INDEX: Obs(v, True, payload="row")}
    if with_cache:
        sides[CACHE] = Obs(v, True)
    plan = run(v, sides, v.stamp + drift, node)
    assert plan.winner == t and plan.source == SHARE
    assert INDEX in plan.write and SHARE not in plan.write
    assert (CACHE in plan.write) == with_cache
    assert plan.beaten == []  # v was the base: deleted, not beaten
    # Even when it still holds an older base, and when the tombstone has expired.
    older = Version(v.stamp - later, v.node, v.digest)
    plan = run(older, {SHARE: Obs(t, True), INDEX: Obs(older, True)}, v.stamp, node)
    assert plan.winner == t
    plan = run(v, {SHARE: ABSENT, INDEX: Obs(v, True)}, v.stamp + drift, node)
    assert plan.winner.deleted and INDEX in plan.write and SHARE in plan.write


# --- conflict copies (Syncthing): more share sides, taken as they are, never written ---------


def copy_side(i: int) -> str:
    return f"{COPY}memory/mesh/k.sync-conflict-2026010{i}-000000-ABCDEF{i}.json"


@st.composite
def with_copies(draw):
    """A situation with one to three conflict copies beside a share side (detection
    hands copies to reconcile only then); a copy may hold the base."""
    base, sides, now, node = draw(situations())
    sides = dict(sides)
    if SHARE not in sides:
        sides[SHARE] = draw(observations(base))
    held = [live] + ([st.just(base)] if base is not None and not base.deleted else [])
    for i in range(draw(st.integers(1, 3))):
        v = draw(st.one_of(*held))
        sides[copy_side(i)] = Obs(v, draw(st.booleans()), payload=("copy", i))
    return base, sides, now, node


def copy_cands(base, sides, now, node):
    """The candidates as reconcile must see them: a copy at its own version."""
    out = cands(base, {s: o for s, o in sides.items() if not s.startswith(COPY)}, now, node)
    out.update({s: o.version for s, o in sides.items() if s.startswith(COPY)})
    return out


@PROPS
@given(with_copies(), st.sets(st.sampled_from(SIDES)))
def test_copies_take_part_in_newest_wins_and_are_never_written(sit, writable):
    base, sides, now, node = sit
    plan = run(base, sides, now, node, frozenset(writable))
    assert plan.write <= set(SIDES) and all(s in SIDES for s, _ in plan.refused)
    if SHARE in writable:
        cs = copy_cands(base, sides, now, node)
        assert plan.winner == max(cs.values(), key=lambda v: v.order)
        assert cs[plan.source] == plan.winner
    if plan.source.startswith(COPY):
        assert plan.refused == []  # importing a copy is no local write (R9)


@PROPS
@given(with_copies())
def test_every_copy_that_loses_is_beaten(sit):
    base, sides, now, node = sit
    plan = run(base, sides, now, node)
    win = plan.winner
    digests = [v.digest for _, v, _ in plan.beaten]
    assert len(digests) == len(set(digests))
    on_share = plan.source == SHARE or plan.source.startswith(COPY)
    for s, o in sides.items():
        if not s.startswith(COPY) or o.version.digest == win.digest:
            continue
        # A copy and the file were written concurrently: the loser is beaten even when it
        # is this node's base, unless a later local write replaced the base.
        if on_share or not o.version.same(base):
            assert o.version.digest in digests, (s, o.version)
    for s, v, payload in plan.beaten:
        assert not v.deleted and v.digest != win.digest and payload is sides[s].payload
        assert v == copy_cands(base, sides, now, node)[s]


@PROPS
@given(with_copies())
def test_plans_with_copies_converge_once_the_copies_are_removed(sit):
    base, sides, now, node = sit
    plan = run(base, sides, now, node)
    win = plan.winner
    after = applied(plan, {s: o for s, o in sides.items() if not s.startswith(COPY)})
    again = run(win, after, now + 1000, node)
    assert again.winner == win and again.quiet and again.beaten == []
    # The same copies under other names (another device, another second): same outcome.
    renamed = {(copy_side(9 - int(s[-6])) if s.startswith(COPY) else s): o for s, o in sides.items()}
    other = run(base, renamed, now, node)
    assert (other.winner, other.write) == (plan.winner, plan.write)
    assert sorted(v.digest for _, v, _ in other.beaten) == sorted(v.digest for _, v, _ in plan.beaten)


def test_a_copy_is_taken_as_it_is():
    """An untrusted copy (a hand edit that lost in Syncthing) is not stamped after the
    base like a local write: it was written elsewhere, before the file that beat it."""
    base = Version(T0, "a", "d1")
    copy = Version(T0 - 5, "b", "d2")
    plan = run(base, {SHARE: Obs(base, True), INDEX: Obs(base, True), copy_side(0): Obs(copy, False, "c")})
    assert plan.winner == base and plan.quiet
    assert plan.beaten == [(copy_side(0), copy, "c")]
    # The base lost to a copy written concurrently: it is beaten, not merely overwritten.
    newer = Version(T0 + 5, "b", "d2")
    plan = run(base, {SHARE: Obs(base, True, "file"), INDEX: Obs(base, True), copy_side(0): Obs(newer, True, "c")})
    assert plan.winner == newer and plan.source == copy_side(0) and plan.write == {SHARE, INDEX}
    assert plan.beaten == [(SHARE, base, "file")]


# --- examples --------------------------------------------------------------------------------


def test_ties_are_broken_deterministically():
    a = Version(T0, "a", "d2")
    b = Version(T0, "b", "d1")
    plan = run(None, {SHARE: Obs(a, True), INDEX: Obs(b, True)})
    assert plan.winner == b  # same stamp: the larger node id
    d = Version(T0, "b", deleted=True)
    plan = run(None, {SHARE: Obs(d, True), INDEX: Obs(b, True)})
    assert plan.winner == b  # same stamp and node: the update beats the delete
    plan = run(None, {SHARE: Obs(Version(T0, "b", "d2"), True), INDEX: Obs(b, True)})
    assert plan.winner.digest == "d2"  # then the larger digest
    plan = run(None, {SHARE: Obs(Version(T0 + 1, "a", "d1"), True), INDEX: Obs(Version(T0, "z", "d9"), True)})
    assert plan.winner.stamp == T0 + 1  # the stamp comes first


def test_delete_against_concurrent_update_newest_wins():
    v = Version(T0, "a", "d1")
    t = Version(T0 + 100, "b", deleted=True)
    # The update made here after v, declared after the delete: it wins and the tombstone goes.
    plan = run(v, {SHARE: Obs(t, True), INDEX: Obs(Version(T0 + 200, "a", "d2"), False, "row")}, T0 + 300)
    assert not plan.winner.deleted and plan.winner.digest == "d2" and plan.source == INDEX
    assert SHARE in plan.write and INDEX in plan.write and plan.beaten == []
    # Declared before the delete: the delete wins and the update is kept as beaten.
    plan = run(v, {SHARE: Obs(t, True), INDEX: Obs(Version(T0 + 50, "a", "d2"), False, "row")}, T0 + 300)
    assert plan.winner == t and INDEX in plan.write and SHARE not in plan.write
    assert [(s, v.digest, p) for s, v, p in plan.beaten] == [(INDEX, "d2", "row")]


def test_two_writes_in_one_second_keep_their_order():
    second = T0 // 1000 * 1000
    w1 = Version(second, "a", "d1")
    plan = run(None, {SHARE: ABSENT, INDEX: Obs(w1, False)}, second + 900)
    first = plan.winner
    assert first == w1 and plan.write == {SHARE, INDEX}
    # The second write declares the same second (Unix seconds cannot say more).
    plan = run(first, {SHARE: Obs(first, True), INDEX: Obs(Version(second, "a", "d2"), False)}, second + 950)
    second_win = plan.winner
    assert second_win.digest == "d2" and second_win.order > first.order and plan.beaten == []
    # And a third one going back to the first value still wins.
    plan = run(second_win, {SHARE: Obs(second_win, True), INDEX: Obs(Version(second, "a", "d1"), False)}, second + 990)
    assert plan.winner.digest == "d1" and plan.winner.order > second_win.order


def test_first_sight_of_an_item():
    v = Version(T0, "b", "d1")
    plan = run(None, {SHARE: Obs(v, True, "file"), INDEX: ABSENT})
    assert plan.winner == v and plan.source == SHARE and plan.write == {INDEX}
    assert plan.beaten == [] and plan.refused == []
    plan = run(None, {SHARE: ABSENT, INDEX: Obs(v, False, "row")})
    assert plan.winner == v and plan.source == INDEX and plan.write == {SHARE, INDEX}


def test_nothing_anywhere():
    assert run(None, {SHARE: ABSENT, INDEX: ABSENT}).winner is None
    assert run(None, {SHARE: ABSENT, INDEX: ABSENT}).quiet
    t = Version(T0, "a", deleted=True)
    plan = run(t, {SHARE: ABSENT, INDEX: ABSENT})
    assert plan.winner == t and plan.quiet and plan.beaten == []


def test_idle_item_is_quiet():
    v = Version(T0, "a", "d1")
    plan = run(v, {SHARE: Obs(v, True), INDEX: Obs(v, True), CACHE: Obs(v, True)})
    assert plan.winner == v and plan.quiet and plan.beaten == [] and plan.refused == []
    t = Version(T0, "a", deleted=True)
    assert run(t, {SHARE: Obs(t, True), INDEX: ABSENT}).quiet


def test_untrusted_copy_of_the_base_is_not_a_new_write():
    v = Version(T0, "a", "d1")
    plan = run(v, {SHARE: Obs(v, False), INDEX: Obs(v, True)})
    assert plan.winner == v and plan.write == {SHARE}  # only normalised
    assert plan.beaten == []


def test_dirty_side_is_rewritten():
    v = Version(T0, "a", "d1")
    plan = run(v, {SHARE: Obs(v, True, dirty=True), INDEX: Obs(v, True)})
    assert plan.winner == v and plan.write == {SHARE}
    t = Version(T0 + 5, "a", deleted=True)
    plan = run(t, {SHARE: Obs(t, True, dirty=True), INDEX: ABSENT})
    assert plan.winner == t and plan.write == {SHARE}


def test_newer_tombstone_replaces_older_one():
    t1 = Version(T0, "a", deleted=True)
    t2 = Version(T0 + 10, "b", deleted=True)
    plan = run(t1, {SHARE: Obs(t1, True), CACHE: Obs(t2, True)})
    assert plan.winner == t2 and plan.write == {SHARE}


def test_conflict_keeps_the_loser():
    v = Version(T0, "a", "d1")
    mine = Version(T0 + 10, "a", "d2")
    theirs = Version(T0 + 20, "b", "d3")
    plan = run(v, {SHARE: Obs(theirs, True, "file"), INDEX: Obs(mine, False, "row")}, T0 + 30)
    assert plan.winner == theirs and plan.source == SHARE
    assert plan.beaten == [(INDEX, mine, "row")]
    assert plan.write == {INDEX}


def test_same_content_on_two_sides_is_no_conflict():
    v = Version(T0, "a", "d1")
    plan = run(v, {SHARE: Obs(Version(T0 + 20, "b", "d2"), True), INDEX: Obs(Version(T0 + 10, "a", "d2"), False)})
    assert plan.winner == Version(T0 + 20, "b", "d2") and plan.beaten == []


def test_r9_local_write_refused_when_share_not_writable():
    v = Version(T0, "a", "d1")
    w = Version(T0 + 10, "a", "d2")
    plan = run(v, {SHARE: Obs(v, True), INDEX: Obs(w, False, "row")}, writable=frozenset({INDEX, CACHE}))
    assert plan.source == INDEX and plan.winner.digest == "d2"
    assert SHARE not in plan.write
    assert plan.refused == [(SHARE, plan.winner)]
    # Importing from the share is never refused.
    plan = run(v, {SHARE: Obs(w, True), INDEX: Obs(v, True)}, writable=frozenset({INDEX, CACHE}))
    assert plan.winner == w and plan.write == {INDEX} and plan.refused == []
    # Not a local write: the index still holds the base while the share holds an older
    # version (another node normalised a hand edit from an older base, or a restore).
    # A node that may not write the share follows it; nothing is refused.
    older = Version(T0 - 5, "b", "d3")
    plan = run(v, {SHARE: Obs(older, True, "file"), INDEX: Obs(v, True)}, writable=frozenset({INDEX, CACHE}))
    assert plan.winner == older and plan.source == SHARE
    assert plan.write == {INDEX} and plan.refused == [] and plan.beaten == []
    # A node that may write it re-exports the newer base instead.
    plan = run(v, {SHARE: Obs(older, True, "file"), INDEX: Obs(v, True)})
    assert plan.winner == v and plan.write == {SHARE} and plan.beaten == [(SHARE, older, "file")]
    # A local delete of an item the node may not write is refused too.
    plan = run(v, {SHARE: Obs(v, True), INDEX: ABSENT}, writable=frozenset({INDEX, CACHE}))
    assert plan.winner.deleted and plan.source == INDEX
    assert plan.refused == [(SHARE, plan.winner)] and plan.write == set()


@pytest.mark.parametrize("trusted", [True, False])
def test_effective(trusted):
    base = Version(T0, "a", "d1")
    old = Version(T0 - SKEW, "b", "d2")
    v = effective(Obs(old, trusted), base, T0 - 1, "c")
    assert v == (old if trusted else Version(T0 + 1, "b", "d2"))
    assert effective(Obs(base, trusted), base, T0, "c") == base
    assert effective(ABSENT, base, T0 - SKEW, "c") == Version(T0 + 1, "c", deleted=True)
    assert effective(ABSENT, base, T0 + 500, "c") == Version(T0 + 500, "c", deleted=True)
    assert effective(ABSENT, None, T0, "c") is None
    assert effective(ABSENT, Version(T0, "a", deleted=True), T0, "c") is None
    assert effective(Obs(old, trusted), None, T0, "c") == old


# --- R12: a clock far ahead cannot win for the future ---------------------------------------------

DAY = 86_400_000


def test_r12_a_fresh_write_stamped_far_ahead_is_taken_as_written_now():
    """A local write stamped a day ahead (the writer's clock is wrong) is clamped to the
    pass's clock; within the tolerance (minutes of skew, R3) stamps are left alone."""
    base = Version(T0 - 5000, "a", "d1")
    ahead = Version(T0 + DAY, "b", "d2")
    plan = run(base, {SHARE: Obs(base, True), INDEX: Obs(ahead, False)}, now=T0)
    assert plan.winner == Version(T0, "b", "d2") and plan.write == {SHARE, INDEX}
    minutes = Version(T0 + SKEW, "b", "d2")
    plan = run(base, {SHARE: Obs(base, True), INDEX: Obs(minutes, False)}, now=T0)
    assert plan.winner == minutes


def test_r12_a_version_from_the_future_loses_to_every_plausible_one_and_floors_nothing():
    """An item another node stamped a day ahead (exported before this rule): a later
    real-time write wins over it (it is not floored at the future stamp + 1 ms), and so
    does any plausible version met on another side; a future version alone still wins
    (nothing else claims the item)."""
    future = Version(T0 + DAY, "z", "d1")
    write = Version(T0 - 1000, "a", "d2")
    plan = run(future, {SHARE: Obs(future, True), INDEX: Obs(write, False)}, now=T0)
    assert plan.winner == write and plan.write == {SHARE, INDEX}
    plan = run(None, {SHARE: Obs(future, True), INDEX: Obs(write, True)}, now=T0)
    assert plan.winner == write and plan.beaten == [(SHARE, future, None)]
    assert run(None, {SHARE: Obs(future, True)}, now=T0).winner == future
    # A delete of a future item is stamped now, not after the future stamp.
    plan = run(future, {SHARE: Obs(future, True), INDEX: ABSENT}, now=T0, node="a")
    assert plan.winner == Version(T0, "a", deleted=True)
    # Once the clock reaches it, it is an ordinary version again (every node agrees).
    assert run(None, {SHARE: Obs(future, True), INDEX: Obs(write, True)}, now=T0 + DAY).winner == future


@PROPS
@given(situations())
def test_a_base_nobody_may_have_seen_is_kept_when_beaten(sit):
    """R2 on a NAS: with ``base_seen`` False (this node's fresh export replaced on the share
    by a writer that did not name it, engine/plan.py base_seen) every losing content is
    kept, the base included; the decision itself (winner, writes) does not change."""
    base, sides, now, node = sit
    seen = run(base, sides, now, node)
    plan = reconcile(base, sides, now_ms=now, node=node, base_seen=False)
    assert (plan.winner, plan.source, plan.write) == (seen.winner, seen.source, seen.write)
    win = plan.winner
    beaten_digests = [v.digest for _, v, _ in plan.beaten]
    assert len(beaten_digests) == len(set(beaten_digests))
    for v in cands(base, sides, now, node).values():
        if not v.deleted and v.digest != win.digest:
            assert v.digest in beaten_digests


def test_own_export_overwritten_unseen_is_beaten_not_let_go():
    """The issue's race as the loser sees it: its index still holds its export (the base),
    the share another node's newer export that never saw it."""
    mine = Version(T0, "a", "d1")
    theirs = Version(T0 + 5, "b", "d2")
    sides = {SHARE: Obs(theirs, True, "file"), INDEX: Obs(mine, True, "row")}
    assert run(mine, sides).beaten == []  # when b had seen it: overwritten, not beaten
    plan = reconcile(mine, sides, now_ms=T0 + 10, node="a", base_seen=False)
    assert plan.winner == theirs and plan.beaten == [(INDEX, mine, "row")]
