"""Tracked records and their bookkeeping: admission, eviction, retention, counts, changes.

The base of the tracker: the engine and Datadog rules (``engine.py``, ``datadog.py``) add
and move records only through these methods, so the indexes, the per-state counts and the
change set the state store reads can never disagree with the records themselves.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from batchscope.model import (
    NO_DIAGNOSIS,
    TERMINAL,
    BatchTransition,
    CiMetadata,
    CiResult,
    Diagnosis,
    EngineBatchSnapshot,
    Event,
    JobCounts,
    Notice,
    Reason,
    ResultCounts,
    ResultState,
    Source,
    State,
    is_terminal,
)
from batchscope.tracker.diagnosis import LookupRequest
from batchscope.tracker.links import DatadogLinks, EngineLinks, Links

Key = tuple[Source, str, str]  # (source, target, batch_id)

#: The seq of an event whose number is given when it is published (see RecordBook.number).
UNNUMBERED = 0
TargetKey = tuple[Source, str]  # (source, target)


@dataclass(slots=True)
class ResultSlot:
    """What is known of one CI result lineage (its attempts share the slot)."""

    state: ResultState
    result_id: str | None
    retries: int | None
    latest: CiResult | None = None  # the latest attempt as listed (detail endpoint, diagnosis)


@dataclass(slots=True)
class TrackedBatch:
    source: Source
    target: str
    batch_id: str
    batch_type: str
    state: State
    state_since: float
    first_seen: float
    last_seen: float
    start_time: float | None = None
    # engine
    jobs: JobCounts | None = None
    progress_since: float = 0.0
    # datadog
    raw_status: str | None = None
    unknown_status_reported: str | None = None
    results: dict[str, ResultSlot] = field(default_factory=dict)  # by result lineage
    result_counts: ResultCounts | None = None
    metadata: CiMetadata | None = None
    not_found_since: float | None = None
    # why: kept while the state lasts, shown in the API and the status page
    diagnosis: Diagnosis = NO_DIAGNOSIS
    # engine: the runtime row last applied (not persisted). The parser hands out the same
    # snapshot object for an unchanged row, so the next listing can tell by identity that
    # only the clock can have changed the batch's state.
    runtime_row: EngineBatchSnapshot | None = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> Key:
        return (self.source, self.target, self.batch_id)

    @property
    def terminal(self) -> bool:
        return is_terminal(self.source, self.state)


@dataclass(slots=True)
class Outcome:
    """What one tracker call produced."""

    events: list[Event] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # engine: runtime rows that disappeared
    lookups: list[LookupRequest] = field(default_factory=list)  # engine: diagnosis wanted

    def extend(self, other: Outcome) -> None:
        self.events.extend(other.events)
        self.notices.extend(other.notices)
        self.missing.extend(other.missing)
        self.lookups.extend(other.lookups)


@dataclass(slots=True)
class RecordChanges:
    """Records changed and keys forgotten since the last :meth:`RecordBook.take_changes`."""

    changed: list[TrackedBatch]
    forgotten: list[Key]


class ChangedKeys(set[Key]):
    """The keys changed since the last save (``RecordBook.dirty``). ``added`` counts every
    ``add`` ever made, saves or not: whatever is persisted changes only through an add, so
    a reader of the records (the metrics' rendered per-batch series) can tell that nothing
    it shows changed since it last looked."""

    __slots__ = ("added",)

    def __init__(self) -> None:
        super().__init__()
        self.added = 0

    def add(self, key: Key) -> None:
        self.added += 1
        super().add(key)

    def add_all(self, keys: list[Key]) -> None:
        """:meth:`add` of each key, in one call."""
        self.added += len(keys)
        self.update(keys)


class RecordBook:
    """Every tracked batch, indexed for the pollers (active), expiry (ended) and metrics."""

    def __init__(self, *, retention: float, max_tracked: int, seq: int = 0) -> None:
        self.retention = retention
        # Each source has its own bound: whoever may POST watches must not be able to
        # crowd engine batches out, nor a busy engine the CI batches.
        self.max_tracked = max_tracked
        self.seq = seq
        self.records: dict[Key, TrackedBatch] = {}
        self._per_source: Counter[Source] = Counter()
        self.version = 0  # changes whenever a record is added or forgotten
        self.state_changes = 0  # changes whenever a record changes state
        # While set, events get UNNUMBERED: their seq is given by number() when they are
        # published, so events held back for a lookup never log out of seq order.
        self.deferred_numbering = False
        # Where each target's batches are shown upstream (set by the core from settings).
        self.links: dict[TargetKey, Links] = {}
        # Non-terminal records per (source, target): what pollers iterate and what the
        # per-batch metric series show.
        self.active: dict[TargetKey, dict[str, TrackedBatch]] = {}
        # Terminal keys in the order they ended, per source: expiry and eviction pop from
        # the front.
        self._ended_by_source: dict[Source, dict[Key, None]] = {s: {} for s in Source}
        self.counts: Counter[tuple[Source, str, State]] = Counter()
        self.dirty = ChangedKeys()
        self.forgotten: set[Key] = set()
        self.evictions = 0
        self.refused = 0

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return len(self.records)

    def get(self, source: Source, target: str, batch_id: str) -> TrackedBatch | None:
        return self.records.get((source, target, batch_id))

    def active_for(self, source: Source, target: str) -> dict[str, TrackedBatch]:
        return self.active.get((source, target), {})

    def iter_active(self) -> Iterator[TrackedBatch]:
        for batches in self.active.values():
            yield from batches.values()

    def targets(self) -> set[TargetKey]:
        return {(k[0], k[1]) for k in self.records}

    # ------------------------------------------------------------------ lifecycle

    def forget_target(self, source: Source, target: str) -> int:
        """Drop every record of a target that is no longer configured."""
        keys = [k for k in self.records if k[0] is source and k[1] == target]
        for key in keys:
            self._forget(key)
        self.active.pop((source, target), None)
        return len(keys)

    @property
    def _ended(self) -> dict[Key, None]:
        """Every terminal key (both sources)."""
        return {k: None for ended in self._ended_by_source.values() for k in ended}

    def count(self, source: Source) -> int:
        return self._per_source[source]

    def expire(self, now: float) -> int:
        """Forget terminal batches older than the retention; returns how many."""
        forgotten = 0
        for ended in self._ended_by_source.values():
            while ended:
                key = next(iter(ended))
                rec = self.records[key]
                if now - rec.state_since < self.retention:
                    break
                self._forget(key)
                forgotten += 1
        return forgotten

    def restore(self, records: Iterable[TrackedBatch], seq: int) -> None:
        """Load persisted state; marks nothing dirty."""
        self.seq = max(self.seq, seq)
        for rec in sorted(records, key=lambda r: r.state_since):
            self.records[rec.key] = rec
            self._per_source[rec.source] += 1
            self._index(rec)
            self.counts[(rec.source, rec.target, rec.state)] += 1
        self.version += 1

    def take_changes(self) -> tuple[list[TrackedBatch], list[Key]]:
        """Records changed and keys forgotten since the last call (for the state store)."""
        changed = [self.records[k] for k in self.dirty if k in self.records]
        forgotten = list(self.forgotten)
        self.dirty.clear()
        self.forgotten.clear()
        return changed, forgotten

    def requeue(self, changed: Iterable[TrackedBatch], forgotten: Iterable[Key]) -> None:
        """Changes a failed save did not write: they go out with the next one."""
        for rec in changed:
            if rec.key in self.records:
                self.dirty.add(rec.key)
        self.forgotten.update(k for k in forgotten if k not in self.records)

    @property
    def changes(self) -> tuple[int, int]:
        """Changes whenever a record is added, forgotten, or changes anything persisted
        (state, counts, results, diagnosis): what a cache of the records is keyed by."""
        return (self.version, self.dirty.added)

    @property
    def has_changes(self) -> bool:
        return bool(self.dirty or self.forgotten)

    # ------------------------------------------------------------------ internals

    def _admit(self, rec: TrackedBatch, out: Outcome, *, silent: bool = False) -> bool:
        """Make room for a new record: evict the oldest terminal batch of its source, or
        refuse."""
        if (self._per_source[rec.source] >= self.max_tracked
                and not self._make_room(rec, out, silent=silent)):
            return False
        key = rec.key
        self.records[key] = rec
        self._per_source[rec.source] += 1
        self.version += 1
        link = self.link(rec)
        # The shared empty diagnosis where there is no link: no object per batch.
        rec.diagnosis = NO_DIAGNOSIS if link is None else Diagnosis(link=link)
        self.counts[(rec.source, rec.target, rec.state)] += 1
        self._index(rec)
        self.dirty.add(key)
        self.forgotten.discard(key)  # forgotten and re-added before a save: keep it
        return True

    def _make_room(self, rec: TrackedBatch, out: Outcome, *, silent: bool = False) -> bool:
        """Evict the oldest terminal batch of a full source, or refuse ``rec``."""
        ended = self._ended_by_source[rec.source]
        if not ended:
            self.refused += 1
            if not silent:
                out.notices.append(Notice("tracker.full", "error", {
                    "source": rec.source.value, "target": rec.target,
                    "batch_id": rec.batch_id, "max_tracked_batches": self.max_tracked,
                }))
            return False
        self._forget(next(iter(ended)))
        self.evictions += 1
        return True

    def _admit_entering(self, rec: TrackedBatch, state: State, now: float,
                        out: Outcome) -> None:
        """:meth:`_admit` a new record, then :meth:`_transition` it to ``state``, with the
        same records, counts, indexes, change sets and event; in one step: admitted in
        ``state`` already, it is never counted in ``none`` and moved (a first cycle admits
        10,000 running batches).

        For a record still in ``none`` with the empty diagnosis (as ``_new_record``
        makes it), entering a state that is neither ``none`` nor terminal and needs no
        diagnosis of its own (``in_progress``): its diagnosis is its link, as ``_admit``
        sets it. ``tests/unit/test_admit_entering.py`` holds the two paths equal.
        """
        rec.state, rec.state_since = state, now
        if not self._admit(rec, out):
            return
        self.state_changes += 1
        out.events.append(self._event(rec, State.NONE, now, None))

    def _admit_all_entering(self, recs: list[TrackedBatch], state: State, now: float,
                            out: Outcome) -> None:
        """:meth:`_admit_entering` of each record in turn (new records of one source and
        target, ``state`` neither ``none`` nor terminal): the same records, counts, indexes,
        change sets and events, in the same order, with the bookkeeping done once for all.

        A first cycle admits 10,000 running batches; one call each through ``_admit`` was
        a third of the core's CPU (issue 12). The records beyond the source's free room
        take :meth:`_admit_entering` one by one (eviction or refusal, with its notice).
        ``tests/unit/test_admit_entering.py`` holds this equal to the two-step path.
        """
        if not recs:
            return
        source, target = recs[0].source, recs[0].target
        room = max(0, self.max_tracked - self._per_source[source])
        admitted = recs[:room]
        if admitted:
            active = self.active.setdefault((source, target), {})
            links = self.links.get((source, target))
            none, events, keys, event = State.NONE, out.events, [], self._event
            for rec in admitted:
                batch_id = rec.batch_id
                key = (source, target, batch_id)
                rec.state, rec.state_since = state, now
                self.records[key] = rec
                active[batch_id] = rec
                if links is not None:
                    link = self.link(rec)
                    if link is not None:
                        rec.diagnosis = Diagnosis(link=link)
                keys.append(key)
                events.append(event(rec, none, now, None))
            n = len(admitted)
            self._per_source[source] += n
            self.version += n
            self.counts[(source, target, state)] += n
            self.state_changes += n
            self.dirty.add_all(keys)
            if self.forgotten:
                self.forgotten.difference_update(keys)
        for rec in recs[room:]:
            self._admit_entering(rec, state, now, out)

    def _index(self, rec: TrackedBatch) -> None:
        if rec.terminal:
            self._ended_by_source[rec.source][rec.key] = None
        else:
            self.active.setdefault((rec.source, rec.target), {})[rec.batch_id] = rec

    def _forget(self, key: Key) -> None:
        rec = self.records.pop(key)
        self._per_source[rec.source] -= 1
        self.version += 1
        self.counts[(rec.source, rec.target, rec.state)] -= 1
        self._ended_by_source[rec.source].pop(key, None)
        self.active.get((rec.source, rec.target), {}).pop(rec.batch_id, None)
        self.dirty.discard(key)
        self.forgotten.add(key)

    def _number(self) -> int:
        """The next event's seq, or UNNUMBERED while numbering is deferred."""
        if self.deferred_numbering:
            return UNNUMBERED
        self.seq += 1
        return self.seq

    def number(self, events: list[Event]) -> list[Event]:
        """Give deferred events their seq, in order (right before they are published).

        The seq is written into the event itself: an unpublished event belongs to the core
        alone, and a copy per event (``dataclasses.replace``) made numbering a first cycle's
        10,000 events one of its larger costs (issue 12). No sink has seen it yet.
        """
        seq = self.seq
        for event in events:
            if event.seq == UNNUMBERED:
                seq += 1
                object.__setattr__(event, "seq", seq)  # immutable once published
        self.seq = seq
        return events

    def link(self, rec: TrackedBatch, *, finished: bool = False) -> str | None:
        """The batch's page in its upstream's UI, when the target says where that is."""
        links = self.links.get((rec.source, rec.target))
        if links is None:
            return None
        if isinstance(links, EngineLinks):
            return links.batch(rec.batch_id, finished=finished)
        if isinstance(links, DatadogLinks):
            return links.batch(rec.batch_id)
        return None

    def diagnose(self, rec: TrackedBatch, reason: Reason | None,
                 failure: dict[str, Any] | None, *, finished: bool = False) -> None:
        """Set why the batch is in the state it is entering (link kept up to date)."""
        rec.diagnosis = Diagnosis(reason, failure, self.link(rec, finished=finished))
        self.dirty.add(rec.key)

    def _set_state(self, rec: TrackedBatch, state: State, now: float) -> None:
        if state is rec.state:
            return
        self.counts[(rec.source, rec.target, rec.state)] -= 1
        self.counts[(rec.source, rec.target, state)] += 1
        rec.state = state
        rec.state_since = now
        self.state_changes += 1
        self.dirty.add(rec.key)
        if rec.terminal:
            self.active.get((rec.source, rec.target), {}).pop(rec.batch_id, None)
            self._ended_by_source[rec.source][rec.key] = None

    def _transition(
        self,
        rec: TrackedBatch,
        state: State,
        now: float,
        out: Outcome,
        *,
        duration: float | None = None,
    ) -> None:
        if state is rec.state:
            return
        before = rec.state
        self._set_state(rec, state, now)
        out.events.append(self._event(rec, before, now, duration))

    def _event(self, rec: TrackedBatch, before: State, now: float,
               duration: float | None) -> BatchTransition:
        """The transition of ``rec`` from ``before`` to the state it is in now."""
        source, state = rec.source, rec.state
        engine = source is Source.ENGINE
        # Positional, in BatchTransition's field order: a first cycle makes 10,000 of
        # these, and keywords cost a third of a dataclass's construction.
        return BatchTransition(
            self._number(), now, source, rec.target, rec.batch_id, rec.batch_type,
            before, state,
            rec.jobs if engine else None,  # jobs
            duration if state in TERMINAL[source] else None,  # duration_seconds
            None if engine else rec.result_counts,  # results
            None if engine else rec.metadata,  # metadata
            rec.diagnosis,
        )
