"""A fake Camunda 7 / Operaton / CIB seven process engine: batches, their history, the
user-operation log, and the REST endpoints that expose them.

The model is just enough of the engine's batch lifecycle (seed, execute, fail, suspend, monitor
job completion, delete, history cleanup) to drive every state batchscope distinguishes, and the
REST layer reproduces the engine's response shapes, date format, validation messages and auth
behaviour, so the daemon's client code runs unmodified against it.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import email.utils
import re
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from itertools import islice
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from batchscope.simulator.faults import FaultInjector

Clock = Callable[[], float]
Row = dict[str, object]
Predicate = Callable[["EngineBatch"], bool]
SortKey = Callable[["EngineBatch"], Any]


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

    @property
    def remaining_jobs(self) -> int:
        """Jobs not yet done, including failed ones and ones the seed job has yet to create."""
        return self.total_jobs - self.completed_jobs

    @property
    def pending_jobs(self) -> int:
        """Created execution jobs that are neither done nor failed."""
        return self.jobs_created - self.completed_jobs - self.failed_jobs


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


class EngineError(Exception):
    """An error the engine reports as an ExceptionDto."""

    def __init__(self, status: int, message: str, type_: str = "InvalidRequestException") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_


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


class _DateFormat:
    """Renders epoch seconds in the engine's default ``yyyy-MM-dd'T'HH:mm:ss.SSSZ`` format.

    Results are memoised because many rows share a timestamp (bulk-created batches) and
    formatting dominates page rendering otherwise.
    """

    _MAX_CACHED = 100_000

    def __init__(self, utc_offset: str) -> None:
        match = re.fullmatch(r"([+-])(\d\d)(\d\d)", utc_offset)
        if match is None:
            raise ValueError(f"utc_offset must look like +0100, got {utc_offset!r}")
        sign = -1 if match[1] == "-" else 1
        offset = timedelta(hours=int(match[2]), minutes=int(match[3]))
        self._tz = timezone(sign * offset)
        self._suffix = utc_offset
        self._cache: dict[float, str] = {}

    def __call__(self, epoch: float | None) -> str | None:
        if epoch is None:
            return None
        text = self._cache.get(epoch)
        if text is None:
            if len(self._cache) >= self._MAX_CACHED:
                self._cache.clear()
            moment = datetime.fromtimestamp(epoch, self._tz)
            text = f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}{self._suffix}"
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


_OPERATION_NULLS: Row = dict.fromkeys(
    (
        "annotation",
        "orgValue",
        "deploymentId",
        "processDefinitionId",
        "processDefinitionKey",
        "processInstanceId",
        "executionId",
        "caseDefinitionId",
        "caseInstanceId",
        "caseExecutionId",
        "taskId",
        "externalTaskId",
        "jobId",
        "jobDefinitionId",
        "removalTime",
        "rootProcessInstanceId",
    )
)


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
    ) -> None:
        super().__init__()
        self.clock = clock
        self.query_max_results_limit = query_max_results_limit
        self.username = username
        self.password = password
        self.bearer_token = bearer_token
        self.engine_name = engine_name
        self.history = history
        self.legacy = legacy
        self._format_date = _DateFormat(utc_offset)
        self._runtime = _SortedIndex()
        self._history = _SortedIndex()
        self._operations: list[UserOperation] = []

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
    ) -> str:
        """Start a batch; the first seed-job run has already created its execution jobs."""
        batch_id = batch_id or str(uuid.uuid4())
        if batch_id in self._runtime or batch_id in self._history:
            raise ValueError(f"batch {batch_id!r} already exists")
        batch = self._new_batch(batch_id, type, total_jobs, tenant_id, user, jobs_per_seed)
        self._runtime.add(batch)
        if self.history:
            self._history.add(batch)
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
        if self.history:
            self._history.add_many(batches)
        return [batch.id for batch in batches]

    def seed(self, batch_id: str, n: int | None = None) -> None:
        """Let the seed job create ``n`` more execution jobs (all remaining ones when None)."""
        batch = self._running(batch_id)
        wanted = batch.total_jobs if n is None else batch.jobs_created + n
        batch.jobs_created = min(batch.total_jobs, wanted)

    def complete_jobs(self, batch_id: str, n: int) -> None:
        """``n`` execution jobs succeed, seeding more first if fewer are pending."""
        batch = self._running(batch_id)
        batch.completed_jobs += self._execute(batch, n)

    def fail_jobs(self, batch_id: str, n: int) -> None:
        """``n`` execution jobs run out of retries; they stay in remainingJobs."""
        batch = self._running(batch_id)
        batch.failed_jobs += self._execute(batch, n)

    def retry_failed(self, batch_id: str) -> None:
        """Failed jobs get retries again (Cockpit's "retry all") and become pending."""
        self._running(batch_id).failed_jobs = 0

    def suspend(self, batch_id: str, *, user: str | None = "demo") -> None:
        """Suspend the batch and log ``SuspendBatch``."""
        self._set_suspended(batch_id, True, "SuspendBatch", user)

    def activate(self, batch_id: str, *, user: str | None = "demo") -> None:
        """Activate the batch and log ``ActivateBatch``."""
        self._set_suspended(batch_id, False, "ActivateBatch", user)

    def finish(self, batch_id: str) -> None:
        """What the monitor job does once no job remains: the runtime row goes, history ends.

        Unfinished jobs are forced to completion so a scenario need not balance the counts.
        """
        batch = self._runtime.remove(batch_id)
        batch.jobs_created = batch.completed_jobs = batch.total_jobs
        batch.failed_jobs = 0
        batch.end_time = self.clock()

    def delete(self, batch_id: str, cascade: bool = False, *, user: str | None = "demo") -> None:
        """Cancel the batch (REST ``DELETE /batch/{id}?cascade=``).

        Like the engine, the historic row gets an endTime; with ``cascade`` it is removed
        together with the batch's user-operation log entries.
        """
        batch = self._runtime.remove(batch_id)
        self._log(batch_id, "Delete", "cascadeToHistory", str(cascade).lower(), user)
        batch.end_time = self.clock()
        if cascade:
            self._history.discard(batch_id)
            self._operations = [op for op in self._operations if op.batch_id != batch_id]

    def remove_history(self, batch_id: str) -> None:
        """History cleanup removed the historic row (idempotent, like a cleanup run)."""
        self._history.discard(batch_id)

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

    def history_ids(self) -> list[str]:
        """Ids of the batches that have a historic row, sorted."""
        return list(self._history.ids)

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
        return EngineBatch(
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

    def _running(self, batch_id: str) -> EngineBatch:
        batch = self._runtime.by_id.get(batch_id)
        if batch is None:
            raise KeyError(f"no running batch {batch_id!r}")
        return batch

    def _execute(self, batch: EngineBatch, n: int) -> int:
        """Run up to ``n`` pending jobs (seeding as needed); returns how many ran."""
        shortfall = n - batch.pending_jobs
        if shortfall > 0:
            batch.jobs_created = min(batch.total_jobs, batch.jobs_created + shortfall)
        executed = max(0, min(n, batch.pending_jobs))
        if executed and batch.execution_start_time is None:
            batch.execution_start_time = self.clock()
        return executed

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
        """Write a user-operation log entry; the engine only keeps them with history on."""
        if self.history:
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
        ]
        for path, handler in routes:
            router.add_get(prefix + path, handler)

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Engine lookup (404), then authentication (401), then ExceptionDto rendering."""
        try:
            name = request.match_info.get("engine_name")
            if name is not None and name != self.engine_name:
                raise EngineError(404, f"Process engine {name} not available")
            if request.match_info.handler != self._get_engines and not self._authenticated(request):
                return web.Response(
                    status=401, headers={"WWW-Authenticate": f'Basic realm="{self.engine_name}"'}
                )
            return await handler(request)
        except EngineError as error:
            body: Row = {"type": error.type, "message": error.message}
            if not self.legacy:
                body["code"] = None
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
        """firstResult/maxResults, enforcing the engine's queryMaxResultsLimit."""
        first, count = params.number("firstResult") or 0, params.number("maxResults")
        limit = self.query_max_results_limit
        if limit is not None and count is None:
            raise EngineError(
                400, "An unbound number of results is forbidden!", "BadUserRequestException"
            )
        if limit is not None and count is not None and count > limit:
            raise EngineError(
                400, f"Max results limit of {limit} exceeded!", "BadUserRequestException"
            )
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
        }
        if not self.legacy:
            row["executionStartTime"] = self._format_date(batch.execution_start_time)
        row["endTime"] = self._format_date(batch.end_time)
        row["removalTime"] = None
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
        return {
            **_OPERATION_NULLS,
            "id": op.id,
            "userId": op.user_id,
            "timestamp": self._format_date(op.timestamp),
            "operationId": op.operation_id,
            "operationType": op.operation_type,
            "entityType": "Batch",
            "category": "Operator",
            "property": op.property,
            "newValue": op.new_value,
            "batchId": op.batch_id,
        }

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


def _operation_matches(op: UserOperation, wanted: Mapping[str, str | None]) -> bool:
    actual = {
        "batchId": op.batch_id,
        "operationType": op.operation_type,
        "entityType": "Batch",
        "userId": op.user_id,
        "property": op.property,
    }
    return all(value is None or actual[key] == value for key, value in wanted.items())
