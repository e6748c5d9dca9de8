"""Validation rules of the settings models (no sources involved: model_validate)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trustme
from pydantic import ValidationError

from batchscope.settings import (
    DEFAULT_STATE_PATH,
    DatadogTarget,
    EngineTarget,
    HttpSettings,
    Settings,
)

KEYS = {"api_key": "a", "app_key": "b"}


def errors(data: dict[str, Any]) -> list[tuple[str, str]]:
    """Validate *data* as Settings; return ``(dotted loc, message)`` per error."""
    with pytest.raises(ValidationError) as info:
        Settings.model_validate(data)
    return [
        (".".join(str(part) for part in error["loc"]), error["msg"])
        for error in info.value.errors(include_url=False, include_input=False)
    ]


def test_defaults() -> None:
    """With nothing configured every setting has the documented default."""
    settings = Settings.model_validate({})
    assert settings.poll_interval == 10.0
    assert settings.log_format is None
    assert settings.log_level == "info"
    assert settings.state_path == DEFAULT_STATE_PATH == "/var/lib/batchscope/state.db"
    assert settings.retention == 3600.0
    assert settings.max_batch_series == 500
    assert settings.max_tracked_batches == 50000
    assert settings.shutdown_timeout == 5.0
    assert settings.secrets_dir is None
    assert settings.http == HttpSettings()
    assert (settings.http.host, settings.http.port) == ("0.0.0.0", 9847)
    assert settings.http.api_token is None
    assert settings.http.max_body_bytes == 65536
    assert settings.engines == [] and settings.datadog == []


def test_engine_defaults() -> None:
    """An engine needs only name and url; the rest has defaults."""
    engine = EngineTarget.model_validate({"name": "prod", "url": "https://e/engine-rest/"})
    assert engine.url == "https://e/engine-rest"
    assert engine.poll_interval is None
    assert engine.page_size == 500
    assert engine.tenant_ids == []
    assert engine.stall_after == 900.0
    assert engine.verify_tls is True and engine.ca_file is None
    assert engine.request_timeout == 10.0
    assert engine.max_response_bytes == 16 * 1024 * 1024
    assert engine.username is engine.password is engine.bearer_token is None


def test_datadog_defaults() -> None:
    """A datadog target defaults to name "datadog", site datadoghq.com and SPEC timings."""
    target = DatadogTarget.model_validate(KEYS)
    assert target.name == "datadog"
    assert target.site == "datadoghq.com"
    assert target.base_url == "https://api.datadoghq.com"
    assert (target.stall_after, target.not_found_grace, target.request_timeout) == (
        2700.0,
        60.0,
        10.0,
    )
    assert target.max_concurrency == 8
    assert target.max_response_bytes == 16 * 1024 * 1024
    assert target.batch_ids == []


def test_named_engine_url_kept() -> None:
    """An engine URL may end in /engine/{name}; only trailing slashes are removed."""
    engine = EngineTarget(name="p", url="http://h:8080/engine-rest/engine/other//")
    assert engine.url == "http://h:8080/engine-rest/engine/other"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("ftp://h/x", "http:// or https://"),
        ("camunda.example.com", "http:// or https://"),
        ("http://", "host"),
        ("http://user:pw@h/engine-rest", "credentials"),
        ("http://h:99999/", "Invalid URL"),
        ("http://h/engine-rest?x=1", "query"),
    ],
)
def test_bad_engine_urls(url: str, fragment: str) -> None:
    """Non-http(s) URLs, missing hosts, bad ports, credentials and queries are rejected."""
    ((loc, msg),) = errors({"engines": [{"name": "p", "url": url}]})
    assert loc == "engines.0.url"
    assert fragment in msg


@pytest.mark.parametrize("name", ["", "has space", "x" * 65, "a/b", "ü"])
def test_bad_target_names(name: str) -> None:
    """Target names are 1-64 characters of [A-Za-z0-9_.-]."""
    ((loc, msg),) = errors({"engines": [{"name": name, "url": "http://h"}]})
    assert loc == "engines.0.name"
    assert "1 to 64" in msg


def test_target_name_rejects_trailing_newline() -> None:
    """A name with a trailing newline does not slip through the pattern."""
    ((loc, _),) = errors({"engines": [{"name": "prod\n", "url": "http://h"}]})
    assert loc == "engines.0.name"


def test_engine_required_fields() -> None:
    """name and url are required for an engine."""
    assert sorted(loc for loc, _ in errors({"engines": [{}]})) == [
        "engines.0.name",
        "engines.0.url",
    ]


def test_password_needs_username() -> None:
    """A password without username is an error at engines.N.password."""
    assert errors({"engines": [{"name": "p", "url": "http://h", "password": "x"}]}) == [
        ("engines.0.password", "password requires username")
    ]


def test_username_needs_password() -> None:
    """A username without password (e.g. a missing secret file) is an error at password."""
    ((loc, msg),) = errors({"engines": [{"name": "p", "url": "http://h", "username": "u"}]})
    assert loc == "engines.0.password"
    assert "engines.p.password" in msg


def test_bearer_token_excludes_username() -> None:
    """bearer_token and username/password are mutually exclusive."""
    data = {"name": "p", "url": "http://h", "username": "u", "password": "x", "bearer_token": "t"}
    ((loc, msg),) = errors({"engines": [data]})
    assert loc == "engines.0.bearer_token"
    assert "mutually exclusive" in msg


def test_auth_variants_accepted() -> None:
    """Basic auth, bearer token, or no auth are all valid."""
    basic = EngineTarget.model_validate(
        {"name": "a", "url": "http://h", "username": "u", "password": "p"}
    )
    bearer = EngineTarget.model_validate({"name": "b", "url": "http://h", "bearer_token": "t"})
    assert basic.password is not None and basic.password.get_secret_value() == "p"
    assert bearer.bearer_token is not None and bearer.bearer_token.get_secret_value() == "t"


@pytest.mark.parametrize(
    ("field", "value"),
    [("page_size", 0), ("page_size", 10001), ("max_response_bytes", 0)],
)
def test_engine_bounds(field: str, value: int) -> None:
    """page_size is 1..10000 and max_response_bytes positive."""
    ((loc, _),) = errors({"engines": [{"name": "p", "url": "http://h", field: value}]})
    assert loc == f"engines.0.{field}"


def test_ca_file_must_be_a_usable_bundle(tmp_path: Path) -> None:
    """ca_file must name an existing PEM bundle the TLS stack loads (checked at load time,
    not at the first poll)."""
    ((loc, _),) = errors(
        {"engines": [{"name": "p", "url": "http://h", "ca_file": str(tmp_path / "nope.pem")}]}
    )
    assert loc == "engines.0.ca_file"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("x")
    ((loc, msg),) = errors(
        {"datadog": [{"name": "d", "url": "http://h", "api_key": "k-1234", "app_key": "a-1234",
                      "ca_file": str(garbage)}]}
    )
    assert loc == "datadog.0.ca_file" and "CA bundle" in msg
    pem = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(pem))
    engine = EngineTarget(name="p", url="http://h", ca_file=pem)
    assert engine.ca_file == pem


def test_tenant_ids_deduplicated_and_nonempty() -> None:
    """tenant_ids keep order without duplicates; empty strings are rejected."""
    engine = EngineTarget.model_validate(
        {"name": "p", "url": "http://h", "tenant_ids": ["a", "b", "a"]}
    )
    assert engine.tenant_ids == ["a", "b"]
    ((loc, _),) = errors({"engines": [{"name": "p", "url": "http://h", "tenant_ids": [""]}]})
    assert loc == "engines.0.tenant_ids.0"


def test_datadog_keys_required() -> None:
    """A datadog target without keys names datadog.N.api_key and datadog.N.app_key."""
    found = errors({"datadog": [{"name": "dd"}]})
    assert [loc for loc, _ in found] == ["datadog.0.api_key", "datadog.0.app_key"]
    assert "DD_API_KEY" in found[0][1]
    assert "datadog.dd.api_key" in found[0][1]


def test_datadog_site_validated() -> None:
    """site must be one of the 9 Datadog sites (case-insensitive) unless url is given."""
    ((loc, msg),) = errors({"datadog": [{"site": "datadoghq.org", **KEYS}]})
    assert loc == "datadog.0.site"
    assert "datadoghq.eu" in msg
    eu = DatadogTarget.model_validate({"site": "DatadogHQ.EU", **KEYS})
    assert eu.site == "datadoghq.eu"
    assert eu.base_url == "https://api.datadoghq.eu"


def test_datadog_url_wins_over_site() -> None:
    """An explicit url is the base URL, and skips site validation."""
    target = DatadogTarget.model_validate(
        {"site": "localhost", "url": "http://127.0.0.1:8126/", **KEYS}
    )
    assert target.base_url == "http://127.0.0.1:8126"


@pytest.mark.parametrize("batch_id", ["", "a b", "x" * 129, "a/b", "id\n"])
def test_bad_batch_ids(batch_id: str) -> None:
    """batch_ids must match [A-Za-z0-9._:-]{1,128}."""
    ((loc, _),) = errors({"datadog": [{"batch_ids": ["ok-1", batch_id], **KEYS}]})
    assert loc == "datadog.0.batch_ids.1"


def test_batch_ids_deduplicated() -> None:
    """Repeated batch ids are kept once, in order."""
    target = DatadogTarget.model_validate({"batch_ids": ["b:1", "a.2", "b:1"], **KEYS})
    assert target.batch_ids == ["b:1", "a.2"]


@pytest.mark.parametrize("value", [0, 65])
def test_max_concurrency_bounds(value: int) -> None:
    """max_concurrency is 1..64."""
    ((loc, _),) = errors({"datadog": [{"max_concurrency": value, **KEYS}]})
    assert loc == "datadog.0.max_concurrency"


def test_duplicate_target_names() -> None:
    """Names are unique within engines and within datadog; the error names the duplicate."""
    found = errors(
        {
            "engines": [
                {"name": "prod", "url": "http://a"},
                {"name": "test", "url": "http://b"},
                {"name": "prod", "url": "http://c"},
            ],
            "datadog": [{"name": "dd", **KEYS}, {"name": "dd", **KEYS}],
        }
    )
    assert found == [
        ("engines.2.name", "duplicate target name 'prod' (already used by engines.0)"),
        ("datadog.1.name", "duplicate target name 'dd' (already used by datadog.0)"),
    ]


def test_same_name_in_engines_and_datadog_is_fine() -> None:
    """An engine and a datadog target may share a name (the source label tells them apart)."""
    settings = Settings.model_validate(
        {"engines": [{"name": "prod", "url": "http://a"}], "datadog": [{"name": "prod", **KEYS}]}
    )
    assert settings.engines[0].name == settings.datadog[0].name == "prod"


def test_unknown_keys_rejected_everywhere() -> None:
    """extra="forbid" on every model: typos are errors at their dotted path."""
    found = errors(
        {
            "pol_interval": 5,
            "http": {"prot": 1},
            "engines": [{"name": "p", "url": "http://h", "pasword": "x"}],
            "datadog": [{"apikey": "x", **KEYS}],
        }
    )
    assert sorted(loc for loc, _ in found) == [
        "datadog.0.apikey",
        "engines.0.pasword",
        "http.prot",
        "pol_interval",
    ]


@pytest.mark.parametrize(("value", "expected"), [("DEBUG", "debug"), ("Warning", "warning")])
def test_log_level_case_insensitive(value: str, expected: str) -> None:
    """log_level accepts any case and is stored lower-case."""
    assert Settings.model_validate({"log_level": value}).log_level == expected


def test_log_level_and_format_values() -> None:
    """log_level and log_format only take their documented values."""
    assert [loc for loc, _ in errors({"log_level": "trace", "log_format": "xml"})] == [
        "log_format",
        "log_level",
    ]
    assert Settings.model_validate({"log_format": "Console"}).log_format == "console"


@pytest.mark.parametrize(
    ("data", "loc"),
    [
        ({"http": {"port": 0}}, "http.port"),
        ({"http": {"port": 65536}}, "http.port"),
        ({"http": {"max_body_bytes": 0}}, "http.max_body_bytes"),
        ({"http": {"api_token": ""}}, "http.api_token"),
        ({"max_batch_series": -1}, "max_batch_series"),
        ({"max_tracked_batches": 0}, "max_tracked_batches"),
        ({"state_path": ""}, "state_path"),
        ({"secrets_dir": "/nonexistent/batchscope"}, "secrets_dir"),
    ],
)
def test_global_bounds(data: dict[str, Any], loc: str) -> None:
    """Ports, sizes, caps, empty tokens and missing directories are rejected by name."""
    assert [found for found, _ in errors(data)] == [loc]


def test_max_batch_series_zero_allowed() -> None:
    """max_batch_series = 0 disables per-batch series and is valid."""
    assert Settings.model_validate({"max_batch_series": 0}).max_batch_series == 0


def test_interval_for() -> None:
    """interval_for returns the target's own poll_interval, else the global one."""
    settings = Settings.model_validate(
        {
            "poll_interval": 7,
            "engines": [
                {"name": "a", "url": "http://a"},
                {"name": "b", "url": "http://b", "poll_interval": 0.05},
            ],
            "datadog": [{"poll_interval": "5s", **KEYS}],
        }
    )
    assert settings.interval_for(settings.engines[0]) == 7.0
    assert settings.interval_for(settings.engines[1]) == 0.05
    assert settings.interval_for(settings.datadog[0]) == 5.0


def test_secrets_are_secretstr() -> None:
    """Secret fields are SecretStr: repr and str never show the value."""
    settings = Settings.model_validate(
        {
            "http": {"api_token": "tok-abcdef"},
            "datadog": [{"api_key": "key-abcdef", "app_key": "app-abcdef"}],
        }
    )
    text = repr(settings) + str(settings)
    for value in ("tok-abcdef", "key-abcdef", "app-abcdef"):
        assert value not in text
    assert settings.http.api_token is not None
    assert settings.http.api_token.get_secret_value() == "tok-abcdef"
