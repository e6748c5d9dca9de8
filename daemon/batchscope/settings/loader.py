"""The entry points used by the CLI and the daemon: :func:`load_settings`, :func:`redacted_dict`."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pydantic_settings
from pydantic import ValidationError

from .errors import SettingsError
from .models import Settings
from .sources import LoadContext, load_context

__all__ = ["REDACTED", "load_settings", "redacted_dict"]

REDACTED = "**********"
_MIN_SCRUB_LENGTH = 4


def load_settings(
    config_path: str | Path | None = None,
    overrides: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the effective :class:`Settings` or raise :class:`SettingsError`.

    Args:
        config_path: the TOML file (``--config``); ``None`` falls back to ``$BATCHSCOPE_CONFIG``,
            and to no file at all when that is unset.
        overrides: command-line values with dotted keys, e.g. ``{"log_level": "debug",
            "http.port": 9999}``; the highest-precedence source. ``None`` values are skipped
            (an option that was not given), ``-`` in names is read as ``_``.
        environ: the environment to read; ``None`` means ``os.environ``. When given, it is the
            only environment consulted (``BATCHSCOPE_*``, ``DD_*``, ``CREDENTIALS_DIRECTORY``,
            ``STATE_DIRECTORY``, ``BATCHSCOPE_CONFIG``).

    Raises:
        SettingsError: with one line per problem, naming the setting (dotted path), file or
            variable and never a secret value.
    """
    context = LoadContext(
        environ=dict(os.environ if environ is None else environ),
        config_path=Path(config_path) if config_path is not None else None,
    )
    init_kwargs, problems = _nest_overrides(overrides or {})
    if problems:
        raise SettingsError(problems)
    with load_context(context):
        try:
            return Settings(**init_kwargs)
        except ValidationError as exc:
            lines = _validation_problems(exc, context)
        except SettingsError as exc:
            lines = exc.problems
        except pydantic_settings.SettingsError as exc:  # pragma: no cover - defensive
            lines = [f"settings: {exc}"]
    raise SettingsError(_scrub(lines, context.secret_values))


def redacted_dict(settings: Settings) -> dict[str, object]:
    """The effective settings as JSON-serialisable data, every secret shown as ``**********``.

    Unset secrets stay ``None``; ``datadog[*].base_url`` is included.
    """
    data: dict[str, object] = settings.model_dump(mode="json")
    return data


def _nest_overrides(overrides: Mapping[str, object]) -> tuple[dict[str, Any], list[str]]:
    nested: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in overrides.items():
        if value is None:
            continue
        parts = [part.strip().replace("-", "_") for part in str(key).split(".")]
        if not all(parts) or parts[0].startswith("_"):  # "_x" would be a BaseSettings option
            problems.append(f"{key}: invalid setting name")
            continue
        node = nested
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                problems.append(f"{key}: conflicts with the override of {part}")
                break
            node = child
        else:
            node[parts[-1]] = value
    return nested, problems


def _validation_problems(exc: ValidationError, context: LoadContext) -> list[str]:
    lines: list[str] = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = tuple(error["loc"])
        line = f"{'.'.join(str(part) for part in loc) or 'settings'}: {error['msg']}"
        origin = context.describe_origin(loc)
        if origin is not None:
            line += f" (from {origin})"
        if line not in lines:
            lines.append(line)
    return lines


def _scrub(lines: Iterable[str], secrets: Iterable[str]) -> list[str]:
    """Defence in depth: no message should contain a secret, but replace any that does."""
    ordered = sorted((s for s in secrets if len(s) >= _MIN_SCRUB_LENGTH), key=len, reverse=True)
    scrubbed = []
    for line in lines:
        for secret in ordered:
            line = line.replace(secret, REDACTED)
        scrubbed.append(line)
    return scrubbed


def secret_values(settings: Settings) -> list[str]:
    """Every secret value of the settings, in each form a log line could show it: what the
    redaction registry must hide."""
    values = []
    if settings.http.api_token is not None:
        values.append(settings.http.api_token.get_secret_value())
    for e in settings.engines:
        values += [s.get_secret_value() for s in (e.password, e.bearer_token) if s is not None]
        if e.username is not None and e.password is not None:
            # the Authorization header form, should an upstream ever echo it back
            pair = f"{e.username}:{e.password.get_secret_value()}".encode()
            values.append(base64.b64encode(pair).decode())
    for d in settings.datadog:
        values += [s.get_secret_value() for s in (d.api_key, d.app_key) if s is not None]
    return values
