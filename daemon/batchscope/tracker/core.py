"""The core: every piece of watch state and every rule, behind one ``apply``.

Pollers ask it what to fetch (:meth:`Core.sweep_from`, :meth:`Core.unseen_endings`,
:meth:`Core.watched`), fetch through the sources and hand back what they saw
(:meth:`Core.apply`); the core answers with the events and notices to publish. It keeps
the tracked records, the Datadog watch list (configured ids included) and each engine's
history cursor, and hands the state store its changes. Pure: no I/O, time passed in.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from batchscope.model import BatchTransition, EngineHistoryRecord, Event, Notice, Source
from batchscope.tracker.diagnosis import LookupRequest
from batchscope.tracker.engine import MAX_PLAUSIBLE_SKEW, HistoryCursor
from batchscope.tracker.links import DatadogLinks, EngineLinks, Links
from batchscope.tracker.lookups import LookupQueue
from batchscope.tracker.observations import (
    CiBatchNotFound,
    CiBatchSeen,
    Diagnosed,
    EndLookedUp,
    HistorySwept,
    Observation,
    RuntimeListed,
)
from batchscope.tracker.pacing import LearntDurations
from batchscope.tracker.records import Key, Outcome, TargetKey, TrackedBatch
from batchscope.tracker.tracker import Tracker


@dataclass(frozen=True, slots=True)
class EngineWatch:
    """What the core needs to know of an engine target."""

    name: str
    stall_after: float
    cockpit_url: str | None = None


@dataclass(frozen=True, slots=True)
class DatadogWatch:
    """What the core needs to know of a Datadog target."""

    name: str
    stall_after: float
    not_found_grace: float
    batch_ids: tuple[str, ...] = ()
    app_url: str | None = None


TargetWatch = EngineWatch | DatadogWatch


def _links(watch: TargetWatch) -> Links | None:
    if isinstance(watch, EngineWatch):
        return None if watch.cockpit_url is None else EngineLinks(watch.cockpit_url)
    return None if watch.app_url is None else DatadogLinks(watch.app_url)


def target_key(watch: TargetWatch) -> TargetKey:
    return (Source.ENGINE if isinstance(watch, EngineWatch) else Source.DATADOG, watch.name)


@dataclass(slots=True)
class ConfiguredIds:
    """A Datadog target's configured batch ids already watched once: an id that ended and
    was forgotten after ``retention`` must not be watched again by a restart."""

    ids: list[str] = field(default_factory=list)


@dataclass(slots=True)
class DatadogMemory:
    """A Datadog target's memory once it has learnt how long its tests take: the configured
    ids watched once, and the durations its adaptive polling learnt (``tracker/pacing.py``).
    A target that has learnt nothing yet keeps :class:`ConfiguredIds` alone."""

    configured: ConfiguredIds
    durations: LearntDurations


#: Per-target memory that survives restarts besides the records.
TargetMemory = HistoryCursor | ConfiguredIds | DatadogMemory


@dataclass(slots=True)
class Changes:
    """What the state store must write: changed records, forgotten keys, seq, memory."""

    records: list[TrackedBatch]
    forgotten: list[Key]
    seq: int
    memory: dict[TargetKey, TargetMemory]


@dataclass(slots=True)
class _EngineState:
    watch: EngineWatch
    started: float  # when the core first had this target: the watermark's daemon side
    cursor: HistoryCursor | None = None


class Core:
    def __init__(self, *, retention: float, max_tracked: int) -> None:
        self.tracker = Tracker(retention=retention, max_tracked=max_tracked)
        self._engines: dict[str, _EngineState] = {}
        self._datadog: dict[str, DatadogWatch] = {}
        self._configured: dict[str, ConfiguredIds] = {}
        # Learnt test durations per Datadog target, and their version last handed to a save.
        self._durations: dict[str, LearntDurations] = {}
        self._durations_saved: dict[str, int] = {}
        # Memory loaded from the state file for targets not (yet) configured.
        self._restored: dict[TargetKey, TargetMemory] = {}
        self._memory_changed = False
        self._sorted: list[Key] = []
        self._sorted_version = -1
        self._lookups = LookupQueue(self.tracker)

    # ------------------------------------------------------------------ set-up

    def restore(self, records: Iterable[TrackedBatch], seq: int,
                memory: dict[TargetKey, TargetMemory]) -> None:
        """Load persisted state (before :meth:`configure`); marks nothing changed."""
        self.tracker.restore(records, seq)
        self._restored = dict(memory)

    def configure(self, watches: Iterable[TargetWatch], now: float) -> Outcome:
        """Make the configured targets the watched ones: forget the state of targets that
        are gone (their records too), start new ones, update changed ones."""
        wanted = {target_key(w): w for w in watches}
        out = Outcome()
        for source, name in sorted((self.tracker.targets() | self._memory_keys())
                                   - set(wanted)):
            dropped = self.tracker.forget_target(source, name)
            if source is Source.ENGINE:
                self._lookups.forget(name)
            else:
                self._configured.pop(name, None)
                self._durations.pop(name, None)
            self._restored.pop((source, name), None)
            self._memory_changed = True
            out.notices.append(Notice("target.forgotten", "info", {
                "source": source.value, "target": name, "batches": dropped}))
        for name in [n for n in self._engines if (Source.ENGINE, n) not in wanted]:
            del self._engines[name]
        for name in [n for n in self._datadog if (Source.DATADOG, n) not in wanted]:
            del self._datadog[name]
        self.tracker.links = {key: links for key, w in wanted.items()
                              if (links := _links(w)) is not None}
        for watch in wanted.values():
            if isinstance(watch, EngineWatch):
                self._configure_engine(watch, now, out)
            else:
                self._configure_datadog(watch, now, out)
        return out

    def _memory_keys(self) -> set[TargetKey]:
        return ({(Source.ENGINE, n) for n in self._engines}
                | {(Source.DATADOG, n) for n in self._configured} | set(self._restored))

    def _configure_engine(self, watch: EngineWatch, now: float, out: Outcome) -> None:
        state = self._engines.get(watch.name)
        if state is not None:
            state.watch = watch
            return
        cursor = self._restored.pop((Source.ENGINE, watch.name), None)
        if not isinstance(cursor, HistoryCursor):
            cursor = None
        elif cursor.watermark > now + MAX_PLAUSIBLE_SKEW:
            # Written under a clock from the future: it would hide every batch that starts
            # and ends between polls until that date. Start afresh.
            out.notices.append(Notice("engine.watermark_discarded", "warning", {
                "target": watch.name, "watermark": cursor.watermark}))
            cursor = None
            self._memory_changed = True
        self._engines[watch.name] = _EngineState(watch=watch, started=now, cursor=cursor)

    def _configure_datadog(self, watch: DatadogWatch, now: float, out: Outcome) -> None:
        self._datadog[watch.name] = watch
        restored = self._restored.pop((Source.DATADOG, watch.name), None)
        if isinstance(restored, DatadogMemory):
            if watch.name not in self._durations:
                self._durations[watch.name] = restored.durations
                self._durations_saved[watch.name] = restored.durations.version
            restored = restored.configured
        memory = self._configured.get(watch.name)
        if memory is None:
            memory = restored if isinstance(restored, ConfiguredIds) else ConfiguredIds()
        before = set(memory.ids)
        configured = []
        for batch_id in watch.batch_ids:
            if (batch_id in before or self.watch(watch.name, batch_id, now, out)
                    or self.tracker.get(Source.DATADOG, watch.name, batch_id) is not None):
                configured.append(batch_id)
        if configured != memory.ids:
            self._memory_changed = True
        self._configured[watch.name] = ConfiguredIds(configured)

    # ------------------------------------------------------------------ what to fetch

    def sweep_from(self, target: str) -> float | None:
        """Where the engine's next history sweep starts (None before its first listing)."""
        cursor = self._engines[target].cursor
        return None if cursor is None else cursor.sweep_from

    def unseen_endings(self, target: str, rows: Iterable[EngineHistoryRecord]
                       ) -> list[EngineHistoryRecord]:
        """Sweep rows that will become events, so need the evidence of a delete."""
        cursor = self._engines[target].cursor
        if cursor is None:
            return []
        return [r for r in self._unseen(target, cursor, rows) if cursor.is_new(r)]

    def _unseen(self, target: str, cursor: HistoryCursor,
                rows: Iterable[EngineHistoryRecord]) -> list[EngineHistoryRecord]:
        return [r for r in rows
                if r.ended and r.batch_id not in cursor.recent
                and self.tracker.get(Source.ENGINE, target, r.batch_id) is None]

    def watched(self, target: str) -> list[str]:
        """The Datadog batches to poll (terminal ones are never polled again)."""
        return list(self.tracker.active_for(Source.DATADOG, target))

    # ------------------------------------------------------------------ observations

    def apply(self, target: TargetKey, observation: Observation, now: float) -> Outcome:
        """Fold one upstream answer into the state; the events and notices it caused."""
        source, name = target
        match observation:
            case RuntimeListed():
                return self._runtime_listed(name, observation, now)
            case EndLookedUp(batch_id=batch_id, history=history, still_running=running):
                return self.tracker.engine_resolve(name, batch_id, history, now,
                                                   still_running=running)
            case HistorySwept(rows=rows):
                return self._history_swept(name, rows, now)
            case Diagnosed(request=request, findings=findings):
                self._lookups.done(name, request, findings)
                return Outcome()
            case CiBatchSeen(snapshot=snapshot):
                return self.tracker.datadog_snapshot(
                    name, snapshot, now, self._datadog[name].stall_after)
            case CiBatchNotFound(batch_id=batch_id):
                return self.tracker.datadog_not_found(
                    name, batch_id, now, self._datadog[name].not_found_grace)
        raise TypeError(f"unknown observation {observation!r} for {source}:{name}")

    def _runtime_listed(self, name: str, listing: RuntimeListed, now: float) -> Outcome:
        state = self._engines[name]
        notices: list[Notice] = []
        if state.cursor is None:
            state.cursor, ignored = HistoryCursor.starting(state.started, listing.server_time,
                                                           now)
            self._memory_changed = True
            if ignored is not None:
                notices.append(Notice("engine.clock_skew_ignored", "warning", {
                    "target": name, "skew_seconds": round(ignored, 1),
                    "hint": "the engine's HTTP Date header is implausible; "
                            "the daemon's own clock is used",
                }))
        # Its transitions may wait for diagnosis lookups: they are numbered by annotate(),
        # when published, so that other targets' events meanwhile keep the log in order.
        self.tracker.deferred_numbering = True
        try:
            out = self.tracker.engine_runtime(name, listing.rows, now,
                                              state.watch.stall_after, listing.unreadable)
        finally:
            self.tracker.deferred_numbering = False
        out.notices[:0] = notices
        self._lookups.add(name, out.lookups)
        return out

    # ------------------------------------------------------------------ diagnosis

    def lookups_due(self, target: str, budget: int) -> tuple[list[LookupRequest], int]:
        """The diagnosis lookups to make this cycle (at most ``budget``), and how many wait
        for a later one. A steady cycle has none."""
        return self._lookups.due(target, budget)

    def annotate(self, outcome: Outcome) -> Outcome:
        """The outcome ready to publish: its transitions with what diagnosis found since
        they were decided, numbered now (a RuntimeListed outcome's numbers are deferred)."""
        events: list[Event] = []
        records = self.tracker.records  # read directly: 10,000 events in a first cycle
        for event in outcome.events:
            if isinstance(event, BatchTransition):
                rec = records.get((event.source, event.target, event.batch_id))
                if (rec is not None and rec.state is event.to_state
                        and rec.diagnosis is not event.diagnosis
                        and rec.diagnosis != event.diagnosis):
                    event = dataclasses.replace(event, diagnosis=rec.diagnosis)
            events.append(event)
        outcome.events = self.tracker.number(events)
        return outcome

    def _history_swept(self, name: str, rows: list[EngineHistoryRecord],
                       now: float) -> Outcome:
        cursor = self._engines[name].cursor
        if cursor is None:
            return Outcome()
        out = self.tracker.engine_history(name, self._unseen(name, cursor, rows), now,
                                          cursor.watermark)
        cursor.advance(rows, now)
        self._memory_changed = True
        return out

    # ------------------------------------------------------------------ the watch list

    def datadog_targets(self) -> list[str]:
        return list(self._datadog)

    def durations(self, target: str) -> LearntDurations:
        """The test durations a Datadog target's polling learns from (and into); kept with
        the state. The live object: what is learnt into it is saved with the next changes."""
        learnt = self._durations.get(target)
        if learnt is None:
            learnt = self._durations[target] = LearntDurations()
            self._durations_saved[target] = learnt.version
        return learnt

    def watch(self, target: str, batch_id: str, now: float, out: Outcome) -> bool:
        """Start watching a CI batch; False when already watched or refused (full)."""
        added, outcome = self.tracker.datadog_watch(target, batch_id, now)
        out.extend(outcome)
        if added:
            out.notices.append(Notice("datadog.watch", "info",
                                      {"target": target, "batch_id": batch_id}))
        return added

    def unwatch(self, target: str, batch_id: str, out: Outcome) -> bool:
        removed = self.tracker.datadog_unwatch(target, batch_id)
        if removed:
            out.notices.append(Notice("datadog.unwatch", "info",
                                      {"target": target, "batch_id": batch_id}))
        return removed

    # ------------------------------------------------------------------ reading

    def get(self, source: Source, target: str, batch_id: str) -> TrackedBatch | None:
        return self.tracker.get(source, target, batch_id)

    def batches(self) -> Iterator[TrackedBatch]:
        return iter(self.tracker.records.values())

    def batches_after(self, after: Key | None) -> Iterator[TrackedBatch]:
        """Records in key order, from just after ``after`` (a stable order for paging)."""
        if self._sorted_version != self.tracker.version:
            self._sorted = sorted(self.tracker.records)
            self._sorted_version = self.tracker.version
        keys = self._sorted
        start = 0 if after is None else bisect.bisect_right(keys, after)
        records = self.tracker.records
        for key in keys[start:]:
            rec = records.get(key)
            if rec is not None:
                yield rec

    @property
    def seq(self) -> int:
        return self.tracker.seq

    def cursor(self, target: str) -> HistoryCursor | None:
        state = self._engines.get(target)
        return None if state is None else state.cursor

    # ------------------------------------------------------------------ lifecycle

    def expire(self, now: float) -> int:
        return self.tracker.expire(now)

    @property
    def has_changes(self) -> bool:
        return self.tracker.has_changes or self._memory_changed or any(
            learnt.version != self._durations_saved.get(name)
            for name, learnt in self._durations.items())

    def take_changes(self) -> Changes:
        records, forgotten = self.tracker.take_changes()
        self._memory_changed = False
        return Changes(records=records, forgotten=forgotten, seq=self.tracker.seq,
                       memory=self._memory())

    def requeue(self, changes: Changes) -> None:
        """A save that failed: its changes go out with the next one."""
        self.tracker.requeue(changes.records, changes.forgotten)
        self._memory_changed = True

    def _memory(self) -> dict[TargetKey, TargetMemory]:
        memory: dict[TargetKey, TargetMemory] = dict(self._restored)
        for name, state in self._engines.items():
            if state.cursor is not None:
                memory[(Source.ENGINE, name)] = HistoryCursor(
                    state.cursor.watermark, state.cursor.sweep_from, dict(state.cursor.recent))
        for name, configured in self._configured.items():
            ids = ConfiguredIds(list(configured.ids))
            learnt = self._durations.get(name)
            memory[(Source.DATADOG, name)] = (
                ids if learnt is None or not len(learnt) else DatadogMemory(ids, learnt.copy()))
            if learnt is not None:
                self._durations_saved[name] = learnt.version
        return memory
