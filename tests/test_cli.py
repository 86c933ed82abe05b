"""The command line's own behaviour (issue 20): global options after the command, a
value read from stdin, full-text search, shell completion and the help topics.

Real `meshsync` processes on real folders (``Mesh``); the parser itself is asked
directly where only the parsing is under test."""

from __future__ import annotations

import json

import pytest
from helpers import Mesh

from meshsync.cli.main import build_parser

# --- global options: before or after the command ---------------------------------------------


def test_global_options_are_accepted_after_the_command(mesh: Mesh, tmp_path):
    """`meshsync status -c FILE` and `meshsync sync --log-level DEBUG` were refused
    ("unrecognized arguments"): an operator types the command first."""
    a = mesh.node("a")
    cfg = tmp_path / "other.yaml"
    cfg.write_text("watch: {mode: poll}\n")  # the node's MESHSYNC_* variables set the paths
    st = json.loads(a.cli("status", "-c", str(cfg), "--json").stdout)
    assert st["watch_planned"]["mode"] == "poll"
    st = json.loads(a.cli("status", "--json", "--config", str(cfg)).stdout)
    assert st["watch_planned"]["mode"] == "poll"
    (mesh.share / "memory" / "mesh" / "broken.json").write_text("{not json")
    assert "broken.json" not in a.cli("sync", check=1).stderr  # its "skipped" line is logged at debug
    assert "broken.json" in a.cli("sync", "--log-level", "DEBUG", check=1).stderr
    # Nested commands too, and the option before the command still works.
    a.cli("skill", "ls", "-c", str(cfg))
    st = json.loads(a.cli("-c", str(cfg), "status", "--json").stdout)
    assert st["watch_planned"]["mode"] == "poll"


@pytest.mark.parametrize("argv, config, level", [
    (["--log-level", "DEBUG", "status"], None, "debug"),
    (["status", "--log-level", "Warning"], None, "warning"),
    (["-c", "one.yaml", "status", "-c", "two.yaml"], "two.yaml", None),
    (["-c", "one.yaml", "status"], "one.yaml", None),
    (["skill", "ls", "--log-level", "error", "--config", "x.yaml"], "x.yaml", "error"),
    (["conflicts", "restore", "3", "-c", "x.yaml"], "x.yaml", None),
])
def test_global_options_parse_anywhere_and_in_any_case(argv, config, level):
    """The value given last wins (after the command beats before it); a level in any
    case is accepted as YAML's log_level is."""
    a = build_parser().parse_args(argv)
    assert (a.config, a.log_level) == (config, level)


def test_an_unknown_log_level_is_still_refused(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["status", "--log-level", "LOUD"])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


# --- put VALUE from stdin ----------------------------------------------------------------------


def test_put_reads_the_value_from_stdin_when_it_is_a_dash(mesh: Mesh):
    """A value over the kernel's argument limit (128 KiB per argument) cannot be given
    on the command line: `put SCOPE KEY -` reads it from stdin, as `skill put` does."""
    a = mesh.node("a")
    big = {"text": "x" * 300_000, "n": [1, 2, 3]}
    p = a.cli("put", "mesh", "big", "-", input=json.dumps(big))
    assert "stored mesh:big" in p.stdout
    assert a.value("mesh", "big") == big
    got = json.loads(a.cli("get", "mesh", "big").stdout)
    assert got == big


def test_put_from_stdin_refuses_what_is_not_json(mesh: Mesh):
    a = mesh.node("a")
    p = a.cli("put", "mesh", "bad", "-", input="not json", check=2)
    assert "not valid JSON" in p.stderr and "nothing was changed" in p.stderr
    assert a.row("mesh", "bad") is None


def test_a_json_string_dash_is_still_a_value(mesh: Mesh):
    """The string "-" itself is written as '"-"' (JSON), so the bare dash is free."""
    a = mesh.node("a")
    a.cli("put", "mesh", "dash", '"-"')
    assert a.value("mesh", "dash") == "-"
