"""Helpers shared by the `meshsync sync` integration tests (test_sync*.py)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from helpers import Mesh, MeshNode, file_version

from meshsync import layout
from meshsync.replicas.index.store import Index

UPSERT = ("INSERT INTO mesh_memory(scope,key,value,node_id,updated_at) VALUES(?,?,?,?,?) "
          "ON CONFLICT(scope,key) DO UPDATE SET value=excluded.value, node_id=excluded.node_id, "
          "updated_at=excluded.updated_at")


def quick_node(mesh: Mesh, node_id: str, **env: str) -> MeshNode:
    """Another node on an already initialised share; its index is created in-process
    (what `meshsync init` would do for it) to save a process start."""
    n = mesh.node(node_id, init=False, **env)
    Index(n.index).close()
    return n


def sync_json(n: MeshNode, code: int = 0) -> dict:
    return n.cli_json("sync", check=code)


def foreign_put(n: MeshNode, scope: str, key: str, value, updated_at: int | None = None,
                node_id: str | None = None) -> None:
    n.sql(UPSERT, (scope, key, json.dumps(value), node_id or n.node_id,
                   int(time.time()) if updated_at is None else updated_at))


def mem_path(share: Path, scope: str, key: str, node_id: str = "") -> Path:
    return share / layout.item_path(layout.memory_id(scope, key), node_id)


def read_json(p: Path) -> dict:
    return json.loads(p.read_bytes())


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Bytes and mtime of every regular file under root."""
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            if p.is_symlink() or not p.is_file():
                continue
            out[p.relative_to(root).as_posix()] = (p.read_bytes(), p.stat().st_mtime_ns)
    return out


def all_paths(root: Path) -> set[str]:
    out = set()
    for dirpath, dirs, names in os.walk(root):
        for name in dirs + names:
            out.add((Path(dirpath) / name).relative_to(root).as_posix())
    return out


def outbox(n: MeshNode) -> list:
    return n.sql("SELECT kind, scope, key FROM meshsync_outbox")


def fts(n: MeshNode, word: str) -> set[tuple[str, str]]:
    return {(s, k) for s, k in n.sql("SELECT scope, key FROM mesh_memory_fts WHERE mesh_memory_fts MATCH ?",
                                     (word,))}


def conflicts(n: MeshNode) -> list[tuple]:
    return n.sql("SELECT scope, key, loser_node, loser_value, winner_node FROM meshsync_conflicts ORDER BY id")


def errors(n: MeshNode) -> dict[str, dict]:
    return {e["path"]: e for e in n.status()["errors"]}


def assert_item_everywhere(nodes: list[MeshNode], share: Path, scope: str, key: str, value,
                           node_id: str | None = None) -> None:
    _s, _k, fvalue, fnode, fupdated = file_version(share, mem_path(share, scope, key))  # as nodes derive it (R10)
    assert fvalue == value
    for n in nodes:
        row = n.row(scope, key)
        assert row is not None, f"{n.node_id} has no row {scope}:{key}"
        assert json.loads(row[0]) == value, n.node_id
        assert row[2] == fupdated, n.node_id
        assert row[1] == fnode, n.node_id
        c = n.cache()[f"{scope}:{key}"]
        assert c == {"value": value, "nodeId": fnode, "ts": fupdated}, n.node_id
    if node_id is not None:
        assert fnode == node_id


def assert_gone_everywhere(nodes: list[MeshNode], share: Path, scope: str, key: str) -> None:
    assert not mem_path(share, scope, key).exists()
    for n in nodes:
        assert n.row(scope, key) is None, n.node_id
        assert f"{scope}:{key}" not in n.cache(), n.node_id
