"""Configuration: a YAML file plus ``MESHSYNC_*`` environment variables (``__`` nests).

Precedence, highest first: environment, YAML file, defaults.  Unknown names are errors,
in the YAML file and among ``MESHSYNC_*`` variables alike (a typo must not silently fall
back to a default).  Problems are raised as :class:`ConfigError` with one line per
setting, naming where the bad value came from, never a traceback.

The YAML file is read by pydantic-settings' own ``YamlConfigSettingsSource``; its path is
``$MESHSYNC_CONFIG`` or the one given to :func:`load`, so ``Settings()`` on its own behaves
like the command line without ``-c``.
"""

from __future__ import annotations

import json
import os
import socket
from fnmatch import fnmatchcase
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    SettingsConfigDict,
    SettingsError,
    YamlConfigSettingsSource,
)

from meshsync import secretguard

ENV_CONFIG = "MESHSYNC_CONFIG"
# Variables meshsync reads that are not settings: the file to read, and how often a
# progress line is redrawn (logs.ENV_PROGRESS_INTERVAL; a display option, not a setting).
ENV_NOT_SETTINGS = frozenset({ENV_CONFIG, "MESHSYNC_PROGRESS_INTERVAL"})
ENV_PREFIX = "MESHSYNC_"
MIN_TOMBSTONE_DAYS = 1


class ConfigError(Exception):
    """Invalid configuration; the message names each setting and its problem."""


def _data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "meshsync"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WatchSettings(_Section):
    mode: Literal["auto", "events", "poll"] = Field(
        "auto", description="How share changes are detected: auto (by filesystem type), events (inotify/FSEvents) or poll.")
    poll_interval: float = Field(2.0, gt=0, le=3600, description="Seconds between checks of the other nodes' journals (poll mode).")
    rescan_interval: float = Field(300.0, ge=0, description="Seconds between full rescans of the share; 0 disables them.")
    debounce: float = Field(0.1, ge=0, le=10, description="Seconds to wait for a burst of changes to end before applying it.")


class ScopeSettings(_Section):
    read: list[str] = Field(["mesh", "node", "user:*"], description="Scopes this node imports: mesh, node, user:<id>, user:*.")
    write: list[str] = Field(["mesh", "node", "user:*"], description="Scopes this node exports.")

    @field_validator("read", "write")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        for p in v:
            if p not in ("mesh", "node", "*") and not p.startswith("user:"):
                raise ValueError(f"{p!r} is not a scope pattern (use mesh, node, user:<id> or user:*)")
            if p == "user:":
                raise ValueError("'user:' names no user: write user:<id> for one user or user:* for all")
        return v


class LimitSettings(_Section):
    max_file_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="Largest share file meshsync reads; larger files are refused.")
    max_skill_bytes: int = Field(1024 * 1024, ge=1024, description="Largest SKILL.md meshsync imports.")
    max_json_depth: int = Field(64, ge=2, le=10_000, description="Deepest JSON nesting accepted in a memory value.")


class ShareSettings(_Section):
    file_mode: str | None = Field(None, description="Octal mode for files meshsync writes on the share, e.g. \"0640\".")
    group: str | None = Field(None, description="Group (name or id) for files meshsync writes on the share.")
    fsync: bool = Field(True, description="Flush each share file to disk before renaming it into place.")

    @field_validator("group")
    @classmethod
    def _group(cls, v: str | None) -> str | None:
        if v is not None and not v.isdigit():
            import grp

            try:
                grp.getgrnam(v)
            except KeyError:
                raise ValueError(f"there is no group {v!r} on this machine (create it or give a numeric gid)") from None
        return v

    @field_validator("file_mode", mode="before")
    @classmethod
    def _mode(cls, v: Any) -> str | None:
        if isinstance(v, int | float) and not isinstance(v, bool):
            # YAML reads an unquoted 0640 as the octal number 416 and an unquoted 444 as the
            # decimal 444 (mode 0674): after parsing the two cannot be told apart, so no
            # number is taken for a mode.
            raise ValueError(f"an unquoted number is not taken for a mode (YAML read {v}, i.e. {_as_mode(v)}); "
                             f"quote the octal mode, e.g. file_mode: \"0640\"")
        if v is not None:
            try:
                m = int(str(v), 8)
            except ValueError:
                raise ValueError(f"{v!r} is not an octal file mode such as 0640") from None
            if not 0 <= m <= 0o777:
                raise ValueError(f"{v!r} is out of range")
        return v


def _as_mode(v: int | float) -> str:
    return f"mode 0{int(v):o}" if float(v).is_integer() and 0 <= v <= 0o7777 else "no mode at all"


class CacheSettings(_Section):
    writable: bool = Field(True, description="Import what Phase 1 tools write into mesh-memory.json and mesh/skills/ as local writes.")
    skill_dirs: list[Path] = Field([], description="Folders to mirror every shared skill directory into (e.g. one in OpenClaw's skills.load.extraDirs).")

    @field_validator("skill_dirs")
    @classmethod
    def _expand_dirs(cls, v: list[Path]) -> list[Path]:
        return [Path(os.path.expanduser(str(p))).absolute() for p in v]


class SecretSettings(_Section):
    guard: bool = Field(True, description="Refuse to export values and skill files that look like credentials.")
    allow_items: list[str] = Field([], description="Items exported even if they look like secrets: \"scope:key\" or \"skill:name\".")
    allow_rules: list[str] = Field([], description="Secret-guard rule names that never block an export (e.g. jwt).")

    @field_validator("allow_rules")
    @classmethod
    def _rules(cls, v: list[str]) -> list[str]:
        unknown = [r for r in v if r not in secretguard.RULE_NAMES]
        if unknown:
            raise ValueError(f"no secret-guard rule is called {', '.join(map(repr, unknown))}; the rules are "
                             f"{', '.join(secretguard.RULE_NAMES)} (docs/configuration.md)")
        return v


class SyncthingSettings(_Section):
    """Where `meshsync doctor` asks Syncthing about the share's folder (meshsync/cli/doctor_syncthing.py).
    Unset, the address and key are read from Syncthing's config.xml when it is readable."""

    api_url: str | None = Field(None, description="Syncthing's GUI/REST address, e.g. http://127.0.0.1:8384 (default: from config.xml).")
    api_key: SecretStr | None = Field(None, description="Syncthing's API key (its GUI: Actions, Settings, API Key) (default: from config.xml).")
    config_xml: Path | None = Field(None, description="Syncthing's config.xml, read for the address and key (default: Syncthing's usual places).")

    @field_validator("config_xml")
    @classmethod
    def _expand_xml(cls, v: Path | None) -> Path | None:
        return None if v is None else Path(os.path.expanduser(str(v))).absolute()


class SafetySettings(_Section):
    max_delete_percent: float = Field(50, ge=0, le=100, description="A pass that would delete more than this percentage of the items (of all, or of one folder's) because their files are gone from the share is held until confirmed; 100 never holds.")
    max_delete_count: int = Field(10, ge=0, description="A pass is held only when it would also delete more than this many items; smaller deletes always go through.")


class _YamlFile(YamlConfigSettingsSource):
    """pydantic-settings' YAML source; a file that cannot be read, does not parse or holds
    no mapping is a :class:`ConfigError` naming the file (the library would skip a missing
    file and pass a list on)."""

    def __init__(self, settings_cls: type[BaseSettings], yaml_file: Path | None):
        if yaml_file is not None and not yaml_file.is_file():
            raise ConfigError(f"configuration file {yaml_file}: "
                              f"{'is not a file' if yaml_file.exists() else 'No such file or directory'}")
        super().__init__(settings_cls, yaml_file=yaml_file, yaml_file_encoding="utf-8")

    def _read_file(self, file_path: Path) -> dict[str, Any]:
        try:
            text = file_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"configuration file {file_path}: {getattr(exc, 'strerror', None) or exc}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"configuration file {file_path} is not valid YAML{where}: {what}") from None
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"configuration file {file_path} must hold a mapping of settings")
        return data or {}


def _yaml_path(configured: Any) -> Path | None:
    src = configured or os.environ.get(ENV_CONFIG)
    return Path(src).expanduser() if src else None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MESHSYNC_", env_nested_delimiter="__", extra="forbid",
                                      yaml_file=None)

    node_id: str = Field(default_factory=socket.gethostname, description="This node's name in the mesh (default: host name).")
    share: Path = Field(default_factory=lambda: _data_home() / "share", description="The shared folder (usually a NAS mount).")
    index: Path = Field(default_factory=lambda: _data_home() / "index.sqlite", description="This node's SQLite index, on local disk.")
    index_busy_timeout: float = Field(30.0, gt=0, le=3600, description="Seconds a write to the index waits for another program's write lock; then the daemon retries later.")
    openclaw_home: Path = Field(default_factory=lambda: Path.home() / ".openclaw", description="OpenClaw's home, where the cache lives.")
    watch: WatchSettings = Field(default_factory=WatchSettings)
    scopes: ScopeSettings = Field(default_factory=ScopeSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    share_files: ShareSettings = Field(default_factory=ShareSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    secrets: SecretSettings = Field(default_factory=SecretSettings)
    syncthing: SyncthingSettings = Field(default_factory=SyncthingSettings)
    safety: SafetySettings = Field(default_factory=SafetySettings)
    tombstone_retention_days: float = Field(30, gt=0, description="Days a delete is remembered so offline nodes do not bring items back.")
    conflict_retention_days: float = Field(90, gt=0, description="Days beaten versions and deleted values are kept in the share's history (at least tombstone_retention_days).")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level: debug, info, warning or error.")

    @field_validator("node_id")
    @classmethod
    def _node_id(cls, v: str) -> str:
        if not v or any(ord(c) < 32 for c in v):
            raise ValueError("must be a non-empty name without control characters")
        return v

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @field_validator("share", "index", "openclaw_home")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return Path(os.path.expanduser(str(v))).absolute()

    @field_validator("index")
    @classmethod
    def _index_off_the_share(cls, v: Path, info: ValidationInfo) -> Path:
        # Each node's index is its own (R3's row ids, the lock, WAL files): on the share,
        # nodes would open each other's index and the walk would meet SQLite's files.
        share = info.data.get("share")
        if share is not None and v.resolve().is_relative_to(share.resolve()):
            raise ValueError(f"the index is inside the share ({share}); every node keeps its own index on "
                             f"local disk, e.g. /var/lib/meshsync/index.sqlite")
        return v

    @field_validator("tombstone_retention_days")
    @classmethod
    def _retention(cls, v: float) -> float:
        # R4: a delete must be remembered longer than a node can be offline, or that node
        # brings the deleted item back when it returns.
        if v < MIN_TOMBSTONE_DAYS:
            raise ValueError(f"{v} days is too short: a node offline for longer brings deleted items back; "
                             f"give at least {MIN_TOMBSTONE_DAYS} day (default 30)")
        return v

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        yaml_file = _YamlFile(settings_cls, _yaml_path(settings_cls.model_config.get("yaml_file")))
        return (init_settings, env_settings, yaml_file)

    # --- scopes ---------------------------------------------------------------------------

    def may_read(self, scope: str) -> bool:
        return _match(scope, tuple(self.scopes.read))

    def may_write(self, scope: str) -> bool:
        return _match(scope, tuple(self.scopes.write))


@lru_cache(maxsize=4096)
def _match(scope: str, patterns: tuple[str, ...]) -> bool:
    # Cached: a pass asks for every item, and a mesh has few scopes.
    return any(p == "*" or fnmatchcase(scope, p) for p in patterns)


@lru_cache(maxsize=16)
def _with_file(path: Path) -> type[Settings]:
    """Settings reading ``path`` instead of $MESHSYNC_CONFIG: a subclass that only sets the
    YAML source's file (cached: one per path), so no state is kept between loads."""
    return type("Settings", (Settings,), {"model_config": {**Settings.model_config, "yaml_file": path},
                                          "__module__": __name__, "__qualname__": "Settings"})


def _env_names(model: type[BaseModel], prefix: str = ENV_PREFIX) -> dict[str, tuple[str, ...]]:
    """Every MESHSYNC_* variable meshsync reads (settings and whole sections): dotted loc."""
    out: dict[str, tuple[str, ...]] = {}
    for name, field in model.model_fields.items():
        var = prefix + name.upper()
        out[var] = tuple(var[len(ENV_PREFIX):].lower().split("__"))
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.update(_env_names(ann, var + "__"))
    return out


ENV_SETTINGS = _env_names(Settings)


def _env_problems() -> tuple[list[str], set[tuple[str, ...]]]:
    """Lines for MESHSYNC_* variables that name no setting or hold no JSON where a list or a
    section needs it, and the locations of the unknown ones (pydantic reports those
    nested in a section again, as unknown keys: they are dropped there)."""
    lines: list[str] = []
    unknown: set[tuple[str, ...]] = set()
    for var, val in sorted(os.environ.items()):
        up = var.upper()
        if not up.startswith(ENV_PREFIX) or up in ENV_NOT_SETTINGS:
            continue
        loc = ENV_SETTINGS.get(up)
        if loc is None:
            loc = tuple(up[len(ENV_PREFIX):].lower().split("__"))
            unknown.add(loc)
            lines.append(f"  ${var}: unknown environment variable, no setting {'.'.join(loc)!r} "
                         f"(check the spelling; the variables are in docs/configuration.md)")
        elif _is_complex(loc):
            try:
                json.loads(val)
            except ValueError:
                lines.append(f"  {'.'.join(loc)}: ${var} must be JSON here (given {val!r}), "
                             f"e.g. {var}='[\"mesh\", \"user:*\"]'")
    return lines, unknown


def _is_complex(loc: tuple[str, ...]) -> bool:
    """A list or a section: pydantic-settings decodes its variable as JSON."""
    model: type[BaseModel] = Settings
    for part in loc[:-1]:
        model = model.model_fields[part].annotation  # type: ignore[assignment]
    ann = model.model_fields[loc[-1]].annotation
    return (isinstance(ann, type) and issubclass(ann, BaseModel)) or getattr(ann, "__origin__", None) is list


def _env_var_for(loc: tuple[Any, ...]) -> str | None:
    """The set MESHSYNC_* variable a value at ``loc`` came from (itself or its section's), if any."""
    upper = {k.upper(): k for k in os.environ}
    for n in range(len(loc), 0, -1):
        var = ENV_PREFIX + "__".join(str(x) for x in loc[:n]).upper()
        if var in upper and var in ENV_SETTINGS:
            return upper[var]
    return None


def load(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Load settings from ``path`` (or $MESHSYNC_CONFIG) and the environment."""
    yaml_file = _yaml_path(path)
    cls = _with_file(yaml_file) if path is not None and yaml_file is not None else Settings
    env_lines, unknown = _env_problems()
    errors: list[dict[str, Any]] = []
    settings: Settings | None = None
    try:
        settings = cls(**overrides)
    except SettingsError as exc:
        # A value pydantic-settings could not decode that _env_problems did not foresee.
        env_lines = env_lines or [f"  {str(exc).splitlines()[0]}"]
    except ValidationError as exc:
        errors = [e for e in exc.errors()
                  if not (e["type"] == "extra_forbidden" and tuple(map(str, e["loc"])) in unknown)]
    if settings is not None and not env_lines:
        return settings
    lines, from_file = list(env_lines), False
    for err in errors:
        loc = tuple(err["loc"])
        name = ".".join(str(x) for x in loc) or "(top level)"
        msg = err["msg"]
        if err["type"] == "value_error":  # our validators' own words, without pydantic's "Value error, "
            msg = str(err.get("ctx", {}).get("error", msg))
        elif err["type"] == "extra_forbidden":
            msg = "unknown setting (check the spelling; see docs/configuration.md)"
        var = _env_var_for(loc)
        if var is not None:
            lines.append(f"  {name}: {msg} (given {err.get('input')!r} by ${var})")
        else:
            from_file = from_file or yaml_file is not None
            env = ENV_PREFIX + "__".join(str(x) for x in loc).upper()
            lines.append(f"  {name}: {msg} (given {err.get('input')!r}; file key {name!r} or ${env})")
    where = f" in {yaml_file}" if from_file else " in the environment" if env_lines or errors else ""
    raise ConfigError("invalid configuration" + where + ":\n" + "\n".join(lines))
