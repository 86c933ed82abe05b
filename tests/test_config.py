"""Configuration: the docs and the example match the settings model, and loading behaves
(YAML via -c and $MESHSYNC_CONFIG, environment over YAML, `__` nesting, clear errors)."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from meshsync import config
from meshsync.config import Settings

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config.example.yaml"
DOC = REPO / "docs" / "configuration.md"


def leaves(model: type[BaseModel], prefix: str = "") -> dict[str, FieldInfo]:
    """Every setting of the model, by dotted name (sections are walked, not listed)."""
    out: dict[str, FieldInfo] = {}
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.update(leaves(ann, f"{prefix}{name}."))
        else:
            out[prefix + name] = field
    return out


SETTINGS = leaves(Settings)


def env_name(dotted: str) -> str:
    return "MESHSYNC_" + dotted.replace(".", "__").upper()


def get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A clean environment for in-process loading: no MESHSYNC_*, HOME in tmp_path."""
    for k in list(os.environ):
        if k.startswith("MESHSYNC_"):
            monkeypatch.delenv(k)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return monkeypatch


def cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real CLI (python3 -m meshsync) with a clean environment."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("MESHSYNC_")}
    e.pop("XDG_DATA_HOME", None)
    e["HOME"] = str(tmp_path / "home")
    e["PYTHONPATH"] = str(REPO) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "meshsync", *args], env=e, cwd=cwd or tmp_path,
                          text=True, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)


def write_yaml(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# --- the docs and the example match the model ---------------------------------------------------


def doc_table() -> list[list[str]]:
    text = DOC.read_text(encoding="utf-8")
    start = text.index("<!-- settings-table")
    rows = []
    for line in text[start:].splitlines()[1:]:
        if line.startswith("|"):
            rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
        elif rows:
            break
    assert len(rows) > 2, "docs/configuration.md has no settings table after <!-- settings-table"
    assert rows[1][0].startswith("---")
    return rows[2:]


def test_configuration_doc_lists_exactly_the_settings():
    rows = doc_table()
    names = [r[0].strip("`") for r in rows]
    assert len(names) == len(set(names)), "a setting is listed twice"
    assert set(names) == set(SETTINGS), (
        f"docs/configuration.md and meshsync.config.Settings differ: "
        f"missing from the doc {sorted(set(SETTINGS) - set(names))}, "
        f"not in the model {sorted(set(names) - set(SETTINGS))}")
    for name, env_col, _type, default, desc in rows:
        name = name.strip("`")
        assert env_col == f"`{env_name(name)}`", f"{name}: environment variable column {env_col}"
        field = SETTINGS[name]
        assert field.description, f"{name} has no description in config.py"
        assert html.unescape(desc.replace("\\|", "|")) == field.description, (
            f"{name}: the doc's description differs from config.py's Field description")
        if field.default_factory is None:  # literal defaults must match the model
            d = field.default
            want = "null" if d is None else str(d).lower() if isinstance(d, bool) else (
                d if isinstance(d, str) else json.dumps(d))
            assert default == f"`{want}`", f"{name}: documented default {default}, model default {want}"


def test_example_names_every_environment_variable():
    text = EXAMPLE.read_text(encoding="utf-8")
    for name in SETTINGS:
        assert env_name(name) in text, f"config.example.yaml does not name {env_name(name)} for {name}"


def test_example_loads_and_sets_every_setting_to_its_default(env):
    """Every setting but node_id is written out with its default; node_id (default: the
    host name) is only shown commented out, so two nodes copied from the example never
    share an id."""
    import socket

    text = EXAMPLE.read_text(encoding="utf-8")
    data = yaml.safe_load(text)

    def yaml_leaves(d: dict, prefix: str = "") -> set[str]:
        out: set[str] = set()
        for k, v in d.items():
            out |= yaml_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k}
        return out

    assert yaml_leaves(data) == set(SETTINGS) - {"node_id"}, (
        "config.example.yaml must set every setting but node_id, and only those")
    assert re.search(r"^# node_id: \S+$", text, re.M), "the example shows node_id commented out"
    loaded = config.load(EXAMPLE)
    defaults = Settings()
    for name in SETTINGS:
        assert get(loaded, name) == get(defaults, name), f"config.example.yaml: {name} is not the default"
    assert loaded.node_id == socket.gethostname()


def test_example_loads_through_the_cli(tmp_path):
    import socket

    r = cli(tmp_path, "-c", str(EXAMPLE), "status", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["node_id"] == socket.gethostname()
    assert d["share"]["path"] == str(tmp_path / "home/.local/share/meshsync/share")


# --- loading behaviour ------------------------------------------------------------------------


def test_defaults_without_any_configuration(env, tmp_path):
    import socket

    s = config.load()
    home = tmp_path / "home"
    assert s.node_id == socket.gethostname()
    assert s.share == home / ".local/share/meshsync/share"
    assert s.index == home / ".local/share/meshsync/index.sqlite"
    assert s.openclaw_home == home / ".openclaw"
    assert s.watch.mode == "auto" and s.watch.poll_interval == 2.0
    assert s.scopes.read == ["mesh", "node", "user:*"]
    assert s.tombstone_retention_days == 30 and s.log_level == "info"


def test_xdg_data_home_moves_the_default_share_and_index(env, tmp_path):
    env.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    s = config.load()
    assert s.share == tmp_path / "xdg/meshsync/share"
    assert s.index == tmp_path / "xdg/meshsync/index.sqlite"


def test_yaml_file_via_dash_c(tmp_path):
    p = write_yaml(tmp_path, f"node_id: from-yaml\nshare: {tmp_path}/s\nindex: {tmp_path}/i.sqlite\n")
    r = cli(tmp_path, "-c", str(p), "status", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["node_id"] == "from-yaml"
    assert d["share"]["path"] == f"{tmp_path}/s" and d["index"] == f"{tmp_path}/i.sqlite"
    r = cli(tmp_path, "--config", str(p), "status", "--json")
    assert json.loads(r.stdout)["node_id"] == "from-yaml"


def test_yaml_file_via_meshsync_config(tmp_path):
    p = write_yaml(tmp_path, "node_id: via-env-file\n")
    r = cli(tmp_path, "status", "--json", env={"MESHSYNC_CONFIG": str(p)})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["node_id"] == "via-env-file"


def test_dash_c_wins_over_meshsync_config(tmp_path):
    a = write_yaml(tmp_path, "node_id: from-dash-c\n", "a.yaml")
    b = write_yaml(tmp_path, "node_id: from-env-file\n", "b.yaml")
    r = cli(tmp_path, "-c", str(a), "status", "--json", env={"MESHSYNC_CONFIG": str(b)})
    assert json.loads(r.stdout)["node_id"] == "from-dash-c"


def test_environment_overrides_yaml(tmp_path):
    p = write_yaml(tmp_path, f"node_id: from-yaml\nshare: {tmp_path}/yaml-share\n")
    r = cli(tmp_path, "-c", str(p), "status", "--json",
            env={"MESHSYNC_NODE_ID": "from-env", "MESHSYNC_SHARE": f"{tmp_path}/env-share"})
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["node_id"] == "from-env" and d["share"]["path"] == f"{tmp_path}/env-share"


def test_double_underscore_nests_and_merges_with_yaml(env, tmp_path):
    p = write_yaml(tmp_path, "watch:\n  mode: poll\n  poll_interval: 3\nlimits:\n  max_json_depth: 10\n")
    env.setenv("MESHSYNC_WATCH__POLL_INTERVAL", "5")
    env.setenv("MESHSYNC_LIMITS__MAX_FILE_BYTES", "2048")
    env.setenv("MESHSYNC_SHARE_FILES__FSYNC", "false")
    s = config.load(p)
    assert s.watch.poll_interval == 5.0  # env wins
    assert s.watch.mode == "poll"  # the rest of the YAML section stays
    assert s.limits.max_file_bytes == 2048 and s.limits.max_json_depth == 10
    assert s.share_files.fsync is False


def test_json_list_in_environment(env):
    env.setenv("MESHSYNC_SCOPES__READ", '["mesh", "user:alice"]')
    s = config.load()
    assert s.scopes.read == ["mesh", "user:alice"]
    assert s.scopes.write == ["mesh", "node", "user:*"]
    assert s.may_read("user:alice") and not s.may_read("user:bob") and not s.may_read("node")
    assert s.may_write("user:bob")


def test_whole_section_as_json_in_environment(env, tmp_path):
    env.setenv("MESHSYNC_WATCH", '{"mode": "poll", "poll_interval": 5}')
    s = config.load(write_yaml(tmp_path, "watch:\n  debounce: 1\n"))
    assert (s.watch.mode, s.watch.poll_interval, s.watch.debounce) == ("poll", 5.0, 1.0)


@pytest.mark.parametrize("text,value", [("true", True), ("false", False), ("1", True), ("0", False),
                                        ("yes", True), ("no", False)])
def test_booleans_in_environment(env, text, value):
    env.setenv("MESHSYNC_SHARE_FILES__FSYNC", text)
    assert config.load().share_files.fsync is value


def test_paths_expand_tilde(env, tmp_path):
    p = write_yaml(tmp_path, "share: ~/nas\nopenclaw_home: ~/oc\n")
    s = config.load(p)
    assert s.share == tmp_path / "home/nas" and s.openclaw_home == tmp_path / "home/oc"


def test_log_level_is_case_insensitive_and_cli_flag_wins(env, tmp_path):
    env.setenv("MESHSYNC_LOG_LEVEL", "DEBUG")
    assert config.load().log_level == "debug"
    assert config.load(log_level="error").log_level == "error"


def test_file_mode_accepts_a_quoted_octal_string(env, tmp_path):
    s = config.load(write_yaml(tmp_path, 'share_files:\n  file_mode: "0640"\n  group: "0"\n'))
    assert s.share_files.file_mode == "0640" and s.share_files.group == "0"


# --- invalid configuration: exit 2, one line per problem, no traceback, nothing changed ------------


BAD_YAML = [
    ("watch:\n  mode: bogus\n", "watch.mode", "MESHSYNC_WATCH__MODE"),
    ("watch:\n  poll_interval: -1\n", "watch.poll_interval", "MESHSYNC_WATCH__POLL_INTERVAL"),
    ("watchh:\n  mode: poll\n", "watchh", None),
    ("scopes:\n  read: ['foo']\n", "scopes.read", "MESHSYNC_SCOPES__READ"),
    ("limits:\n  max_file_bytes: 10\n", "limits.max_file_bytes", "MESHSYNC_LIMITS__MAX_FILE_BYTES"),
    ('share_files:\n  file_mode: "999"\n', "share_files.file_mode", "MESHSYNC_SHARE_FILES__FILE_MODE"),
    ("log_level: loud\n", "log_level", "MESHSYNC_LOG_LEVEL"),
    ("tombstone_retention_days: 0\n", "tombstone_retention_days", "MESHSYNC_TOMBSTONE_RETENTION_DAYS"),
]

# Accepted before issue 20, each now refused with what to do: (YAML, setting, words the line must hold).
REFUSED = [
    ("share_files:\n  file_mode: 444\n", "share_files.file_mode", ["mode 0674", 'file_mode: "0640"']),
    ("share_files:\n  file_mode: 0640\n", "share_files.file_mode", ["quote", 'file_mode: "0640"']),
    ("secrets:\n  allow_rules: [jwtt]\n", "secrets.allow_rules", ["'jwtt'", "jwt,", "docs/configuration.md"]),
    ("scopes:\n  read: ['user:']\n", "scopes.read", ["names no user", "user:<id>", "user:*"]),
    ("scopes:\n  write: [mesh, 'user:']\n", "scopes.write", ["names no user"]),
    ("tombstone_retention_days: 0.0001\n", "tombstone_retention_days", ["brings deleted items back", "at least 1 day"]),
    ("share: {tmp}/share\nindex: {tmp}/share/.meshsync/index.sqlite\n", "index", ["inside the share", "local disk"]),
    ("share: {tmp}/share\nindex: {tmp}/share/../share/i.sqlite\n", "index", ["inside the share"]),
]


def problem_lines(stderr: str) -> list[str]:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert lines and lines[0].startswith("meshsync: "), stderr
    return lines


@pytest.mark.parametrize("text,setting,env_var", BAD_YAML, ids=[b[1] for b in BAD_YAML])
def test_invalid_yaml_value_exits_2_naming_the_setting(tmp_path, text, setting, env_var):
    p = write_yaml(tmp_path, text)
    r = cli(tmp_path, "-c", str(p), "status")
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stdout == ""
    lines = problem_lines(r.stderr)
    assert str(p) in lines[0]
    assert len(lines) == 2, f"one problem, one line:\n{r.stderr}"
    assert lines[1].strip().startswith(f"{setting}:"), lines[1]
    if env_var:
        assert env_var in lines[1]
    if setting == "watchh":
        assert "unknown setting" in lines[1]


@pytest.mark.parametrize("text,setting,words", REFUSED, ids=[f"{r[1]}-{i}" for i, r in enumerate(REFUSED)])
def test_values_that_would_misbehave_are_refused(tmp_path, text, setting, words):
    p = write_yaml(tmp_path, text.format(tmp=tmp_path))
    r = cli(tmp_path, "-c", str(p), "status")
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stdout == "", r.stderr
    lines = problem_lines(r.stderr)
    assert len(lines) == 2 and str(p) in lines[0], r.stderr
    assert lines[1].strip().startswith(f"{setting}: "), lines[1]
    assert "Value error" not in lines[1], "our own words, not pydantic's prefix"
    for w in words:
        assert w in lines[1], f"{w!r} missing from: {lines[1]}"


def test_the_index_inside_the_share_is_refused_from_the_environment(tmp_path):
    r = cli(tmp_path, "status", env={"MESHSYNC_SHARE": f"{tmp_path}/s", "MESHSYNC_INDEX": f"{tmp_path}/s/i.sqlite"})
    assert r.returncode == 2, r.stderr
    assert "index: the index is inside the share" in r.stderr and "$MESHSYNC_INDEX" in r.stderr


def test_a_neighbour_of_the_share_is_not_inside_it(env, tmp_path):
    s = config.load(write_yaml(tmp_path, f"share: {tmp_path}/share\nindex: {tmp_path}/share-index/i.sqlite\n"))
    assert s.index == tmp_path / "share-index/i.sqlite"


@pytest.mark.parametrize("var,loc", [("MESHSYNC_WATCH__POLLINTERVAL", "watch.pollinterval"),
                                     ("MESHSYNC_SHAREE", "sharee"),
                                     ("MESHSYNC_SECRETS__ALLOWRULES", "secrets.allowrules")])
def test_an_unknown_environment_variable_is_named_and_the_file_is_not_blamed(tmp_path, var, loc):
    p = write_yaml(tmp_path, "watch:\n  mode: poll\n")
    r = cli(tmp_path, "-c", str(p), "status", env={var: "5"})
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = problem_lines(r.stderr)
    assert str(p) not in lines[0], f"the YAML file is blamed for an environment variable: {lines[0]}"
    assert "environment" in lines[0]
    assert len(lines) == 2, r.stderr
    assert lines[1].strip().startswith(f"${var}: unknown environment variable"), lines[1]
    assert repr(loc) in lines[1]


def test_the_display_option_variable_is_not_an_unknown_setting(tmp_path):
    """MESHSYNC_PROGRESS_INTERVAL is read by the progress display (docs/configuration.md,
    "Display options"), so the unknown-variable check must let it through."""
    p = write_yaml(tmp_path, "watch:\n  mode: poll\n")
    r = cli(tmp_path, "-c", str(p), "status", env={"MESHSYNC_PROGRESS_INTERVAL": "0"})
    assert "unknown environment variable" not in r.stderr, r.stderr
    assert r.returncode != 2, r.stderr


def test_an_environment_value_error_names_its_variable_not_the_file(tmp_path):
    p = write_yaml(tmp_path, "watch:\n  mode: poll\n")
    r = cli(tmp_path, "-c", str(p), "status", env={"MESHSYNC_WATCH__POLL_INTERVAL": "-3"})
    assert r.returncode == 2, r.stderr
    lines = problem_lines(r.stderr)
    assert str(p) not in lines[0] and "environment" in lines[0], lines[0]
    assert lines[1].strip().startswith("watch.poll_interval:") and "by $MESHSYNC_WATCH__POLL_INTERVAL" in lines[1]


def test_settings_work_without_load(env, tmp_path):
    """Settings() on its own reads $MESHSYNC_CONFIG and the environment, as the command
    line without -c does (no state kept between loads: a later load sees a new file)."""
    assert Settings().log_level == "info"
    p = write_yaml(tmp_path, "node_id: plain\nlog_level: warning\n")
    env.setenv("MESHSYNC_CONFIG", str(p))
    s = Settings()
    assert (s.node_id, s.log_level) == ("plain", "warning")
    env.setenv("MESHSYNC_NODE_ID", "from-env")
    assert Settings().node_id == "from-env"
    other = write_yaml(tmp_path, "log_level: error\n", "other.yaml")
    assert config.load(other).log_level == "error" and Settings().log_level == "warning"
    assert isinstance(config.load(other), Settings)
    assert config.load(p).log_level == "warning"


def test_several_problems_give_one_line_each(tmp_path):
    p = write_yaml(tmp_path, "watch:\n  mode: bogus\n  poll_interval: -1\nwatchh: 1\nscopes:\n  read: [foo]\n")
    r = cli(tmp_path, "-c", str(p), "status")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = problem_lines(r.stderr)[1:]
    named = sorted(ln.strip().split(":")[0] for ln in lines)
    assert named == ["scopes.read", "watch.mode", "watch.poll_interval", "watchh"], r.stderr


def test_unparsable_yaml_exits_2_with_one_line(tmp_path):
    p = write_yaml(tmp_path, "node_id: [unclosed\nshare: /x\n")
    r = cli(tmp_path, "-c", str(p), "status")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    lines = problem_lines(r.stderr)
    assert str(p) in lines[0] and "not valid YAML" in lines[0]
    assert re.search(r"line \d+", lines[0]), f"the message should say where: {lines[0]}"
    assert len(lines) == 1, f"an unparsable file is one problem and should take one line:\n{r.stderr}"


@pytest.mark.parametrize("text", ["- a\n- list\n", "just a string\n"])
def test_yaml_that_is_not_a_mapping_exits_2(tmp_path, text):
    r = cli(tmp_path, "-c", str(write_yaml(tmp_path, text)), "status")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "mapping" in r.stderr


def test_empty_yaml_file_means_defaults(tmp_path):
    r = cli(tmp_path, "-c", str(write_yaml(tmp_path, "")), "status", "--json")
    assert r.returncode == 0, r.stderr


def test_missing_config_file_exits_2(tmp_path):
    r = cli(tmp_path, "-c", str(tmp_path / "nope.yaml"), "status")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert str(tmp_path / "nope.yaml") in r.stderr
    r = cli(tmp_path, "status", env={"MESHSYNC_CONFIG": str(tmp_path / "nope.yaml")})
    assert r.returncode == 2 and str(tmp_path / "nope.yaml") in r.stderr


@pytest.mark.parametrize("var,value,setting", [
    ("MESHSYNC_WATCH__POLL_INTERVAL", "abc", "watch.poll_interval"),
    ("MESHSYNC_WATCH__MODE", "bogus", "watch.mode"),
    ("MESHSYNC_SCOPES__READ", '["foo"]', "scopes.read"),
    ("MESHSYNC_SCOPES__READ", "mesh", "scopes.read"),  # not a JSON list
    ("MESHSYNC_NODE_ID", "bad\tname", "node_id"),
])
def test_invalid_environment_value_exits_2_naming_the_setting(tmp_path, var, value, setting):
    r = cli(tmp_path, "status", env={var: value})
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, f"{var}={value!r} gave a traceback:\n{r.stderr}"
    lines = problem_lines(r.stderr)
    assert any(setting in ln and var in ln for ln in lines), r.stderr


def test_invalid_configuration_changes_nothing(tmp_path):
    p = write_yaml(tmp_path, f"share: {tmp_path}/share\nindex: {tmp_path}/index.sqlite\nwatch:\n  mode: bogus\n")
    r = cli(tmp_path, "-c", str(p), "init")
    assert r.returncode == 2, r.stderr
    assert not (tmp_path / "share").exists() and not (tmp_path / "index.sqlite").exists()


def test_unknown_share_group_is_a_clear_error(tmp_path):
    p = write_yaml(tmp_path, f"share: {tmp_path}/share\nindex: {tmp_path}/index.sqlite\n"
                             f"openclaw_home: {tmp_path}/oc\n")
    assert cli(tmp_path, "-c", str(p), "init").returncode == 0
    r = cli(tmp_path, "-c", str(p), "sync", env={"MESHSYNC_SHARE_FILES__GROUP": "no-such-group-xyz"})
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert "share_files.group" in r.stderr and "no-such-group-xyz" in r.stderr
