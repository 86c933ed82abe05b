"""Bytes of items: exact JSON, memory files and their rev check, skill.json, tombstones."""

from __future__ import annotations

import json
import math

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshsync import formats
from meshsync.formats import (
    FormatError,
    canonical,
    digest_bytes,
    loads,
    parse_memory,
    parse_skill_json,
    parse_tombstone,
    render_memory,
    render_skill_json,
    render_tombstone,
    skill_digest,
)
from meshsync.layout import memory_id, skill_id

BIG = 123456789012345678901234567890
ITEM = memory_id("mesh", "user.preferences")
STAMP = 1764230400123
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(_text, kids, max_size=4),
    max_leaves=12,
)


def render(value, item=ITEM, stamp=STAMP, node="ceo"):
    return render_memory(item, value, digest_bytes(canonical(value)), stamp, node)


def same_json(a, b) -> bool:
    """Equality that also tells 0.0 from -0.0 (canonical bytes do)."""
    return canonical(a) == canonical(b) and a == b


# --- loads / canonical ------------------------------------------------------------------------


@FAST
@given(json_values)
def test_canonical_round_trips_exactly(v):
    text = canonical(v)
    back = loads(text)
    assert same_json(back, v)
    assert canonical(back) == text  # stable: same content, same bytes
    assert loads(text.decode("utf-8")) == v  # str input too


@FAST
@given(json_values)
def test_memory_file_round_trips_and_is_trusted(v):
    data = render(v)
    assert data == render(v)
    rec = parse_memory(data, "mesh", "user.preferences")
    assert rec.trusted and rec.stamp == STAMP and rec.node == "ceo"
    assert same_json(rec.value, v)
    assert rec.text == canonical(v) and rec.digest == digest_bytes(canonical(v))


def test_big_integers_keep_every_digit():
    for n in (BIG, -BIG, 2**64, 2**64 - 1, -(2**63) - 1, 10**16, 12345678901234567):
        text = canonical({"n": n, "l": [n]})
        assert str(n).encode() in text
        assert loads(text) == {"n": n, "l": [n]}
        assert loads(str(n)) == n
    assert loads(b"123456789012345678901234567890") == BIG
    assert canonical(BIG) == b"123456789012345678901234567890"
    # orjson alone would have rounded this one to a float.
    assert isinstance(orjson.loads(b"123456789012345678901"), float)
    assert loads(b"123456789012345678901") == 123456789012345678901


def test_big_integer_memory_file():
    data = render({"id": BIG, "f": 1.5})
    assert b"123456789012345678901234567890" in data
    rec = parse_memory(data, "mesh", "user.preferences")
    assert rec.value == {"id": BIG, "f": 1.5} and rec.trusted


@pytest.mark.parametrize(
    "doc",
    [b"NaN", b"Infinity", b"-Infinity", b"[NaN]", b'{"a": Infinity}', b"[NaN, 12345678901234567890]",
     b"[Infinity, 123456789012345678901234567890]", b"1e400", b"[-1e400]",
     b"[1e400, 123456789012345678901234567890]", b"[-1e999, 12345678901234567890]"],
)
def test_non_finite_numbers_rejected(doc):
    with pytest.raises(FormatError):
        loads(doc)


@pytest.mark.parametrize(
    "doc",
    [b'"\\ud800"', b'["\\udfff", 123456789012345678901234567890]', b'{"\\ud800": 12345678901234567890}',
     b"\xff", b'["\xc3", 12345678901234567890]', b"", b"{", b"[1,]", b"{'a': 1}", b"1 2",
     b'{"a": 1} x', b"\xef\xbb\xbf{}", "1" * 5000, b"[" + b"9" * 5000 + b"]"],
)
def test_invalid_json_is_a_format_error(doc):
    with pytest.raises(FormatError):
        loads(doc)


def test_escaped_surrogate_pairs_are_fine():
    assert loads(b'["\\ud83d\\ude00", 123456789012345678901234567890]') == ["\U0001f600", BIG]
    assert loads(b'"\\ud83d\\ude00"') == "\U0001f600"


def test_big_int_with_lone_surrogate_never_crashes_canonical():
    # Used to parse (Python's json accepts lone surrogates) and then crash in canonical().
    with pytest.raises(FormatError, match="surrogate"):
        canonical(loads(b'{"k": "\\udc80", "n": 123456789012345678901234567890}'))


def nested(depth: int, leaf: bytes = b"1") -> bytes:
    return b"[" * depth + leaf + b"]" * depth


@pytest.mark.parametrize("big", [False, True])
def test_depth_limit(big):
    leaf = b"123456789012345678901234567890" if big else b"1"
    assert loads(nested(10, leaf), max_depth=10) is not None
    with pytest.raises(FormatError, match="deeper than 10"):
        loads(nested(11, leaf), max_depth=10)
    assert loads(nested(200, leaf), max_depth=0) is not None  # 0: no limit
    with pytest.raises(FormatError):
        loads(nested(65, leaf))  # default limit 64
    assert loads(b'{"a": {"b": {"c": 1}}}', max_depth=3) == {"a": {"b": {"c": 1}}}
    with pytest.raises(FormatError):
        loads(b'{"a": {"b": {"c": {}}}}', max_depth=3)
    assert loads(b"7", max_depth=1) == 7


def test_extreme_nesting_is_a_format_error_not_a_crash():
    for doc in (nested(5000), nested(5000, b"123456789012345678901234567890"), b'{"a":' * 5000 + b"1" + b"}" * 5000):
        with pytest.raises(FormatError):
            loads(doc, max_depth=0)


def test_value_depth_is_the_same_in_the_index_and_on_the_share():
    # An index value at the limit must stay importable once wrapped in its memory file.
    value = loads(nested(64))
    data = render(value)
    rec = parse_memory(data, "mesh", "user.preferences", max_depth=64)
    assert rec.value == value and rec.trusted
    with pytest.raises(FormatError, match="deeper"):
        parse_memory(b'{"value": ' + nested(65) + b"}", "mesh", "k", max_depth=64)


def test_canonical_is_compact_and_sorted():
    assert canonical({"b": 1, "a": [1, 2, {"d": None, "c": True}]}) == b'{"a":[1,2,{"c":true,"d":null}],"b":1}'
    assert canonical("é") == "\"é\"".encode()
    assert canonical({"b": BIG, "a": 1}) == b'{"a":1,"b":123456789012345678901234567890}'


# --- memory files ----------------------------------------------------------------------------


def test_render_memory_is_stable_and_readable():
    data = render({"theme": "dark"})
    assert data == render({"theme": "dark"})
    assert data.endswith(b"\n")
    doc = json.loads(data)
    assert doc["scope"] == "mesh" and doc["key"] == "user.preferences"
    assert doc["value"] == {"theme": "dark"} and doc["node_id"] == "ceo"
    assert doc["updated_at"] == STAMP // 1000 and doc["updated_at_ms"] == STAMP
    assert isinstance(doc["rev"], str)
    # Key order does not change the bytes.
    assert render({"a": 1, "b": 2}) == render({"b": 2, "a": 1})


def test_parse_rendered_is_trusted():
    rec = parse_memory(render({"theme": "dark"}), "mesh", "user.preferences")
    assert rec.trusted
    assert (rec.scope, rec.key, rec.value, rec.node, rec.stamp) == ("mesh", "user.preferences", {"theme": "dark"}, "ceo", STAMP)


def edit(data: bytes, **changes) -> bytes:
    doc = json.loads(data)
    doc.update(changes)
    return json.dumps(doc).encode()


def test_hand_edits_are_untrusted():
    data = render({"theme": "dark"})
    # Reformatting alone keeps the claim true.
    assert parse_memory(edit(data), "mesh", "user.preferences").trusted
    # New value, rev kept.
    rec = parse_memory(edit(data, value={"theme": "light"}), "mesh", "user.preferences")
    assert not rec.trusted and rec.value == {"theme": "light"}
    # Only updated_at changed: the stamp falls back to it, and it is not trusted.
    rec = parse_memory(edit(data, updated_at=STAMP // 1000 + 3600), "mesh", "user.preferences")
    assert not rec.trusted and rec.stamp == (STAMP // 1000 + 3600) * 1000
    # Both stamps moved consistently: still a hand edit.
    rec = parse_memory(edit(data, updated_at=1, updated_at_ms=1500), "mesh", "user.preferences")
    assert not rec.trusted and rec.stamp == 1500
    # Node changed.
    assert not parse_memory(edit(data, node_id="other"), "mesh", "user.preferences").trusted
    # rev removed or garbled.
    doc = json.loads(data)
    del doc["rev"]
    assert not parse_memory(json.dumps(doc).encode(), "mesh", "user.preferences").trusted
    assert not parse_memory(edit(data, rev="0" * 16), "mesh", "user.preferences").trusted
    assert not parse_memory(edit(data, rev=7), "mesh", "user.preferences").trusted


def test_a_file_moved_to_another_key_is_untrusted():
    # The scope/key fields are gone, so the path decides; the rev no longer matches.
    doc = json.loads(render(1))
    del doc["scope"], doc["key"]
    data = json.dumps(doc).encode()
    assert parse_memory(data, "mesh", "user.preferences").trusted
    assert not parse_memory(data, "mesh", "other.key").trusted
    assert not parse_memory(data, "user:bob", "user.preferences").trusted


def test_hand_made_file():
    rec = parse_memory(b'{"value": 1}', "mesh", "k")
    assert not rec.trusted
    assert rec.stamp is None and rec.node is None
    assert (rec.scope, rec.key, rec.value, rec.text) == ("mesh", "k", 1, b"1")
    rec = parse_memory(b'{"value": {"x": [1]}, "updated_at": 1764230400}', "user:bob", "k")
    assert not rec.trusted and rec.stamp == 1764230400000 and rec.scope == "user:bob"
    rec = parse_memory(b'{"value": null, "updated_at": 1764230400.5, "node_id": "n"}', "mesh", "k")
    assert rec.value is None and rec.stamp == 1764230400500 and rec.node == "n" and not rec.trusted


@pytest.mark.parametrize("bad_time", [b'"yesterday"', b"true", b"-5", b"null", b"[]", b"-0.5",
                                      b"1e300", b"99999999999999999999", b"1000000000000000000000000000000",
                                      str(formats.MAX_STAMP_MS // 1000 + 1).encode()])
def test_unusable_updated_at_gives_no_stamp(bad_time):
    rec = parse_memory(b'{"value": 1, "updated_at": ' + bad_time + b"}", "mesh", "k")
    assert rec.stamp is None and not rec.trusted


def test_out_of_range_stamps_are_not_times():
    # A stamp past year 9999 would win every conflict and overflow SQLite's INTEGER.
    big = 10**30
    rec = parse_memory(b'{"value": 1, "updated_at": %d, "updated_at_ms": %d}' % (big, big * 1000), "mesh", "k")
    assert rec.stamp is None and not rec.trusted
    top = formats.MAX_STAMP_MS
    rec = parse_memory(b'{"value": 1, "updated_at": %d, "updated_at_ms": %d}' % (top // 1000, top), "mesh", "k")
    assert rec.stamp == top
    meta = parse_skill_json(b'{"name": "x", "updated_at": 1e300}')
    assert meta.stamp is None
    meta = parse_skill_json(b'{"name": "x", "updated_at": -1, "updated_at_ms": -1}')
    assert meta.stamp is None
    with pytest.raises(FormatError, match="out of range"):
        parse_tombstone(render_tombstone(ITEM, big, "n"))
    with pytest.raises(FormatError, match="out of range"):
        parse_tombstone(render_tombstone(ITEM, -1, "n"))


def test_mismatched_millis_fall_back_to_seconds():
    rec = parse_memory(b'{"value": 1, "updated_at": 5, "updated_at_ms": 9000}', "mesh", "k")
    assert rec.stamp == 5000


def test_bom_rejected():
    with pytest.raises(FormatError, match="byte-order mark"):
        parse_memory(b'\xef\xbb\xbf{"value": 1}', "mesh", "k")


@pytest.mark.parametrize(
    ("data", "msg"),
    [
        (b"[1, 2]", 'JSON object with a "value" field, not an array'),
        (b'"text"', "not a string"),
        (b"42", "not a number"),
        (b"1.5", "not a number"),
        (b"true", "not a boolean"),
        (b"null", "not null"),
        (b'{"scope": "mesh", "key": "k"}', 'no "value" field'),
        (b"{}", 'no "value" field'),
        (b"{not json", "invalid JSON"),
        (b'{"value": NaN}', "invalid JSON"),
        (b'{"value": [NaN, 123456789012345678901234567890]}', "NaN is not valid JSON"),
        (b'{"value": "\xff"}', "UTF-8"),
    ],
)
def test_wrong_shapes_rejected_with_clear_messages(data, msg):
    with pytest.raises(FormatError, match=msg):
        parse_memory(data, "mesh", "k")


def test_scope_key_mismatch_with_path_rejected():
    data = render(1)  # says mesh / user.preferences
    with pytest.raises(FormatError, match="path means"):
        parse_memory(data, "mesh", "other")
    with pytest.raises(FormatError, match="path means"):
        parse_memory(data, "user:bob", "user.preferences")
    with pytest.raises(FormatError, match="path means"):
        parse_memory(b'{"value": 1, "key": 5}', "mesh", "5")
    # Fields that agree, or that are absent/null, are fine.
    assert parse_memory(b'{"value": 1, "scope": "mesh"}', "mesh", "k").key == "k"
    assert parse_memory(b'{"value": 1, "scope": null, "key": null}', "mesh", "k").scope == "mesh"


def test_shortened_path_takes_scope_and_key_from_the_file():
    key = "k" * 300
    item = memory_id("user:bob", key)
    data = render_memory(item, [1], digest_bytes(canonical([1])), STAMP, "n")
    rec = parse_memory(data, None, None)
    assert (rec.scope, rec.key, rec.trusted) == ("user:bob", key, True)
    with pytest.raises(FormatError, match="shortened"):
        parse_memory(b'{"value": 1}', None, None)
    with pytest.raises(FormatError, match="shortened"):
        parse_memory(b'{"value": 1, "scope": "mesh", "key": 3}', "mesh", None)


def test_big_rev_inputs_do_not_matter_for_other_items():
    a = formats.rev(ITEM, "d", 1, "n")
    assert a == formats.rev(ITEM, "d", 1, "n")
    assert len({a, formats.rev(ITEM, "d", 2, "n"), formats.rev(ITEM, "e", 1, "n"), formats.rev(ITEM, "d", 1, "m"),
                formats.rev(memory_id("mesh", "x"), "d", 1, "n"), formats.rev(skill_id("user.preferences"), "d", 1, "n")}) == 6


# --- skills ----------------------------------------------------------------------------------


def test_skill_json_round_trip():
    item = skill_id("web-search")
    data = render_skill_json(item, None, "abc", STAMP, "mini")
    assert data == render_skill_json(item, None, "abc", STAMP, "mini")
    meta = parse_skill_json(data)
    assert (meta.name, meta.node, meta.stamp, meta.path) == ("web-search", "mini", STAMP, None)
    assert meta.rev == formats.rev(item, "abc", STAMP, "mini")
    data = render_skill_json(item, "/opt/skills/web", "abc", STAMP, "mini")
    meta = parse_skill_json(data)
    assert meta.path == "/opt/skills/web"
    assert json.loads(data)["updated_at"] == STAMP // 1000


def test_a_skill_json_names_the_version_it_replaced():
    """``replaces`` in skill.json, as in a memory file (engine/plan.py base_seen): not part
    of ``rev``; what it means for the folder is decided beside its files (detect._replaced)."""
    item = skill_id("web-search")
    seen = formats.rev(item, "x" * 32, STAMP - 5, "b")
    data = render_skill_json(item, None, "abc", STAMP, "mini", seen)
    meta = parse_skill_json(data)
    assert meta.replaces == seen and meta.rev == formats.rev(item, "abc", STAMP, "mini")
    assert parse_skill_json(render_skill_json(item, None, "abc", STAMP, "mini")).replaces is None
    assert "replaces" not in json.loads(render_skill_json(item, None, "abc", STAMP, "mini"))
    assert parse_skill_json(b'{"name": "x", "replaces": 3}').replaces is None


def test_skill_json_hand_made_and_bad():
    meta = parse_skill_json(b'{"name": "x", "updated_at": 10}')
    assert (meta.name, meta.node, meta.stamp, meta.path, meta.rev) == ("x", None, 10000, None, None)
    meta = parse_skill_json(b'{"name": 5, "source_node": "", "path": 3, "rev": "r", "updated_at": 1}')
    assert (meta.name, meta.node, meta.path) == (None, None, None)
    assert meta.rev is None  # a rev without updated_at_ms cannot be ours
    for bad in (b"[]", b"3", b"{", b'{"a": NaN}'):
        with pytest.raises(FormatError):
            parse_skill_json(bad)


def test_skill_digest_covers_every_part():
    base = skill_digest(b"# Skill\n", None, "")
    assert base == skill_digest(b"# Skill\n", None, "")
    variants = [
        skill_digest(b"# Skill\n ", None, ""),
        skill_digest(b"# Skill\n", "", ""),
        skill_digest(b"# Skill\n", "/p", ""),
        skill_digest(b"# Skill\n", None, "ab"),
        skill_digest(None, "/p", ""),
        skill_digest(b"", None, ""),
    ]
    assert len({base, *variants}) == 1 + len(variants)


def test_skill_digest_parts_cannot_be_confused():
    # None vs content that spells the old "none" marker; bytes moving between parts.
    assert skill_digest(None, "p", "") != skill_digest(b"\0none", "p", "")
    assert skill_digest(b"c", None, "") != skill_digest(b"c", "\0none", "")
    assert skill_digest(b"x\0py", None, "") != skill_digest(b"x", "y\0p\0none", "")
    assert skill_digest(b"", "", "") != skill_digest(None, None, "")


@settings(max_examples=200, deadline=None)
@given(st.tuples(st.none() | st.binary(max_size=8), st.none() | st.text(max_size=6), st.sampled_from(["", "ab", "cd"])),
       st.tuples(st.none() | st.binary(max_size=8), st.none() | st.text(max_size=6), st.sampled_from(["", "ab", "cd"])))
def test_skill_digest_injective(a, b):
    assert (skill_digest(*a) == skill_digest(*b)) == (a == b)


def test_extras_digest():
    assert formats.extras_digest([]) == ""
    one = formats.extras_digest([("scripts/a.sh", "d1"), ("b.txt", "d2")])
    assert one == formats.extras_digest([("b.txt", "d2"), ("scripts/a.sh", "d1")])  # order-free
    assert one != formats.extras_digest([("scripts/a.sh", "d2"), ("b.txt", "d1")])
    assert one != formats.extras_digest([("scripts/a.sh", "d1")])


# --- tombstones ------------------------------------------------------------------------------


@pytest.mark.parametrize("item", [memory_id("user:bob", "a/b"), memory_id("mesh", "k" * 300), skill_id("S")])
def test_tombstone_round_trip(item):
    data = render_tombstone(item, STAMP, "nas")
    assert data == render_tombstone(item, STAMP, "nas")
    assert parse_tombstone(data) == (item, STAMP, "nas")


@pytest.mark.parametrize(
    "data",
    [b"[]", b"5", b'"x"', b"null", b"{}",
     b'{"kind": "m", "scope": "mesh", "key": "k", "deleted_at_ms": "1", "node_id": "n"}',
     b'{"kind": "m", "scope": "mesh", "key": "k", "deleted_at_ms": true, "node_id": "n"}',
     b'{"kind": "m", "scope": "mesh", "key": "k", "deleted_at_ms": 1.5, "node_id": "n"}',
     b'{"kind": "m", "scope": "mesh", "key": "k", "deleted_at_ms": 1, "node_id": 2}',
     b'{"kind": "x", "scope": "mesh", "key": "k", "deleted_at_ms": 1, "node_id": "n"}',
     b'{"kind": "m", "scope": 1, "key": "k", "deleted_at_ms": 1, "node_id": "n"}',
     b'{"kind": "m", "scope": "mesh", "key": null, "deleted_at_ms": 1, "node_id": "n"}',
     b'{"kind": "m", "scope": "mesh", "key": "k", "deleted_at_ms": 1}',
     b"not json"],
)
def test_bad_tombstones_rejected(data):
    with pytest.raises(FormatError):
        parse_tombstone(data)


def test_floats_survive_exactly():
    for f in (0.1, 1e-7, 1e20, 1.7976931348623157e308, -0.0, 5e-324):
        assert loads(canonical(f)) == f
        assert math.copysign(1, loads(canonical(f))) == math.copysign(1, f)
        assert loads(canonical([f, BIG])) == [f, BIG]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=8), st.sampled_from([b"1" * 15, b"2" * 16, b"9" * 40, b"0", b"\xd9", b"\xb9"])),
                max_size=10))
def test_big_int_check_matches_the_regular_expression(parts):
    raw = b"".join(parts)
    assert formats._has_big_int(raw) == (formats._BIG_INT.search(raw) is not None)


def test_index_values_are_read_as_the_seed_client_reads_them():
    """R10: a value that is JSON text is its JSON; any other text is the string it
    spells (the seed's getMemory: JSON.parse, else the text).  JSON that meshsync cannot
    carry exactly is still refused, never read as a string."""
    from meshsync.formats import index_value, json_text

    assert index_value('{"a": [1, 2]}') == {"a": [1, 2]}
    assert index_value(" 1 ") == 1
    for text in ("hello mesh", "", "{not json", "NaN", "Infinity", "[1,]", "'single'"):
        assert index_value(text) == text
        assert json.loads(json_text(text)) == text
    assert json_text('{"a":1}') == '{"a":1}'
    for text in ("[1e400]", '"\\ud800"', "[[[[1]]]]"):
        with pytest.raises(FormatError):
            index_value(text, 3)


def test_a_memory_file_names_the_version_it_replaced():
    """``replaces`` (engine/plan.py base_seen): the rev of the version the writer saw on
    the share; "" for meshsync's file that names none, None for a file meshsync did not
    write (the question does not apply to it).  Not part of ``rev``: the version is the
    same whatever the file replaced."""
    it = memory_id("mesh", "k")
    d = formats.digest_bytes(formats.canonical({"a": 1}))
    seen = formats.rev(it, "x" * 32, 1_764_230_400_000 - 5, "b")
    got = formats.parse_memory(formats.render_memory(it, {"a": 1}, d, 1_764_230_400_000, "a", replaces=seen), "mesh", "k")
    assert got.trusted and got.replaces == seen
    plain = formats.parse_memory(formats.render_memory(it, {"a": 1}, d, 1_764_230_400_000, "a"), "mesh", "k")
    assert plain.trusted and plain.replaces == ""
    assert formats.parse_memory(b'{"value": 1, "replaces": "ab"}', "mesh", "k").replaces is None
