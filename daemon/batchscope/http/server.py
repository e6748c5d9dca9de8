"""The HTTP listener, hardened against idle, slow and too many clients.

aiohttp's own server closes an idle keep-alive connection only after 3630 s and, before
aiohttp 3.12, never closes a connection that sends no request at all; it accepts as many
connections as the kernel hands it. 150 idle connections under ``ulimit -n 128`` were
enough to make ``/healthz`` time out and the event loop log a traceback for every failed
``accept()``. :func:`start_http_server` adds:

- ``keepalive_timeout`` (15 s): an idle keep-alive connection is closed (aiohttp's own
  setting);
- ``header_timeout`` (10 s): a connection that has not sent a complete request head by then
  is closed (slow or silent clients; aiohttp has no server read timeout of its own);
- ``max_connections`` (at most 512, and well below ``RLIMIT_NOFILE``): at the limit a new
  connection takes the place of the connection idle the longest; if every connection is
  busy with a request the new one is answered 503 and closed. One warning per episode;
- a small ``accept()`` batch per loop turn, so descriptors the guard has not yet seen stay
  few;
- an event-loop exception handler that turns the loop's "socket.accept() out of system
  resource" (EMFILE, ENFILE, ...) into one ``http.accept_failed`` line per episode instead
  of a traceback per attempt.
"""

from __future__ import annotations

import asyncio
import errno
import resource
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web

from batchscope.sinks.logs import get_logger

DEFAULT_KEEPALIVE_TIMEOUT: Final = 15.0
DEFAULT_HEADER_TIMEOUT: Final = 10.0
DEFAULT_MAX_CONNECTIONS: Final = 512
#: File descriptors kept for everything but HTTP clients (upstream sessions, the state
#: file, logs, the event loop): half of RLIMIT_NOFILE, and at least this many.
FD_RESERVE: Final = 64
LISTEN_BACKLOG: Final = 128  # the kernel's queue of connections not accepted yet
ACCEPT_FAILED: Final = "socket.accept() out of system resource"  # asyncio's wording

_REJECT: Final = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                  b"Connection: close\r\nContent-Length: 20\r\n\r\ntoo many connections")

log = get_logger()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def connection_limit(default: int = DEFAULT_MAX_CONNECTIONS, *, nofile: int | None = None
                     ) -> int:
    """The most client connections worth accepting under RLIMIT_NOFILE (this process's,
    or ``nofile``): ``default``, but never more than the descriptors left after a reserve
    of half the limit (at least :data:`FD_RESERVE`)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0] if nofile is None else nofile
    if soft == resource.RLIM_INFINITY:
        return default
    return max(8, min(default, soft - max(FD_RESERVE, soft // 2)))


class _Conn:
    __slots__ = ("busy", "last_active", "requests", "timer", "transport")

    def __init__(self, transport: asyncio.Transport, now: float) -> None:
        self.transport = transport
        self.busy = 0  # requests being handled on it now
        self.requests = 0  # requests started on it so far
        self.last_active = now
        self.timer: asyncio.TimerHandle | None = None


class ConnectionGuard:
    """Counts, times and limits the connections of one listener."""

    def __init__(self, *, max_connections: int, header_timeout: float) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self._conns: dict[asyncio.BaseTransport, _Conn] = {}
        self._loop = asyncio.get_running_loop()
        self._at_limit = False
        self._accept_failing = False
        # Counters since start (diagnostics and tests read them).
        self.evicted = 0
        self.rejected = 0
        self.timed_out = 0
        self.accept_failures = 0
        self._episode_evicted = 0
        self._episode_rejected = 0
        self._repeated_accept_failures = 0

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    @property
    def busy_connections(self) -> int:
        return sum(1 for c in self._conns.values() if c.busy)

    # ----------------------------------------------------------------- connections

    def admit(self, transport: asyncio.Transport) -> bool:
        """Register a new connection; False if it must be refused (every slot busy)."""
        self._accept_recovered()
        if len(self._conns) >= self.max_connections:
            self._limit_reached()
            victim = self._idlest()
            if victim is None:
                self.rejected += 1
                self._episode_rejected += 1
                return False
            self.evicted += 1
            self._episode_evicted += 1
            self._drop(victim)
        elif self._at_limit and len(self._conns) < self.max_connections * 3 // 4:
            self._limit_cleared()
        now = self._loop.time()
        conn = _Conn(transport, now)
        if self.header_timeout > 0:
            conn.timer = self._loop.call_at(now + self.header_timeout, self._expire, conn)
        self._conns[transport] = conn
        return True

    def release(self, transport: asyncio.BaseTransport) -> None:
        conn = self._conns.pop(transport, None)
        if conn is not None and conn.timer is not None:
            conn.timer.cancel()

    def request_started(self, transport: asyncio.BaseTransport | None) -> None:
        conn = self._conns.get(transport) if transport is not None else None
        if conn is None:
            return
        conn.busy += 1
        conn.requests += 1
        conn.last_active = self._loop.time()
        if conn.timer is not None:  # the request head arrived in time
            conn.timer.cancel()
            conn.timer = None

    def request_finished(self, transport: asyncio.BaseTransport | None) -> None:
        conn = self._conns.get(transport) if transport is not None else None
        if conn is None:
            return
        conn.busy = max(0, conn.busy - 1)
        conn.last_active = self._loop.time()

    def _idlest(self) -> _Conn | None:
        idle = [c for c in self._conns.values() if not c.busy]
        return min(idle, key=lambda c: c.last_active) if idle else None

    def _drop(self, conn: _Conn) -> None:
        self.release(conn.transport)
        conn.transport.abort()  # no lingering close: the descriptor is what we need back

    def _expire(self, conn: _Conn) -> None:
        conn.timer = None
        if conn.transport in self._conns and not conn.requests:
            self.timed_out += 1
            self._drop(conn)

    def _limit_reached(self) -> None:
        if not self._at_limit:
            self._at_limit = True
            log.warning("http.connection_limit", max_connections=self.max_connections,
                        hint="idle connections are closed to make room; a new connection "
                             "is refused (503) while all are busy")

    def _limit_cleared(self) -> None:
        self._at_limit = False
        log.info("http.connection_limit_cleared", max_connections=self.max_connections,
                 evicted=self._episode_evicted, rejected=self._episode_rejected)
        self._episode_evicted = self._episode_rejected = 0

    def forget_all(self) -> None:
        for conn in self._conns.values():
            if conn.timer is not None:
                conn.timer.cancel()
        self._conns.clear()

    # ----------------------------------------------------------------- accept failures

    def accept_failed(self, exc: BaseException | None) -> None:
        """One report of the loop's failed accept(): logged once per episode."""
        self.accept_failures += 1
        if self._accept_failing:
            self._repeated_accept_failures += 1
            return
        self._accept_failing = True
        code = getattr(exc, "errno", None)
        log.error("http.accept_failed", error=str(exc) if exc is not None else ACCEPT_FAILED,
                  errno=errno.errorcode.get(code, code) if isinstance(code, int) else None,
                  open_connections=len(self._conns), max_connections=self.max_connections,
                  hint="out of file descriptors: raise LimitNOFILE= (ulimit -n); the loop "
                       "retries, logged once until a connection is accepted again")

    def _accept_recovered(self) -> None:
        if self._accept_failing:
            self._accept_failing = False
            log.info("http.accept_recovered", repeated=self._repeated_accept_failures)
            self._repeated_accept_failures = 0

    # ----------------------------------------------------------------- aiohttp glue

    def protocol(self, make_inner: Callable[[], asyncio.Protocol]) -> asyncio.Protocol:
        """A protocol for one new connection; ``make_inner`` is called once admitted."""
        return _GuardedProtocol(self, make_inner)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        transport = request.transport
        self.request_started(transport)
        try:
            return await handler(request)
        finally:
            self.request_finished(transport)


class _GuardedProtocol(asyncio.Protocol):
    """Forwards to aiohttp's RequestHandler once the guard admitted the connection."""

    def __init__(self, guard: ConnectionGuard, make_inner: Callable[[], asyncio.Protocol]
                 ) -> None:
        self._guard = guard
        self._make_inner = make_inner
        self._inner: asyncio.Protocol = self  # replaced once admitted
        self._admitted = False
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if not self._guard.admit(transport):
            transport.write(_REJECT)
            transport.close()
            return
        self._admitted = True
        self._inner = self._make_inner()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._admitted:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._admitted else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._guard.release(self._transport)
        if self._admitted:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._admitted:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._admitted:
            self._inner.resume_writing()


class _GuardedSite(web.BaseSite):
    """A TCP site whose connections pass through a :class:`ConnectionGuard`."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard,
                 *, accept_batch: int, listen_backlog: int) -> None:
        # asyncio takes ``backlog`` both for listen() and for the number of accept() calls
        # per loop turn; the latter is what bounds the descriptors the guard has not seen.
        super().__init__(runner, backlog=accept_batch)
        self._host = host
        self._port = port
        self._guard = guard
        self._listen_backlog = listen_backlog

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        guard = self._guard
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: guard.protocol(server), self._host, self._port, backlog=self._backlog,
        )
        # ...and a kernel queue as long as usual, so clients wait there rather than in
        # SYN retries: listen() again, through a second descriptor of the same socket.
        for listening in self._server.sockets:
            with listening.dup() as same:
                same.listen(self._listen_backlog)


class GuardedRunner(web.AppRunner):
    """An AppRunner with the listener's guard; cleanup() also restores the event loop's
    exception handler."""

    def __init__(self, app: web.Application, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.guard = guard
        self._loop_handler: Any = None
        self._previous_handler: Any = None

    def install_accept_filter(self, loop: asyncio.AbstractEventLoop) -> None:
        previous = loop.get_exception_handler()
        guard = self.guard

        def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            if context.get("message") == ACCEPT_FAILED:
                guard.accept_failed(context.get("exception"))
            elif previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        self._previous_handler = previous
        self._loop_handler = handler
        loop.set_exception_handler(handler)

    async def cleanup(self) -> None:
        try:
            await super().cleanup()
        finally:
            self.guard.forget_all()
            loop = asyncio.get_running_loop()
            if self._loop_handler is not None and \
                    loop.get_exception_handler() is self._loop_handler:
                loop.set_exception_handler(self._previous_handler)
            self._loop_handler = None


async def start_http_server(
    app: web.Application,
    host: str,
    port: int,
    *,
    keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    max_connections: int | None = None,
    shutdown_timeout: float = 5.0,
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` (port 0: any free port); return the runner (call its
    ``cleanup()`` to stop) and the bound port. Raises OSError when the address cannot be
    bound (the runner is cleaned up first). ``max_connections`` defaults to
    :func:`connection_limit`. The app must not be frozen yet (a middleware is added)."""
    limit = max_connections if max_connections is not None else connection_limit()
    if limit < 1:
        raise ValueError("max_connections must be at least 1")
    guard = ConnectionGuard(max_connections=limit, header_timeout=header_timeout)
    app.middlewares.insert(0, guard.middleware)
    runner = GuardedRunner(app, guard, access_log=None, handle_signals=False,
                           keepalive_timeout=keepalive_timeout,
                           shutdown_timeout=shutdown_timeout)
    await runner.setup()
    # One accept() batch per loop turn may hold this many descriptors before the guard
    # sees them: keep it small next to the limit.
    site = _GuardedSite(runner, host, port, guard, accept_batch=max(8, min(128, limit // 4)),
                        listen_backlog=LISTEN_BACKLOG)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    runner.install_accept_filter(asyncio.get_running_loop())
    return runner, int(runner.addresses[0][1])
