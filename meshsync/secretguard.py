"""Secret guard: the mesh must never carry tokens or credentials.

Before an item leaves the node (export to the share), its value or skill files are
checked against a small set of well-known credential formats and, under keys that name
a secret (password, token, api_key, ...), against high-entropy strings.  A match is not
exported; it is reported with the item and the rule's name, never the secret itself.

The rules are deliberately few and specific (each has a test), so that ordinary memory
such as notes or preferences is never blocked.  ``secrets.allow_items`` and
``secrets.allow_rules`` in the configuration let an operator pass a known false positive.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

RULES: dict[str, re.Pattern[str]] = {
    "private-key": re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"),
    "aws-access-key": re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}\b"),
    "github-token": re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{60,})\b"),
    "gitlab-token": re.compile(r"\bglpat-[A-Za-z0-9_-]{20,}\b"),
    "slack-token": re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b"),
    "openai-key": re.compile(r"\bsk-(?:proj-|svcacct-)?[A-Za-z0-9_-]{32,}\b"),
    "anthropic-key": re.compile(r"\bsk-ant-[A-Za-z0-9_-]{32,}\b"),
    "google-api-key": re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"),
    "stripe-key": re.compile(r"\b(?:sk|rk)_live_[0-9A-Za-z]{20,}\b"),
    "jwt": re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\b"),
    "bearer-token": re.compile(r"\b[Bb]earer\s+[A-Za-z0-9._~+/=-]{20,}"),
    "url-password": re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s:/@]+:[^\s:/@]{6,}@[^\s/]+"),
}

# Literal text each rule cannot match without (one of the strings per rule).  A string
# holding none of them matches no rule, which substring tests find far faster than twelve
# regular-expression searches (the guard runs on every exported value).
NEEDLES: dict[str, tuple[str, ...]] = {
    "private-key": ("-----BEGIN ",),
    "aws-access-key": ("AKIA", "ASIA", "AGPA", "AIDA", "AROA", "ANPA", "ANVA", "AIPA"),
    "github-token": ("gh", "github_pat_"),
    "gitlab-token": ("glpat-",),
    "slack-token": ("xox",),
    "openai-key": ("sk-",),
    "anthropic-key": ("sk-ant-",),
    "google-api-key": ("AIza",),
    "stripe-key": ("_live_",),
    "jwt": ("eyJ",),
    "bearer-token": ("earer",),
    "url-password": ("://",),
}
assert NEEDLES.keys() == RULES.keys(), "every rule needs its literal needles"
_NEEDLE_RULES: tuple[tuple[str, tuple[str, ...], re.Pattern[str]], ...] = tuple(
    (name, NEEDLES[name], rx) for name, rx in RULES.items())


_ANY_NEEDLE = re.compile("|".join(re.escape(n) for ns in NEEDLES.values() for n in ns))


def _rule_hits(text: str) -> list[str]:
    """Names of the rules whose pattern is found in ``text`` (in RULES order)."""
    hits: list[str] = []
    if _ANY_NEEDLE.search(text) is None:
        return hits
    for name, needles, rx in _NEEDLE_RULES:
        for n in needles:
            if n in text:
                if rx.search(text):
                    hits.append(name)
                break
    return hits


SECRET_KEY = re.compile(r"(?i)(pass(word|wd)?|secret|token|api[_-]?key|apikey|private[_-]?key|credential|auth)")
# Keys that hold nothing but a secret: any space-free value of 6+ characters under them is one.
SECRET_NAME = re.compile(r"(?i)^(password|passwd|pwd|secret|client_secret|api_key|apikey|access_token|"
                         r"refresh_token|auth_token|private_key|secret_key|access_key_secret)$")
MIN_ENTROPY_LEN = 16
ENTROPY_BITS = 3.5  # per character; random base64 is ~6, English words ~3


def entropy(s: str) -> float:
    if not s:
        return 0.0
    counts: dict[str, int] = {}
    for ch in s:
        counts[ch] = counts.get(ch, 0) + 1
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def _strings(value: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """(enclosing key, string) for every string in a JSON value, keys included."""
    stack: list[tuple[Any, str]] = [(value, key)]
    while stack:
        v, k = stack.pop()
        if isinstance(v, str):
            yield k, v
        elif isinstance(v, dict):
            for kk, vv in v.items():
                yield "", str(kk)
                stack.append((vv, str(kk)))
        elif isinstance(v, list):
            stack.extend((vv, k) for vv in v)


def scan_text(text: str, key: str = "") -> list[str]:
    """Names of the rules that match ``text`` (found under JSON key ``key``)."""
    hits = _rule_hits(text)
    if not key:
        return hits
    secret_name, secret_key = _key_kind(key)
    if secret_name and len(text) >= 6 and " " not in text.strip():
        hits.append("secret-named-key")
    elif (secret_key and len(text) >= MIN_ENTROPY_LEN and " " not in text.strip()
            and entropy(text) >= ENTROPY_BITS):
        hits.append("high-entropy-secret-key")
    return hits


@lru_cache(maxsize=4096)
def _key_kind(key: str) -> tuple[bool, bool]:
    """(the key names a secret, the key mentions one): JSON keys repeat across values."""
    return SECRET_NAME.match(key) is not None, SECRET_KEY.search(key) is not None


def scan_value(value: Any, key: str = "") -> list[str]:
    """Rule names matched anywhere in a memory value (the item key counts as the
    enclosing key of a bare string value)."""
    # _strings and scan_text inlined (same strings, same order): the guard runs on every
    # exported value, and the generator cost more than the checks.
    found: list[str] = []
    stack: list[tuple[Any, str]] = [(value, key)]
    while stack:
        v, k = stack.pop()
        if isinstance(v, str):
            for h in scan_text(v, k):
                if h not in found:
                    found.append(h)
        elif isinstance(v, dict):
            for kk, vv in v.items():
                sk = str(kk)
                for h in _rule_hits(sk):  # scan_text(sk, "")
                    if h not in found:
                        found.append(h)
                stack.append((vv, sk))
        elif isinstance(v, list):
            stack.extend((vv, k) for vv in v)
    return found


def scan_bytes(data: bytes) -> list[str]:
    """Rule names matched in a skill file (binary files are checked as far as they
    decode)."""
    text = data.decode("utf-8", "replace")
    found = _rule_hits(text)
    for m in re.finditer(r"(?im)^\s*[\"']?([A-Za-z_][A-Za-z0-9_-]*)[\"']?\s*[:=]\s*[\"']?([^\s\"']{16,})", text):
        if SECRET_KEY.search(m.group(1)) and entropy(m.group(2)) >= ENTROPY_BITS:
            if "high-entropy-secret-key" not in found:
                found.append("high-entropy-secret-key")
    return found


# Every name a hit can carry: what `secrets.allow_rules` may list (meshsync.config refuses
# other names, so that a typo there cannot silently allow nothing).
RULE_NAMES: tuple[str, ...] = (*RULES, "secret-named-key", "high-entropy-secret-key")
