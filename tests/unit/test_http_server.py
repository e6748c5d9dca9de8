"""http/server.py: idle, slow and too many clients (issue 9, item 5).

Real listeners on loopback, real TCP clients (raw streams for idle and slow ones, aiohttp's
client for /healthz). Waits are conditions with deadlines; timeouts are made small through
``start_http_server``'s parameters. The last two tests run a listener in a subprocess with
its own RLIMIT_NOFILE, as the reported incident had it.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import resource
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from batchscope.http.server import (
    ACCEPT_FAILED,
    GuardedRunner,
    connection_limit,
    start_http_server,
)
from helpers import LogLines, wait_until

REPO = Path(__file__).resolve().parents[2]
Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def make_app(release: asyncio.Event | None = None) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def slow(_: web.Request) -> web.Response:
        assert release is not None
        await release.wait()
        return web.json_response({"slow": True})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/slow", slow)
    return app


@asynccontextmanager
async def serving(app: web.Application, **kwargs: Any) -> AsyncIterator[tuple[GuardedRunner, int]]:
    runner, port = await start_http_server(app, "127.0.0.1", 0, **kwargs)
    assert isinstance(runner, GuardedRunner)
    try:
        yield runner, port
    finally:
        await runner.cleanup()


async def open_idle(port: int, count: int) -> list[Conn]:
    async with asyncio.timeout(20):
        return list(await asyncio.gather(
            *(asyncio.open_connection("127.0.0.1", port) for _ in range(count))))


def close_all(conns: list[Conn]) -> None:
    for _, writer in conns:
        writer.close()


async def closed_by_server(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything the server sent until it closed the connection (fails on timeout)."""
    async with asyncio.timeout(timeout):
        return await reader.read()


async def healthz(port: int, timeout: float = 5.0) -> tuple[int, float]:
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{port}/healthz",
            timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
        await resp.read()
        return resp.status, time.perf_counter() - started


# ---------------------------------------------------------------------- limits


async def test_idle_connections_over_the_limit_do_not_block_healthz(logs: LogLines) -> None:
    """With more idle connections than the limit, /healthz still answers promptly: each
    new connection takes the place of the connection idle the longest, the number of open
    connections never exceeds the limit, and the limit is logged once, not per eviction."""
    limit, idle = 8, 30
    async with serving(make_app(), max_connections=limit, header_timeout=60) as (runner, port):
        conns = await open_idle(port, idle)
        try:
            await wait_until(lambda: runner.guard.evicted >= idle - limit, 5, "evictions")
            assert runner.guard.open_connections <= limit
            status, latency = await healthz(port)
            assert status == 200
            assert latency < 1.0, latency
            # The oldest idle connections were the ones closed: they see EOF.
            for reader, _ in conns[: idle - limit]:
                assert await closed_by_server(reader, 5) == b""
            assert runner.guard.open_connections <= limit
        finally:
            close_all(conns)
    assert len(logs.events("http.connection_limit")) == 1


async def test_busy_connections_are_kept_and_the_newcomer_is_refused() -> None:
    """Connections handling a request are never closed for room: with every slot busy a
    new connection is answered 503 and closed; the busy requests still complete."""
    release = asyncio.Event()
    async with serving(make_app(release), max_connections=2, header_timeout=60) as (runner,
                                                                                    port):
        busy = await open_idle(port, 2)
        for _, writer in busy:
            writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        await wait_until(lambda: runner.guard.busy_connections == 2, 5,
                         "two requests in progress")
        (reader, writer), = await open_idle(port, 1)
        answer = await closed_by_server(reader, 5)
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        writer.close()
        assert runner.guard.rejected == 1 and runner.guard.evicted == 0
        release.set()
        for reader, writer in busy:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200 ")
            writer.close()


@pytest.mark.parametrize(("nofile", "expected"), [
    (64, 8), (128, 64), (256, 128), (1024, 512), (8192, 512), (resource.RLIM_INFINITY, 512),
])
def test_connection_limit_follows_rlimit_nofile(nofile: int, expected: int) -> None:
    """The default limit stays well below RLIMIT_NOFILE: at most 512, at most half of the
    descriptors, and at least 64 left for the rest of the daemon (8 as a floor)."""
    assert connection_limit(nofile=nofile) == expected
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert connection_limit() == connection_limit(nofile=soft)


# ---------------------------------------------------------------------- timeouts


async def test_silent_connection_is_closed_after_the_header_timeout() -> None:
    """A client that connects and sends nothing is disconnected after header_timeout."""
    async with serving(make_app(), header_timeout=0.3, keepalive_timeout=60) as (runner, port):
        (reader, writer), = await open_idle(port, 1)
        started = time.monotonic()
        assert await closed_by_server(reader, 5) == b""
        elapsed = time.monotonic() - started
        writer.close()
        assert 0.2 <= elapsed < 3, elapsed
        assert runner.guard.timed_out == 1


async def test_slow_request_head_is_closed_after_the_header_timeout() -> None:
    """A client that sends part of a request head and stalls (slowloris) is disconnected
    after header_timeout, with no response."""
    async with serving(make_app(), header_timeout=0.3, keepalive_timeout=60) as (_, port):
        (reader, writer), = await open_idle(port, 1)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: 1")
        started = time.monotonic()
        assert await closed_by_server(reader, 5) == b""
        assert time.monotonic() - started < 3
        writer.close()


async def test_idle_keepalive_connection_is_closed_after_keepalive_timeout() -> None:
    """After a request, an idle keep-alive connection is closed after keepalive_timeout
    (aiohttp's default would keep it 3630 s)."""
    async with serving(make_app(), header_timeout=60, keepalive_timeout=0.4) as (_, port):
        (reader, writer), = await open_idle(port, 1)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        rest = await closed_by_server(reader, 5)
        assert rest == b'{"ok": true}'  # the body, then EOF
        assert 0.2 <= time.monotonic() - started < 3
        writer.close()


# ---------------------------------------------------------------------- accept failures


async def test_accept_failures_are_logged_once_per_episode(logs: LogLines) -> None:
    """The loop's "socket.accept() out of system resource" reports (one per retry) become
    one http.accept_failed line; the next accepted connection ends the episode with one
    http.accept_recovered line. Other loop errors still reach the previous handler, which
    is restored on cleanup."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []

    def previous(_: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        seen.append(context)

    loop.set_exception_handler(previous)
    try:
        async with serving(make_app()) as (runner, port):
            emfile = OSError(errno.EMFILE, "Too many open files")
            for _ in range(1000):
                loop.call_exception_handler({"message": ACCEPT_FAILED, "exception": emfile})
            loop.call_exception_handler({"message": "something else"})
            (failed,) = logs.events("http.accept_failed")
            assert failed["errno"] == "EMFILE" and failed["level"] == "error"
            assert [c["message"] for c in seen] == ["something else"]
            assert runner.guard.accept_failures == 1000
            status, _ = await healthz(port)
            assert status == 200
            (recovered,) = logs.events("http.accept_recovered")
            assert recovered["repeated"] == 999
        assert loop.get_exception_handler() is previous
    finally:
        loop.set_exception_handler(None)


async def test_bind_failure_raises_oserror_and_leaves_nothing_behind() -> None:
    """A port in use raises OSError (the daemon maps it to exit 78); the failed start
    leaves the loop's exception handler as it was."""
    loop = asyncio.get_running_loop()
    before = loop.get_exception_handler()
    async with serving(make_app()) as (_, port):
        installed = loop.get_exception_handler()
        assert installed is not before  # the first server's filter
        with pytest.raises(OSError) as info:
            await start_http_server(make_app(), "127.0.0.1", port)
        assert info.value.errno == errno.EADDRINUSE
        assert loop.get_exception_handler() is installed
    assert loop.get_exception_handler() is before


# ---------------------------------------------------------- a real descriptor shortage

CHILD = """
import asyncio, json, resource, sys
from aiohttp import web
from batchscope.http.server import start_http_server
from batchscope.sinks.logs import configure_logging

nofile, max_connections = int(sys.argv[1]), int(sys.argv[2]) or None
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))
configure_logging(log_format="json", stream=sys.stdout)

async def healthz(request):
    return web.json_response({"ok": True})

async def main():
    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner, port = await start_http_server(app, "127.0.0.1", 0,
                                           max_connections=max_connections)
    print(json.dumps({"event": "test.listening", "port": port,
                      "max_connections": runner.guard.max_connections}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await runner.cleanup()

asyncio.run(main())
"""


class Child:
    """A listener in a subprocess with its own RLIMIT_NOFILE; its JSON lines, parsed."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []

    async def next_event(self, name: str, timeout: float) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                found = self.events(name)
                if found:
                    return found[0]
                assert self.proc.stdout is not None
                raw = await self.proc.stdout.readline()
                assert raw, f"the child ended before {name}: {self.lines}"
                self.lines.append(json.loads(raw))

    def events(self, name: str) -> list[dict[str, Any]]:
        return [x for x in self.lines if x.get("event") == name]


@asynccontextmanager
async def child_listener(nofile: int, max_connections: int = 0) -> AsyncIterator[Child]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO / "daemon"), os.environ.get("PYTHONPATH")) if p)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(nofile), str(max_connections), env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    child = Child(proc)
    try:
        await child.next_event("test.listening", 30)
        yield child
    finally:
        assert proc.stdin is not None
        with suppress(ConnectionError):
            proc.stdin.close()
        async with asyncio.timeout(30):
            rest, err = await proc.communicate()
        child.lines += [json.loads(x) for x in rest.splitlines() if x.strip()]
        assert b"Traceback" not in err, err.decode()[-2000:]


@pytest.mark.slow
async def test_150_idle_connections_under_ulimit_128() -> None:
    """The reported case: 150 idle connections against a listener with RLIMIT_NOFILE 128.
    /healthz answers promptly and not one accept() fails (nothing to log). Before, it
    timed out and the loop logged a traceback per failed accept()."""
    async with child_listener(128) as child:
        port = child.lines[0]["port"]
        assert child.lines[0]["max_connections"] == 64  # derived from the rlimit
        conns = await open_idle(port, 150)
        try:
            status, latency = await healthz(port, timeout=10)
            assert status == 200
            assert latency < 2.0, latency
        finally:
            close_all(conns)
    assert child.events("http.accept_failed") == []
    assert child.proc.returncode == 0


@pytest.mark.slow
async def test_real_descriptor_exhaustion_is_logged_once() -> None:
    """With the limit forced above what RLIMIT_NOFILE allows, accept() really fails with
    EMFILE, again and again: one http.accept_failed line, then one http.accept_recovered
    once the clients go away, and the listener serves again."""
    async with child_listener(48, max_connections=1000) as child:
        port = child.lines[0]["port"]
        conns = await open_idle(port, 80)
        try:
            failed = await child.next_event("http.accept_failed", 20)
            assert failed["errno"] == "EMFILE"
        finally:
            close_all(conns)
        await child.next_event("http.accept_recovered", 20)
        status, _ = await healthz(port, timeout=10)
        assert status == 200
    assert len(child.events("http.accept_failed")) == 1
    assert child.proc.returncode == 0
