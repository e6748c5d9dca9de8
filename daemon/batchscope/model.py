"""The vocabulary shared by every layer: sources, states, snapshots and events.

Sources normalise upstream JSON into the immutable snapshot types here; the tracker turns
snapshots into events; sinks consume events. Nothing in this module does I/O.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, TypeGuard, TypeVar, dataclass_transform

_T = TypeVar("_T")


@dataclass_transform(frozen_default=True)
def value_type(cls: type[_T]) -> type[_T]:
    """A frozen dataclass to the type checker, built at run time like a plain slotted one.

    A first cycle builds 10,000 snapshots, job counts and events; a frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__``, about twice the cost of a
    plain one (issue 12). ``mypy --strict`` sees these classes frozen, so an assignment to a
    field is a type error; hashing and equality are those of a frozen dataclass. What is
    given up is the run-time ``FrozenInstanceError``, which the test suite keeps: it sets
    ``FROZEN_BATCHSCOPE_VALUES=1`` (``tests/conftest.py``), and the classes are built
    frozen. (Snapshots and events are shared by identity across cycles, by the row and
    page memories and the event buffer: a mutation would corrupt them silently.)
    """
    if _FROZEN_AT_RUN_TIME:
        return dataclass(frozen=True, slots=True)(cls)
    return dataclass(slots=True, unsafe_hash=True)(cls)


_FROZEN_AT_RUN_TIME: Final = os.environ.get("FROZEN_BATCHSCOPE_VALUES") == "1"


#: The one rule for a batch id, wherever one comes in (API, settings, ``wait``): it is put
#: into upstream URL paths, so ``.`` and ``..`` (path traversal) are refused too.
BATCH_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
BATCH_ID_RULE: Final = "match [A-Za-z0-9._:-]{1,128} and not be '.' or '..'"


def is_valid_batch_id(value: object) -> TypeGuard[str]:
    return (isinstance(value, str) and BATCH_ID_PATTERN.fullmatch(value) is not None
            and value not in (".", ".."))


class Source(StrEnum):
    ENGINE = "engine"
    DATADOG = "datadog"


class State(StrEnum):
    NONE = "none"
    IN_PROGRESS = "in_progress"
    SUSPENDED = "suspended"
    STALLED = "stalled"
    FAILED = "failed"
    PASSED = "passed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    VANISHED = "vanished"


#: Every state a batch can be in (``none`` only precedes a first sighting).
STATES: tuple[State, ...] = tuple(s for s in State if s is not State.NONE)

#: States each source can actually produce, in a stable order (used to pre-create series).
SOURCE_STATES: dict[Source, tuple[State, ...]] = {
    Source.ENGINE: (
        State.IN_PROGRESS, State.SUSPENDED, State.STALLED, State.FAILED,
        State.PASSED, State.CANCELLED, State.VANISHED,
    ),
    Source.DATADOG: (
        State.IN_PROGRESS, State.STALLED, State.PASSED, State.FAILED,
        State.SKIPPED, State.VANISHED,
    ),
}

# An engine batch with failed jobs is not finished: retrying or deleting the jobs lets it
# complete. A Datadog batch reported failed is final.
TERMINAL: dict[Source, frozenset[State]] = {
    Source.ENGINE: frozenset({State.PASSED, State.SKIPPED, State.CANCELLED, State.VANISHED}),
    Source.DATADOG: frozenset(
        {State.PASSED, State.FAILED, State.SKIPPED, State.CANCELLED, State.VANISHED}
    ),
}

#: Transitions worth a warning-level log line.
BAD_NEWS: frozenset[State] = frozenset(
    {State.FAILED, State.STALLED, State.VANISHED, State.CANCELLED}
)


def is_terminal(source: Source, state: State) -> bool:
    return state in TERMINAL[source]


def possible_transitions(source: Source) -> list[tuple[State, State]]:
    """(from, to) pairs a source can emit; their counters start at 0 so increase() works."""
    states = SOURCE_STATES[source]
    origins = (State.NONE, *(s for s in states if not is_terminal(source, s)))
    return [(a, b) for a in origins for b in states if a != b]


DATADOG_BATCH_TYPE = "synthetics-ci"


class ResultState(StrEnum):
    """State of one Datadog CI result slot (test + location + device)."""

    NONE = "none"
    IN_PROGRESS = "in_progress"
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"


FINISHED_RESULT_STATES: frozenset[ResultState] = frozenset(
    {ResultState.PASSED, ResultState.FAILED, ResultState.SKIPPED}
)


# --------------------------------------------------------------------------- snapshots


@value_type
class JobCounts:
    total: int
    created: int
    completed: int
    remaining: int
    failed: int

    def fields(self, *, with_created: bool = False) -> dict[str, int]:
        """The counts as log and API fields (the one place they are named)."""
        if with_created:
            return {"total_jobs": self.total, "jobs_created": self.created,
                    "completed_jobs": self.completed, "remaining_jobs": self.remaining,
                    "failed_jobs": self.failed}
        # One dict display (a log line's hot path), in the same order.
        return {"total_jobs": self.total, "completed_jobs": self.completed,
                "remaining_jobs": self.remaining, "failed_jobs": self.failed}

    def by_kind(self) -> tuple[tuple[str, int], ...]:
        """The counts by the ``kind`` label of ``batchscope_batch_jobs``."""
        return (("total", self.total), ("created", self.created),
                ("completed", self.completed), ("remaining", self.remaining),
                ("failed", self.failed))


@value_type
class EngineBatchSnapshot:
    """One row of ``/batch/statistics``."""

    batch_id: str
    batch_type: str
    jobs: JobCounts
    suspended: bool
    start_time: float | None = None  # epoch seconds; absent before Camunda 7.18
    tenant_id: str | None = None
    execution_start_time: float | None = None  # None until a job ran, before 7.18, unreadable
    batch_job_definition_id: str | None = None  # the execution jobs' job definition
    seed_job_definition_id: str | None = None  # the seed job's (diagnosis of a stall)
    monitor_job_definition_id: str | None = None  # the monitor job's


@value_type
class EngineHistoryRecord:
    """A row of ``/history/batch`` plus whether the user-operation log shows a Delete."""

    batch_id: str
    batch_type: str
    total_jobs: int | None
    start_time: float | None
    end_time: float | None
    deleted: bool = False
    end_time_unreadable: bool = False
    batch_job_definition_id: str | None = None  # whose historic job log shows deletions
    execution_start_time: float | None = None
    removal_time: float | None = None

    @property
    def ended(self) -> bool:
        """Whether the engine says the batch ended.

        ``end_time`` is None both for a running batch and for one whose ``endTime`` came in
        a format that could not be read; the latter has ended all the same. ``deleted`` is
        set from any evidence of a delete (user-operation log or historic job log).
        """
        return self.end_time is not None or self.end_time_unreadable


@value_type
class CiMetadata:
    pipeline_url: str | None = None
    git_branch: str | None = None
    git_commit: str | None = None
    job_name: str | None = None  # ci.job.name, as datadog-ci sends it
    provider_name: str | None = None  # ci.provider.name


ResultKey = tuple[str, str, str]  # (test_public_id, location, device)


@value_type
class CiResult:
    """One entry of a Datadog CI batch's ``results``; ``status`` is the raw upstream string."""

    test_public_id: str
    status: str
    location: str = ""
    device: str = ""
    test_name: str | None = None
    test_type: str | None = None
    execution_rule: str | None = None
    result_id: str | None = None
    retries: int | None = None
    duration_ms: float | None = None
    initial_result_id: str | None = None  # the first attempt's id, on a fast retry
    timed_out: bool | None = None
    max_retries: int | None = None
    selective_rerun: str | None = None  # "skip" or "run" when a selective rerun decided
    linked_result_id: str | None = None  # the earlier batch's result a rerun skip points to

    @property
    def key(self) -> ResultKey:
        return (self.test_public_id, self.location, self.device)


@value_type
class DatadogBatchSnapshot:
    batch_id: str
    status: str  # raw upstream value; unknown values are kept, never rejected
    results: tuple[CiResult, ...] = ()
    metadata: CiMetadata = field(default_factory=CiMetadata)


# --------------------------------------------------------------------------- events


@value_type
class ResultCounts:
    total: int = 0
    passed: int = 0
    failed: int = 0
    in_progress: int = 0


class Reason(StrEnum):
    """Why a batch is in its state (the ``reason`` field); SPEC.md's Diagnosis section."""

    FAILED_JOBS = "failed_jobs"
    SEED_JOB_FAILED = "seed_job_failed"
    MONITOR_JOB_FAILED = "monitor_job_failed"
    NOT_STARTED = "not_started"
    SEEDING_STOPPED = "seeding_stopped"
    AWAITING_MONITOR = "awaiting_monitor"
    JOBS_NOT_EXECUTING = "jobs_not_executing"
    BLOCKING_RESULTS_FAILED = "blocking_results_failed"
    TIMED_OUT = "timed_out"
    RESULTS_NOT_FINISHING = "results_not_finishing"
    DELETED = "deleted"
    SUSPENDED_WHEN_ENDED = "suspended_when_ended"
    NO_HISTORY = "no_history"


@value_type
class Diagnosis:
    """Why a batch failed, stalled or ended the way it did: ``failure`` is the evidence
    (JSON-ready, upstream text already cut to size), ``link`` the upstream UI's page."""

    reason: Reason | None = None
    failure: dict[str, Any] | None = None
    link: str | None = None

    def fields(self) -> dict[str, Any]:
        return {"reason": None if self.reason is None else self.reason._value_,
                "failure": self.failure, "link": self.link}


NO_DIAGNOSIS = Diagnosis()


@value_type
class BatchTransition:
    seq: int
    time: float
    source: Source
    target: str
    batch_id: str
    batch_type: str
    from_state: State
    to_state: State
    jobs: JobCounts | None = None
    duration_seconds: float | None = None
    results: ResultCounts | None = None
    metadata: CiMetadata | None = None
    diagnosis: Diagnosis = NO_DIAGNOSIS

    event_name = "batch.transition"

    def fields(self) -> dict[str, Any]:
        """The log line / API fields, in the order SPEC.md shows them."""
        jobs = self.jobs
        if jobs is not None and self.results is None and self.metadata is None:
            return self._engine_fields(jobs)
        return self._any_fields()

    def _any_fields(self) -> dict[str, Any]:
        """:meth:`fields` of any transition."""
        # _value_, not .value: the property costs more than the rest of a field together,
        # and a first cycle renders 10,000 of these lines (issue 12).
        out: dict[str, Any] = {
            "seq": self.seq,
            "source": self.source._value_,
            "target": self.target,
            "batch_id": self.batch_id,
            "batch_type": self.batch_type,
            "from_state": self.from_state._value_,
            "to_state": self.to_state._value_,
        }
        if self.jobs is not None:
            out.update(self.jobs.fields())
        if self.results is not None:
            out["results_total"] = self.results.total
            out["results_passed"] = self.results.passed
            out["results_failed"] = self.results.failed
            out["results_in_progress"] = self.results.in_progress
        if self.metadata is not None:
            for name in ("pipeline_url", "git_branch", "git_commit"):
                value = getattr(self.metadata, name)
                if value is not None:
                    out[name] = value
        out["duration_seconds"] = self.duration_seconds
        out.update(self.diagnosis.fields())
        return out

    def _engine_fields(self, jobs: JobCounts) -> dict[str, Any]:
        """:meth:`fields` of an engine transition, in one dict display: the general path
        builds and merges three dicts, half a first cycle's log-line CPU (issue 12).
        The names and order are those of ``JobCounts.fields`` and ``Diagnosis.fields``
        (``tests/unit/test_value_types.py`` holds it equal to :meth:`_any_fields`)."""
        diagnosis = self.diagnosis
        reason = diagnosis.reason
        return {
            "seq": self.seq,
            "source": self.source._value_,
            "target": self.target,
            "batch_id": self.batch_id,
            "batch_type": self.batch_type,
            "from_state": self.from_state._value_,
            "to_state": self.to_state._value_,
            "total_jobs": jobs.total,
            "completed_jobs": jobs.completed,
            "remaining_jobs": jobs.remaining,
            "failed_jobs": jobs.failed,
            "duration_seconds": self.duration_seconds,
            "reason": None if reason is None else reason._value_,
            "failure": diagnosis.failure,
            "link": diagnosis.link,
        }

    @property
    def bad_news(self) -> bool:
        return self.to_state in BAD_NEWS


@value_type
class ResultTransition:
    seq: int
    time: float
    target: str
    batch_id: str
    result: CiResult
    from_state: ResultState
    to_state: ResultState

    event_name = "ci_result.transition"
    source = Source.DATADOG

    def fields(self) -> dict[str, Any]:
        r = self.result
        return {
            "seq": self.seq,
            "source": self.source.value,
            "target": self.target,
            "batch_id": self.batch_id,
            "test_public_id": r.test_public_id,
            "test_name": r.test_name,
            "test_type": r.test_type,
            "location": r.location,
            "device": r.device,
            "execution_rule": r.execution_rule,
            "result_id": r.result_id,
            "retries": r.retries,
            "duration_ms": r.duration_ms,
            "from_state": self.from_state.value,
            "to_state": self.to_state.value,
        }

    @property
    def bad_news(self) -> bool:
        return self.to_state is ResultState.FAILED


Event = BatchTransition | ResultTransition


@value_type
class Notice:
    """Something worth one log line that is not a transition (e.g. an unknown status)."""

    event: str
    level: str
    fields: dict[str, Any]


class ErrorReason(StrEnum):
    """Why a poll or a lookup failed: the ``reason`` label and log field."""

    TIMEOUT = "timeout"
    CONNECTION = "connection"
    HTTP_4XX = "http_4xx"
    HTTP_5XX = "http_5xx"
    RATE_LIMITED = "rate_limited"
    AUTH = "auth"
    INVALID_RESPONSE = "invalid_response"

    @classmethod
    def target_wide(cls) -> frozenset[ErrorReason]:
        """Reasons that concern a whole target, not one batch of it."""
        return _TARGET_WIDE


_TARGET_WIDE = frozenset({ErrorReason.AUTH, ErrorReason.CONNECTION, ErrorReason.TIMEOUT,
                          ErrorReason.RATE_LIMITED})


@value_type
class FailedJob:
    """A job with no retries left and an exception (``GET /job?...&noRetriesLeft=true``).

    ``message`` is upstream text: never interpreted, cut to size by the source.
    """

    job_id: str
    message: str | None
    process_instance_id: str | None = None
    activity_id: str | None = None
    job_definition_id: str | None = None
