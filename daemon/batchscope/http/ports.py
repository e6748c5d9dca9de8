"""What the HTTP layer needs from the rest of the daemon: narrow, read-mostly interfaces.

The app is handed objects with these shapes, never the daemon, so it can be served (and
tested) with small fakes of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from batchscope.model import Source
from batchscope.tracker import Key, TrackedBatch


class BatchReader(Protocol):
    def batches(self) -> Iterator[TrackedBatch]: ...

    def batches_after(self, after: Key | None) -> Iterator[TrackedBatch]:
        """In a stable (key) order, from just after ``after``: what paging walks."""
        ...

    def get(self, source: Source, target: str, batch_id: str) -> TrackedBatch | None: ...


class EventReader(Protocol):
    def after(self, seq: int, limit: int = 1000) -> list[dict[str, Any]]: ...


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
class ApiPorts:
    batches: BatchReader
    events: EventReader
    health: Health
    watch_list: WatchList
