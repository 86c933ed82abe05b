"""R6, R9, R11: every per-file problem and refusal reaches the log once, naming the file or
item; a write the node refuses to export exits with its own code.

Real `meshsync` processes; seen failing first (the log at INFO showed only start and stop,
and a `put` refused by the secret guard exited 0).
"""

from __future__ import annotations

import json

from helpers import Mesh, MeshNode, memfile, wait_for

SECRET = json.dumps({"note": "creds " + "AKIA" + "IOSFODNN7EXAMPLE"})
KEY_BLOCK = "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\n"


def warnings(n: MeshNode, text: str) -> int:
    return sum(1 for line in n.log().splitlines() if " WARNING " in line and text in line)


def test_problems_and_refusals_are_logged_once_naming_the_file_or_item(mesh: Mesh):
    a = mesh.node("a")
    a.start()
    wait_for(lambda: a.status().get("last_sync"), 20, what="daemon ready")
    memfile(mesh.share, "mesh", "broken.json").write_text('{"value": ')
    p = a.cli("put", "mesh", "aws", SECRET, check=7)
    assert "not exported" in p.stderr and "aws-access-key" in p.stderr
    wait_for(lambda: warnings(a, "memory/mesh/broken.json") == 1, 15, what="the broken file logged")
    wait_for(lambda: warnings(a, "mesh:aws") == 1, 15, what="the refusal logged")
    assert "looks like a secret" in next(ln for ln in a.log().splitlines() if "mesh:aws" in ln)
    # More passes (full and targeted) do not log them again.
    for i in range(3):
        a.cli("put", "mesh", f"fine{i}", "1")
        wait_for(lambda i=i: memfile(mesh.share, "mesh", f"fine{i}.json").exists(), 15, what="exported")
    a.stop()
    a.start()  # a restart neither: the problems are the same ones
    wait_for(lambda: a.status().get("daemon", {}).get("running"), 20, what="restarted")
    a.cli("put", "mesh", "fine9", "1")
    wait_for(lambda: memfile(mesh.share, "mesh", "fine9.json").exists(), 15, what="exported")
    assert warnings(a, "memory/mesh/broken.json") == 1 and warnings(a, "mesh:aws") == 1
    # A fixed file is logged as fixed (INFO), and a new problem is logged again.
    memfile(mesh.share, "mesh", "broken.json").write_text('{"value": 1}')
    wait_for(lambda: "memory/mesh/broken.json: fixed" in a.log(), 15, what="the fix logged")
    memfile(mesh.share, "mesh", "broken.json").write_text('[]')
    wait_for(lambda: warnings(a, "memory/mesh/broken.json") == 2, 15, what="the new problem logged")
    assert a.stop() == 0


def test_a_refused_write_exits_with_its_own_code(mesh: Mesh, tmp_path):
    a = mesh.node("a")
    p = a.cli("put", "mesh", "aws", SECRET, check=7)
    assert "stored mesh:aws" in p.stdout and "not exported" in p.stderr
    f = tmp_path / "SKILL.md"
    f.write_text(KEY_BLOCK)
    p = a.cli("skill", "put", "leaky", str(f), check=7)
    assert "private-key" in p.stderr
    assert not memfile(mesh.share, "mesh", "aws.json").exists() and not (mesh.share / "skills" / "leaky").exists()
    # Kept in the index, listed as refused: nothing is dropped (R9).
    assert a.value("mesh", "aws") is not None
    assert {e["path"] for e in a.status()["errors"] if e["kind"] == "refused"} == {"index:mesh:aws", "index:skill:leaky"}
    # The same with a daemon running: the command tells at once, the daemon keeps it local.
    a.start()
    wait_for(lambda: a.status().get("last_sync"), 20, what="daemon ready")
    a.cli("put", "mesh", "aws2", SECRET, check=7)
    a.cli("put", "mesh", "fine", '"x"')
    wait_for(lambda: memfile(mesh.share, "mesh", "fine.json").exists(), 15, what="exported")
    assert not memfile(mesh.share, "mesh", "aws2.json").exists()
    assert a.stop() == 0
    # Allowed, it goes out and exits 0.
    a.cli("put", "mesh", "aws3", SECRET, MESHSYNC_SECRETS__ALLOW_ITEMS='["mesh:aws3"]')
    assert memfile(mesh.share, "mesh", "aws3.json").exists()
