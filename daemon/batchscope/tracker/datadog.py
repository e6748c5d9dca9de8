"""Datadog CI batches: the watch list's records, batch snapshots, results and 404s."""

from __future__ import annotations

from batchscope.model import (
    DATADOG_BATCH_TYPE,
    CiResult,
    DatadogBatchSnapshot,
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
from batchscope.tracker.records import Outcome, RecordBook, ResultSlot, TrackedBatch


class DatadogTracker(RecordBook):
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
