"""Secret guard: the mesh must never carry tokens or credentials.

Before an item leaves the node (export to the share), its value or skill files are
checked against the documented token formats of common credential families and, under
keys that name a secret (password, access_token, api_key, ...), against high-entropy
strings.  A match is not
exported; it is reported with the item and the rule's name, never the secret itself.

The rules are specific (each family has a test with a realistic token and a near miss),
so that ordinary memory such as notes or preferences is never blocked: false positives
are measured on a corpus of ordinary memory values (tests/secret_corpus.py) and kept at
zero.  ``secrets.allow_items`` and ``secrets.allow_rules`` in the configuration let an
operator pass a known false positive.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from functools import lru_cache
from typing import Any, NamedTuple


class Rule(NamedTuple):
    """One credential family: the vendor's documented token format and the literal text
    every match contains (the needles: one of them must be in a string before the pattern
    is tried, see _rule_hits)."""

    name: str
    pattern: str
    needles: tuple[str, ...]


# Each pattern is written from the format its vendor documents for its tokens (a fixed
# prefix, a fixed length, a fixed alphabet), so that ordinary memory such as notes, URLs,
# hashes or base64 images does not match: tests/test_secretguard.py holds a realistic
# token and a near miss per rule, and measures false positives on a corpus of ordinary
# memory values (tests/secret_corpus.py).  The names are what `secrets.allow_rules` takes:
# never rename one.
FAMILIES: tuple[Rule, ...] = (
    # PEM private keys (RSA, EC, DSA, OPENSSH, ENCRYPTED, PGP ... BLOCK) and PuTTY key files
    Rule("private-key", r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|PuTTY-User-Key-File-\d+: ",
         ("-----BEGIN ", "PuTTY-User-Key-File-")),
    # age (age-encryption.org) identities: Bech32, 58 characters after the "1"
    Rule("age-secret-key", r"\bAGE-SECRET-KEY-1[02-9AC-HJ-NP-Z]{58}\b", ("AGE-SECRET-KEY-1",)),
    # AWS access key ids: a four-letter type prefix and 16 upper-case base32 characters
    Rule("aws-access-key", r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}\b",
         ("AKIA", "ASIA", "AGPA", "AIDA", "AROA", "ANPA", "ANVA", "AIPA")),
    # GitHub: ghp_/gho_/ghu_/ghs_/ghr_ + 36, fine-grained github_pat_ + 82
    Rule("github-token", r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{60,})\b",
         ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_")),
    # GitLab: personal, deploy, runner, trigger, CI job, OAuth, feed, incoming-mail ... tokens
    Rule("gitlab-token", r"\b(?:glpat|gldt|glrt|glptt|glcbt|gloas|glsoat|glffct|glimt|glagent|glft)-[A-Za-z0-9_-]{20,}\b",
         ("glpat-", "gldt-", "glrt-", "glptt-", "glcbt-", "gloas-", "glsoat-", "glffct-", "glimt-", "glagent-",
          "glft-")),
    # Slack: bot/user/app/config tokens (xoxb-, xoxp-, xoxa-, xoxe-, ...; xapp-) and webhooks
    Rule("slack-token", r"\b(?:xox[abposre](?:\.xox[a-z])?-[A-Za-z0-9-]{10,}|xapp-\d-[A-Za-z0-9-]{20,})",
         ("xox", "xapp-")),
    Rule("slack-webhook", r"hooks\.slack\.com/(?:services|workflows|triggers)/T[A-Z0-9]{6,}/[A-Za-z0-9/]{20,}",
         ("hooks.slack.com/",)),
    # OpenAI (sk-, sk-proj-, sk-svcacct-, sk-admin-) and Anthropic (sk-ant-api03-, sk-ant-admin01-)
    Rule("openai-key", r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{32,}\b", ("sk-",)),
    Rule("anthropic-key", r"\bsk-ant-[A-Za-z0-9_-]{32,}\b", ("sk-ant-",)),
    # Google API keys (AIza + 35) and OAuth client secrets (GOCSPX- + 28) and access tokens
    Rule("google-api-key", r"\bAIza[0-9A-Za-z_-]{35}\b", ("AIza",)),
    Rule("google-oauth-secret", r"\bGOCSPX-[A-Za-z0-9_-]{28}\b|\bya29\.[0-9A-Za-z_-]{30,}", ("GOCSPX-", "ya29.")),
    # Stripe secret and restricted live keys, webhook signing secrets
    Rule("stripe-key", r"\b(?:sk|rk)_live_[0-9A-Za-z]{20,}\b|\bwhsec_[A-Za-z0-9]{32,}\b", ("_live_", "whsec_")),
    # Hugging Face user access tokens (hf_ + 34 letters/digits) and org API tokens
    Rule("huggingface-token", r"\b(?:hf|api_org)_[A-Za-z0-9]{34}\b", ("hf_", "api_org_")),
    # npm access tokens: npm_ + 36 base62 (the last 6 a checksum)
    Rule("npm-token", r"\bnpm_[A-Za-z0-9]{36}\b", ("npm_",)),
    # PyPI API tokens: macaroons whose base64 starts with the encoded "pypi.org" location
    Rule("pypi-token", r"\bpypi-AgE(?:IcHlwaS5vcmc|NdGVzdC5weXBpLm9yZw)[A-Za-z0-9_-]{50,}", ("pypi-AgE",)),
    # Telegram bot tokens: the bot's numeric id, a colon, 35 characters starting with AA
    Rule("telegram-bot-token", r"\b[0-9]{8,10}:AA[0-9A-Za-z_-]{33}\b", (":AA",)),
    # Discord webhook URLs (id + token) and Discord bot tokens are looked for by the URL
    Rule("discord-webhook", r"\bdiscord(?:app)?\.com/api/webhooks/[0-9]{17,20}/[A-Za-z0-9_-]{60,68}\b",
         ("discord.com/api/webhooks/", "discordapp.com/api/webhooks/")),
    # Azure storage / Service Bus / Event Hubs account keys in connection strings, SAS signatures
    Rule("azure-storage-key", r"\b(?:AccountKey|SharedAccessKey)=[A-Za-z0-9+/]{42,86}={1,2}",
         ("AccountKey=", "SharedAccessKey=")),
    Rule("azure-sas-token", r"[?&]sig=[A-Za-z0-9%+/]{40,}(?:%3[Dd]|=)*", ("sig=",)),
    # SendGrid API keys: SG. + 22 . + 43
    Rule("sendgrid-key", r"\bSG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}\b", ("SG.",)),
    # Mailgun (key- + 32 hex) and Mailchimp (32 hex + -us<datacenter>) API keys
    Rule("mailgun-key", r"\bkey-[0-9a-f]{32}\b", ("key-",)),
    Rule("mailchimp-key", r"\b[0-9a-f]{32}-us[0-9]{1,2}\b", ("-us",)),
    # Shopify, DigitalOcean, Databricks, Doppler, Postman, Heroku, Linear, Notion, Atlassian
    Rule("shopify-token", r"\bshp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}\b", ("shp",)),
    Rule("digitalocean-token", r"\bdo[por]_v1_[a-f0-9]{64}\b", ("_v1_",)),
    Rule("databricks-token", r"\bdapi[a-f0-9]{32}(?:-[0-9])?\b", ("dapi",)),
    Rule("doppler-token", r"\bdp\.(?:pt|st|sa|ct|scim|audit)\.[A-Za-z0-9_.-]{40,}", ("dp.",)),
    Rule("postman-key", r"\bPMAK-[a-f0-9]{24}-[a-f0-9]{34}\b", ("PMAK-",)),
    Rule("heroku-key", r"\bHRKU-[A-Za-z0-9_-]{60}\b", ("HRKU-",)),
    Rule("linear-key", r"\blin_(?:api|oauth)_[A-Za-z0-9]{40}\b", ("lin_",)),
    Rule("notion-token", r"\b(?:secret_[A-Za-z0-9]{43}|ntn_[0-9]{11}[A-Za-z0-9]{35})\b", ("secret_", "ntn_")),
    Rule("atlassian-token", r"\bATATT3[A-Za-z0-9_=-]{150,}", ("ATATT3",)),
    # AI APIs an OpenClaw node is likely to hold: Groq, Replicate, Perplexity, xAI, OpenRouter
    Rule("ai-api-key", r"\b(?:gsk_[A-Za-z0-9]{52}|r8_[A-Za-z0-9]{37}|pplx-[A-Za-z0-9]{48}|xai-[A-Za-z0-9]{80}"
         r"|sk-or-v1-[a-f0-9]{64})\b", ("gsk_", "r8_", "pplx-", "xai-", "sk-or-v1-")),
    # Square and PayPal/Braintree production tokens
    Rule("payment-token", r"\bsq0(?:atp|csp)-[0-9A-Za-z_-]{22,43}\b|\baccess_token\$production\$[0-9a-z]{16}\$[0-9a-f]{32}\b",
         ("sq0", "access_token$production$")),
    Rule("jwt", r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\b", ("eyJ",)),
    Rule("bearer-token", r"\b[Bb]earer\s+[A-Za-z0-9._~+/=-]{20,}", ("earer",)),
    # user:password@host in any URL, and Password=/Pwd= in connection strings (not a
    # placeholder: $VAR, ${...}, %VAR%, <...>, {...} or ***)
    Rule("url-password", r"\b[a-z][a-z0-9+.-]*://[^\s:/@]+:[^\s:/@]{6,}@[^\s/]+", ("://",)),
    Rule("connection-string-password", r"(?:\b|_)(?:[Pp]assword|PASSWORD|[Pp]wd|PWD)=(?![$%{<*])[^;&\s'\"<>]{6,}",
         ("assword=", "ASSWORD=", "wd=", "WD=")),
)

RULES: dict[str, re.Pattern[str]] = {r.name: re.compile(r.pattern) for r in FAMILIES}

# Literal text each rule cannot match without (one of the strings per rule).  A string
# holding none of them matches no rule, which substring tests find far faster than one
# regular-expression search per rule (the guard runs on every exported value).
NEEDLES: dict[str, tuple[str, ...]] = {r.name: r.needles for r in FAMILIES}
assert len(RULES) == len(FAMILIES), "rule names must be unique"
_ALL_NEEDLES = sorted({n for ns in NEEDLES.values() for n in ns}, key=lambda n: (-len(n), n))
# One regular expression finds the needles: a trie of them (one branch per first
# character, so a position is rejected after one branch test, not one per needle: 3x
# faster than a flat alternation here) in which the longest needle wins where several
# start at one place.  A found needle X stands for every needle that occurrence may hide:
# those contained in X ("sk-ant-" holds "sk-") and those that could start inside X and
# run on past it (a suffix of X is their prefix), which a non-overlapping search skips.
# So the rules tried are a superset of those whose needles occur, and no rule with a
# needle in the text is left out (tests/test_secretguard.py compares with trying all).


def _trie(words: list[str]) -> str:
    """A pattern matching exactly the given words, the longest one where several match."""
    root: dict[str, Any] = {}
    for w in words:
        node = root
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: dict[str, Any]) -> str:
        alts = [re.escape(ch) + emit(child) for ch, child in sorted(node.items()) if ch]
        if not alts:
            return ""
        if "" in node:  # a word ends here: the longer ones are tried first
            return "(?:" + "|".join(alts) + ")?"
        return alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"

    return emit(root)


_ANY_NEEDLE = re.compile(_trie(_ALL_NEEDLES))


def _hidden_by(x: str) -> frozenset[str]:
    return frozenset(y for y in _ALL_NEEDLES
                     if y in x or any(x.endswith(y[:k]) for k in range(1, min(len(x), len(y)))))


_RULES_BY_NEEDLE: dict[str, frozenset[str]] = {
    x: frozenset(name for name, ns in NEEDLES.items() if _hidden_by(x) & set(ns)) for x in _ALL_NEEDLES}
_ORDERED_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(RULES.items())


def _rule_hits(text: str) -> list[str]:
    """Names of the rules whose pattern is found in ``text`` (in RULES order).  Only the
    rules whose needles occur are tried, found in one pass over the text."""
    found = _ANY_NEEDLE.findall(text)
    if not found:
        return []
    wanted = frozenset().union(*(_RULES_BY_NEEDLE[n] for n in set(found)))
    return [name for name, rx in _ORDERED_RULES if name in wanted and rx.search(text)]


# A key names a credential when its last word (its head noun) is one of these, or is "key"
# after one of KEY_QUALIFIERS: access_token, clientSecret, OPENAI_API_KEY, db-password.
# Keys that only mention one are not: author, auth.provider, token_url, tokens.used,
# password_policy, secret-santa (an earlier substring test flagged 11 % of ordinary memory
# values, tests/secret_corpus.py).
CREDENTIAL_WORDS = frozenset({"password", "passwd", "pwd", "passphrase", "passcode", "secret", "token", "credential",
                              "credentials", "apikey", "auth", "authorization", "pat"})
KEY_QUALIFIERS = frozenset({"api", "secret", "private", "access", "signing", "encryption", "master", "auth",
                            "client", "license", "account", "app", "storage", "service", "shared", "session"})
_KEY_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")
# Keys that hold nothing but a secret: any space-free value of 6+ characters under them is one.
SECRET_NAME = re.compile(r"(?i)^(password|passwd|pwd|secret|client_secret|api_key|apikey|access_token|"
                         r"refresh_token|auth_token|private_key|secret_key|access_key_secret)$")
MIN_ENTROPY_LEN = 16
ENTROPY_BITS = 3.5  # per character; random base64 is ~6, English words ~3


def names_credential(key: str) -> bool:
    """Whether a JSON key (or a skill file's `name: value` name) names a credential."""
    words = [w.lower() for w in _KEY_WORD.findall(key)]
    if not words:
        return False
    head = words[-1]
    return head in CREDENTIAL_WORDS or (head == "key" and len(words) > 1 and words[-2] in KEY_QUALIFIERS)


# A value that only refers to a secret kept elsewhere ($VAR, ${VAR}, %VAR%, <your key>,
# {{ secrets.X }}) or hides one (********, xxxxxxxx) is not one.  The whole value must
# have that shape: a password that merely starts with $ or % is still a password.
_PLACEHOLDER = re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?|%[A-Za-z_][A-Za-z0-9_]*%|<[^<>]*>|\{\{[^{}]*\}\}"
                          r"|[*xX.\u2022]+")


def is_placeholder(value: str) -> bool:
    return _PLACEHOLDER.fullmatch(value.strip()) is not None


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
    if not (secret_name or secret_key) or is_placeholder(text):
        return hits
    if secret_name and len(text) >= 6 and " " not in text.strip():
        hits.append("secret-named-key")
    elif (secret_key and len(text) >= MIN_ENTROPY_LEN and " " not in text.strip()
            and entropy(text) >= ENTROPY_BITS):
        hits.append("high-entropy-secret-key")
    return hits


@lru_cache(maxsize=4096)
def _key_kind(key: str) -> tuple[bool, bool]:
    """(the key names a secret, the key mentions one): JSON keys repeat across values."""
    return SECRET_NAME.match(key) is not None, names_credential(key)


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
        if names_credential(m.group(1)) and not is_placeholder(m.group(2)) and entropy(m.group(2)) >= ENTROPY_BITS:
            if "high-entropy-secret-key" not in found:
                found.append("high-entropy-secret-key")
    return found


# Every name a hit can carry: what `secrets.allow_rules` may list (meshsync.config refuses
# other names, so that a typo there cannot silently allow nothing).
RULE_NAMES: tuple[str, ...] = (*RULES, "secret-named-key", "high-entropy-secret-key")
