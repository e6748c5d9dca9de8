"""Fault injection: every way an upstream can fail, against the real daemon and real-HTTP fakes.

For each fault kind the story is the same: batches are running; the upstream starts failing;
while it fails, batches change (one fails and then passes, one fails, one is cancelled or
vanishes, one starts and ends between two polls, one starts); the upstream recovers. The
daemon must report exactly one ``target.down`` (with the reason) and one ``target.up`` for the
outage, count every failed poll under ``batchscope_poll_errors_total{reason}``, export
``batchscope_target_up`` 0 then 1, and — the point — report every change made during the
outage once, after recovery.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from batchscope.simulator.datadog import FakeDatadog
from batchscope.simulator.engine import FakeEngine
from batchscope.simulator.faults import FaultInjector
from batchscope.simulator.server import start_simulator
from harness import API_KEY, APP_KEY, DATADOG, ENGINE, free_port
from helpers import LogLines, eventually, wait_until
from reliability_kit import Stack, running_stack

STATISTICS = "/batch/statistics"
CI_BATCH = "/api/v1/synthetics/ci/batch/"
EXCEPTION_DTO = json.dumps({"type": "ProcessEngineException", "message": "boom", "code": 0})
NONE, RUNNING = "none", "in_progress"

Action = Callable[[Stack], None]


@dataclass(frozen=True)
class FaultKind:
    """How to start and end one kind of outage, and what the daemon must call it."""

    name: str
    reason: str
    start: Action
    end: Action = field(default=lambda stack: stack.engine.clear_faults())
    failures: int = 3  # failed polls to wait for before the upstream recovers
    target_overrides: dict[str, Any] = field(default_factory=dict)


def inject(path: str, **fault: Any) -> Action:
    def start(stack: Stack) -> None:
        upstream = stack.datadog if path.startswith("/api/") else stack.engine
        upstream.inject(path, times=None, **fault)
    return start


def clear_datadog(stack: Stack) -> None:
    stack.datadog.clear_faults()


MONITOR = {"username": "monitor", "password": "monitor-pw"}


def set_max_results_limit(limit: int | None) -> Action:
    """The engine checks queryMaxResultsLimit only for authenticated requests: turn its
    authentication filter on (the daemon already sends these credentials) with the limit."""
    def apply(stack: Stack) -> None:
        stack.engine.username, stack.engine.password = MONITOR["username"], MONITOR["password"]
        stack.engine.query_max_results_limit = limit
    return apply


def rotate_datadog_key(key: str) -> Action:
    def apply(stack: Stack) -> None:
        stack.datadog.api_key = key
    return apply


OVERSIZE = json.dumps([{"id": f"x{i}", "pad": "x" * 100} for i in range(200)])

ENGINE_FAULTS = [
    FaultKind("timeout", "timeout", inject(STATISTICS, delay=0.6),
              target_overrides={"request_timeout": 0.2}),
    FaultKind("http_500", "http_5xx", inject(STATISTICS, status=500, body=EXCEPTION_DTO)),
    FaultKind("http_503_html", "http_5xx",
              inject(STATISTICS, status=503, body="<html>Service Unavailable</html>",
                     content_type="text/html")),
    FaultKind("history_500", "http_5xx", inject("/history/", status=500, body=EXCEPTION_DTO)),
    # the engine refuses pages above its queryMaxResultsLimit with a 400
    FaultKind("http_400_max_results", "http_4xx", set_max_results_limit(10),
              set_max_results_limit(None), target_overrides=MONITOR),
    FaultKind("auth_401", "auth", inject(STATISTICS, status=401, body="")),
    FaultKind("auth_403", "auth", inject(STATISTICS, status=403, body=EXCEPTION_DTO)),
    FaultKind("rate_limited_retry_after", "rate_limited",
              inject(STATISTICS, status=429, body="", headers={"Retry-After": "1"}), failures=2),
    FaultKind("rate_limited_reset", "rate_limited",
              inject(STATISTICS, status=429, body="",
                     headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1"}),
              failures=2),
    FaultKind("malformed_json", "invalid_response", inject(STATISTICS, status=200, body='[{"id"')),
    FaultKind("truncated", "invalid_response", inject(STATISTICS, truncate=True)),
    FaultKind("html_login_page", "invalid_response",
              inject(STATISTICS, status=200, body="<html>Sign in</html>",
                     content_type="text/html")),
    FaultKind("over_max_response_bytes", "invalid_response",
              inject(STATISTICS, status=200, body=OVERSIZE),
              target_overrides={"max_response_bytes": 16384}),
    FaultKind("object_instead_of_list", "invalid_response",
              inject(STATISTICS, status=200, body='{"message": "ok"}')),
    FaultKind("history_sweep_object_not_list", "invalid_response",
              inject("/history/batch?", status=200, body='{"count": 3}')),
    FaultKind("user_operation_log_not_list", "invalid_response",
              inject("/history/user-operation", status=200, body="{}")),
]

DATADOG_FAULTS = [
    FaultKind("timeout", "timeout", inject(CI_BATCH, delay=0.6), clear_datadog,
              target_overrides={"request_timeout": 0.2}),
    FaultKind("http_500", "http_5xx", inject(CI_BATCH, status=500, body='{"errors": ["x"]}'),
              clear_datadog),
    FaultKind("http_503", "http_5xx", inject(CI_BATCH, status=503, body=""), clear_datadog),
    FaultKind("http_400", "http_4xx", inject(CI_BATCH, status=400, body='{"errors": ["bad"]}'),
              clear_datadog),
    # a rotated API key: the real 403 of the fake's key check
    FaultKind("auth_403_rotated_key", "auth", rotate_datadog_key("rotated"),
              rotate_datadog_key("s3cr3t-api-key")),
    FaultKind("auth_401", "auth", inject(CI_BATCH, status=401, body=""), clear_datadog),
    FaultKind("rate_limited", "rate_limited",
              inject(CI_BATCH, status=429, body='{"errors": ["Too many requests"]}',
                     headers={"Retry-After": "1", "X-RateLimit-Limit": "100",
                              "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1"}),
              clear_datadog, failures=2),
    FaultKind("malformed_json", "invalid_response",
              inject(CI_BATCH, status=200, body='{"data": {'), clear_datadog),
    FaultKind("truncated", "invalid_response", inject(CI_BATCH, truncate=True), clear_datadog),
    FaultKind("html", "invalid_response",
              inject(CI_BATCH, status=200, body="<html>maintenance</html>",
                     content_type="text/html"), clear_datadog),
    FaultKind("over_max_response_bytes", "invalid_response",
              inject(CI_BATCH, status=200, body=json.dumps({"data": {"pad": "x" * 20000}})),
              clear_datadog, target_overrides={"max_response_bytes": 16384}),
    FaultKind("list_instead_of_object", "invalid_response",
              inject(CI_BATCH, status=200, body="[]"), clear_datadog),
]


async def settle(stack: Stack, source: str, target: str, polls: int = 3) -> None:
    """Let a few more successful polls happen (so a duplicate event would have shown)."""
    key = ("batchscope_polls_total", frozenset({("source", source), ("target", target)}))
    start = (await stack.samples())[key]
    await eventually(lambda: _at_least(stack, key, start + polls), what=f"{polls} more polls")


async def _at_least(stack: Stack, key: Any, value: float) -> bool:
    return (await stack.samples()).get(key, 0) >= value


async def wait_errors(stack: Stack, source: str, target: str, reason: str, n: int) -> None:
    async def enough() -> bool:
        return (await stack.errors(source, target)).get(reason, 0) >= n
    await eventually(enough, what=f"{n} poll errors with reason {reason}")


async def wait_up(stack: Stack, source: str, target: str, value: float) -> None:
    async def probe() -> bool:
        return await stack.up(source, target) == value
    await eventually(probe, what=f"batchscope_target_up == {value}")


def assert_one_outage(stack: Stack, source: str, target: str, reason: str) -> None:
    downs, ups = stack.downs(source, target), stack.ups(source, target)
    assert len(downs) == 1, downs
    assert downs[0]["reason"] == reason and downs[0]["level"] == "warning"
    assert downs[0]["error"]
    assert len(ups) == 1, ups


async def assert_only_reason(stack: Stack, source: str, target: str, reason: str,
                             at_least: int) -> None:
    errors = await stack.errors(source, target)
    assert errors[reason] >= at_least, errors
    assert {r: v for r, v in errors.items() if v and r != reason} == {}, errors


# --------------------------------------------------------------------------- engine


@pytest.mark.parametrize("fault", ENGINE_FAULTS, ids=lambda f: f.name)
async def test_engine_outage_reports_every_change_after_recovery(
        logs: LogLines, fault: FaultKind) -> None:
    """An engine outage of each kind: one target.down with the reason and one target.up,
    errors counted by reason, target_up 0 then 1, and the changes made during the outage
    (failed-then-passed, failed, cancelled, started-and-ended, started) each reported once."""
    async with running_stack(logs, engine_overrides=fault.target_overrides) as stack:
        eng = stack.engine
        a, b, c = (eng.create_batch("instance-migration", total_jobs=10) for _ in range(3))
        await wait_until(lambda: all(stack.transitions(x) == [(NONE, RUNNING)]
                                     for x in (a, b, c)), what="first sightings")
        await wait_up(stack, "engine", ENGINE, 1)

        fault.start(stack)  # no await until the changes are made: no poll sees them
        eng.fail_jobs(a, 2)  # a fails and passes while nobody can see it
        eng.retry_failed(a)
        eng.complete_jobs(a, 10)
        eng.finish(a)
        eng.fail_jobs(b, 3)
        eng.delete(c)
        d = eng.create_batch("set-variables", total_jobs=1)
        eng.complete_jobs(d, 1)
        eng.finish(d)
        e = eng.create_batch("instance-restart", total_jobs=5)
        await wait_until(lambda: stack.downs("engine", ENGINE), what="target.down")
        await wait_errors(stack, "engine", ENGINE, fault.reason, fault.failures)
        assert await stack.up("engine", ENGINE) == 0

        fault.end(stack)
        await wait_until(lambda: stack.ups("engine", ENGINE), what="target.up")
        expected = {
            a: [(NONE, RUNNING), (RUNNING, "passed")],
            b: [(NONE, RUNNING), (RUNNING, "failed")],
            c: [(NONE, RUNNING), (RUNNING, "cancelled")],
            d: [(NONE, "passed")],
            e: [(NONE, RUNNING)],
        }
        await wait_until(lambda: {x: stack.transitions(x) for x in expected} == expected,
                         what="every change of the outage reported")
        await settle(stack, "engine", ENGINE)
        assert {x: stack.transitions(x) for x in expected} == expected
        assert_one_outage(stack, "engine", ENGINE, fault.reason)
        await assert_only_reason(stack, "engine", ENGINE, fault.reason, fault.failures)
        assert await stack.up("engine", ENGINE) == 1
        assert await stack.up("datadog", DATADOG) == 1  # the other target never noticed
        seqs = [line["seq"] for line in logs.events("batch.transition")]
        assert seqs == list(range(1, len(seqs) + 1))


# --------------------------------------------------------------------------- datadog


@pytest.mark.parametrize("fault", DATADOG_FAULTS, ids=lambda f: f.name)
async def test_datadog_outage_reports_every_change_after_recovery(
        logs: LogLines, fault: FaultKind) -> None:
    """A Datadog outage of each kind: one target.down/target.up pair, errors by reason, and
    batches that passed, failed, were deleted, or were registered and finished during the
    outage are each reported once after recovery."""
    async with running_stack(logs, datadog_overrides=fault.target_overrides) as stack:
        dd = stack.datadog
        x, y, z = dd.create_batch(), dd.create_batch(), dd.create_batch()
        for batch in (x, y, z):
            assert await stack.post_watch(batch) == 201
        await wait_until(lambda: all(stack.transitions(b) == [(NONE, RUNNING)]
                                     for b in (x, y, z)), what="first polls")
        await wait_up(stack, "datadog", DATADOG, 1)

        fault.start(stack)
        dd.set_result(x, "abc-def-ghi", new_attempt=True)
        dd.finish(x, "passed")
        dd.finish(y, "failed")
        dd.delete(z)
        await wait_until(lambda: stack.downs("datadog", DATADOG), what="target.down")
        w = dd.create_batch()  # registered by CI during the outage, finished before recovery
        assert await stack.post_watch(w) == 201
        dd.finish(w, "passed")
        v = dd.create_batch()
        assert await stack.post_watch(v) == 201
        await wait_errors(stack, "datadog", DATADOG, fault.reason, fault.failures)
        assert await stack.up("datadog", DATADOG) == 0

        fault.end(stack)
        await wait_until(lambda: stack.ups("datadog", DATADOG), what="target.up")
        expected = {
            x: [(NONE, RUNNING), (RUNNING, "passed")],
            y: [(NONE, RUNNING), (RUNNING, "failed")],
            z: [(NONE, RUNNING), (RUNNING, "vanished")],
            w: [(NONE, "passed")],
            v: [(NONE, RUNNING)],
        }
        await wait_until(lambda: {b: stack.transitions(b) for b in expected} == expected,
                         what="every change of the outage reported")
        await settle(stack, "datadog", DATADOG)
        assert {b: stack.transitions(b) for b in expected} == expected
        assert_one_outage(stack, "datadog", DATADOG, fault.reason)
        await assert_only_reason(stack, "datadog", DATADOG, fault.reason, fault.failures)
        assert await stack.up("datadog", DATADOG) == 1
        assert await stack.up("engine", ENGINE) == 1
        # the retry during the outage is one result event, the final result another
        x_results = logs.events("ci_result.transition", batch_id=x, test_public_id="abc-def-ghi")
        assert [(r["from_state"], r["to_state"]) for r in x_results] == [
            (NONE, RUNNING), (RUNNING, "passed")]
        # datadog-ci's fast retry: the final attempt has retries 1 and a new result_id
        assert x_results[-1]["retries"] == 1


# --------------------------------------------------------------------------- connections


def port_of(url: str) -> int:
    return int(url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])


async def test_upstream_process_dies_and_comes_back(logs: LogLines) -> None:
    """Both fake upstreams stop listening (connections closed, then refused) and come back on
    the same ports: each target has one outage with reason ``connection``, and every change
    made while they were gone is reported once after they return."""
    async with running_stack(logs) as stack:
        eng, dd = stack.engine, stack.datadog
        a, b = eng.create_batch(total_jobs=10), eng.create_batch(total_jobs=10)
        x, y = dd.create_batch(), dd.create_batch()
        for batch in (x, y):
            assert await stack.post_watch(batch) == 201
        await wait_until(lambda: all(stack.transitions(i) == [(NONE, RUNNING)]
                                     for i in (a, b, x, y)), what="first sightings")
        engine_port, datadog_port = port_of(stack.sim.engine_url), port_of(stack.sim.datadog_url)

        await stack.sim.close()
        eng.finish(a)
        eng.delete(b, cascade=True)
        dd.finish(x, "passed")
        dd.finish(y, "failed")
        await wait_until(lambda: stack.downs("engine", ENGINE) and stack.downs("datadog", DATADOG),
                         what="both targets down")
        await wait_errors(stack, "engine", ENGINE, "connection", 3)
        await wait_errors(stack, "datadog", DATADOG, "connection", 3)

        stack.sim = await start_simulator(engine=eng, datadog=dd, engine_port=engine_port,
                                          datadog_port=datadog_port)
        expected = {a: [(NONE, RUNNING), (RUNNING, "passed")],
                    b: [(NONE, RUNNING), (RUNNING, "vanished")],
                    x: [(NONE, RUNNING), (RUNNING, "passed")],
                    y: [(NONE, RUNNING), (RUNNING, "failed")]}
        await wait_until(lambda: {i: stack.transitions(i) for i in expected} == expected,
                         what="changes made while the upstreams were gone")
        await wait_until(lambda: stack.ups("engine", ENGINE) and stack.ups("datadog", DATADOG))
        await settle(stack, "engine", ENGINE)
        assert {i: stack.transitions(i) for i in expected} == expected
        assert_one_outage(stack, "engine", ENGINE, "connection")
        assert_one_outage(stack, "datadog", DATADOG, "connection")
        await assert_only_reason(stack, "engine", ENGINE, "connection", 3)
        await assert_only_reason(stack, "datadog", DATADOG, "connection", 3)


async def _close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


async def _answer_garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1024)
    writer.write(b"SPDY/9 what\r\n\r\n")
    await writer.drain()
    writer.close()


@pytest.mark.parametrize(("listener", "reason"), [
    (None, "connection"),               # nothing listens: connection refused
    (_close_at_once, "connection"),     # accepts, then closes before answering
    (_answer_garbage, "invalid_response"),  # something that is not HTTP
], ids=["refused", "closed_on_accept", "not_http"])
async def test_engine_unreachable_from_start_then_appears(
        logs: LogLines, listener: Any, reason: str) -> None:
    """The engine is unreachable when the daemon starts: /readyz and /healthz still answer 200
    after the first attempt, the target is down with the reason; when the engine appears on
    that port, its batches (including one already finished after the daemon started) are
    reported."""
    port = free_port()
    server = None
    if listener is not None:
        server = await asyncio.start_server(listener, "127.0.0.1", port)
    url = f"http://127.0.0.1:{port}/engine-rest"
    async with running_stack(logs, engine_overrides={"url": url}) as stack:
        await wait_until(lambda: stack.downs("engine", ENGINE), what="target.down")
        assert stack.downs("engine", ENGINE)[0]["reason"] == reason
        assert (await stack.get("/readyz"))[0] == 200
        assert (await stack.get("/healthz"))[0] == 200
        assert await stack.up("engine", ENGINE) == 0
        if server is not None:
            server.close()
            await server.wait_closed()

        eng = FakeEngine()
        running = eng.create_batch(total_jobs=5)
        done = eng.create_batch(total_jobs=1)
        eng.finish(done)
        engine_only = await start_simulator(engine=eng, engine_port=port)
        stack.extra.append(engine_only)
        await wait_until(lambda: stack.transitions(running) == [(NONE, RUNNING)]
                         and stack.transitions(done) == [(NONE, "passed")],
                         what="batches of the late engine")
        await wait_until(lambda: stack.ups("engine", ENGINE))
        assert_one_outage(stack, "engine", ENGINE, reason)
        await assert_only_reason(stack, "engine", ENGINE, reason, 1)


async def test_chunked_response_over_the_cap_is_refused(logs: LogLines) -> None:
    """A response without Content-Length that streams past max_response_bytes is cut off and
    counted as ``invalid_response``; the daemon does not buffer it all."""
    sent = 0

    async def endless(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b"[")
        for _ in range(2000):  # up to 128 MiB unless the client hangs up
            await resp.write(b'"' + b"x" * 65534 + b'",')
            sent += 65536
        return resp

    app = web.Application()
    app.router.add_get("/engine-rest/batch/statistics", endless)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with running_stack(logs, engine_overrides={
                "url": f"http://127.0.0.1:{port}/engine-rest",
                "max_response_bytes": 1 << 20}) as stack:
            await wait_errors(stack, "engine", ENGINE, "invalid_response", 2)
            down = stack.downs("engine", ENGINE)
            assert len(down) == 1 and "exceeds" in down[0]["error"]
    finally:
        await runner.cleanup()
    assert sent < 64 << 20  # the client hung up long before the end


# --------------------------------------------------------------------------- schema surprises


async def statistics_rows(stack: Stack) -> list[dict[str, Any]]:
    async with stack.http.get(stack.sim.engine_url + "/batch/statistics") as resp:
        rows: list[dict[str, Any]] = await resp.json()
        return rows


@pytest.mark.parametrize("history", [True, False], ids=["history_full", "history_none"])
async def test_engine_bad_rows_are_skipped_and_the_rest_of_the_page_kept(
        logs: LogLines, history: bool) -> None:
    """A statistics page with a row missing ``id``, a non-object row and a known batch whose row
    has a wrong type: those entries are skipped and logged ``upstream.entry_skipped``; the rest
    of the page is applied (a failure, an unknown batch type, unknown fields); the batch with
    the unreadable row is not taken for ended (not even without history), and the target
    stays up."""
    async with running_stack(logs, engine=FakeEngine(history=history)) as stack:
        eng = stack.engine
        good, garbled = eng.create_batch(total_jobs=10), eng.create_batch(total_jobs=10)
        await wait_until(lambda: all(stack.transitions(b) == [(NONE, RUNNING)]
                                     for b in (good, garbled)))
        eng.fail_jobs(good, 2)
        rows = {r["id"]: r for r in await statistics_rows(stack)}
        rows[garbled]["remainingJobs"] = "many"
        nameless = dict(rows[good], id=None)
        novel = dict(rows[good], id="novel-1", type="custom-batch-type", failedJobs=0,
                     someFutureField={"x": 1}, tenantId=7)
        page = [rows[good], rows[garbled], nameless, 42, novel]
        eng.inject(STATISTICS, status=200, body=json.dumps(page), times=None)

        await wait_until(lambda: stack.transitions(good)[-1:] == [(RUNNING, "failed")])
        await wait_until(lambda: stack.transitions("novel-1") == [(NONE, RUNNING)])
        await wait_until(lambda: len(logs.events("upstream.entry_skipped")) >= 3)
        await settle(stack, "engine", ENGINE)
        skipped = logs.events("upstream.entry_skipped", source="engine", target=ENGINE)
        assert len(skipped) == 3  # each unreadable entry once, not once per poll
        assert {line["batch_id"] for line in skipped} == {garbled, None}
        assert all(line["endpoint"] == "/batch/statistics" and line["error"] for line in skipped)
        assert stack.transitions(garbled) == [(NONE, RUNNING)]  # not cancelled, not vanished
        novel_line = logs.events("batch.transition", batch_id="novel-1")[0]
        assert novel_line["batch_type"] == "custom-batch-type"
        assert await stack.up("engine", ENGINE) == 1
        assert stack.downs("engine", ENGINE) == []
        assert sum((await stack.errors("engine", ENGINE)).values()) == 0

        eng.clear_faults()  # the engine answers sanely again: the garbled batch ends normally
        eng.finish(garbled)
        await wait_until(lambda: stack.transitions(garbled)[-1][1] in ("passed", "vanished"))
        assert stack.transitions(garbled)[-1] == (RUNNING, "passed" if history else "vanished")


async def test_datadog_bad_result_entry_is_skipped_and_the_rest_kept(logs: LogLines) -> None:
    """A CI batch whose results list holds an entry without ``test_public_id`` and a non-object:
    those are skipped and logged, the other results and the batch status are applied."""
    async with running_stack(logs) as stack:
        dd = stack.datadog
        batch = dd.create_batch()
        assert await stack.post_watch(batch) == 201
        await wait_until(lambda: stack.transitions(batch) == [(NONE, RUNNING)])
        dd.finish(batch, "passed")
        body = dd.batch(batch).render()
        body["data"]["results"] += [{"status": "passed"}, "junk"]  # type: ignore[index]
        dd.inject(CI_BATCH, status=200, body=json.dumps(body), times=None)
        await wait_until(lambda: stack.transitions(batch)[-1:] == [(RUNNING, "passed")])
        skipped = logs.events("upstream.entry_skipped", source="datadog", batch_id=batch)
        assert len(skipped) == 2
        final = logs.events("batch.transition", batch_id=batch, to_state="passed")[0]
        assert final["results_total"] == 2 and final["results_passed"] == 2
        assert await stack.up("datadog", DATADOG) == 1


async def test_unknown_enum_values_keep_the_state_and_are_logged_once(logs: LogLines) -> None:
    """Unknown Datadog batch and result statuses never crash: the batch keeps its state, the
    unknown batch status is logged once however often it is seen, and the next known status
    is reported normally."""
    async with running_stack(logs) as stack:
        dd = stack.datadog
        batch = dd.create_batch()
        assert await stack.post_watch(batch) == 201
        await wait_until(lambda: stack.transitions(batch) == [(NONE, RUNNING)])
        dd.set_status(batch, "queued_for_rerun")
        dd.set_result(batch, "abc-def-ghi", status="blocked")
        await wait_until(lambda: logs.events("datadog.unknown_status", batch_id=batch))
        await settle(stack, "datadog", DATADOG, polls=5)
        assert len(logs.events("datadog.unknown_status", batch_id=batch)) == 1
        assert stack.transitions(batch) == [(NONE, RUNNING)]
        results = logs.events("ci_result.transition", batch_id=batch, test_public_id="abc-def-ghi")
        assert [(r["from_state"], r["to_state"]) for r in results] == [(NONE, RUNNING)]
        dd.finish(batch, "passed")
        dd.set_result(batch, "abc-def-ghi", status="passed")
        await wait_until(lambda: stack.transitions(batch)[-1:] == [(RUNNING, "passed")])
        assert await stack.up("datadog", DATADOG) == 1
        assert sum((await stack.errors("datadog", DATADOG)).values()) == 0


# --------------------------------------------------------------------------- mixed faults


async def test_mixed_faults_make_one_outage_per_target_and_lose_nothing(logs: LogLines) -> None:
    """Engine and Datadog fail at the same time, each poll with a different fault (5xx,
    timeout, malformed JSON, truncated body, auth; 503, 429): one target.down (the first
    reason) and one target.up per target, every failed poll counted under its own reason,
    and the transitions of the outage reported once. A second, later outage is a second
    down/up pair."""
    async with running_stack(logs, engine_overrides={"request_timeout": 0.3}) as stack:
        eng, dd = stack.engine, stack.datadog
        a = eng.create_batch(total_jobs=10)
        x = dd.create_batch()
        assert await stack.post_watch(x) == 201
        await wait_until(lambda: stack.transitions(a) == [(NONE, RUNNING)]
                         and stack.transitions(x) == [(NONE, RUNNING)])

        eng.inject(STATISTICS, status=500, body=EXCEPTION_DTO)
        eng.inject(STATISTICS, delay=1.0)
        eng.inject(STATISTICS, status=200, body="[{")
        eng.inject(STATISTICS, truncate=True)
        eng.inject(STATISTICS, status=401, body="")
        dd.inject(CI_BATCH, status=503, body="", times=2)
        dd.inject(CI_BATCH, status=429, body="", headers={"Retry-After": "0.2"})
        eng.fail_jobs(a, 1)
        dd.finish(x, "failed")
        await wait_until(lambda: stack.transitions(a)[-1:] == [(RUNNING, "failed")]
                         and stack.transitions(x)[-1:] == [(RUNNING, "failed")],
                         timeout=20, what="transitions after the mixed outage")
        await wait_until(lambda: stack.ups("engine", ENGINE) and stack.ups("datadog", DATADOG))
        assert_one_outage(stack, "engine", ENGINE, "http_5xx")
        assert_one_outage(stack, "datadog", DATADOG, "http_5xx")
        engine_errors = await stack.errors("engine", ENGINE)
        assert {r: v for r, v in engine_errors.items() if v} == {
            "http_5xx": 1, "timeout": 1, "invalid_response": 2, "auth": 1}
        datadog_errors = await stack.errors("datadog", DATADOG)
        assert {r: v for r, v in datadog_errors.items() if v} == {
            "http_5xx": 2, "rate_limited": 1}

        # a second outage is a second pair of lines
        eng.inject(STATISTICS, status=403, body="", times=2)
        eng.retry_failed(a)
        await wait_until(lambda: len(stack.ups("engine", ENGINE)) == 2, what="second recovery")
        downs = stack.downs("engine", ENGINE)
        assert [d["reason"] for d in downs] == ["http_5xx", "auth"]
        await wait_until(lambda: stack.transitions(a)[-1:] == [("failed", RUNNING)])
        assert stack.transitions(a) == [(NONE, RUNNING), (RUNNING, "failed"), ("failed", RUNNING)]
        assert stack.transitions(x) == [(NONE, RUNNING), (RUNNING, "failed")]


# --------------------------------------------------------------------------- isolation


async def test_a_slow_target_delays_neither_others_nor_the_http_server(logs: LogLines) -> None:
    """One engine answers after 3 s; the healthy engine keeps its 0.05 s cadence and reports
    its transitions promptly meanwhile, and /metrics, /healthz and /readyz answer in < 0.5 s."""
    async with running_stack(logs, extra_engines=[("slow", {"request_timeout": 10})]) as stack:
        fast, slow = stack.engine, stack.extra[0].engine
        slow_batch = slow.create_batch(total_jobs=10)
        await wait_until(lambda: stack.transitions(slow_batch) == [(NONE, RUNNING)])
        await wait_until(lambda: stack.daemon.ready)

        slow.inject(STATISTICS, delay=3.0, times=None)
        stuck_from = len(slow.requests)
        await wait_until(lambda: any(STATISTICS in r.path_qs for r in slow.requests[stuck_from:]),
                         what="a slow poll in flight")
        slow.fail_jobs(slow_batch, 1)  # not visible until the slow answer arrives
        polls = ("batchscope_polls_total", frozenset({("source", "engine"), ("target", ENGINE)}))
        slow_polls = ("batchscope_polls_total", frozenset({("source", "engine"),
                                                           ("target", "slow")}))
        before = await stack.samples()
        started = asyncio.get_running_loop().time()

        batch = fast.create_batch(total_jobs=10)
        await wait_until(lambda: stack.transitions(batch) == [(NONE, RUNNING)], timeout=0.5)
        fast.fail_jobs(batch, 1)
        await wait_until(lambda: stack.transitions(batch)[-1:] == [(RUNNING, "failed")],
                         timeout=0.5)
        fast.finish(batch)
        await wait_until(lambda: stack.transitions(batch)[-1:] == [("failed", "passed")],
                         timeout=0.5)
        latencies = []
        while asyncio.get_running_loop().time() - started < 1.5:
            for path in ("/metrics", "/healthz", "/readyz"):
                status, _, seconds = await stack.get(path)
                assert status == 200, path
                latencies.append(seconds)
        after = await stack.samples()
        elapsed = asyncio.get_running_loop().time() - started

        assert max(latencies) < 0.5, max(latencies)
        assert after[slow_polls] == before[slow_polls]  # the slow poll is still stuck ...
        assert stack.transitions(slow_batch) == [(NONE, RUNNING)]
        # ... while the fast one went on at about its interval (0.05 s; allow 3x slack)
        assert after[polls] - before[polls] >= elapsed / 0.15, (after[polls], before[polls])
        slow.clear_faults()
        await wait_until(lambda: stack.transitions(slow_batch)[-1:] == [(RUNNING, "failed")],
                         timeout=5)
        assert stack.downs("engine", "slow") == [] and stack.downs("engine", ENGINE) == []


# --------------------------------------------------------------------------- rate limits


class CountingDatadog(FakeDatadog):
    """The fake Datadog, counting the requests its rate limit let through and refused."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.allowed = self.refused = 0

    def _spend_rate_limit(self, limit: int) -> tuple[bool, dict[str, str]]:
        allowed, headers = super()._spend_rate_limit(limit)
        if allowed:
            self.allowed += 1
        else:
            self.refused += 1
        return allowed, headers


async def test_pacer_spends_the_rate_limit_budget_without_429s(logs: LogLines) -> None:
    """100 watched CI batches, a budget of 60 requests per 1 s window and 0.05 s polling that
    would need 2000 requests/s: the Pacer waits for the window instead of hitting 429,
    batchscope_rate_limit_remaining is exported, and batches still get reported."""
    dd = CountingDatadog(api_key=API_KEY, app_key=APP_KEY, rate_limit=60, rate_limit_period=1)
    ids = dd.create_many(100)
    async with running_stack(logs, datadog=dd,
                             datadog_overrides={"batch_ids": ids, "max_concurrency": 8}) as stack:
        await wait_until(lambda: all(stack.transitions(b) for b in ids), timeout=15,
                         what="every batch polled once")
        for b in ids[:10]:
            dd.finish(b, "passed")
        await wait_until(lambda: all(stack.transitions(b)[-1:] == [(RUNNING, "passed")]
                                     for b in ids[:10]), timeout=15)
        remaining = await stack.sample("batchscope_rate_limit_remaining", source="datadog",
                                       target=DATADOG)
        assert remaining is not None and 0 <= remaining <= 60
        errors = await stack.errors("datadog", DATADOG)
        assert errors["rate_limited"] == 0, errors
        assert stack.downs("datadog", DATADOG) == []
        assert dd.refused == 0  # the fake's own count of 429 answers
        assert dd.allowed >= 110


@pytest.mark.parametrize("source", ["engine", "datadog"])
async def test_retry_after_is_honoured(logs: LogLines, source: str) -> None:
    """After a 429 with ``Retry-After: 1`` the target is not asked again for about a second,
    although its poll interval is 0.05 s; then it recovers and carries on."""
    async with running_stack(logs) as stack:
        upstream: FaultInjector
        if source == "engine":
            upstream, path, target = stack.engine, STATISTICS, ENGINE
        else:
            upstream, path, target = stack.datadog, CI_BATCH, DATADOG
            assert await stack.post_watch(stack.datadog.create_batch()) == 201
        await wait_up(stack, source, target, 1)
        upstream.inject(path, status=429, body="", headers={"Retry-After": "1"})
        await wait_errors(stack, source, target, "rate_limited", 1)
        seen_at = asyncio.get_running_loop().time()
        asked = len([r for r in upstream.requests if path in r.path_qs])
        await wait_until(lambda: len([r for r in upstream.requests if path in r.path_qs]) > asked,
                         what="the next request")
        assert asyncio.get_running_loop().time() - seen_at >= 0.8
        await wait_up(stack, source, target, 1)
        assert_one_outage(stack, source, target, "rate_limited")
