"""Where settings come from: flags, BATCHSCOPE_* environment, TOML file, defaults, precedence."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from batchscope.settings import Settings, load_settings


def token(settings: Settings) -> str | None:
    """The http.api_token value, or None."""
    secret = settings.http.api_token
    return None if secret is None else secret.get_secret_value()


def test_defaults_only() -> None:
    """With no flags, no environment and no file, every setting has its default."""
    assert load_settings(environ={}) == Settings.model_validate({})


def test_flag_alone() -> None:
    """Command-line overrides use dotted keys for nested settings."""
    settings = load_settings(
        overrides={"log_level": "debug", "http.port": 9999, "state_path": ":memory:"}, environ={}
    )
    assert (settings.log_level, settings.http.port, settings.state_path) == (
        "debug",
        9999,
        ":memory:",
    )


def test_flag_none_values_and_dashes() -> None:
    """Override values of None (option not given) are skipped; dashes read as underscores."""
    settings = load_settings(
        overrides={"log_level": None, "http.max-body-bytes": "1024", "poll-interval": "2s"},
        environ={},
    )
    assert settings.log_level == "info"
    assert settings.http.max_body_bytes == 1024
    assert settings.poll_interval == 2.0


def test_env_alone() -> None:
    """BATCHSCOPE_<SETTING> sets top-level settings; values are parsed from strings."""
    settings = load_settings(
        environ={
            "BATCHSCOPE_LOG_LEVEL": "WARNING",
            "BATCHSCOPE_POLL_INTERVAL": "500ms",
            "BATCHSCOPE_MAX_BATCH_SERIES": "0",
            "BATCHSCOPE_LOG_FORMAT": "console",
        }
    )
    assert settings.log_level == "warning"
    assert settings.poll_interval == 0.5
    assert settings.max_batch_series == 0
    assert settings.log_format == "console"


def test_env_nested_with_double_underscore() -> None:
    """BATCHSCOPE_HTTP__PORT and friends set fields of the [http] table."""
    settings = load_settings(
        environ={
            "BATCHSCOPE_HTTP__PORT": "8080",
            "BATCHSCOPE_HTTP__HOST": "127.0.0.1",
            "BATCHSCOPE_HTTP__API_TOKEN": "tok-from-env",
        }
    )
    assert (settings.http.host, settings.http.port) == ("127.0.0.1", 8080)
    assert token(settings) == "tok-from-env"


def test_env_names_case_insensitive() -> None:
    """Variable names match case-insensitively, like pydantic-settings' default."""
    assert load_settings(environ={"batchscope_log_level": "error"}).log_level == "error"


def test_env_empty_value_is_unset() -> None:
    """An empty variable (common in env-file templates) counts as not set."""
    assert load_settings(environ={"BATCHSCOPE_LOG_LEVEL": ""}).log_level == "info"


def test_env_lists_as_json() -> None:
    """Target lists are JSON in BATCHSCOPE_ENGINES / BATCHSCOPE_DATADOG."""
    settings = load_settings(
        environ={
            "BATCHSCOPE_ENGINES": '[{"name": "prod", "url": "http://x/engine-rest",'
            ' "tenant_ids": ["t1"], "verify_tls": false}]',
            "BATCHSCOPE_DATADOG": '[{"name": "ci", "url": "http://127.0.0.1:8126",'
            ' "api_key": "a", "app_key": "b", "batch_ids": ["b-1"]}]',
        }
    )
    (engine,) = settings.engines
    assert (engine.name, engine.url, engine.tenant_ids, engine.verify_tls) == (
        "prod",
        "http://x/engine-rest",
        ["t1"],
        False,
    )
    (datadog,) = settings.datadog
    assert (datadog.name, datadog.base_url, datadog.batch_ids) == (
        "ci",
        "http://127.0.0.1:8126",
        ["b-1"],
    )


def test_env_table_as_json() -> None:
    """A whole table can be one JSON object (BATCHSCOPE_HTTP), merged with __ variables."""
    settings = load_settings(
        environ={"BATCHSCOPE_HTTP": '{"host": "::1", "port": 1234}', "BATCHSCOPE_HTTP__PORT": "99"}
    )
    assert (settings.http.host, settings.http.port) == ("::1", 99)


def test_toml_alone(write_toml: Callable[[str], Path]) -> None:
    """The TOML file sets top-level settings, [http] and [[engines]] / [[datadog]] tables."""
    path = write_toml(
        """
        poll_interval = "30s"
        retention = 60
        [http]
        port = 7000
        [[engines]]
        name = "prod"
        url = "https://camunda.example.com/engine-rest/"
        [[engines]]
        name = "test"
        url = "http://localhost:8080/engine-rest/engine/test"
        page_size = 50
        [[datadog]]
        site = "datadoghq.eu"
        api_key = "a"
        app_key = "b"
        """
    )
    settings = load_settings(config_path=path, environ={})
    assert settings.poll_interval == 30.0 and settings.retention == 60.0
    assert settings.http.port == 7000
    assert [(e.name, e.url, e.page_size) for e in settings.engines] == [
        ("prod", "https://camunda.example.com/engine-rest", 500),
        ("test", "http://localhost:8080/engine-rest/engine/test", 50),
    ]
    assert settings.datadog[0].base_url == "https://api.datadoghq.eu"


def test_toml_from_batchscope_config_env(write_toml: Callable[[str], Path]) -> None:
    """Without config_path, $BATCHSCOPE_CONFIG names the TOML file."""
    path = write_toml('log_level = "error"')
    assert load_settings(environ={"BATCHSCOPE_CONFIG": str(path)}).log_level == "error"


def test_config_path_beats_batchscope_config(write_toml: Callable[[str], Path]) -> None:
    """An explicit --config path wins over $BATCHSCOPE_CONFIG (which is then not read)."""
    flag_file = write_toml('log_level = "error"')
    settings = load_settings(
        config_path=str(flag_file), environ={"BATCHSCOPE_CONFIG": "/nonexistent/x.toml"}
    )
    assert settings.log_level == "error"


@pytest.mark.parametrize(
    ("sources", "expected"),
    [
        ({"flag", "env", "toml", "secret"}, "from-flag"),
        ({"env", "toml", "secret"}, "from-env"),
        ({"toml", "secret"}, "from-toml"),
        ({"secret"}, "from-secret"),
        (set(), None),
    ],
)
def test_precedence_of_one_setting(
    sources: set[str],
    expected: str | None,
    write_toml: Callable[[str], Path],
    make_secrets: Callable[[Mapping[str, str]], Path],
) -> None:
    """http.api_token set in several sources: flag > env > TOML > secret file > default."""
    environ = {"CREDENTIALS_DIRECTORY": str(make_secrets({"http.api_token": "from-secret\n"}))}
    if "secret" not in sources:
        environ = {}
    if "env" in sources:
        environ["BATCHSCOPE_HTTP__API_TOKEN"] = "from-env"
    config = write_toml('[http]\napi_token = "from-toml"\n') if "toml" in sources else None
    overrides = {"http.api_token": "from-flag"} if "flag" in sources else None
    settings = load_settings(config_path=config, overrides=overrides, environ=environ)
    assert token(settings) == expected


def test_precedence_of_plain_setting(write_toml: Callable[[str], Path]) -> None:
    """log_level: flag beats env beats TOML beats the default, each layer checked in turn."""
    config = write_toml('log_level = "error"')
    env = {"BATCHSCOPE_LOG_LEVEL": "warning"}
    assert load_settings(config, {"log_level": "debug"}, env).log_level == "debug"
    assert load_settings(config, {}, env).log_level == "warning"
    assert load_settings(config, {}, {}).log_level == "error"
    assert load_settings(None, {}, {}).log_level == "info"


def test_tables_merge_across_sources(write_toml: Callable[[str], Path]) -> None:
    """Tables merge key by key: [http] host from TOML, port from env, token from the flag."""
    config = write_toml('[http]\nhost = "10.0.0.1"\nport = 1\nmax_body_bytes = 10\n')
    settings = load_settings(
        config,
        {"http.max_body_bytes": 20},
        {"BATCHSCOPE_HTTP__PORT": "2"},
    )
    assert (settings.http.host, settings.http.port, settings.http.max_body_bytes) == (
        "10.0.0.1",
        2,
        20,
    )


def test_env_list_replaces_toml_list(write_toml: Callable[[str], Path]) -> None:
    """BATCHSCOPE_ENGINES replaces all [[engines]] tables of the file (lists do not merge)."""
    config = write_toml(
        '[[engines]]\nname = "a"\nurl = "http://a"\n[[engines]]\nname = "b"\nurl = "http://b"\n'
    )
    settings = load_settings(
        config, environ={"BATCHSCOPE_ENGINES": '[{"name": "c", "url": "http://c"}]'}
    )
    assert [engine.name for engine in settings.engines] == ["c"]


def test_explicit_environ_is_the_only_environment(
    monkeypatch: pytest.MonkeyPatch, make_secrets: Callable[[Mapping[str, str]], Path]
) -> None:
    """With environ given, os.environ is ignored: BATCHSCOPE_*, DD_*, systemd dirs alike."""
    monkeypatch.setenv("BATCHSCOPE_LOG_LEVEL", "debug")
    monkeypatch.setenv("BATCHSCOPE_HTTP__PORT", "1")
    monkeypatch.setenv("BATCHSCOPE_CONFIG", "/nonexistent/batchscope.toml")
    monkeypatch.setenv("BATCHSCOPE_BOGUS", "1")
    monkeypatch.setenv("DD_API_KEY", "env-key")
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/elsewhere")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(make_secrets({"http.api_token": "t"})))
    assert load_settings(environ={}) == Settings.model_validate({})


def test_default_environ_is_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """environ=None reads os.environ."""
    for name in list(os.environ):
        if name.upper().startswith(("BATCHSCOPE_", "DD_")) or name in (
            "CREDENTIALS_DIRECTORY",
            "STATE_DIRECTORY",
        ):
            monkeypatch.delenv(name)
    monkeypatch.setenv("BATCHSCOPE_LOG_LEVEL", "warning")
    assert load_settings().log_level == "warning"


def test_constructor_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings(...) and Settings.model_validate(...) outside the loader read no source."""
    monkeypatch.setenv("BATCHSCOPE_LOG_LEVEL", "debug")
    monkeypatch.setenv("DD_API_KEY", "env-key")
    assert Settings().log_level == "info"
    assert Settings(poll_interval="1s").poll_interval == 1.0
    assert Settings.model_validate({}).datadog == []


def test_state_directory_default() -> None:
    """Under systemd StateDirectory=, state_path defaults to $STATE_DIRECTORY/state.db."""
    assert (
        load_settings(environ={"STATE_DIRECTORY": "/var/lib/batchscope-x"}).state_path
        == "/var/lib/batchscope-x/state.db"
    )


def test_state_directory_first_of_several() -> None:
    """When STATE_DIRECTORY lists several colon-separated paths, the first is used."""
    assert (
        load_settings(environ={"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"}).state_path
        == "/var/lib/a/state.db"
    )


def test_explicit_state_path_beats_state_directory(write_toml: Callable[[str], Path]) -> None:
    """A state_path from any source wins over the STATE_DIRECTORY default."""
    config = write_toml('state_path = "/srv/state.db"')
    environ = {"STATE_DIRECTORY": "/var/lib/a"}
    assert load_settings(config, environ=environ).state_path == "/srv/state.db"
    assert (
        load_settings(overrides={"state_path": ":memory:"}, environ=environ).state_path
        == ":memory:"
    )
