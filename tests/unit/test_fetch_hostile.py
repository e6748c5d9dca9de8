"""sources/fetch.py against hostile or broken upstreams (issue 9, items 2 and 8).

A real aiohttp server on loopback answers each request with the status, headers and body
the test scripts; ``get_json`` talks to it over real HTTP.
"""

from __future__ import annotations

import base64
import email.utils
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from batchscope import redaction
from batchscope.sources.fetch import (
    ERROR_TEXT_LIMIT,
    MAX_UPSTREAM_WAIT,
    PollError,
    Response,
    get_json,
    parse_rate_limit,
    parse_retry_after,
)

API_KEY = "0123456789abcdef0123456789ABCDEF"  # 32 characters, like a Datadog API key


@dataclass
class Scripted:
    """What the fake upstream answers next."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"{}"
    content_type: str = "application/json"


@dataclass
class Upstream:
    url: str
    answer: Scripted


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    """A loopback HTTP server answering every GET with ``upstream.answer``."""
    state = Upstream(url="", answer=Scripted())

    async def handle(_: web.Request) -> web.Response:
        a = state.answer
        resp = web.Response(status=a.status, body=a.body, headers=a.headers)
        resp.content_type = a.content_type
        return resp

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.url = f"http://127.0.0.1:{site.port}/x"
    try:
        yield state
    finally:
        await runner.cleanup()


@pytest.fixture
def secrets() -> Iterator[None]:
    """The API key is a registered secret for the test, and only for it."""
    redaction.reset([API_KEY])
    try:
        yield
    finally:
        redaction.reset()


@pytest.fixture
def no_secrets() -> Iterator[None]:
    """Nothing registered: what is hidden is hidden by its shape alone."""
    redaction.reset()
    yield
    redaction.reset()


async def fetch(up: Upstream, answer: Scripted) -> Response:
    up.answer = answer
    async with aiohttp.ClientSession() as session:
        return await get_json(session, up.url, timeout=5, max_bytes=1 << 20)


async def fetch_error(up: Upstream, answer: Scripted) -> PollError:
    with pytest.raises(PollError) as info:
        await fetch(up, answer)
    return info.value


def leaked(secret: str, text: str, size: int = 4) -> list[str]:
    """Every piece of ``secret`` of ``size`` characters that ``text`` shows."""
    pieces = {secret[i:i + size] for i in range(len(secret) - size + 1)}
    return sorted(p for p in pieces if p in text)


# --------------------------------------------------------------- item 2: unbounded waits


@pytest.mark.parametrize("value", ["1000000000", "1e9", "86400"])
async def test_huge_retry_after_is_capped_and_reported(upstream: Upstream, value: str) -> None:
    """One 429 with an absurd Retry-After no longer parks the target for good: the wait is
    capped at MAX_UPSTREAM_WAIT and the upstream's value is kept for one log line."""
    error = await fetch_error(upstream, Scripted(429, {"Retry-After": value}))
    assert error.reason == "rate_limited"
    assert error.retry_after == MAX_UPSTREAM_WAIT == 300.0
    assert error.retry_after_capped_from == float(value)


async def test_reasonable_retry_after_is_kept_and_not_marked(upstream: Upstream) -> None:
    """A Retry-After under the cap is honoured as is, with nothing to report."""
    error = await fetch_error(upstream, Scripted(429, {"Retry-After": "7"}))
    assert error.retry_after == 7.0
    assert error.retry_after_capped_from is None


@pytest.mark.parametrize("value", ["inf", "Infinity", "-inf", "nan", "NaN", "-1", "soon", "",
                                   "1e400", "0x10"])
async def test_unusable_retry_after_is_ignored(upstream: Upstream, value: str) -> None:
    """Non-finite, negative or garbage Retry-After values are ignored (no wait from them),
    never turned into an endless or a negative wait."""
    error = await fetch_error(upstream, Scripted(429, {"Retry-After": value}))
    assert error.reason == "rate_limited"
    assert error.retry_after is None
    assert error.retry_after_capped_from is None


async def test_retry_after_http_date_is_relative_to_the_response_date(
    upstream: Upstream,
) -> None:
    """The HTTP-date form counts from the response's own Date header (the upstream's
    clock), not from ours: here 60 s, although 2015 is long past for our clock."""
    error = await fetch_error(upstream, Scripted(429, {
        "Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT",
        "Date": "Wed, 21 Oct 2015 07:27:00 GMT",
    }))
    assert error.retry_after == 60.0
    assert error.retry_after_capped_from is None


async def test_retry_after_http_date_far_ahead_is_capped(upstream: Upstream) -> None:
    """An HTTP-date ten days after the response's Date waits MAX_UPSTREAM_WAIT, and says
    how long the upstream asked for."""
    error = await fetch_error(upstream, Scripted(429, {
        "Retry-After": "Sat, 31 Oct 2015 07:27:00 GMT",
        "Date": "Wed, 21 Oct 2015 07:27:00 GMT",
    }))
    assert error.retry_after == MAX_UPSTREAM_WAIT
    assert error.retry_after_capped_from == 10 * 86400.0


def test_retry_after_http_date_without_date_header_counts_from_now() -> None:
    """Without a (readable) Date header the HTTP-date counts from now; a past date means
    no wait, a malformed one is ignored."""
    now = 1_700_000_000.0
    ahead = email.utils.formatdate(now + 90, usegmt=True)
    assert parse_retry_after(ahead, now=now) == 90.0
    assert parse_retry_after(email.utils.formatdate(now - 90, usegmt=True), now=now) == 0.0
    assert parse_retry_after("Wed, 99 Foo 2015 07:28:00 GMT", now=now) is None
    assert parse_retry_after(ahead, date="not a date", now=now) == 90.0


async def test_rate_limit_reset_on_a_200_is_capped(upstream: Upstream) -> None:
    """X-RateLimit-Remaining: 0 with a reset a billion seconds away no longer stops polling
    silently: the reset is capped and carries the upstream's value for the poller's log."""
    response = await fetch(upstream, Scripted(200, {
        "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1000000000",
        "X-RateLimit-Limit": "1000", "X-RateLimit-Period": "60",
    }))
    rl = response.rate_limit
    assert rl is not None
    assert (rl.remaining, rl.limit, rl.period) == (0, 1000, 60.0)
    assert rl.reset == MAX_UPSTREAM_WAIT
    assert rl.capped_from == 1e9


async def test_429_without_retry_after_uses_the_capped_reset(upstream: Upstream) -> None:
    """A 429 whose only hint is X-RateLimit-Reset waits the capped reset, and reports it."""
    error = await fetch_error(upstream, Scripted(429, {
        "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "99999999"}))
    assert error.retry_after == MAX_UPSTREAM_WAIT
    assert error.retry_after_capped_from == 99999999.0
    assert error.rate_limit is not None and error.rate_limit.capped_from == 99999999.0


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e400", "-1", "many"])
async def test_non_finite_remaining_never_raises(upstream: Upstream, value: str) -> None:
    """X-RateLimit-Remaining: inf used to raise OverflowError on every poll; now such a
    value is ignored (no rate-limit information) and the poll succeeds."""
    response = await fetch(upstream, Scripted(200, {"X-RateLimit-Remaining": value}))
    assert response.body == {}
    assert response.rate_limit is None


@pytest.mark.parametrize("value", ["inf", "nan", "-5", "x"])
def test_non_finite_limit_reset_and_period_are_dropped(value: str) -> None:
    """Each other rate-limit header with an unusable value is None; the usable ones stay."""
    rl = parse_rate_limit({"X-RateLimit-Remaining": "12", "X-RateLimit-Limit": value,
                           "X-RateLimit-Reset": value, "X-RateLimit-Period": value})
    assert rl is not None
    assert (rl.remaining, rl.limit, rl.reset, rl.period, rl.capped_from) == (
        12, None, None, None, None)


def test_huge_finite_remaining_is_an_int() -> None:
    """A finite but absurd remaining count is converted without error."""
    rl = parse_rate_limit({"X-RateLimit-Remaining": "1e300"})
    assert rl is not None and rl.remaining == int(1e300)


# ---------------------------------------------------- item 8: secrets cut before redaction


@pytest.mark.usefixtures("secrets")
async def test_api_key_echoed_after_filler_is_not_leaked_by_the_cut(upstream: Upstream) -> None:
    """A 403 body echoing the API key after 184 bytes of filler: the old cut at 200 bytes
    kept 16 of its 32 characters. Now no 4-character piece of it is shown, and the cut is
    marked."""
    body = b"x" * 184 + API_KEY.encode() + b" is not a valid key" + b"!" * 300
    error = await fetch_error(upstream, Scripted(403, body=body, content_type="text/plain"))
    assert error.reason == "auth"
    assert leaked(API_KEY, error.detail) == []
    assert redaction.REDACTED in error.detail
    assert error.detail.endswith("…")
    assert len(error.detail) <= len("HTTP 403 ") + ERROR_TEXT_LIMIT + 1


@pytest.mark.usefixtures("secrets")
async def test_api_key_in_a_json_message_is_redacted(upstream: Upstream) -> None:
    """The engine/Datadog error message itself (decoded JSON) is redacted too."""
    body = b'{"message": "' + b"y" * 190 + b" key " + API_KEY.encode() + b'"}'
    error = await fetch_error(upstream, Scripted(401, body=body))
    assert leaked(API_KEY, error.detail) == []
    assert error.detail.startswith("HTTP 401 yyyy")


@pytest.mark.usefixtures("secrets")
async def test_key_fragment_left_by_the_upstreams_own_cut_is_redacted(
    upstream: Upstream,
) -> None:
    """An upstream that cut its echo mid-key leaves a prefix of the key at the end of the
    body: that tail is hidden as well."""
    body = b"invalid api key: " + API_KEY[:13].encode()
    error = await fetch_error(upstream, Scripted(403, body=body, content_type="text/plain"))
    assert leaked(API_KEY, error.detail) == []
    assert error.detail == f"HTTP 403 invalid api key: {redaction.REDACTED}"


@pytest.mark.usefixtures("secrets")
async def test_long_body_cut_mid_key_leaves_no_fragment(upstream: Upstream) -> None:
    """A body longer than what is scanned, with the key straddling the scan limit: the
    piece of it inside the scanned part is hidden."""
    body = b"z" * (16 * 1024 - 10) + API_KEY.encode() + b"tail" * 10
    error = await fetch_error(upstream, Scripted(500, body=body, content_type="text/html"))
    assert error.reason == "http_5xx"
    assert leaked(API_KEY, error.detail) == []
    assert error.detail.endswith("…")


@pytest.mark.usefixtures("no_secrets")
async def test_echoed_basic_authorization_is_redacted_even_unregistered(
    upstream: Upstream,
) -> None:
    """A 401 echoing the request's Authorization header: the old cut kept a Basic value
    that decoded to the user and most of the password. Now the credentials never survive,
    registered or not."""
    token = base64.b64encode(b"monitor:correct-horse-battery").decode()
    body = (b"-" * 130 + b"\nrequest headers: Authorization: Basic " + token.encode()
            + b"\nAccept: application/json\n")
    error = await fetch_error(upstream, Scripted(401, body=body, content_type="text/plain"))
    assert leaked(token, error.detail) == []
    assert "Basic " + redaction.REDACTED in error.detail


@pytest.mark.usefixtures("no_secrets")
async def test_echoed_bearer_token_in_json_is_redacted(upstream: Upstream) -> None:
    """A JSON error echoing a Bearer token shows the scheme, never the token."""
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtb25pdG9yIn0.c2lnbmF0dXJl"
    body = b'{"message": "token rejected: Authorization: Bearer ' + jwt.encode() + b'"}'
    error = await fetch_error(upstream, Scripted(403, body=body))
    assert leaked(jwt, error.detail, 6) == []
    assert error.detail == f"HTTP 403 token rejected: Authorization: Bearer {redaction.REDACTED}"


@pytest.mark.usefixtures("secrets")
def test_poll_error_detail_is_redacted_whoever_builds_it() -> None:
    """A PollError built anywhere (a parser, a connection error) never holds a secret."""
    error = PollError("connection", f"cannot reach https://u:{API_KEY}@example.com")
    assert API_KEY not in error.detail and API_KEY not in str(error)


@pytest.mark.usefixtures("no_secrets")
async def test_short_error_text_is_shown_whole(upstream: Upstream) -> None:
    """An error text that fits is shown as the upstream wrote it, without an ellipsis."""
    error = await fetch_error(upstream, Scripted(404, body=b'{"message": "Historic batch '
                                                         b"with id 'b1' does not exist\"}"))
    assert error.detail == "Historic batch with id 'b1' does not exist"
