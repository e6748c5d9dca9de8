"""The Datadog conventions DD_API_KEY, DD_APP_KEY / DD_APPLICATION_KEY and DD_SITE."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from pydantic import SecretStr

from batchscope.settings import load_settings

MakeSecrets = Callable[[Mapping[str, str]], Path]
WriteToml = Callable[[str], Path]


def reveal(secret: SecretStr | None) -> str | None:
    """The secret's value, or None."""
    return None if secret is None else secret.get_secret_value()


def test_dd_api_key_configures_default_target() -> None:
    """With no [[datadog]] anywhere, DD_API_KEY (+ DD_APP_KEY) configures target "datadog"."""
    settings = load_settings(environ={"DD_API_KEY": "api", "DD_APP_KEY": "app"})
    (target,) = settings.datadog
    assert target.name == "datadog"
    assert (reveal(target.api_key), reveal(target.app_key)) == ("api", "app")
    assert target.site == "datadoghq.com"
    assert target.base_url == "https://api.datadoghq.com"


def test_dd_site_fills_site() -> None:
    """DD_SITE sets the site (and so the API base URL) of targets without one."""
    settings = load_settings(
        environ={"DD_API_KEY": "a", "DD_APP_KEY": "b", "DD_SITE": "us5.datadoghq.com"}
    )
    assert settings.datadog[0].base_url == "https://api.us5.datadoghq.com"


def test_dd_application_key_alias() -> None:
    """DD_APPLICATION_KEY is accepted for the app key."""
    settings = load_settings(environ={"DD_API_KEY": "a", "DD_APPLICATION_KEY": "alias"})
    assert reveal(settings.datadog[0].app_key) == "alias"


def test_dd_app_key_wins_over_alias() -> None:
    """When both are set, DD_APP_KEY wins over DD_APPLICATION_KEY."""
    settings = load_settings(
        environ={"DD_API_KEY": "a", "DD_APP_KEY": "primary", "DD_APPLICATION_KEY": "alias"}
    )
    assert reveal(settings.datadog[0].app_key) == "primary"


def test_fill_in_every_target_without_overriding(write_toml: WriteToml) -> None:
    """DD_* fill in each [[datadog]] target's missing keys/site; explicit values stay."""
    config = write_toml(
        """
        [[datadog]]
        name = "eu"
        site = "datadoghq.eu"
        api_key = "eu-api"
        [[datadog]]
        name = "us"
        """
    )
    settings = load_settings(
        config,
        environ={"DD_API_KEY": "env-api", "DD_APP_KEY": "env-app", "DD_SITE": "ap1.datadoghq.com"},
    )
    eu, us = settings.datadog
    assert (reveal(eu.api_key), reveal(eu.app_key), eu.site) == (
        "eu-api",
        "env-app",
        "datadoghq.eu",
    )
    assert (reveal(us.api_key), reveal(us.app_key), us.site) == (
        "env-api",
        "env-app",
        "ap1.datadoghq.com",
    )
    assert [target.name for target in settings.datadog] == ["eu", "us"]


def test_no_default_target_when_datadog_given() -> None:
    """A datadog list from any source (even empty) suppresses the automatic target."""
    given = load_settings(
        environ={
            "DD_API_KEY": "a",
            "DD_APP_KEY": "b",
            "BATCHSCOPE_DATADOG": '[{"name": "ci"}]',
        }
    )
    assert [target.name for target in given.datadog] == ["ci"]
    assert reveal(given.datadog[0].api_key) == "a"
    disabled = load_settings(
        environ={"DD_API_KEY": "a", "DD_APP_KEY": "b", "BATCHSCOPE_DATADOG": "[]"}
    )
    assert disabled.datadog == []


def test_no_default_target_without_api_key() -> None:
    """DD_APP_KEY or DD_SITE alone configure nothing."""
    settings = load_settings(environ={"DD_APP_KEY": "b", "DD_SITE": "datadoghq.eu"})
    assert settings.datadog == []


def test_default_target_missing_app_key(problems: Callable[..., list[str]], secret: str) -> None:
    """DD_API_KEY without an app key is an error at datadog.0.app_key, without the key."""
    lines = problems(environ={"DD_API_KEY": secret})
    assert len(lines) == 1
    assert lines[0].startswith("datadog.0.app_key: required")
    assert lines[0].endswith("(from DD_API_KEY, which adds the target datadog)")


def test_target_without_any_key(problems: Callable[..., list[str]], write_toml: WriteToml) -> None:
    """A [[datadog]] target with no key from any source is an error naming datadog.0.api_key."""
    lines = problems(config_path=write_toml('[[datadog]]\nname = "dd"\n'))
    assert [line.split(":", 1)[0] for line in lines] == ["datadog.0.api_key", "datadog.0.app_key"]


def test_bad_dd_site(problems: Callable[..., list[str]]) -> None:
    """An unknown DD_SITE is reported at datadog.0.site, naming DD_SITE as the origin."""
    (line,) = problems(environ={"DD_API_KEY": "a", "DD_APP_KEY": "b", "DD_SITE": "example.com"})
    assert line.startswith("datadog.0.site: unknown Datadog site")
    assert line.endswith("(from DD_SITE)")


def test_dd_site_not_checked_with_explicit_url() -> None:
    """With an explicit url the (filled-in) site is not validated."""
    settings = load_settings(
        environ={
            "DD_API_KEY": "a",
            "DD_APP_KEY": "b",
            "DD_SITE": "datad0g.com",
            "BATCHSCOPE_DATADOG": '[{"url": "http://127.0.0.1:8126"}]',
        }
    )
    assert settings.datadog[0].base_url == "http://127.0.0.1:8126"


def test_dd_secret_files(make_secrets: MakeSecrets) -> None:
    """dd_api_key / dd_app_key secret files act like DD_API_KEY / DD_APP_KEY."""
    directory = make_secrets({"dd_api_key": "file-api\n", "dd_app_key": "file-app\n"})
    settings = load_settings(environ={"CREDENTIALS_DIRECTORY": str(directory)})
    (target,) = settings.datadog
    assert (target.name, reveal(target.api_key), reveal(target.app_key)) == (
        "datadog",
        "file-api",
        "file-app",
    )


def test_key_precedence(make_secrets: MakeSecrets) -> None:
    """Target secret file > DD_API_KEY env > dd_api_key file, for targets that set no key."""
    directory = make_secrets(
        {
            "datadog.own.api_key": "own-file",
            "dd_api_key": "generic-file",
            "dd_app_key": "generic-app-file",
        }
    )
    settings = load_settings(
        environ={
            "CREDENTIALS_DIRECTORY": str(directory),
            "DD_API_KEY": "env-key",
            "BATCHSCOPE_DATADOG": '[{"name": "own"}, {"name": "other"}]',
        }
    )
    own, other = settings.datadog
    assert reveal(own.api_key) == "own-file"
    assert reveal(other.api_key) == "env-key"
    assert reveal(own.app_key) == reveal(other.app_key) == "generic-app-file"


def test_target_secret_file_for_default_target(make_secrets: MakeSecrets) -> None:
    """The automatic target "datadog" also takes its datadog.datadog.* secret files."""
    directory = make_secrets({"datadog.datadog.app_key": "own-app"})
    settings = load_settings(
        environ={"CREDENTIALS_DIRECTORY": str(directory), "DD_API_KEY": "env-key"}
    )
    assert reveal(settings.datadog[0].app_key) == "own-app"
