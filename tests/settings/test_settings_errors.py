"""Invalid configuration: SettingsError lines name the setting, file or variable, never a secret."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from batchscope.settings import (
    EX_CONFIG,
    REDACTED,
    SettingsError,
    load_settings,
    redacted_dict,
)

Problems = Callable[..., list[str]]
WriteToml = Callable[[str], Path]
MakeSecrets = Callable[[Mapping[str, str]], Path]


def test_exit_code() -> None:
    """Invalid configuration maps to exit status 78 (EX_CONFIG)."""
    assert EX_CONFIG == 78 == os.EX_CONFIG
    assert SettingsError(["x: y"]).exit_code == EX_CONFIG


def test_error_text_lists_problems() -> None:
    """str(SettingsError) lists every problem line; problems is a list of str."""
    error = SettingsError(["a: one", "b.0.c: two"])
    assert error.problems == ["a: one", "b.0.c: two"]
    assert str(error) == "invalid configuration:\n  a: one\n  b.0.c: two"


def test_config_file_not_found(problems: Problems, tmp_path: Path) -> None:
    """A --config path that does not exist is an error naming the path."""
    missing = tmp_path / "missing.toml"
    assert problems(config_path=missing) == [f"config file {missing}: not found"]


def test_batchscope_config_not_found(problems: Problems, tmp_path: Path) -> None:
    """A $BATCHSCOPE_CONFIG that does not exist is an error naming path and variable."""
    missing = tmp_path / "missing.toml"
    assert problems(environ={"BATCHSCOPE_CONFIG": str(missing)}) == [
        f"config file {missing} (from BATCHSCOPE_CONFIG): not found"
    ]


def test_config_path_is_directory(problems: Problems, tmp_path: Path) -> None:
    """A directory given as config file is an error naming the path."""
    assert problems(config_path=tmp_path) == [f"config file {tmp_path}: not a regular file"]


def test_config_file_unreadable(
    problems: Problems, write_toml: WriteToml, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unreadable config file is an error naming the path and the reason."""
    path = write_toml('log_level = "info"')
    real_open = Path.open

    def deny(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", deny)
    assert problems(config_path=path) == [f"config file {path}: cannot read (Permission denied)"]


def test_toml_syntax_error(problems: Problems, write_toml: WriteToml, secret: str) -> None:
    """Invalid TOML names the file and position and does not echo the text (a secret here)."""
    path = write_toml(f'[http]\napi_token = "{secret}" trailing\n')
    (line,) = problems(config_path=path)
    assert line.startswith(f"config file {path}: invalid TOML: ")
    assert "line 2" in line


def test_toml_not_utf8(problems: Problems, tmp_path: Path) -> None:
    """A config file that is not UTF-8 is reported as such."""
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'log_level = "\xe9"\n')
    (line,) = problems(config_path=path)
    assert line.startswith(f"config file {path}: ")


def test_bad_json_in_env_list(problems: Problems, secret: str) -> None:
    """Malformed JSON in BATCHSCOPE_ENGINES names the variable, not its content."""
    environ = {"BATCHSCOPE_ENGINES": f'[{{"name": "p", "password": "{secret}",]'}
    (line,) = problems(environ=environ)
    assert line.startswith("BATCHSCOPE_ENGINES: invalid JSON (")


def test_all_bad_json_variables_reported(problems: Problems) -> None:
    """Every variable with bad JSON is reported, not just the first."""
    lines = problems(environ={"BATCHSCOPE_ENGINES": "[", "BATCHSCOPE_DATADOG": "{x}"})
    assert sorted(line.split(":", 1)[0] for line in lines) == [
        "BATCHSCOPE_DATADOG",
        "BATCHSCOPE_ENGINES",
    ]


def test_unknown_env_variable(problems: Problems) -> None:
    """A BATCHSCOPE_* variable naming no setting is an error (typo protection)."""
    assert problems(environ={"BATCHSCOPE_POLL_INTERVALL": "5"}) == [
        "BATCHSCOPE_POLL_INTERVALL: unknown setting"
    ]


def test_batchscope_config_is_not_unknown(write_toml: WriteToml) -> None:
    """BATCHSCOPE_CONFIG is the only non-setting variable with the prefix."""
    load_settings(environ={"BATCHSCOPE_CONFIG": str(write_toml(""))})


def test_per_item_list_variable(problems: Problems) -> None:
    """List items cannot be set one variable each; the error says to use a JSON list."""
    assert problems(environ={"BATCHSCOPE_ENGINES__0__URL": "http://x"}) == [
        "BATCHSCOPE_ENGINES__0__URL: engines is a list; "
        "set BATCHSCOPE_ENGINES to a JSON list instead"
    ]


def test_nested_variable_on_scalar(problems: Problems) -> None:
    """A __ suffix on a scalar setting is an error."""
    assert problems(environ={"BATCHSCOPE_LOG_LEVEL__X": "1"}) == [
        "BATCHSCOPE_LOG_LEVEL__X: log_level has no nested settings"
    ]


def test_unknown_nested_env_key(problems: Problems) -> None:
    """BATCHSCOPE_HTTP__PROT is reported as http.prot, from that variable."""
    assert problems(environ={"BATCHSCOPE_HTTP__PROT": "1"}) == [
        "http.prot: Extra inputs are not permitted (from BATCHSCOPE_HTTP__PROT)"
    ]


def test_unknown_toml_keys(problems: Problems, write_toml: WriteToml) -> None:
    """Unknown keys in the file, top-level or nested, are named by dotted path."""
    path = write_toml(
        "pol_interval = 5\n[http]\nprot = 1\n"
        '[[engines]]\nname = "p"\nurl = "http://p"\nuser = "x"\n'
    )
    assert sorted(problems(config_path=path)) == [
        f"engines.0.user: Extra inputs are not permitted (from config file {path})",
        f"http.prot: Extra inputs are not permitted (from config file {path})",
        f"pol_interval: Extra inputs are not permitted (from config file {path})",
    ]


def test_unknown_override_key(problems: Problems) -> None:
    """An unknown command-line override is rejected like any unknown key."""
    assert problems(overrides={"http.prot": 1}) == [
        "http.prot: Extra inputs are not permitted (from command line)"
    ]


@pytest.mark.parametrize("key", ["", "http.", "_secrets_dir", "_cli_parse_args"])
def test_invalid_override_names(problems: Problems, key: str) -> None:
    """Empty parts and underscore names (pydantic-settings init options) are rejected."""
    assert problems(overrides={key: "x"}) == [f"{key}: invalid setting name"]


def test_conflicting_overrides(problems: Problems) -> None:
    """An override below a non-table value is reported."""
    assert problems(overrides={"log_level": "info", "log_level.x": 1}) == [
        "log_level.x: conflicts with the override of log_level"
    ]


def test_invalid_values_from_each_source(
    problems: Problems, write_toml: WriteToml, make_secrets: MakeSecrets, secret: str
) -> None:
    """All validation problems come at once, each naming the setting and its origin."""
    config = write_toml(
        f"""
        retention = -1
        [[engines]]
        name = "prod"
        url = "ftp://camunda"
        password = "{secret}"
        """
    )
    lines = problems(
        config_path=config,
        overrides={"http.port": 0},
        environ={"BATCHSCOPE_POLL_INTERVAL": "abc", "BATCHSCOPE_HTTP__API_TOKEN": secret},
    )
    heads = sorted(line.split(":", 1)[0] for line in lines)
    assert heads == ["engines.0.url", "http.port", "poll_interval", "retention"]
    assert any(line.endswith("(from BATCHSCOPE_POLL_INTERVAL)") for line in lines)
    assert any(line.endswith("(from command line)") for line in lines)
    assert any(line.endswith(f"(from config file {config})") for line in lines)


@pytest.mark.parametrize(
    "engine",
    [
        {"name": "prod", "url": "http://p", "password": ["SECRET"], "username": "u"},
        {"name": "prod", "url": "http://p", "password": "SECRET"},
        {"name": "prod", "url": "http://p", "bearer_token": "SECRET", "username": "SECRET"},
        {"name": "prod", "url": "http://u:SECRET@p"},
        {"name": "prod", "url": "SECRET"},
        {"name": "SECRET!", "url": "http://p", "bearer_token": "SECRET"},
    ],
)
def test_secrets_never_echoed(problems: Problems, secret: str, engine: dict[str, object]) -> None:
    """Whatever is wrong around a secret, the secret value is in no problem line."""
    text = json.dumps([engine]).replace("SECRET", secret)
    assert problems(environ={"BATCHSCOPE_ENGINES": text})


def test_bad_datadog_key_type_not_echoed(problems: Problems, secret: str) -> None:
    """A datadog key of the wrong type is reported at its path without the value."""
    environ = {"BATCHSCOPE_DATADOG": json.dumps([{"api_key": {"v": secret}, "app_key": "x"}])}
    (line,) = problems(environ=environ)
    assert line.startswith("datadog.0.api_key: ")


def test_redacted_dict_hides_secrets(make_secrets: MakeSecrets, secret: str) -> None:
    """redacted_dict is JSON-serialisable; every set secret is '**********', unset stay None."""
    directory = make_secrets({"engines.prod.password": secret})
    settings = load_settings(
        environ={
            "CREDENTIALS_DIRECTORY": str(directory),
            "BATCHSCOPE_HTTP__API_TOKEN": secret,
            "BATCHSCOPE_ENGINES": json.dumps(
                [
                    {"name": "prod", "url": "http://p", "username": "monitor"},
                    {"name": "ci", "url": "http://c", "bearer_token": secret},
                ]
            ),
            "DD_API_KEY": secret,
            "DD_APP_KEY": secret,
        }
    )
    data = redacted_dict(settings)
    text = json.dumps(data)
    assert secret not in text
    assert data["http"] == {
        "host": "0.0.0.0",
        "port": 9847,
        "api_token": REDACTED,
        "max_body_bytes": 65536,
    }
    prod, ci = data["engines"]  # type: ignore[misc]
    assert (prod["username"], prod["password"], prod["bearer_token"]) == (
        "monitor",
        REDACTED,
        None,
    )
    assert (ci["password"], ci["bearer_token"]) == (None, REDACTED)
    (dd,) = data["datadog"]  # type: ignore[misc]
    assert (dd["api_key"], dd["app_key"]) == (REDACTED, REDACTED)
    assert dd["base_url"] == "https://api.datadoghq.com"
    assert data["secrets_dir"] is None


def test_redacted_dict_covers_every_setting() -> None:
    """redacted_dict has every top-level setting, with JSON types (paths as strings)."""
    data = redacted_dict(load_settings(environ={"BATCHSCOPE_SECRETS_DIR": "/"}))
    assert set(data) == {
        "poll_interval",
        "log_format",
        "log_level",
        "state_path",
        "retention",
        "max_batch_series",
        "max_tracked_batches",
        "shutdown_timeout",
        "secrets_dir",
        "http",
        "engines",
        "datadog",
    }
    assert data["secrets_dir"] == "/"
    assert json.loads(json.dumps(data)) == data
