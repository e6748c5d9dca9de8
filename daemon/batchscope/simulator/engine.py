"""A fake Camunda 7 / Operaton / CIB seven process engine: batches, their jobs (seed, monitor
and execution jobs, their failures and stack traces), their history, the user-operation log,
the historic job log, and the REST endpoints that expose them.

The model is just enough of the engine's batch lifecycle (seed, execute, fail, suspend, monitor
job completion, delete, history cleanup) to drive every state batchscope distinguishes, and the
REST layer reproduces the engine's response shapes (key order and field sets of the DTOs), date
format, validation messages and auth behaviour, so the daemon's client code runs unmodified
against it.

Where the engine's behaviour depends on its configuration, so does the fake's:

- history level: ``history=True`` is FULL (historic batches, user-operation log, job log);
  ``False`` is anything below, which keeps none of them;
- the user-operation log is written only for an authenticated user (``user`` of the control
  methods; ``None`` is an unauthenticated REST call) unless
  ``restrict_user_operation_log=False``;
- the authentication filter is on when ``username`` or ``bearer_token`` is set: requests are
  then authenticated, ``queryMaxResultsLimit`` applies (only to authenticated requests), and an
  unknown engine name is the filter's 404; without it, an unknown engine name is a 400;
- ``legacy`` is an engine before 7.18 (no start times, no error ``code``, no ``batchId`` on
  jobs and job log entries).

The jobs of a running batch are served as the engine's ``JobDto`` (``GET /job``, ``/job/count``,
``/job/{id}``, ``/job/{id}/stacktrace``): the seed job while seeding lasts, the monitor job once
every execution job exists, and the execution jobs not yet done. As in the engine,
``failedJobs`` counts only execution jobs with no retries left: a failed seed or monitor job
shows in ``GET /job`` alone.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import email.utils
import math
import re
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from itertools import islice
from typing import Any, Final

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from batchscope.simulator.faults import FaultInjector

Clock = Callable[[], float]
Row = dict[str, object]
Predicate = Callable[["EngineBatch"], bool]
SortKey = Callable[["EngineBatch"], Any]
JobIndices = range | tuple[int, ...]

#: The REST API's default Jackson date pattern.
DEFAULT_DATE_FORMAT: Final = "yyyy-MM-dd'T'HH:mm:ss.SSSZ"

_IDS: Final = uuid.UUID("6b1f4e1c-6f0e-4d51-9a43-3b7e0c2a9d10")  # namespace of derived ids

#: The job executor's default retries (``JobEntity.DEFAULT_RETRIES``).
DEFAULT_RETRIES: Final = 3


@dataclass(slots=True)
class EngineBatch:
    """One batch. The same object backs the runtime row and the historic row."""

    id: str
    type: str
    total_jobs: int
    batch_jobs_per_seed: int
    seed_job_definition_id: str
    monitor_job_definition_id: str
    batch_job_definition_id: str
    tenant_id: str | None
    create_user_id: str | None
    start_time: float
    jobs_created: int
    invocations_per_batch_job: int = 1
    execution_start_time: float | None = None
    completed_jobs: int = 0
    failed_jobs: int = 0
    suspended: bool = False
    end_time: float | None = None
    removal_time: float | None = None
    # Execution jobs by index (created ones are 0..jobs_created-1): [fresh_from, jobs_created)
    # never ran, ``retry_pending`` failed and were given retries again, ``failed_ids`` have
    # no retries left. The counts above stay the source of truth for the REST rows.
    fresh_from: int = 0
    retry_pending: list[int] = field(default_factory=list)
    failed_ids: list[int] = field(default_factory=list)
    # The last exception of the execution jobs that failed (kept while they are retried, as
    # the engine keeps a job's exception until it runs again), explicit processInstanceIds
    # (by job index), and when the seed job runs created which jobs: (first index, time).
    job_failures: dict[int, JobFailure] = field(default_factory=dict)
    instance_ids: dict[int, str] = field(default_factory=dict)
    created_runs: list[tuple[int, float]] = field(default_factory=list)
    # The seed job (while jobs_created < total_jobs; a new job per run) and the monitor job
    # (once every execution job exists): retries left and last exception.
    seed_run: int = 0
    seed_retries: int = DEFAULT_RETRIES
    seed_failure: JobFailure | None = None
    monitor_retries: int = DEFAULT_RETRIES
    monitor_failure: JobFailure | None = None

    @property
    def remaining_jobs(self) -> int:
        """Jobs not yet done, including failed ones and ones the seed job has yet to create."""
        return self.total_jobs - self.completed_jobs

    @property
    def pending_jobs(self) -> int:
        """Created execution jobs that are neither done nor failed."""
        return self.jobs_created - self.completed_jobs - self.failed_jobs


@dataclass(frozen=True, slots=True)
class JobFailure:
    """The exception a job's last run raised, as the engine keeps it on the job row."""

    message: str
    exception_class: str
    activity_id: str | None = None


@dataclass(frozen=True, slots=True)
class UserOperation:
    """A user-operation log entry about a batch (suspend, activate, delete)."""

    id: str
    operation_id: str
    batch_id: str
    operation_type: str
    property: str
    new_value: str
    user_id: str | None
    timestamp: float


@dataclass(frozen=True, slots=True)
class JobLogRun:
    """Historic job log entries written at one moment for some execution jobs of a batch.

    ``kind`` is ``creation``, ``failure``, ``success`` or ``deletion``. One run stands for one
    entry per job in ``jobs``; they are expanded only when served, so that bulk-created
    batches stay cheap.
    """

    seq: int
    batch_id: str
    kind: str
    jobs: JobIndices
    timestamp: float
    retries: int
    message: str | None = None
    #: per job of ``jobs`` (failure runs whose messages differ by job), else ``message``
    messages: tuple[str, ...] | None = None
    activity_id: str | None = None  # failedActivityId of a failure run


class EngineError(Exception):
    """An error the engine reports as an ExceptionDto.

    ``code`` is the engine's error code (7.18+): 0 for a ``BadUserRequestException`` and the
    other ``ProcessEngineException``s, null for a plain REST error such as a 404.
    """

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "InvalidRequestException",
        code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code


def _bad_user_request(message: str) -> EngineError:
    return EngineError(400, message, "BadUserRequestException", code=0)


class _SortedIndex:
    """Batches by id plus their ids kept sorted, so the default ordering (by batchId) needs no
    sort per request and a page is a slice."""

    def __init__(self) -> None:
        self.by_id: dict[str, EngineBatch] = {}
        self.ids: list[str] = []

    def __contains__(self, batch_id: str) -> bool:
        return batch_id in self.by_id

    def add(self, batch: EngineBatch) -> None:
        self.by_id[batch.id] = batch
        bisect.insort(self.ids, batch.id)

    def add_many(self, batches: Iterable[EngineBatch]) -> None:
        """Bulk insert: one sort instead of one insort per batch."""
        for batch in batches:
            self.by_id[batch.id] = batch
        self.ids = sorted(self.by_id)

    def remove(self, batch_id: str) -> EngineBatch:
        batch = self.by_id.pop(batch_id)
        del self.ids[bisect.bisect_left(self.ids, batch_id)]
        return batch

    def discard(self, batch_id: str) -> None:
        if batch_id in self.by_id:
            self.remove(batch_id)

    def ordered(self, descending: bool) -> Iterator[EngineBatch]:
        ids = reversed(self.ids) if descending else iter(self.ids)
        return map(self.by_id.__getitem__, ids)


DateFormatter = Callable[[datetime], str]


def _millis(moment: datetime) -> str:
    return f"{moment.microsecond // 1000:03d}"


def _colon_offset(moment: datetime) -> str:
    offset = moment.strftime("%z")
    return "Z" if offset == "+0000" else f"{offset[:3]}:{offset[3:]}"


#: The Jackson date patterns the fake can render (the REST API's ``dateFormat`` setting).
DATE_FORMATS: Final[dict[str, Callable[[datetime, str | None], str]]] = {
    DEFAULT_DATE_FORMAT: lambda m, _: f"{m:%Y-%m-%dT%H:%M:%S}.{_millis(m)}{m:%z}",
    "yyyy-MM-dd'T'HH:mm:ss.SSSXXX": lambda m, _: f"{m:%Y-%m-%dT%H:%M:%S}.{_millis(m)}"
                                               f"{_colon_offset(m)}",
    "yyyy-MM-dd'T'HH:mm:ss.SSSz": lambda m, zone: f"{m:%Y-%m-%dT%H:%M:%S}.{_millis(m)}{zone}",
    "yyyy-MM-dd'T'HH:mm:ssZ": lambda m, _: f"{m:%Y-%m-%dT%H:%M:%S%z}",
    "dd.MM.yyyy HH:mm": lambda m, _: f"{m:%d.%m.%Y %H:%M}",
}


class _DateFormat:
    """Renders epoch seconds the way the engine's Jackson mapper does, in the JVM's zone.

    ``pattern`` is one of :data:`DATE_FORMATS` (``...z`` needs ``zone_name``, the short name
    Java prints, e.g. ``CEST``) or a function of the zoned datetime for anything else.
    Results are memoised because many rows share a timestamp (bulk-created batches) and
    formatting dominates page rendering otherwise.
    """

    _MAX_CACHED = 100_000

    def __init__(
        self,
        utc_offset: str,
        pattern: str | DateFormatter = DEFAULT_DATE_FORMAT,
        zone_name: str | None = None,
    ) -> None:
        match = re.fullmatch(r"([+-])(\d\d)(\d\d)", utc_offset)
        if match is None:
            raise ValueError(f"utc_offset must look like +0100, got {utc_offset!r}")
        sign = -1 if match[1] == "-" else 1
        offset = timedelta(hours=int(match[2]), minutes=int(match[3]))
        self._tz = timezone(sign * offset)
        if callable(pattern):
            self._render: DateFormatter = pattern
        else:
            template = DATE_FORMATS.get(pattern)
            if template is None:
                raise ValueError(f"date_format must be one of {sorted(DATE_FORMATS)} or a "
                                 f"function, got {pattern!r}")
            if pattern.endswith("z") and zone_name is None:
                raise ValueError("the date_format with z needs zone_name (e.g. 'CEST')")
            self._render = lambda moment: template(moment, zone_name)
        self._cache: dict[float, str] = {}

    def __call__(self, epoch: float | None) -> str | None:
        if epoch is None:
            return None
        text = self._cache.get(epoch)
        if text is None:
            if len(self._cache) >= self._MAX_CACHED:
                self._cache.clear()
            text = self._render(datetime.fromtimestamp(epoch, self._tz))
            self._cache[epoch] = text
        return text


class _Params:
    """Typed access to query parameters with the engine's 400 on unparsable values."""

    def __init__(self, query: Mapping[str, str]) -> None:
        self._query = query

    def text(self, name: str) -> str | None:
        return self._query.get(name)

    def flag(self, name: str) -> bool | None:
        value = self._query.get(name)
        if value is None:
            return None
        if value.lower() not in ("true", "false"):
            raise _invalid_parameter(name, value)
        return value.lower() == "true"

    def number(self, name: str) -> int | None:
        value = self._query.get(name)
        if value is None:
            return None
        try:
            return max(0, int(value))
        except ValueError:
            raise _invalid_parameter(name, value) from None

    def ids(self, name: str) -> set[str] | None:
        value = self._query.get(name)
        return None if value is None else set(value.split(","))


@dataclass(frozen=True, slots=True)
class _Sorting:
    by: str
    descending: bool


def _invalid_parameter(name: str, value: str) -> EngineError:
    return EngineError(400, f"Cannot set query parameter '{name}' to value '{value}'")


def _nulls_first(value: Any) -> tuple[bool, Any]:
    return (value is not None, value if value is not None else "")


_SORT_KEYS: dict[str, SortKey] = {
    "tenantId": lambda b: (_nulls_first(b.tenant_id), b.id),
    "startTime": lambda b: (b.start_time, b.id),
    "endTime": lambda b: (_nulls_first(b.end_time), b.id),
}
_RUNTIME_SORTS = ("batchId", "tenantId")
_STATISTICS_SORTS = ("batchId", "tenantId", "startTime")
_HISTORY_SORTS = ("batchId", "startTime", "endTime", "tenantId")


def _sorting(params: _Params, allowed: Iterable[str]) -> _Sorting | None:
    """Validate sortBy/sortOrder the way the engine does: values first, then the pairing."""
    by, order = params.text("sortBy"), params.text("sortOrder")
    if by is not None and by not in allowed:
        raise _invalid_parameter("sortBy", by)
    if order is not None and order not in ("asc", "desc"):
        raise _invalid_parameter("sortOrder", order)
    if (by is None) != (order is None):
        raise EngineError(
            400, "Only a single sorting parameter specified. sortBy and sortOrder required"
        )
    return None if by is None else _Sorting(by, order == "desc")


def _all_of(predicates: list[Predicate]) -> Predicate | None:
    if not predicates:
        return None
    if len(predicates) == 1:
        return predicates[0]
    return lambda b: all(p(b) for p in predicates)


def _common_filters(params: _Params) -> list[Predicate]:
    """Filters shared by the runtime and the history batch queries."""
    predicates: list[Predicate] = []
    batch_type = params.text("type")
    if batch_type is not None:
        predicates.append(lambda b: b.type == batch_type)
    tenants = params.ids("tenantIdIn")
    if tenants is not None:
        predicates.append(lambda b: b.tenant_id in tenants)
    if params.flag("withoutTenantId"):
        predicates.append(lambda b: b.tenant_id is None)
    return predicates


def _select(
    index: _SortedIndex,
    batch_id: str | None,
    keep: Predicate | None,
    sorting: _Sorting | None,
    page: tuple[int, int | None],
) -> list[EngineBatch]:
    """Filter, order and page batches; ordering by id streams the sorted index lazily."""
    first, count = page
    stop = None if count is None else first + count
    if batch_id is not None:
        candidates: Iterator[EngineBatch] = iter(
            [index.by_id[batch_id]] if batch_id in index else []
        )
    else:
        candidates = index.ordered(sorting is not None and sorting.descending)
    if keep is not None:
        candidates = filter(keep, candidates)
    if sorting is None or sorting.by == "batchId":
        return list(islice(candidates, first, stop))
    rows = sorted(candidates, key=_SORT_KEYS[sorting.by], reverse=sorting.descending)
    return rows[first:stop]


def _json(payload: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


#: UserOperationLogEntryDto's keys in the order the engine serialises them.
_OPERATION_KEYS: Final = (
    "id", "deploymentId", "processDefinitionId", "processDefinitionKey", "processInstanceId",
    "executionId", "caseDefinitionId", "caseInstanceId", "caseExecutionId", "taskId", "jobId",
    "jobDefinitionId", "batchId", "userId", "timestamp", "operationId", "externalTaskId",
    "operationType", "entityType", "property", "orgValue", "newValue", "removalTime",
    "rootProcessInstanceId", "category", "annotation",
)

#: HistoricJobLogDto's keys in the engine's order; ``batchId`` arrived in 7.22.
_JOB_LOG_KEYS: Final = (
    "id", "timestamp", "removalTime", "jobId", "jobDueDate", "jobRetries", "jobPriority",
    "jobExceptionMessage", "jobDefinitionId", "jobDefinitionType", "jobDefinitionConfiguration",
    "activityId", "failedActivityId", "executionId", "processInstanceId", "processDefinitionId",
    "processDefinitionKey", "deploymentId", "tenantId", "hostname", "rootProcessInstanceId",
    "batchId", "creationLog", "failureLog", "successLog", "deletionLog",
)
_JOB_LOG_KINDS: Final = ("creation", "failure", "success", "deletion")
_JOB_LOG_SORTS: Final = (
    "timestamp", "jobId", "jobDefinitionId", "jobDueDate", "jobRetries", "jobPriority",
    "activityId", "executionId", "processInstanceId", "processDefinitionId",
    "processDefinitionKey", "deploymentId", "hostname", "occurrence", "tenantId",
)

#: JobDto's keys in the engine's order (its fields' declaration order, which Jackson keeps);
#: ``failedActivityId`` arrived in 7.13, ``createTime`` in 7.10, ``batchId`` in 7.22.
_JOB_KEYS: Final = (
    "id", "jobDefinitionId", "processInstanceId", "processDefinitionId",
    "processDefinitionKey", "executionId", "exceptionMessage", "failedActivityId", "retries",
    "dueDate", "suspended", "priority", "tenantId", "createTime", "batchId",
)
#: JobQueryDto's sortBy values (there is no jobDefinitionId among them).
_JOB_SORTS: Final = (
    "jobId", "executionId", "processInstanceId", "processDefinitionId", "processDefinitionKey",
    "jobRetries", "jobDueDate", "jobPriority", "tenantId",
)
#: Batch types whose execution jobs carry the process instance id: the engine sets it (7.16+,
#: ``postProcessJob`` of their job handlers) when a job handles one instance. The others
#: leave ``processInstanceId`` null; the instance shows only in the exception message.
_TYPES_WITH_INSTANCE_ON_JOB: Final = frozenset({"set-variables", "correlate-message"})

_MIGRATION_VALIDATION: Final = (
    "org.camunda.bpm.engine.migration.MigratingProcessInstanceValidationException"
)
_ENGINE_EXCEPTION: Final = "org.camunda.bpm.engine.ProcessEngineException"


def migration_failure_message(process_instance_id: str, activity_id: str = "Task_A") -> str:
    """What the engine says when a migration job meets an instance whose activity the plan
    does not map (``MigrationLogger`` ENGINE-23004 with the validation report's text)."""
    activity_instance = f"{activity_id}:{uuid.uuid5(_IDS, f'ai:{process_instance_id}')}"
    return (f"ENGINE-23004 Cannot migrate process instance '{process_instance_id}':\n"
            f"\tCannot migrate activity instance '{activity_instance}':\n"
            "\t\tThere is no migration instruction for this instance's activity\n")


#: The exception message of a failed execution job of a batch that is not a migration,
#: unless a test gives one: a listener's expression naming a bean that is not deployed.
DEFAULT_FAILURE_MESSAGE: Final = (
    "Unknown property used in expression: ${auditListener.notify(execution)}. "
    "Cause: Cannot resolve identifier 'auditListener'"
)
#: ... and the activity it failed in (the job's ``failedActivityId``).
DEFAULT_FAILURE_ACTIVITY: Final = "Task_A"


def seed_failure_message(job_id: str) -> str:
    """A seed job that cannot insert the execution jobs it creates: the database is full."""
    return (f"ENGINE-03004 Exception while executing Database Operation 'INSERT "
            f"MessageEntity[{job_id}]' with message '### Error flushing statements.  Cause: "
            "org.apache.ibatis.executor.BatchExecutorException: ORA-01653: unable to extend "
            "table CAMUNDA.ACT_RU_JOB by 128 in tablespace CAMUNDA_DATA'. Flush summary: \n "
            f"[INSERT MessageEntity[{job_id}]]")


def monitor_failure_message(batch_id: str) -> str:
    """A monitor job that cannot end its batch: the history update times out (DB2, as in
    camunda/camunda-bpm-platform#4067)."""
    return ("ENGINE-03083 Unexpected exception while executing database operations with "
            "message '### Error updating database.  Cause: com.ibm.db2.jcc.am.SqlTransaction"
            "RollbackException: DB2 SQL Error: SQLCODE=-911, SQLSTATE=40001, SQLERRMC=68'. "
            f"Flush summary: \n [DELETE BatchEntity[{batch_id}]]")


#: The frames under a job's exception in its stack trace (the job executor's).
_JOB_FRAMES: Final = (
    "org.camunda.bpm.engine.impl.jobexecutor.JobEntity.execute(JobEntity.java:142)",
    "org.camunda.bpm.engine.impl.cmd.ExecuteJobsCmd.execute(ExecuteJobsCmd.java:110)",
    "org.camunda.bpm.engine.impl.cmd.ExecuteJobsCmd.execute(ExecuteJobsCmd.java:43)",
    "org.camunda.bpm.engine.impl.interceptor.CommandExecutorImpl.execute"
    "(CommandExecutorImpl.java:28)",
    "org.camunda.bpm.engine.impl.jobexecutor.ExecuteJobHelper.executeJob"
    "(ExecuteJobHelper.java:57)",
    "org.camunda.bpm.engine.impl.jobexecutor.ExecuteJobsRunnable.executeJob"
    "(ExecuteJobsRunnable.java:110)",
    "org.camunda.bpm.engine.impl.jobexecutor.ExecuteJobsRunnable.run"
    "(ExecuteJobsRunnable.java:71)",
    "java.base/java.lang.Thread.run(Thread.java:840)",
)


def stacktrace(failure: JobFailure) -> str:
    """The text ``GET /job/{id}/stacktrace`` serves: the exception, then the frames."""
    frames = "".join(f"\tat {frame}\n" for frame in _JOB_FRAMES)
    return f"{failure.exception_class}: {failure.message}\n{frames}"


def _exception_class(message: str) -> str:
    return _MIGRATION_VALIDATION if message.startswith("ENGINE-23004") else _ENGINE_EXCEPTION


@dataclass(slots=True)
class _Job:
    """A row of the engine's job table: a seed, monitor or execution job of a running batch.

    ``index`` is the execution job's index, the seed job's run, 0 for the monitor job.
    """

    batch: EngineBatch
    kind: str
    index: int
    retries: int
    failure: JobFailure | None
    _id: str | None = None

    @property
    def id(self) -> str:
        if self._id is None:
            self._id = _job_id(self.batch, self.kind, self.index)
        return self._id

    @property
    def definition_id(self) -> str:
        if self.kind == "seed":
            return self.batch.seed_job_definition_id
        if self.kind == "monitor":
            return self.batch.monitor_job_definition_id
        return self.batch.batch_job_definition_id

    @property
    def process_instance_id(self) -> str | None:
        return _job_instance(self.batch, self.index) if self.kind == "execution" else None


def _job_id(batch: EngineBatch, kind: str, index: int) -> str:
    if kind == "seed":
        return str(uuid.uuid5(_IDS, f"seed:{batch.seed_job_definition_id}:{index}"))
    if kind == "monitor":
        return str(uuid.uuid5(_IDS, f"monitor:{batch.monitor_job_definition_id}"))
    return str(uuid.uuid5(_IDS, f"job:{batch.batch_job_definition_id}:{index}"))


def _instance_of(batch: EngineBatch, index: int) -> str:
    """The process instance execution job ``index`` works on (one per job)."""
    explicit = batch.instance_ids.get(index)
    return explicit if explicit is not None else str(uuid.uuid5(_IDS, f"pi:{batch.id}:{index}"))


def _job_instance(batch: EngineBatch, index: int) -> str | None:
    """The ``processInstanceId`` the engine puts on execution job ``index``."""
    if index in batch.instance_ids or batch.type in _TYPES_WITH_INSTANCE_ON_JOB:
        return _instance_of(batch, index)
    return None


JobPredicate = Callable[[_Job], bool]


class FakeEngine(FaultInjector):
    """In-memory process engine with the batch part of the engine REST API.

    Control methods mutate the model synchronously; the next HTTP response reflects the change.
    Methods that act on a running batch raise ``KeyError`` when it is not in the runtime table.
    """

    def __init__(
        self,
        *,
        clock: Clock = time.time,
        query_max_results_limit: int | None = None,
        username: str | None = None,
        password: str | None = None,
        bearer_token: str | None = None,
        engine_name: str = "default",
        history: bool = True,
        utc_offset: str = "+0100",
        legacy: bool = False,
        restrict_user_operation_log: bool = True,
        date_format: str | DateFormatter = DEFAULT_DATE_FORMAT,
        zone_name: str | None = None,
        batch_history_ttl: float | None = None,
        hostname: str = "127.0.0.1$default",
    ) -> None:
        """``utc_offset`` is the JVM's zone, ``date_format`` the REST API's Jackson pattern
        (see :data:`DATE_FORMATS`; ``zone_name`` for its ``z``), ``batch_history_ttl`` the
        ``batchOperationHistoryTimeToLive`` in seconds that sets ``removalTime`` when a batch
        ends, ``hostname`` what job log entries name as their host."""
        super().__init__()
        self.clock = clock
        self.query_max_results_limit = query_max_results_limit
        self.username = username
        self.password = password
        self.bearer_token = bearer_token
        self.engine_name = engine_name
        self.history = history
        self.legacy = legacy
        self.restrict_user_operation_log = restrict_user_operation_log
        self.batch_history_ttl = batch_history_ttl
        self.hostname = hostname
        self._format_date = _DateFormat(utc_offset, date_format, zone_name)
        self._runtime = _SortedIndex()
        self._history = _SortedIndex()
        self._operations: list[UserOperation] = []
        self._job_logs: dict[str, list[JobLogRun]] = {}  # by batch id
        self._job_definitions: dict[str, str] = {}  # execution job definition id -> batch id
        self._job_log_seq = 0
        # job definition id -> (batch id, seed|monitor|execution), running batches only
        self._runtime_definitions: dict[str, tuple[str, str]] = {}
        self._job_index: dict[str, tuple[str, str, int]] = {}  # job id -> its job, once seen

    @property
    def auth_filter(self) -> bool:
        """Whether the REST API's authentication filter is on (credentials configured)."""
        return self.username is not None or self.bearer_token is not None

    # ----------------------------------------------------------------- control API: lifecycle

    def create_batch(
        self,
        type: str = "instance-migration",
        total_jobs: int = 100,
        *,
        batch_id: str | None = None,
        tenant_id: str | None = None,
        user: str | None = "demo",
        jobs_per_seed: int = 100,
        seeded: bool = True,
    ) -> str:
        """Start a batch; the first seed-job run has already created its execution jobs,
        unless ``seeded`` is False (the seed job has not run yet: no execution job exists)."""
        batch_id = batch_id or str(uuid.uuid4())
        if batch_id in self._runtime or batch_id in self._history:
            raise ValueError(f"batch {batch_id!r} already exists")
        batch = self._new_batch(batch_id, type, total_jobs, tenant_id, user, jobs_per_seed)
        if not seeded:
            batch.jobs_created, batch.created_runs = 0, []
        self._runtime.add(batch)
        self._enter_runtime(batch)
        if self.history:
            self._history.add(batch)
            self._job_log_created(batch, 0)
        return batch_id

    def create_many(
        self,
        n: int,
        *,
        type: str = "instance-migration",
        total_jobs: int = 100,
        tenant_id: str | None = None,
        user: str | None = "demo",
        jobs_per_seed: int = 100,
    ) -> list[str]:
        """Create ``n`` batches at once (benchmarks): the sorted indexes are rebuilt once."""
        batches = [
            self._new_batch(str(uuid.uuid4()), type, total_jobs, tenant_id, user, jobs_per_seed)
            for _ in range(n)
        ]
        self._runtime.add_many(batches)
        for batch in batches:
            self._enter_runtime(batch)
        if self.history:
            self._history.add_many(batches)
            for batch in batches:
                self._job_log_created(batch, 0)
        return [batch.id for batch in batches]

    def seed(self, batch_id: str, n: int | None = None) -> None:
        """Let the seed job create ``n`` more execution jobs (all remaining ones when None).

        ``ValueError`` when the seed job has no retries left: it does not run until retried.
        """
        batch = self._running(batch_id)
        self._check_seed_job_runs(batch)
        wanted = batch.total_jobs if n is None else batch.jobs_created + n
        self._create_jobs(batch, min(batch.total_jobs, wanted))

    def complete_jobs(self, batch_id: str, n: int) -> None:
        """``n`` execution jobs succeed, seeding more first if fewer are pending (unless the
        seed job has no retries left: then only the pending ones can run)."""
        batch = self._running(batch_id)
        jobs = self._execute(batch, n)
        batch.completed_jobs += len(jobs)
        if batch.job_failures and not isinstance(jobs, range):
            for index in jobs:
                batch.job_failures.pop(index, None)  # a job that succeeds is gone
        self._job_log(batch, "success", jobs, DEFAULT_RETRIES)

    def fail_jobs(
        self,
        batch_id: str,
        n: int,
        message: str | None = None,
        *,
        activity_id: str | None = None,
        process_instance_ids: Sequence[str] | None = None,
    ) -> None:
        """``n`` execution jobs run out of retries; they stay in remainingJobs.

        Each keeps its exception as the engine does: ``message`` (its ``exceptionMessage``),
        ``activity_id`` (its ``failedActivityId``) and a stack trace. Without a ``message``
        they fail like the engine's own jobs: a migration job with ENGINE-23004 naming its
        process instance and the unmapped activity (:func:`migration_failure_message`; the
        failure happens outside any activity, so ``failedActivityId`` stays null), any
        other with :data:`DEFAULT_FAILURE_MESSAGE` in :data:`DEFAULT_FAILURE_ACTIVITY`.
        ``process_instance_ids`` (one per job, in order) become the jobs' process instances
        and their ``processInstanceId``, which the engine itself sets only on jobs of
        ``set-variables`` and ``correlate-message`` batches.

        The job log gets one failure entry per job (for its last attempt, not one per retry).
        """
        batch = self._running(batch_id)
        if process_instance_ids is not None and len(process_instance_ids) < n:
            raise ValueError(f"{n} jobs fail but {len(process_instance_ids)} "
                             "process_instance_ids were given")
        jobs = self._execute(batch, n)
        if process_instance_ids is not None:
            batch.instance_ids.update(zip(jobs, process_instance_ids, strict=False))
        per_instance = message is None and batch.type == "instance-migration"
        if message is None and not per_instance:
            message = DEFAULT_FAILURE_MESSAGE
            activity_id = activity_id or DEFAULT_FAILURE_ACTIVITY
        texts = tuple(migration_failure_message(_instance_of(batch, index)) if per_instance
                      else str(message) for index in jobs)
        for index, text in zip(jobs, texts, strict=True):
            batch.job_failures[index] = JobFailure(text, _exception_class(text), activity_id)
        batch.failed_jobs += len(jobs)
        batch.failed_ids.extend(jobs)
        self._job_log(batch, "failure", jobs, 1, message,
                      messages=texts if per_instance else None, activity_id=activity_id)

    def retry_failed(self, batch_id: str) -> None:
        """Failed jobs get retries again (Cockpit's "retry all": retries 1) and become
        pending; they keep their exception until they run again."""
        batch = self._running(batch_id)
        batch.retry_pending.extend(batch.failed_ids)
        batch.failed_ids.clear()
        batch.failed_jobs = 0

    def fail_seed_job(self, batch_id: str, message: str | None = None) -> None:
        """The seed job runs out of retries (it has an exception and retries 0): seeding
        stops until :meth:`retry_seed_job`. ``failedJobs`` does not count it, as in the
        engine. ``ValueError`` once seeding is done (no seed job is left)."""
        batch = self._running(batch_id)
        if batch.jobs_created >= batch.total_jobs:
            raise ValueError(f"batch {batch_id!r} has created all its jobs: no seed job left")
        text = message if message is not None else seed_failure_message(
            _job_id(batch, "execution", batch.jobs_created))
        batch.seed_retries = 0
        batch.seed_failure = JobFailure(text, _exception_class(text))

    def retry_seed_job(self, batch_id: str) -> None:
        """The seed job gets a retry (Cockpit's "retry": 1); its next run clears the
        exception and seeding goes on."""
        batch = self._running(batch_id)
        if batch.seed_failure is None:
            raise ValueError(f"the seed job of batch {batch_id!r} has not failed")
        batch.seed_retries = 1

    def fail_monitor_job(self, batch_id: str, message: str | None = None) -> None:
        """The monitor job runs out of retries: the batch cannot complete (:meth:`finish`
        refuses) until :meth:`retry_monitor_job`. ``failedJobs`` does not count it.
        ``ValueError`` while seeding lasts (the monitor job does not exist yet)."""
        batch = self._running(batch_id)
        if batch.jobs_created < batch.total_jobs:
            raise ValueError(f"batch {batch_id!r} is still seeding: no monitor job yet")
        text = message if message is not None else monitor_failure_message(batch.id)
        batch.monitor_retries = 0
        batch.monitor_failure = JobFailure(text, _exception_class(text))

    def retry_monitor_job(self, batch_id: str) -> None:
        """The monitor job gets a retry (1); :meth:`finish` can end the batch again."""
        batch = self._running(batch_id)
        if batch.monitor_failure is None:
            raise ValueError(f"the monitor job of batch {batch_id!r} has not failed")
        batch.monitor_retries = 1

    def delete_failed_jobs(self, batch_id: str) -> None:
        """Failed jobs are deleted one by one (Cockpit's "delete job"), not the batch.

        They count as completed from then on (completedJobs includes deleted jobs) and the
        job log gets their deletion entries; the batch can then complete.
        """
        batch = self._running(batch_id)
        jobs = tuple(batch.failed_ids)
        batch.failed_ids.clear()
        for index in jobs:
            batch.job_failures.pop(index, None)
        batch.completed_jobs += len(jobs)
        batch.failed_jobs = 0
        self._job_log(batch, "deletion", jobs, 0)

    def suspend(self, batch_id: str, *, user: str | None = "demo") -> None:
        """Suspend the batch and log ``SuspendBatch``."""
        self._set_suspended(batch_id, True, "SuspendBatch", user)

    def activate(self, batch_id: str, *, user: str | None = "demo") -> None:
        """Activate the batch and log ``ActivateBatch``."""
        self._set_suspended(batch_id, False, "ActivateBatch", user)

    def finish(self, batch_id: str) -> None:
        """What the monitor job does once no job remains: the runtime row goes, history ends.

        Unfinished jobs are forced to completion so a scenario need not balance the counts.
        ``ValueError`` when the seed or the monitor job has no retries left: the batch cannot
        complete until they are retried.
        """
        batch = self._running(batch_id)
        self._check_seed_job_runs(batch)
        if batch.monitor_retries == 0:
            raise ValueError(f"the monitor job of batch {batch_id!r} has no retries left; "
                             "retry_monitor_job first")
        self._runtime.remove(batch_id)
        self._leave_runtime(batch)
        self._create_jobs(batch, batch.total_jobs)
        unfinished = self._take_pending(batch, batch.total_jobs)
        if batch.failed_ids:
            unfinished = (*unfinished, *batch.failed_ids)
            batch.failed_ids.clear()
        self._job_log(batch, "success", unfinished, DEFAULT_RETRIES)
        batch.completed_jobs = batch.total_jobs
        batch.failed_jobs = 0
        batch.job_failures.clear()
        batch.monitor_failure = None
        self._end(batch)

    def delete(self, batch_id: str, cascade: bool = False, *, user: str | None = "demo") -> None:
        """Cancel the batch (REST ``DELETE /batch/{id}?cascade=``) as ``user``.

        Like the engine, the remaining execution jobs are deleted (deletion entries in the
        job log) and the historic row gets an endTime. The ``Delete`` user-operation entry is
        written at history FULL for an authenticated ``user`` (``None``: an unauthenticated
        REST call writes none, unless ``restrict_user_operation_log`` is off). ``cascade``
        also removes the historic batch and its job log; the user-operation entry stays.
        """
        batch = self._runtime.remove(batch_id)
        self._leave_runtime(batch)
        self._log(batch_id, "Delete", "cascadeToHistory", str(cascade).lower(), user)
        self._job_log(batch, "deletion", self._take_pending(batch, batch.jobs_created),
                      DEFAULT_RETRIES)
        self._job_log(batch, "deletion", tuple(batch.failed_ids), 0)
        self._end(batch)
        if cascade:
            self._discard_history(batch_id)

    def remove_history(self, batch_id: str) -> None:
        """History cleanup removed the historic row and its job log (idempotent)."""
        self._discard_history(batch_id)

    # ----------------------------------------------------------------- control API: inspection

    def batch(self, batch_id: str) -> EngineBatch:
        """The runtime batch, else the historic one; ``KeyError`` when neither exists."""
        found = self._runtime.by_id.get(batch_id) or self._history.by_id.get(batch_id)
        if found is None:
            raise KeyError(batch_id)
        return found

    def runtime_ids(self) -> list[str]:
        """Ids of the running batches, sorted."""
        return list(self._runtime.ids)

    def statistics_row(self, batch_id: str) -> Row:
        """The ``/batch/statistics`` row served for a running batch (``KeyError`` if none)."""
        return self._statistics_row(self._runtime.by_id[batch_id])

    def history_ids(self) -> list[str]:
        """Ids of the batches that have a historic row, sorted."""
        return list(self._history.ids)

    def job_log(self, batch_id: str) -> list[JobLogRun]:
        """The batch's historic job log runs, oldest first (empty when it has none)."""
        return list(self._job_logs.get(batch_id, ()))

    def seed_job_id(self, batch_id: str) -> str | None:
        """The id of the running batch's seed job, None once seeding is done."""
        batch = self._running(batch_id)
        if batch.jobs_created >= batch.total_jobs:
            return None
        return _job_id(batch, "seed", batch.seed_run)

    def monitor_job_id(self, batch_id: str) -> str | None:
        """The id of the running batch's monitor job, None while seeding lasts."""
        batch = self._running(batch_id)
        if batch.jobs_created < batch.total_jobs:
            return None
        return _job_id(batch, "monitor", 0)

    def failed_job_ids(self, batch_id: str) -> list[str]:
        """Ids of the running batch's execution jobs with no retries left, in failure order."""
        batch = self._running(batch_id)
        return [_job_id(batch, "execution", index) for index in batch.failed_ids]

    # ----------------------------------------------------------------- model internals

    def _new_batch(
        self,
        batch_id: str,
        batch_type: str,
        total_jobs: int,
        tenant_id: str | None,
        user: str | None,
        jobs_per_seed: int,
    ) -> EngineBatch:
        batch = EngineBatch(
            id=batch_id,
            type=batch_type,
            total_jobs=total_jobs,
            batch_jobs_per_seed=jobs_per_seed,
            seed_job_definition_id=str(uuid.uuid4()),
            monitor_job_definition_id=str(uuid.uuid4()),
            batch_job_definition_id=str(uuid.uuid4()),
            tenant_id=tenant_id,
            create_user_id=user,
            start_time=self.clock(),
            jobs_created=min(total_jobs, jobs_per_seed),
        )
        batch.created_runs.append((0, batch.start_time))
        if self.history:
            self._job_definitions[batch.batch_job_definition_id] = batch_id
        return batch

    def _running(self, batch_id: str) -> EngineBatch:
        batch = self._runtime.by_id.get(batch_id)
        if batch is None:
            raise KeyError(f"no running batch {batch_id!r}")
        return batch

    def _create_jobs(self, batch: EngineBatch, jobs_created: int) -> None:
        """The seed job creates execution jobs up to ``jobs_created`` in all.

        A run that succeeds replaces the seed job by a new one (or, once every job exists, by
        the monitor job): a failure and a retry count of the old one are gone.
        """
        before = batch.jobs_created
        if jobs_created > before:
            batch.jobs_created = jobs_created
            batch.created_runs.append((before, self.clock()))
            batch.seed_run += 1
            batch.seed_retries, batch.seed_failure = DEFAULT_RETRIES, None
            self._job_log_created(batch, before)

    def _check_seed_job_runs(self, batch: EngineBatch) -> None:
        if batch.jobs_created < batch.total_jobs and batch.seed_retries == 0:
            raise ValueError(f"the seed job of batch {batch.id!r} has no retries left; "
                             "retry_seed_job first")

    def _enter_runtime(self, batch: EngineBatch) -> None:
        """Register the job definitions of a batch that just started."""
        for definition, kind in ((batch.seed_job_definition_id, "seed"),
                                 (batch.monitor_job_definition_id, "monitor"),
                                 (batch.batch_job_definition_id, "execution")):
            self._runtime_definitions[definition] = (batch.id, kind)

    def _leave_runtime(self, batch: EngineBatch) -> None:
        """The batch's job definitions and jobs are gone from the runtime."""
        for definition in (batch.seed_job_definition_id, batch.monitor_job_definition_id,
                           batch.batch_job_definition_id):
            self._runtime_definitions.pop(definition, None)

    def _take_pending(self, batch: EngineBatch, n: int) -> JobIndices:
        """Up to ``n`` pending jobs (retried ones first), which leave the pending set."""
        retried = batch.retry_pending[:n]
        del batch.retry_pending[:n]
        fresh = min(n - len(retried), batch.jobs_created - batch.fresh_from)
        taken = range(batch.fresh_from, batch.fresh_from + max(0, fresh))
        batch.fresh_from = taken.stop
        return (*retried, *taken) if retried else taken

    def _execute(self, batch: EngineBatch, n: int) -> JobIndices:
        """Run up to ``n`` pending jobs (seeding as needed); returns the jobs that ran."""
        shortfall = n - batch.pending_jobs
        if shortfall > 0 and batch.seed_retries > 0:
            self._create_jobs(batch, min(batch.total_jobs, batch.jobs_created + shortfall))
        jobs = self._take_pending(batch, max(0, n))
        if jobs and batch.execution_start_time is None:
            batch.execution_start_time = self.clock()
        return jobs

    def _end(self, batch: EngineBatch) -> None:
        """The historic end event: endTime, and removalTime when a TTL applies."""
        batch.end_time = self.clock()
        if self.batch_history_ttl is not None:
            batch.removal_time = batch.end_time + self.batch_history_ttl

    def _discard_history(self, batch_id: str) -> None:
        batch = self._history.by_id.get(batch_id)
        if batch is None:
            return
        self._history.remove(batch_id)
        self._job_logs.pop(batch_id, None)
        self._job_definitions.pop(batch.batch_job_definition_id, None)

    def _job_log_created(self, batch: EngineBatch, first: int) -> None:
        self._job_log(batch, "creation", range(first, batch.jobs_created), DEFAULT_RETRIES)

    def _job_log(
        self,
        batch: EngineBatch,
        kind: str,
        jobs: Sequence[int],
        retries: int,
        message: str | None = None,
        *,
        messages: tuple[str, ...] | None = None,
        activity_id: str | None = None,
    ) -> None:
        """Write job log entries for ``jobs``; the engine keeps them at history FULL only."""
        if not self.history or not jobs or batch.id not in self._history:
            return
        self._job_log_seq += 1
        indices = jobs if isinstance(jobs, range) else tuple(jobs)
        self._job_logs.setdefault(batch.id, []).append(JobLogRun(
            self._job_log_seq, batch.id, kind, indices, self.clock(), retries, message,
            messages, activity_id,
        ))

    def _set_suspended(
        self, batch_id: str, suspended: bool, operation: str, user: str | None
    ) -> None:
        self._running(batch_id).suspended = suspended
        self._log(
            batch_id, operation, "suspensionState", "suspended" if suspended else "active", user
        )

    def _log(
        self, batch_id: str, operation: str, prop: str, new_value: str, user: str | None
    ) -> None:
        """Write a user-operation log entry: the engine keeps them at history FULL, and by
        default (``restrictUserOperationLogToAuthenticatedUsers``) only for a known user."""
        if self.history and (user is not None or not self.restrict_user_operation_log):
            self._operations.append(
                UserOperation(
                    id=str(uuid.uuid4()),
                    operation_id=str(uuid.uuid4()),
                    batch_id=batch_id,
                    operation_type=operation,
                    property=prop,
                    new_value=new_value,
                    user_id=user,
                    timestamp=self.clock(),
                )
            )

    # ----------------------------------------------------------------- HTTP application

    def make_app(self) -> web.Application:
        """A new application serving the API at the root and under ``/engine/{name}``."""
        app = web.Application(middlewares=[self.middleware(), self._guard])
        app.on_response_prepare.append(self._date_header)
        app.router.add_get("/engine", self._get_engines)
        for prefix in ("", "/engine/{engine_name}"):
            self._add_routes(app.router, prefix)
        return app

    async def _date_header(self, request: web.Request, response: web.StreamResponse) -> None:
        """HTTP Date from the engine's own clock, as a real server's would be."""
        response.headers["Date"] = email.utils.formatdate(self.clock(), usegmt=True)

    def _add_routes(self, router: web.UrlDispatcher, prefix: str) -> None:
        routes: list[tuple[str, Handler]] = [
            ("/batch", self._get_batches),
            ("/batch/count", self._count_batches),
            ("/batch/statistics", self._get_statistics),
            ("/batch/statistics/count", self._count_statistics),
            ("/batch/{id}", self._get_batch),
            ("/history/batch", self._get_historic_batches),
            ("/history/batch/count", self._count_historic_batches),
            ("/history/batch/{id}", self._get_historic_batch),
            ("/history/user-operation", self._get_operations),
            ("/history/user-operation/count", self._count_operations),
            ("/history/job-log", self._get_job_log),
            ("/history/job-log/count", self._count_job_log),
            ("/job", self._get_jobs),
            ("/job/count", self._count_jobs),
            ("/job/{id}", self._get_job),
            ("/job/{id}/stacktrace", self._get_stacktrace),
        ]
        for path, handler in routes:
            router.add_get(prefix + path, handler)

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Engine lookup, then authentication (401), then ExceptionDto rendering.

        With the authentication filter on, the filter answers an unknown engine name with
        its own 404 before authenticating; without it, the resource finds no engine: 400.
        """
        try:
            name = request.match_info.get("engine_name")
            if name is not None and name != self.engine_name:
                if self.auth_filter:
                    raise EngineError(404, f"Process engine {name} not available")
                raise EngineError(400, "No process engine available")
            if request.match_info.handler != self._get_engines and not self._authenticated(request):
                return web.Response(
                    status=401, headers={"WWW-Authenticate": f'Basic realm="{self.engine_name}"'}
                )
            return await handler(request)
        except EngineError as error:
            body: Row = {"type": error.type, "message": error.message}
            if not self.legacy:
                body["code"] = error.code
            return _json(body, error.status)

    def _authenticated(self, request: web.Request) -> bool:
        """HTTP Basic and/or Bearer, whichever is configured; open when neither is."""
        if self.username is None and self.bearer_token is None:
            return True
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "basic" and self.username is not None:
            expected = f"{self.username}:{self.password or ''}".encode()
            try:
                given = base64.b64decode(credentials, validate=True)
            except binascii.Error:
                return False
            return secrets.compare_digest(given, expected)
        if scheme.lower() == "bearer" and self.bearer_token is not None:
            return secrets.compare_digest(credentials.encode(), self.bearer_token.encode())
        return False

    def _page(self, params: _Params) -> tuple[int, int | None]:
        """firstResult/maxResults, enforcing the engine's queryMaxResultsLimit.

        The engine checks the limit only when a user is authenticated, i.e. here when the
        authentication filter is on (every request that got through it is authenticated).
        """
        first, count = params.number("firstResult") or 0, params.number("maxResults")
        limit = self.query_max_results_limit if self.auth_filter else None
        if limit is not None and count is None:
            raise _bad_user_request("An unbound number of results is forbidden!")
        if limit is not None and count is not None and count > limit:
            raise _bad_user_request(f"Max results limit of {limit} exceeded!")
        return first, count

    # ----------------------------------------------------------------- runtime endpoints

    async def _get_engines(self, request: web.Request) -> web.Response:
        return _json([{"name": self.engine_name}])

    def _runtime_filter(self, params: _Params, statistics: bool) -> Predicate | None:
        """GET /batch silently ignores the statistics-only (7.18+) filters, as the engine does."""
        predicates = _common_filters(params)
        suspended = params.flag("suspended")
        if suspended is not None:
            predicates.append(lambda b: b.suspended == suspended)
        if statistics and not self.legacy:
            created_by = params.text("createdBy")
            if created_by is not None:
                predicates.append(lambda b: b.create_user_id == created_by)
            if params.flag("withFailures"):
                predicates.append(lambda b: b.failed_jobs > 0)
            if params.flag("withoutFailures"):
                predicates.append(lambda b: b.failed_jobs == 0)
        return _all_of(predicates)

    def _query_runtime(self, request: web.Request, statistics: bool) -> list[EngineBatch]:
        params = _Params(request.query)
        sorts = _STATISTICS_SORTS if statistics and not self.legacy else _RUNTIME_SORTS
        sorting = _sorting(params, sorts)
        keep = self._runtime_filter(params, statistics)
        return _select(self._runtime, params.text("batchId"), keep, sorting, self._page(params))

    def _count_runtime(self, request: web.Request, statistics: bool) -> web.Response:
        params = _Params(request.query)
        keep = self._runtime_filter(params, statistics)
        rows = _select(self._runtime, params.text("batchId"), keep, None, (0, None))
        return _json({"count": len(rows)})

    def _runtime_row(self, batch: EngineBatch) -> Row:
        row: Row = {
            "id": batch.id,
            "type": batch.type,
            "totalJobs": batch.total_jobs,
            "jobsCreated": batch.jobs_created,
            "batchJobsPerSeed": batch.batch_jobs_per_seed,
            "invocationsPerBatchJob": batch.invocations_per_batch_job,
            "seedJobDefinitionId": batch.seed_job_definition_id,
            "monitorJobDefinitionId": batch.monitor_job_definition_id,
            "batchJobDefinitionId": batch.batch_job_definition_id,
            "suspended": batch.suspended,
            "tenantId": batch.tenant_id,
            "createUserId": batch.create_user_id,
        }
        if not self.legacy:
            row["startTime"] = self._format_date(batch.start_time)
            row["executionStartTime"] = self._format_date(batch.execution_start_time)
        return row

    def _statistics_row(self, batch: EngineBatch) -> Row:
        row = self._runtime_row(batch)
        row["remainingJobs"] = batch.remaining_jobs
        row["completedJobs"] = batch.completed_jobs
        row["failedJobs"] = batch.failed_jobs
        return row

    async def _get_batches(self, request: web.Request) -> web.Response:
        return _json([self._runtime_row(b) for b in self._query_runtime(request, False)])

    async def _count_batches(self, request: web.Request) -> web.Response:
        return self._count_runtime(request, False)

    async def _get_statistics(self, request: web.Request) -> web.Response:
        return _json([self._statistics_row(b) for b in self._query_runtime(request, True)])

    async def _count_statistics(self, request: web.Request) -> web.Response:
        return self._count_runtime(request, True)

    async def _get_batch(self, request: web.Request) -> web.Response:
        batch_id = request.match_info["id"]
        batch = self._runtime.by_id.get(batch_id)
        if batch is None:
            raise EngineError(404, f"Batch with id '{batch_id}' does not exist")
        return _json(self._runtime_row(batch))

    # ----------------------------------------------------------------- job endpoints

    def _batch_jobs(self, batch: EngineBatch, kind: str | None = None) -> Iterator[_Job]:
        """The batch's rows in the job table (only ``kind`` when given)."""
        seeding = batch.jobs_created < batch.total_jobs
        if seeding and kind in (None, "seed"):
            yield _Job(batch, "seed", batch.seed_run, batch.seed_retries, batch.seed_failure)
        if not seeding and kind in (None, "monitor"):
            yield _Job(batch, "monitor", 0, batch.monitor_retries, batch.monitor_failure)
        if kind in (None, "execution"):
            failures = batch.job_failures
            for index in batch.failed_ids:
                yield _Job(batch, "execution", index, 0, failures.get(index))
            for index in batch.retry_pending:
                yield _Job(batch, "execution", index, 1, failures.get(index))
            for index in range(batch.fresh_from, batch.jobs_created):
                yield _Job(batch, "execution", index, DEFAULT_RETRIES, None)

    def _candidate_jobs(self, params: _Params) -> Iterator[_Job]:
        """Jobs of the job definition asked for, else of every running batch."""
        definition = params.text("jobDefinitionId")
        if definition is None:
            for batch in self._runtime.ordered(False):
                yield from self._batch_jobs(batch)
            return
        found = self._runtime_definitions.get(definition)
        if found is not None:
            yield from self._batch_jobs(self._runtime.by_id[found[0]], found[1])

    def _job_filter(self, params: _Params) -> JobPredicate | None:
        """JobQueryDto's filters that can select a batch job; the others match none (batch
        jobs have no execution, process definition or activity) or are ignored."""
        predicates: list[JobPredicate] = []
        timers, messages = params.flag("timers"), params.flag("messages")
        if timers and messages:
            raise EngineError(400, "Parameter timers cannot be used together with parameter "
                                   "messages.")
        if timers or any(params.text(name) is not None for name in (
                "executionId", "processDefinitionId", "processDefinitionKey", "activityId")):
            return lambda job: False  # batch jobs are messages, without those fields
        job_id, instance = params.text("jobId"), params.text("processInstanceId")
        if job_id is not None:
            predicates.append(lambda job: job.id == job_id)
        if instance is not None:
            predicates.append(lambda job: job.process_instance_id == instance)
        now = self.clock()
        checks: dict[str, JobPredicate] = {
            "withRetriesLeft": lambda job: job.retries > 0,
            "noRetriesLeft": lambda job: job.retries == 0,
            "executable": lambda job: job.retries > 0 and (self._due_date(job) or now) <= now,
            "withException": lambda job: job.failure is not None,
            "active": lambda job: not job.batch.suspended,
            "suspended": lambda job: job.batch.suspended,
        }
        for name, check in checks.items():
            if params.flag(name):
                predicates.append(check)
        message = params.text("exceptionMessage")
        if message is not None:
            predicates.append(lambda job: job.failure is not None
                              and job.failure.message == message)
        tenants = params.ids("tenantIdIn")
        with_untenanted = bool(params.flag("includeJobsWithoutTenantId"))
        if tenants is not None:
            predicates.append(lambda job: job.batch.tenant_id in tenants
                              or (with_untenanted and job.batch.tenant_id is None))
        if params.flag("withoutTenantId"):
            predicates.append(lambda job: job.batch.tenant_id is None)
        low = params.number("priorityHigherThanOrEquals")
        if low is not None and low > 0:
            return lambda job: False  # batch jobs have priority 0 (batchJobPriority)
        return None if not predicates else lambda job: all(p(job) for p in predicates)

    def _due_date(self, job: _Job) -> float | None:
        """Batch jobs are due at once: the seed and execution jobs are hinted to the job
        executor, and the first monitor job has no due date either."""
        return None

    def _query_jobs(self, params: _Params) -> Iterator[_Job]:
        keep = self._job_filter(params)
        jobs = self._candidate_jobs(params)
        return jobs if keep is None else filter(keep, jobs)

    def _job_row(self, job: _Job) -> Row:
        self._remember_job(job)
        failure = job.failure
        batch = job.batch
        if job.kind == "execution":
            created = batch.created_runs[bisect.bisect_right(batch.created_runs,
                                                             (job.index, math.inf)) - 1][1]
        else:  # the seed job a run left behind, or the monitor job the last run created
            created = batch.created_runs[-1][1] if batch.created_runs else batch.start_time
        values: Row = {
            "id": job.id,
            "jobDefinitionId": job.definition_id,
            "processInstanceId": job.process_instance_id,
            "exceptionMessage": None if failure is None else failure.message,
            "failedActivityId": None if failure is None else failure.activity_id,
            "retries": job.retries,
            "dueDate": self._format_date(self._due_date(job)),
            "suspended": batch.suspended,
            "priority": 0,
            "tenantId": batch.tenant_id,
            "createTime": self._format_date(created),
            "batchId": batch.id,
        }
        keys = [k for k in _JOB_KEYS if not (self.legacy and k == "batchId")]
        return {key: values.get(key) for key in keys}

    def _remember_job(self, job: _Job) -> None:
        if len(self._job_index) >= 100_000:
            self._job_index.clear()
        self._job_index[job.id] = (job.batch.id, job.kind, job.index)

    def _find_job(self, job_id: str) -> _Job | None:
        """The running job with this id: the one last served under it, else a search."""
        seen = self._job_index.get(job_id)
        if seen is not None:
            batch = self._runtime.by_id.get(seen[0])
            if batch is not None:
                for job in self._batch_jobs(batch, seen[1]):
                    if job.index == seen[2]:
                        return job
        for batch in self._runtime.ordered(False):
            for job in self._batch_jobs(batch):
                if job.id == job_id:
                    return job
        return None

    async def _get_jobs(self, request: web.Request) -> web.Response:
        """``GET /job``: the job query; without sortBy the engine orders by id."""
        params = _Params(request.query)
        sorting = _sorting(params, _JOB_SORTS)
        first, count = self._page(params)
        jobs = list(self._query_jobs(params))
        by = "jobId" if sorting is None else sorting.by
        key: Callable[[_Job], Any] = {
            "processInstanceId": lambda job: (_nulls_first(job.process_instance_id), job.id),
            "jobRetries": lambda job: (job.retries, job.id),
            "tenantId": lambda job: (_nulls_first(job.batch.tenant_id), job.id),
        }.get(by, lambda job: job.id)  # the other sort keys are equal (null or 0) for all
        jobs.sort(key=key, reverse=sorting is not None and sorting.descending)
        page = jobs[first : None if count is None else first + count]
        return _json([self._job_row(job) for job in page])

    async def _count_jobs(self, request: web.Request) -> web.Response:
        return _json({"count": sum(1 for _ in self._query_jobs(_Params(request.query)))})

    async def _get_job(self, request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        job = self._find_job(job_id)
        if job is None:
            raise EngineError(404, f"Job with id {job_id} does not exist")
        return _json(self._job_row(job))

    async def _get_stacktrace(self, request: web.Request) -> web.Response:
        """``GET /job/{id}/stacktrace``: text/plain; a job without an exception has none
        (the resource returns null: 204); an unknown job is the engine's 404."""
        job_id = request.match_info["id"]
        job = self._find_job(job_id)
        if job is None:
            raise EngineError(404, f"No job found with id {job_id}: job is null")
        if job.failure is None:
            return web.Response(status=204)
        return web.Response(text=stacktrace(job.failure), content_type="text/plain")

    # ----------------------------------------------------------------- history endpoints

    def _history_filter(self, params: _Params) -> Predicate | None:
        predicates = _common_filters(params)
        completed = params.flag("completed")
        if completed is not None:
            predicates.append(lambda b: (b.end_time is not None) == completed)
        return _all_of(predicates)

    def _historic_row(self, batch: EngineBatch) -> Row:
        row: Row = {
            "id": batch.id,
            "type": batch.type,
            "totalJobs": batch.total_jobs,
            "batchJobsPerSeed": batch.batch_jobs_per_seed,
            "invocationsPerBatchJob": batch.invocations_per_batch_job,
            "seedJobDefinitionId": batch.seed_job_definition_id,
            "monitorJobDefinitionId": batch.monitor_job_definition_id,
            "batchJobDefinitionId": batch.batch_job_definition_id,
            "tenantId": batch.tenant_id,
            "createUserId": batch.create_user_id,
            "startTime": self._format_date(batch.start_time),
            "endTime": self._format_date(batch.end_time),
            "removalTime": self._format_date(batch.removal_time),
        }
        if not self.legacy:
            row["executionStartTime"] = self._format_date(batch.execution_start_time)
        return row

    async def _get_historic_batches(self, request: web.Request) -> web.Response:
        params = _Params(request.query)
        sorting = _sorting(params, _HISTORY_SORTS)
        keep = self._history_filter(params)
        rows = _select(self._history, params.text("batchId"), keep, sorting, self._page(params))
        return _json([self._historic_row(b) for b in rows])

    async def _count_historic_batches(self, request: web.Request) -> web.Response:
        params = _Params(request.query)
        keep = self._history_filter(params)
        rows = _select(self._history, params.text("batchId"), keep, None, (0, None))
        return _json({"count": len(rows)})

    async def _get_historic_batch(self, request: web.Request) -> web.Response:
        batch_id = request.match_info["id"]
        batch = self._history.by_id.get(batch_id)
        if batch is None:
            raise EngineError(404, f"Historic batch with id '{batch_id}' does not exist")
        return _json(self._historic_row(batch))

    # ----------------------------------------------------------------- user-operation log

    def _query_operations(self, params: _Params) -> list[UserOperation]:
        """Entries in log order (timestamp order), filtered by the batch-relevant fields."""
        wanted = {
            "batchId": params.text("batchId"),
            "operationType": params.text("operationType"),
            "entityType": params.text("entityType"),
            "userId": params.text("userId"),
            "property": params.text("property"),
        }
        return [op for op in self._operations if _operation_matches(op, wanted)]

    def _operation_row(self, op: UserOperation) -> Row:
        values: Row = {
            "id": op.id,
            "batchId": op.batch_id,
            "userId": op.user_id,
            "timestamp": self._format_date(op.timestamp),
            "operationId": op.operation_id,
            "operationType": op.operation_type,
            "entityType": "Batch",
            "property": op.property,
            "newValue": op.new_value,
            "category": "Operator",
        }
        return {key: values.get(key) for key in _OPERATION_KEYS}

    async def _get_operations(self, request: web.Request) -> web.Response:
        params = _Params(request.query)
        sorting = _sorting(params, ("timestamp",))
        first, count = self._page(params)
        rows = self._query_operations(params)
        if sorting is not None and sorting.descending:
            rows.reverse()
        page = rows[first : None if count is None else first + count]
        return _json([self._operation_row(op) for op in page])

    async def _count_operations(self, request: web.Request) -> web.Response:
        return _json({"count": len(self._query_operations(_Params(request.query)))})

    # ----------------------------------------------------------------- historic job log

    def _job_log_runs(self, params: _Params) -> list[JobLogRun]:
        """Runs matching the run-level filters, in the order they were written."""
        definition = params.text("jobDefinitionId")
        if definition is not None:
            batch_id = self._job_definitions.get(definition)
            runs = list(self._job_logs.get(batch_id, ())) if batch_id is not None else []
        else:
            runs = sorted(
                (run for batch_runs in self._job_logs.values() for run in batch_runs),
                key=lambda run: run.seq,
            )
        kinds = {kind for kind in _JOB_LOG_KINDS if params.flag(f"{kind}Log")}
        batches = self._history.by_id
        wanted = {
            "jobDefinitionType": params.text("jobDefinitionType"),
            "jobDefinitionConfiguration": params.text("jobDefinitionConfiguration"),
        }
        tenants = params.ids("tenantIdIn")
        without_tenant = params.flag("withoutTenantId")

        def keep(run: JobLogRun) -> bool:
            batch = batches[run.batch_id]
            return (
                (not kinds or run.kind in kinds)
                and wanted["jobDefinitionType"] in (None, batch.type)
                and wanted["jobDefinitionConfiguration"] in (None, batch.id)
                and (tenants is None or batch.tenant_id in tenants)
                and (not without_tenant or batch.tenant_id is None)
            )

        return [run for run in runs if keep(run)]

    def _job_log_entries(self, params: _Params) -> Iterator[Row]:
        """Matching entries in log order, rendered lazily."""
        job_id = params.text("jobId")
        for run in self._job_log_runs(params):
            batch = self._history.by_id[run.batch_id]
            for offset, index in enumerate(run.jobs):
                row = self._job_log_row(batch, run, offset, index)
                if job_id is None or row["jobId"] == job_id:
                    yield row

    def _job_log_row(self, batch: EngineBatch, run: JobLogRun, offset: int, index: int) -> Row:
        values: Row = {
            "id": str(uuid.uuid5(_IDS, f"log:{run.seq}:{offset}")),
            "timestamp": self._format_date(run.timestamp),
            "removalTime": self._format_date(batch.removal_time),
            "jobId": str(uuid.uuid5(_IDS, f"job:{batch.batch_job_definition_id}:{index}")),
            "jobRetries": run.retries,
            "jobPriority": 0,
            "jobExceptionMessage": run.message if run.messages is None else run.messages[offset],
            "failedActivityId": run.activity_id if run.kind == "failure" else None,
            "processInstanceId": _job_instance(batch, index),
            "jobDefinitionId": batch.batch_job_definition_id,
            "jobDefinitionType": batch.type,
            "jobDefinitionConfiguration": batch.id,
            "tenantId": batch.tenant_id,
            "hostname": self.hostname,
            "batchId": batch.id,
            "creationLog": run.kind == "creation",
            "failureLog": run.kind == "failure",
            "successLog": run.kind == "success",
            "deletionLog": run.kind == "deletion",
        }
        keys = [k for k in _JOB_LOG_KEYS if not (self.legacy and k == "batchId")]
        return {key: values.get(key) for key in keys}

    async def _get_job_log(self, request: web.Request) -> web.Response:
        """``GET /history/job-log``: written at history FULL as execution jobs are created,
        fail, succeed or are deleted. Sorting by timestamp or occurrence follows the log
        order; other sort keys sort the rendered rows (nulls first)."""
        params = _Params(request.query)
        sorting = _sorting(params, _JOB_LOG_SORTS)
        first, count = self._page(params)
        stop = None if count is None else first + count
        entries = self._job_log_entries(params)
        if sorting is None or (sorting.by in ("timestamp", "occurrence")
                               and not sorting.descending):
            page = list(islice(entries, first, stop))
        elif sorting.by in ("timestamp", "occurrence"):
            page = list(entries)[::-1][first:stop]
        else:
            by = sorting.by
            page = sorted(entries, key=lambda row: _nulls_first(row.get(by)),
                          reverse=sorting.descending)[first:stop]
        return _json(page)

    async def _count_job_log(self, request: web.Request) -> web.Response:
        return _json({"count": sum(1 for _ in self._job_log_entries(_Params(request.query)))})


def _operation_matches(op: UserOperation, wanted: Mapping[str, str | None]) -> bool:
    actual = {
        "batchId": op.batch_id,
        "operationType": op.operation_type,
        "entityType": "Batch",
        "userId": op.user_id,
        "property": op.property,
    }
    return all(value is None or actual[key] == value for key, value in wanted.items())
