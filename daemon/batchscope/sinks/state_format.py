"""The state file's format: tracked records as JSON rows, per-target memory as JSON meta.

Compact on purpose (counts as arrays): 50,000 records are rewritten row by row, and files
written by earlier versions must keep loading.
"""

from __future__ import annotations

from typing import Any

from batchscope.model import (
    NO_DIAGNOSIS,
    CiMetadata,
    CiResult,
    Diagnosis,
    JobCounts,
    Reason,
    ResultCounts,
    ResultState,
    Source,
    State,
)
from batchscope.tracker import (
    ConfiguredIds,
    DatadogMemory,
    HistoryCursor,
    ResultSlot,
    TargetKey,
    TargetMemory,
    TrackedBatch,
)
from batchscope.tracker.pacing import LearntDurations


def record_to_row(rec: TrackedBatch) -> dict[str, Any]:
    """The JSON form of a record in the state file (compact: counts as arrays)."""
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
    d = rec.diagnosis
    if d != NO_DIAGNOSIS:
        out["diagnosis"] = [None if d.reason is None else d.reason.value, d.failure, d.link]
    if rec.jobs is not None:
        j = rec.jobs
        out["jobs"] = [j.total, j.created, j.completed, j.remaining, j.failed]
    if rec.source is Source.DATADOG:
        out["raw_status"] = rec.raw_status
        out["unknown_status_reported"] = rec.unknown_status_reported
        out["not_found_since"] = rec.not_found_since
        out["results"] = [
            [lineage, s.state.value, s.result_id, s.retries, _result_to_row(s.latest)]
            for lineage, s in rec.results.items()
        ]
        if rec.result_counts is not None:
            c = rec.result_counts
            out["result_counts"] = [c.total, c.passed, c.failed, c.in_progress]
        if rec.metadata is not None:
            m = rec.metadata
            out["metadata"] = [m.pipeline_url, m.git_branch, m.git_commit, m.job_name,
                               m.provider_name]
    return out


def record_from_row(data: dict[str, Any]) -> TrackedBatch:
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
    if data.get("diagnosis") is not None:
        reason, failure, link = data["diagnosis"]
        rec.diagnosis = Diagnosis(None if reason is None else Reason(reason), failure, link)
    if data.get("jobs") is not None:
        rec.jobs = JobCounts(*data["jobs"])
    rec.raw_status = data.get("raw_status")
    rec.unknown_status_reported = data.get("unknown_status_reported")
    rec.not_found_since = data.get("not_found_since")
    for row in data.get("results", []):
        lineage, slot = _result_slot(row)
        rec.results[lineage] = slot
    if data.get("result_counts") is not None:
        rec.result_counts = ResultCounts(*data["result_counts"])
    if data.get("metadata") is not None:
        rec.metadata = CiMetadata(*data["metadata"])
    return rec


def _result_slot(row: list[Any]) -> tuple[str, ResultSlot]:
    """A result row: ``[lineage, state, result_id, retries]``; files written before results
    had lineages hold ``[test, location, device, state, result_id, retries]``, where a
    device ending in ``#`` marked a repeat of the same test, location and device."""
    latest = None
    if len(row) == 6:
        test_id, location, device, state, result_id, retries = row
        repeats = len(device) - len(device.rstrip("#"))
        lineage = result_id or f"{test_id}|{location}|{device.rstrip('#')}|{repeats}"
    elif len(row) == 4:
        lineage, state, result_id, retries = row
    else:
        lineage, state, result_id, retries, latest = row
    return str(lineage), ResultSlot(ResultState(state), result_id, retries,
                                    _result_from_row(latest))


#: CiResult fields kept in the state file (what the detail endpoint and diagnosis show).
_RESULT_FIELDS = ("test_public_id", "status", "location", "device", "test_name", "test_type",
                  "execution_rule", "result_id", "retries", "duration_ms",
                  "initial_result_id", "timed_out", "max_retries")


def _result_to_row(result: CiResult | None) -> list[Any] | None:
    return None if result is None else [getattr(result, f) for f in _RESULT_FIELDS]


def _result_from_row(row: list[Any] | None) -> CiResult | None:
    return None if row is None else CiResult(**dict(zip(_RESULT_FIELDS, row, strict=True)))


def memory_to_meta(memory: dict[TargetKey, TargetMemory]) -> dict[str, Any]:
    """Per-target memory as the ``meta`` JSON object (``"engine:NAME"``, ``"datadog:NAME"``)."""
    meta: dict[str, Any] = {}
    for (source, name), value in memory.items():
        key = f"{source.value}:{name}"
        if isinstance(value, HistoryCursor):
            meta[key] = {"watermark": value.watermark, "sweep_from": value.sweep_from,
                         "recent": value.recent}
        elif isinstance(value, DatadogMemory):
            # Beside "configured": versions that predate it read the entry all the same.
            meta[key] = {"configured": value.configured.ids,
                         "durations": value.durations.to_json()}
        else:
            meta[key] = {"configured": value.ids}
    return meta


def memory_from_meta(meta: dict[str, Any]) -> dict[TargetKey, TargetMemory]:
    """The inverse of :func:`memory_to_meta`; an engine entry without a watermark (its
    first poll never completed) is no cursor yet. Raises ValueError on a malformed entry."""
    if not isinstance(meta, dict):
        raise ValueError(f"meta must be an object, not {type(meta).__name__}")
    memory: dict[TargetKey, TargetMemory] = {}
    for key, value in meta.items():
        source_name, sep, name = str(key).partition(":")
        if not sep or not isinstance(value, dict):
            raise ValueError(f"malformed meta entry {key!r}")
        source = Source(source_name)
        if source is Source.ENGINE:
            if "watermark" not in value:
                continue
            recent = value.get("recent") or {}
            watermark = float(value["watermark"])
            sweep_from = value.get("sweep_from")
            memory[(source, name)] = HistoryCursor(
                watermark=watermark,
                sweep_from=watermark if sweep_from is None else float(sweep_from),
                recent={str(b): float(t) for b, t in dict(recent).items()},
            )
        else:
            configured = ConfiguredIds([str(b) for b in value.get("configured", [])])
            # Learnt durations are a cache: rows that cannot be read are dropped, not fatal.
            memory[(source, name)] = (
                configured if "durations" not in value
                else DatadogMemory(configured, LearntDurations.from_json(value["durations"])))
    return memory
