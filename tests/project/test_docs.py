"""The documentation tells the truth: README commands run as written, the systemd units
verify, CI runs the README's test command, and links and tables match the code."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshsync.cli import main as cli

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"


# --- helpers ----------------------------------------------------------------------------------


def marked_block(text: str, marker: str) -> str:
    """The fenced code block that follows the HTML comment starting with ``<!-- marker``."""
    m = re.search(r"<!--\s*" + re.escape(marker) + r"\b[^\n]*?-->\s*\n```[a-z]*\n(.*?)\n```", text, re.S)
    assert m, f"README.md has no fenced block after <!-- {marker} -->"
    return m.group(1)


def clean_env(tmp_path: Path) -> dict[str, str]:
    """An environment with no MESHSYNC_* settings, a private HOME and the repo's code first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHSYNC_")}
    env.pop("XDG_DATA_HOME", None)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env["HOME"] = str(home)
    env["TMPDIR"] = str(tmp_path)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def meshsync_shim(tmp_path: Path, env: dict[str, str]) -> None:
    """Put a `meshsync` on PATH that runs this checkout's code with this interpreter."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    shim = bindir / "meshsync"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m meshsync "$@"\n')
    shim.chmod(0o755)
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"


def expectation(line: str) -> re.Pattern[str]:
    """A `#>` line: literal text in which `...` matches anything."""
    parts = [re.escape(p) for p in line.split("...")]
    return re.compile(".*?".join(parts))


def parse_walkthrough(block: str) -> list[tuple[str, list[str]]]:
    """[(command, [expected output lines])] from the README's walk-through block."""
    steps: list[tuple[str, list[str]]] = []
    for raw in block.splitlines():
        line = raw.rstrip()
        if line.startswith("#>"):
            assert steps, "a #> line before any command"
            steps[-1][1].append(line[2:].removeprefix(" "))
        elif line and not line.startswith("#"):
            steps.append((line, []))
    return steps


# --- README -----------------------------------------------------------------------------------


def test_readme_walkthrough_runs_as_written(tmp_path):
    if shutil.which("bash") is None:
        pytest.fail("bash is needed to run the README walk-through")
    steps = parse_walkthrough(marked_block(README.read_text(encoding="utf-8"), "walkthrough"))
    assert len(steps) >= 10, "the walk-through block looks truncated"
    commands = " ".join(c for c, _ in steps)
    for needed in ("MESHSYNC_NODE_ID", "MESHSYNC_INDEX", "MESHSYNC_OPENCLAW_HOME", "MESHSYNC_SHARE",
                   " put ", " sync", " get ", " status", "> share/"):
        assert needed in commands, f"the walk-through should show {needed.strip()!r}"

    # One bash process runs every line in order (functions and variables carry over);
    # markers split the output per command and record each exit code.  `set -m` gives the
    # script job control, as an interactive shell has, so `kill %1` stops a background job.
    # At the end it prints $DEMO so that the test can see the daemon is gone.
    script = ["set -m", "exec 2>&1"]
    for i, (cmd, _) in enumerate(steps):
        script += [f"echo '@@@begin {i}'", cmd, f"echo \"@@@end {i} $?\""]
    script.append('echo "@@@demo $DEMO"')
    env = clean_env(tmp_path)
    meshsync_shim(tmp_path, env)
    try:
        proc = subprocess.run(["bash", "-c", "\n".join(script)], cwd=tmp_path, env=env, text=True,
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=300)
        out = proc.stdout
    finally:
        stop_walkthrough_daemons(tmp_path, env)
    for i, (cmd, expected) in enumerate(steps):
        m = re.search(rf"^@@@begin {i}\n(.*?)^@@@end {i} (\d+)$", out, re.S | re.M)
        assert m, f"command {cmd!r} did not finish; output so far:\n{out[-3000:]}"
        text, rc = m.group(1), int(m.group(2))
        assert rc == 0, f"README command {cmd!r} exited {rc}:\n{text}"
        assert "Traceback" not in text, f"{cmd!r} printed a traceback:\n{text}"
        lines = text.splitlines()
        for exp in expected:
            pat = expectation(exp)
            assert any(pat.fullmatch(ln) for ln in lines), (
                f"README claims {cmd!r} prints a line like {exp!r}; it printed:\n{text}")


def stop_walkthrough_daemons(tmp_path: Path, env: dict[str, str]) -> None:
    """Wait for daemons the walk-through started to stop; kill any that do not (they are ours)."""
    for index in tmp_path.glob("tmp*/*/index.sqlite"):
        node_env = dict(env, MESHSYNC_INDEX=str(index))
        deadline = time.monotonic() + 30
        while True:
            st = subprocess.run([sys.executable, "-m", "meshsync", "status", "--json"], env=node_env,
                                text=True, capture_output=True, timeout=60)
            pid = json.loads(st.stdout)["daemon"]["pid"] if st.returncode == 0 else None
            if not pid:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                pytest.fail(f"the walk-through's daemon (pid {pid}) did not stop after `kill %1`")
            time.sleep(0.2)


def test_readme_run_command_starts_the_daemon_on_the_default_share(tmp_path):
    """`... && meshsync init && meshsync run` with nothing configured: defaults under HOME."""
    cmd = marked_block(README.read_text(encoding="utf-8"), "run-command").strip()
    parts = [p.strip() for p in cmd.split("&&")]
    assert re.fullmatch(r"(python3 -m )?pip install \.", parts[0]), parts
    assert parts[1:] == ["meshsync init", "meshsync run"], parts
    env = clean_env(tmp_path)
    meshsync_shim(tmp_path, env)
    home = Path(env["HOME"])
    init = subprocess.run(["bash", "-c", parts[1]], env=env, cwd=tmp_path, text=True,
                          capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert init.returncode == 0, init.stderr
    assert f"share ready: {home}/.local/share/meshsync/share" in init.stdout
    assert f"index ready: {home}/.local/share/meshsync/index.sqlite" in init.stdout
    daemon = subprocess.Popen(["bash", "-c", "exec " + parts[2]], env=env, cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            st = subprocess.run([sys.executable, "-m", "meshsync", "status", "--json"], env=env,
                                text=True, capture_output=True, timeout=60)
            assert st.returncode == 0, st.stderr
            data = json.loads(st.stdout)
            if data["daemon"]["running"] and data.get("last_sync"):
                break
            assert daemon.poll() is None, f"meshsync run exited early:\n{daemon.stdout.read()}"
            assert time.monotonic() < deadline, "meshsync run did not become ready in 30 s"
            time.sleep(0.2)
        assert data["share"]["available"], data
        assert data["cache"] == f"{home}/.openclaw"
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            rc = daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
            pytest.fail("meshsync run did not stop within 30 s of SIGTERM")
    assert rc == 0, f"meshsync run exited {rc} on SIGTERM:\n{daemon.stdout.read()}"


def test_ci_runs_exactly_the_readme_test_command():
    cmd = marked_block(README.read_text(encoding="utf-8"), "test-command").strip()
    assert "\n" not in cmd, "the test command must be one line"
    assert "pytest" in cmd and "[test]" in cmd
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert ci.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in ci
    lines = [ln.strip() for ln in ci.splitlines()]
    assert lines[-1] == cmd, "the last line of .ci/run must be the README's test command, verbatim"
    for pkg in ("bindfs", "fuse3", "sqlite3", "systemd"):
        assert pkg in ci
    assert os.access(REPO / ".ci" / "run", os.X_OK), ".ci/run must be executable"
    # the `test` extra installs what the tests import
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    test_extra = re.search(r"^test = \[(.*?)\]", pyproject, re.M | re.S)
    assert test_extra and "pytest" in test_extra.group(1)


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})


def test_readme_lists_every_command_and_exit_code():
    text = README.read_text(encoding="utf-8")
    for name, sp in subcommands(cli.build_parser()).items():
        nested = subcommands(sp)
        if sp.get_default("fn") is not None or not nested:
            assert f"`meshsync {name}" in text, f"README's command table lacks `meshsync {name}`"
        for sname in nested:
            assert f"`meshsync {name} {sname}" in text, f"README's command table lacks `meshsync {name} {sname}`"
    codes = re.findall(r"^  (\d)  (.+)$", cli.EPILOG, re.M)
    assert len(codes) == 8  # 0-7
    for code, meaning in codes:
        assert f"| {code} | {meaning} |" in text, f"README's exit code {code} differs from meshsync/cli/"


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[`*_]|<[^>]+>", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", doc.read_text(encoding="utf-8"), flags=re.S | re.M)
    return {github_anchor(h) for h in re.findall(r"^#{1,6} +(.+?) *#*$", text, re.M)}


def test_doc_links_point_to_existing_files():
    """Every relative link in the README and docs/ names a file that exists and, with a
    #fragment into a Markdown file, a heading that exists there."""
    docs = [README, *sorted((REPO / "docs").glob("*.md"))]
    for doc in docs:
        for target, frag in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", doc.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue
            path = (doc.parent / target) if target else doc
            assert path.exists(), f"{doc.relative_to(REPO)} links to missing {target}"
            if frag and path.suffix == ".md":
                assert frag in anchors(path), (
                    f"{doc.relative_to(REPO)} links to {target}#{frag}, but {path.name} has no such heading")


def test_tests_named_in_the_docs_exist():
    """`tests/test_x.py::test_y` and `tests/test_x.py`: `test_y`, `test_z` in the docs
    (e.g. the "how it is tested" column of guarantees.md) name real test functions."""
    import ast

    defined: dict[str, set[str]] = {}

    def functions(rel: str) -> set[str]:
        if rel not in defined:
            path = REPO / rel
            assert path.is_file(), f"the docs name {rel}, which does not exist"
            tree = ast.parse(path.read_text(encoding="utf-8"))
            defined[rel] = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
        return defined[rel]

    named = 0
    for doc in [README, *sorted((REPO / "docs").glob("*.md"))]:
        for line in doc.read_text(encoding="utf-8").splitlines():
            current = None
            for tok in re.findall(r"`([^`]+)`", line):
                m = re.fullmatch(r"(tests/(?:\w+/)*test_\w+\.py)(?:::(test_\w+))?", tok)
                if m:
                    current = m.group(1)
                    if m.group(2):
                        assert m.group(2) in functions(current), f"{doc.name}: {tok} does not exist"
                        named += 1
                    else:
                        functions(current)
                elif current and re.fullmatch(r"test_\w+", tok):
                    assert tok in functions(current), f"{doc.name}: {current}::{tok} does not exist"
                    named += 1
    assert named >= 30, "guarantees.md should name the tests of each guarantee"


def test_guarantees_doc_covers_r1_to_r11():
    text = (REPO / "docs" / "guarantees.md").read_text(encoding="utf-8")
    for n in range(1, 12):
        assert re.search(rf"^\| \*\*R{n}\b", text, re.M), f"docs/guarantees.md lacks a row for R{n}"


# --- troubleshooting -----------------------------------------------------------------------------

REPORTERS = {"Problem": 1, "ShareUnavailable": 0, "CliError": 0, "ConfigError": 0, "IndexError_": 0,
             "FormatError": 0, "CacheUnreadable": 0, "Warning_": 1}


def reported_messages() -> list[tuple[str, int, str]]:
    """(file, line, longest literal part) of every message meshsync reports to an operator:
    per-file problems, unavailable share, CLI, configuration, index and format errors, index
    row problems and the daemon's warnings and errors."""
    import ast

    def literal(node) -> list[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, ast.JoinedStr):
            return [v.value for v in node.values if isinstance(v, ast.Constant)]
        if isinstance(node, ast.BinOp):
            return literal(node.left) + literal(node.right)
        return []

    out = []
    for f in sorted((REPO / "meshsync").rglob("*.py")):
        if f.name == "doctor.py":  # its checks are covered by name below
            continue
        tree = ast.parse(f.read_text(encoding="utf-8"))
        skip = set()
        for fn in ast.walk(tree):  # tombstones are meshsync's own; a bad one is skipped silently
            if isinstance(fn, ast.FunctionDef) and fn.name == "parse_tombstone":
                skip |= {id(n) for n in ast.walk(fn)}
        for n in ast.walk(tree):
            if id(n) in skip:
                continue
            arg = None
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in REPORTERS:
                i = REPORTERS[n.func.id]
                arg = n.args[i] if len(n.args) > i else None
            elif (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in ("warning", "error")
                  and isinstance(n.func.value, ast.Name) and n.func.value.id == "log" and n.args):
                arg = n.args[0]
            elif isinstance(n, ast.FunctionDef) and n.name.endswith("_problem"):  # returns the reason
                for r in ast.walk(n):
                    if isinstance(r, ast.Return) and r.value is not None:
                        parts = [p for p in literal(r.value) if len(p.strip(" .,;:()")) >= 8]
                        if parts:
                            out.append((f.name, r.lineno, max(parts, key=len)))
                continue
            elif (isinstance(n, ast.Assign) and isinstance(n.value, ast.Tuple) and n.value.elts
                  and any(isinstance(t, ast.Subscript) and getattr(t.value, "id", "") == "index_problems"
                          for t in n.targets)):
                arg = n.value.elts[0]
            parts = [seg for p in literal(arg) for seg in re.split(r"%[-\d.]*[sdgf]", p)] if arg is not None else []
            parts = [p for p in parts if len(p.strip(" .,;:()")) >= 8]
            if parts:
                out.append((f.name, n.lineno, max(parts, key=len)))
    return out


def _words(text: str) -> list[str]:
    text = re.sub(r"\\\w|[-`'\"\\]", " ", text).lower()
    return [w.strip(".,;:()[]!?…") for w in text.split() if w.strip(".,;:()[]!?…")]


def test_troubleshooting_covers_every_reported_error():
    """docs/troubleshooting.md explains each message meshsync reports: for every message,
    some run of (up to) four consecutive words of it appears in the doc."""
    doc = " " + " ".join(_words((REPO / "docs" / "troubleshooting.md").read_text(encoding="utf-8"))) + " "
    msgs = reported_messages()
    assert len(msgs) >= 60, "the scan for reported messages found too few: is it still working?"
    missing = []
    for fname, line, text in msgs:
        w = _words(text)
        n = min(4, len(w))
        if not any(" " + " ".join(w[i:i + n]) + " " in doc for i in range(len(w) - n + 1)):
            missing.append(f"{fname}:{line}: {text!r}")
    assert not missing, "docs/troubleshooting.md does not explain:\n" + "\n".join(missing)


def test_troubleshooting_names_every_doctor_check():
    import ast

    names: set[str] = set()
    for src in (REPO / "meshsync" / "cli" / "doctor.py", REPO / "meshsync" / "cli" / "doctor_syncthing.py"):
        tree = ast.parse(src.read_text(encoding="utf-8"))
        names |= {n.args[0].value for n in ast.walk(tree) if isinstance(n, ast.Call)
                  and getattr(n.func, "id", "") == "Check"
                  and n.args and isinstance(n.args[0], ast.Constant)}
    assert {"syncthing folder", "syncthing watcher"} <= names, "the scan no longer finds the Syncthing checks"
    assert len(names) >= 10
    text = (REPO / "docs" / "troubleshooting.md").read_text(encoding="utf-8")
    for name in sorted(names - {"configuration"}):
        assert f"doctor: `{name}`" in text, f"docs/troubleshooting.md does not explain doctor's {name!r} check"
