"""Hostile and broken upstreams (issue 9): what the operator sees when an engine, a proxy or
Datadog misbehaves on purpose or by accident.

Each test scripts one behaviour on a real aiohttp fake on loopback (the simulator's fault
injection) and asserts on the daemon's log lines, ``/metrics``, ``/healthz``, exit codes or
memory: paging that never ends (item 1), upstream-dictated waits (item 2), the engine's
``Date`` header (item 6) and the ids ``.`` and ``..`` (item 9).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from batchscope.runtime import compose
from batchscope.runtime.daemon import Daemon
from batchscope.runtime.poll_loop import RunningTarget, poll_forever
from batchscope.settings import EngineTarget
from batchscope.simulator.datadog import FakeDatadog
from batchscope.simulator.engine import FakeEngine
from batchscope.simulator.server import RunningSimulator, start_simulator
from batchscope.sinks.logs import EventLog
from batchscope.sinks.metrics import Metrics
from batchscope.sources.engine import EngineClient
from batchscope.sources.fetch import MAX_UPSTREAM_WAIT, PollError
from harness import (
    API_KEY,
    APP_KEY,
    DATADOG,
    ENGINE,
    datadog_target,
    engine_target,
    free_port,
    make_settings,
    running_simulator,
    serving,
)
from helpers import LogLines, eventually, wait_until
from reliability_kit import Stack, running_stack

STATISTICS = "/batch/statistics"
HISTORY_SWEEP = "/history/batch?"
CI_BATCH = "/api/v1/synthetics/ci/batch/"
DAEMON_DIR = Path(__file__).resolve().parents[2] / "daemon"
MB = 1024 * 1024
#: The daemon's RSS against endless paging (measured: about 60 MB idle, 95 MB peak at the
#: default bound; it grew by about 25 MB/s before paging had a bound).
RSS_BOUND = 250 * MB

# A /batch/statistics row and a /history/batch row as Camunda 7 renders them
# (tests/fixtures/real_bodies); the id is filled in per row.
STATISTICS_ROW: dict[str, Any] = {
    "type": "instance-migration", "totalJobs": 1000, "jobsCreated": 100, "batchJobsPerSeed": 100,
    "invocationsPerBatchJob": 1, "seedJobDefinitionId": "seed-1",
    "monitorJobDefinitionId": "mon-1", "batchJobDefinitionId": "job-1", "suspended": False,
    "tenantId": None, "createUserId": "demo", "startTime": "2024-07-09T11:33:42.165+0000",
    "executionStartTime": None, "remainingJobs": 1000, "completedJobs": 0, "failedJobs": 0,
}
FUTURE_HISTORY_ROW: dict[str, Any] = {
    "type": "instance-migration", "totalJobs": 1000, "batchJobsPerSeed": 100,
    "invocationsPerBatchJob": 1, "seedJobDefinitionId": "seed-1",
    "monitorJobDefinitionId": "mon-1", "batchJobDefinitionId": "job-1", "tenantId": None,
    "createUserId": "demo", "startTime": "2099-12-31T11:33:42.165+0000",
    "endTime": "2100-01-01T12:01:05.999+0000", "removalTime": None,
    "executionStartTime": "2099-12-31T11:34:00.001+0000",
}


def statistics_row(index: int) -> dict[str, Any]:
    """Row ``index`` of a runtime listing that never ends (every id new)."""
    return {"id": f"endless-{index:09d}", **STATISTICS_ROW}


def future_history_row(index: int) -> dict[str, Any]:
    """Row ``index`` of a history whose batches all end in 2100 (every id new)."""
    return {"id": f"future-{index:09d}", **FUTURE_HISTORY_ROW}


def requests_to(upstream: FakeEngine | FakeDatadog, part: str) -> int:
    return sum(1 for r in upstream.requests if part in r.path_qs)


@contextlib.asynccontextmanager
async def engine_client(engine: FakeEngine, *, page_size: int = 50,
                        max_rows: int = 200) -> AsyncIterator[EngineClient]:
    """A real EngineClient (real HTTP) on ``engine`` served on loopback."""
    async with await start_simulator(engine=engine) as sim, aiohttp.ClientSession() as session:
        target = EngineTarget(name=ENGINE, url=sim.engine_url, page_size=page_size,
                              request_timeout=5)
        yield EngineClient(target, session, max_rows=max_rows)


async def poll_error(call: Callable[[], Any]) -> PollError:
    with pytest.raises(PollError) as caught:
        await call()
    return caught.value


# ============================================================ item 1: paging that never ends


async def test_engine_ignoring_first_result_fails_at_the_second_page() -> None:
    """An engine (or proxy) that ignores firstResult serves page 1 again: the listing stops
    at page 2 with invalid_response naming the repeat, instead of reading forever."""
    engine = FakeEngine()
    engine.create_many(50)
    engine.inject(STATISTICS, ignore_first_result=True, times=None)
    async with engine_client(engine, page_size=50) as client:
        error = await asyncio.wait_for(poll_error(client.runtime_batches), 10)
    assert error.reason == "invalid_response"
    assert error.detail.startswith("paging did not end: /batch/statistics page 2 repeated "
                                   "the ids of page 1"), error.detail
    assert "firstResult" in error.detail
    assert requests_to(engine, STATISTICS) == 2


async def test_overlapping_pages_that_bring_no_new_id_fail() -> None:
    """Full pages that only repeat ids of earlier pages (not the same page) also stop the
    listing: page 3 of a 60-row list served round and round brings nothing new."""
    engine = FakeEngine()
    engine.inject(STATISTICS, endless=lambda i: statistics_row(i % 60), times=None)
    async with engine_client(engine, page_size=50) as client:
        error = await asyncio.wait_for(poll_error(client.runtime_batches), 10)
    assert error.reason == "invalid_response"
    assert error.detail == ("paging did not end: /batch/statistics page 3 (firstResult=100) "
                            "brought no id that earlier pages had not listed")
    assert requests_to(engine, STATISTICS) == 3


async def test_full_page_without_ids_fails_at_once() -> None:
    """A full first page whose rows carry no id (a proxy's list of something else) cannot
    be paged safely: the listing fails at page 1 instead of asking for page 2 forever."""
    engine = FakeEngine()
    engine.inject(STATISTICS, endless=lambda i: {"index": i}, times=None)
    async with engine_client(engine, page_size=50) as client:
        error = await asyncio.wait_for(poll_error(client.runtime_batches), 10)
    assert error.reason == "invalid_response"
    assert error.detail == ("paging did not end: /batch/statistics page 1 is full (50 rows) "
                            "and names no batch id")
    assert requests_to(engine, STATISTICS) == 1


async def test_endless_runtime_listing_stops_at_the_row_bound() -> None:
    """Full pages of new ids forever: the listing stops before reading past
    max_rows + page_size rows (the tracker could not hold more) with a clear detail."""
    engine = FakeEngine()
    engine.inject(STATISTICS, endless=statistics_row, times=None)
    async with engine_client(engine, page_size=50, max_rows=200) as client:
        error = await asyncio.wait_for(poll_error(client.runtime_batches), 10)
    assert error.reason == "invalid_response"
    assert error.detail == ("paging did not end: /batch/statistics still full after 5 pages "
                            "(250 rows), more than max_tracked_batches (200) can hold")
    assert requests_to(engine, STATISTICS) == 5


async def test_listing_within_the_row_bound_is_read_whole() -> None:
    """The bound does not cut a real listing short: 249 batches with max_rows 200 and pages
    of 50 end on a short fifth page, every batch listed, no error."""
    engine = FakeEngine()
    ids = engine.create_many(249)
    async with engine_client(engine, page_size=50, max_rows=200) as client:
        listing = await asyncio.wait_for(client.runtime_batches(), 10)
    assert sorted(r.batch_id for r in listing.rows) == sorted(ids)
    assert requests_to(engine, STATISTICS) == 5


async def test_history_sweep_of_rows_ending_in_the_future_stops() -> None:
    """A history whose rows all end in 2100 never reaches ``since``: the sweep stops at the
    row bound with invalid_response instead of paging forever."""
    engine = FakeEngine()
    engine.inject(HISTORY_SWEEP, endless=future_history_row, times=None)
    async with engine_client(engine, max_rows=200) as client:
        error = await asyncio.wait_for(
            poll_error(lambda: client.finished_since(time.time() - 60, page_size=50)), 10)
    assert error.reason == "invalid_response"
    assert error.detail == ("paging did not end: /history/batch still full after 5 pages "
                            "(250 rows), more than max_tracked_batches (200) can hold")
    assert requests_to(engine, HISTORY_SWEEP) == 5


async def test_history_sweep_ignoring_first_result_fails_at_the_second_page() -> None:
    """The history sweep over an engine that ignores firstResult stops at the repeated page
    (its rows all end after ``since``, so only the repeat can stop it)."""
    engine = FakeEngine()
    for batch_id in engine.create_many(60):
        engine.finish(batch_id)
    engine.inject(HISTORY_SWEEP, ignore_first_result=True, times=None)
    async with engine_client(engine) as client:
        error = await asyncio.wait_for(
            poll_error(lambda: client.finished_since(time.time() - 600, page_size=50)), 10)
    assert error.reason == "invalid_response"
    assert error.detail.startswith("paging did not end: /history/batch page 2 repeated the "
                                   "ids of page 1"), error.detail
    assert requests_to(engine, HISTORY_SWEEP) == 2


async def test_daemon_reports_paging_that_never_ends_and_recovers(logs: LogLines) -> None:
    """Through the daemon: an engine ignoring firstResult makes one target.down line
    (invalid_response, "paging did not end"), target_up 0 and counted errors while polling
    goes on (/healthz 200); once the engine pages properly, target.up and every batch."""
    engine = FakeEngine()
    ids = engine.create_many(75)  # page_size is 50: two pages
    engine.inject(STATISTICS, ignore_first_result=True, times=None)
    async with running_stack(logs, engine=engine) as stack:
        down = await wait_until(lambda: stack.downs("engine", ENGINE), what="target.down")
        assert len(down) == 1
        assert down[0]["reason"] == "invalid_response"
        assert "paging did not end: /batch/statistics page 2 repeated" in down[0]["error"]

        async def failing_polls() -> bool:
            return (await stack.errors("engine", ENGINE)).get("invalid_response", 0) >= 3
        await eventually(failing_polls, what="the loop keeps polling")
        assert await stack.up("engine", ENGINE) == 0
        status, _, _ = await stack.get("/healthz")
        assert status == 200
        assert not any(stack.transitions(b) for b in ids)  # a failed listing reports nothing

        engine.clear_faults()
        await wait_until(lambda: stack.ups("engine", ENGINE), what="target.up")
        await wait_until(lambda: all(stack.transitions(b) == [("none", "in_progress")]
                                     for b in ids), what="every batch after recovery")
        assert await stack.up("engine", ENGINE) == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("where", "rows", "endpoint"),
    [(STATISTICS, statistics_row, "/batch/statistics"),
     (HISTORY_SWEEP, future_history_row, "/history/batch")],
    ids=["endless-runtime-listing", "history-ending-in-2100"],
)
async def test_daemon_memory_stays_bounded_against_endless_paging(
        tmp_path: Path, where: str, rows: Callable[[int], object], endpoint: str) -> None:
    """The real process (`batchscope run`) against an upstream whose pages never end, at
    the default bound (max_tracked_batches 50,000): each poll fails with "paging did not
    end", /healthz stays 200, and the peak RSS stays bounded (before the fix it grew by
    about 25 MB/s without a log line)."""
    engine = FakeEngine()
    engine.inject(where, endless=rows, times=None)
    async with await start_simulator(engine=engine) as sim:
        port = free_port()
        config = tmp_path / "batchscope.toml"
        config.write_text(f"""
poll_interval = 0.2
state_path = ":memory:"
[http]
host = "127.0.0.1"
port = {port}
[[engines]]
name = "{ENGINE}"
url = "{sim.engine_url}"
page_size = 1000
""")
        async with daemon_process(config) as proc, aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{port}"

            async def failed_polls() -> float:
                try:
                    async with http.get(base + "/metrics") as resp:
                        text = await resp.text()
                except aiohttp.ClientConnectionError:
                    return 0.0  # not listening yet
                for line in text.splitlines():
                    if (line.startswith("batchscope_poll_errors_total{")
                            and 'reason="invalid_response"' in line):
                        return float(line.rsplit(" ", 1)[1])
                return 0.0

            async def two_failed_polls_within_memory() -> bool:
                rss = vm_kb(proc.pid, "VmRSS") * 1024
                assert rss < RSS_BOUND, f"RSS {rss / MB:.0f} MB while paging"
                return await failed_polls() >= 2

            await eventually(two_failed_polls_within_memory, timeout=60,
                             what="two polls failing with invalid_response")
            peak = vm_kb(proc.pid, "VmHWM") * 1024
            async with http.get(base + "/healthz") as resp:
                assert resp.status == 200
            async with http.get(base + "/metrics") as resp:
                assert f'batchscope_target_up{{source="engine",target="{ENGINE}"}} 0.0' in (
                    await resp.text())
            proc.send_signal(signal.SIGTERM)
            out, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0
    downs = [json.loads(line) for line in out.decode().splitlines()
             if '"target.down"' in line]
    assert downs, out.decode()[-2000:]
    assert downs[0]["reason"] == "invalid_response"
    assert downs[0]["error"].startswith(f"paging did not end: {endpoint} still full after")
    assert "max_tracked_batches (50000)" in downs[0]["error"]
    # One poll may hold up to 51,000 parsed rows (about 95 MB peak measured), never more.
    assert peak < RSS_BOUND, f"peak RSS {peak / MB:.0f} MB"


async def _at_least(probe: Callable[[], Any], n: float) -> bool:
    return bool(await probe() >= n)


def vm_kb(pid: int, field: str) -> int:
    """A /proc/PID/status memory figure in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


def cli_env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items()
           if not k.startswith(("BATCHSCOPE_", "DD_", "CREDENTIALS_DIRECTORY"))}
    out["PYTHONPATH"] = str(DAEMON_DIR)
    return out


@contextlib.asynccontextmanager
async def daemon_process(config: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """`python -m batchscope run --config CONFIG`, killed if the test leaves it running."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "batchscope", "run", "--config", str(config), env=cli_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def batchscope(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    """Run the command line; (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "batchscope", *args, env=cli_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# ============================================================ item 2: upstream-dictated waits


@pytest.mark.parametrize("retry_after", ["1000000000", "1e9", "Fri, 01 Jan 2100 00:00:00 GMT"])
async def test_huge_retry_after_waits_at_most_the_backoff_cap(
        logs: LogLines, retry_after: str) -> None:
    """One 429 with an absurd Retry-After: the poll loop logs target.waiting once with the
    capped wait (300 s), schedules its next poll no later than the cap, and stops at once
    when asked (the target is never parked for good)."""
    engine = FakeEngine()
    engine.inject(STATISTICS, status=429, body="", headers={"Retry-After": retry_after})
    async with await start_simulator(engine=engine) as sim, aiohttp.ClientSession() as session:
        settings = make_settings([engine_target(sim.engine_url, poll_interval=0.05)], [])
        [target] = settings.engines
        core = compose.new_core(settings)
        core.configure([compose.target_watch(target)], time.time())
        heartbeat = compose.heartbeat_for(target)
        poller = compose.make_poller(target, settings=settings, core=core,
                                     publish=lambda outcome: None, clock=time.time,
                                     session=session, heartbeat=heartbeat)
        rt = RunningTarget(settings=target, poller=poller, session=session)
        stop = asyncio.Event()
        delays: list[float] = []

        def after_poll() -> None:
            # expect_within(delay) set deadline = now + delay + grace just before this
            delays.append(heartbeat.deadline - time.monotonic() - heartbeat.grace)
            stop.set()

        loop = asyncio.create_task(poll_forever(
            rt, stop=stop, metrics=Metrics(core.tracker, max_batch_series=10),
            log_sink=EventLog(), clock=time.time, after_poll=after_poll))
        await asyncio.wait_for(loop, 10)  # stop is honoured during the long wait
    [delay] = delays
    assert MAX_UPSTREAM_WAIT - 1 <= delay <= MAX_UPSTREAM_WAIT + 0.01, delay
    [waiting] = logs.events("target.waiting")
    assert waiting["seconds"] == MAX_UPSTREAM_WAIT and waiting["reason"] == "rate_limited"
    assert rt.up is False


@pytest.mark.parametrize("source", ["engine", "datadog"])
@pytest.mark.parametrize("retry_after", ["inf", "-5", "1e400"])
async def test_non_finite_retry_after_is_ignored_and_the_target_recovers(
        logs: LogLines, source: str, retry_after: str) -> None:
    """A 429 with Retry-After inf/-5/1e400 is an ordinary rate limit: no wait is taken from
    it (no target.waiting), and once the upstream answers again target_up is back to 1
    within seconds (Datadog's pacer holds back 5 s after a 429 without a usable wait),
    far below the 300 s cap."""
    async with running_stack(logs) as stack:
        if source == "datadog":
            batch = stack.datadog.create_batch()
            await stack.watch(batch)
            upstream: FakeEngine | FakeDatadog = stack.datadog
            path, target = CI_BATCH, DATADOG
        else:
            upstream, path, target = stack.engine, STATISTICS, ENGINE
        await eventually(lambda: _equals(stack.up(source, target), 1), what="target up")
        upstream.inject(path, status=429, body='{"errors": ["Too many requests"]}',
                        headers={"Retry-After": retry_after})
        await wait_until(lambda: stack.downs(source, target), what="target.down")
        assert stack.downs(source, target)[0]["reason"] == "rate_limited"
        await wait_until(lambda: stack.ups(source, target), timeout=20, what="target.up")
        assert await stack.up(source, target) == 1
        assert not logs.events("target.waiting")
        assert not logs.events("poll.crashed")


async def _equals(probe: Any, value: float) -> bool:
    return bool(await probe == value)


async def test_rate_limit_remaining_inf_does_not_break_polling(logs: LogLines) -> None:
    """X-RateLimit-Remaining: inf (and a NaN limit) on every Datadog answer is ignored, not
    an OverflowError on every poll: the batch is followed to its end, no poll error."""
    async with running_stack(logs) as stack:
        stack.datadog.inject(CI_BATCH, times=None, headers={
            "X-RateLimit-Remaining": "inf", "X-RateLimit-Limit": "nan",
            "X-RateLimit-Reset": "inf"})
        batch = stack.datadog.create_batch()
        await stack.watch(batch)
        await wait_until(lambda: stack.transitions(batch), what="first sighting")
        stack.datadog.finish(batch, "passed")
        await wait_until(lambda: ("in_progress", "passed") in stack.transitions(batch),
                         what="the batch passes")
        assert requests_to(stack.datadog, CI_BATCH) >= 2
        assert sum((await stack.errors("datadog", DATADOG)).values()) == 0
        assert await stack.up("datadog", DATADOG) == 1
        assert not logs.events("poll.crashed")
        assert not stack.downs("datadog", DATADOG)


# ============================================================ item 6: the engine's Date header


def http_date(year: int) -> str:
    return email.utils.format_datetime(datetime(year, 1, 1, tzinfo=UTC), usegmt=True)


class SettableClock:
    """The fake engine's clock: the real time unless a test pins it."""

    def __init__(self) -> None:
        self.pinned: float | None = None

    def __call__(self) -> float:
        return time.time() if self.pinned is None else self.pinned


def end_between_polls(engine: FakeEngine) -> str:
    """A batch that starts and ends before any poll can list it as running."""
    batch_id = engine.create_batch(total_jobs=1)
    engine.complete_jobs(batch_id, 1)
    engine.finish(batch_id)
    return batch_id


@contextlib.asynccontextmanager
async def daemon_on(sim: RunningSimulator, logs: LogLines, state: Path) -> AsyncIterator[Stack]:
    """A daemon on ``sim`` with a persistent state file; stopped (state saved) on exit."""
    settings = make_settings(
        [engine_target(sim.engine_url, stall_after=600)],
        [datadog_target(sim.datadog_url)], state_path=str(state))
    async with serving(sim, settings, partial(Stack, logs=logs)) as stack:
        yield stack


async def polls(stack: Stack) -> float:
    return await stack.sample("batchscope_polls_total", source="engine", target=ENGINE) or 0


async def more_polls(stack: Stack, n: int = 3) -> None:
    start = await polls(stack)
    await eventually(lambda: _at_least(lambda: polls(stack), start + n), what=f"{n} polls")


@pytest.mark.parametrize("year", [1990, 2100])
async def test_implausible_engine_date_neither_reports_old_endings_nor_hides_new_ones(
        logs: LogLines, tmp_path: Path, year: int) -> None:
    """An engine whose HTTP Date says 1990 or 2100: the skew is ignored (one
    engine.clock_skew_ignored line); a batch that ended in 2019 is never reported as
    ``none -> passed``; batches that start and end between polls are reported, before and
    after a restart on the same state file, and the one that ended while the daemon was
    down is reported once after it comes back."""
    clock = SettableClock()
    engine = FakeEngine(clock=clock)
    clock.pinned = datetime(2019, 6, 1, tzinfo=UTC).timestamp()
    old = end_between_polls(engine)
    clock.pinned = None
    engine.inject("", headers={"Date": http_date(year)}, times=None)  # every answer
    state = tmp_path / "state.db"
    async with running_simulator(engine=engine) as sim:
        async with aiohttp.ClientSession() as http, http.get(sim.engine_url + STATISTICS) as resp:
            assert resp.headers["Date"] == http_date(year)  # the fault reaches the client
        async with daemon_on(sim, logs, state) as stack:
            await more_polls(stack)
            [skew] = logs.events("engine.clock_skew_ignored", target=ENGINE)
            assert (skew["skew_seconds"] < -86_400 * 365) == (year < 2000)
            first = end_between_polls(engine)
            await wait_until(lambda: stack.transitions(first) == [("none", "passed")],
                             what="a batch that ended between polls")
        while_down = end_between_polls(engine)
        async with daemon_on(sim, logs, state) as stack:
            second = end_between_polls(engine)
            await wait_until(lambda: stack.transitions(second) == [("none", "passed")],
                             what="a batch ending between polls after the restart")
            await wait_until(lambda: stack.transitions(while_down) == [("none", "passed")],
                             what="the batch that ended while the daemon was down")
            await more_polls(stack)
            assert not logs.events("engine.watermark_discarded")
    assert stack.transitions(first) == [("none", "passed")]  # not again after the restart
    assert stack.transitions(old) == []


async def test_watermark_from_the_future_is_discarded_after_restart(
        logs: LogLines, tmp_path: Path) -> None:
    """A state file whose history watermark lies in the future (written under a clock a
    century ahead) would hide every batch that starts and ends between polls: after a
    restart with a sane clock it is discarded with engine.watermark_discarded, and such a
    batch is reported again."""
    state = tmp_path / "state.db"
    century = 100 * 365 * 86_400
    async with running_simulator() as sim:
        settings = make_settings([engine_target(sim.engine_url, stall_after=600)], [],
                                 state_path=str(state))
        ahead = Daemon(settings, clock=lambda: time.time() + century)
        await ahead.start()
        try:
            await wait_until(lambda: ahead.core.sweep_from(ENGINE) is not None
                             and requests_to(sim.engine, HISTORY_SWEEP) >= 2,
                             what="a history sweep under the future clock")
        finally:
            await ahead.stop()  # saves the state, watermark included
        async with daemon_on(sim, logs, state) as stack:
            [discarded] = logs.events("engine.watermark_discarded", target=ENGINE)
            assert discarded["watermark"] > time.time() + century / 2
            batch = end_between_polls(sim.engine)
            await wait_until(lambda: stack.transitions(batch) == [("none", "passed")],
                             what="a batch ending between polls")


# ============================================================ item 9: the ids "." and ".."


@pytest.mark.parametrize("batch_id", [".", ".."])
async def test_dot_ids_are_refused_by_the_api(logs: LogLines, batch_id: str) -> None:
    """POST /api/v1/datadog/batches with "." or "..": 400 with an error, nothing watched,
    and no request (with the keys) ever sent to Datadog for it."""
    async with running_stack(logs) as stack:
        async with stack._post_watch(batch_id, None) as resp:
            assert resp.status == 400
            assert "error" in await resp.json()
        await more_polls(stack, 2)
        assert await stack.get_json("/api/v1/batches?source=datadog") == []
        assert not [r for r in stack.datadog.requests
                    if r.path_qs.rstrip("/").endswith(("/ci", "/ci/batch", "/batch/."))]


@pytest.mark.parametrize("batch_id", [".", ".."])
async def test_dot_ids_are_refused_by_settings_and_wait(tmp_path: Path, batch_id: str) -> None:
    """A batch_ids entry "." or ".." is invalid configuration (78, naming the setting) and
    `wait ..` is a usage error (2): neither reaches Datadog."""
    datadog = FakeDatadog(api_key=API_KEY, app_key=APP_KEY)
    async with await start_simulator(datadog=datadog) as sim:
        config = tmp_path / "batchscope.toml"
        base = (f'state_path = ":memory:"\n[[datadog]]\nname = "{DATADOG}"\n'
                f'url = "{sim.datadog_url}"\napi_key = "{API_KEY}"\napp_key = "{APP_KEY}"\n')
        config.write_text(base + f'batch_ids = ["{batch_id}"]\n')
        code, _, err = await batchscope("check-config", "--config", str(config))
        assert code == 78, err
        assert "datadog.0.batch_ids" in err
        assert API_KEY not in err

        config.write_text(base)
        code, _, err = await batchscope("wait", "--config", str(config), "--timeout", "5",
                                        batch_id)
        assert code == 2, err
        assert "batch id" in err
    assert datadog.requests == []
