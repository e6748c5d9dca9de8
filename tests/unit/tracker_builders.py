"""Snapshot builders shared by the tracker's table tests and its property tests."""

from __future__ import annotations

from batchscope.model import (
    CiResult,
    DatadogBatchSnapshot,
    EngineBatchSnapshot,
    EngineHistoryRecord,
    JobCounts,
)


def eng(
    batch_id: str = "b1",
    *,
    completed: int = 0,
    total: int = 10,
    created: int | None = None,
    failed: int = 0,
    suspended: bool = False,
    start: float | None = None,
) -> EngineBatchSnapshot:
    """An engine batch as the engine reports it; ``created`` defaults to ``total``."""
    return EngineBatchSnapshot(
        batch_id=batch_id,
        batch_type="instance-migration",
        jobs=JobCounts(total=total, created=total if created is None else created,
                       completed=completed, remaining=total - completed, failed=failed),
        suspended=suspended,
        start_time=start,
    )


def hist(batch_id: str = "b1", *, start: float | None = 0.0, end: float | None = 50.0,
         deleted: bool = False) -> EngineHistoryRecord:
    """An engine batch's history row (10 jobs)."""
    return EngineHistoryRecord(batch_id=batch_id, batch_type="instance-migration",
                               total_jobs=10, start_time=start, end_time=end, deleted=deleted)


def dd(status: str, *results: CiResult, batch_id: str = "ci-1") -> DatadogBatchSnapshot:
    """A Datadog CI batch with its raw ``status`` and ``results``."""
    return DatadogBatchSnapshot(batch_id=batch_id, status=status, results=results)


def res(status: str, *, result_id: str | None = "r1", retries: int | None = None,
        test: str = "abc-def-ghi", device: str = "chrome.laptop_large",
        initial: str | None = None) -> CiResult:
    """One CI result, in location aws:eu-central-1; ``initial`` is the first attempt's
    ``result_id`` on a retry, as datadog-ci sends it (``initial_result_id``)."""
    return CiResult(test_public_id=test, status=status, location="aws:eu-central-1",
                    device=device, result_id=result_id, retries=retries,
                    initial_result_id=initial)
