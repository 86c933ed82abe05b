"""Name encoding and share paths (SPEC section 2)."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from meshsync import layout
from meshsync.layout import (
    MEM,
    SKILL,
    ItemId,
    LayoutError,
    Shortened,
    decode,
    encode,
    is_ignored_name,
    item_path,
    memory_dir,
    memory_id,
    skill_id,
    tombstone_path,
)

PORTABLE = re.compile(r"[a-z0-9._\-^%~]+")
DEVICES = {"con", "prn", "aux", "nul"} | {f"com{i}" for i in range(1, 10)} | {f"lpt{i}" for i in range(1, 10)}

# Text that hits every branch of the encoder: plain chars, upper case, separators,
# dots, spaces, control characters, non-ASCII (incl. astral), reserved-name pieces and
# other tools' markers.
_ALPHABET = st.sampled_from(
    list("abcxyzAZ09._-/\\:*?\"<>| ~^%$#@\t\n\r\x00\x1f\x7fé€𝄞ÉİK")
    + ["con", "CON", "nul", "com1", "LPT9", "aux", ".sync-conflict-", ".tmp", "desktop.ini", ".."]
)
_chars = st.characters(exclude_categories=("Cs",))
names = st.one_of(
    st.text(_chars, max_size=60),
    st.lists(_ALPHABET, max_size=30).map("".join),
    # Long names (up to 1000 characters), built cheaply from repeated pieces.
    st.builds(lambda a, b, n: (a * n + b)[:1000], st.text(_chars, min_size=1, max_size=30),
              st.text(_chars, max_size=30), st.integers(5, 200)),
    st.builds(lambda parts, n: ("".join(parts) * n)[:1000], st.lists(_ALPHABET, min_size=1, max_size=20),
              st.integers(3, 100)),
)
FAST = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_portable(seg: str) -> None:
    assert PORTABLE.fullmatch(seg), seg
    assert not seg.startswith(".")
    assert not seg.endswith((".", " "))
    assert seg.split(".", 1)[0].lower() not in DEVICES
    assert len((seg + ".json").encode("utf-8")) <= 255
    assert seg == seg.lower()


# --- properties ------------------------------------------------------------------------------


@FAST
@given(names)
@example("")
@example("..")
@example(".")
@example("a/b\\c:d")
@example("CON")
@example("con")
@example("con.txt")
@example("Nul.json")
@example("x" * 300)
@example("é" * 300)
@example("trailing. ")
@example("desktop.ini")
@example("a.sync-conflict-20240101-ABCDEF.json")
@example("backup.tmp")
def test_encode_portable_and_round_trips(s):
    seg = encode(s)
    assert_portable(seg)
    assert not is_ignored_name(seg)
    assert not is_ignored_name(seg + ".json")
    if layout.SHORT_MARK in seg:
        with pytest.raises(Shortened):
            decode(seg)
    else:
        assert decode(seg) == s


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names, names)
def test_encode_injective_case_insensitively(a, b):
    if a != b:
        assert encode(a).lower() != encode(b).lower()


@settings(max_examples=150, deadline=None)
@given(st.text(_chars, min_size=1, max_size=5).map(lambda t: (t * 400)[:400]), names, names)
def test_shortened_names_with_a_common_head_stay_apart(head, a, b):
    ea, eb = encode(head + a), encode(head + b)
    assert layout.SHORT_MARK in ea and layout.SHORT_MARK in eb
    assert (ea.lower() == eb.lower()) == (a == b)


@settings(max_examples=200, deadline=None)
@given(st.text(_chars, max_size=40))
def test_case_variants_never_meet(s):
    variants = {s, s.upper(), s.lower(), s.swapcase(), s.title()}
    encoded = {encode(v).lower() for v in variants}
    assert len(encoded) == len(variants)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(st.just("mesh"), st.just("node"), names.map(lambda u: "user:" + u)),
    names,
    names,
    st.sampled_from([MEM, SKILL]),
)
def test_paths_stay_inside_their_folder(scope, key, node, kind):
    item = ItemId(kind, scope if kind == MEM else "", key)
    for p in (item_path(item, node), tombstone_path(item, node)):
        assert not p.startswith("/")
        parts = p.split("/")
        assert ".." not in parts and "." not in parts and "" not in parts
        for seg in parts:
            assert len(seg.encode()) <= 255
            assert not is_ignored_name(seg) or seg == layout.META
    p = item_path(item, node)
    if kind == MEM:
        assert p.startswith(memory_dir(scope, node) + "/")
        assert p.endswith(".json")
        assert p.count("/") == (2 if scope == "mesh" else 3)
    else:
        assert p == f"skills/{encode(key)}"
    assert tombstone_path(item, node).startswith(layout.TOMBSTONES + "/")


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(codec="ascii"), max_size=12))
def test_decode_accepts_only_canonical_spellings(seg):
    try:
        name = decode(seg)
    except LayoutError:
        return
    assert encode(name) == seg


# --- examples -------------------------------------------------------------------------------


def test_plain_keys_stay_readable():
    assert encode("user.preferences") == "user.preferences"
    assert item_path(memory_id("mesh", "user.preferences"), "n1") == "memory/mesh/user.preferences.json"
    for plain in ("a", "abc-def_1.2", "0", "x.y.z"):
        assert encode(plain) == plain
        assert decode(plain) == plain


@pytest.mark.parametrize(
    ("name", "seg"),
    [
        ("", "^"),
        ("a/b", "a%2fb"),
        ("a\\b", "a%5cb"),
        ("..", "%2e%2e"),
        (".hidden", "%2ehidden"),
        ("end.", "end%2e"),
        ("end ", "end%20"),
        ("a b", "a%20b"),
        ("c:d", "c%3ad"),
        ("Hand", "^hand"),
        ("é", "%c3%a9"),
        ("CON", "^c^o^n"),
        ("con", "%63on"),
        ("con.txt", "%63on.txt"),
        ("lpt1.x.y", "%6cpt1.x.y"),
        ("com10", "com10"),
        ("x.tmp", "x%2etmp"),
        ("desktop.ini", "%64esktop.ini"),
        ("a.sync-conflict-b", "a%2esync-conflict-b"),
        ("^", "%5e"),
        ("%", "%25"),
        ("~", "%7e"),
    ],
)
def test_encode_examples(name, seg):
    assert encode(name) == seg
    assert decode(seg) == name
    assert_portable(seg)


def test_keys_differing_only_in_case_get_different_files():
    paths = {item_path(memory_id("mesh", k), "n").lower() for k in ("Key", "key", "KEY", "kEy")}
    assert len(paths) == 4


def test_long_keys_are_shortened_deterministically():
    k300 = "k" * 300
    seg = encode(k300)
    assert layout.SHORT_MARK in seg
    assert len(seg) <= layout.MAX_STEM
    assert seg == encode(k300)
    assert seg.startswith("k" * 100)
    # Long keys that share their first 200 characters still differ, in any case.
    assert encode(k300 + "a").lower() != encode(k300 + "A").lower()
    assert encode(k300 + "a") != encode(k300 + "b")
    with pytest.raises(Shortened):
        decode(seg)
    # Exactly at the limit: not shortened; one more character: shortened.
    assert encode("a" * layout.MAX_STEM) == "a" * layout.MAX_STEM
    assert layout.SHORT_MARK in encode("a" * (layout.MAX_STEM + 1))


def test_shortening_never_cuts_an_escape_in_half():
    for pad in range(6):
        seg = encode("a" * pad + "é" * 200)
        head = seg.split(layout.SHORT_MARK)[0]
        assert re.fullmatch(r"a*(%[0-9a-f]{2})*", head), head
        seg = encode("a" * pad + "B" * 200)
        head = seg.split(layout.SHORT_MARK)[0]
        assert re.fullmatch(r"a*(\^b)*", head), head


@pytest.mark.parametrize(
    "seg",
    ["Hand", "%2F", "%2f%2F", "con", "%61", "%41", "a%2", "a%", "^A", "^", "^^a", "a b", "a/b", "",
     "%c3", ".hidden", "x.tmp", "desktop.ini", "end."],
)
def test_decode_rejects_non_canonical(seg):
    if seg == "^":
        assert decode(seg) == ""
        return
    with pytest.raises(LayoutError):
        decode(seg)


def test_decode_error_names_the_canonical_spelling():
    with pytest.raises(LayoutError, match=r"%63on"):
        decode("con")


def test_lone_surrogates_round_trip():
    s = "a\ud800b"
    seg = encode(s)
    assert_portable(seg)
    assert decode(seg) == s


def test_memory_dirs():
    assert memory_dir("mesh", "n1") == "memory/mesh"
    assert memory_dir("node", "Mac Mini") == "memory/node/^mac%20^mini"
    assert memory_dir("user:alice", "n1") == "memory/user/alice"
    assert memory_dir("user:", "n1") == "memory/user/^"
    assert memory_dir("user:../x", "n1") == "memory/user/%2e.%2fx"
    for bad in ("", "users:x", "Mesh", "user"):
        with pytest.raises(LayoutError):
            memory_dir(bad, "n1")


def test_item_and_tombstone_paths():
    m = memory_id("user:bob", "a/b")
    assert item_path(m, "n") == "memory/user/bob/a%2fb.json"
    assert tombstone_path(m, "n") == ".meshsync/tombstones/memory/user/bob/a%2fb.json"
    s = skill_id("My Skill")
    assert item_path(s, "n") == "skills/^my%20^skill"
    assert tombstone_path(s, "n") == ".meshsync/tombstones/skills/^my%20^skill.json"
    nm = memory_id("node", "k")
    assert item_path(nm, "n1") != item_path(nm, "n2")
    with pytest.raises(LayoutError):
        item_path(memory_id("bogus", "k"), "n")


def test_item_ids():
    a, b = memory_id("mesh", "k"), skill_id("k")
    assert str(a) == "mesh:k" and str(b) == "skill:k"
    assert a != b and a == ItemId(MEM, "mesh", "k")
    assert hash(a) == hash(memory_id("mesh", "k"))
    assert sorted([b, a]) == [a, b]  # "m" < "s": a total, deterministic order
    with pytest.raises(AttributeError):
        a.key = "x"  # type: ignore[misc]
    assert layout.valid_scope("user:x") and layout.valid_scope("mesh") and not layout.valid_scope("x")
    assert layout.cache_skill_name("A/b") == "^a%2fb.md"


@pytest.mark.parametrize(
    "name",
    [".meshsync-tmp-1-2", ".syncthing.x.tmp", "a.sync-conflict-20240101-120000-ABC.json", "x~",
     "~$doc.json", "a.tmp", "Thumbs.db", "desktop.ini", "@eaDir", "#recycle", "#snapshot", ".DS_Store"],
)
def test_ignored_names(name):
    assert is_ignored_name(name)


@pytest.mark.parametrize("name", ["user.preferences.json", "^a.json", "%2ehidden.json", "x%7e", "tmp", "a.tmp.json"])
def test_not_ignored_names(name):
    assert not is_ignored_name(name)


@pytest.mark.parametrize("name", ["#note.json#", ".#note.json", "4913", "5036", "9833", ".note.json.swp", "x.swo",
                                  "note.json~", "note.json___jb_tmp___", "note.json___jb_old___"])
def test_editor_files(name):
    assert layout.is_editor_file(name)


@pytest.mark.parametrize("name", ["note.json", "4913.json", "4914", "491", "#recycle.json", "#", "##", "12345678901"])
def test_not_editor_files(name):
    assert not layout.is_editor_file(name)
