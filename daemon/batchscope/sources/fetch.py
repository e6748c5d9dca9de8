"""One GET, with every way it can go wrong classified into SPEC.md's error reasons.

Nothing an upstream sends is trusted blindly: header numbers that are not finite and
non-negative are ignored, every wait an upstream dictates (``Retry-After``,
``X-RateLimit-Reset``) is capped at :data:`MAX_UPSTREAM_WAIT`, and the upstream's words in
an error are redacted (:mod:`batchscope.redaction`) before they are shortened.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import math
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson

from batchscope.model import ErrorReason
from batchscope.redaction import redact, shorten

REASONS: Final = tuple(ErrorReason)

#: The longest wait an upstream can impose (s), whatever its headers say: the poll
#: backoff's cap. A bigger (or absurd) ``Retry-After``/``X-RateLimit-Reset`` is cut to it.
MAX_UPSTREAM_WAIT: Final = 300.0
#: Characters of an upstream's error text kept in a PollError's detail.
ERROR_TEXT_LIMIT: Final = 200
# Bytes of a non-JSON error body looked at (redacted, then shortened to ERROR_TEXT_LIMIT).
_ERROR_SCAN_BYTES: Final = 16 * 1024


class PollError(Exception):
    """A failed upstream request; ``reason`` is one of :data:`REASONS`."""

    def __init__(
        self,
        reason: ErrorReason | str,
        detail: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        rate_limit: RateLimit | None = None,
        retry_after_capped_from: float | None = None,
    ) -> None:
        detail = redact(detail)  # whoever built it: no secret in a message, log or API
        reason = ErrorReason(reason)  # one vocabulary: an unknown reason is a bug here
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.status = status
        #: seconds to wait before the next request, at most MAX_UPSTREAM_WAIT
        self.retry_after = retry_after
        #: the upstream's own (larger) value when ``retry_after`` was capped
        self.retry_after_capped_from = retry_after_capped_from
        self.rate_limit = rate_limit


class NotFound(PollError):
    """HTTP 404: the caller decides whether that is an error or an answer.

    ``body`` is the decoded JSON body, or None when it was empty or not JSON: only the
    upstream's own "does not exist" answer means gone, a proxy's 404 does not.
    """

    def __init__(self, detail: str, body: Any = None) -> None:
        super().__init__(ErrorReason.HTTP_4XX, detail, status=404)
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
    reset: float | None  # seconds until the window resets, at most MAX_UPSTREAM_WAIT
    period: float | None
    name: str | None
    #: the upstream's own ``X-RateLimit-Reset`` when it exceeded MAX_UPSTREAM_WAIT
    #: (``reset`` then holds the cap): worth one log line, not one per poll
    capped_from: float | None = None


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: Any
    rate_limit: RateLimit | None
    server_time: float | None = None  # the upstream's clock (HTTP Date), epoch seconds


def parse_http_date(value: str | None) -> float | None:
    """An HTTP-date as epoch seconds (GMT when the zone is missing), None if unreadable."""
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        stamp = when.timestamp()
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    return stamp if math.isfinite(stamp) else None


def ssl_context(verify: bool, ca_file: Path | None) -> ssl.SSLContext | bool:
    if not verify:
        return False
    if ca_file is None:
        return True
    return ssl.create_default_context(cafile=str(ca_file))


def _number(headers: Mapping[str, str], name: str) -> float | None:
    """A header's finite, non-negative number; None for anything else (NaN, inf, -1, junk)."""
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _capped(value: float | None) -> tuple[float | None, float | None]:
    """(the wait to honour, the upstream's value if it was cut to MAX_UPSTREAM_WAIT)."""
    if value is None or value <= MAX_UPSTREAM_WAIT:
        return value, None
    return MAX_UPSTREAM_WAIT, value


def _count(value: float | None) -> int | None:
    # Finite by construction; an absurdly large count is still a (large) int, never an error.
    return None if value is None else int(value)


def parse_rate_limit(headers: Mapping[str, str]) -> RateLimit | None:
    remaining = _number(headers, "X-RateLimit-Remaining")
    if remaining is None:
        return None
    reset, capped_from = _capped(_number(headers, "X-RateLimit-Reset"))
    return RateLimit(
        limit=_count(_number(headers, "X-RateLimit-Limit")),
        remaining=int(remaining),
        reset=reset,
        period=_number(headers, "X-RateLimit-Period"),
        name=headers.get("X-RateLimit-Name"),
        capped_from=capped_from,
    )


def parse_retry_after(value: str | None, *, date: str | None = None,
                      now: float | None = None) -> float | None:
    """``Retry-After`` in seconds, uncapped: delta-seconds, or an HTTP-date taken relative
    to the response's ``Date`` (``date``) when it has one, else to ``now``. A date in the
    past is 0; anything unreadable, negative or not finite is None."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text[0].isdigit() or text[0] in "+-.":
        return _number({"v": text}, "v")
    when = parse_http_date(text)
    if when is None:
        return None
    base = parse_http_date(date)
    if base is None:
        base = time.time() if now is None else now
    return max(0.0, when - base)


def _body_text(body: bytes) -> tuple[str, bool]:
    """The start of a body as text, and whether it was cut."""
    cut = len(body) > _ERROR_SCAN_BYTES
    text = body[:_ERROR_SCAN_BYTES].decode("utf-8", "replace")
    if cut:
        text = text.rstrip("\ufffd")  # a character split by the cut
    return text.strip(), cut


def _error_message(body: bytes) -> str:
    """The upstream's own words (an engine ExceptionDto, a Datadog error list, or the
    start of any other body), redacted, then cut to ERROR_TEXT_LIMIT with "…"."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text, cut = _body_text(body)
        return shorten(text, ERROR_TEXT_LIMIT, truncated=cut)
    message = ""
    if isinstance(data, dict):
        if isinstance(data.get("message"), str):
            message = str(data["message"])
        else:
            errors = data.get("errors")
            if isinstance(errors, list) and errors:
                message = "; ".join(str(e) for e in errors[:3])
    elif isinstance(data, str):
        message = data
    cut = len(message) > _ERROR_SCAN_BYTES
    return shorten(message[:_ERROR_SCAN_BYTES].strip(), ERROR_TEXT_LIMIT, truncated=cut)


async def _read_capped(resp: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    declared = resp.content_length
    if declared is not None and declared > max_bytes:
        raise PollError(ErrorReason.INVALID_RESPONSE,
                        f"response of {declared} bytes exceeds {max_bytes}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > max_bytes:
            raise PollError(ErrorReason.INVALID_RESPONSE, f"response exceeds {max_bytes} bytes")
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
    decode: Callable[[bytes], Any] = orjson.loads,
) -> Response:
    """GET ``url`` and decode its JSON body, raising :class:`PollError` on any failure.

    ``decode`` turns a 200 body into ``Response.body`` (``orjson.loads`` by default; it
    may raise ``orjson.JSONDecodeError`` or :class:`PollError`).
    """
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
        raise PollError(ErrorReason.TIMEOUT, f"no answer within {timeout:g}s") from exc
    except aiohttp.ClientPayloadError as exc:
        raise PollError(ErrorReason.INVALID_RESPONSE, f"truncated body: {exc}") from exc
    except aiohttp.ClientResponseError as exc:
        raise PollError(ErrorReason.INVALID_RESPONSE, f"malformed response: {exc.message}") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise PollError(ErrorReason.CONNECTION, f"{type(exc).__name__}: {exc}") from exc

    if status == 404:
        raise NotFound(_error_message(body) or "not found", _json_or_none(body))
    if status in (401, 403):
        raise PollError(ErrorReason.AUTH, f"HTTP {status} {_error_message(body)}".strip(),
                        status=status)
    if status == 429:
        retry_after, capped_from = _capped(parse_retry_after(
            resp_headers.get("Retry-After"), date=resp_headers.get("Date")))
        if retry_after is None and rate_limit is not None:
            retry_after, capped_from = rate_limit.reset, rate_limit.capped_from
        raise PollError(ErrorReason.RATE_LIMITED, f"HTTP 429 {_error_message(body)}".strip(),
            status=status, retry_after=retry_after, rate_limit=rate_limit,
            retry_after_capped_from=capped_from,
        )
    if 400 <= status < 500:
        raise PollError(ErrorReason.HTTP_4XX, f"HTTP {status} {_error_message(body)}".strip(),
                        status=status)
    if status >= 500:
        raise PollError(ErrorReason.HTTP_5XX, f"HTTP {status} {_error_message(body)}".strip(),
                        status=status)
    if status != 200:
        raise PollError(ErrorReason.INVALID_RESPONSE, f"unexpected HTTP {status}", status=status)
    if content_type not in ("application/json", "application/vnd.api+json"):
        raise PollError(ErrorReason.INVALID_RESPONSE, f"content type {content_type!r} is not JSON")
    try:
        data = decode(body)
    except orjson.JSONDecodeError as exc:
        raise PollError(ErrorReason.INVALID_RESPONSE, f"malformed JSON: {exc}") from exc
    return Response(status=status, body=data, rate_limit=rate_limit,
                    server_time=parse_http_date(resp_headers.get("Date")))
