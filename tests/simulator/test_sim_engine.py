"""The fake process engine: model behaviour and REST responses."""

from __future__ import annotations

import base64
import re
import time
from datetime import UTC, datetime

import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from batchscope.simulator.engine import FakeEngine
from sim_support import EPOCH, FakeClock, get_json

STATISTICS_FIELDS = {
    "id",
    "type",
    "totalJobs",
    "jobsCreated",
    "batchJobsPerSeed",
    "invocationsPerBatchJob",
    "seedJobDefinitionId",
    "monitorJobDefinitionId",
    "batchJobDefinitionId",
    "suspended",
    "tenantId",
    "createUserId",
    "startTime",
    "executionStartTime",
    "remainingJobs",
    "completedJobs",
    "failedJobs",
}
HISTORIC_FIELDS = {
    "id",
    "type",
    "totalJobs",
    "batchJobsPerSeed",
    "invocationsPerBatchJob",
    "seedJobDefinitionId",
    "monitorJobDefinitionId",
    "batchJobDefinitionId",
    "tenantId",
    "createUserId",
    "startTime",
    "executionStartTime",
    "endTime",
    "removalTime",
}


def exception_dto(
    message: str, type_: str = "InvalidRequestException", code: int | None = None
) -> dict[str, object]:
    return {"type": type_, "message": message, "code": code}


async def test_statistics_row_has_every_field_and_counts(
    engine: FakeEngine, engine_client: TestClient
) -> None:
    """A statistics row carries all BatchStatisticsDto fields with the job counts."""
    batch = engine.create_batch("instance-migration", 250, tenant_id="acme", jobs_per_seed=100)
    engine.complete_jobs(batch, 40)
    engine.fail_jobs(batch, 3)

    [row] = await get_json(engine_client, "/batch/statistics")

    assert set(row) == STATISTICS_FIELDS
    assert row["id"] == batch and row["type"] == "instance-migration"
    assert row["tenantId"] == "acme" and row["createUserId"] == "demo"
    assert (row["totalJobs"], row["jobsCreated"], row["batchJobsPerSeed"]) == (250, 100, 100)
    assert (row["remainingJobs"], row["completedJobs"], row["failedJobs"]) == (210, 40, 3)
    assert row["suspended"] is False
    assert row["executionStartTime"] is not None


async def test_complete_jobs_seeds_more_jobs_when_needed(engine: FakeEngine) -> None:
    """Completing more jobs than are pending lets the seed job create them first."""
    batch = engine.create_batch(total_jobs=300, jobs_per_seed=100)
    engine.complete_jobs(batch, 150)
    state = engine.batch(batch)
    assert (state.jobs_created, state.completed_jobs, state.remaining_jobs) == (150, 150, 150)
    engine.seed(batch)
    assert engine.batch(batch).jobs_created == 300


async def test_execution_start_time_is_set_by_the_first_job(
    engine: FakeEngine, clock: FakeClock
) -> None:
    """executionStartTime stays null until an execution job has run."""
    batch = engine.create_batch()
    assert engine.batch(batch).execution_start_time is None
    clock.advance(5)
    engine.fail_jobs(batch, 1)
    assert engine.batch(batch).execution_start_time == EPOCH + 5


async def test_failed_jobs_stay_remaining_until_retried(engine: FakeEngine) -> None:
    """Failed jobs count in remainingJobs; retry_failed makes them pending again."""
    batch = engine.create_batch(total_jobs=10)
    engine.complete_jobs(batch, 5)
    engine.fail_jobs(batch, 5)
    state = engine.batch(batch)
    assert (state.failed_jobs, state.remaining_jobs, state.pending_jobs) == (5, 5, 0)
    engine.retry_failed(batch)
    engine.complete_jobs(batch, 5)
    assert (state.failed_jobs, state.remaining_jobs) == (0, 0)


async def test_paging_by_batch_id(engine: FakeEngine, engine_client: TestClient) -> None:
    """firstResult/maxResults page through batches ordered by id, both directions."""
    for i in range(25):
        engine.create_batch(batch_id=f"b{i:02d}")
    path = "/batch/statistics?firstResult=20&maxResults=10&sortBy=batchId&sortOrder="

    asc = await get_json(engine_client, path + "asc")
    desc = await get_json(engine_client, path + "desc")

    assert [r["id"] for r in asc] == ["b20", "b21", "b22", "b23", "b24"]
    assert [r["id"] for r in desc] == ["b04", "b03", "b02", "b01", "b00"]
    default = await get_json(engine_client, "/batch/statistics?maxResults=3")
    assert [r["id"] for r in default] == ["b00", "b01", "b02"]


async def test_sort_by_tenant_and_start_time_is_deterministic(
    engine: FakeEngine, engine_client: TestClient, clock: FakeClock
) -> None:
    """Sorting by tenantId or startTime breaks ties by id; null tenants sort first."""
    for batch_id, tenant in [("c", "t2"), ("a", None), ("b", "t1"), ("d", "t1")]:
        engine.create_batch(batch_id=batch_id, tenant_id=tenant)
        clock.advance(1)

    by_tenant = await get_json(engine_client, "/batch/statistics?sortBy=tenantId&sortOrder=asc")
    by_start = await get_json(engine_client, "/batch/statistics?sortBy=startTime&sortOrder=desc")

    assert [r["id"] for r in by_tenant] == ["a", "b", "d", "c"]
    assert [r["id"] for r in by_start] == ["d", "b", "a", "c"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (
            "sortBy=batchId",
            "Only a single sorting parameter specified. sortBy and sortOrder required",
        ),
        (
            "sortOrder=asc",
            "Only a single sorting parameter specified. sortBy and sortOrder required",
        ),
        ("sortBy=x&sortOrder=asc", "Cannot set query parameter 'sortBy' to value 'x'"),
        ("sortBy=batchId&sortOrder=up", "Cannot set query parameter 'sortOrder' to value 'up'"),
        ("maxResults=abc", "Cannot set query parameter 'maxResults' to value 'abc'"),
        ("firstResult=1.5", "Cannot set query parameter 'firstResult' to value '1.5'"),
        ("suspended=maybe", "Cannot set query parameter 'suspended' to value 'maybe'"),
    ],
)
async def test_invalid_query_parameters_are_400(
    engine_client: TestClient, query: str, message: str
) -> None:
    """Bad sorting or unparsable parameters answer 400 with the engine's message."""
    body = await get_json(engine_client, f"/batch/statistics?{query}", status=400)
    assert body == exception_dto(message)


async def test_max_results_limit(engine: FakeEngine, aiohttp_client: AiohttpClient) -> None:
    """With queryMaxResultsLimit, authenticated unbounded or oversized lists are 400 with
    code 0 (a BadUserRequestException); counts are not limited."""
    limited = FakeEngine(query_max_results_limit=100, username="monitor", password="pw")
    limited.create_many(3)
    client = await aiohttp_client(limited.app, headers=basic("monitor", "pw"))

    unbound = await get_json(client, "/batch/statistics", status=400)
    too_many = await get_json(client, "/history/batch?maxResults=101", status=400)
    ok = await get_json(client, "/batch/statistics?maxResults=100")
    count = await get_json(client, "/batch/statistics/count")

    assert unbound == exception_dto(
        "An unbound number of results is forbidden!", "BadUserRequestException", 0
    )
    assert too_many == exception_dto(
        "Max results limit of 100 exceeded!", "BadUserRequestException", 0
    )
    assert len(ok) == 3 and count == {"count": 3}


async def test_max_results_limit_spares_unauthenticated_requests(
    aiohttp_client: AiohttpClient,
) -> None:
    """The engine checks queryMaxResultsLimit only for an authenticated user: without the
    authentication filter an unbounded list is served."""
    open_engine = FakeEngine(query_max_results_limit=2)
    open_engine.create_many(3)
    client = await aiohttp_client(open_engine.app)

    assert len(await get_json(client, "/batch/statistics")) == 3
    assert len(await get_json(client, "/history/batch?maxResults=50")) == 3


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("type=instance-deletion", {"del"}),
        ("tenantIdIn=t1,t2", {"t1", "t2"}),
        ("withoutTenantId=true", {"mig", "del", "sus", "fail"}),
        ("suspended=true", {"sus"}),
        ("suspended=false", {"mig", "del", "fail", "t1", "t2"}),
        ("withFailures=true", {"fail"}),
        ("withoutFailures=true", {"mig", "del", "sus", "t1", "t2"}),
        ("batchId=t2", {"t2"}),
        ("batchId=nope", set()),
        ("createdBy=alice", {"t1"}),
    ],
)
async def test_statistics_filters(
    engine: FakeEngine, engine_client: TestClient, query: str, expected: set[str]
) -> None:
    """Each statistics filter selects the matching batches; count agrees with the list."""
    engine.create_batch("instance-migration", batch_id="mig")
    engine.create_batch("instance-deletion", batch_id="del")
    engine.create_batch(batch_id="sus")
    engine.suspend("sus")
    engine.create_batch(batch_id="fail")
    engine.fail_jobs("fail", 1)
    engine.create_batch(batch_id="t1", tenant_id="t1", user="alice")
    engine.create_batch(batch_id="t2", tenant_id="t2")

    rows = await get_json(engine_client, f"/batch/statistics?{query}")
    count = await get_json(engine_client, f"/batch/statistics/count?{query}")

    assert {r["id"] for r in rows} == expected
    assert count == {"count": len(expected)}


async def test_batch_list_has_no_statistics_and_ignores_their_filters(
    engine: FakeEngine, engine_client: TestClient
) -> None:
    """GET /batch returns BatchDto rows and silently ignores statistics-only filters."""
    engine.create_batch(batch_id="one")
    engine.create_batch(batch_id="two")
    engine.fail_jobs("two", 1)

    rows = await get_json(engine_client, "/batch?withFailures=true")
    single = await get_json(engine_client, "/batch/one")
    count = await get_json(engine_client, "/batch/count")
    bad_sort = await get_json(engine_client, "/batch?sortBy=startTime&sortOrder=asc", status=400)

    assert [r["id"] for r in rows] == ["one", "two"]
    assert set(single) == STATISTICS_FIELDS - {"remainingJobs", "completedJobs", "failedJobs"}
    assert count == {"count": 2}
    assert bad_sort["message"] == "Cannot set query parameter 'sortBy' to value 'startTime'"


async def test_unknown_batch_is_404_exception_dto(engine_client: TestClient) -> None:
    """Unknown runtime and historic batches answer 404 with an ExceptionDto."""
    runtime = await get_json(engine_client, "/batch/nope", status=404)
    historic = await get_json(engine_client, "/history/batch/nope", status=404)
    assert runtime == exception_dto("Batch with id 'nope' does not exist")
    assert historic == exception_dto("Historic batch with id 'nope' does not exist")


async def test_finish_moves_the_batch_to_history(
    engine: FakeEngine, engine_client: TestClient, clock: FakeClock
) -> None:
    """After the monitor job finishes a batch, only its historic row with endTime remains."""
    batch = engine.create_batch(total_jobs=10)
    running = await get_json(engine_client, f"/history/batch/{batch}")
    assert set(running) == HISTORIC_FIELDS and running["endTime"] is None
    engine.complete_jobs(batch, 10)
    clock.advance(30)
    engine.finish(batch)

    assert await get_json(engine_client, f"/batch/statistics?batchId={batch}") == []
    await get_json(engine_client, f"/batch/{batch}", status=404)
    ended = await get_json(engine_client, f"/history/batch/{batch}")
    assert ended["endTime"] == "2016-01-25T13:34:12.165+0100"
    assert ended["removalTime"] is None
    assert engine.runtime_ids() == [] and engine.history_ids() == [batch]


async def test_history_sweep_query(
    engine: FakeEngine, engine_client: TestClient, clock: FakeClock
) -> None:
    """completed=true&sortBy=endTime&sortOrder=desc lists ended batches, newest first."""
    for batch_id in ("first", "second", "third"):
        engine.create_batch(batch_id=batch_id)
    engine.create_batch(batch_id="running")
    for batch_id in ("second", "first"):
        clock.advance(1)
        engine.finish(batch_id)
    clock.advance(1)
    engine.delete("third")

    rows = await get_json(
        engine_client, "/history/batch?completed=true&sortBy=endTime&sortOrder=desc&maxResults=2"
    )
    rest = await get_json(
        engine_client,
        "/history/batch?completed=true&sortBy=endTime&sortOrder=desc&firstResult=2&maxResults=2",
    )
    open_rows = await get_json(engine_client, "/history/batch?completed=false")
    count = await get_json(engine_client, "/history/batch/count?completed=true")

    assert [r["id"] for r in rows + rest] == ["third", "first", "second"]
    assert [r["id"] for r in open_rows] == ["running"]
    assert count == {"count": 3}


async def test_history_rejects_unknown_sort(engine_client: TestClient) -> None:
    """The history query only sorts by batchId, startTime, endTime and tenantId."""
    body = await get_json(
        engine_client, "/history/batch?sortBy=suspended&sortOrder=asc", status=400
    )
    assert body["message"] == "Cannot set query parameter 'sortBy' to value 'suspended'"


async def test_delete_writes_user_operation_log(
    engine: FakeEngine, engine_client: TestClient, clock: FakeClock
) -> None:
    """DELETE (cancel) logs Delete/cascadeToHistory and ends the historic batch."""
    batch = engine.create_batch()
    clock.advance(2)
    engine.delete(batch, user="ops")

    [entry] = await get_json(
        engine_client, f"/history/user-operation?batchId={batch}&operationType=Delete&maxResults=5"
    )
    historic = await get_json(engine_client, f"/history/batch/{batch}")

    assert entry["operationType"] == "Delete" and entry["entityType"] == "Batch"
    assert entry["property"] == "cascadeToHistory"
    assert (entry["orgValue"], entry["newValue"]) == (None, "false")
    assert entry["category"] == "Operator" and entry["userId"] == "ops"
    assert entry["batchId"] == batch and entry["timestamp"] == "2016-01-25T13:33:44.165+0100"
    assert entry["id"] and entry["operationId"]
    assert historic["endTime"] == "2016-01-25T13:33:44.165+0100"


async def test_cascade_delete_keeps_only_the_user_operation_log(
    engine: FakeEngine, engine_client: TestClient
) -> None:
    """A cascading delete removes the historic row and its job log; the user-operation
    entries (SuspendBatch, Delete) stay, as they do in the engine."""
    batch = engine.create_batch()
    definition = engine.batch(batch).batch_job_definition_id
    engine.suspend(batch)
    engine.delete(batch, cascade=True)

    await get_json(engine_client, f"/history/batch/{batch}", status=404)
    entries = await get_json(engine_client, f"/history/user-operation?batchId={batch}")
    job_log = await get_json(engine_client, f"/history/job-log?jobDefinitionId={definition}")
    assert [(e["operationType"], e["newValue"]) for e in entries] == [
        ("SuspendBatch", "suspended"), ("Delete", "true")]
    assert job_log == []
    with pytest.raises(KeyError):
        engine.batch(batch)


async def test_suspend_and_activate_are_logged(
    engine: FakeEngine, engine_client: TestClient, clock: FakeClock
) -> None:
    """Suspension changes show in the row and as SuspendBatch/ActivateBatch log entries."""
    batch = engine.create_batch()
    engine.suspend(batch)
    suspended = await get_json(engine_client, "/batch/statistics?suspended=true")
    clock.advance(1)
    engine.activate(batch)

    entries = await get_json(
        engine_client,
        f"/history/user-operation?batchId={batch}&entityType=Batch&sortBy=timestamp&sortOrder=desc",
    )
    first_page = await get_json(engine_client, "/history/user-operation?maxResults=1")
    count = await get_json(
        engine_client, "/history/user-operation/count?operationType=SuspendBatch"
    )

    assert [r["id"] for r in suspended] == [batch]
    assert [(e["operationType"], e["property"], e["newValue"]) for e in entries] == [
        ("ActivateBatch", "suspensionState", "active"),
        ("SuspendBatch", "suspensionState", "suspended"),
    ]
    assert [e["operationType"] for e in first_page] == ["SuspendBatch"]
    assert count == {"count": 1}


async def test_remove_history_makes_the_batch_unknown(
    engine: FakeEngine, engine_client: TestClient
) -> None:
    """History cleanup removes the historic row; GET answers 404 afterwards."""
    batch = engine.create_batch()
    engine.finish(batch)
    engine.remove_history(batch)
    engine.remove_history(batch)
    await get_json(engine_client, f"/history/batch/{batch}", status=404)


@pytest.mark.parametrize(
    ("offset", "expected"),
    [("+0100", "2016-01-25T13:33:42.165+0100"), ("-0530", "2016-01-25T07:03:42.165-0530")],
)
async def test_dates_use_engine_format_and_offset(
    aiohttp_client: AiohttpClient, clock: FakeClock, offset: str, expected: str
) -> None:
    """Dates render as yyyy-MM-dd'T'HH:mm:ss.SSSZ in the configured offset."""
    engine = FakeEngine(clock=clock, utc_offset=offset)
    engine.create_batch()
    client = await aiohttp_client(engine.app)

    [row] = await get_json(client, "/batch/statistics")

    assert row["startTime"] == expected
    parsed = datetime.strptime(row["startTime"], "%Y-%m-%dT%H:%M:%S.%f%z")
    assert parsed == datetime.fromtimestamp(EPOCH, UTC).replace(microsecond=165000)


def test_rejects_malformed_offset() -> None:
    """An offset that is not ±HHMM is a configuration error."""
    with pytest.raises(ValueError, match="utc_offset"):
        FakeEngine(utc_offset="+01:00")


async def test_legacy_engine(aiohttp_client: AiohttpClient) -> None:
    """A pre-7.18 engine has no start times, no startTime sort and no ExceptionDto code."""
    engine = FakeEngine(legacy=True)
    batch = engine.create_batch()
    engine.fail_jobs(batch, 1)
    client = await aiohttp_client(engine.app)

    [row] = await get_json(client, "/batch/statistics?withFailures=false")
    historic = await get_json(client, f"/history/batch/{batch}")
    error = await get_json(client, "/batch/statistics?sortBy=startTime&sortOrder=asc", status=400)
    ignored = await get_json(client, "/batch/statistics?withoutFailures=true")

    assert "startTime" not in row and "executionStartTime" not in row
    assert row["failedJobs"] == 1
    assert "startTime" in historic and "executionStartTime" not in historic
    assert error == {
        "type": "InvalidRequestException",
        "message": "Cannot set query parameter 'sortBy' to value 'startTime'",
    }
    assert [r["id"] for r in ignored] == [batch]


async def test_without_full_history_nothing_is_kept(aiohttp_client: AiohttpClient) -> None:
    """Below history level FULL, a finished batch leaves no historic row or log entry."""
    engine = FakeEngine(history=False)
    batch = engine.create_batch()
    client = await aiohttp_client(engine.app)
    assert await get_json(client, "/history/batch") == []
    engine.suspend(batch)
    engine.delete(batch)
    await get_json(client, f"/history/batch/{batch}", status=404)
    assert await get_json(client, "/history/user-operation") == []


async def test_named_engine_prefix(aiohttp_client: AiohttpClient) -> None:
    """The API answers under /engine/{name} too; without the authentication filter another
    name is the resource's 400 "No process engine available"."""
    engine = FakeEngine(engine_name="prod")
    batch = engine.create_batch()
    client = await aiohttp_client(engine.app)

    engines = await get_json(client, "/engine")
    rows = await get_json(client, "/engine/prod/batch/statistics")
    unknown = await get_json(client, "/engine/other/batch/statistics", status=400)

    assert engines == [{"name": "prod"}]
    assert [r["id"] for r in rows] == [batch]
    assert unknown == exception_dto("No process engine available")


async def test_unknown_engine_behind_the_auth_filter_is_404(
    aiohttp_client: AiohttpClient,
) -> None:
    """With the authentication filter on, an unknown engine name is the filter's 404
    "Process engine X not available", before (and without) authentication."""
    engine = FakeEngine(engine_name="prod", username="monitor", password="pw")
    client = await aiohttp_client(engine.app)

    unknown = await get_json(client, "/engine/other/history/batch/x", status=404)
    known = await get_json(client, "/engine/prod/batch/statistics",
                           headers=basic("monitor", "pw"))

    assert unknown == exception_dto("Process engine other not available")
    assert known == []


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic("monitor", "wrong"),
        {"Authorization": "Basic !!not-base64!!"},
        {"Authorization": "Bearer s3cr3t-token"},
    ],
)
async def test_basic_auth_rejects_with_empty_401(
    aiohttp_client: AiohttpClient, headers: dict[str, str]
) -> None:
    """Missing or wrong credentials: 401, empty body, WWW-Authenticate Basic realm."""
    engine = FakeEngine(username="monitor", password="s3cr3t-password")
    client = await aiohttp_client(engine.app)
    async with client.get("/batch/statistics", headers=headers) as resp:
        assert resp.status == 401
        assert await resp.read() == b""
        assert resp.headers["WWW-Authenticate"] == 'Basic realm="default"'


async def test_auth_accepts_valid_credentials(aiohttp_client: AiohttpClient) -> None:
    """Correct Basic credentials or bearer token are let through; /engine needs none."""
    basic_engine = FakeEngine(username="monitor", password="s3cr3t-password")
    bearer_engine = FakeEngine(bearer_token="s3cr3t-token")
    basic_client = await aiohttp_client(basic_engine.app)
    bearer_client = await aiohttp_client(bearer_engine.app)

    await get_json(basic_client, "/batch/statistics", headers=basic("monitor", "s3cr3t-password"))
    await get_json(bearer_client, "/batch", headers={"Authorization": "Bearer s3cr3t-token"})
    await get_json(basic_client, "/engine")
    async with bearer_client.get("/batch", headers={"Authorization": "Bearer nope"}) as resp:
        assert resp.status == 401


async def test_requests_are_recorded(engine: FakeEngine, engine_client: TestClient) -> None:
    """Every request is logged with method, path and query, and headers."""
    await get_json(engine_client, "/batch/statistics?maxResults=500", headers={"X-Probe": "1"})
    [(method, path_qs, headers)] = engine.requests
    assert (method, path_qs, headers["x-probe"]) == ("GET", "/batch/statistics?maxResults=500", "1")
    engine.clear_requests()
    assert engine.requests == []


def test_control_api_rejects_unknown_and_duplicate_batches(engine: FakeEngine) -> None:
    """Acting on a batch that is not running raises KeyError; duplicate ids ValueError."""
    batch = engine.create_batch(batch_id="x")
    with pytest.raises(ValueError, match="already exists"):
        engine.create_batch(batch_id="x")
    engine.finish(batch)
    with pytest.raises(KeyError):
        engine.complete_jobs(batch, 1)
    with pytest.raises(KeyError):
        engine.delete(batch)


async def test_large_page_renders_fast(aiohttp_client: AiohttpClient) -> None:
    """10,000 batches are created quickly and a 500-row page stays cheap to serve."""
    engine = FakeEngine()
    started = time.perf_counter()
    ids = engine.create_many(10_000)
    assert time.perf_counter() - started < 1.0
    client = await aiohttp_client(engine.app)
    path = "/batch/statistics?firstResult=9500&maxResults=500&sortBy=batchId&sortOrder=asc"

    timings = []
    for _ in range(5):
        started = time.perf_counter()
        rows = await get_json(client, path)
        timings.append(time.perf_counter() - started)

    assert [r["id"] for r in rows] == sorted(ids)[9500:]
    assert min(timings) < 0.1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0100", rows[0]["startTime"])
