"""The state rules of SPEC.md, as pure functions of a snapshot, its past and the time."""

from __future__ import annotations

from batchscope.model import (
    EngineBatchSnapshot,
    EngineHistoryRecord,
    JobCounts,
    ResultState,
    State,
)


def engine_runtime_state(
    snapshot: EngineBatchSnapshot, progress_since: float, now: float, stall_after: float
) -> State:
    """State of a batch still in the runtime list; the first matching rule wins."""
    if snapshot.suspended:
        return State.SUSPENDED
    if snapshot.jobs.failed > 0:
        return State.FAILED
    if now - progress_since >= stall_after:
        return State.STALLED
    return State.IN_PROGRESS


def engine_made_progress(before: JobCounts | None, after: JobCounts) -> bool:
    """Whether any of the counters that move while a batch works changed."""
    if before is None:
        return True
    return (
        before.created != after.created
        or before.remaining != after.remaining
        or before.completed != after.completed
    )


def engine_end_state(
    record: EngineHistoryRecord | None, last_state: State, *, still_running: bool = False
) -> State | None:
    """Terminal state of a batch that left the runtime list, or None if not decided yet.

    The one end-of-batch decision: the daemon's lookups, its history sweep and
    ``batchscope wait`` all ask it. ``record`` is None when the engine says it has no
    history row (cascade delete, history level below FULL, or history cleanup);
    ``still_running`` says the runtime still lists the batch (it was only skipped by a
    paged listing), which is no end at all.
    """
    if record is None:
        return None if still_running else State.VANISHED
    if not record.ended:
        # The runtime row is gone but history has not recorded the end yet; ask again.
        return None
    if record.deleted or last_state is State.SUSPENDED:
        return State.CANCELLED
    return State.PASSED


_DATADOG_BATCH_STATES = {
    "in_progress": State.IN_PROGRESS,
    "passed": State.PASSED,
    "failed": State.FAILED,
    "skipped": State.SKIPPED,
}


def datadog_batch_state(
    raw_status: str, watched_since: float, now: float, stall_after: float
) -> State | None:
    """State of a Datadog CI batch, or None when the status string is unknown."""
    state = _DATADOG_BATCH_STATES.get(raw_status)
    if state is None:
        return None
    if state is State.IN_PROGRESS and now - watched_since >= stall_after:
        return State.STALLED
    return state


_RESULT_STATES = {
    "in_progress": ResultState.IN_PROGRESS,
    "passed": ResultState.PASSED,
    "failed": ResultState.FAILED,
    "skipped": ResultState.SKIPPED,
}


def ci_result_state(raw_status: str) -> ResultState | None:
    return _RESULT_STATES.get(raw_status)
