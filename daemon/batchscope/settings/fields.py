"""Field types and validators shared by the settings models.

Every validator raises :class:`pydantic_core.PydanticCustomError` with a message that
describes what is expected and never repeats the rejected input (it may be a secret).
"""

from __future__ import annotations

import math
import re
import ssl
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, FilePath, SecretStr
from pydantic_core import PydanticCustomError

from batchscope.model import BATCH_ID_PATTERN, BATCH_ID_RULE, is_valid_batch_id

__all__ = [
    "BATCH_ID_PATTERN",
    "DATADOG_SITES",
    "MAX_DURATION_SECONDS",
    "TARGET_NAME_PATTERN",
    "BatchId",
    "CaBundle",
    "Duration",
    "HttpUrlStr",
    "NonEmptySecret",
    "TargetName",
    "parse_duration",
]

TARGET_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
"""A target name (the ``target`` label); matched with ``fullmatch``."""

DATADOG_SITES: tuple[str, ...] = (
    "datadoghq.com",
    "us3.datadoghq.com",
    "us5.datadoghq.com",
    "datadoghq.eu",
    "ap1.datadoghq.com",
    "ap2.datadoghq.com",
    "ddog-gov.com",
    "us2.ddog-gov.com",
    "uk1.datadoghq.com",
)
"""The Datadog sites (``DD_SITE`` values); the API base URL is ``https://api.<site>``."""

MAX_DURATION_SECONDS = 366 * 24 * 3600.0
"""Upper bound for any duration: larger values overflow event-loop timers."""

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_RE = re.compile(r"(?:\s*(?:\d+(?:\.\d*)?|\.\d+)\s*(?:ms|s|m|h))+\s*", re.IGNORECASE)
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)", re.IGNORECASE)
_DURATION_HELP = (
    "expected a number of seconds (e.g. 30 or 0.5) or a number with a unit "
    "ms, s, m or h (e.g. '500ms', '30s', '5m', '1h30m')"
)


def parse_duration(value: Any) -> float:
    """Return *value* as a positive, finite number of seconds.

    Accepts ints, floats and strings: a plain number (``"30"``, ``"0.05"``) means seconds,
    otherwise one or more number+unit parts (``"500ms"``, ``"1.5s"``, ``"5m"``, ``"1h30m"``).
    Rejects booleans, zero, negatives, infinities and anything else.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise PydanticCustomError("duration_type", "Invalid duration: " + _DURATION_HELP)
    if isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            if not _DURATION_RE.fullmatch(text):
                raise PydanticCustomError(
                    "duration_parsing", "Invalid duration: " + _DURATION_HELP
                ) from None
            seconds = sum(
                float(number) * _DURATION_UNITS[unit.lower()]
                for number, unit in _DURATION_PART_RE.findall(text)
            )
    else:
        seconds = float(value)
    if math.isnan(seconds) or seconds <= 0:
        raise PydanticCustomError("duration_positive", "Duration must be greater than 0 seconds")
    if seconds > MAX_DURATION_SECONDS:
        raise PydanticCustomError("duration_too_long", "Duration must be at most 366 days")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Seconds as a float > 0; see :func:`parse_duration` for the accepted inputs."""


def _check_target_name(value: str) -> str:
    if not TARGET_NAME_PATTERN.fullmatch(value):
        raise PydanticCustomError(
            "target_name",
            "Target name must be 1 to 64 characters from A-Z a-z 0-9 _ . -",
        )
    return value


TargetName = Annotated[str, AfterValidator(_check_target_name)]


def _check_batch_id(value: str) -> str:
    if not is_valid_batch_id(value):
        raise PydanticCustomError("batch_id", f"Batch id must {BATCH_ID_RULE}")
    return value


BatchId = Annotated[str, AfterValidator(_check_batch_id)]


def _check_http_url(value: str) -> str:
    """Validate an http(s) base URL and return it without trailing slashes."""
    text = value.strip()
    try:
        parts = urlsplit(text)
        port = parts.port  # raises ValueError for a non-numeric or out-of-range port
    except ValueError:
        raise PydanticCustomError("url_parsing", "Invalid URL") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise PydanticCustomError("url_scheme", "URL must start with http:// or https://")
    if "@" in parts.netloc:
        raise PydanticCustomError(
            "url_userinfo",
            "URL must not contain credentials; use the username/password, "
            "bearer_token or api_key/app_key settings",
        )
    if not parts.hostname:
        raise PydanticCustomError("url_host", "URL must contain a host name")
    if port == 0:
        raise PydanticCustomError("url_parsing", "Invalid URL")
    if parts.query or parts.fragment or "?" in text or "#" in text:
        raise PydanticCustomError("url_query", "URL must not contain a query string or fragment")
    return text.rstrip("/")


HttpUrlStr = Annotated[str, AfterValidator(_check_http_url)]
"""An http:// or https:// URL kept as a plain string, without trailing slash."""


def _check_secret_not_empty(value: SecretStr) -> SecretStr:
    if not value.get_secret_value():
        raise PydanticCustomError("secret_empty", "Secret must not be empty")
    return value


NonEmptySecret = Annotated[SecretStr, AfterValidator(_check_secret_not_empty)]


def _check_ca_bundle(path: Path) -> Path:
    """Load the bundle now: a file that is not one would otherwise pass check-config and
    only break the first poll (or a reload)."""
    try:
        ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        raise PydanticCustomError(
            "ca_file_unusable", "Not a usable CA bundle (PEM): {reason}", {"reason": reason}
        ) from None
    return path


CaBundle = Annotated[FilePath, AfterValidator(_check_ca_bundle)]
"""An existing PEM file of CA certificates that the TLS stack accepts."""
