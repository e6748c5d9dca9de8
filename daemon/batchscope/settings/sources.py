"""Where settings come from, and how the layers are merged.

:class:`LayeredSettingsSource` is the only source :class:`~.models.Settings` uses. It reads,
highest precedence first:

1. command-line overrides (pydantic-settings' ``InitSettingsSource``: the keyword arguments
   :func:`~.loader.load_settings` passes to ``Settings``);
2. ``BATCHSCOPE_*`` variables of the environment given to the loader (an
   ``EnvSettingsSource`` fed that mapping instead of ``os.environ``);
3. the TOML file (``TomlConfigSettingsSource``);

merges them (tables merge key by key, a list from a higher layer replaces the whole list of a
lower one), then fills what is still unset from

4. secret files (``$CREDENTIALS_DIRECTORY``, else the ``secrets_dir`` setting);
5. the Datadog conventions ``DD_API_KEY``, ``DD_APP_KEY``/``DD_APPLICATION_KEY``, ``DD_SITE``
   (plus the ``dd_api_key``/``dd_app_key`` secret files) and systemd's ``STATE_DIRECTORY``.

Steps 4 and 5 need the merged target lists (secrets are matched to ``[[engines]]`` and
``[[datadog]]`` tables by target name), which is why they run after the merge instead of being
separate pydantic-settings sources: pydantic-settings replaces lists wholesale.

Problems found while reading (bad TOML, bad JSON in a variable, unreadable secret files,
unknown ``BATCHSCOPE_*`` variables) are collected and raised together as
:class:`~.errors.SettingsError` before validation.
"""

from __future__ import annotations

import contextlib
import copy
import os
import tomllib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_origin

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    TomlConfigSettingsSource,
)

from .errors import SettingsError

__all__ = [
    "CONFIG_ENV_VAR",
    "NON_SETTING_ENV_VARS",
    "SECRET_FIELDS",
    "LayeredSettingsSource",
    "LoadContext",
    "load_context",
]

CONFIG_ENV_VAR = "BATCHSCOPE_CONFIG"
NON_SETTING_ENV_VARS = frozenset({CONFIG_ENV_VAR})
"""``BATCHSCOPE_*`` variables that are not settings; any other unknown one is an error."""

SECRET_FIELDS: Mapping[str, tuple[str, ...]] = {
    "http": ("api_token",),
    "engines": ("password", "bearer_token"),
    "datadog": ("api_key", "app_key"),
}
"""The secret settings, by section; also the names a secret file may set."""

_SECRET_KEYS = frozenset(key for keys in SECRET_FIELDS.values() for key in keys)
_MAX_SECRET_BYTES = 64 * 1024
_DEFAULT_TARGET_NAME = {"engines": None, "datadog": "datadog"}

Loc = tuple[str | int, ...]


@dataclass
class LoadContext:
    """What one :func:`~.loader.load_settings` call reads from, and what it found.

    The inputs (``environ``, ``config_path``) are set by the loader; the layered source fills
    the rest so the loader can say where a rejected value came from.
    """

    environ: Mapping[str, str]
    config_path: Path | None = None
    layers: list[tuple[str, Mapping[str, Any]]] = field(default_factory=list)
    filled: dict[Loc, str] = field(default_factory=dict)
    env_var_names: frozenset[str] = frozenset()
    secret_values: set[str] = field(default_factory=set)

    def describe_origin(self, loc: Loc) -> str | None:
        """Name the source of the value at *loc* (or of its closest parent), if known."""
        for length in range(len(loc), 0, -1):
            prefix = loc[:length]
            for label, data in self.layers:
                if _has_path(data, prefix):
                    return self._env_label(prefix) if label == "environment" else label
            if prefix in self.filled:
                return self.filled[prefix]
        return None

    def _env_label(self, loc: Loc) -> str:
        head = str(loc[0]).upper()
        if len(loc) > 1 and isinstance(loc[1], str):
            nested = f"BATCHSCOPE_{head}__{loc[1].upper()}"
            if nested.lower() in self.env_var_names:
                return nested
        return f"BATCHSCOPE_{head}"


_CONTEXT: ContextVar[LoadContext | None] = ContextVar("batchscope_settings_load", default=None)


@contextlib.contextmanager
def load_context(context: LoadContext) -> Iterator[LoadContext]:
    """Make *context* the one the layered source reads from, for the ``with`` block."""
    token = _CONTEXT.set(context)
    try:
        yield context
    finally:
        _CONTEXT.reset(token)


def _has_path(data: Any, loc: Loc) -> bool:
    for part in loc:
        if isinstance(data, list):
            if not (isinstance(part, int) and 0 <= part < len(data)):
                return False
            data = data[part]
        elif isinstance(data, Mapping) and part in data:
            data = data[part]
        else:
            return False
    return True


def _deep_merge(lower: Mapping[str, Any], higher: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(lower)
    for key, value in higher.items():
        below = merged.get(key)
        if isinstance(below, Mapping) and isinstance(value, Mapping):
            merged[key] = _deep_merge(below, value)
        else:
            merged[key] = value
    return merged


def _nonempty(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name)
    return value if value else None


class _EnvironSource(EnvSettingsSource):
    """``EnvSettingsSource`` reading a given mapping instead of ``os.environ``.

    Also reports, instead of raising on the first, every ``BATCHSCOPE_*`` variable holding
    invalid JSON, and every ``BATCHSCOPE_*`` variable that names no setting.
    """

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.problems: list[str] = []
        self.env_vars = {
            (name if self.case_sensitive else name.lower()): value
            for name, value in environ.items()
            if not (self.env_ignore_empty and value == "")
        }

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError as exc:  # json.JSONDecodeError; its text holds positions, not input
            self.problems.append(
                f"{self.env_prefix.upper()}{field_name.upper()}: invalid JSON ({exc})"
            )
            return None

    def __call__(self) -> dict[str, Any]:
        self._check_names()
        return super().__call__()

    def _check_names(self) -> None:
        prefix = self.env_prefix.lower()
        allowed = {name.lower() for name in NON_SETTING_ENV_VARS}
        fields = self.settings_cls.model_fields
        for name in sorted(self.env_vars):
            lowered = name.lower()
            if not lowered.startswith(prefix) or lowered in allowed:
                continue
            head, nested, _ = lowered[len(prefix) :].partition(self.env_nested_delimiter or "\0")
            info = fields.get(head)
            if info is None:
                self.problems.append(f"{name.upper()}: unknown setting")
            elif nested and get_origin(info.annotation) is list:
                self.problems.append(
                    f"{name.upper()}: {head} is a list; set {prefix.upper()}{head.upper()} "
                    "to a JSON list instead"
                )
            elif nested and not (
                isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
            ):
                self.problems.append(f"{name.upper()}: {head} has no nested settings")


def _read_config_file(
    settings_cls: type[BaseSettings], path: Path, via: str, problems: list[str]
) -> dict[str, Any]:
    where = f"config file {path}" + (f" (from {via})" if via else "")
    if not path.exists():
        problems.append(f"{where}: not found")
        return {}
    if not path.is_file():
        problems.append(f"{where}: not a regular file")
        return {}
    try:
        return TomlConfigSettingsSource(settings_cls, toml_file=path)()
    except tomllib.TOMLDecodeError as exc:  # position only, never the offending text
        problems.append(f"{where}: invalid TOML: {exc}")
    except UnicodeDecodeError:
        problems.append(f"{where}: not valid UTF-8")
    except OSError as exc:
        problems.append(f"{where}: cannot read ({exc.strerror or type(exc).__name__})")
    return {}


@dataclass
class _SecretFiles:
    """The secret files found in one directory: ``(value, path)`` per recognised name."""

    api_token: tuple[str, Path] | None = None
    targets: dict[tuple[str, str, str], tuple[str, Path]] = field(default_factory=dict)
    dd_api_key: tuple[str, Path] | None = None
    dd_app_key: tuple[str, Path] | None = None


def _read_secret(path: Path, problems: list[str]) -> str | None:
    if not path.is_file():  # a directory, or a FIFO that would block the read
        problems.append(f"secret file {path}: not a regular file")
        return None
    try:
        with path.open("rb") as handle:
            data = handle.read(_MAX_SECRET_BYTES + 1)
    except OSError as exc:
        problems.append(f"secret file {path}: cannot read ({exc.strerror or type(exc).__name__})")
        return None
    if len(data) > _MAX_SECRET_BYTES:
        problems.append(f"secret file {path}: larger than {_MAX_SECRET_BYTES // 1024} KiB")
        return None
    try:
        text = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        problems.append(f"secret file {path}: not valid UTF-8")
        return None
    if not text:
        problems.append(f"secret file {path}: empty")
        return None
    return text


def _read_secret_files(directory: Path, problems: list[str]) -> _SecretFiles:
    found = _SecretFiles()
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        problems.append(
            f"secret directory {directory}: cannot list ({exc.strerror or type(exc).__name__})"
        )
        return found
    for name in names:
        if name.startswith("."):  # e.g. the ..data links of a Kubernetes Secret volume
            continue
        path = directory / name
        lowered = name.lower()
        section, dot, rest = name.partition(".")
        section = section.lower()
        if lowered in ("dd_api_key", "dd_app_key", "dd_application_key"):
            value = _read_secret(path, problems)
            if value is None:
                continue
            if lowered == "dd_api_key":
                found.dd_api_key = (value, path)
            elif lowered == "dd_app_key" or found.dd_app_key is None:
                found.dd_app_key = (value, path)
        elif dot and section in SECRET_FIELDS:
            target, target_dot, key = rest.rpartition(".")
            key = key.lower()
            if section == "http" and lowered == "http.api_token":
                value = _read_secret(path, problems)
                if value is not None:
                    found.api_token = (value, path)
            elif section != "http" and target_dot and target and key in SECRET_FIELDS[section]:
                value = _read_secret(path, problems)
                if value is not None:
                    found.targets[(section, target, key)] = (value, path)
            else:
                expected = (
                    "http.api_token"
                    if section == "http"
                    else f"{section}.<target name>.{'|'.join(SECRET_FIELDS[section])}"
                )
                problems.append(f"secret file {path}: unknown secret name (expected {expected})")
        # any other file is not ours: CREDENTIALS_DIRECTORY may hold other credentials
    return found


def _secrets_directory(
    environ: Mapping[str, str], merged: Mapping[str, Any], problems: list[str]
) -> Path | None:
    credentials = _nonempty(environ, "CREDENTIALS_DIRECTORY")
    if credentials is not None:
        path, label = Path(credentials), "CREDENTIALS_DIRECTORY"
    else:
        configured = merged.get("secrets_dir")
        if not isinstance(configured, str | os.PathLike) or not str(configured):
            return None  # unset, or a wrong type that validation reports
        path, label = Path(configured).expanduser(), "secrets_dir"
    if not path.is_dir():
        problems.append(f"{label}: directory not found: {path}")
        return None
    return path


def _apply_target_secrets(
    merged: dict[str, Any], secrets: _SecretFiles, filled: dict[Loc, str], problems: list[str]
) -> None:
    if secrets.api_token is not None:
        value, path = secrets.api_token
        http = merged.setdefault("http", {})
        if isinstance(http, dict) and http.get("api_token") is None:
            http["api_token"] = value
            filled[("http", "api_token")] = f"secret file {path}"
    for (section, name, key), (value, path) in secrets.targets.items():
        items = merged.get(section)
        matched = False
        for index, item in enumerate(items if isinstance(items, list) else []):
            if isinstance(item, dict) and item.get("name", _DEFAULT_TARGET_NAME[section]) == name:
                matched = True
                if item.get(key) is None:
                    item[key] = value
                    filled[(section, index, key)] = f"secret file {path}"
        if not matched:
            problems.append(f"secret file {path}: no [[{section}]] target is named {name!r}")


def _datadog_fills(environ: Mapping[str, str], secrets: _SecretFiles) -> dict[str, tuple[str, str]]:
    """The DD_* convention values, as ``key -> (value, where it came from)``."""
    fills: dict[str, tuple[str, str]] = {}
    for key, env_names, secret in (
        ("api_key", ("DD_API_KEY",), secrets.dd_api_key),
        ("app_key", ("DD_APP_KEY", "DD_APPLICATION_KEY"), secrets.dd_app_key),
        ("site", ("DD_SITE",), None),
    ):
        for env_name in env_names:
            env_value = _nonempty(environ, env_name)
            if env_value is not None:
                fills[key] = (env_value, env_name)
                break
        else:
            if secret is not None:
                fills[key] = (secret[0], f"secret file {secret[1]}")
    return fills


def _add_default_datadog_target(
    merged: dict[str, Any], fills: Mapping[str, tuple[str, str]], filled: dict[Loc, str]
) -> None:
    """Configure the target ``datadog`` when no source gave ``datadog`` but an API key is set."""
    if "datadog" not in merged and "api_key" in fills:
        merged["datadog"] = [{"name": _DEFAULT_TARGET_NAME["datadog"]}]
        filled[("datadog", 0)] = f"{fills['api_key'][1]}, which adds the target datadog"


def _fill_datadog_targets(
    merged: dict[str, Any], fills: Mapping[str, tuple[str, str]], filled: dict[Loc, str]
) -> None:
    items = merged.get("datadog")
    for index, item in enumerate(items if isinstance(items, list) else []):
        if not isinstance(item, dict):
            continue
        for key, (value, label) in fills.items():
            if item.get(key) is None:
                item[key] = value
                filled[("datadog", index, key)] = label


def _apply_state_directory(
    merged: dict[str, Any], environ: Mapping[str, str], filled: dict[Loc, str]
) -> None:
    state_directory = _nonempty(environ, "STATE_DIRECTORY")
    if "state_path" in merged or state_directory is None:
        return
    first = next((part for part in state_directory.split(":") if part), None)
    if first is not None:
        merged["state_path"] = os.path.join(first, "state.db")
        filled[("state_path",)] = "STATE_DIRECTORY"


def _collect_secret_values(data: Any, into: set[str], key: str | None = None) -> None:
    if isinstance(data, Mapping):
        for child_key, value in data.items():
            _collect_secret_values(value, into, str(child_key))
    elif isinstance(data, list):
        for value in data:
            _collect_secret_values(value, into, key)
    elif key in _SECRET_KEYS:
        if isinstance(data, SecretStr):
            data = data.get_secret_value()
        if isinstance(data, str) and data:
            into.add(data)


class LayeredSettingsSource(PydanticBaseSettingsSource):
    """The one pydantic-settings source of :class:`~.models.Settings` (see the module doc)."""

    def __init__(
        self, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource
    ) -> None:
        super().__init__(settings_cls)
        self._init_settings = init_settings

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ produces the whole mapping

    def __call__(self) -> dict[str, Any]:
        command_line = copy.deepcopy(self._init_settings())
        context = _CONTEXT.get()
        if context is None:  # Settings(...) / Settings.model_validate(...) outside the loader
            return command_line
        environ = context.environ
        problems: list[str] = []

        env_source = _EnvironSource(self.settings_cls, environ)
        environment = env_source()
        problems.extend(env_source.problems)
        context.env_var_names = frozenset(env_source.env_vars)

        config: dict[str, Any] = {}
        config_label = "config file"
        if context.config_path is not None:
            config_path, via = context.config_path, ""
        elif (from_env := _nonempty(environ, CONFIG_ENV_VAR)) is not None:
            config_path, via = Path(from_env), CONFIG_ENV_VAR
        else:
            config_path = None
        if config_path is not None:
            config_path = config_path.expanduser()
            config_label = f"config file {config_path}"
            config = _read_config_file(self.settings_cls, config_path, via, problems)

        context.layers = [
            ("command line", command_line),
            ("environment", environment),
            (config_label, config),
        ]
        merged: dict[str, Any] = {}
        for _label, data in reversed(context.layers):
            merged = _deep_merge(merged, copy.deepcopy(data))

        filled: dict[Loc, str] = {}
        directory = _secrets_directory(environ, merged, problems)
        secrets = _read_secret_files(directory, problems) if directory else _SecretFiles()
        fills = _datadog_fills(environ, secrets)
        _add_default_datadog_target(merged, fills, filled)
        # a target's own secret file beats the generic DD_* conventions
        _apply_target_secrets(merged, secrets, filled, problems)
        _fill_datadog_targets(merged, fills, filled)
        _apply_state_directory(merged, environ, filled)
        context.filled = filled
        _collect_secret_values(merged, context.secret_values)
        context.secret_values.update(
            value
            for name in ("DD_API_KEY", "DD_APP_KEY", "DD_APPLICATION_KEY")
            if (value := _nonempty(environ, name))
        )
        if problems:
            raise SettingsError(problems)
        return merged
