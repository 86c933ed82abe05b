"""Packaging: one version, a license and metadata, an sdist that holds everything a
packager and the test suite need, a wheel that installs the units, and a constraints file
that pins the dependency tree the suite passes with."""

from __future__ import annotations

import email.parser
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import meshsync

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
VERSION = meshsync.__version__

# Files and folders of a checkout that are not the project's (caches, builds, installs).
NOT_OURS = {".git", "__pycache__", ".hypothesis", ".pytest_cache", ".ruff_cache", "build", "dist",
            "node_modules", ".venv"}


def project_files(root: Path) -> set[str]:
    """Every file of the checkout at ``root`` that belongs to the project, relative."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in NOT_OURS and not d.endswith(".egg-info")]
        for f in filenames:
            if not f.endswith((".pyc", ".pyo")) and f != ".git":
                out.add(str(Path(dirpath, f).relative_to(root)))
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(sdist, wheel, copy of the checkout): `python -m build` on a copy of this checkout
    (the checkout stays clean); build makes the sdist first and the wheel from the sdist,
    so a file the sdist lacks breaks the wheel too."""
    tmp = tmp_path_factory.mktemp("pkg")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=lambda d, names: [n for n in names if n in NOT_OURS
                                                        or n.endswith((".egg-info", ".pyc"))])
    out = tmp / "dist"
    r = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(src)],
                       text=True, capture_output=True, timeout=600, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"python -m build failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    sdists = list(out.glob("*.tar.gz"))
    wheels = list(out.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, sorted(p.name for p in out.iterdir())
    return sdists[0], wheels[0], src


# --- version and metadata -----------------------------------------------------------------------


def test_the_version_is_written_once():
    project = PYPROJECT["project"]
    assert "version" not in project and project["dynamic"] == ["version"], (
        "pyproject.toml must not write the version; it reads meshsync.__version__")
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "meshsync.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+(?:(?:a|b|rc|\.dev)\d+)?", VERSION), VERSION
    # no other file of the package spells the version out
    for f in (REPO / "meshsync").rglob("*.py"):
        if f != REPO / "meshsync" / "__init__.py":
            assert f'"{VERSION}"' not in f.read_text(encoding="utf-8"), f"{f} repeats the version"
    r = subprocess.run([sys.executable, "-m", "meshsync", "--version"], text=True, capture_output=True,
                       timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.stdout.strip() == f"meshsync {VERSION}", r.stdout + r.stderr


def test_changelog_keeps_an_unreleased_section_and_names_the_current_version():
    text = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "Keep a Changelog" in text
    heads = re.findall(r"^## \[([^\]]+)\](?: - (\d{4}-\d{2}-\d{2}))?$", text, re.M)
    assert heads and heads[0] == ("Unreleased", ""), "the first section must be ## [Unreleased]"
    releases = [(v, d) for v, d in heads[1:]]
    assert releases and all(d for _, d in releases), "every release heading needs its date"
    assert releases[0][0] == VERSION, (
        f"the newest release in CHANGELOG.md is {releases[0][0]}, meshsync.__version__ is {VERSION}")


def test_license_and_metadata():
    project = PYPROJECT["project"]
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License") and "meshsync contributors" in text
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert project["authors"] == [{"name": "meshsync contributors"}]
    assert len(project["keywords"]) >= 4
    assert any(c.startswith("Programming Language :: Python :: 3.11") for c in project["classifiers"])
    assert "build" in " ".join(project["optional-dependencies"]["test"]), "the tests build with `build`"


# --- sdist and wheel ---------------------------------------------------------------------------


def test_sdist_holds_every_project_file(built):
    sdist, _, src = built
    with tarfile.open(sdist) as tf:
        top = f"meshsync-{VERSION}/"
        names = {m.name.removeprefix(top) for m in tf.getmembers() if m.isfile()}
    assert sdist.name == f"meshsync-{VERSION}.tar.gz"
    for needed in ("systemd/meshsync.service", "systemd/meshsync@.service", "systemd/meshsync-user.service",
                   "launchd/local.meshsync.plist", "config.example.yaml", "CHANGELOG.md", "LICENSE",
                   "constraints.txt", "docs/deployment.md", "docs/configuration.md", "tests/helpers.py",
                   "tests/conftest.py", "tests/node/package-lock.json", ".ci/run"):
        assert needed in names, f"the sdist lacks {needed}"
    missing = project_files(src) - names
    assert not missing, f"the sdist lacks project files: {sorted(missing)}"
    assert not [n for n in names if "node_modules" in n or "__pycache__" in n]


def test_wheel_installs_the_package_units_and_example(built):
    _, wheel, _ = built
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        dist_info = f"meshsync-{VERSION}.dist-info"
        meta = email.parser.Parser().parsestr(zf.read(f"{dist_info}/METADATA").decode("utf-8"))
    assert wheel.name.startswith(f"meshsync-{VERSION}-py3-none-any"), wheel.name
    assert meta["Version"] == VERSION
    assert meta["License-Expression"] == "MIT"
    assert meta["Requires-Python"] == ">=3.11"
    assert f"{dist_info}/licenses/LICENSE" in names
    assert "meshsync/cli/main.py" in names and "meshsync/config.py" in names
    data = f"meshsync-{VERSION}.data/data/share/meshsync/"
    for f in ("systemd/meshsync.service", "systemd/meshsync@.service", "systemd/meshsync-user.service",
              "launchd/local.meshsync.plist", "config.example.yaml"):
        assert data + f in names, f"the wheel does not install {f} under share/meshsync/"
    assert not [n for n in names if n.startswith("tests/")], "the tests are not part of the wheel"
    # `meshsync help json` and docs/json.md send users to the installed JSON Schemas.
    doc = f"meshsync-{VERSION}.data/data/share/doc/meshsync/"
    schemas = {p.name for p in (REPO / "docs" / "schemas").glob("*.json")}
    assert schemas and {n.removeprefix(doc + "schemas/") for n in names if n.startswith(doc + "schemas/")} == schemas


def test_the_tests_run_from_the_sdist(built, tmp_path):
    """Unpacked, the sdist's suite collects completely and a quick test file passes."""
    sdist, _, _ = built
    with tarfile.open(sdist) as tf:
        tf.extractall(tmp_path, filter="data")
    root = tmp_path / f"meshsync-{VERSION}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHSYNC_")}
    env["PYTHONPATH"] = str(root)
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    r = subprocess.run(base + ["--collect-only"], cwd=root, env=env, text=True, capture_output=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert re.search(r"^\d{3,} tests collected", r.stdout, re.M), r.stdout[-500:]
    r = subprocess.run(base + ["tests/test_layout.py", "tests/project/test_packaging.py::test_license_and_metadata"],
                       cwd=root, env=env, text=True, capture_output=True, timeout=300)
    assert r.returncode == 0 and " passed" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]


# --- constraints -------------------------------------------------------------------------------


def constraint_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line)
            assert m, f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def dependency_tree() -> dict[str, str]:
    """Installed version of every package meshsync and its `test` extra pull in."""
    project = PYPROJECT["project"]
    todo = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]
    seen: dict[str, str] = {}
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        dist = metadata.distribution(req.name)
        seen[name] = dist.version
        for spec in dist.requires or []:
            sub = Requirement(spec)
            if sub.marker is None or sub.marker.evaluate({"extra": ""}):
                todo.append(sub)
    return seen


def test_constraints_pin_the_tested_dependency_tree():
    """constraints.txt pins exactly the packages meshsync[test] needs, at the versions this
    suite runs with (CI installs with `-c constraints.txt`, the README's test command)."""
    pins = constraint_pins()
    tree = dependency_tree()
    assert set(pins) == set(tree), (f"constraints.txt lacks {sorted(set(tree) - set(pins))}, "
                                    f"pins unneeded {sorted(set(pins) - set(tree))}")
    differ = {n: (pins[n], tree[n]) for n in pins if pins[n] != tree[n]}
    assert not differ, ("the suite runs with other versions than constraints.txt pins (pinned, installed): "
                        f"{differ}; install with `pip install -c constraints.txt -e '.[test]'`")
    for req in PYPROJECT["project"]["dependencies"]:
        r = Requirement(req)
        assert r.specifier.contains(pins[canonicalize_name(r.name)]), f"{req} excludes its own pin"
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "-c constraints.txt" in readme
