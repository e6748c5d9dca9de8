"""Fault injection and request recording shared by the fake upstream APIs.

Both fakes install :meth:`FaultInjector.middleware` as their outermost aiohttp middleware, so a
test can make the *next* matching request fail in a realistic way (an error status, a slow answer,
a malformed or truncated body) without mocking the HTTP client, and can assert afterwards on what
the daemon actually sent.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import NamedTuple

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from multidict import CIMultiDict, CIMultiDictProxy


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

    @property
    def replaces_response(self) -> bool:
        """Whether the real handler is bypassed (an explicit status or body was scripted)."""
        return self.status is not None or self.body is not None


class FaultInjector:
    """Holds the scripted faults and the request log of one fake application."""

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
    ) -> Fault:
        """Make the next ``times`` requests matching ``path_contains`` misbehave.

        Faults are consulted in the order they were injected; the first match wins.
        """
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 or None")
        fault = Fault(
            path_contains=path_contains,
            status=status,
            body=body.encode() if isinstance(body, str) else body,
            content_type=content_type,
            delay=delay,
            remaining=times,
            headers=dict(headers or {}),
            truncate=truncate,
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
    if fault.replaces_response:
        response = web.Response(
            status=fault.status or 200, body=fault.body or b"", content_type=fault.content_type
        )
    else:
        response = await handler(request)
    response.headers.update(fault.headers)
    if fault.truncate:
        return await _send_truncated(request, response)
    return response


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
