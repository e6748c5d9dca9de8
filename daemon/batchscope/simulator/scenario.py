"""The demo script: batches that walk through every state batchscope reports, once a minute.

Time is passed in (:meth:`DemoScenario.step`), so tests drive a minute of activity instantly;
:meth:`DemoScenario.run` steps with the wall clock for ``batchscope demo`` and
``python -m batchscope.simulator``.

Timeline of each 60 s cycle (t = seconds into the cycle). It assumes the demo daemon polls
every 1-2 s with ``stall_after`` of 15 s for both sources: only the "stalled" batches go 15 s
without progress; every other batch changes a counter or ends within 12 s, or has failed
jobs (failed comes before stalled).

The failures explain themselves as the real engine's would: failed execution jobs carry
their exception messages (``GET /job``), and the stalled engine batch is waiting for a seed
job that ran out of retries, which ``failedJobs`` does not count.

Engine:

==========  =========================  ======================================================
role        type                       script
==========  =========================  ======================================================
migration   instance-migration (200)   t0 create, t2-21 10 jobs/s, t23 finish -> passed
modify      instance-modification (50) t1 create, t3-12 5 jobs/s, t14 finish -> passed
retried     instance-deletion (100)    t2 create, t4-9 10/s, t10 5 jobs fail (a listener's
                                       expression names a bean not deployed, in Task_A)
                                       -> failed, t11-15 7/s, t22 retry -> in_progress,
                                       t23 last 5, t25 finish -> passed
mismapped   instance-migration (40)    t7 create, t8-10 5/s, t11 3 jobs fail: ENGINE-23004,
                                       no migration instruction for the instance's Task_A
                                       -> failed, t12 2 fail in a listener in Task_B,
                                       t13-16 5/s, t30 the 5 failed jobs deleted by hand
                                       -> in_progress, t32 finish -> passed
paused      set-job-retries (60)       t3 create, t4-8 5/s, t9 suspend -> suspended,
                                       t19 activate -> in_progress, t20-26 5/s, t28 finish
cancelled   instance-restart (80)      t4 create, t5-12 4/s, t14 suspend, t24 delete
                                       (keep history) -> cancelled
stalled     instance-migration (100,   t5 create (20 jobs), t6-7 10/s, t8 the seed job
            20 per seed run)           fails (database full): no job is created or runs
                                       (stalled from ~t22: seed_job_failed), t40 the seed
                                       job retried, t40-47 10/s, t49 finish -> passed
vanished    historic-instance-         t6 create, t8-12 4/s, t16 delete with cascade
            deletion (40)              -> vanished (no history left)
instant     set-variables (10)         t30 created, run and finished at once: only the
                                       history sweep sees it (none -> passed)
==========  =========================  ======================================================

Datadog (each new batch id is handed to ``on_datadog_batch`` when created; it answers 404
for the fake's ``not_found_for`` first):

==========  ==============================================================================
role        script
==========  ==============================================================================
retried     t0 create (browser + api + a skipped test), t4 api passed, t6 browser retries
            (the attempt in flight keeps its result_id, retries 0), t12 browser passed
            (a new result_id, retries 1), t13 batch passed
slow        t1 create, t5 api passed, browser in progress until t55 (stalled from ~t16),
            t55 browser timed out, batch failed
failing     t2 create, t7 api passed, t8 browser failed, t10 batch failed
odd         t3 create, t7 status "exploded" (unknown), t14 batch passed
==========  ==============================================================================

Batches of cycles older than ``keep_cycles`` are cleaned up (engine history removed,
Datadog batches deleted) so a long-running demo stays small; they are long terminal by then.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from batchscope.simulator.datadog import SAMPLE_TESTS, FakeDatadog
from batchscope.simulator.engine import FakeEngine

CYCLE_SECONDS = 60.0

_SKIPPED_TEST: Mapping[str, Any] = {
    "test_public_id": "stu-vwx-yza",
    "test_name": "Legacy search page",
    "test_type": "browser",
    "execution_rule": "skipped",
}
_BROWSER_TEST = str(SAMPLE_TESTS[0]["test_public_id"])
_API_TEST = str(SAMPLE_TESTS[1]["test_public_id"])

#: The "mismapped" migration's second failure: a listener of the target process, run by the
#: migration (skipCustomListeners off), names a bean the target deployment lacks.
LISTENER_FAILURE = ("Unknown property used in expression: ${migrationAudit.notify(execution)}. "
                    "Cause: Cannot resolve identifier 'migrationAudit'")


@dataclass
class _Cycle:
    """Ids of the batches one cycle created, by role."""

    index: int
    engine: dict[str, str] = field(default_factory=dict)
    datadog: dict[str, str] = field(default_factory=dict)


Action = Callable[[_Cycle], None]


@dataclass(frozen=True)
class _Step:
    at: float
    action: Action


class DemoScenario:
    """Drives a :class:`FakeEngine` and a :class:`FakeDatadog` through the timeline above."""

    def __init__(
        self,
        engine: FakeEngine,
        datadog: FakeDatadog,
        *,
        on_datadog_batch: Callable[[str], object] | None = None,
        clock: Callable[[], float] = time.time,
        keep_cycles: int = 10,
    ) -> None:
        self.engine = engine
        self.datadog = datadog
        self._on_datadog_batch = on_datadog_batch
        self._clock = clock
        self._script = sorted(self._engine_script() + self._datadog_script(), key=lambda s: s.at)
        self._origin: float | None = None
        self._cursor = 0
        self._cycles: deque[_Cycle] = deque()
        self._keep_cycles = keep_cycles
        self._next_cycle = 0
        self._datadog_ids: list[str] = []

    def datadog_batch_ids(self) -> list[str]:
        """Every Datadog batch id the scenario has created, oldest first."""
        return list(self._datadog_ids)

    def engine_roles(self) -> dict[str, str]:
        """The engine batches of the current cycle by role (those created so far)."""
        return dict(self._cycles[-1].engine) if self._cycles else {}

    def step(self, now: float) -> None:
        """Run every scripted action due up to ``now`` (the first call starts cycle 0)."""
        if self._origin is None:
            self._origin = now
        elapsed = now - self._origin
        while True:
            step = self._script[self._cursor]
            if self._next_cycle * CYCLE_SECONDS + step.at > elapsed:
                return
            if self._cursor == 0:
                self._begin_cycle()
            step.action(self._cycles[-1])
            self._cursor = (self._cursor + 1) % len(self._script)
            if self._cursor == 0:
                self._next_cycle += 1

    async def run(self, stop: asyncio.Event, tick: float = 1.0) -> None:
        """Step with the clock every ``tick`` seconds until ``stop`` is set."""
        while not stop.is_set():
            self.step(self._clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), tick)

    def _begin_cycle(self) -> None:
        self._cycles.append(_Cycle(self._next_cycle))
        while len(self._cycles) > self._keep_cycles:
            self._forget(self._cycles.popleft())

    def _forget(self, cycle: _Cycle) -> None:
        for batch_id in cycle.engine.values():
            self.engine.remove_history(batch_id)
        for batch_id in cycle.datadog.values():
            self.datadog.delete(batch_id)

    # ----------------------------------------------------------------- engine timeline

    def _engine_script(self) -> list[_Step]:
        engine = self.engine

        def create(role: str, batch_type: str, total: int, per_seed: int = 100) -> Action:
            def run(cycle: _Cycle) -> None:
                cycle.engine[role] = engine.create_batch(batch_type, total,
                                                         jobs_per_seed=per_seed)

            return run

        def on(role: str, act: Callable[[str], None]) -> Action:
            return lambda cycle: act(cycle.engine[role])

        def progress(role: str, first: int, last: int, per_second: int) -> list[_Step]:
            complete = on(role, lambda batch_id: engine.complete_jobs(batch_id, per_second))
            return [_Step(float(t), complete) for t in range(first, last + 1)]

        def instant(cycle: _Cycle) -> None:
            batch_id = engine.create_batch("set-variables", 10)
            engine.complete_jobs(batch_id, 10)
            engine.finish(batch_id)
            cycle.engine["instant"] = batch_id

        return [
            _Step(0, create("migration", "instance-migration", 200)),
            *progress("migration", 2, 21, 10),
            _Step(23, on("migration", engine.finish)),
            _Step(1, create("modify", "instance-modification", 50)),
            *progress("modify", 3, 12, 5),
            _Step(14, on("modify", engine.finish)),
            _Step(2, create("retried", "instance-deletion", 100)),
            *progress("retried", 4, 9, 10),
            _Step(10, on("retried", lambda batch_id: engine.fail_jobs(batch_id, 5))),
            *progress("retried", 11, 15, 7),
            _Step(22, on("retried", engine.retry_failed)),
            *progress("retried", 23, 23, 5),
            _Step(25, on("retried", engine.finish)),
            _Step(3, create("paused", "set-job-retries", 60)),
            *progress("paused", 4, 8, 5),
            _Step(9, on("paused", engine.suspend)),
            _Step(19, on("paused", engine.activate)),
            *progress("paused", 20, 26, 5),
            _Step(28, on("paused", engine.finish)),
            _Step(4, create("cancelled", "instance-restart", 80)),
            *progress("cancelled", 5, 12, 4),
            _Step(14, on("cancelled", engine.suspend)),
            _Step(24, on("cancelled", engine.delete)),
            _Step(5, create("stalled", "instance-migration", 100, per_seed=20)),
            *progress("stalled", 6, 7, 10),
            _Step(8, on("stalled", engine.fail_seed_job)),
            _Step(40, on("stalled", engine.retry_seed_job)),
            *progress("stalled", 40, 47, 10),
            _Step(49, on("stalled", engine.finish)),
            _Step(7, create("mismapped", "instance-migration", 40)),
            *progress("mismapped", 8, 10, 5),
            _Step(11, on("mismapped", lambda batch_id: engine.fail_jobs(batch_id, 3))),
            _Step(12, on("mismapped", lambda batch_id: engine.fail_jobs(
                batch_id, 2, LISTENER_FAILURE, activity_id="Task_B"))),
            *progress("mismapped", 13, 16, 5),
            _Step(30, on("mismapped", engine.delete_failed_jobs)),
            _Step(32, on("mismapped", engine.finish)),
            _Step(6, create("vanished", "historic-instance-deletion", 40)),
            *progress("vanished", 8, 12, 4),
            _Step(16, on("vanished", lambda batch_id: engine.delete(batch_id, cascade=True))),
            _Step(30, instant),
        ]

    # ----------------------------------------------------------------- Datadog timeline

    def _datadog_script(self) -> list[_Step]:
        datadog = self.datadog

        def create(role: str, *extra_tests: Mapping[str, Any]) -> Action:
            def run(cycle: _Cycle) -> None:
                batch_id = datadog.create_batch(tests=[*SAMPLE_TESTS, *extra_tests])
                cycle.datadog[role] = batch_id
                self._datadog_ids.append(batch_id)
                if self._on_datadog_batch is not None:
                    self._on_datadog_batch(batch_id)

            return run

        def result(role: str, test: str, **changes: Any) -> Action:
            return lambda cycle: datadog.set_result(cycle.datadog[role], test, **changes)

        def finish(role: str, status: str) -> Action:
            return lambda cycle: datadog.finish(cycle.datadog[role], status)

        return [
            _Step(0, create("retried", _SKIPPED_TEST)),
            _Step(4, result("retried", _API_TEST, status="passed")),
            _Step(6, result("retried", _BROWSER_TEST, new_attempt=True, duration=5400.0)),
            _Step(12, result("retried", _BROWSER_TEST, status="passed")),
            _Step(13, finish("retried", "passed")),
            _Step(1, create("slow")),
            _Step(5, result("slow", _API_TEST, status="passed")),
            _Step(55, result("slow", _BROWSER_TEST, timed_out=True)),
            _Step(55, finish("slow", "failed")),
            _Step(2, create("failing")),
            _Step(7, result("failing", _API_TEST, status="passed")),
            _Step(8, result("failing", _BROWSER_TEST, status="failed")),
            _Step(10, finish("failing", "failed")),
            _Step(3, create("odd")),
            _Step(7, lambda cycle: datadog.set_status(cycle.datadog["odd"], "exploded")),
            _Step(14, finish("odd", "passed")),
        ]
