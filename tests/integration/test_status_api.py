"""The status page's API against a real daemon and the simulator on loopback: targets,
the batch detail, the SSE event stream (live, resumable, ended at shutdown), the security
headers; every answer is checked against the OpenAPI document."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import pytest

from batchscope.http.app import CONTENT_SECURITY_POLICY
from batchscope.model import BatchTransition, Source, State
from harness import Stack, running_stack
from helpers import LogLines, eventually, wait_until
from openapi_kit import OpenApiChecker


@pytest.fixture
def checker() -> OpenApiChecker:
    return OpenApiChecker()


async def get(stack: Stack, checker: OpenApiChecker, path: str,
              headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with stack.http.get(stack.base + path, headers=headers) as resp:
        body = await resp.json() if resp.content_type == "application/json" else None
        checker.check("GET", path, resp.status, resp.headers.get("Content-Type"), body)
        return resp.status, body


async def target(stack: Stack, checker: OpenApiChecker, name: str) -> dict[str, Any]:
    status, targets = await get(stack, checker, "/api/v1/targets")
    assert status == 200
    return next(t for t in targets if t["target"] == name)


class Sse:
    """A minimal Server-Sent Events reader over an aiohttp response."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.comments: list[str] = []

    async def message(self, timeout: float = 10.0) -> dict[str, str]:
        """The next message with data (comments are collected, not returned)."""
        fields: dict[str, str] = {}
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.resp.content.readline()
                if not raw:
                    raise EOFError("stream ended")
                line = raw.decode().rstrip("\n")
                if line == "":
                    if "data" in fields:
                        return fields
                    fields = {}
                elif line.startswith(":"):
                    self.comments.append(line[1:].strip())
                else:
                    name, _, value = line.partition(":")
                    fields[name] = value[1:] if value.startswith(" ") else value

    async def event_for(self, batch_id: str, to_state: str,
                        timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.message(timeout)
                data = orjson.loads(msg["data"])
                if data.get("batch_id") == batch_id and data.get("to_state") == to_state:
                    return int(msg["id"]), data


@asynccontextmanager
async def open_stream(stack: Stack, query: str = "",
                      headers: dict[str, str] | None = None) -> AsyncIterator[Sse]:
    async with stack.http.get(f"{stack.base}/api/v1/events/stream{query}",
                              headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["Cache-Control"].startswith("no-cache")
        yield Sse(resp)


async def test_targets_show_health_last_poll_and_last_error(
        logs: LogLines, checker: OpenApiChecker) -> None:
    """Each target is listed with its poll times and tracked batches; an upstream failing
    with 500s turns it down with the error's reason (last_success kept), and it comes back
    up with no error once the upstream recovers."""
    async with running_stack() as stack:
        stack.engine.create_batch(total_jobs=5)
        prod = await eventually(lambda: _tracked(stack, checker, "prod", "in_progress"),
                                what="the batch counted on its target")
        assert prod["source"] == "engine" and prod["up"] is True
        assert prod["last_error"] is None and prod["poll_interval"] == 0.05
        assert prod["last_poll"] >= prod["last_success"] > time.time() - 60
        assert set(prod["tracked"]) == {"in_progress", "suspended", "stalled", "failed",
                                        "passed", "cancelled", "vanished"}
        ci = await target(stack, checker, "ci")
        assert ci["source"] == "datadog" and "none" in ci["tracked"]

        stack.engine.inject("/batch", status=500, body='{"type":"x","message":"down"}',
                            times=None)
        down = await eventually(lambda: _down(stack, checker, "prod"), what="prod down")
        assert down["last_error"]["reason"] == "http_5xx"
        assert down["last_error"]["detail"]
        assert down["last_success"] is not None and down["last_success"] < down["last_poll"]
        stack.engine.clear_faults()
        up = await eventually(lambda: _up(stack, checker, "prod"), timeout=30,
                              what="prod up again")
        assert up["last_error"] is None and up["last_success"] == up["last_poll"]


async def _tracked(stack: Stack, checker: OpenApiChecker, name: str,
                   state: str) -> dict[str, Any] | None:
    t = await target(stack, checker, name)
    return t if t["tracked"][state] == 1 else None


async def _down(stack: Stack, checker: OpenApiChecker, name: str) -> dict[str, Any] | None:
    t = await target(stack, checker, name)
    return t if t["up"] is False else None


async def _up(stack: Stack, checker: OpenApiChecker, name: str) -> dict[str, Any] | None:
    t = await target(stack, checker, name)
    return t if t["up"] is True else None


async def test_batch_detail_of_both_sources(logs: LogLines, checker: OpenApiChecker) -> None:
    """The detail is the list row plus failure (and, for Datadog, every result with its
    link into the configured app_url); untracked (or an unknown target) is 404; a bad
    source or id 400."""
    app_url = "https://dd.example.com"
    async with running_stack(datadog_target={"app_url": app_url}) as stack:
        batch = stack.engine.create_batch(total_jobs=4)
        stack.engine.fail_jobs(batch, 1)
        ci = stack.datadog.create_batch()
        await stack.watch(ci)
        await wait_until(lambda: (rec := stack.daemon.tracker.get(Source.DATADOG, "ci", ci))
                         is not None and rec.results, what="the CI batch's results")
        await wait_until(lambda: (rec := stack.daemon.tracker.get(Source.ENGINE, "prod", batch))
                         is not None and rec.state.value == "failed")

        status, detail = await get(stack, checker, f"/api/v1/batches/engine/prod/{batch}")
        assert status == 200 and detail["state"] == "failed"
        assert detail["counts"]["failed_jobs"] == 1 and "failure" in detail
        rows = (await get(stack, checker, "/api/v1/batches?source=engine"))[1]
        row = next(r for r in rows if r["batch_id"] == batch)
        assert set(row) <= set(detail)  # the row, plus failure
        steady = ("source", "target", "batch_id", "batch_type", "state", "first_seen",
                  "counts")  # polls (and diagnosis) go on between the two requests
        assert {k: detail[k] for k in steady} == {k: row[k] for k in steady}

        status, detail = await get(stack, checker, f"/api/v1/batches/datadog/ci/{ci}")
        assert status == 200 and detail["batch_type"] == "synthetics-ci"
        results = detail["results"]
        assert len(results) == len(stack.datadog.batch(ci).results) > 0
        for r in results:
            assert r["state"] == "in_progress" and r["test_public_id"]
            if r["result_id"]:
                assert r["link"].startswith(app_url + "/")

        for path, want in ((f"/api/v1/batches/engine/prod/{ci}", 404),
                           (f"/api/v1/batches/datadog/ci/{batch}", 404),
                           (f"/api/v1/batches/cockpit/prod/{batch}", 400),
                           (f"/api/v1/batches/engine/ci/{batch}", 404),
                           ("/api/v1/batches/engine/prod/a%20b", 400)):
            status, body = await get(stack, checker, path)
            assert status == want and body["error"], path


async def test_event_stream_is_live_and_resumable(logs: LogLines,
                                                  checker: OpenApiChecker) -> None:
    """A transition reaches an open stream as one message whose id is its seq and whose data
    is the /api/v1/events record; Last-Event-ID (a reconnect) resumes after that id, ahead of
    ?after=; the delay from the upstream change to the message is measured."""
    async with running_stack() as stack:
        first = stack.engine.create_batch(total_jobs=3)
        async with open_stream(stack, "?after=0") as sse:
            seq, data = await sse.event_for(first, "in_progress")
            started = time.perf_counter()
            stack.engine.fail_jobs(first, 1)
            seq2, data2 = await sse.event_for(first, "failed")
            latency = time.perf_counter() - started
            print(f"SSE: upstream change to stream message {latency * 1000:.0f} ms "
                  f"(poll interval 50 ms)")
            assert latency < 5
            assert seq2 > seq == data["seq"] and data2["seq"] == seq2
            status, events = await get(stack, checker, f"/api/v1/events?after={seq2 - 1}")
            assert status == 200 and events[0] == data2
        second = stack.engine.create_batch(total_jobs=3)
        async with open_stream(stack, "?after=0", headers={"Last-Event-ID": str(seq2)}) as sse:
            msg = await sse.message()
            data = orjson.loads(msg["data"])
            assert int(msg["id"]) == data["seq"] == seq2 + 1  # nothing already seen
            assert data["batch_id"] == second
        async with open_stream(stack, f"?after={seq}") as sse:
            msg = await sse.message()
            assert int(msg["id"]) == seq + 1


async def test_stream_delivers_an_event_at_once(logs: LogLines) -> None:
    """The stream's own delay: an event handed to the daemon's event buffer reaches an open
    stream without any polling in between (median and worst of 20 are printed)."""
    async with running_stack() as stack:
        async with open_stream(stack, f"?after={stack.daemon.core.seq}") as sse:
            delays = []
            for i in range(20):
                seq = 10_000 + i
                event = BatchTransition(seq=seq, time=time.time(), source=Source.ENGINE,
                                        target="prod", batch_id=f"probe-{i}",
                                        batch_type="probe", from_state=State.NONE,
                                        to_state=State.IN_PROGRESS)
                started = time.perf_counter()
                stack.daemon.events.extend([event])
                msg = await sse.message()
                delays.append(time.perf_counter() - started)
                assert int(msg["id"]) == seq
        delays.sort()
        print(f"SSE: buffer to client median {delays[10] * 1000:.1f} ms, "
              f"worst {delays[-1] * 1000:.1f} ms")
        assert delays[10] < 0.1


async def test_stream_ahead_of_the_daemon_starts_over(logs: LogLines) -> None:
    """A Last-Event-ID beyond every event held (from a daemon that kept no state) gets every
    event held, rather than silence until the numbers catch up."""
    async with running_stack() as stack:
        batch = stack.engine.create_batch(total_jobs=3)
        async with open_stream(stack, headers={"Last-Event-ID": "99999"}) as sse:
            seq, data = await sse.event_for(batch, "in_progress")
            assert seq == 1 and data["batch_id"] == batch


async def test_event_stream_ends_when_the_daemon_stops(logs: LogLines) -> None:
    """Stopping the daemon with a stream open ends the stream at once: stop() does not wait
    for the stream (nor for the HTTP shutdown timeout) and the client reads the end."""
    async with running_stack() as stack:
        async with stack.http.get(stack.base + "/api/v1/events/stream") as resp:
            assert resp.status == 200
            await resp.content.readuntil(b"\n\n")
            started = time.perf_counter()
            await stack.daemon.stop()
            stopped = time.perf_counter() - started
            rest = await asyncio.wait_for(resp.content.read(), 5)
            assert resp.content.at_eof()
            assert b"data:" not in rest
        assert stopped < 1.5, f"stop() took {stopped:.2f}s with a stream open"
        stack.daemon.stop = _noop  # type: ignore[method-assign]  # already stopped


async def _noop() -> None:
    return None


async def test_page_and_api_carry_the_security_headers(logs: LogLines) -> None:
    """The page, its assets and the API are sent with a CSP that allows only the page's own
    script and style, and nosniff; the page itself has no inline script or style."""
    async with running_stack() as stack:
        for path in ("/", "/static/app.js", "/static/app.css", "/api/v1/targets",
                     "/api/v1/nope", "/healthz"):
            async with stack.http.get(stack.base + path) as resp:
                assert resp.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
                assert resp.headers["X-Content-Type-Options"] == "nosniff"
        policy = dict(part.strip().split(" ", 1) for part in CONTENT_SECURITY_POLICY.split(";"))
        assert policy["script-src"] == "'self'" and policy["style-src"] == "'self'"
        assert policy["default-src"] == "'none'"
        async with stack.http.get(stack.base + "/") as resp:
            assert resp.content_type == "text/html"
            page = await resp.text()
        assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", page) == []  # no inline script
        assert re.findall(r"<[^>]*\s(?:style|on[a-z]+)=", page) == []  # no inline style/handler
        assert "<style" not in page
        # Everything the page loads is its own: every src and href is a local path.
        assert [u for u in re.findall(r'(?:src|href)="([^"]*)"', page)
                if not u.startswith("/") or u.startswith("//")] == []


def test_the_page_script_never_turns_text_into_html() -> None:
    """Besides the browser test's hostile batch: the script has no HTML-parsing sink at
    all (only its header comment names them), so no upstream string can become markup."""
    from importlib import resources

    script = (resources.files("batchscope.http") / "static" / "app.js").read_text()
    code = "\n".join(line for line in script.splitlines()
                     if not line.lstrip().startswith("//"))
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function", "setTimeout(\"", "DOMParser", "createContextualFragment"):
        assert sink not in code, sink
    assert "textContent" in code
