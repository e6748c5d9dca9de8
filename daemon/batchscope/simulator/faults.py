"""Fault injection and request recording shared by the fake upstream APIs.

Both fakes install :meth:`FaultInjector.middleware` as their outermost aiohttp middleware, so a
test can make the *next* matching request fail in a realistic way (an error status, a slow answer,
a malformed or truncated body) without mocking the HTTP client, and can assert afterwards on what
the daemon actually sent.

Hostile upstreams too: one that ignores ``firstResult`` and serves the same page again
(``ignore_first_result``), a list that never ends (``endless``), headers that override the
fake's own, its HTTP ``Date`` included (``headers``).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict

#: Builds row ``index`` (0-based, across pages) of a list that never ends.
RowMaker = Callable[[int], object]

#: Rows an endless list serves when the request names no ``maxResults``, and at most.
ENDLESS_DEFAULT_PAGE = 100
ENDLESS_MAX_PAGE = 10_000

# The scripted headers of the fault applied to a request, set again when its response is
# prepared: after the fake's own on_response_prepare handlers (the engine's ``Date``).
_SCRIPTED_HEADERS: web.RequestKey[dict[str, str]] = web.RequestKey(
    "batchscope_scripted_headers", dict)


class RecordedRequest(NamedTuple):
    """One request as received, kept for assertions (e.g. that ``maxResults`` was sent)."""

    method: str
    path_qs: str
    headers: CIMultiDictProxy[str]


@dataclass
class Fault:
    """A scripted misbehaviour for requests whose path (with query) contains ``path_contains``.

    ``status``/``body`` replace the real answer when either is set; ``delay`` happens first;
    ``truncate`` announces a longer ``Content-Length`` than it sends and drops the connection.
    ``headers`` are set last, over the fake's own (``{"Date": ...}`` moves the upstream's clock
    as the client sees it). ``ignore_first_result`` serves the real answer as if the request
    had no ``firstResult`` (a proxy or engine that returns the first page again and again);
    ``endless`` answers every page full, ``maxResults`` rows made by ``endless(index)``
    from ``firstResult`` on, with status 200 (a list that never ends).
    ``remaining`` counts down per matching request; ``None`` means until cleared.
    """

    path_contains: str
    status: int | None = None
    body: bytes | None = None
    content_type: str = "application/json"
    delay: float = 0.0
    remaining: int | None = 1
    headers: dict[str, str] = field(default_factory=dict)
    truncate: bool = False
    ignore_first_result: bool = False
    endless: RowMaker | None = None

    @property
    def replaces_response(self) -> bool:
        """Whether the real handler is bypassed (an explicit status or body was scripted)."""
        return self.status is not None or self.body is not None


class FaultInjector:
    """Holds the scripted faults and the request log of one fake application."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every application a fake makes re-applies scripted headers when a response is
        prepared, after the fake's own handlers: a scripted ``Date`` wins over the clock's."""
        super().__init_subclass__(**kwargs)
        make_app = cls.__dict__.get("make_app")
        if make_app is None:
            return

        @functools.wraps(make_app)
        def make_app_with_scripted_headers(self: FaultInjector) -> web.Application:
            app: web.Application = make_app(self)
            app.on_response_prepare.append(_scripted_headers)
            return app

        cls.make_app = make_app_with_scripted_headers  # type: ignore[method-assign]

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self._faults: list[Fault] = []
        self._app: web.Application | None = None

    @property
    def app(self) -> web.Application:
        """The fake's application (created once; use :meth:`make_app` for another)."""
        if self._app is None:
            self._app = self.make_app()
        return self._app

    def make_app(self) -> web.Application:
        """A new application serving the fake API, with :meth:`middleware` installed."""
        raise NotImplementedError

    def inject(
        self,
        path_contains: str,
        *,
        status: int | None = None,
        body: bytes | str | None = None,
        content_type: str = "application/json",
        delay: float = 0.0,
        times: int | None = 1,
        headers: dict[str, str] | None = None,
        truncate: bool = False,
        ignore_first_result: bool = False,
        endless: RowMaker | None = None,
    ) -> Fault:
        """Make the next ``times`` requests matching ``path_contains`` misbehave.

        Faults are consulted in the order they were injected; the first match wins.
        See :class:`Fault` for what each argument does.
        """
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 or None")
        if endless is not None and (status is not None or body is not None):
            raise ValueError("an endless list is its own answer: no status or body with it")
        fault = Fault(
            path_contains=path_contains,
            status=status,
            body=body.encode() if isinstance(body, str) else body,
            content_type=content_type,
            delay=delay,
            remaining=times,
            headers=dict(headers or {}),
            truncate=truncate,
            ignore_first_result=ignore_first_result,
            endless=endless,
        )
        self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Drop every scripted fault, including the unlimited ones."""
        self._faults.clear()

    def clear_requests(self) -> None:
        """Forget the request log."""
        self.requests.clear()

    def _take(self, path_qs: str) -> Fault | None:
        """Return the first fault matching the path and consume one of its uses."""
        for fault in self._faults:
            if fault.path_contains in path_qs:
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                return fault
        return None

    def middleware(self) -> Middleware:
        """The aiohttp middleware that records every request and applies the faults."""

        @web.middleware
        async def faults(request: web.Request, handler: Handler) -> web.StreamResponse:
            self.requests.append(
                RecordedRequest(
                    request.method, request.path_qs, CIMultiDictProxy(CIMultiDict(request.headers))
                )
            )
            fault = self._take(request.path_qs)
            if fault is None:
                return await handler(request)
            return await _apply(fault, request, handler)

        return faults


async def _apply(fault: Fault, request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer ``request`` the way ``fault`` scripts it."""
    if fault.delay > 0:
        await asyncio.sleep(fault.delay)
    response: web.StreamResponse
    if fault.endless is not None:
        response = _endless_page(fault.endless, request)
    elif fault.replaces_response:
        response = web.Response(
            status=fault.status or 200, body=fault.body or b"", content_type=fault.content_type
        )
    elif fault.ignore_first_result and "firstResult" in request.query:
        query = MultiDict(request.query)
        del query["firstResult"]
        response = await handler(request.clone(rel_url=request.rel_url.with_query(query)))
    else:
        response = await handler(request)
    response.headers.update(fault.headers)
    if fault.headers:
        request[_SCRIPTED_HEADERS] = fault.headers
    if fault.truncate:
        return await _send_truncated(request, response)
    return response


def _endless_page(make_row: RowMaker, request: web.Request) -> web.Response:
    """A full page of a list that never ends: ``maxResults`` rows from ``firstResult`` on."""
    try:
        first = max(0, int(request.query.get("firstResult", "0")))
        count = max(0, int(request.query.get("maxResults", str(ENDLESS_DEFAULT_PAGE))))
    except ValueError:
        first, count = 0, ENDLESS_DEFAULT_PAGE
    count = min(count, ENDLESS_MAX_PAGE)
    rows = [make_row(index) for index in range(first, first + count)]
    return web.Response(body=orjson.dumps(rows), content_type="application/json")


async def _scripted_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the fault's headers over whatever the fake set meanwhile."""
    headers = request.get(_SCRIPTED_HEADERS)
    if headers:
        response.headers.update(headers)


async def _send_truncated(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Send half of ``response``'s body under its full Content-Length, then drop the connection.

    The client sees a well-formed status line and headers but a body that ends early, which is
    what a proxy or server crash mid-response looks like.
    """
    body = b""
    if isinstance(response, web.Response) and isinstance(response.body, bytes):
        body = response.body
    sent = body[: len(body) // 2]
    stream = web.StreamResponse(status=response.status, headers=response.headers)
    stream.content_length = max(len(body), len(sent) + 1)
    await stream.prepare(request)
    await stream.write(sent)
    if request.transport is not None:
        request.transport.close()
    return stream
