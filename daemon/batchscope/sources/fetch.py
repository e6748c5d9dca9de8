"""One GET, with every way it can go wrong classified into SPEC.md's error reasons."""

from __future__ import annotations

import email.utils
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson

REASONS: Final = (
    "timeout", "connection", "http_4xx", "http_5xx", "rate_limited", "auth", "invalid_response",
)


class PollError(Exception):
    """A failed upstream request; ``reason`` is one of :data:`REASONS`."""

    def __init__(
        self,
        reason: str,
        detail: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        rate_limit: RateLimit | None = None,
    ) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.status = status
        self.retry_after = retry_after
        self.rate_limit = rate_limit


class NotFound(PollError):
    """HTTP 404: the caller decides whether that is an error or an answer.

    ``body`` is the decoded JSON body, or None when it was empty or not JSON: only the
    upstream's own "does not exist" answer means gone, a proxy's 404 does not.
    """

    def __init__(self, detail: str, body: Any = None) -> None:
        super().__init__("http_4xx", detail, status=404)
        self.body = body


def _json_or_none(body: bytes) -> Any:
    try:
        return orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Datadog's ``X-RateLimit-*`` headers of the latest response."""

    limit: int | None
    remaining: int
    reset: float | None  # seconds until the window resets
    period: float | None
    name: str | None


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: Any
    rate_limit: RateLimit | None
    server_time: float | None = None  # the upstream's clock (HTTP Date), epoch seconds


def parse_http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


def ssl_context(verify: bool, ca_file: Path | None) -> ssl.SSLContext | bool:
    if not verify:
        return False
    if ca_file is None:
        return True
    return ssl.create_default_context(cafile=str(ca_file))


def _number(headers: Mapping[str, str], name: str) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if value >= 0 else None


def parse_rate_limit(headers: Mapping[str, str]) -> RateLimit | None:
    remaining = _number(headers, "X-RateLimit-Remaining")
    if remaining is None:
        return None
    limit = _number(headers, "X-RateLimit-Limit")
    return RateLimit(
        limit=int(limit) if limit is not None else None,
        remaining=int(remaining),
        reset=_number(headers, "X-RateLimit-Reset"),
        period=_number(headers, "X-RateLimit-Period"),
        name=headers.get("X-RateLimit-Name"),
    )


def _error_message(body: bytes) -> str:
    """The upstream's own words, from an engine ExceptionDto or a Datadog error list."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode("utf-8", "replace").strip()
    if isinstance(data, dict):
        if isinstance(data.get("message"), str):
            return str(data["message"])
        errors = data.get("errors")
        if isinstance(errors, list) and errors:
            return "; ".join(str(e) for e in errors[:3])
    return ""


async def _read_capped(resp: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    declared = resp.content_length
    if declared is not None and declared > max_bytes:
        raise PollError("invalid_response", f"response of {declared} bytes exceeds {max_bytes}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > max_bytes:
            raise PollError("invalid_response", f"response exceeds {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def get_json(
    session: aiohttp.ClientSession,
    url: str,
    *,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float,
    max_bytes: int,
    ssl_option: ssl.SSLContext | bool = True,
) -> Response:
    """GET ``url`` and decode its JSON body, raising :class:`PollError` on any failure."""
    client_timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=timeout)
    try:
        async with session.get(
            url, params=params, headers=headers, timeout=client_timeout, ssl=ssl_option,
            allow_redirects=False,
        ) as resp:
            rate_limit = parse_rate_limit(resp.headers)
            body = await _read_capped(resp, max_bytes)
            status = resp.status
            content_type = resp.content_type
            resp_headers = resp.headers
    except PollError:
        raise
    except TimeoutError as exc:
        raise PollError("timeout", f"no answer within {timeout:g}s") from exc
    except aiohttp.ClientPayloadError as exc:
        raise PollError("invalid_response", f"truncated body: {exc}") from exc
    except aiohttp.ClientResponseError as exc:
        raise PollError("invalid_response", f"malformed response: {exc.message}") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise PollError("connection", f"{type(exc).__name__}: {exc}") from exc

    if status == 404:
        raise NotFound(_error_message(body) or "not found", _json_or_none(body))
    if status in (401, 403):
        raise PollError("auth", f"HTTP {status} {_error_message(body)}".strip(), status=status)
    if status == 429:
        retry_after = _number(resp_headers, "Retry-After")
        if retry_after is None and rate_limit is not None:
            retry_after = rate_limit.reset
        raise PollError(
            "rate_limited", f"HTTP 429 {_error_message(body)}".strip(),
            status=status, retry_after=retry_after, rate_limit=rate_limit,
        )
    if 400 <= status < 500:
        raise PollError("http_4xx", f"HTTP {status} {_error_message(body)}".strip(),
                        status=status)
    if status >= 500:
        raise PollError("http_5xx", f"HTTP {status} {_error_message(body)}".strip(),
                        status=status)
    if status != 200:
        raise PollError("invalid_response", f"unexpected HTTP {status}", status=status)
    if content_type not in ("application/json", "application/vnd.api+json"):
        raise PollError("invalid_response", f"content type {content_type!r} is not JSON")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PollError("invalid_response", f"malformed JSON: {exc}") from exc
    return Response(status=status, body=data, rate_limit=rate_limit,
                    server_time=parse_http_date(resp_headers.get("Date")))
