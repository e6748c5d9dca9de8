"""Hands what the core decided to every sink, synchronously."""

from __future__ import annotations

from collections.abc import Callable

from batchscope.sinks.events import EventBuffer
from batchscope.sinks.logs import EventLog
from batchscope.sinks.metrics import Metrics
from batchscope.tracker import Outcome


class Publisher:
    """One call per core outcome: log lines, metrics, the API's event buffer.

    Synchronous, so there is no await between a change in the core and its metrics: a
    scrape always sees a consistent picture. ``reserve_seq`` is asked before an event
    number beyond the state file's reservation is logged (a crash must never hand a logged
    number to another event); ``changed`` wakes the persist loop.
    """

    def __init__(
        self,
        log: EventLog,
        *,
        metrics: Metrics | None = None,
        buffer: EventBuffer | None = None,
        reserve_seq: Callable[[int], None] | None = None,
        changed: Callable[[], None] | None = None,
    ) -> None:
        self.log = log
        self._metrics = metrics
        self._buffer = buffer
        self._reserve_seq = reserve_seq
        self._changed = changed

    def __call__(self, outcome: Outcome) -> None:
        if outcome.events:
            if self._reserve_seq is not None:
                self._reserve_seq(outcome.events[-1].seq)
            self.log.events(outcome.events)
            if self._metrics is not None:
                self._metrics.observe(outcome.events)
            if self._buffer is not None:
                self._buffer.extend(outcome.events)
        if outcome.notices:
            self.log.notices(outcome.notices)
        if self._changed is not None:
            self._changed()
