"""Secret files: $CREDENTIALS_DIRECTORY (systemd) or the secrets_dir setting (Kubernetes)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from pydantic import SecretStr

from batchscope.settings import load_settings

TARGETS = """
[[engines]]
name = "prod"
url = "http://prod/engine-rest"
username = "monitor"
[[engines]]
name = "ci.eu"
url = "http://ci/engine-rest"
[[datadog]]
name = "dd"
"""

MakeSecrets = Callable[[Mapping[str, str]], Path]
WriteToml = Callable[[str], Path]


def reveal(secret: SecretStr | None) -> str | None:
    """The secret's value, or None."""
    return None if secret is None else secret.get_secret_value()


def test_credentials_directory_fills_every_secret(
    write_toml: WriteToml, make_secrets: MakeSecrets
) -> None:
    """Each documented file name fills its setting; the trailing newline is stripped."""
    directory = make_secrets(
        {
            "http.api_token": "api-token\n",
            "engines.prod.password": "prod-password\r\n",
            "engines.ci.eu.bearer_token": "ci-token",
            "datadog.dd.api_key": "dd-api\n",
            "datadog.dd.app_key": "dd-app\n",
        }
    )
    settings = load_settings(write_toml(TARGETS), environ={"CREDENTIALS_DIRECTORY": str(directory)})
    assert reveal(settings.http.api_token) == "api-token"
    prod, ci = settings.engines
    assert (prod.username, reveal(prod.password)) == ("monitor", "prod-password")
    assert reveal(ci.bearer_token) == "ci-token"
    (dd,) = settings.datadog
    assert (reveal(dd.api_key), reveal(dd.app_key)) == ("dd-api", "dd-app")


def test_only_trailing_newline_is_stripped(make_secrets: MakeSecrets) -> None:
    """Inner and leading characters of a secret are kept; only the final newline goes."""
    directory = make_secrets({"http.api_token": " a b \n\n"})
    settings = load_settings(environ={"CREDENTIALS_DIRECTORY": str(directory)})
    assert reveal(settings.http.api_token) == " a b "


@pytest.mark.parametrize("how", ["toml", "env", "flag"])
def test_secrets_dir_setting(how: str, write_toml: WriteToml, make_secrets: MakeSecrets) -> None:
    """Without $CREDENTIALS_DIRECTORY, the secrets_dir setting (from any source) is read."""
    directory = str(make_secrets({"http.api_token": "from-dir"}))
    config = write_toml(f'secrets_dir = "{directory}"') if how == "toml" else None
    environ = {"BATCHSCOPE_SECRETS_DIR": directory} if how == "env" else {}
    overrides = {"secrets_dir": directory} if how == "flag" else None
    settings = load_settings(config, overrides, environ)
    assert reveal(settings.http.api_token) == "from-dir"
    assert settings.secrets_dir == Path(directory)


def test_credentials_directory_wins_over_secrets_dir(make_secrets: MakeSecrets) -> None:
    """$CREDENTIALS_DIRECTORY, when set, is the secret directory; secrets_dir is not read."""
    systemd = make_secrets({"http.api_token": "from-systemd"})
    mounted = make_secrets({"http.api_token": "from-mount", "dd_api_key": "k"})
    settings = load_settings(
        environ={"CREDENTIALS_DIRECTORY": str(systemd), "BATCHSCOPE_SECRETS_DIR": str(mounted)}
    )
    assert reveal(settings.http.api_token) == "from-systemd"
    assert settings.datadog == []


def test_secret_file_does_not_override_explicit_values(
    write_toml: WriteToml, make_secrets: MakeSecrets
) -> None:
    """A secret file fills a field only when no higher source set it."""
    config = write_toml(
        '[http]\napi_token = "from-toml"\n[[engines]]\nname = "prod"\nurl = "http://p"\n'
        'username = "u"\npassword = "from-toml-pw"\n'
    )
    directory = make_secrets({"http.api_token": "file", "engines.prod.password": "file"})
    settings = load_settings(config, environ={"CREDENTIALS_DIRECTORY": str(directory)})
    assert reveal(settings.http.api_token) == "from-toml"
    assert reveal(settings.engines[0].password) == "from-toml-pw"


def test_secret_matches_target_from_env_list(make_secrets: MakeSecrets) -> None:
    """Targets are matched by name whatever source defined them (here BATCHSCOPE_ENGINES)."""
    directory = make_secrets({"engines.prod.password": "pw"})
    settings = load_settings(
        environ={
            "CREDENTIALS_DIRECTORY": str(directory),
            "BATCHSCOPE_ENGINES": '[{"name": "prod", "url": "http://p", "username": "u"}]',
        }
    )
    assert reveal(settings.engines[0].password) == "pw"


def test_default_datadog_target_name(write_toml: WriteToml, make_secrets: MakeSecrets) -> None:
    """A [[datadog]] table without name is the target "datadog" for secret files."""
    directory = make_secrets({"datadog.datadog.api_key": "a", "datadog.datadog.app_key": "b"})
    settings = load_settings(
        write_toml("[[datadog]]\nbatch_ids = []\n"),
        environ={"CREDENTIALS_DIRECTORY": str(directory)},
    )
    assert reveal(settings.datadog[0].api_key) == "a"


def test_unrelated_files_ignored(tmp_path: Path, make_secrets: MakeSecrets) -> None:
    """Other credentials, dot-files and Kubernetes ..data links in the directory are ignored."""
    directory = make_secrets({"some-other-credential": "x", ".hidden": "y", "tls.crt": "z"})
    (directory / "..data").mkdir()
    real = tmp_path / "real-token"
    real.write_text("linked\n")
    (directory / "http.api_token").symlink_to(real)
    settings = load_settings(environ={"CREDENTIALS_DIRECTORY": str(directory)})
    assert reveal(settings.http.api_token) == "linked"


def test_missing_secrets_dir(problems: Callable[..., list[str]]) -> None:
    """A secrets_dir that does not exist is an error naming secrets_dir."""
    lines = problems(environ={"BATCHSCOPE_SECRETS_DIR": "/nonexistent/secrets"})
    assert lines == ["secrets_dir: directory not found: /nonexistent/secrets"]


def test_missing_credentials_directory(problems: Callable[..., list[str]]) -> None:
    """A $CREDENTIALS_DIRECTORY that does not exist is an error naming the variable."""
    lines = problems(environ={"CREDENTIALS_DIRECTORY": "/nonexistent/creds"})
    assert lines == ["CREDENTIALS_DIRECTORY: directory not found: /nonexistent/creds"]


def test_empty_secret_file(problems: Callable[..., list[str]], make_secrets: MakeSecrets) -> None:
    """An empty secret file is an error naming the file."""
    directory = make_secrets({"http.api_token": "\n"})
    lines = problems(environ={"CREDENTIALS_DIRECTORY": str(directory)})
    assert lines == [f"secret file {directory / 'http.api_token'}: empty"]


@pytest.mark.parametrize(
    "name", ["engines.prod.username", "engines.password", "http.token", "datadog.dd.site"]
)
def test_unknown_secret_names(
    name: str,
    problems: Callable[..., list[str]],
    make_secrets: MakeSecrets,
    secret: str,
) -> None:
    """Files under http./engines./datadog. that are no secret setting are errors (typos)."""
    directory = make_secrets({name: secret})
    (line,) = problems(environ={"CREDENTIALS_DIRECTORY": str(directory)})
    assert line.startswith(f"secret file {directory / name}: unknown secret name")


def test_secret_for_unknown_target(
    problems: Callable[..., list[str]],
    write_toml: WriteToml,
    make_secrets: MakeSecrets,
    secret: str,
) -> None:
    """A secret file naming no configured target is an error naming file and target."""
    directory = make_secrets({"engines.staging.password": secret})
    (line,) = problems(
        config_path=write_toml(TARGETS), environ={"CREDENTIALS_DIRECTORY": str(directory)}
    )
    assert line == (
        f"secret file {directory / 'engines.staging.password'}: "
        "no [[engines]] target is named 'staging'"
    )


def test_missing_password_hint(problems: Callable[..., list[str]], write_toml: WriteToml) -> None:
    """A username without password points at the secret file that would provide it."""
    lines = problems(
        config_path=write_toml('[[engines]]\nname = "prod"\nurl = "http://p"\nusername = "u"\n')
    )
    assert len(lines) == 1
    assert lines[0].startswith("engines.0.password: username is set but password is missing")
    assert "engines.prod.password" in lines[0]


def test_invalid_secret_value_not_echoed(
    problems: Callable[..., list[str]], make_secrets: MakeSecrets, secret: str
) -> None:
    """A rejected value from a secret file is reported by setting and file, not by value."""
    directory = make_secrets({"engines.prod.password": secret})
    lines = problems(
        environ={
            "CREDENTIALS_DIRECTORY": str(directory),
            "BATCHSCOPE_ENGINES": '[{"name": "prod", "url": "http://p"}]',
        }
    )
    assert lines == [
        "engines.0.password: password requires username "
        f"(from secret file {directory / 'engines.prod.password'})"
    ]


def test_secret_that_is_not_a_regular_file(
    problems: Callable[..., list[str]], make_secrets: MakeSecrets
) -> None:
    """A recognised name that is a FIFO or directory is an error (and never blocks)."""
    directory = make_secrets({})
    os.mkfifo(directory / "http.api_token")
    (directory / "dd_api_key").mkdir()
    assert sorted(problems(environ={"CREDENTIALS_DIRECTORY": str(directory)})) == [
        f"secret file {directory / 'dd_api_key'}: not a regular file",
        f"secret file {directory / 'http.api_token'}: not a regular file",
    ]
