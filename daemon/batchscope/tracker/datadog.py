"""Datadog CI batches: the watch list's records, batch snapshots, results and 404s."""

from __future__ import annotations

from batchscope.model import (
    DATADOG_BATCH_TYPE,
    CiResult,
    DatadogBatchSnapshot,
    Notice,
    Reason,
    ResultCounts,
    ResultState,
    ResultTransition,
    Source,
    State,
    is_terminal,
)
from batchscope.tracker import diagnosis, rules
from batchscope.tracker.links import DatadogLinks
from batchscope.tracker.records import Outcome, RecordBook, ResultSlot, TrackedBatch

#: Results of one batch followed one by one; a batch listing more (a broken or hostile
#: upstream) is still counted, but its extra results get no events and no state.
MAX_RESULTS_PER_BATCH = 2_000


def result_lineage(result: CiResult, occurrence: int) -> str:
    """The identity of a result across its attempts, not its position in the list.

    A fast retry's final attempt has a new ``result_id`` and names the first attempt in
    ``initial_result_id``; results skipped by a selective rerun have no id at all and are
    told apart by test, location, device and how many such came before.
    """
    if result.initial_result_id:
        return result.initial_result_id
    if result.result_id:
        return result.result_id
    return f"{result.test_public_id}|{result.location}|{result.device}|{occurrence}"


def _latest_attempts(results: tuple[CiResult, ...]) -> dict[str, CiResult]:
    """Each lineage's latest attempt (most retries; a retry over its first attempt)."""
    latest: dict[str, CiResult] = {}
    anonymous: dict[tuple[str, str, str], int] = {}
    for result in results:
        occurrence = 0
        if not (result.initial_result_id or result.result_id):
            occurrence = anonymous.get(result.key, 0)
            anonymous[result.key] = occurrence + 1
        lineage = result_lineage(result, occurrence)
        known = latest.get(lineage)
        if known is None or _attempt(result) >= _attempt(known):
            latest[lineage] = result
    return latest


def _only_non_blocking_failures(rec: TrackedBatch) -> bool:
    """Whether every failing result of the batch is non-blocking (and there is one)."""
    failing = [s.latest for s in rec.results.values()
               if s.state is ResultState.FAILED and s.latest is not None]
    return bool(failing) and all(diagnosis.is_non_blocking(r) for r in failing)


def _attempt(result: CiResult) -> tuple[int, int]:
    return (result.retries or 0, 1 if result.initial_result_id else 0)


class DatadogTracker(RecordBook):
    def __init__(self, *, retention: float, max_tracked: int, seq: int = 0) -> None:
        super().__init__(retention=retention, max_tracked=max_tracked, seq=seq)
        self._capped: set[str] = set()  # batches whose result cap was already noticed

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
        if state is State.FAILED and _only_non_blocking_failures(rec):
            # Failures of non-blocking tests are reported, but never fail the batch.
            state = State.PASSED
        if changed:
            self.dirty.add(rec.key)
        if state is not rec.state:
            links = self.links.get((Source.DATADOG, target))
            result_link = None
            if isinstance(links, DatadogLinks):
                dd_links = links

                def result_link(r: CiResult) -> str | None:
                    return dd_links.result(r.test_public_id, r.result_id,
                                           batch_id=rec.batch_id, test_type=r.test_type)
            reason, failure = diagnosis.datadog_diagnosis(
                state, ((slot.state.value, slot.latest) for slot in rec.results.values()
                        if slot.latest is not None), result_link)
            self.diagnose(rec, reason, failure)
        duration = now - rec.first_seen if is_terminal(Source.DATADOG, state) else None
        self._transition(rec, state, now, out, duration=duration)
        return out

    def _apply_results(
        self, rec: TrackedBatch, results: tuple[CiResult, ...], now: float, out: Outcome
    ) -> None:
        """Fold a batch's results into its slots, one slot per result lineage.

        Linear in the number of results. Results beyond :data:`MAX_RESULTS_PER_BATCH` are
        counted but not followed one by one (noticed once per batch).
        """
        latest = _latest_attempts(results)
        if len(latest) > MAX_RESULTS_PER_BATCH and rec.batch_id not in self._capped:
            self._capped.add(rec.batch_id)
            out.notices.append(Notice("datadog.results_capped", "warning", {
                "target": rec.target, "batch_id": rec.batch_id, "results": len(latest),
                "followed": MAX_RESULTS_PER_BATCH,
            }))
        passed = failed = in_progress = 0
        for n, (lineage, result) in enumerate(latest.items()):
            slot = rec.results.get(lineage)
            state = rules.ci_result_state(result.status)
            if state is None:
                state = slot.state if slot is not None else ResultState.IN_PROGRESS
            if state is ResultState.PASSED:
                passed += 1
            elif state is ResultState.FAILED:
                failed += 1
            elif state is ResultState.IN_PROGRESS:
                in_progress += 1
            if n >= MAX_RESULTS_PER_BATCH:
                continue
            if slot is None:
                rec.results[lineage] = ResultSlot(state, result.result_id, result.retries,
                                                  result)
                self._emit_result(rec, result, ResultState.NONE, state, now, out)
                continue
            new_attempt = (
                result.result_id is not None and result.result_id != slot.result_id
            ) or (
                result.retries is not None
                and (slot.retries is None or result.retries > slot.retries)
            )
            slot.latest = result
            if state is not slot.state or new_attempt:
                previous = slot.state
                slot.state, slot.result_id, slot.retries = state, result.result_id, result.retries
                self._emit_result(rec, result, previous, state, now, out)
        rec.result_counts = ResultCounts(
            total=len(latest), passed=passed, failed=failed, in_progress=in_progress
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
        out.events.append(ResultTransition(
            seq=self._number(), time=now, target=rec.target, batch_id=rec.batch_id,
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
            self.diagnose(rec, Reason.NO_HISTORY, None)
            self._transition(rec, State.VANISHED, now, out,
                             duration=now - rec.first_seen)
        return out
