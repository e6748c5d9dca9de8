"""Why a batch failed, stalled or ended: SPEC.md's Diagnosis rules, as pure functions.

The reason comes from what the tracker already knows (a statistics row, a history row, a
CI batch's results) plus, for engine failures and stalls, what a lookup found
(:class:`Findings`). Upstream text is evidence, never instructions: it is cut to size and
carried as data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from batchscope import redaction
from batchscope.model import (
    CiResult,
    EngineBatchSnapshot,
    EngineHistoryRecord,
    FailedJob,
    JobCounts,
    Reason,
    State,
)

MAX_MESSAGE = 500  # characters of one exception message
MAX_IDS = 3  # ids of each kind per message
MAX_RESULTS = 20  # failing CI results listed


class LookupKind(StrEnum):
    FAILED_JOBS = "failed_jobs"  # a sample of the failed execution jobs
    STALL = "stall"  # the seed and monitor jobs of a batch that stopped moving


@dataclass(frozen=True, slots=True)
class LookupRequest:
    """A lookup the core wants; the ids come from the statistics row that asked for it."""

    batch_id: str
    kind: LookupKind
    failed_jobs: int = 0
    batch_job_definition_id: str | None = None
    seed_job_definition_id: str | None = None
    monitor_job_definition_id: str | None = None

    @classmethod
    def for_row(cls, row: EngineBatchSnapshot, kind: LookupKind) -> LookupRequest:
        return cls(batch_id=row.batch_id, kind=kind, failed_jobs=row.jobs.failed,
                   batch_job_definition_id=row.batch_job_definition_id,
                   seed_job_definition_id=row.seed_job_definition_id,
                   monitor_job_definition_id=row.monitor_job_definition_id)


@dataclass(frozen=True, slots=True)
class Findings:
    """What a lookup found (``error`` set when it failed: the evidence is then unknown)."""

    failed_jobs: list[FailedJob] = field(default_factory=list)
    seed_failure: FailedJob | None = None
    monitor_failure: FailedJob | None = None
    error: str | None = None


# --------------------------------------------------------------------------- engine


def engine_stall_reason(jobs: JobCounts | None, findings: Findings | None) -> Reason:
    """The first matching stall rule of SPEC.md."""
    if findings is not None and findings.seed_failure is not None:
        return Reason.SEED_JOB_FAILED
    if findings is not None and findings.monitor_failure is not None:
        return Reason.MONITOR_JOB_FAILED
    if jobs is None:
        return Reason.JOBS_NOT_EXECUTING
    if jobs.created == 0:
        return Reason.NOT_STARTED
    if jobs.created < jobs.total:
        return Reason.SEEDING_STOPPED
    if jobs.remaining == 0:
        return Reason.AWAITING_MONITOR
    return Reason.JOBS_NOT_EXECUTING


def cut(text: str | None) -> str | None:
    """Upstream text cut to MAX_MESSAGE characters, any secret of ours hidden first (an
    exception message can echo a URL with credentials or a header)."""
    if text is None:
        return None
    return redaction.shorten(text, MAX_MESSAGE - 1)


def _first_distinct(values: Iterable[str | None]) -> list[str]:
    out: list[str] = []
    for v in values:
        if v is not None and v not in out:
            out.append(v)
            if len(out) == MAX_IDS:
                break
    return out


#: What makes two messages of one cause differ: ids of the instance, execution or job
#: each names (UUIDs, long hex or numeric ids). Grouping ignores them.
_VARYING = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                      r"[0-9a-fA-F]{12}|\b[0-9a-fA-F]*\d[0-9a-fA-F]{5,}\b|\b\d{4,}\b")


def message_group(message: str | None) -> str | None:
    """The key grouping messages of one cause: the engine names each job's own process
    instance in ENGINE-23004 and the like, which must not split the group."""
    return None if message is None else _VARYING.sub("…", message)


def failure_summary(failed_jobs: int, jobs: list[FailedJob]) -> dict[str, Any]:
    """The distinct messages among a sample of failed jobs, most frequent first (each
    group shown by its first message, verbatim but cut to size)."""
    groups: dict[str | None, list[FailedJob]] = {}
    for job in jobs:
        groups.setdefault(message_group(job.message), []).append(job)
    ordered = sorted(groups.values(), key=len, reverse=True)  # stable: first seen
    return {
        "failed_jobs": failed_jobs,
        "messages": [
            {"message": cut(group[0].message), "count": len(group),
             "job_ids": _first_distinct(j.job_id for j in group),
             "process_instance_ids": _first_distinct(j.process_instance_id for j in group),
             "activity_ids": _first_distinct(j.activity_id for j in group)}
            for group in ordered
        ],
        "sampled": len(jobs),
    }


def engine_diagnosis(state: State, jobs: JobCounts | None,
                     findings: Findings | None) -> tuple[Reason | None, dict[str, Any] | None]:
    """Reason and evidence of an engine batch still in the runtime list."""
    if state is State.FAILED:
        if findings is None or findings.error is not None:
            return Reason.FAILED_JOBS, None
        return Reason.FAILED_JOBS, failure_summary(
            jobs.failed if jobs is not None else len(findings.failed_jobs),
            findings.failed_jobs)
    if state is State.STALLED:
        reason = engine_stall_reason(jobs, findings)
        failed = None
        if findings is not None:
            failed = (findings.seed_failure if reason is Reason.SEED_JOB_FAILED
                      else findings.monitor_failure if reason is Reason.MONITOR_JOB_FAILED
                      else None)
        return reason, None if failed is None else failure_summary(0, [failed])
    return None, None


def engine_end_reason(state: State, history: EngineHistoryRecord | None) -> Reason | None:
    """Why a batch that left the runtime list ended the way it did."""
    if state is State.CANCELLED:
        return Reason.DELETED if history is not None and history.deleted else (
            Reason.SUSPENDED_WHEN_ENDED)
    if state is State.VANISHED:
        return Reason.NO_HISTORY
    return None


# --------------------------------------------------------------------------- datadog


def is_non_blocking(result: CiResult) -> bool:
    return result.execution_rule == "non_blocking"


def datadog_diagnosis(state: State, results: Iterable[tuple[str, CiResult]],
                      result_link: Callable[[CiResult], str | None] | None = None,
                      ) -> tuple[Reason | None, dict[str, Any] | None]:
    """Reason and evidence of a failed or stalled CI batch, from its results (no lookup).

    ``results`` are (state, latest attempt) pairs; ``result_link(result)`` builds a link to
    a result's page, when one can be built.
    """
    if state not in (State.FAILED, State.STALLED):
        return None, None
    wanted = "failed" if state is State.FAILED else "in_progress"
    chosen = [r for s, r in results
              if s == wanted and not (state is State.FAILED and is_non_blocking(r))]
    listed = [
        {"test_public_id": r.test_public_id, "test_name": r.test_name,
         "location": r.location or None, "device": r.device or None,
         "execution_rule": r.execution_rule, "timed_out": r.timed_out, "retries": r.retries,
         "result_id": r.result_id,
         "link": result_link(r) if result_link else None}
        for r in chosen[:MAX_RESULTS]
    ]
    if state is State.STALLED:
        return Reason.RESULTS_NOT_FINISHING, {"results_in_progress": len(chosen),
                                              "results": listed}
    reason = (Reason.TIMED_OUT if any(r.timed_out for r in chosen)
              else Reason.BLOCKING_RESULTS_FAILED)
    return reason, {"results_failed": len(chosen), "results": listed}
