"""The example files in config/ stay valid and document every setting."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path

from pydantic import BaseModel

from batchscope.settings import (
    DatadogTarget,
    EngineTarget,
    HttpSettings,
    Settings,
    load_settings,
)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
EXAMPLE_TOML = CONFIG_DIR / "batchscope.toml"
EXAMPLE_ENV = CONFIG_DIR / "batchscope.env"
EXAMPLE_KEYS = {"DD_API_KEY": "example-api-key", "DD_APP_KEY": "example-app-key"}

MakeSecrets = Callable[[Mapping[str, str]], Path]

_HEADER = re.compile(r"^\s*\[\[?\s*([a-z_]+)\s*\]\]?")
_KEY = re.compile(r"^\s*#?\s*([a-z_]+)\s*=")


def documented_keys(text: str) -> dict[str, set[str]]:
    """Keys shown (set or commented out) per section: "" (top level), http, engines, datadog."""
    sections: dict[str, set[str]] = {"": set()}
    current = ""
    for line in text.splitlines():
        if header := _HEADER.match(line):
            current = header.group(1)
            sections.setdefault(current, set())
        elif key := _KEY.match(line):
            sections[current].add(key.group(1))
    return sections


def test_example_toml_loads(make_secrets: MakeSecrets) -> None:
    """config/batchscope.toml loads, with its secrets from a secret file and DD_* variables."""
    directory = make_secrets({"engines.prod.password": "example-password\n"})
    settings = load_settings(
        EXAMPLE_TOML, environ={"CREDENTIALS_DIRECTORY": str(directory), **EXAMPLE_KEYS}
    )
    (engine,) = settings.engines
    assert (engine.name, engine.username) == ("prod", "monitor")
    assert engine.password is not None
    (datadog,) = settings.datadog
    assert (datadog.name, datadog.base_url) == ("datadog", "https://api.datadoghq.com")
    assert settings.state_path == "/var/lib/batchscope/state.db"


def test_example_toml_documents_every_setting() -> None:
    """Every field of every settings model appears in the example TOML, in its section."""
    found = documented_keys(EXAMPLE_TOML.read_text(encoding="utf-8"))
    expected: dict[str, type[BaseModel]] = {
        "http": HttpSettings,
        "engines": EngineTarget,
        "datadog": DatadogTarget,
    }
    top_level = set(Settings.model_fields) - set(expected)
    assert top_level <= found[""], top_level - found[""]
    for section, model in expected.items():
        assert set(model.model_fields) <= found[section], set(model.model_fields) - found[section]


def test_example_toml_values_are_defaults() -> None:
    """Settings the example sets (besides the example targets' identity) have default values."""
    data = tomllib.loads(EXAMPLE_TOML.read_text(encoding="utf-8"))
    defaults = Settings.model_validate({})
    for key in set(data) - {"http", "engines", "datadog"}:
        assert Settings.model_validate({key: data[key]}).model_dump()[key] == getattr(
            defaults, key
        ), key
    assert HttpSettings.model_validate(data["http"]) == HttpSettings()
    identity = {"name", "url", "username", "site"}
    for section, model, base in (
        ("engines", EngineTarget, {"name": "x", "url": "http://x"}),
        ("datadog", DatadogTarget, {"api_key": "a", "app_key": "b"}),
    ):
        (table,) = data[section]
        default = model.model_validate(base).model_dump()
        given = {key: value for key, value in table.items() if key not in identity}
        validated = model.model_validate({**base, **given}).model_dump()
        for key in given:
            assert validated[key] == default[key], f"{section}.{key}"


def parse_env_file(text: str, include_commented: bool) -> dict[str, str]:
    """VAR=value lines of an env file; optionally also the commented-out '#VAR=value' ones."""
    pattern = re.compile(r"^(#)?([A-Z][A-Z0-9_]*)=(.*)$")
    environ: dict[str, str] = {}
    for line in text.splitlines():
        match = pattern.match(line.strip())
        if match and (include_commented or not match.group(1)):
            environ[match.group(2)] = match.group(3)
    return environ


def test_example_env_file_loads() -> None:
    """config/batchscope.env, as shipped (active lines only), loads."""
    environ = parse_env_file(EXAMPLE_ENV.read_text(encoding="utf-8"), include_commented=False)
    assert environ, "no active lines"
    settings = load_settings(environ=environ)
    assert settings.poll_interval == 10.0
    assert [engine.name for engine in settings.engines] == ["prod"]


def test_example_env_file_with_every_line_enabled(make_secrets: MakeSecrets) -> None:
    """With every commented example variable enabled (paths pointed at test files), it loads."""
    environ = parse_env_file(EXAMPLE_ENV.read_text(encoding="utf-8"), include_commented=True)
    assert {"DD_API_KEY", "DD_APP_KEY", "DD_SITE", "BATCHSCOPE_DATADOG"} <= set(environ)
    environ["BATCHSCOPE_CONFIG"] = str(EXAMPLE_TOML)
    environ["BATCHSCOPE_SECRETS_DIR"] = str(make_secrets({}))
    settings = load_settings(environ=environ)
    assert settings.http.api_token is not None
    assert settings.datadog[0].base_url == "https://api.datadoghq.eu"
    assert settings.engines[0].password is None  # env list replaced the TOML engine
