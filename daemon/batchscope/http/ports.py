"""What the HTTP layer needs from the rest of the daemon: narrow, read-mostly interfaces.

The app is handed objects with these shapes, never the daemon, so it can be served (and
tested) with small fakes of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from batchscope.model import Source, State
from batchscope.tracker import Key, TrackedBatch
from batchscope.tracker.links import DatadogLinks


class BatchReader(Protocol):
    def batches(self) -> Iterator[TrackedBatch]: ...

    def batches_after(self, after: Key | None) -> Iterator[TrackedBatch]:
        """In a stable (key) order, from just after ``after``: what paging walks."""
        ...

    def get(self, source: Source, target: str, batch_id: str) -> TrackedBatch | None: ...


class EventReader(Protocol):
    def after(self, seq: int, limit: int = 1000) -> list[dict[str, Any]]: ...

    def tail(self, n: int) -> list[dict[str, Any]]:
        """The last ``n`` events, oldest first."""
        ...

    def next_change(self) -> asyncio.Future[None]:
        """A future done when events are next added (the SSE stream waits on it; it is
        shared, so a waiter must not cancel it)."""
        ...


class Health(Protocol):
    def healthy(self) -> bool: ...

    @property
    def ready(self) -> bool: ...


class WatchOutcome(Enum):
    ADDED = "added"
    ALREADY = "already"
    REFUSED = "refused"  # max_tracked_batches reached


class WatchList(Protocol):
    def datadog_targets(self) -> list[str]: ...

    def watch(self, target: str, batch_id: str) -> WatchOutcome: ...

    def unwatch(self, target: str, batch_id: str) -> bool: ...

    async def commit(self) -> bool:
        """Make accepted watches durable; False when the state file could not be written."""
        ...


@dataclass(frozen=True, slots=True)
class PollProblem:
    reason: str  # an ErrorReason value
    detail: str  # already redacted


@dataclass(frozen=True, slots=True)
class TargetStatus:
    """One configured target as ``/api/v1/targets`` shows it (times: epoch seconds)."""

    source: Source
    target: str
    up: bool | None  # None: not polled yet
    poll_interval: float
    last_poll: float | None
    last_success: float | None
    last_error: PollProblem | None
    tracked: Mapping[State, int]  # every state the source can produce, 0 when none


class TargetBoard(Protocol):
    def targets(self) -> list[TargetStatus]:
        """Every configured target, engines first, in configuration order."""
        ...

    def result_links(self, target: str) -> DatadogLinks | None:
        """Links into a Datadog target's web app (None for an unknown target)."""
        ...


class NoTargets:
    """A board with no targets (apps built without one, e.g. with small fakes)."""

    def targets(self) -> list[TargetStatus]:
        return []

    def result_links(self, target: str) -> DatadogLinks | None:
        return None


@dataclass(frozen=True, slots=True)
class ApiPorts:
    batches: BatchReader
    events: EventReader
    health: Health
    watch_list: WatchList
    targets: TargetBoard = field(default_factory=NoTargets)
