"""Configuration: a YAML file plus ``MESHSYNC_*`` environment variables (``__`` nests).

Precedence, highest first: environment, YAML file, defaults.  Unknown names in the YAML
file are errors (a typo must not silently fall back to a default).  Problems are raised
as :class:`ConfigError` with one line per setting, never a traceback.
"""

from __future__ import annotations

import os
import socket
from fnmatch import fnmatchcase
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

ENV_CONFIG = "MESHSYNC_CONFIG"


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
        if isinstance(v, int) and not isinstance(v, bool):
            # YAML 1.1 reads an unquoted 0640 as the octal number 416.
            if not 0 <= v <= 0o777:
                raise ValueError(f"{v} is not a file mode; quote it as a string such as \"0640\"")
            return f"0{v:o}"
        if v is not None:
            try:
                m = int(str(v), 8)
            except ValueError:
                raise ValueError(f"{v!r} is not an octal file mode such as 0640") from None
            if not 0 <= m <= 0o777:
                raise ValueError(f"{v!r} is out of range")
        return v


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


class SyncthingSettings(_Section):
    """Where `meshsync doctor` asks Syncthing about the share's folder (meshsync/syncthing.py).
    Unset, the address and key are read from Syncthing's config.xml when it is readable."""

    api_url: str | None = Field(None, description="Syncthing's GUI/REST address, e.g. http://127.0.0.1:8384 (default: from config.xml).")
    api_key: SecretStr | None = Field(None, description="Syncthing's API key (its GUI: Actions, Settings, API Key) (default: from config.xml).")
    config_xml: Path | None = Field(None, description="Syncthing's config.xml, read for the address and key (default: Syncthing's usual places).")

    @field_validator("config_xml")
    @classmethod
    def _expand_xml(cls, v: Path | None) -> Path | None:
        return None if v is None else Path(os.path.expanduser(str(v))).absolute()


class _YamlSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]):
        super().__init__(settings_cls)
        self.data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self.data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.data)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MESHSYNC_", env_nested_delimiter="__", extra="forbid")

    node_id: str = Field(default_factory=socket.gethostname, description="This node's name in the mesh (default: host name).")
    share: Path = Field(default_factory=lambda: _data_home() / "share", description="The shared folder (usually a NAS mount).")
    index: Path = Field(default_factory=lambda: _data_home() / "index.sqlite", description="This node's SQLite index, on local disk.")
    openclaw_home: Path = Field(default_factory=lambda: Path.home() / ".openclaw", description="OpenClaw's home, where the cache lives.")
    watch: WatchSettings = Field(default_factory=WatchSettings)
    scopes: ScopeSettings = Field(default_factory=ScopeSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    share_files: ShareSettings = Field(default_factory=ShareSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    secrets: SecretSettings = Field(default_factory=SecretSettings)
    syncthing: SyncthingSettings = Field(default_factory=SyncthingSettings)
    tombstone_retention_days: float = Field(30, gt=0, description="Days a delete is remembered so offline nodes do not bring items back.")
    conflict_retention_days: float = Field(90, gt=0, description="Days beaten versions are kept in the conflict history.")
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

    _yaml: dict[str, Any] = {}

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return (init_settings, env_settings, _YamlSource(settings_cls, cls._yaml))

    # --- scopes ---------------------------------------------------------------------------

    def may_read(self, scope: str) -> bool:
        return _match(scope, tuple(self.scopes.read))

    def may_write(self, scope: str) -> bool:
        return _match(scope, tuple(self.scopes.write))


@lru_cache(maxsize=4096)
def _match(scope: str, patterns: tuple[str, ...]) -> bool:
    # Cached: a pass asks for every item, and a mesh has few scopes.
    return any(p == "*" or fnmatchcase(scope, p) for p in patterns)


def load(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Load settings from ``path`` (or $MESHSYNC_CONFIG) and the environment."""
    src = path if path is not None else os.environ.get(ENV_CONFIG)
    data: dict[str, Any] = {}
    if src:
        p = Path(src).expanduser()
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"configuration file {p}: {exc.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"configuration file {p} is not valid YAML{where}: {what}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"configuration file {p} must hold a mapping of settings")
        data = loaded or {}
    Settings._yaml = data
    try:
        return Settings(**overrides)
    except SettingsError as exc:
        # pydantic-settings could not decode an environment value (a list or section that
        # is not JSON).  Name the variables that are not JSON, one line each.
        import json
        import re

        m = re.search(r'field "(\w+)"', str(exc))
        prefix = f"MESHSYNC_{m.group(1).upper()}" if m else "MESHSYNC_"
        lines = []
        for var, val in sorted(os.environ.items()):
            if var.startswith(prefix) and var != ENV_CONFIG:
                try:
                    json.loads(val)
                except ValueError:
                    name = var[len("MESHSYNC_"):].lower().replace("__", ".")
                    lines.append(f"  {name}: ${var} must be JSON here (given {val!r}), "
                                 f"e.g. {var}='[\"mesh\", \"user:*\"]'")
        if not lines:
            lines.append(f"  {str(exc).splitlines()[0]}")
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from None
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = ".".join(str(x) for x in err["loc"]) or "(top level)"
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown setting (check the spelling; see docs/configuration.md)"
            env = "MESHSYNC_" + "__".join(str(x) for x in err["loc"]).upper()
            lines.append(f"  {name}: {msg} (given {err.get('input')!r}; file key {name!r} or ${env})")
        where = f" in {src}" if src else ""
        raise ConfigError("invalid configuration" + where + ":\n" + "\n".join(lines)) from None
    finally:
        Settings._yaml = {}
