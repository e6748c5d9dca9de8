"""``GET /api/v1/events/stream``: the event buffer as Server-Sent Events.

One ``id:``/``data:`` message per event (``id`` = ``seq``, ``data`` = the event's log-line
fields as one JSON object), starting after ``Last-Event-ID`` (what a browser's EventSource
sends when it reconnects) or else ``?after=`` (default 0: everything the buffer holds).
A comment line every ``heartbeat`` seconds keeps proxies and load balancers from closing an
idle stream, and tells the server when the client has gone. ``?timeout=`` ends the stream
after that many seconds (curl, scripts, bounded tests). Streams end at once when the app
shuts down (``on_shutdown`` runs before the runner waits for handlers), so they never hold
up ``AppRunner.cleanup``. At most ``max_streams`` are open at a time: a stream is a
connection the listener can never reclaim as idle.
"""

from __future__ import annotations

import asyncio
import math
import re
from typing import Any, Final

import orjson
from aiohttp import web

from batchscope.http.ports import EventReader

#: Seconds between keep-alive comments: under the 30-60 s idle limits of common proxies.
DEFAULT_HEARTBEAT: Final = 15.0
DEFAULT_MAX_STREAMS: Final = 64
#: Milliseconds a browser waits before reconnecting (the ``retry:`` field).
RECONNECT_MS: Final = 3000
#: Events written per chunk while catching up.
CHUNK: Final = 500
MAX_TIMEOUT: Final = 86_400.0
_INTEGER: Final = re.compile(r"-?[0-9]+")
_NUMBER: Final = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")


class BadStreamRequest(ValueError):
    """The request's position or timeout is not one the stream can honour (answer 400)."""


class StreamHub:
    """The open streams of one app: their number, and the signal that ends them."""

    def __init__(self, *, heartbeat: float = DEFAULT_HEARTBEAT,
                 max_streams: int = DEFAULT_MAX_STREAMS) -> None:
        if heartbeat <= 0 or max_streams < 1:
            raise ValueError("heartbeat must be positive and max_streams at least 1")
        self.heartbeat = heartbeat
        self.max_streams = max_streams
        self.open = 0
        self.closed = False
        self._closing: asyncio.Future[None] | None = None

    def closing(self) -> asyncio.Future[None]:
        """Done when the app shuts down (shared: never cancel it)."""
        loop = asyncio.get_running_loop()
        if self._closing is None or self._closing.get_loop() is not loop:
            self._closing = loop.create_future()
            if self.closed:
                self._closing.set_result(None)
        return self._closing

    async def close(self, app: web.Application | None = None) -> None:
        """End every stream (an ``on_shutdown`` hook)."""
        self.closed = True
        if self._closing is not None and not self._closing.done():
            self._closing.set_result(None)


def start_position(request: web.Request) -> int:
    """The seq the stream starts after: ``Last-Event-ID`` (a reconnect), else ``?after=``."""
    raw = request.headers.get("Last-Event-ID")
    name = "Last-Event-ID"
    if raw is None or not raw.strip():
        raw, name = request.query.get("after", "0"), "after"
    if _INTEGER.fullmatch(raw.strip()) is None:
        raise BadStreamRequest(f"{name} must be an integer (an event's seq)")
    try:
        return int(raw)
    except ValueError:  # more digits than int() takes
        raise BadStreamRequest(f"{name} must be an integer (an event's seq)") from None


def stream_timeout(request: web.Request) -> float | None:
    raw = request.query.get("timeout")
    if raw is None:
        return None
    if _NUMBER.fullmatch(raw) is None:
        raise BadStreamRequest("timeout must be a number of seconds")
    value = float(raw)
    if not math.isfinite(value) or not 0 < value <= MAX_TIMEOUT:
        raise BadStreamRequest(f"timeout must be above 0 and at most {MAX_TIMEOUT:g} seconds")
    return value


def _message(event: dict[str, Any]) -> bytes:
    # orjson never writes a raw newline, so one data: line holds the whole object.
    return b"id: %d\ndata: %s\n\n" % (int(event["seq"]), orjson.dumps(event))


async def serve_stream(request: web.Request, reader: EventReader, hub: StreamHub,
                       after: int, timeout: float | None) -> web.StreamResponse:
    """Write events after ``after`` as they come, until the client goes, ``timeout``
    passes or the hub closes."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    resp = web.StreamResponse(headers={
        "Content-Type": "text/event-stream; charset=utf-8",
        "Cache-Control": "no-cache, no-transform",
        "X-Accel-Buffering": "no",  # nginx: pass each message on at once
    })
    hub.open += 1
    try:
        await resp.prepare(request)
        await resp.write(b": batchscope events\nretry: %d\n\n" % RECONNECT_MS)
        while not hub.closed:
            events = reader.after(after, CHUNK)
            if events:
                await resp.write(b"".join(_message(e) for e in events))
                after = int(events[-1]["seq"])
                continue
            newest = reader.tail(1)
            if newest and int(newest[0]["seq"]) < after:
                # The client is ahead of every event held: it saw a previous process whose
                # numbers were not kept (no state file). Everything held is new to it.
                after = 0
                continue
            wait = hub.heartbeat
            if deadline is not None:
                wait = min(wait, deadline - loop.time())
                if wait <= 0:
                    break
            done, _ = await asyncio.wait({reader.next_change(), hub.closing()}, timeout=wait,
                                         return_when=asyncio.FIRST_COMPLETED)
            if not done and (deadline is None or loop.time() < deadline):
                await resp.write(b": keep-alive\n\n")
    except ConnectionError:  # the client went away: a write failed
        return resp
    finally:
        hub.open -= 1
    await resp.write_eof()
    return resp
