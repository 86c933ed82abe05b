"""The secret guard's literal prefilter (secretguard.NEEDLES) never changes a verdict:
it must agree with running every rule's pattern on every string."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from meshsync import secretguard as sg

POSITIVES = {
    "private-key": "-----BEGIN RSA PRIVATE KEY-----\nMIIB",
    "aws-access-key": "creds AKIA" + "IOSFODNN7EXAMPLE here",
    "github-token": "ghp_" + "a" * 36,
    "gitlab-token": "glpat-" + "b" * 20,
    "slack-token": "xoxb-" + "1234567890",
    "openai-key": "sk-" + "c" * 32,
    "anthropic-key": "sk-ant-" + "d" * 32,
    "google-api-key": "AIza" + "e" * 35,
    "stripe-key": "sk_live_" + "f" * 20,
    "jwt": "eyJ" + "g" * 10 + ".eyJ" + "h" * 10 + "." + "i" * 10,
    "bearer-token": "Authorization: Bearer " + "j" * 20,
    "url-password": "https://user:hunter22@example.com/x",
}


def _reference(text: str, key: str = "") -> list[str]:
    """scan_text as written before the prefilter."""
    hits = [name for name, rx in sg.RULES.items() if rx.search(text)]
    if key and sg.SECRET_NAME.match(key) and len(text) >= 6 and " " not in text.strip():
        hits.append("secret-named-key")
    elif (key and sg.SECRET_KEY.search(key) and len(text) >= sg.MIN_ENTROPY_LEN and " " not in text.strip()
            and sg.entropy(text) >= sg.ENTROPY_BITS):
        hits.append("high-entropy-secret-key")
    return hits


def test_every_rule_has_a_positive_that_passes_the_prefilter():
    assert POSITIVES.keys() == sg.RULES.keys()
    for name, text in POSITIVES.items():
        assert name in sg.scan_text(text), name
        assert sg.scan_text(text) == _reference(text)
    # No needle is a rule's only way in that its pattern could avoid: each pattern,
    # stripped of every needle, cannot match.
    for name, rx in sg.RULES.items():
        text = POSITIVES[name]
        for n in sg.NEEDLES[name]:
            text = text.replace(n, "")
        assert not rx.search(text), name


_pieces = st.sampled_from([n for ns in sg.NEEDLES.values() for n in ns] + list(POSITIVES.values())
                          + ["a", "Z", "0", " ", "\n", "_", "-", ".", ":", "/", "@", "=", "AKIA", "Bearer "])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(_pieces, st.text(max_size=12)), max_size=12),
       st.sampled_from(["", "text", "password", "api_key", "my_token", "note", "AUTH"]))
def test_scan_text_agrees_with_every_rule(parts, key):
    text = "".join(parts)
    assert sg.scan_text(text, key) == _reference(text, key)
    assert sg.scan_bytes(text.encode("utf-8", "surrogatepass")) == _bytes_reference(text.encode("utf-8", "surrogatepass"))


def _bytes_reference(data: bytes) -> list[str]:
    text = data.decode("utf-8", "replace")
    found = [name for name, rx in sg.RULES.items() if rx.search(text)]
    for m in re.finditer(r"(?im)^\s*[\"']?([A-Za-z_][A-Za-z0-9_-]*)[\"']?\s*[:=]\s*[\"']?([^\s\"']{16,})", text):
        if sg.SECRET_KEY.search(m.group(1)) and sg.entropy(m.group(2)) >= sg.ENTROPY_BITS:
            if "high-entropy-secret-key" not in found:
                found.append("high-entropy-secret-key")
    return found


_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), _pieces, st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(_pieces, st.sampled_from(["password", "token", "api_key", "x"])),
                                            inner, max_size=4)),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(_json_values, st.sampled_from(["", "note", "password", "my_token"]))
def test_scan_value_agrees_with_scanning_each_string(value, key):
    found: list[str] = []
    for k, s in sg._strings(value, key):
        for h in _reference(s, k):
            if h not in found:
                found.append(h)
    assert sg.scan_value(value, key) == found
