"""meshsync/replicas/share/syncthing.py and meshsync/cli/doctor_syncthing.py: Syncthing's names, its ignore
patterns, and doctor's checks of a Syncthing-kept share, against the real Syncthing of tests/syncthing_helpers.py."""

from __future__ import annotations

import shutil
import urllib.error
from datetime import datetime
from pathlib import Path

import pytest
from helpers import wait_for
from syncthing_helpers import SyncthingMesh, SyncthingNode, wait_file

from meshsync import config, formats, layout
from meshsync.cli.doctor_syncthing import IGNORE_TMP, Ignores, doctor_checks
from meshsync.config import Settings
from meshsync.replicas.share import syncthing
from meshsync.replicas.share.store import TMP_PREFIX, FileEntry, Share
from meshsync.replicas.share.syncthing import ConflictName, conflict_original, parse_conflict_name

# --- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, original", [
    ("user.preferences.sync-conflict-20240102-030405-ABCDEF7.json", "user.preferences.json"),
    ("SKILL.sync-conflict-20251231-235959-Z2Z2Z2Z.md", "SKILL.md"),
    ("run.sync-conflict-20240102-030405-ABCDEF7", "run"),  # no extension
    ("a.tar.sync-conflict-20240102-030405-ABCDEF7.gz", "a.tar.gz"),  # Go's Ext: the last dot on
    (".sync-conflict-20240102-030405-ABCDEF7.env", ".env"),  # Go's Ext(".env") is ".env"
])
def test_conflict_names_parse_to_their_original(name, original):
    assert parse_conflict_name(name) == ConflictName(original, datetime(*_dt(name)), name.split("-")[-1][:7])


def _dt(name: str) -> tuple[int, ...]:
    d, t = name.split(".sync-conflict-")[1].split("-")[:2]
    return int(d[:4]), int(d[4:6]), int(d[6:]), int(t[:2]), int(t[2:4]), int(t[4:])


@pytest.mark.parametrize("name", [
    "user.preferences.json", "x.sync-conflict-2024010-030405-ABCDEF7.json", "x.sync-conflict-20240102-030405-abcdef7.json",
    "x.sync-conflict-20240102-030405-ABCDEF1.json",  # 1 is not base32
    "v1.2.sync-conflict-20240102-030405-ABCDEF7",  # Syncthing puts the marker before the last dot
    "x.sync-conflict-20241340-030405-ABCDEF7.json",  # no such date
    ".sync-conflict-20240102-030405-ABCDEF7",  # nothing it could be a copy of
    ".env.sync-conflict-20240102-030405-ABCDEF7",  # the copy of ".env" is ".sync-conflict-...-X.env"
])
def test_names_syncthing_does_not_make_are_not_conflict_copies(name):
    assert parse_conflict_name(name) is None


def test_conflict_original_keeps_the_folder_inside_skills_and_unwinds_copies_of_copies():
    rel, info = conflict_original("skills/deploy/scripts/run.sync-conflict-20240102-030405-ABCDEF7.sh")
    assert rel == "skills/deploy/scripts/run.sh" and info.device == "ABCDEF7"
    rel, info = conflict_original(
        "memory/mesh/k.sync-conflict-20240102-030405-AAAAAAA.sync-conflict-20240103-010101-BBBBBBB.json")
    assert rel == "memory/mesh/k.json" and info.device == "BBBBBBB" and info.when.day == 3
    assert conflict_original("memory/mesh/k.json") is None


def test_syncthing_files_are_recognised():
    for rel in (".stfolder", ".stignore", ".stversions/memory/mesh/k~20240102-030405.json",
                "memory/mesh/.syncthing.k.json.tmp", "skills/x/~syncthing~SKILL.md.tmp",
                "memory/mesh/k.sync-conflict-20240102-030405-ABCDEF7.json"):
        assert syncthing.is_syncthing_file(rel), rel
        assert any(layout.is_ignored_name(part) for part in rel.split("/")), rel
    for rel in ("memory/mesh/k.json", "skills/x/SKILL.md", ".meshsync/README", "memory/mesh/syncthing.json"):
        assert not syncthing.is_syncthing_file(rel), rel


# --- tombstones in conflict ---------------------------------------------------------------------


def test_tombstone_copies_fold_into_the_newer_tombstone(tmp_path: Path):
    """fold_tombstone_copies on a real share: the newer of tombstone and copy stays at the
    tombstone's path, the copy goes; a copy of something else is left alone."""
    share = Share(tmp_path, max_file_bytes=1 << 20, fsync=False)
    share.initialise()
    k1, k2, k3 = (layout.memory_id("mesh", k) for k in ("k1", "k2", "k3"))
    cp = ".sync-conflict-20240102-030405-ABCDEF7"
    files = {
        # k1: the copy is the newer delete -> it replaces the tombstone
        "memory/mesh/k1.json": formats.render_tombstone(k1, 1000, "a"),
        f"memory/mesh/k1{cp}.json": formats.render_tombstone(k1, 2000, "b"),
        # k2: the tombstone is the newer -> it stays
        "memory/mesh/k2.json": formats.render_tombstone(k2, 3000, "a"),
        f"memory/mesh/k2{cp}.json": formats.render_tombstone(k2, 2000, "b"),
        # k3: the copy says another item -> both left alone
        "memory/mesh/k3.json": formats.render_tombstone(k3, 1000, "a"),
        f"memory/mesh/k3{cp}.json": formats.render_tombstone(k1, 5000, "b"),
    }
    walk: dict[str, FileEntry] = {}
    for rel, data in files.items():
        full = f"{layout.TOMBSTONES}/{rel}"
        share.write(full, data)
        walk[full] = FileEntry(full, "sig", True)
    assert syncthing.fold_tombstone_copies(share, walk) == 2
    t = tmp_path / layout.TOMBSTONES / "memory" / "mesh"
    assert sorted(p.name for p in t.iterdir()) == ["k1.json", "k2.json", "k3.json", f"k3{cp}.json"]
    assert formats.parse_tombstone((t / "k1.json").read_bytes()) == (k1, 2000, "b")
    assert formats.parse_tombstone((t / "k2.json").read_bytes()) == (k2, 3000, "a")
    assert sorted(walk) == [f"{layout.TOMBSTONES}/memory/mesh/{n}" for n in ("k1.json", "k2.json", "k3.json")]
    assert walk[f"{layout.TOMBSTONES}/memory/mesh/k1.json"].settled is False  # read again by the pass


# --- ignore patterns ------------------------------------------------------------------------------


def test_ignore_patterns_match_as_syncthing_does():
    ign = Ignores(["// a comment", "#include other", f"(?d){TMP_PREFIX}*", "!/keep.me", "/root-only",
                   "(?i)CaSe", "**/deep/x", "a{b,c}d", "!(?d)never", "never", "*.log", "/dir/"])
    yes = [f"memory/mesh/{TMP_PREFIX}1-2", f"{TMP_PREFIX}x", "root-only", "root-only/inside", "y/case", "deep/x",
           "q/deep/x", "deep/x/in", "abd", "x/acd", "a.log", "x/y/b.log", "dir", "dir/file"]
    no = ["keep.me", "x/root-only", "ad", "never", "x/never", "a.log.txt", "x/dir", "memory/mesh/k.json",
          "// a comment", "other"]
    assert [r for r in yes if not ign.ignored(r)] == []
    assert [r for r in no if ign.ignored(r)] == []
    assert ign.match("x/never").include is True  # the first pattern decides


# --- doctor against a real Syncthing ----------------------------------------------------------


@pytest.fixture
def st_pair(tmp_path: Path, monkeypatch):
    """Two real Syncthing instances; HOME and XDG dirs point into tmp_path (no config.xml
    there unless a test puts one)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    m = SyncthingMesh(tmp_path, ["a", "b"])
    try:
        yield m.start()
    finally:
        m.stop()


def settings(st: SyncthingNode, api: bool = True, **syncthing_settings) -> Settings:
    if api:
        syncthing_settings = {"api_url": st.api_url, "api_key": st.api_key, **syncthing_settings}
    return config.load(node_id=st.name, share=st.folder, index=st.home.parent / f"index-{st.name}.sqlite",
                    openclaw_home=st.home.parent / f"openclaw-{st.name}", syncthing=syncthing_settings)


def checks(s: Settings) -> dict[str, tuple[str, str, str]]:
    out = {c.name: (c.result, c.detail, c.hint) for c in doctor_checks(s)}
    assert all(r in ("pass", "warn", "fail") for r, _, _ in out.values())
    return out


def recommend_ignores(folder: Path) -> None:
    (folder / ".stignore").write_text(f"// meshsync\n{IGNORE_TMP}\n")


def test_a_share_that_is_not_a_syncthing_folder_gets_no_syncthing_lines(tmp_path: Path):
    share = tmp_path / "nas"
    share.mkdir()
    s = config.load(share=share, index=tmp_path / "i.sqlite", openclaw_home=tmp_path / "oc")
    assert doctor_checks(s) == []
    s = config.load(share=share, index=tmp_path / "i.sqlite", openclaw_home=tmp_path / "oc",
                 syncthing={"api_url": "http://127.0.0.1:9", "api_key": "k"})
    [c] = doctor_checks(s)
    assert (c.name, c.result) == ("syncthing folder", "warn") and ".stfolder" in c.detail


def test_healthy_folder_passes_every_check(st_pair: SyncthingMesh):
    a = st_pair["a"]
    recommend_ignores(a.folder)
    got = checks(settings(a))
    assert {k: v[0] for k, v in got.items()} == {"syncthing folder": "pass", "syncthing state": "pass",
                                                   "syncthing watcher": "pass", "syncthing ignores": "pass"}, got
    state = got["syncthing state"][1]
    assert f'folder "{st_pair.folder_id}"' in state and "1 of 1 other device(s) connected" in state
    assert "last scan" in state and "ago" in state
    assert "after 1s" in got["syncthing watcher"][1]


def test_key_and_address_are_read_from_syncthings_config_xml(st_pair: SyncthingMesh, tmp_path: Path, monkeypatch):
    a = st_pair["a"]
    recommend_ignores(a.folder)
    # Nothing configured, config.xml nowhere: not checked, said so; the watcher cannot be
    # told either; .stignore is read from the folder.
    got = checks(settings(a, api=False))
    assert got["syncthing state"][0] == "warn" and "no API address and key" in got["syncthing state"][1]
    assert "syncthing watcher" not in got and got["syncthing ignores"][0] == "pass"
    # config.xml where Syncthing keeps it ($XDG_STATE_HOME/syncthing/): found, used.
    state = tmp_path / "state"
    (state / "syncthing").mkdir(parents=True)
    shutil.copy(a.config_xml, state / "syncthing" / "config.xml")
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    got = checks(settings(a, api=False))
    assert got["syncthing state"][0] == "pass", got
    # Or named by syncthing.config_xml; a wrong key in the settings wins and is refused.
    monkeypatch.delenv("XDG_STATE_HOME")
    got = checks(settings(a, api=False, config_xml=str(a.config_xml)))
    assert got["syncthing state"][0] == "pass", got
    got = checks(settings(a, api=False, config_xml=str(a.config_xml), api_key="not-the-key"))
    assert got["syncthing state"][0] == "warn" and "refused the API key" in got["syncthing state"][1], got
    # Without an API the watcher is read from config.xml when the folder is there.
    a.set_folder(fsWatcherEnabled=False)
    wait_for(lambda: 'fsWatcherEnabled="false"' in a.config_xml.read_text(), 30, what="config.xml saved")
    got = checks(settings(a, api=False, config_xml=str(a.config_xml), api_url="http://127.0.0.1:9"))
    assert got["syncthing state"][0] == "warn" and "cannot reach" in got["syncthing state"][1], got
    assert got["syncthing watcher"][0] == "warn"


def test_paused_folder_fails(st_pair: SyncthingMesh):
    a = st_pair["a"]
    a.set_folder(paused=True)
    wait_for(lambda: a.db_status()["state"] == "", 30, what="folder paused")
    res, detail, hint = checks(settings(a))["syncthing state"]
    assert res == "fail" and "is paused" in detail and "resume" in hint.lower()


def test_watcher_off_warns(st_pair: SyncthingMesh):
    a = st_pair["a"]
    a.set_folder(fsWatcherEnabled=False)
    res, detail, _ = checks(settings(a))["syncthing watcher"]
    assert res == "warn" and "fsWatcherEnabled is off" in detail and "every 10s" in detail


def test_files_syncthing_cannot_pull_fail(st_pair: SyncthingMesh):
    """B has too little free space for its minDiskFree: A's files are out of sync on B and
    each is a pull error."""
    a, b = st_pair["a"], st_pair["b"]
    b.set_folder(minDiskFree={"value": 99.999, "unit": "%"})
    for i in range(3):
        (a.folder / f"f{i}.txt").write_text("x" * 100)
    a.scan()
    wait_for(lambda: b.db_status()["pullErrors"] >= 3, 60, what="pull errors on b")
    res, detail, _ = checks(settings(b))["syncthing state"]
    assert res == "fail" and "3 file(s) cannot be synced" in detail and "insufficient space" in detail, detail


def test_missing_folder_marker_fails(st_pair: SyncthingMesh):
    """The marker gone (a disk not mounted under the folder): Syncthing stops the folder;
    with the API configured doctor still finds it and says why."""
    a = st_pair["a"]
    shutil.rmtree(a.folder / ".stfolder")
    with pytest.raises(urllib.error.HTTPError):
        a.scan()  # Syncthing refuses: "folder marker missing"
    wait_for(lambda: a.db_status()["state"] == "error", 30, what="folder stopped")
    got = checks(settings(a))
    assert got["syncthing folder"][0] == "fail" and ".stfolder marker is missing" in got["syncthing folder"][1]
    res, detail, _ = got["syncthing state"]
    assert res == "fail" and "folder marker missing" in detail, detail
    # Without the API nothing says this folder is Syncthing's: no Syncthing lines at all.
    assert doctor_checks(settings(a, api=False)) == []


def test_a_node_apart_warns(st_pair: SyncthingMesh):
    """Apart by the peer's Syncthing stopped, then by this node's devices paused."""
    a, b = st_pair["a"], st_pair["b"]
    b.stop()
    wait_for(lambda: not a.connected(b), 30, what="a sees b gone")
    res, detail, _ = checks(settings(a))["syncthing state"]
    assert res == "warn" and "0 of 1 other device(s) connected" in detail and "apart" in detail
    b.start()
    st_pair.wait_connected()
    assert checks(settings(a))["syncthing state"][0] == "pass"
    a.pause_peers()
    wait_for(lambda: not a.connected(b), 30, what="a's peers paused")
    res, detail, _ = checks(settings(a))["syncthing state"]
    assert res == "warn" and "0 of 1 other device(s) connected" in detail
    a.resume_peers()
    st_pair.wait_connected()
    assert checks(settings(a))["syncthing state"][0] == "pass"


def test_an_unknown_folder_fails(st_pair: SyncthingMesh, tmp_path: Path):
    a = st_pair["a"]
    other = tmp_path / "elsewhere"
    (other / ".stfolder").mkdir(parents=True)
    s = settings(a)
    s.share = other
    res, detail, _ = checks(s)["syncthing state"]
    assert res == "fail" and "syncs no folder at" in detail


def test_ignore_patterns_checked_through_the_api_and_the_file(st_pair: SyncthingMesh, tmp_path: Path):
    a = st_pair["a"]
    # No .stignore: meshsync's temporaries may travel.
    res, detail, hint = checks(settings(a))["syncthing ignores"]
    assert res == "warn" and TMP_PREFIX in detail and IGNORE_TMP in hint
    # A pattern that hides the marker (and so every tombstone and journal) fails.
    a.request("POST", f"/rest/db/ignores?folder={st_pair.folder_id}", {"ignore": [".*"]})
    res, detail, _ = checks(settings(a))["syncthing ignores"]
    assert res == "fail" and ".meshsync/README" in detail and ".*" in detail, detail
    # An #include of a missing file: Syncthing's error (API) or meshsync's (file) is shown.
    a.request("POST", f"/rest/db/ignores?folder={st_pair.folder_id}", {"ignore": ["#include more-ignores"]})
    res, detail, _ = checks(settings(a))["syncthing ignores"]
    assert res == "warn" and "Syncthing says" in detail and "more-ignores" in detail, detail
    res, detail, _ = checks(settings(a, api=False))["syncthing ignores"]
    assert res == "warn" and "#include more-ignores is missing" in detail, detail
    # #include is expanded (by Syncthing through the API, by meshsync from the file).
    (a.folder / "more-ignores").write_text(f"{IGNORE_TMP}\n")
    a.request("POST", f"/rest/db/ignores?folder={st_pair.folder_id}", {"ignore": ["#include more-ignores"]})
    assert checks(settings(a))["syncthing ignores"][0] == "pass"
    assert checks(settings(a, api=False))["syncthing ignores"][0] == "pass"
    # The index and the cache inside the share must be excluded.
    s = settings(a)
    s.index, s.openclaw_home = a.folder / "node-local" / "index.sqlite", a.folder / "node-local" / "openclaw"
    res, detail, _ = checks(s)["syncthing ignores"]
    assert res == "fail" and "the index node-local/index.sqlite" in detail and "the cache" in detail, detail
    a.request("POST", f"/rest/db/ignores?folder={st_pair.folder_id}",
              {"ignore": ["#include more-ignores", "/node-local"]})
    assert checks(s)["syncthing ignores"][0] == "pass"


def test_a_real_conflict_copy_parses(st_pair: SyncthingMesh):
    """The name Syncthing itself gives a conflict copy (both sides changed one file while
    apart) parses, naming one of the two devices."""
    a, b = st_pair["a"], st_pair["b"]
    f = "memory/mesh/k.json"
    (a.folder / "memory" / "mesh").mkdir(parents=True)
    (a.folder / f).write_text('{"value": 0}')
    wait_file(b.folder / f, b'{"value": 0}')
    st_pair.wait_in_sync()
    b.stop()
    (a.folder / f).write_text('{"value": "a"}')
    a.scan()
    (b.folder / f).write_text('{"value": "b, later"}')
    b.start()
    st_pair.wait_connected()
    copies = wait_for(lambda: list((a.folder / "memory" / "mesh").glob("k.sync-conflict-*"))
                      or list((b.folder / "memory" / "mesh").glob("k.sync-conflict-*")), 60, what="a conflict copy")
    rel, info = conflict_original(f"memory/mesh/{copies[0].name}")
    assert rel == f and info.device in (a.device_id[:7], b.device_id[:7])
    assert abs((datetime.now() - info.when).total_seconds()) < 600
