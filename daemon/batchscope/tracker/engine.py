"""Engine batches: runtime listings, their ends, the history sweep and its cursor."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from batchscope.model import (
    EngineBatchSnapshot,
    EngineHistoryRecord,
    JobCounts,
    Source,
    State,
)
from batchscope.tracker import diagnosis, rules
from batchscope.tracker.diagnosis import LookupKind, LookupRequest
from batchscope.tracker.records import Outcome, RecordBook, TrackedBatch

#: How far back each history sweep looks before the newest end time it has already seen:
#: rows become visible in end-time order only roughly (commit order differs).
SWEEP_OVERLAP = 120.0

#: The engine's HTTP ``Date`` corrects the daemon's clock for the start watermark; a skew
#: larger than this is a broken header or a broken clock, not a real offset, and is ignored.
MAX_PLAUSIBLE_SKEW = 86_400.0


def ended_after(row: EngineHistoryRecord, watermark: float) -> bool:
    """Whether a history row's ending is after the watermark (so it becomes an event). An
    end time in a format that could not be read is judged by the start time, if readable."""
    when = row.end_time if row.end_time is not None else row.start_time
    return row.ended and when is not None and when >= watermark


@dataclass(slots=True)
class HistoryCursor:
    """Where an engine target's history sweep stands; persisted with the state.

    ``watermark`` is the daemon's first start on the engine's clock: endings before it were
    not watched and are recorded silently; later ones (even during an outage before the
    first successful poll) are reported. ``recent`` holds the ids already handled inside
    the overlap window, with their end times.
    """

    watermark: float
    sweep_from: float
    recent: dict[str, float] = field(default_factory=dict)

    @classmethod
    def starting(cls, started: float, server_time: float | None, now: float) -> tuple[
            HistoryCursor, float | None]:
        """The cursor of a first poll; also the skew ignored as implausible, if any.

        The watermark is compared with the engine's ``endTime``, so a skewed daemon clock is
        corrected with the engine's ``Date``; that has whole seconds, so only a real skew
        (over 2 s) is corrected, and only a plausible one (under a day).
        """
        ignored = None
        if server_time is not None:
            skew = server_time + 0.5 - now
            if abs(skew) > MAX_PLAUSIBLE_SKEW:
                ignored = skew
            elif abs(skew) > 2.0:
                started += skew
        return cls(watermark=started, sweep_from=started - SWEEP_OVERLAP), ignored

    def is_new(self, row: EngineHistoryRecord) -> bool:
        return ended_after(row, self.watermark)

    def advance(self, rows: Iterable[EngineHistoryRecord], now: float) -> None:
        """Remember the endings of one sweep and move its start up behind the newest.

        An ending implausibly far in the future (a broken clock or a hostile upstream) never
        moves the start: it would hide every later ending, and it would be persisted.
        """
        horizon = now + MAX_PLAUSIBLE_SKEW
        for r in rows:
            when = r.end_time if r.end_time is not None else r.start_time
            if r.ended and when is not None and when <= horizon:
                self.recent[r.batch_id] = when
        if self.recent:
            newest = max(self.recent.values())
            self.sweep_from = max(self.sweep_from, newest - SWEEP_OVERLAP)
        cutoff = self.sweep_from
        for batch_id in [b for b, end in self.recent.items() if end < cutoff]:
            del self.recent[batch_id]


def _new_record(target: str, batch_id: str, batch_type: str, now: float,
                start_time: float | None, jobs: JobCounts) -> TrackedBatch:
    """An engine batch seen for the first time (state ``none`` until its first transition)."""
    # Positional, in TrackedBatch's field order (10,000 of these in a first cycle): source,
    # target, batch_id, batch_type, state, state_since, first_seen, last_seen, start_time,
    # jobs, progress_since.
    return TrackedBatch(Source.ENGINE, target, batch_id, batch_type, State.NONE, now, now, now,
                        start_time, jobs, now)


class EngineTracker(RecordBook):
    def engine_runtime(
        self,
        target: str,
        rows: Iterable[EngineBatchSnapshot],
        now: float,
        stall_after: float,
        unreadable: frozenset[str] = frozenset(),
    ) -> Outcome:
        """Apply one complete ``/batch/statistics`` listing of a target.

        ``Outcome.missing`` lists the batches that left the runtime list: their end must be
        looked up. A row listed but unreadable (``unreadable``) is still running.
        """
        out = Outcome()
        # One row per id: offset paging over a changing list can list a batch twice, in
        # two states; the later page is the fresher answer.
        latest = {row.batch_id: row for row in rows}
        active = self.active.get((Source.ENGINE, target))
        if active is None:
            active = {}
        suspended, failed = State.SUSPENDED, State.FAILED
        stalled, in_progress = State.STALLED, State.IN_PROGRESS
        get = active.get
        records, source = self.records, Source.ENGINE
        # First sightings entering in_progress, admitted together (_admit_running) before
        # the next row that takes the full path: events stay in listing order.
        fresh: list[EngineBatchSnapshot] = []
        for batch_id, row in latest.items():
            rec = get(batch_id)
            if rec is not None and rec.runtime_row is row and rec.jobs is row.jobs:
                # The very row applied last time (sources hand out the same snapshot for an
                # unchanged row): nothing to compare, only the clock can move the state.
                # These are engine_runtime_state's rules, inlined for the 10,000 rows of a
                # steady cycle; any change of state takes the full path below.
                if row.suspended:
                    state = suspended
                elif row.jobs.failed > 0:
                    state = failed
                elif now - rec.progress_since >= stall_after:
                    state = stalled
                else:
                    state = in_progress
                if state is rec.state:
                    rec.last_seen = now
                    continue
            elif (rec is None and (source, target, batch_id) not in records
                  and rules.engine_runtime_state(row, now, now, stall_after) is in_progress):
                fresh.append(row)
                continue
            if fresh:
                self._admit_running(target, fresh, now, out)
                fresh = []
            self._engine_row(target, row, now, stall_after, out)
        self._admit_running(target, fresh, now, out)
        active = self.active.get((Source.ENGINE, target), {})
        out.missing.extend(
            batch_id
            for batch_id, rec in active.items()
            if batch_id not in latest and batch_id not in unreadable
            and rec.state is not State.NONE
        )
        return out

    def _engine_row(self, target: str, row: EngineBatchSnapshot, now: float,
                    stall_after: float, out: Outcome) -> None:
        """Apply one runtime row in full: first sighting, progress, state, diagnosis."""
        rec = self.records.get((Source.ENGINE, target, row.batch_id))
        if rec is None:
            self._engine_first_sighting(target, row, now, stall_after, out)
            return
        if rec.terminal:
            return  # ids are never reused; a late runtime row changes nothing
        rec.last_seen = now
        failed_before = rec.jobs.failed if rec.jobs is not None else 0
        # Only real changes are persisted: rewriting 10,000 unchanged rows every poll
        # would cost megabytes of writes per cycle.
        if row.jobs != rec.jobs or (row.start_time is not None
                                    and row.start_time != rec.start_time):
            if rules.engine_made_progress(rec.jobs, row.jobs):
                rec.progress_since = now
            if row.start_time is not None:
                rec.start_time = row.start_time
            self.dirty.add(rec.key)
        # Equal counts or new ones, the record keeps the row's own object: the next
        # listing's fast path checks it by identity.
        rec.jobs = row.jobs
        rec.runtime_row = row
        state = rules.engine_runtime_state(row, rec.progress_since, now, stall_after)
        if state is not rec.state:
            self._diagnose_runtime(rec, row, state, out)
        elif state is State.FAILED and row.jobs.failed != failed_before:
            # The failures changed while the batch stays failed: refresh the evidence.
            out.lookups.append(LookupRequest.for_row(row, LookupKind.FAILED_JOBS))
        self._transition(rec, state, now, out)

    def _engine_first_sighting(
        self,
        target: str,
        row: EngineBatchSnapshot,
        now: float,
        stall_after: float,
        out: Outcome,
    ) -> None:
        rec = _new_record(target, row.batch_id, row.batch_type, now, row.start_time,
                          row.jobs)
        rec.runtime_row = row
        state = rules.engine_runtime_state(row, now, now, stall_after)
        if state is State.IN_PROGRESS:
            # Nothing to diagnose (most first sightings): the admitted record's diagnosis
            # (its link) is what _diagnose_runtime would set.
            self._admit_entering(rec, state, now, out)
            return
        if not self._admit(rec, out):
            return
        self._diagnose_runtime(rec, row, state, out)
        self._transition(rec, state, now, out)

    def _admit_running(self, target: str, rows: list[EngineBatchSnapshot], now: float,
                       out: Outcome) -> None:
        """First sightings whose rows say ``in_progress``, in order: what
        :meth:`_engine_first_sighting` does for each, for all at once. Nothing to diagnose:
        the admitted record's diagnosis is its link, as ``_admit`` sets it."""
        recs = []
        for row in rows:
            rec = _new_record(target, row.batch_id, row.batch_type, now, row.start_time,
                              row.jobs)
            rec.runtime_row = row
            recs.append(rec)
        self._admit_all_entering(recs, State.IN_PROGRESS, now, out)

    def _diagnose_runtime(self, rec: TrackedBatch, row: EngineBatchSnapshot, state: State,
                          out: Outcome) -> None:
        """What the row alone says of the state being entered, and the lookup that tells
        more (failed jobs' messages; a stalled batch's seed and monitor jobs)."""
        reason, failure = diagnosis.engine_diagnosis(state, row.jobs, None)
        self.diagnose(rec, reason, failure)
        if state is State.FAILED:
            out.lookups.append(LookupRequest.for_row(row, LookupKind.FAILED_JOBS))
        elif state is State.STALLED:
            out.lookups.append(LookupRequest.for_row(row, LookupKind.STALL))

    def engine_resolve(
        self,
        target: str,
        batch_id: str,
        record: EngineHistoryRecord | None,
        now: float,
        *,
        still_running: bool = False,
    ) -> Outcome:
        """Decide the end of a batch that left the runtime list.

        ``record`` is the history row (with the delete evidence), or None when the engine
        says it has none; ``still_running`` whether the runtime still has the batch.
        """
        out = Outcome()
        rec = self.records.get((Source.ENGINE, target, batch_id))
        if rec is None or rec.terminal:
            return out
        state = rules.engine_end_state(record, rec.state, still_running=still_running)
        if state is None:
            return out
        if record is not None and record.end_time is not None:
            start = record.start_time if record.start_time is not None else rec.start_time
            if start is None:
                start = rec.first_seen
            duration = max(0.0, record.end_time - start)
        else:
            duration = max(0.0, now - (rec.start_time if rec.start_time is not None
                                       else rec.first_seen))
        rec.last_seen = now
        self.diagnose(rec, diagnosis.engine_end_reason(state, record), None, finished=True)
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
            if key in self.records or not hist.ended or hist.batch_id in handled:
                continue
            handled.add(hist.batch_id)
            end_state = rules.engine_end_state(hist, State.NONE)
            if end_state is None:
                continue
            end = hist.end_time if hist.end_time is not None else now
            start = hist.start_time if hist.start_time is not None else end
            total = hist.total_jobs or 0
            rec = _new_record(target, hist.batch_id, hist.batch_type, now, start,
                              JobCounts(total=total, created=total, completed=total,
                                        remaining=0, failed=0))
            if not ended_after(hist, watermark):
                if self._admit(rec, out, silent=True):
                    self.diagnose(rec, diagnosis.engine_end_reason(end_state, hist), None,
                                  finished=True)
                    self._set_state(rec, end_state, now)
                continue
            if not self._admit(rec, out):
                continue
            self.diagnose(rec, diagnosis.engine_end_reason(end_state, hist), None, finished=True)
            duration = None if hist.end_time is None else max(0.0, hist.end_time - start)
            self._transition(rec, end_state, now, out, duration=duration)
        return out
