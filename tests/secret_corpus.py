"""A corpus of ordinary memory values, to measure the secret guard's false positives.

What an OpenClaw node remembers: preferences, notes and summaries, URLs, identifiers
(UUIDs, hashes, commit ids, digests), base64 images, code and shell snippets, config
fragments with keys that *mention* tokens or passwords without holding one, model names,
dates, addresses.  Built from a seed, so every run sees the same values; nothing in it is
a credential (every key and token-like word in it is a placeholder, a reference to an
environment variable, or an ordinary identifier).

    python3 tests/secret_corpus.py      # the figure: values scanned, values flagged, by rule
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import string
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

WORDS = ("the a to of and in for on with is was are meeting project deploy release notes skill memory node "
         "share backup cache index sync daemon token budget context window model prompt reply user agent "
         "password manager rotation policy review tomorrow weekly summary customer invoice travel flight "
         "hotel dinner recipe garden kids school dentist birthday present music playlist running shoes "
         "kubernetes docker nginx postgres sqlite python rust typescript react terraform ansible grafana "
         "alert latency throughput error retry timeout webhook callback auth login logout session cookie "
         "secret santa key lock door car insurance mortgage tax return doctor appointment vitamin").split()

NAMES = ["Alice", "Bob", "Chen Wei", "Dana", "Eve", "Farah", "Gustavo", "Hiro", "Ines", "Jonas", "Kofi", "Lena"]
DOMAINS = ["example.com", "github.com", "docs.python.org", "en.wikipedia.org", "news.ycombinator.com",
           "www.youtube.com", "maps.google.com", "stackoverflow.com", "arxiv.org", "huggingface.co",
           "npmjs.com", "pypi.org", "discord.com", "hooks.example.org", "portal.azure.com", "t.me"]
MODELS = ["gpt-4o-mini", "gpt-4.1", "o3-mini", "claude-3-5-sonnet-20241022", "claude-sonnet-4-5",
          "meta-llama/Llama-3.1-8B-Instruct", "mistralai/Mistral-7B-Instruct-v0.3", "qwen2.5-coder:7b",
          "sentence-transformers/all-MiniLM-L6-v2", "hf_hub_download", "text-embedding-3-small"]
KEYS = ["user.preferences", "notes", "project.meshsync", "travel.2026", "shopping", "reading-list", "todo",
        "summary.weekly", "contacts.dana", "recipes.pasta", "links", "snippets.bash", "auth.provider",
        "author", "tokens.used", "password.policy", "secret-santa.2026", "api.docs", "deploy.checklist", ""]


def sentence(r: random.Random, n: int | None = None) -> str:
    words = [r.choice(WORDS) for _ in range(n or r.randint(5, 18))]
    return " ".join(words).capitalize() + r.choice([".", ".", "!", "?", ":"])


def note(r: random.Random) -> str:
    parts = [sentence(r) for _ in range(r.randint(1, 6))]
    extras = [
        "Rotate the API token every 90 days; the password manager reminds me.",
        "Use `npm ci` instead of npm install in CI; npm_config_cache lives in ~/.npm.",
        "Set HF_TOKEN in the environment, never in the notebook (huggingface-cli login).",
        "The bot talks to t.me/some_helper_bot; its token is in the vault, not here.",
        "Bearer auth is configured in nginx with auth_request /validate;",
        "Azure: use a managed identity instead of an AccountKey in the connection string.",
        "SendGrid sends the newsletter; Discord webhook posts go to #alerts.",
        "Meeting at 10:45 in room 3:AA? No, room 3B.  Call +49 30 1234567 before.",
        "skills/triage/SKILL.md sorts issues by label; sk-learn is not a thing, scikit-learn is.",
        "Telegram chat id 123456789 is the family group; the bot id is 987654321.",
        "Password must be at least 12 characters (password_min_length: 12).",
        "pypi-publish runs from the release workflow with trusted publishing, no token.",
        "Ticket PROJ-1234 blocks the release; see key-results for Q3.",
        "Remember: the secret ingredient is smoked paprika.",
        "The Wi-Fi password is on the fridge, not in memory.",
    ]
    if r.random() < 0.5:
        parts.insert(r.randrange(len(parts) + 1), r.choice(extras))
    return " ".join(parts)


def url(r: random.Random) -> str:
    d = r.choice(DOMAINS)
    path = "/".join(r.choice(WORDS) for _ in range(r.randint(0, 4)))
    q = ""
    if r.random() < 0.4:
        q = "?" + "&".join(f"{r.choice(['utm_source', 'q', 'page', 'v', 'ref', 'lang', 'id', 'sort'])}="
                           f"{r.choice([r.choice(WORDS), str(r.randint(1, 99999)), rand_str(r, 11, string.ascii_letters + string.digits + '_-')])}"
                           for _ in range(r.randint(1, 4)))
    frag = f"#{r.choice(WORDS)}" if r.random() < 0.2 else ""
    scheme = r.choice(["https://", "https://", "http://", "s3://", "ssh://git@", "git+https://"])
    return f"{scheme}{d}/{path}{q}{frag}"


def rand_str(r: random.Random, n: int, alphabet: str) -> str:
    return "".join(r.choice(alphabet) for _ in range(n))


def ident(r: random.Random) -> str:
    b = r.randbytes(32)
    return r.choice([
        str(uuid.UUID(bytes=b[:16], version=4)),
        hashlib.md5(b).hexdigest(),
        hashlib.sha1(b).hexdigest(),
        hashlib.sha256(b).hexdigest(),
        "sha256:" + hashlib.sha256(b).hexdigest(),
        hashlib.sha1(b).hexdigest()[:7],
        base64.b32encode(b[:10]).decode().rstrip("="),
        base64.urlsafe_b64encode(b[:16]).decode().rstrip("="),
        "Qm" + rand_str(r, 44, "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"),
        f"{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(0, 255)}",
        f"2001:db8::{r.randint(0, 0xffff):x}",
        f"{r.randint(2020, 2027)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}T{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:00Z",
        f"v{r.randint(0, 9)}.{r.randint(0, 30)}.{r.randint(0, 99)}",
        f"ORD-{r.randint(100000, 999999)}-{rand_str(r, 4, string.ascii_uppercase)}",
    ])


def image(r: random.Random) -> str:
    raw = b"\x89PNG\r\n\x1a\n" + r.randbytes(r.randint(200, 12000))
    return "data:image/png;base64," + base64.b64encode(raw).decode()


CODE = [
    'import os\nclient = OpenAI(api_key=os.environ["OPENAI_API_KEY"])\n',
    'const token = process.env.NPM_TOKEN;\nif (!token) throw new Error("NPM_TOKEN is not set");\n',
    'curl -H "Authorization: Bearer $GITHUB_TOKEN" https://api.github.com/user\n',
    'curl -H "Authorization: Bearer ${{ secrets.GITHUB_TOKEN }}" "$URL"\n',
    'export DATABASE_URL="postgres://app@localhost:5432/app"\npsql "$DATABASE_URL" -c "select 1"\n',
    'conn = "Server=db;Database=app;User Id=app;Password=${DB_PASSWORD};"\n',
    'password = getpass.getpass("password: ")\nhash = bcrypt.hashpw(password.encode(), bcrypt.gensalt())\n',
    'for f in *.json; do jq -r ".value" "$f"; done\n',
    'SELECT key, value FROM mesh_memory WHERE scope = \'mesh\' ORDER BY updated_at DESC LIMIT 10;\n',
    'def tokenize(text: str) -> list[str]:\n    return text.split()\n',
    'auth:\n  provider: github\n  client_id: Iv1.8a61f9b3a7aba766\n  client_secret: ${GITHUB_CLIENT_SECRET}\n',
    'git log --oneline | head -5\ngit push origin main\n',
    'docker run -e HF_TOKEN -v ~/.cache/huggingface:/root/.cache/huggingface image:latest\n',
    'AZURE_STORAGE_CONNECTION_STRING="DefaultEndpointsProtocol=https;AccountName=demo;AccountKey=<key>"\n',
    'bot = telegram.Bot(token=os.environ["TELEGRAM_BOT_TOKEN"])\n',
    'headers = {"Authorization": f"Bearer {token}"}\nrequests.get(url, headers=headers, timeout=10)\n',
    'ssh-keygen -t ed25519 -C "me@example.com"\ncat ~/.ssh/id_ed25519.pub\n',
    'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx3ZJh9m8cS0yLqUqXGdQ2n6i1V0o3o2d9yYb7z1kqN me@laptop\n',
    '[tool.poetry]\nname = "demo"\nversion = "0.1.0"\nauthors = ["Ada <ada@example.com>"]\n',
    'const re = /^[A-Za-z0-9_-]{20,}$/; // a token-shaped string, for validation\n',
]


def code(r: random.Random) -> str:
    return "".join(r.sample(CODE, r.randint(1, 3)))


def preferences(r: random.Random) -> dict[str, Any]:
    return {
        "shortAnswers": r.random() < 0.5,
        "language": r.choice(["en", "de", "fr", "ja", "pt-BR"]),
        "timezone": r.choice(["Europe/Berlin", "America/New_York", "Asia/Tokyo", "UTC"]),
        "theme": r.choice(["dark", "light", "solarized"]),
        "editor": r.choice(["vim", "code", "emacs", "zed"]),
        "model": r.choice(MODELS),
        "max_tokens": r.choice([256, 1024, 4096, 8192]),
        "tokenizer": r.choice(["cl100k_base", "o200k_base", "sentencepiece"]),
        "auth_method": r.choice(["oauth2", "passkey", "sso", "password"]),
        "author": r.choice(NAMES),
        "author_url": url(r),
        "authorEmail": f"{r.choice(NAMES).split()[0].lower()}@{r.choice(DOMAINS)}",
        "password_min_length": r.randint(8, 16),
        "passwordless": r.random() < 0.5,
        "token_url": "https://oauth2.googleapis.com/token",
        "auth_redirect": f"https://{r.choice(DOMAINS)}/oauth/callback",
        "secret_santa_budget": f"{r.randint(10, 50)} EUR",
        "session_timeout_minutes": r.randint(5, 120),
    }


def structured(r: random.Random) -> Any:
    return r.choice([
        lambda: preferences(r),
        lambda: {"title": sentence(r, 4), "done": r.random() < 0.3, "due": ident(r), "tags": r.sample(WORDS, 3)},
        lambda: [{"name": r.choice(NAMES), "email": f"{r.choice(WORDS)}@{r.choice(DOMAINS)}",
                  "phone": f"+{r.randint(1, 99)} {r.randint(100, 999)} {r.randint(1000000, 9999999)}"}
                 for _ in range(r.randint(1, 4))],
        lambda: {"usage": {"prompt_tokens": r.randint(1, 9999), "completion_tokens": r.randint(1, 9999)},
                 "model": r.choice(MODELS), "id": ident(r)},
        lambda: {"repo": url(r), "commit": ident(r), "branch": r.choice(["main", "release/1.2", "fix/auth-token-refresh"])},
        lambda: {"summary": note(r), "sources": [url(r) for _ in range(r.randint(1, 3))]},
        lambda: {"meshsync": {"share": "/mnt/nas/openclaw-mesh", "watch": {"mode": "poll", "poll_interval": 2}}},
        lambda: {"github": {"username": r.choice(NAMES).split()[0].lower(), "token_scopes": ["repo", "workflow"],
                            "token_expires": ident(r), "token_created_by": url(r)}},
        lambda: {"wifi": {"ssid": f"HomeNet-{r.randint(1, 9)}G", "password_location": "on the fridge",
                          "passwordHint": "the dog's name and the year we moved"}},
        lambda: {"accounts": [{"service": r.choice(DOMAINS), "login": f"{r.choice(WORDS)}{r.randint(1, 99)}",
                               "auth_provider": r.choice(["google", "github", "apple"]),
                               "credentials_stored_in": "1Password vault 'Family'"} for _ in range(3)]},
        lambda: {"ssh_host": f"{r.choice(WORDS)}.lan", "ssh_user": r.choice(NAMES).split()[0].lower(),
                 "identity_file": "~/.ssh/id_ed25519", "port": 22},
    ])()


def skill(r: random.Random) -> str:
    """A SKILL.md as OpenClaw skills are written: front matter, prose, code blocks."""
    name = "-".join(r.sample(WORDS, 2))
    front = (f"---\nname: {name}\ndescription: {sentence(r, 8)}\nauthor: {r.choice(NAMES)}\n"
             f"homepage: {url(r)}\nauth_method: oauth2\ntoken_budget: {r.randint(500, 8000)}\n"
             f"metadata: {{\"openclaw\": {{\"requires\": {{\"env\": [\"GITHUB_TOKEN\"]}}}}}}\n---\n\n")
    body = "\n\n".join([f"# {sentence(r, 3)}", note(r), "```sh\n" + code(r) + "```", note(r),
                         f"Source: {url(r)}\nCommit: {ident(r)}"])
    return front + body + "\n"


KINDS: dict[str, Callable[[random.Random], Any]] = {
    "note": note, "url": url, "identifier": ident, "image": image, "code": code, "structured": structured,
    "model": lambda r: r.choice(MODELS), "sentence": sentence, "skill": skill,
}


def corpus(n: int = 3000, seed: int = 20) -> list[tuple[str, str, Any]]:
    """n (kind, item key, value) triples of ordinary memory, the same for a given seed."""
    r = random.Random(seed)
    kinds = list(KINDS)
    return [(kind, r.choice(KEYS), KINDS[kind](r)) for kind in (kinds[i % len(kinds)] for i in range(n))]


def flagged(items: list[tuple[str, str, Any]]) -> list[tuple[str, str, Any, list[str]]]:
    from meshsync import secretguard

    out = []
    for kind, key, value in items:
        # skill files go through scan_bytes, as the engine sends them; the rest is memory
        hits = secretguard.scan_bytes(value.encode()) if kind == "skill" else secretguard.scan_value(value, key)
        if hits:
            out.append((kind, key, value, hits))
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    items = corpus()
    size = sum(len(json.dumps(v)) for _, _, v in items)
    hits = flagged(items)
    print(f"{len(items)} values ({size / 1e6:.1f} MB of JSON; {sum(k == 'skill' for k, _, _ in items)} of them "
          f"skill files), {len(hits)} flagged")
    for kind, key, value, rules in hits:
        print(f"  {kind} {key!r}: {rules}: {json.dumps(value)[:160]}")
