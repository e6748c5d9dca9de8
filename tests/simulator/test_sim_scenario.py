"""The demo scenario visits every state within a minute of simulated time."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from batchscope.simulator.datadog import FakeDatadog
from batchscope.simulator.engine import FakeEngine
from batchscope.simulator.scenario import CYCLE_SECONDS, LISTENER_FAILURE, DemoScenario
from sim_support import DD_HEADERS, FakeClock

STALL_AFTER = 15.0  # what the demo configures for both sources


@dataclass
class EngineObserver:
    """Classifies engine batches from 1 s polls the way the SPEC's rules do."""

    client: TestClient
    states: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    last_row: dict[str, dict[str, Any]] = field(default_factory=dict)
    progress: dict[str, tuple[tuple[int, int, int], float]] = field(default_factory=dict)
    history_only: set[str] = field(default_factory=set)

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.client.get(path) as resp:
            return resp.status, await resp.json()

    async def poll(self, now: float) -> None:
        _, rows = await self.get("/batch/statistics?maxResults=500&sortBy=batchId&sortOrder=asc")
        current = {row["id"]: row for row in rows}
        for batch_id, row in current.items():
            self.record(batch_id, self.runtime_state(row, now))
            self.last_row[batch_id] = row
        for batch_id in set(self.last_row) - set(current):
            self.record(batch_id, await self.terminal_state(batch_id))
            del self.last_row[batch_id]
        _, ended = await self.get(
            "/history/batch?completed=true&sortBy=endTime&sortOrder=desc&maxResults=50"
        )
        for row in ended:
            if row["id"] not in self.states:
                self.history_only.add(row["id"])
                self.record(row["id"], "passed")

    def record(self, batch_id: str, state: str) -> None:
        if not self.states[batch_id] or self.states[batch_id][-1] != state:
            self.states[batch_id].append(state)

    def runtime_state(self, row: dict[str, Any], now: float) -> str:
        counters = (row["jobsCreated"], row["remainingJobs"], row["completedJobs"])
        previous = self.progress.get(row["id"])
        if previous is None or previous[0] != counters:
            self.progress[row["id"]] = (counters, now)
        if row["suspended"]:
            return "suspended"
        if row["failedJobs"] > 0:
            return "failed"
        if now - self.progress[row["id"]][1] >= STALL_AFTER:
            return "stalled"
        return "in_progress"

    async def terminal_state(self, batch_id: str) -> str:
        status, historic = await self.get(f"/history/batch/{batch_id}")
        if status == 404:
            return "vanished"
        assert historic["endTime"] is not None
        _, deletes = await self.get(
            f"/history/user-operation?batchId={batch_id}&operationType=Delete"
        )
        if deletes or self.states[batch_id][-1] == "suspended":
            return "cancelled"
        return "passed"


@dataclass
class DatadogObserver:
    """Follows the Datadog batches the scenario announces, like the daemon's watch list."""

    client: TestClient
    watched: list[str] = field(default_factory=list)
    states: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    first_seen: dict[str, float] = field(default_factory=dict)
    raw_statuses: set[str] = field(default_factory=set)
    result_ids: dict[tuple[str, str, str | None, str | None], str] = field(default_factory=dict)
    retries_seen: int = 0

    async def poll(self, now: float) -> None:
        for batch_id in self.watched:
            state = self.states[batch_id]
            if state and state[-1] in ("passed", "failed"):
                continue
            path = f"/api/v1/synthetics/ci/batch/{batch_id}"
            async with self.client.get(path, headers=DD_HEADERS) as resp:
                if resp.status == 404:
                    continue
                data = (await resp.json())["data"]
            self.first_seen.setdefault(batch_id, now)
            self.raw_statuses.add(data["status"])
            self.track_results(batch_id, data["results"])
            new_state = self.batch_state(batch_id, data["status"], now)
            if new_state is not None and (not state or state[-1] != new_state):
                state.append(new_state)

    def batch_state(self, batch_id: str, status: str, now: float) -> str | None:
        if status in ("passed", "failed", "skipped"):
            return status
        if status != "in_progress":
            return None  # unknown: keep the previous state
        if now - self.first_seen[batch_id] >= STALL_AFTER:
            return "stalled"
        return "in_progress"

    def track_results(self, batch_id: str, results: list[dict[str, Any]]) -> None:
        for result in results:
            key = (batch_id, result["test_public_id"], result.get("location"), result.get("device"))
            result_id = result.get("result_id")
            if result_id is None:
                continue
            previous = self.result_ids.get(key)
            if previous is not None and previous != result_id:
                assert result["initial_result_id"] == previous
                self.retries_seen += 1
            self.result_ids[key] = result_id


async def test_demo_visits_every_state_within_a_minute(
    aiohttp_client: AiohttpClient, clock: FakeClock
) -> None:
    """Polled every second for 60 s, the demo shows every engine and Datadog state."""
    engine = FakeEngine(clock=clock)
    datadog = FakeDatadog(clock=clock, not_found_for=2.0)
    engine_observer = EngineObserver(await aiohttp_client(engine.app))
    datadog_observer = DatadogObserver(await aiohttp_client(datadog.app))
    scenario = DemoScenario(
        engine, datadog, on_datadog_batch=datadog_observer.watched.append, clock=clock
    )

    for _ in range(int(CYCLE_SECONDS)):
        scenario.step(clock())
        await engine_observer.poll(clock())
        await datadog_observer.poll(clock())
        clock.advance(1)

    engine_paths = sorted(engine_observer.states.values())
    assert engine_paths == sorted(
        [
            ["in_progress", "passed"],
            ["in_progress", "passed"],
            ["in_progress", "failed", "in_progress", "passed"],
            ["in_progress", "failed", "in_progress", "passed"],
            ["in_progress", "suspended", "in_progress", "passed"],
            ["in_progress", "suspended", "cancelled"],
            ["in_progress", "stalled", "in_progress", "passed"],
            ["in_progress", "vanished"],
            ["passed"],
        ]
    )
    assert len(engine_observer.history_only) == 1
    assert sorted(datadog_observer.states.values()) == sorted(
        [
            ["in_progress", "passed"],
            ["in_progress", "stalled", "failed"],
            ["in_progress", "failed"],
            ["in_progress", "passed"],
        ]
    )
    assert "exploded" in datadog_observer.raw_statuses
    assert datadog_observer.retries_seen == 1
    assert datadog_observer.watched == scenario.datadog_batch_ids()
    assert engine.runtime_ids() == []


async def test_the_demos_failure_and_stall_explain_themselves(
    aiohttp_client: AiohttpClient, clock: FakeClock
) -> None:
    """While the demo's migration has failed jobs, GET /job shows why (ENGINE-23004 for
    each unmapped instance, a listener failure in Task_B); while its stalled batch stalls,
    its seed job has no retries left and a message, and failedJobs does not count it."""
    engine = FakeEngine(clock=clock)
    client = await aiohttp_client(engine.app)
    scenario = DemoScenario(engine, FakeDatadog(clock=clock), clock=clock)
    origin = clock()
    scenario.step(origin)
    scenario.step(origin + 25)  # the migration failed at t11-12, the stall began at ~t22
    roles = scenario.engine_roles()
    mismapped, stalled = engine.batch(roles["mismapped"]), engine.batch(roles["stalled"])

    async def jobs(definition: str) -> list[dict[str, Any]]:
        async with client.get(f"/job?jobDefinitionId={definition}&noRetriesLeft=true"
                              "&maxResults=50") as resp:
            rows: list[dict[str, Any]] = await resp.json()
            return rows

    failed = await jobs(mismapped.batch_job_definition_id)
    [seed] = await jobs(stalled.seed_job_definition_id)

    assert (mismapped.failed_jobs, stalled.failed_jobs) == (5, 0)
    unmapped = [j for j in failed if j["exceptionMessage"].startswith("ENGINE-23004 ")]
    listener = [j for j in failed if j["exceptionMessage"] == LISTENER_FAILURE]
    assert len(unmapped) == 3 and len({j["exceptionMessage"] for j in unmapped}) == 3
    assert all("no migration instruction" in j["exceptionMessage"] for j in unmapped)
    assert [j["failedActivityId"] for j in listener] == ["Task_B", "Task_B"]
    assert seed["retries"] == 0 and seed["exceptionMessage"].startswith("ENGINE-03004 ")
    assert stalled.jobs_created == 20 < stalled.total_jobs
    scenario.step(origin + 45)  # the seed job was retried at t40: seeding goes on
    assert engine.batch(roles["stalled"]).jobs_created > 20
    assert await jobs(engine.batch(roles["stalled"]).seed_job_definition_id) == []


def test_cycles_repeat_with_new_batches_and_old_ones_are_cleaned_up(clock: FakeClock) -> None:
    """Each cycle creates fresh batches; cycles beyond keep_cycles are removed."""
    engine = FakeEngine(clock=clock)
    datadog = FakeDatadog(clock=clock)
    scenario = DemoScenario(engine, datadog, clock=clock, keep_cycles=1)

    origin = clock()
    scenario.step(origin)
    scenario.step(origin + CYCLE_SECONDS - 1)
    first_engine = set(engine.history_ids())
    first_datadog = scenario.datadog_batch_ids()
    scenario.step(origin + 2 * CYCLE_SECONDS - 1)

    assert len(first_engine) == 8 and len(first_datadog) == 4
    assert len(engine.history_ids()) == 8 and not first_engine & set(engine.history_ids())
    assert len(scenario.datadog_batch_ids()) == 8
    assert datadog.batch_ids() == scenario.datadog_batch_ids()[4:]


def test_a_late_step_catches_up_in_order(clock: FakeClock) -> None:
    """A step far in the future runs every due action in order without error."""
    engine = FakeEngine(clock=clock)
    datadog = FakeDatadog(clock=clock)
    scenario = DemoScenario(engine, datadog, clock=clock)

    scenario.step(clock())
    scenario.step(clock() + 3 * CYCLE_SECONDS - 1)

    assert len(scenario.datadog_batch_ids()) == 12
    assert {datadog.batch(b).status for b in scenario.datadog_batch_ids()[:8]} == {
        "passed",
        "failed",
    }
    assert len(engine.history_ids()) == 3 * 8  # every role but the cascade-deleted one


async def test_run_steps_until_stopped(clock: FakeClock) -> None:
    """run() steps with its clock and returns once the stop event is set."""
    engine = FakeEngine(clock=clock)
    datadog = FakeDatadog(clock=clock)
    stop = asyncio.Event()
    scenario = DemoScenario(engine, datadog, clock=clock, on_datadog_batch=lambda _: stop.set())

    await asyncio.wait_for(scenario.run(stop, tick=60), 5)

    assert len(scenario.datadog_batch_ids()) == 1
    assert len(engine.runtime_ids()) == 1
