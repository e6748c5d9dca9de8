"""One poll cycle per target: fetch snapshots, feed the tracker, publish what it says.

Each target runs in its own task with its own HTTP session, so a slow or dead target
never delays another one or the HTTP server.
"""

from __future__ import annotations

import asyncio
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from batchscope.model import EngineHistoryRecord, Notice, Source
from batchscope.sources.datadog import DatadogClient
from batchscope.sources.engine import EngineClient, SkippedRow
from batchscope.sources.fetch import PollError, RateLimit
from batchscope.tracker import Outcome, Tracker

if TYPE_CHECKING:
    from batchscope.settings import DatadogTarget, EngineTarget

Publish = Callable[[Outcome], None]
Clock = Callable[[], float]

# How far back each history sweep looks before the newest end time it has already seen:
# rows become visible in end-time order only roughly (commit order differs).
SWEEP_OVERLAP = 120.0

TARGET_WIDE_REASONS = frozenset({"auth", "connection", "timeout", "rate_limited"})


@dataclass(slots=True)
class Heartbeat:
    """Progress of one poll loop, read by /healthz and the systemd watchdog."""

    deadline: float = field(default_factory=lambda: time.monotonic() + 120.0)
    attempts: int = 0
    grace: float = 60.0

    def beat(self) -> None:
        self.deadline = max(self.deadline, time.monotonic() + self.grace)

    def expect_within(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds + self.grace

    def alive(self, now: float | None = None) -> bool:
        return (now if now is not None else time.monotonic()) <= self.deadline


def skipped_notices(source: Source, target: str, skipped: Iterable[SkippedRow]) -> list[Notice]:
    return [
        Notice("upstream.entry_skipped", "warning", {
            "source": source.value, "target": target, "endpoint": s.endpoint,
            "batch_id": s.batch_id, "error": s.error,
        })
        for s in skipped
    ]


class TargetPoller(ABC):
    source: Source

    def __init__(self, name: str, interval: float, tracker: Tracker, publish: Publish,
                 clock: Clock) -> None:
        self.name = name
        self.interval = interval
        self.tracker = tracker
        self.publish = publish
        self.clock = clock
        self.heartbeat = Heartbeat()

    @abstractmethod
    async def poll_once(self) -> None:
        """One complete cycle; raises :class:`PollError` when the target failed."""

    @property
    def rate_limit(self) -> RateLimit | None:
        """The upstream's latest rate-limit headers, where it sends them."""
        return None


async def _gather_all(tasks: Iterable[Awaitable[Any]]) -> list[Any]:
    """Run all, then raise the first failure: partial success is still published."""
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


class EnginePoller(TargetPoller):
    source = Source.ENGINE

    def __init__(
        self,
        target: EngineTarget,
        interval: float,
        tracker: Tracker,
        client: EngineClient,
        publish: Publish,
        clock: Clock,
        meta: dict[str, Any],
    ) -> None:
        super().__init__(target.name, interval, tracker, publish, clock)
        self.target = target
        self.client = client
        # Persisted: the daemon's first start (older endings are recorded silently), where
        # the next sweep begins, and the ids already seen inside the overlap window.
        self.meta = meta
        meta.setdefault("recent", {})
        self._started = clock()
        self._skips: set[tuple[str, str | None, str]] = set()

    async def poll_once(self) -> None:
        listing = await self.client.runtime_batches()
        if "watermark" not in self.meta:
            self._set_watermark(listing.server_time)
        outcome = self.tracker.engine_runtime(
            self.name, listing.rows, self.clock(), self.target.stall_after
        )
        self.publish(outcome)

        history = await self.client.finished_since(self.meta["sweep_from"])
        found = {r.batch_id: r for r in history.rows}
        self.publish(Outcome(notices=self._new_skips([*listing.skipped, *history.skipped])))
        # A batch whose row was listed but unreadable is still running: asking history about
        # it would take it for ended (vanished when history is off or below FULL).
        unreadable = {s.batch_id for s in listing.skipped if s.batch_id is not None}
        missing = [b for b in outcome.missing if b not in unreadable]
        results = await asyncio.gather(
            *(self._resolve(batch_id, found.get(batch_id)) for batch_id in missing),
            return_exceptions=True,
        )
        self._tolerate_some(missing, results, "/history/batch/{id}")
        await self._record_unseen(history.rows)

    def _set_watermark(self, server_time: float | None) -> None:
        """Fix the daemon's start on the engine's clock, once (it is persisted).

        Endings before it were not watched; those after it, even during an outage before
        the first successful poll, are reported. It is compared with the engine's endTime,
        so a skewed daemon clock is corrected by the engine's HTTP Date header; those are
        whole seconds, so only a real skew (over 2 s) is corrected.
        """
        now = self.clock()
        start = self._started
        if server_time is not None and abs(server_time + 0.5 - now) > 2.0:
            start += server_time + 0.5 - now
        self.meta["watermark"] = start
        self.meta["sweep_from"] = start - SWEEP_OVERLAP

    def _new_skips(self, skipped: list[SkippedRow]) -> list[Notice]:
        """Unreadable rows, each logged when it first appears, not on every poll."""
        current = {(s.endpoint, s.batch_id, s.error): s for s in skipped}
        new = [s for key, s in current.items() if key not in self._skips]
        self._skips = set(current)
        return skipped_notices(self.source, self.name, new)

    def _tolerate_some(self, batch_ids: list[str], results: list[Any], endpoint: str) -> None:
        """Per-batch lookups that failed are retried next cycle and logged; only when all of
        them failed is the target itself in trouble."""
        failures = [(b, r) for b, r in zip(batch_ids, results, strict=True)
                    if isinstance(r, BaseException)]
        if not failures:
            return
        if len(failures) == len(batch_ids):
            raise failures[0][1]
        self.publish(Outcome(notices=[
            Notice("upstream.lookup_failed", "warning", {
                "source": self.source.value, "target": self.name, "batch_id": batch_id,
                "endpoint": endpoint, "error": str(error),
            })
            for batch_id, error in failures
        ]))

    async def _resolve(self, batch_id: str, record: EngineHistoryRecord | None) -> None:
        if record is None:
            record = await self.client.history_record(batch_id)
            # A batch can be missing from one paged listing while still running (a batch
            # that ended meanwhile shifted the pages); with no history row to prove its end,
            # ask the runtime before calling it vanished.
            if record is None and await self.client.still_running(batch_id):
                return
        if record is not None:
            record = await self.client.with_delete_evidence(record)
        self.publish(self.tracker.engine_resolve(self.name, batch_id, record, self.clock()))

    async def _record_unseen(self, rows: list[EngineHistoryRecord]) -> None:
        recent: dict[str, float] = self.meta["recent"]
        watermark: float = self.meta["watermark"]
        unseen = [
            r for r in rows
            if r.end_time is not None and r.batch_id not in recent
            and self.tracker.get(self.source, self.name, r.batch_id) is None
        ]
        # Only endings after the watermark become events, so only they need the
        # user-operation log to tell a cancel from a completion.
        new: list[EngineHistoryRecord] = []
        older: list[EngineHistoryRecord] = []
        for r in unseen:
            (new if r.end_time is not None and r.end_time >= watermark else older).append(r)
        evidence = await _gather_all(self.client.with_delete_evidence(r) for r in new)
        self.publish(self.tracker.engine_history(
            self.name, [*older, *evidence], self.clock(), watermark))
        for r in rows:
            if r.end_time is not None:
                recent[r.batch_id] = r.end_time
        if recent:
            newest = max(recent.values())
            self.meta["sweep_from"] = max(self.meta["sweep_from"], newest - SWEEP_OVERLAP)
        cutoff = self.meta["sweep_from"]
        for batch_id in [b for b, end in recent.items() if end < cutoff]:
            del recent[batch_id]


class DatadogPoller(TargetPoller):
    source = Source.DATADOG

    def __init__(
        self,
        target: DatadogTarget,
        interval: float,
        tracker: Tracker,
        client: DatadogClient,
        publish: Publish,
        clock: Clock,
    ) -> None:
        super().__init__(target.name, interval, tracker, publish, clock)
        self.target = target
        self.client = client
        self._failing: dict[str, str] = {}  # batch id -> reason, logged once per change

    @property
    def rate_limit(self) -> RateLimit | None:
        return self.client.rate_limit

    async def poll_once(self) -> None:
        # Terminal batches have left the active index: they are never polled again.
        batch_ids = list(self.tracker.active_for(self.source, self.name))
        results = await asyncio.gather(*(self._poll_batch(b) for b in batch_ids),
                                       return_exceptions=True)
        failures = [(b, r) for b, r in zip(batch_ids, results, strict=True)
                    if isinstance(r, BaseException)]
        # Credentials, the network or the rate limit concern the whole target; one batch
        # answering garbage or 5xx must not mark the target down or slow the others.
        for _, error in failures:
            if not isinstance(error, PollError) or error.reason in TARGET_WIDE_REASONS:
                raise error
        if failures and len(failures) == len(batch_ids):
            raise failures[0][1]
        errors = {b: r for b, r in failures if isinstance(r, PollError)}
        newly = [b for b, r in errors.items() if self._failing.get(b) != r.reason]
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
        parsed = await self.client.batch(batch_id)
        now = self.clock()
        if parsed is None:
            self.publish(self.tracker.datadog_not_found(
                self.name, batch_id, now, self.target.not_found_grace
            ))
            return
        outcome = self.tracker.datadog_snapshot(
            self.name, parsed.snapshot, now, self.target.stall_after
        )
        outcome.notices.extend(
            Notice("upstream.entry_skipped", "warning", {
                "source": self.source.value, "target": self.name, "batch_id": batch_id,
                "endpoint": "/api/v1/synthetics/ci/batch", "error": error,
            })
            for error in parsed.skipped_results
        )
        self.publish(outcome)


def backoff_delay(interval: float, failures: int, retry_after: float | None,
                  cap: float = 300.0) -> float:
    """Exponential backoff with full jitter, never shorter than the normal interval."""
    ceiling = max(interval, min(cap, interval * (2 ** min(failures, 16))))
    delay = random.uniform(interval, ceiling)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


def classify_unexpected(exc: Exception) -> PollError:
    """A bug or an upstream surprise the parsers did not foresee: never kill the loop."""
    return PollError("invalid_response", f"{type(exc).__name__}: {exc}")
