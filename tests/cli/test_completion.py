"""Shell completion (`meshsync completion bash|zsh|fish`) and `meshsync help TOPIC`.

The bash script is tested the way bash uses it: printed by a real `meshsync` process,
sourced in a real bash, which is asked (`complete -p`, COMP_WORDS/COMP_CWORD, the
registered function, COMPREPLY) what it completes for a command line.  What it should
complete is read from the parser itself, so every command and option is checked, and a
command added later is checked too.  zsh runs the same script (bashcompinit); the fish
script is checked against the same parser (fish is not installed where the tests run)."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from meshsync import config
from meshsync.cli.main import build_parser

REPO = Path(__file__).resolve().parents[2]


def meshsync(*args: str, code: int = 0, **env: str) -> subprocess.CompletedProcess:
    """Run this checkout's `meshsync ARGS` with no configuration at all but ``env``."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("MESHSYNC_")}
    e["PYTHONPATH"] = str(REPO) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    p = subprocess.run([sys.executable, "-m", "meshsync", *args], env={**e, **env},
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    return p


def commands(p: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every command of the parser by its words (``()`` is meshsync itself)."""
    out = {path: p}
    for act in p._actions:
        if isinstance(act, argparse._SubParsersAction):
            for name, sp in act.choices.items():
                out.update(commands(sp, (*path, name)))
    return out


def subcommand_names(p: argparse.ArgumentParser) -> list[str]:
    return next((list(a.choices) for a in p._actions if isinstance(a, argparse._SubParsersAction)), [])


def option_strings(p: argparse.ArgumentParser) -> set[str]:
    return {s for a in p._actions for s in a.option_strings}


def bash_completions(script: Path, lines: list[list[str]], cwd: Path | None = None) -> list[list[str]]:
    """What bash completes for each command line (its last word is the one being completed),
    asking the function `complete -p meshsync` names, as bash does on Tab."""
    calls = "\n".join(f"c {' '.join(shlex.quote(w) for w in words)}" for words in lines)
    prog = f"""
source {shlex.quote(str(script))} || exit 9
spec=$(complete -p meshsync) || exit 8
fn=${{spec#*-F }}; fn=${{fn%% *}}
c() {{ COMP_WORDS=("$@"); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); COMP_LINE="$*"; COMP_POINT=${{#COMP_LINE}}
      COMPREPLY=(); "$fn" meshsync "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
      printf '%s\\n' "${{COMPREPLY[*]}}"; }}
{calls}
"""
    p = subprocess.run(["bash", "--norc", "--noprofile", "-c", prog], capture_output=True, text=True,
                       timeout=60, cwd=cwd)
    assert p.returncode == 0 and not p.stderr, (p.returncode, p.stderr)
    out = p.stdout.split("\n")[:-1]
    assert len(out) == len(lines), p.stdout
    return [sorted(o.split()) for o in out]


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory) -> Path:
    f = tmp_path_factory.mktemp("completion") / "meshsync.bash"
    f.write_text(meshsync("completion", "bash").stdout)
    return f


def test_bash_completes_every_command_and_subcommand(bash_script: Path):
    p = build_parser()
    spec = subprocess.run(["bash", "--norc", "-c", f"source {shlex.quote(str(bash_script))}; complete -p meshsync"],
                          capture_output=True, text=True, timeout=60)
    assert spec.stdout.strip() == "complete -o default -F _meshsync meshsync", spec
    parents = [path for path, sp in commands(p).items() if subcommand_names(sp)]
    lines = [["meshsync", *path, ""] for path in parents] + [["meshsync", "st"], ["meshsync", "skill", "l"]]
    got = bash_completions(bash_script, lines)
    for path, words in zip(parents, got, strict=False):
        assert words == sorted(subcommand_names(commands(p)[path])), path
    assert "skill" in got[0] and "completion" in got[0] and "help" in got[0]
    assert got[-2:] == [["status"], ["ls"]]


def test_bash_completes_each_commands_own_options(bash_script: Path):
    """Options after every command, global options after the command too (`status -c`),
    and an option's value (`-c FILE`) is not mistaken for a command."""
    cmds = commands(build_parser())
    paths = list(cmds)
    got = bash_completions(bash_script, [["meshsync", *path, "-"] for path in paths]
                           + [["meshsync", "-c", "status", "skill", "--j"], ["meshsync", "search", "--limit", "3", "--"]])
    for path, words in zip(paths, got, strict=False):
        assert words == sorted(option_strings(cmds[path])), path
    assert "--json" in got[paths.index(("status",))] and "--force" in got[paths.index(("init",))]
    assert "--json" not in got[paths.index(("put",))]
    # `-c status` is a file named status: the command is still skill (no --json), so nothing.
    assert got[-2] == [] and "--fts" in got[-1]


def test_bash_completes_option_values_and_files(bash_script: Path, tmp_path: Path):
    (tmp_path / "meshsync.yaml").write_text("node_id: a\n")
    (tmp_path / "triage.md").write_text("# t\n")
    got = bash_completions(bash_script, [
        ["meshsync", "--log-level", ""], ["meshsync", "status", "--log-level", "d"],
        ["meshsync", "--log-level", "=", "w"], ["meshsync", "completion", ""], ["meshsync", "help", "con"],
        ["meshsync", "-c", "mesh"], ["meshsync", "status", "--config", ""], ["meshsync", "skill", "put", "triage", "tr"],
        ["meshsync", "--log-level", "debug", "sy"],
    ], cwd=tmp_path)
    assert got == [["debug", "error", "info", "warning"], ["debug"], ["warning"], ["bash", "fish", "zsh"],
                   ["configuration", "conflicts"], ["meshsync.yaml"], ["meshsync.yaml", "triage.md"], ["triage.md"],
                   ["sync"]]


def test_completion_needs_no_configuration_and_zsh_fish_cover_the_parser():
    """A broken configuration does not stop completion (nor help); zsh loads the bash
    function through bashcompinit; fish has a line per command, subcommand and option."""
    bash = meshsync("completion", "bash", MESHSYNC_WATCH__MODE="bogus", MESHSYNC_CONFIG="/nonexistent.yaml").stdout
    zsh = meshsync("completion", "zsh").stdout
    assert "bashcompinit" in zsh and bash.split("\n", 2)[2] in zsh
    fish = meshsync("completion", "fish").stdout
    for path, sp in commands(build_parser()).items():
        at = f"-n '__meshsync_at \"{' '.join(path)}\"'"
        for name in subcommand_names(sp):
            assert f"complete -c meshsync {at} -f -a '{name}'" in fish, (path, name)
        for act in sp._actions:
            for s in act.option_strings:
                spelled = f"-l {s[2:]}" if s.startswith("--") else f"-s {s[1:]}"
                assert any(line.startswith(f"complete -c meshsync {at} ") and spelled in line
                           for line in fish.splitlines()), (path, s)
    assert "-a 'debug info warning error'" in fish and "-a 'bash zsh fish'" in fish
    meshsync("completion", "tcsh", code=2)


def test_help_topics():
    p = build_parser()
    listing = meshsync("help", MESHSYNC_WATCH__MODE="bogus").stdout  # works with a broken configuration
    for name in subcommand_names(p):
        assert f"\n  {name} " in listing, name
    for guide in ("exit-codes", "configuration", "json", "completion"):
        assert f"\n  {guide} " in listing, guide
    # A command's help is its --help; a subcommand's too.
    assert meshsync("help", "status").stdout == meshsync("status", "--help").stdout
    assert meshsync("help", "skill", "put").stdout == meshsync("skill", "put", "--help").stdout
    codes = meshsync("help", "exit-codes").stdout
    assert all(f"\n  {c}  " in "\n" + codes for c in range(6)), codes
    # Every setting, with its variable and its description (from config.py itself).
    conf = meshsync("help", "configuration").stdout
    for var, loc in config.ENV_SETTINGS.items():
        assert f"${var}" in conf or any(v.startswith(var + "__") for v in config.ENV_SETTINGS), var
        assert "\n  " + ".".join(loc) + "\n" in conf or any(v.startswith(var + "__") for v in config.ENV_SETTINGS), loc
    assert "Seconds between full rescans of the share" in conf
    assert "schema_version" in meshsync("help", "json").stdout
    assert "source <(meshsync completion bash)" in meshsync("help", "completion").stdout
    # Mistakes: exit 2 and a message saying what to do.
    assert "invalid choice" in meshsync("help", "bogus", code=2).stderr
    assert "has no subcommand 'x'; `meshsync help skill` lists them" in meshsync("help", "skill", "x", code=2).stderr
    assert "has no subtopic" in meshsync("help", "json", "x", code=2).stderr
