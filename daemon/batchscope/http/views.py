"""JSON views of tracked batches, shared by the API, the status page and ``batchscope once``."""

from __future__ import annotations

from typing import Any

from batchscope.model import Source
from batchscope.tracker import TrackedBatch
from batchscope.tracker.links import DatadogLinks


def first_message(rec: TrackedBatch) -> str | None:
    """The first failure message (engine) or failing test (datadog), for one-line views."""
    failure = rec.diagnosis.failure
    if not failure:
        return None
    messages = failure.get("messages")
    if messages:
        return str(messages[0].get("message"))
    results = failure.get("results")
    if results:
        r = results[0]
        name = r.get("test_name") or r.get("test_public_id")
        return f"{name} ({r.get('location') or '?'})"
    return None


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
        "reason": None if rec.diagnosis.reason is None else rec.diagnosis.reason.value,
        "message": first_message(rec),
        "link": rec.diagnosis.link,
    }
    if rec.raw_status is not None:
        view["upstream_status"] = rec.raw_status
    return view


def batch_detail(rec: TrackedBatch, links: DatadogLinks | None = None) -> dict[str, Any]:
    """One batch in full: the list row, the failure evidence, and every CI result."""
    view = batch_view(rec)
    view["failure"] = rec.diagnosis.failure
    if rec.source is Source.DATADOG:
        results = []
        for slot in rec.results.values():
            r = slot.latest
            results.append({
                "test_public_id": r.test_public_id if r else None,
                "test_name": r.test_name if r else None,
                "location": r.location if r else None,
                "device": r.device if r else None,
                "execution_rule": r.execution_rule if r else None,
                "state": slot.state.value,
                "retries": slot.retries,
                "result_id": slot.result_id,
                "duration_ms": r.duration_ms if r else None,
                "timed_out": r.timed_out if r else None,
                "link": (links.result(r.test_public_id, slot.result_id, batch_id=rec.batch_id,
                                      test_type=r.test_type)
                         if links is not None and r is not None else None),
            })
        view["results"] = results
    return view
