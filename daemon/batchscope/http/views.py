"""JSON views of tracked batches, shared by the API and ``batchscope once``."""

from __future__ import annotations

from typing import Any

from batchscope.tracker import TrackedBatch


def batch_view(rec: TrackedBatch) -> dict[str, Any]:
    counts: dict[str, Any] = {}
    if rec.jobs is not None:
        counts = rec.jobs.fields(with_created=True)
    elif rec.result_counts is not None:
        c = rec.result_counts
        counts = {"results_total": c.total, "results_passed": c.passed,
                  "results_failed": c.failed, "results_in_progress": c.in_progress}
    view: dict[str, Any] = {
        "source": rec.source.value, "target": rec.target, "batch_id": rec.batch_id,
        "batch_type": rec.batch_type, "state": rec.state.value,
        "state_since": rec.state_since, "first_seen": rec.first_seen,
        "last_seen": rec.last_seen, "counts": counts,
    }
    if rec.raw_status is not None:
        view["upstream_status"] = rec.raw_status
    return view
