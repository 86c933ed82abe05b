"""The package's shape, as issue 18 and docs/architecture.md ask for it, held by a test.

Rules of thumb that keep each phase readable: no class over 400 lines, no function over
80, SQL executed only in the index replica's modules (meshsync/replicas/index/), and no
test that assigns to a private attribute of production code (seams are meshsync.faults
and public parameters).  A change that breaks one fails here, naming the place.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "meshsync"
MAX_CLASS, MAX_FUNC = 400, 80


def _modules(root: Path) -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text(encoding="utf-8"), str(p))) for p in sorted(root.rglob("*.py"))]


def _span(n: ast.AST) -> int:
    return n.end_lineno - n.lineno + 1  # type: ignore[attr-defined]


def test_no_class_over_400_lines_and_no_function_over_80():
    too_long = []
    for p, tree in _modules(PKG):
        for n in ast.walk(tree):
            if isinstance(n, ast.ClassDef) and _span(n) > MAX_CLASS:
                too_long.append(f"class {p.relative_to(ROOT)}:{n.lineno} {n.name}: {_span(n)} lines")
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and _span(n) > MAX_FUNC:
                too_long.append(f"function {p.relative_to(ROOT)}:{n.lineno} {n.name}: {_span(n)} lines")
    assert not too_long, "\n".join(too_long)


def test_sql_is_executed_only_in_the_index_replica():
    """`.execute(`/`.executemany(`/`.executescript(` on a connection outside
    meshsync/replicas/index/ would spread the index's SQL over the package again."""
    index_dir = PKG / "replicas" / "index"
    outside = []
    for p, tree in _modules(PKG):
        if index_dir in p.parents:
            continue
        for n in ast.walk(tree):
            if (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                    and n.func.attr in ("execute", "executemany", "executescript")):
                outside.append(f"{p.relative_to(ROOT)}:{n.lineno}")
    assert not outside, "SQL executed outside meshsync/replicas/index/: " + ", ".join(outside)


def test_no_test_assigns_to_a_private_attribute_of_production_code():
    """`obj._x = ...` or `setattr(obj, "_x", ...)` in a test replaces an internal instead of
    using a seam (meshsync.faults, public parameters).  Assignments to ``self._x`` inside a
    test's own classes are the test's business and allowed."""
    found = []
    for p, tree in _modules(ROOT / "tests"):
        for n in ast.walk(tree):
            targets: list[ast.expr] = []
            if isinstance(n, ast.Assign):
                targets = list(n.targets)
            elif isinstance(n, (ast.AugAssign, ast.AnnAssign)):
                targets = [n.target]
            for t in targets:
                if (isinstance(t, ast.Attribute) and t.attr.startswith("_") and not t.attr.startswith("__")
                        and not (isinstance(t.value, ast.Name) and t.value.id in ("self", "cls"))):
                    found.append(f"{p.relative_to(ROOT)}:{n.lineno} .{t.attr}")
            if (isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "setattr"
                    and len(n.args) >= 2 and isinstance(n.args[1], ast.Constant)
                    and str(n.args[1].value).startswith("_")):
                found.append(f"{p.relative_to(ROOT)}:{n.lineno} setattr {n.args[1].value}")
    assert not found, "tests assign to private attributes: " + ", ".join(found)
