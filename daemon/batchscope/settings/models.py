"""The settings models: :class:`Settings` and its parts.

All models forbid unknown keys and hide inputs in their error messages. Use
:func:`batchscope.settings.load_settings` to build :class:`Settings` from the command line,
the environment, a TOML file and secret files. ``Settings(**values)`` and
``Settings.model_validate(values)`` validate exactly the values given and read no environment,
file or secret (handy in tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    DirectoryPath,
    Field,
    ValidationError,
    computed_field,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from batchscope.tracker.links import datadog_app_url

from .fields import (
    DATADOG_SITES,
    BatchId,
    CaBundle,
    Duration,
    HttpUrlStr,
    NonEmptySecret,
    TargetName,
)
from .sources import LayeredSettingsSource

__all__ = [
    "DEFAULT_STATE_PATH",
    "ENV_PREFIX",
    "MAX_RESPONSE_BYTES_DEFAULT",
    "DatadogTarget",
    "EngineTarget",
    "HttpSettings",
    "Settings",
    "Target",
]

ENV_PREFIX = "BATCHSCOPE_"
DEFAULT_STATE_PATH = "/var/lib/batchscope/state.db"
MAX_RESPONSE_BYTES_DEFAULT = 16 * 1024 * 1024

_MODEL_CONFIG = ConfigDict(extra="forbid", hide_input_in_errors=True)


def _raise_field_errors(title: str, problems: list[tuple[tuple[str | int, ...], str, str]]) -> None:
    """Raise one ValidationError with an entry per ``(loc, type, message)``.

    Raised from a model validator, pydantic prefixes each ``loc`` with the model's own
    location, so a problem is reported at e.g. ``engines.0.password`` rather than ``engines.0``.
    """
    if problems:
        details = [
            InitErrorDetails(type=PydanticCustomError(kind, message), loc=loc, input=None)
            for loc, kind, message in problems
        ]
        raise ValidationError.from_exception_data(title, details)


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


class HttpSettings(BaseModel):
    """The HTTP server (``/metrics``, health checks, the JSON API)."""

    model_config = _MODEL_CONFIG

    host: str = Field(default="0.0.0.0", min_length=1)  # noqa: S104 - a daemon's listen address
    port: int = Field(default=9847, ge=1, le=65535)
    api_token: NonEmptySecret | None = None
    """Bearer token for the write endpoints; with none they answer 403."""
    max_body_bytes: int = Field(default=65536, ge=1)
    """Largest accepted API request body."""


class EngineTarget(BaseModel):
    """One Camunda 7 / Operaton / CIB seven engine (a ``[[engines]]`` table)."""

    model_config = _MODEL_CONFIG

    name: TargetName
    url: HttpUrlStr
    """REST base, e.g. ``https://host/engine-rest`` or ``.../engine-rest/engine/{name}``."""
    username: str | None = Field(default=None, min_length=1)
    password: NonEmptySecret | None = None
    bearer_token: NonEmptySecret | None = None
    poll_interval: Duration | None = None
    """``None`` inherits the global ``poll_interval``."""
    page_size: int = Field(default=500, ge=1, le=10000)
    tenant_ids: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    stall_after: Duration = 900.0
    verify_tls: bool = True
    ca_file: CaBundle | None = None
    cockpit_url: HttpUrlStr | None = None
    """Cockpit's base, e.g. https://camunda.example.com/camunda/app/cockpit/default: batch
    links in events, the API and the status page."""
    request_timeout: Duration = 10.0
    max_response_bytes: int = Field(default=MAX_RESPONSE_BYTES_DEFAULT, ge=1)
    diagnosis_sample: int = Field(default=50, ge=1, le=1000)
    """Failed jobs (or results) read to explain a failure."""
    diagnosis_lookups: int = Field(default=20, ge=0, le=1000)
    """Diagnosis lookups per poll cycle at most; the rest wait for later cycles."""

    @field_validator("tenant_ids")
    @classmethod
    def _dedupe_tenants(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _check_auth(self) -> Self:
        problems: list[tuple[tuple[str | int, ...], str, str]] = []
        if self.password is not None and self.username is None:
            problems.append((("password",), "auth", "password requires username"))
        if self.username is not None and self.password is None:
            problems.append(
                (
                    ("password",),
                    "auth",
                    "username is set but password is missing (set it here, in the environment "
                    f"or in the secret file engines.{self.name}.password)",
                )
            )
        if self.bearer_token is not None and self.username is not None:
            problems.append(
                (
                    ("bearer_token",),
                    "auth",
                    "bearer_token and username/password are mutually exclusive",
                )
            )
        _raise_field_errors("EngineTarget", problems)
        return self


class DatadogTarget(BaseModel):
    """One Datadog organisation to poll Synthetics CI batches from (a ``[[datadog]]`` table)."""

    model_config = _MODEL_CONFIG

    name: TargetName = "datadog"
    site: Annotated[str | None, BeforeValidator(_lower)] = None
    """A Datadog site (``DD_SITE``); ``None`` is filled from DD_SITE, else ``datadoghq.com``."""
    url: HttpUrlStr | None = None
    """Explicit API base URL (tests, proxies); wins over ``site``."""
    api_key: NonEmptySecret | None = None
    app_key: NonEmptySecret | None = None
    poll_interval: Duration | None = None
    batch_ids: list[BatchId] = Field(default_factory=list)
    stall_after: Duration = 2700.0
    not_found_grace: Duration = 60.0
    request_timeout: Duration = 10.0
    max_response_bytes: int = Field(default=MAX_RESPONSE_BYTES_DEFAULT, ge=1)
    diagnosis_sample: int = Field(default=50, ge=1, le=1000)
    """Failed jobs (or results) read to explain a failure."""
    diagnosis_lookups: int = Field(default=20, ge=0, le=1000)
    """Diagnosis lookups per poll cycle at most; the rest wait for later cycles."""
    max_concurrency: int = Field(default=8, ge=1, le=64)
    verify_tls: bool = True
    ca_file: CaBundle | None = None
    app_url: HttpUrlStr | None = None
    """The Datadog web app for links (default https://app.<site>)."""

    @field_validator("batch_ids")
    @classmethod
    def _dedupe_batch_ids(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _check_site_and_keys(self) -> Self:
        if self.site is None:
            self.site = DATADOG_SITES[0]
        problems: list[tuple[tuple[str | int, ...], str, str]] = []
        if self.url is None and self.site not in DATADOG_SITES:
            problems.append(
                (
                    ("site",),
                    "datadog_site",
                    "unknown Datadog site; expected one of "
                    + ", ".join(DATADOG_SITES)
                    + " (or set url to an explicit API base URL)",
                )
            )
        for key, env in (("api_key", "DD_API_KEY"), ("app_key", "DD_APP_KEY")):
            if getattr(self, key) is None:
                problems.append(
                    (
                        (key,),
                        "missing",
                        f"required: set {key}, the {env} environment variable, or the secret "
                        f"file datadog.{self.name}.{key} (or {env.lower()})",
                    )
                )
        _raise_field_errors("DatadogTarget", problems)
        return self

    @property
    def app_base_url(self) -> str:
        """Where links point: ``app_url`` when set, else the site's web app as datadog-ci
        derives it (``https://app.datadoghq.com``, ``https://us3.datadoghq.com``, ...)."""
        return (self.app_url if self.app_url is not None
                else datadog_app_url(self.site or DATADOG_SITES[0]))

    @computed_field  # type: ignore[prop-decorator]
    @property
    def base_url(self) -> str:
        """The API base URL: ``url`` when set, else ``https://api.<site>``."""
        return self.url if self.url is not None else f"https://api.{self.site or DATADOG_SITES[0]}"


Target = EngineTarget | DatadogTarget


def _duplicate_names(
    section: str, targets: Sequence[Target]
) -> list[tuple[tuple[str | int, ...], str, str]]:
    problems: list[tuple[tuple[str | int, ...], str, str]] = []
    first_index: dict[str, int] = {}
    for index, target in enumerate(targets):
        if target.name in first_index:
            problems.append(
                (
                    (section, index, "name"),
                    "duplicate_name",
                    f"duplicate target name {target.name!r} "
                    f"(already used by {section}.{first_index[target.name]})",
                )
            )
        else:
            first_index[target.name] = index
    return problems


class Settings(BaseSettings):
    """Everything batchscope can be configured with (see SPEC "Configuration")."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        env_ignore_empty=True,
        case_sensitive=False,
        extra="forbid",
        hide_input_in_errors=True,
        validate_default=True,
    )

    poll_interval: Duration = 10.0
    """Default poll interval for every target."""
    log_format: Annotated[Literal["json", "console"] | None, BeforeValidator(_lower)] = None
    """``None``: JSON unless stdout is a TTY (resolved by the logging setup)."""
    log_level: Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)] = (
        "info"
    )
    state_path: str = Field(default=DEFAULT_STATE_PATH, min_length=1)
    """SQLite file; ``":memory:"`` disables persistence. The loader defaults it to
    ``$STATE_DIRECTORY/state.db`` under systemd."""
    retention: Duration = 3600.0
    max_batch_series: int = Field(default=500, ge=0)
    max_tracked_batches: int = Field(default=50000, ge=1)
    shutdown_timeout: Duration = 5.0
    secrets_dir: DirectoryPath | None = None
    http: HttpSettings = Field(default_factory=HttpSettings)
    engines: list[EngineTarget] = Field(default_factory=list)
    datadog: list[DatadogTarget] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_unique_names(self) -> Self:
        problems = _duplicate_names("engines", self.engines)
        problems += _duplicate_names("datadog", self.datadog)
        _raise_field_errors("Settings", problems)
        return self

    def interval_for(self, target: Target) -> float:
        """The poll interval of *target* in seconds (its own, else the global one)."""
        return target.poll_interval if target.poll_interval is not None else self.poll_interval

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Replace the stock sources with batchscope's layered source.

        ``init_settings`` (the command-line overrides passed by :func:`load_settings`) stays the
        highest layer; the stock env/dotenv/secrets sources are not used: the layered source
        reads the environment given to the loader, the TOML file and the secret files itself.
        """
        return (LayeredSettingsSource(settings_cls, init_settings),)
