"""The tracker: a pure state machine from successive snapshots to transition events.

No I/O and no clock: every call gets ``now`` (epoch seconds). The runtime feeds it what
the sources fetched and hands the resulting events to the sinks; the metrics collector and
the HTTP API read its current state. All mutation happens inside one synchronous call, so
a reader on the event loop never sees a half-applied poll.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from batchscope.model import (
    DATADOG_BATCH_TYPE,
    BatchTransition,
    CiMetadata,
    CiResult,
    DatadogBatchSnapshot,
    EngineBatchSnapshot,
    EngineHistoryRecord,
    Event,
    JobCounts,
    Notice,
    ResultCounts,
    ResultKey,
    ResultState,
    ResultTransition,
    Source,
    State,
    is_terminal,
)
from batchscope.tracker import rules

Key = tuple[Source, str, str]  # (source, target, batch_id)


@dataclass(slots=True)
class ResultSlot:
    state: ResultState
    result_id: str | None
    retries: int | None


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
    results: dict[ResultKey, ResultSlot] = field(default_factory=dict)
    result_counts: ResultCounts | None = None
    metadata: CiMetadata | None = None
    not_found_since: float | None = None

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

    def extend(self, other: Outcome) -> None:
        self.events.extend(other.events)
        self.notices.extend(other.notices)
        self.missing.extend(other.missing)


class Tracker:
    def __init__(self, *, retention: float, max_tracked: int, seq: int = 0) -> None:
        self.retention = retention
        self.max_tracked = max_tracked
        self.seq = seq
        self.records: dict[Key, TrackedBatch] = {}
        # Non-terminal records per (source, target): what pollers iterate and what the
        # per-batch metric series show.
        self.active: dict[tuple[Source, str], dict[str, TrackedBatch]] = {}
        # Terminal keys in the order they ended: expiry and eviction pop from the front.
        self._ended: dict[Key, None] = {}
        self.counts: Counter[tuple[Source, str, State]] = Counter()
        self.dirty: set[Key] = set()
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

    # ------------------------------------------------------------------ engine

    def engine_runtime(
        self,
        target: str,
        rows: Iterable[EngineBatchSnapshot],
        now: float,
        stall_after: float,
    ) -> Outcome:
        """Apply one complete ``/batch/statistics`` listing of a target."""
        out = Outcome()
        seen: set[str] = set()
        for row in rows:
            seen.add(row.batch_id)
            rec = self.records.get((Source.ENGINE, target, row.batch_id))
            if rec is None:
                self._engine_first_sighting(target, row, now, stall_after, out)
                continue
            if rec.terminal:
                continue  # ids are never reused; a late runtime row changes nothing
            rec.last_seen = now
            # Only real changes are persisted: rewriting 10,000 unchanged rows every poll
            # would cost megabytes of writes per cycle.
            if row.jobs != rec.jobs or (row.start_time is not None
                                        and row.start_time != rec.start_time):
                if rules.engine_made_progress(rec.jobs, row.jobs):
                    rec.progress_since = now
                rec.jobs = row.jobs
                if row.start_time is not None:
                    rec.start_time = row.start_time
                self.dirty.add(rec.key)
            state = rules.engine_runtime_state(row, rec.progress_since, now, stall_after)
            self._transition(rec, state, now, out)
        active = self.active.get((Source.ENGINE, target), {})
        out.missing.extend(
            batch_id
            for batch_id, rec in active.items()
            if batch_id not in seen and rec.state is not State.NONE
        )
        return out

    def _engine_first_sighting(
        self,
        target: str,
        row: EngineBatchSnapshot,
        now: float,
        stall_after: float,
        out: Outcome,
    ) -> None:
        rec = TrackedBatch(
            source=Source.ENGINE,
            target=target,
            batch_id=row.batch_id,
            batch_type=row.batch_type,
            state=State.NONE,
            state_since=now,
            first_seen=now,
            last_seen=now,
            start_time=row.start_time,
            jobs=row.jobs,
            progress_since=now,
        )
        if not self._admit(rec, out):
            return
        state = rules.engine_runtime_state(row, now, now, stall_after)
        self._transition(rec, state, now, out)

    def engine_resolve(
        self, target: str, batch_id: str, record: EngineHistoryRecord | None, now: float
    ) -> Outcome:
        """Decide the end of a batch that left the runtime list.

        ``record`` is the history row (with the Delete evidence), or None for a 404.
        """
        out = Outcome()
        rec = self.records.get((Source.ENGINE, target, batch_id))
        if rec is None or rec.terminal:
            return out
        state = rules.engine_end_state(record, rec.state)
        if state is None:
            return out
        duration = None
        if record is not None and record.end_time is not None:
            start = record.start_time if record.start_time is not None else rec.start_time
            if start is None:
                start = rec.first_seen
            duration = max(0.0, record.end_time - start)
        else:
            duration = max(0.0, now - (rec.start_time if rec.start_time is not None
                                       else rec.first_seen))
        rec.last_seen = now
        self._transition(rec, state, now, out, duration=duration)
        return out

    def engine_history(
        self,
        target: str,
        records: Iterable[EngineHistoryRecord],
        now: float,
        watermark: float,
    ) -> Outcome:
        """Record finished batches found by the history sweep that were never tracked.

        Those that ended at or after ``watermark`` started and finished between two polls:
        they get a ``none -> passed|cancelled`` transition. Older ones ended before the
        daemon was watching: they are recorded without a transition or a count.
        """
        out = Outcome()
        # Each id is considered once per call: offset paging over a changing list can return
        # a row twice, and a batch tracked at the start of the call must not come back as
        # new after an eviction made room for another row of the same listing.
        rows = list(records)
        handled = {h.batch_id for h in rows if (Source.ENGINE, target, h.batch_id) in self.records}
        for hist in rows:
            key = (Source.ENGINE, target, hist.batch_id)
            if key in self.records or hist.end_time is None or hist.batch_id in handled:
                continue
            handled.add(hist.batch_id)
            start = hist.start_time if hist.start_time is not None else hist.end_time
            total = hist.total_jobs or 0
            rec = TrackedBatch(
                source=Source.ENGINE,
                target=target,
                batch_id=hist.batch_id,
                batch_type=hist.batch_type,
                state=State.NONE,
                state_since=now,
                first_seen=now,
                last_seen=now,
                start_time=start,
                jobs=JobCounts(total=total, created=total, completed=total,
                               remaining=0, failed=0),
                progress_since=now,
            )
            end_state = State.CANCELLED if hist.deleted else State.PASSED
            if hist.end_time < watermark:
                if self._admit(rec, out, silent=True):
                    self._set_state(rec, end_state, now)
                continue
            if not self._admit(rec, out):
                continue
            self._transition(rec, end_state, now, out,
                             duration=max(0.0, hist.end_time - start))
        return out

    # ------------------------------------------------------------------ datadog

    def datadog_watch(self, target: str, batch_id: str, now: float) -> tuple[bool, Outcome]:
        """Start watching a CI batch; returns (newly added, outcome)."""
        out = Outcome()
        key = (Source.DATADOG, target, batch_id)
        if key in self.records:
            return False, out
        rec = TrackedBatch(
            source=Source.DATADOG,
            target=target,
            batch_id=batch_id,
            batch_type=DATADOG_BATCH_TYPE,
            state=State.NONE,
            state_since=now,
            first_seen=now,
            last_seen=now,
        )
        return self._admit(rec, out), out

    def forget_target(self, source: Source, target: str) -> int:
        """Drop every record of a target that is no longer configured."""
        keys = [k for k in self.records if k[0] is source and k[1] == target]
        for key in keys:
            self._forget(key)
        self.active.pop((source, target), None)
        return len(keys)

    def targets(self) -> set[tuple[Source, str]]:
        return {(k[0], k[1]) for k in self.records}

    def datadog_unwatch(self, target: str, batch_id: str) -> bool:
        key = (Source.DATADOG, target, batch_id)
        if key not in self.records:
            return False
        self._forget(key)
        return True

    def datadog_snapshot(
        self, target: str, snap: DatadogBatchSnapshot, now: float, stall_after: float
    ) -> Outcome:
        out = Outcome()
        rec = self.records.get((Source.DATADOG, target, snap.batch_id))
        if rec is None or rec.terminal:
            return out
        rec.last_seen = now
        changed = (rec.not_found_since is not None or rec.raw_status != snap.status
                   or rec.metadata != snap.metadata)
        rec.not_found_since = None
        rec.raw_status = snap.status
        rec.metadata = snap.metadata
        counts_before = rec.result_counts
        self._apply_results(rec, snap.results, now, out)
        changed = changed or bool(out.events) or rec.result_counts != counts_before
        state = rules.datadog_batch_state(snap.status, rec.first_seen, now, stall_after)
        if state is None:
            if rec.unknown_status_reported != snap.status:
                rec.unknown_status_reported = snap.status
                out.notices.append(Notice("datadog.unknown_status", "warning", {
                    "target": target, "batch_id": snap.batch_id, "status": snap.status,
                    "kept_state": rec.state.value,
                }))
            # A batch never seen before has no previous state to keep: it exists and is
            # not known to be finished, so it is in progress.
            state = rec.state if rec.state is not State.NONE else State.IN_PROGRESS
        if changed:
            self.dirty.add(rec.key)
        duration = now - rec.first_seen if is_terminal(Source.DATADOG, state) else None
        self._transition(rec, state, now, out, duration=duration)
        return out

    def _apply_results(
        self, rec: TrackedBatch, results: tuple[CiResult, ...], now: float, out: Outcome
    ) -> None:
        passed = failed = in_progress = 0
        seen: set[ResultKey] = set()
        for result in results:
            key = result.key
            while key in seen:
                # The same test triggered twice at one location and device: keep the
                # entries apart by position instead of letting them overwrite each other.
                key = (key[0], key[1], key[2] + "#")
            seen.add(key)
            slot = rec.results.get(key)
            state = rules.ci_result_state(result.status)
            if state is None:
                state = slot.state if slot is not None else ResultState.IN_PROGRESS
            if state is ResultState.PASSED:
                passed += 1
            elif state is ResultState.FAILED:
                failed += 1
            elif state is ResultState.IN_PROGRESS:
                in_progress += 1
            if slot is None:
                rec.results[key] = ResultSlot(state, result.result_id, result.retries)
                self._emit_result(rec, result, ResultState.NONE, state, now, out)
                continue
            new_attempt = (
                result.result_id is not None and result.result_id != slot.result_id
            ) or (
                result.retries is not None
                and (slot.retries is None or result.retries > slot.retries)
            )
            if state is not slot.state or new_attempt:
                previous = slot.state
                slot.state, slot.result_id, slot.retries = state, result.result_id, result.retries
                self._emit_result(rec, result, previous, state, now, out)
        rec.result_counts = ResultCounts(
            total=len(results), passed=passed, failed=failed, in_progress=in_progress
        )

    def _emit_result(
        self,
        rec: TrackedBatch,
        result: CiResult,
        before: ResultState,
        after: ResultState,
        now: float,
        out: Outcome,
    ) -> None:
        self.seq += 1
        out.events.append(ResultTransition(
            seq=self.seq, time=now, target=rec.target, batch_id=rec.batch_id,
            result=result, from_state=before, to_state=after,
        ))

    def datadog_not_found(
        self, target: str, batch_id: str, now: float, grace: float
    ) -> Outcome:
        """A 404 for a watched batch: vanished once it has lasted longer than ``grace``."""
        out = Outcome()
        rec = self.records.get((Source.DATADOG, target, batch_id))
        if rec is None or rec.terminal:
            return out
        if rec.not_found_since is None:
            rec.not_found_since = now
            self.dirty.add(rec.key)
        if now - rec.not_found_since > grace:
            self._transition(rec, State.VANISHED, now, out,
                             duration=now - rec.first_seen)
        return out

    # ------------------------------------------------------------------ lifecycle

    def expire(self, now: float) -> int:
        """Forget terminal batches older than the retention; returns how many."""
        forgotten = 0
        while self._ended:
            key = next(iter(self._ended))
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
            self._index(rec)
            self.counts[(rec.source, rec.target, rec.state)] += 1

    def take_changes(self) -> tuple[list[TrackedBatch], list[Key]]:
        """Records changed and keys forgotten since the last call (for the state store)."""
        changed = [self.records[k] for k in self.dirty if k in self.records]
        forgotten = list(self.forgotten)
        self.dirty.clear()
        self.forgotten.clear()
        return changed, forgotten

    # ------------------------------------------------------------------ internals

    def _admit(self, rec: TrackedBatch, out: Outcome, *, silent: bool = False) -> bool:
        """Make room for a new record: evict the oldest terminal batch, or refuse."""
        if len(self.records) >= self.max_tracked:
            if not self._ended:
                self.refused += 1
                if not silent:
                    out.notices.append(Notice("tracker.full", "error", {
                        "source": rec.source.value, "target": rec.target,
                        "batch_id": rec.batch_id, "max_tracked_batches": self.max_tracked,
                    }))
                return False
            self._forget(next(iter(self._ended)))
            self.evictions += 1
        self.records[rec.key] = rec
        self.counts[(rec.source, rec.target, rec.state)] += 1
        self._index(rec)
        self.dirty.add(rec.key)
        self.forgotten.discard(rec.key)  # forgotten and re-added before a save: keep it
        return True

    def _index(self, rec: TrackedBatch) -> None:
        if rec.terminal:
            self._ended[rec.key] = None
        else:
            self.active.setdefault((rec.source, rec.target), {})[rec.batch_id] = rec

    def _forget(self, key: Key) -> None:
        rec = self.records.pop(key)
        self.counts[(rec.source, rec.target, rec.state)] -= 1
        self._ended.pop(key, None)
        self.active.get((rec.source, rec.target), {}).pop(rec.batch_id, None)
        self.dirty.discard(key)
        self.forgotten.add(key)

    def _set_state(self, rec: TrackedBatch, state: State, now: float) -> None:
        if state is rec.state:
            return
        self.counts[(rec.source, rec.target, rec.state)] -= 1
        self.counts[(rec.source, rec.target, state)] += 1
        rec.state = state
        rec.state_since = now
        self.dirty.add(rec.key)
        if rec.terminal:
            self.active.get((rec.source, rec.target), {}).pop(rec.batch_id, None)
            self._ended[rec.key] = None

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
        self.seq += 1
        out.events.append(BatchTransition(
            seq=self.seq,
            time=now,
            source=rec.source,
            target=rec.target,
            batch_id=rec.batch_id,
            batch_type=rec.batch_type,
            from_state=before,
            to_state=state,
            jobs=rec.jobs if rec.source is Source.ENGINE else None,
            duration_seconds=duration if rec.terminal else None,
            results=rec.result_counts if rec.source is Source.DATADOG else None,
            metadata=rec.metadata if rec.source is Source.DATADOG else None,
        ))


def record_to_dict(rec: TrackedBatch) -> dict[str, Any]:
    """A JSON-ready form of a record, for the state store and ``/api/v1/batches``."""
    out: dict[str, Any] = {
        "source": rec.source.value,
        "target": rec.target,
        "batch_id": rec.batch_id,
        "batch_type": rec.batch_type,
        "state": rec.state.value,
        "state_since": rec.state_since,
        "first_seen": rec.first_seen,
        "last_seen": rec.last_seen,
        "start_time": rec.start_time,
        "progress_since": rec.progress_since,
    }
    if rec.jobs is not None:
        j = rec.jobs
        out["jobs"] = [j.total, j.created, j.completed, j.remaining, j.failed]
    if rec.source is Source.DATADOG:
        out["raw_status"] = rec.raw_status
        out["unknown_status_reported"] = rec.unknown_status_reported
        out["not_found_since"] = rec.not_found_since
        out["results"] = [
            [*k, s.state.value, s.result_id, s.retries] for k, s in rec.results.items()
        ]
        if rec.result_counts is not None:
            c = rec.result_counts
            out["result_counts"] = [c.total, c.passed, c.failed, c.in_progress]
        if rec.metadata is not None:
            m = rec.metadata
            out["metadata"] = [m.pipeline_url, m.git_branch, m.git_commit]
    return out


def record_from_dict(data: dict[str, Any]) -> TrackedBatch:
    rec = TrackedBatch(
        source=Source(data["source"]),
        target=data["target"],
        batch_id=data["batch_id"],
        batch_type=data["batch_type"],
        state=State(data["state"]),
        state_since=float(data["state_since"]),
        first_seen=float(data["first_seen"]),
        last_seen=float(data["last_seen"]),
        start_time=data.get("start_time"),
        progress_since=float(
            data["first_seen"] if data.get("progress_since") is None else data["progress_since"]
        ),
    )
    if data.get("jobs") is not None:
        rec.jobs = JobCounts(*data["jobs"])
    rec.raw_status = data.get("raw_status")
    rec.unknown_status_reported = data.get("unknown_status_reported")
    rec.not_found_since = data.get("not_found_since")
    for test_id, location, device, state, result_id, retries in data.get("results", []):
        rec.results[(test_id, location, device)] = ResultSlot(
            ResultState(state), result_id, retries
        )
    if data.get("result_counts") is not None:
        rec.result_counts = ResultCounts(*data["result_counts"])
    if data.get("metadata") is not None:
        rec.metadata = CiMetadata(*data["metadata"])
    return rec
