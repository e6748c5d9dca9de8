"""Thin pollers: ask the core what to fetch, fetch it through a source, hand it back.

One poller per target; each runs in its own task with its own HTTP session (see
``daemon.py``), so a slow or dead target never delays another one or the HTTP server.
Every decision about batches is the core's; a poller only sequences requests and sorts
upstream failures into "this target is down" and "this one lookup failed".
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from batchscope.model import DatadogBatchSnapshot, ErrorReason, FailedJob, Notice, Source
from batchscope.sources.datadog import DatadogClient
from batchscope.sources.engine import DeleteLog, EngineClient, SkippedRow
from batchscope.sources.fetch import PollError, RateLimit
from batchscope.tracker import Core, Outcome
from batchscope.tracker.diagnosis import Findings, LookupKind, LookupRequest
from batchscope.tracker.observations import (
    CiBatchNotFound,
    CiBatchSeen,
    Diagnosed,
    EndLookedUp,
    HistorySwept,
    RuntimeListed,
)
from batchscope.tracker.pacing import Schedule

Publish = Callable[[Outcome], None]
Clock = Callable[[], float]


@dataclass(slots=True)
class Heartbeat:
    """Progress of one poll loop, read by /healthz and the systemd watchdog.

    Each completed request is progress (a long cycle over many pages is not a wedged
    loop), but a cycle that has not completed within ``cycle_bound`` is stuck whatever its
    requests do: an upstream paging forever must not look healthy.
    """

    grace: float = 60.0
    cycle_bound: float = 600.0
    deadline: float = field(default_factory=lambda: time.monotonic() + 120.0)
    attempts: int = 0
    cycle_started: float | None = None

    def start_cycle(self) -> None:
        self.cycle_started = time.monotonic()
        self.beat()

    def end_cycle(self) -> None:
        self.cycle_started = None
        self.attempts += 1

    def beat(self) -> None:
        self.deadline = max(self.deadline, time.monotonic() + self.grace)

    def expect_within(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds + self.grace

    def alive(self, now: float | None = None) -> bool:
        now = now if now is not None else time.monotonic()
        if self.cycle_started is not None and now - self.cycle_started > self.cycle_bound:
            return False
        return now <= self.deadline


class TargetPoller(ABC):
    source: Source

    def __init__(self, name: str, interval: float, core: Core, publish: Publish,
                 clock: Clock, heartbeat: Heartbeat) -> None:
        self.name = name
        self.interval = interval
        self.core = core
        self.publish = publish
        self.clock = clock
        self.heartbeat = heartbeat

    @property
    def key(self) -> tuple[Source, str]:
        return (self.source, self.name)

    @abstractmethod
    async def poll_once(self) -> None:
        """One complete cycle; raises :class:`PollError` when the target failed."""

    @property
    def rate_limit(self) -> RateLimit | None:
        """The upstream's latest rate-limit headers, where it sends them."""
        return None

    def _lookup_failures(self, keys: list[str], results: list[Any], endpoint: str) -> None:
        """Per-batch lookups that failed are retried next cycle and logged; only when all of
        them failed is the target itself in trouble."""
        failures = [(b, r) for b, r in zip(keys, results, strict=True)
                    if isinstance(r, BaseException)]
        if not failures:
            return
        if len(failures) == len(keys):
            raise failures[0][1]
        self.publish(Outcome(notices=[
            Notice("upstream.lookup_failed", "warning", {
                "source": self.source.value, "target": self.name, "batch_id": batch_id,
                "endpoint": endpoint, "error": str(error),
            })
            for batch_id, error in failures
        ]))


async def _gather_all(tasks: Iterable[Awaitable[Any]]) -> list[Any]:
    """Run all, then raise the first failure: partial success is still published."""
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


class JobLookups(Protocol):
    """The engine's job endpoints, as the diagnosis needs them (sources/engine_jobs.py)."""

    async def failed_execution_jobs(self, job_definition_id: str,
                                    sample: int) -> list[FailedJob]: ...

    async def failed_job(self, job_definition_id: str) -> FailedJob | None: ...


#: Counts one diagnosis lookup by outcome (ok, error, skipped_budget).
CountLookup = Callable[[str, int], None]


@dataclass(frozen=True, slots=True)
class DiagnosisPlan:
    """How an engine poller explains failures and stalls: where to look, how much."""

    jobs: JobLookups | None = None
    sample: int = 50
    budget: int = 20
    count: CountLookup | None = None


class EnginePoller(TargetPoller):
    source = Source.ENGINE

    def __init__(self, name: str, interval: float, core: Core, client: EngineClient,
                 publish: Publish, clock: Clock, heartbeat: Heartbeat,
                 diagnosis: DiagnosisPlan | None = None) -> None:
        super().__init__(name, interval, core, publish, clock, heartbeat)
        self.client = client
        self.diagnosis = diagnosis or DiagnosisPlan()
        self._skips: set[tuple[str, str | None, str]] = set()

    async def poll_once(self) -> None:
        listing = await self.client.runtime_batches()
        # A batch whose row was listed but unreadable is still running: asking history about
        # it would take it for ended (vanished when history is off or below FULL).
        unreadable = frozenset(s.batch_id for s in listing.skipped if s.batch_id is not None)
        outcome = self.core.apply(
            self.key, RuntimeListed(listing.rows, listing.server_time, unreadable), self.clock())
        # The lookups happen before the transition lines are written: one line per
        # transition, with the reason and the evidence in it.
        await self.diagnose()
        self.publish(self.core.annotate(outcome))

        sweep_from = self.core.sweep_from(self.name)
        assert sweep_from is not None  # the listing above started the cursor
        history = await self.client.finished_since(sweep_from)
        self.publish(Outcome(notices=[*listing.warnings, *history.warnings,
                                      *self._new_skips([*listing.skipped, *history.skipped])]))
        found = {r.batch_id: r for r in history.rows}
        # The batches that ended this cycle are asked about the user-operation log's
        # deletes together: one sweep of it, made on the first question.
        deletes = DeleteLog(self.client, sweep_from)
        results = await asyncio.gather(
            *(self._look_up_end(batch_id, found, deletes) for batch_id in outcome.missing),
            return_exceptions=True,
        )
        self._lookup_failures(outcome.missing, results, "/history/batch/{id}")

        # Only endings after the watermark become events, so only they need the evidence
        # of a delete.
        evidenced = await _gather_all(
            self.client.with_delete_evidence(r, deletes)
            for r in self.core.unseen_endings(self.name, history.rows))
        by_id = {r.batch_id: r for r in evidenced}
        rows = [by_id.get(r.batch_id, r) for r in history.rows]
        self.publish(self.core.apply(self.key, HistorySwept(rows), self.clock()))

    async def _look_up_end(self, batch_id: str, found: dict[str, Any],
                           deletes: DeleteLog | None = None) -> None:
        record = found.get(batch_id)
        still_running = False
        if record is None:
            record = await self.client.history_record(batch_id)
            # A batch can be missing from one paged listing while still running (a batch
            # that ended meanwhile shifted the pages): with no history row to prove its
            # end, the runtime is asked too.
            if record is None:
                still_running = await self.client.still_running(batch_id)
        if record is not None:
            record = await self.client.with_delete_evidence(record, deletes)
        self.publish(self.core.apply(
            self.key, EndLookedUp(batch_id, record, still_running), self.clock()))

    async def diagnose(self) -> None:
        """The lookups the core asked for, within this cycle's budget; a failing lookup is
        counted and leaves the evidence unknown, it never fails or delays the poll beyond
        the request timeout."""
        plan = self.diagnosis
        due, deferred = self.core.lookups_due(self.name, plan.budget)
        if plan.jobs is None or not due:
            return
        count = plan.count or (lambda outcome, n: None)
        if deferred:
            count("skipped_budget", deferred)
        results = await asyncio.gather(*(self._look_up(plan.jobs, r) for r in due),
                                       return_exceptions=True)
        for request, result in zip(due, results, strict=True):
            if isinstance(result, Findings):
                findings = result
                count("ok", 1)
            else:
                findings = Findings(error=str(result))
                count("error", 1)
                self.publish(Outcome(notices=[Notice("diagnosis.lookup_failed", "warning", {
                    "source": self.source.value, "target": self.name,
                    "batch_id": request.batch_id, "kind": request.kind.value,
                    "error": str(result)})]))
            self.core.apply(self.key, Diagnosed(request, findings), self.clock())

    async def _look_up(self, jobs: JobLookups, request: LookupRequest) -> Findings:
        if request.kind is LookupKind.FAILED_JOBS:
            if request.batch_job_definition_id is None:
                return Findings(error="the batch has no batchJobDefinitionId")
            return Findings(failed_jobs=await jobs.failed_execution_jobs(
                request.batch_job_definition_id, self.diagnosis.sample))
        seed = monitor = None
        if request.seed_job_definition_id is not None:
            seed = await jobs.failed_job(request.seed_job_definition_id)
        if seed is None and request.monitor_job_definition_id is not None:
            monitor = await jobs.failed_job(request.monitor_job_definition_id)
        return Findings(seed_failure=seed, monitor_failure=monitor)

    def _new_skips(self, skipped: list[SkippedRow]) -> list[Notice]:
        """Unreadable rows, each logged when it first appears, not on every poll."""
        current = {(s.endpoint, s.batch_id, s.error): s for s in skipped}
        new = [s for key, s in current.items() if key not in self._skips]
        self._skips = set(current)
        return [
            Notice("upstream.entry_skipped", "warning", {
                "source": self.source.value, "target": self.name, "endpoint": s.endpoint,
                "batch_id": s.batch_id, "error": s.error,
            })
            for s in new
        ]


class DatadogPoller(TargetPoller):
    """Polls a Datadog target's watched CI batches.

    Adaptive (the default; ``tracker/pacing.py``): a cycle asks only about the batches that
    are due, in waves no larger than the rate limit allows, and :meth:`next_delay` says when
    the next one is due. The answers teach the schedule (and the core's learnt durations).
    With ``adaptive=False`` every cycle asks about every batch, every ``interval``: fixed
    polling, as before (the latency benchmark's baseline).
    """

    source = Source.DATADOG

    def __init__(self, name: str, interval: float, core: Core, client: DatadogClient,
                 publish: Publish, clock: Clock, heartbeat: Heartbeat, *,
                 adaptive: bool = True) -> None:
        super().__init__(name, interval, core, publish, clock, heartbeat)
        self.client = client
        self.adaptive = adaptive
        self.schedule = Schedule(interval, core.durations(name))
        self._failing: dict[str, str] = {}  # batch id -> reason, logged once per change
        self._synced = -1  # the tracker version the schedule was last synced with
        self._checked = -1  # ... and last checked for new watches
        self._rate_seen: RateLimit | None = None
        self._told_window: float | None = None  # the rate-limit window last said

    @property
    def rate_limit(self) -> RateLimit | None:
        return self.client.rate_limit

    @property
    def tick(self) -> float:
        """How often the poll loop looks for new watches while it waits."""
        return max(0.01, min(0.25, self.interval / 20))

    def next_delay(self) -> float:
        """Seconds until the next cycle: until a batch is due (and the rate limit lets it
        go), at most ``interval``."""
        if not self.adaptive:
            return self.interval
        now = self.clock()
        wake = self.schedule.next_due(now)
        if wake is None:
            return self.interval
        blocked = self.schedule.rate.wait_until(now)
        if blocked is not None:
            wake = max(wake, blocked)
        return min(self.interval, max(0.001, wake - now))

    def wants_poll(self) -> bool:
        """Whether a batch was watched since the last cycle (a first sighting is polled at
        once). Cheap: the watch list is looked at only when the tracker's records changed."""
        version = self.core.tracker.version
        if not self.adaptive or version == self._checked:
            return False
        self._checked = version
        return any(b not in self.schedule for b in self.core.watched(self.name))

    async def poll_once(self) -> None:
        if not self.adaptive:
            await self._poll_batches(self.core.watched(self.name))
            return
        self._sync()
        while True:
            now = self.clock()
            allowance = self.schedule.rate.allowance(now)
            if allowance == 0:
                self._tell_wait(now)
            batch_ids = self.schedule.take_due(now, allowance)
            if not batch_ids:
                return
            self.schedule.rate.spend(len(batch_ids))
            await self._poll_batches(batch_ids)

    def _tell_wait(self, now: float) -> None:
        """A spent rate-limit window that pauses polling for longer than a poll interval is
        said once per window (its reset is capped by the source, MAX_UPSTREAM_WAIT)."""
        until = self.schedule.rate.wait_until(now)
        if until is None or until - now <= self.interval or until == self._told_window:
            return
        self._told_window = until
        self.publish(Outcome(notices=[Notice("target.waiting", "warning", {
            "source": self.source.value, "target": self.name,
            "seconds": round(until - now, 1), "reason": "rate_limited",
            "hint": "X-RateLimit-Remaining is spent; polling resumes when the window resets",
        })]))

    def _sync(self) -> None:
        """New watches join the schedule (due at once), unwatched batches leave it."""
        version = self.core.tracker.version
        if version == self._synced:
            return
        self._synced = version
        now = self.clock()
        watched: dict[str, float] = {}
        for batch_id in self.core.watched(self.name):
            rec = self.core.get(Source.DATADOG, self.name, batch_id)
            watched[batch_id] = rec.first_seen if rec is not None else now
        self.schedule.sync(watched, now)
        self._failing = {b: r for b, r in self._failing.items() if b in watched}

    async def _poll_batches(self, batch_ids: list[str]) -> None:
        results = await asyncio.gather(*(self._poll_batch(b) for b in batch_ids),
                                       return_exceptions=True)
        failures = [(b, r) for b, r in zip(batch_ids, results, strict=True)
                    if isinstance(r, BaseException)]
        # Credentials, the network or the rate limit concern the whole target; one batch
        # answering garbage or 5xx must not mark the target down or slow the others. The
        # target is down when every batch failed at its latest request.
        for _, error in failures:
            if not isinstance(error, PollError) or error.reason in ErrorReason.target_wide():
                raise error
        every = (self.schedule.all_failing() if self.adaptive
                 else len(failures) == len(batch_ids))
        if failures and every:
            raise failures[0][1]
        errors = {b: r for b, r in failures if isinstance(r, PollError)}
        newly = [b for b, r in errors.items() if self._failing.get(b) != r.reason]
        if self.adaptive:
            for batch_id in batch_ids:
                self._failing.pop(batch_id, None)
            self._failing.update((b, r.reason) for b, r in errors.items())
        else:
            self._failing = {b: r.reason for b, r in errors.items()}
        if newly:
            self.publish(Outcome(notices=[
                Notice("datadog.batch_error", "warning", {
                    "target": self.name, "batch_id": b, "reason": errors[b].reason,
                    "error": errors[b].detail,
                })
                for b in newly
            ]))

    async def _poll_batch(self, batch_id: str) -> None:
        try:
            parsed = await self.client.batch(batch_id)
        except BaseException as exc:
            self._request_failed(batch_id, exc)
            raise
        now = self.clock()
        self._rate_observed(now)
        if parsed is None:
            self.publish(self.core.apply(self.key, CiBatchNotFound(batch_id), now))
            self._answered(batch_id, None, now)
            return
        outcome = self.core.apply(self.key, CiBatchSeen(parsed.snapshot), now)
        outcome.notices.extend(
            Notice("upstream.entry_skipped", "warning", {
                "source": self.source.value, "target": self.name, "batch_id": batch_id,
                "endpoint": "/api/v1/synthetics/ci/batch", "error": error,
            })
            for error in parsed.skipped_results
        )
        self.publish(outcome)
        self._answered(batch_id, parsed.snapshot, now)

    def _answered(self, batch_id: str, snapshot: DatadogBatchSnapshot | None,
                  now: float) -> None:
        if not self.adaptive:
            return
        self.schedule.answered(batch_id, snapshot, now)  # the last answer teaches too
        rec = self.core.get(Source.DATADOG, self.name, batch_id)
        if rec is None or rec.terminal:
            self.schedule.drop(batch_id)  # terminal batches are not polled again

    def _request_failed(self, batch_id: str, exc: BaseException) -> None:
        if not self.adaptive:
            return
        now = self.clock()
        if isinstance(exc, PollError):
            if exc.reason not in (ErrorReason.TIMEOUT, ErrorReason.CONNECTION):
                self._rate_observed(now, exc.rate_limit)  # an answer, if not a good one
            if exc.reason == ErrorReason.RATE_LIMITED:
                self.schedule.rate.throttled()
        self.schedule.failed(batch_id, now)

    def _rate_observed(self, now: float, rate_limit: RateLimit | None = None) -> None:
        """The rate-limit headers of the answer just received (the client keeps the latest
        it saw: an answer without them leaves the previous ones, seen already)."""
        rl = rate_limit if rate_limit is not None else self.client.rate_limit
        if rl is None or rl is self._rate_seen:
            self.schedule.rate.observe(None, None, None, now)
            return
        self._rate_seen = rl
        self.schedule.rate.observe(rl.limit, rl.remaining, rl.reset, now)
