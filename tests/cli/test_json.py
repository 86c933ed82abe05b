"""Every `--json` document the command line prints holds to its documented shape
(docs/json.md, one JSON Schema per command in docs/schemas/), in the states an operator
meets: items in every sync state, conflicts of memory and skills, refused writes, bad
files and rows, warnings, an unavailable share, no index yet, a running daemon, a bad
configuration.

Validated with the `jsonschema` package (the `test` extra): the schemas are real JSON
Schema (draft 2020-12) that users can validate against with any tool, and a real
validator enforces every keyword they use, where a hand-written subset would silently
skip the ones it does not know."""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import jsonschema
import pytest
from helpers import Mesh, MeshNode, memfile, wait_for
from sync_helpers import foreign_put, quick_node

from meshsync.cli.common import JSON_SCHEMA_VERSION
from meshsync.cli.main import build_parser

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "docs" / "schemas"
JSON_DOC = REPO / "docs" / "json.md"


def json_commands() -> dict[str, argparse.ArgumentParser]:
    """Every command (``skill ls`` as "skill-ls") that has a --json option."""
    out: dict[str, argparse.ArgumentParser] = {}

    def walk(p: argparse.ArgumentParser, prefix: str) -> None:
        for act in p._actions:
            if isinstance(act, argparse._SubParsersAction):
                for name, sp in act.choices.items():
                    full = f"{prefix}-{name}" if prefix else name
                    if any("--json" in a.option_strings for a in sp._actions):
                        out[full] = sp
                    walk(sp, full)

    walk(build_parser(), "")
    return out


def schema(command: str) -> dict:
    return json.loads((SCHEMAS / f"{command}.json").read_text(encoding="utf-8"))


class Checker:
    """Runs commands with --json as a node and validates what they print; remembers
    which commands it saw, so that the test can tell none was left out."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    def __call__(self, n: MeshNode, *args: str, check: bool | int = True, **env: str) -> dict:
        p = n.cli(*args, "--json", check=check, **env)
        doc = json.loads(p.stdout)  # one JSON document, nothing else on stdout
        command = f"{args[0]}-{args[1]}" if args[0] == "skill" else args[0]
        jsonschema.Draft202012Validator(schema(command)).validate(doc)
        assert doc["schema_version"] == JSON_SCHEMA_VERSION
        self.seen[command] = self.seen.get(command, 0) + 1
        return doc


def test_schemas_are_valid_json_schema_one_per_json_command():
    commands = json_commands()
    assert {"status", "sync", "doctor", "get", "ls", "search", "skill-get", "skill-ls", "conflicts", "deleted",
            "deletes"} <= set(commands)
    files = {p.stem for p in SCHEMAS.glob("*.json")}
    assert files == set(commands), f"schemas without a command: {files - set(commands)}, " \
                                   f"commands without a schema: {set(commands) - files}"
    doc = JSON_DOC.read_text(encoding="utf-8")
    for c in commands:
        s = schema(c)
        jsonschema.Draft202012Validator.check_schema(s)
        assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        # Every document is an object whose schema_version is this version.
        branches = s.get("oneOf", [s])
        for b in branches:
            assert b["type"] == "object" and b["properties"]["schema_version"] == {"const": JSON_SCHEMA_VERSION}, c
            assert "schema_version" in b["required"] and b["additionalProperties"] is False, c
        assert f"(schemas/{c}.json)" in doc, f"docs/json.md does not link schemas/{c}.json"


def test_times_are_seconds_and_pids_numbers_in_every_schema():
    """One time unit (Unix seconds) and a pid that is a number, everywhere."""
    for p in SCHEMAS.glob("*.json"):
        text = p.read_text(encoding="utf-8")
        assert not re.search(r'"\w*_ms"', text), f"{p.name}: a field in milliseconds"
        for m in re.finditer(r'"pid": (\{[^}]*\})', text):
            assert '"integer"' in m.group(1), (p.name, m.group(0))


def _a_node_with_everything(mesh: Mesh) -> tuple[MeshNode, MeshNode]:
    """Node a (may write mesh only) and b, with items in every state: in sync, pending,
    refused, error, conflict (memory and skill), a warning, a bad share file."""
    a = mesh.node("a", MESHSYNC_SCOPES__WRITE='["mesh", "node"]')
    b = quick_node(mesh, "b")
    a.cli("put", "mesh", "greeting", '"hello world"')
    a.cli("put", "node", "mine", '{"n": 1}')
    a.cli("skill", "put", "triage", "-", input="---\nname: triage\ndescription: d\n---\n# Triage\n")
    a.cli("skill", "put", "bare", "-", input="# no frontmatter: a warning\n")
    # Conflicts: b's older versions of a memory item and of a skill lose.
    foreign_put(b, "mesh", "greeting", "older on b", updated_at=int(time.time()) - 100)
    b.sql("INSERT INTO mesh_skills (name, source_node, content, updated_at) VALUES (?, ?, ?, ?)",
          ("triage", "b", "# older triage on b\n", int(time.time()) - 100))
    b.sync(check=False)
    # A refused write, a row that is not valid, a pending one, a bad file.
    foreign_put(a, "user:bob", "note", "not for the share")
    foreign_put(a, "mesh", "bad", 1, updated_at="yesterday")  # type: ignore[arg-type]
    memfile(mesh.share, "mesh", "broken.json").write_text('{"value": ')
    a.sync(check=1)
    a.cli("put", "mesh", "gone", '{"kept": true}')
    a.cli("rm", "mesh", "gone")  # exported by this sync: its last value goes to the history
    a.sync(check=1)
    foreign_put(a, "mesh", "later", "not synced yet")
    return a, b


def test_every_command_prints_what_its_schema_says(mesh: Mesh, tmp_path: Path):
    check = Checker()
    a, b = _a_node_with_everything(mesh)

    st = check(a, "status")
    kinds = {e["kind"] for e in st["errors"]}
    assert {"file", "index", "refused", "warning"} <= kinds, st["errors"]
    c = st["counts"]
    assert c["problems"] + c["refused"] + c["warnings"] == len(st["errors"]) and c["pending"] == 1
    assert st["daemon"] == {"running": False, "pid": None}
    states = {r["key"]: r["state"] for r in check(a, "ls")["items"]}
    assert states["greeting"] == "in sync" and states["later"] == "pending"
    assert states["note"] == "refused" and states["bad"] == "error"
    check(a, "ls", "mesh")
    assert check(a, "get", "mesh", "greeting")["value"] == "hello world"
    check(a, "get", "user:bob", "note")
    check(a, "get", "mesh", "bad")
    cf = check(b, "status")["conflicts"]
    assert {x["kind"] for x in cf} == {"memory", "skill"}
    # The share's history: the same on every node (R11), IDs strings, times in seconds.
    got = check(b, "conflicts")["conflicts"]
    assert check(a, "conflicts")["conflicts"] == got
    values = {x["item"]: x["beaten"].get("value", x["beaten"].get("content")) for x in got}
    assert values == {"mesh:greeting": "older on b", "skill:triage": "# older triage on b\n"}
    assert all(isinstance(x["id"], str) and abs(x["seen_at"] - time.time()) < 3600 for x in got), got
    assert {r["key"]: r["state"] for r in check(b, "ls")["items"]}["greeting"] == "conflict"
    assert check(b, "get", "mesh", "greeting")["conflict_id"] in {x["id"] for x in got}
    gone = check(b, "deleted")["deleted"]
    assert [(x["item"], x["last"]["value"], x["deleted_by"]["node"]) for x in gone] == [("mesh:gone", {"kept": True}, "a")]
    assert check(a, "deletes") == {"schema_version": JSON_SCHEMA_VERSION, "hold": None}
    skills = {r["name"]: r for r in check(a, "skill", "ls")["skills"]}
    assert "warning" in skills["bare"]
    check(a, "skill", "get", "triage")
    check(b, "skill", "get", "triage")
    assert check(a, "search", "hello")["results"][0]["key"] == "greeting"
    check(a, "search", "zebra", check=4)
    s = check(a, "sync", check=1)
    assert s["ok"] is False and s["skipped"] >= 3 and s["share"]["available"] is True
    d = check(a, "doctor", check=1)
    assert d["result"] == "warnings"

    # Without a daemon's index, with the share gone, with a bad configuration.
    fresh = mesh.node("fresh", init=False, home="fresh")
    assert check(fresh, "status")["initialised"] is False
    gone = str(tmp_path / "unmounted")
    st = check(a, "status", MESHSYNC_SHARE=gone)
    assert st["share"]["available"] is False
    s = check(a, "sync", check=3, MESHSYNC_SHARE=gone)
    assert s == {"schema_version": JSON_SCHEMA_VERSION, "ok": False,
                 "share": {"path": gone, "available": False, "reason": s["share"]["reason"]}}
    assert "does not exist" in s["share"]["reason"]
    d = check(a, "doctor", check=2, MESHSYNC_WATCH__MODE="bogus")
    assert d["checks"][0]["name"] == "configuration" and d["checks"][0]["result"] == "fail"

    # With the daemon running: its pid (a number) and how it watches.
    a.start()
    try:
        st = wait_for(lambda: (lambda s: s if s["watch"] else None)(check(a, "status")), 20,
                      what="the daemon's watch in status")
        assert st["daemon"]["running"] is True and st["daemon"]["pid"] == a.daemon.pid
        assert st["watch"]["pid"] == a.daemon.pid and "watch_planned" not in st
    finally:
        assert a.stop() == 0

    assert set(check.seen) == set(json_commands()), f"not exercised: {set(json_commands()) - set(check.seen)}"


@pytest.mark.parametrize("args, key", [(["ls"], "items"), (["skill", "ls"], "skills"), (["conflicts"], "conflicts"),
                                       (["deleted"], "deleted")])
def test_an_empty_list_is_still_an_object(mesh: Mesh, args: list[str], key: str):
    """Lists are wrapped in an object, so that every document can carry schema_version."""
    a = mesh.node("a")
    extra = {"unreadable": []} if key in ("conflicts", "deleted") else {}
    assert Checker()(a, *args) == {"schema_version": JSON_SCHEMA_VERSION, key: [], **extra}


def test_a_held_mass_delete_and_an_unreadable_history_record(mesh: Mesh):
    """`deletes`, `sync` and `status` while a mass delete is held (R11), `deleted` once it
    is confirmed, and a history record that cannot be read: each in its documented shape."""
    check = Checker()
    a = mesh.node("a")
    for i in range(12):
        foreign_put(a, "mesh", f"k{i:02d}", {"n": i})
    a.sync()
    for f in (mesh.share / "memory" / "mesh").iterdir():
        f.unlink()
    s = check(a, "sync", check=1)
    assert s["held"] == 12 and s["deleted"] == 0 and s["ok"] is False
    h = check(a, "deletes", check=1)["hold"]
    assert h["count"] == 12 and {"item": "mesh:k00", "folder": h["items"][0]["folder"]} in h["items"], h
    assert check(a, "status")["delete_hold"] == h
    a.cli("deletes", "confirm")
    assert check(a, "deletes")["hold"] is None
    assert len(check(a, "deleted")["deleted"]) == 12
    bad = next((mesh.share / ".meshsync" / "history").rglob("deleted-*.json"))
    bad.write_text("{ not json")
    d = check(a, "deleted")
    assert len(d["deleted"]) == 11 and d["unreadable"][0]["path"].endswith(bad.name), d["unreadable"]
