"""The fake engine's jobs: seed, monitor and execution jobs of running batches as the engine's
JobDto (``GET /job``, ``/job/count``, ``/job/{id}``, ``/job/{id}/stacktrace``), their failures,
and what a failed seed or monitor job does (and does not do) to the batch."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from batchscope.simulator.engine import (
    DEFAULT_FAILURE_ACTIVITY,
    DEFAULT_FAILURE_MESSAGE,
    FakeEngine,
    migration_failure_message,
)
from sim_support import FakeClock, get_json

JOB_KEYS = [
    "id", "jobDefinitionId", "processInstanceId", "processDefinitionId", "processDefinitionKey",
    "executionId", "exceptionMessage", "failedActivityId", "retries", "dueDate", "suspended",
    "priority", "tenantId", "createTime", "batchId",
]


def failed_query(definition: str, extra: str = "") -> str:
    """What Cockpit's batch page asks for a batch's failed jobs."""
    return (f"/job?jobDefinitionId={definition}&withException=true&noRetriesLeft=true"
            f"&firstResult=0&maxResults=50{extra}")


async def jobs_of(client: TestClient, definition: str, extra: str = "") -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = await get_json(
        client, f"/job?jobDefinitionId={definition}{extra}")
    return rows


async def test_a_failed_migration_job_is_the_engines_job_dto(
    engine: FakeEngine, engine_client: TestClient, clock: FakeClock
) -> None:
    """A migration job that fails validation: JobDto's keys in order, retries 0, the
    ENGINE-23004 message naming its own process instance and the unmapped activity, and, as
    in the engine, no processInstanceId and no failedActivityId on the job itself."""
    batch = engine.create_batch("instance-migration", 10, tenant_id="acme")
    definition = engine.batch(batch).batch_job_definition_id
    clock.advance(2)
    engine.fail_jobs(batch, 1)

    [job] = await get_json(engine_client, failed_query(definition))

    assert list(job) == JOB_KEYS
    assert job["id"] == engine.failed_job_ids(batch)[0]
    assert job["jobDefinitionId"] == definition and job["batchId"] == batch
    assert job["retries"] == 0 and job["suspended"] is False and job["priority"] == 0
    assert job["processInstanceId"] is None and job["failedActivityId"] is None
    assert job["exceptionMessage"].startswith("ENGINE-23004 Cannot migrate process instance '")
    assert "Cannot migrate activity instance 'Task_A:" in job["exceptionMessage"]
    assert "There is no migration instruction for this instance's activity" in (
        job["exceptionMessage"])
    assert job["tenantId"] == "acme" and job["dueDate"] is None
    assert job["createTime"] == "2016-01-25T13:33:42.165+0100"  # created with the batch
    assert (job["processDefinitionId"], job["processDefinitionKey"], job["executionId"]) == (
        None, None, None)


async def test_each_migration_failure_names_its_own_instance(
    engine: FakeEngine, engine_client: TestClient
) -> None:
    """The default migration messages differ by process instance, as the engine's do; a
    given message, activity and process instances are kept as given."""
    batch = engine.create_batch("instance-migration", 10)
    definition = engine.batch(batch).batch_job_definition_id
    engine.fail_jobs(batch, 3)
    engine.fail_jobs(batch, 2, message="boom", activity_id="Task_B",
                     process_instance_ids=["pi-1", "pi-2"])

    jobs = await get_json(engine_client, failed_query(definition))

    defaults = [j for j in jobs if j["exceptionMessage"].startswith("ENGINE-23004")]
    given = [j for j in jobs if j["exceptionMessage"] == "boom"]
    assert len({j["exceptionMessage"] for j in defaults}) == 3
    assert {(j["failedActivityId"], j["processInstanceId"]) for j in given} == {
        ("Task_B", "pi-1"), ("Task_B", "pi-2")}


async def test_jobs_of_set_variables_batches_carry_their_process_instance(
    engine: FakeEngine, engine_client: TestClient
) -> None:
    """The engine puts the process instance on set-variables (and correlate-message) jobs;
    a failure that is not a migration defaults to an expression error in an activity."""
    batch = engine.create_batch("set-variables", 4)
    definition = engine.batch(batch).batch_job_definition_id
    engine.fail_jobs(batch, 2)

    jobs = await get_json(engine_client, failed_query(definition))
    pending = await jobs_of(engine_client, definition, "&withRetriesLeft=true")

    assert {j["exceptionMessage"] for j in jobs} == {DEFAULT_FAILURE_MESSAGE}
    assert {j["failedActivityId"] for j in jobs} == {DEFAULT_FAILURE_ACTIVITY}
    instances = {j["processInstanceId"] for j in jobs + pending}
    assert None not in instances and len(instances) == 4


async def test_failed_jobs_page_sort_and_count_like_the_engine(
    engine: FakeEngine, engine_client: TestClient
) -> None:
    """Without sortBy the engine orders by id; pages of the failed-jobs query cover them
    all once; /job/count agrees and ignores paging; sorting by retries puts failed first."""
    batch = engine.create_batch("instance-deletion", 30)
    definition = engine.batch(batch).batch_job_definition_id
    engine.complete_jobs(batch, 5)
    engine.fail_jobs(batch, 7)

    pages = [await get_json(engine_client, f"/job?jobDefinitionId={definition}&withException="
                                           f"true&noRetriesLeft=true&firstResult={first}"
                                           "&maxResults=3") for first in (0, 3, 6)]
    count = await get_json(engine_client, f"/job/count?jobDefinitionId={definition}"
                                          "&withException=true&noRetriesLeft=true&maxResults=1")
    everything = await get_json(engine_client, f"/job/count?jobDefinitionId={definition}")
    by_retries = await jobs_of(engine_client, definition, "&sortBy=jobRetries&sortOrder=asc")

    ids = [job["id"] for page in pages for job in page]
    assert [len(page) for page in pages] == [3, 3, 1]
    assert ids == sorted(ids) and set(ids) == set(engine.failed_job_ids(batch))
    assert count == {"count": 7}
    assert everything == {"count": 25}  # 30 created, 5 done and gone
    assert [j["retries"] for j in by_retries] == [0] * 7 + [3] * 18


async def test_job_query_validation_is_the_engines(
    engine: FakeEngine, aiohttp_client: AiohttpClient
) -> None:
    """A sortBy the job query does not know, a half sorting, timers with messages and a
    bad boolean are 400s; behind the auth filter maxResults above the limit is too."""
    client = await aiohttp_client(engine.app)
    for query, message in [
        ("sortBy=jobDefinitionId&sortOrder=asc",
         "Cannot set query parameter 'sortBy' to value 'jobDefinitionId'"),
        ("sortBy=jobId", "Only a single sorting parameter specified. sortBy and sortOrder "
                         "required"),
        ("timers=true&messages=true",
         "Parameter timers cannot be used together with parameter messages."),
        ("noRetriesLeft=yes", "Cannot set query parameter 'noRetriesLeft' to value 'yes'"),
    ]:
        body = await get_json(client, f"/job?{query}", status=400)
        assert body["message"] == message, query
    limited = FakeEngine(username="u", password="p", query_max_results_limit=10)
    auth = {"Authorization": "Basic dTpw"}
    limited_client = await aiohttp_client(limited.app)
    body = await get_json(limited_client, "/job?maxResults=11", status=400, headers=auth)
    assert body["message"] == "Max results limit of 10 exceeded!"
    assert await get_json(limited_client, "/job/count", headers=auth) == {"count": 0}


async def test_job_filters_a_diagnosis_can_use(
    engine: FakeEngine, engine_client: TestClient
) -> None:
    """messages, active/suspended, tenants, exceptionMessage and jobId select as the engine
    does; the fields batch jobs do not have (execution, activity, timers) select none."""
    batch = engine.create_batch("instance-deletion", 5, tenant_id="acme", jobs_per_seed=5)
    other = engine.create_batch("instance-deletion", 5, jobs_per_seed=5)
    engine.fail_jobs(batch, 1, message="boom")
    engine.suspend(other)
    [failed_id] = engine.failed_job_ids(batch)

    async def count(query: str) -> int:
        body = await get_json(engine_client, f"/job/count?{query}")
        return int(body["count"])

    assert await count("") == 12  # 5 + 5 execution jobs and two monitor jobs
    assert await count("messages=true") == 12 and await count("timers=true") == 0
    assert await count("suspended=true") == 6 and await count("active=true") == 6
    assert await count("tenantIdIn=acme") == 6 and await count("withoutTenantId=true") == 6
    assert await count("tenantIdIn=acme&includeJobsWithoutTenantId=true") == 12
    assert await count("exceptionMessage=boom") == 1 and await count("withException=true") == 1
    assert await count(f"jobId={failed_id}") == 1
    assert await count("activityId=Task_A") == 0 and await count("executionId=x") == 0
    assert await count("jobDefinitionId=unknown") == 0
    [suspended] = await jobs_of(engine_client, engine.batch(other).monitor_job_definition_id)
    assert suspended["suspended"] is True and suspended["retries"] == 3


async def test_stack_traces_and_single_jobs(engine: FakeEngine, engine_client: TestClient) -> None:
    """/job/{id}/stacktrace is text/plain with the exception and its message; a job without
    an exception has none (204); unknown ids are the engine's 404 ExceptionDtos."""
    batch = engine.create_batch("instance-migration", 5)
    engine.fail_jobs(batch, 1, message="ENGINE-23004 Cannot migrate process instance 'x'")
    [failed] = engine.failed_job_ids(batch)
    monitor = engine.monitor_job_id(batch)

    async with engine_client.get(f"/job/{failed}/stacktrace") as resp:
        assert resp.status == 200 and resp.content_type == "text/plain"
        trace = await resp.text()
    async with engine_client.get(f"/job/{monitor}/stacktrace") as resp:
        assert resp.status == 204
    job = await get_json(engine_client, f"/job/{failed}")
    missing_trace = await get_json(engine_client, "/job/nope/stacktrace", status=404)
    missing_job = await get_json(engine_client, "/job/nope", status=404)

    assert trace.startswith("org.camunda.bpm.engine.migration.MigratingProcessInstance"
                            "ValidationException: ENGINE-23004 Cannot migrate process "
                            "instance 'x'\n\tat ")
    assert "ExecuteJobsCmd" in trace
    assert job["id"] == failed and job["retries"] == 0
    assert missing_trace == {"type": "InvalidRequestException",
                             "message": "No job found with id nope: job is null", "code": None}
    assert missing_job == {"type": "InvalidRequestException",
                           "message": "Job with id nope does not exist", "code": None}


async def test_a_failed_seed_job_stops_seeding_and_is_not_a_failed_job(
    engine: FakeEngine, engine_client: TestClient, clock: FakeClock
) -> None:
    """The failed seed job has retries 0 and its exception; failedJobs stays 0 (it counts
    execution jobs only); no job is seeded until it is retried, and the next seed run
    replaces it by a fresh seed job without an exception."""
    batch = engine.create_batch("instance-migration", 300, jobs_per_seed=100)
    seed_definition = engine.batch(batch).seed_job_definition_id
    engine.complete_jobs(batch, 100)
    failed_seed = engine.seed_job_id(batch)
    engine.fail_seed_job(batch, "seed broke")
    engine.complete_jobs(batch, 50)  # nothing pending, nothing seeded

    [seed] = await get_json(engine_client, failed_query(seed_definition))
    [row] = await get_json(engine_client, "/batch/statistics")
    with pytest.raises(ValueError, match="no retries left"):
        engine.seed(batch)
    with pytest.raises(ValueError, match="no retries left"):
        engine.finish(batch)

    assert seed["id"] == failed_seed and seed["retries"] == 0
    assert seed["exceptionMessage"] == "seed broke" and seed["processInstanceId"] is None
    assert (row["jobsCreated"], row["completedJobs"], row["failedJobs"]) == (100, 100, 0)
    assert await get_json(engine_client, f"/job/count?jobDefinitionId={seed_definition}"
                                         "&noRetriesLeft=true") == {"count": 1}

    engine.retry_seed_job(batch)
    [retried] = await jobs_of(engine_client, seed_definition)
    assert (retried["retries"], retried["exceptionMessage"]) == (1, "seed broke")
    clock.advance(1)
    engine.seed(batch, 100)
    [fresh] = await jobs_of(engine_client, seed_definition)
    assert fresh["id"] != failed_seed and fresh["retries"] == 3
    assert fresh["exceptionMessage"] is None
    assert fresh["createTime"] == "2016-01-25T13:33:43.165+0100"
    engine.finish(batch)
    assert await jobs_of(engine_client, seed_definition) == []


async def test_default_seed_failure_is_a_database_error(
    engine: FakeEngine, engine_client: TestClient
) -> None:
    """Without a message the seed job fails as a full database makes it fail; there is no
    seed job to fail once seeding is done."""
    seeding = engine.create_batch(total_jobs=150, jobs_per_seed=100)
    seeded = engine.create_batch(total_jobs=10)
    engine.fail_seed_job(seeding)

    [seed] = await jobs_of(engine_client, engine.batch(seeding).seed_job_definition_id)

    assert seed["exceptionMessage"].startswith("ENGINE-03004 Exception while executing "
                                               "Database Operation 'INSERT MessageEntity[")
    with pytest.raises(ValueError, match="no seed job left"):
        engine.fail_seed_job(seeded)
    assert engine.seed_job_id(seeded) is None


async def test_a_failed_monitor_job_keeps_the_batch_from_completing(
    engine: FakeEngine, engine_client: TestClient
) -> None:
    """The monitor job exists once every execution job does; when it fails, failedJobs stays
    0, the batch cannot finish until the monitor job is retried."""
    seeding = engine.create_batch(total_jobs=150, jobs_per_seed=100)
    batch = engine.create_batch("instance-migration", 10)
    monitor_definition = engine.batch(batch).monitor_job_definition_id
    engine.complete_jobs(batch, 10)
    with pytest.raises(ValueError, match="no monitor job yet"):
        engine.fail_monitor_job(seeding)
    engine.fail_monitor_job(batch)

    [monitor] = await get_json(engine_client, failed_query(monitor_definition))
    rows = await get_json(engine_client, f"/batch/statistics?batchId={batch}")
    with pytest.raises(ValueError, match=r"monitor job of batch .* no retries left"):
        engine.finish(batch)

    assert monitor["id"] == engine.monitor_job_id(batch) and monitor["retries"] == 0
    assert monitor["exceptionMessage"].startswith("ENGINE-03083 ")
    assert rows[0]["remainingJobs"] == 0 and rows[0]["failedJobs"] == 0
    engine.retry_monitor_job(batch)
    engine.finish(batch)
    assert engine.runtime_ids() == [seeding]
    assert await jobs_of(engine_client, monitor_definition) == []


async def test_retried_jobs_keep_their_exception_until_they_run(
    engine: FakeEngine, engine_client: TestClient
) -> None:
    """Cockpit's retry gives failed jobs 1 retry: they keep their exception (withException
    still finds them, noRetriesLeft no longer) until they succeed and are gone."""
    batch = engine.create_batch("instance-deletion", 4)
    definition = engine.batch(batch).batch_job_definition_id
    engine.fail_jobs(batch, 2, message="boom")
    engine.retry_failed(batch)

    retried = await jobs_of(engine_client, definition, "&withException=true")
    failed = await jobs_of(engine_client, definition, "&noRetriesLeft=true")
    engine.complete_jobs(batch, 2)
    after = await jobs_of(engine_client, definition, "&withException=true")

    assert [(j["retries"], j["exceptionMessage"]) for j in retried] == [(1, "boom")] * 2
    assert failed == [] and after == []


async def test_a_batch_not_seeded_yet_has_only_its_seed_job(
    engine: FakeEngine, engine_client: TestClient
) -> None:
    """Before the seed job's first run there is no execution job: jobsCreated 0, the seed
    job alone in the job table."""
    batch = engine.create_batch("instance-migration", 20, seeded=False)
    state = engine.batch(batch)

    jobs = await get_json(engine_client, "/job")
    [row] = await get_json(engine_client, "/batch/statistics")

    assert [j["jobDefinitionId"] for j in jobs] == [state.seed_job_definition_id]
    assert (row["jobsCreated"], row["remainingJobs"]) == (0, 20)
    engine.seed(batch)
    assert await get_json(engine_client, f"/job/count?jobDefinitionId="
                                         f"{state.batch_job_definition_id}") == {"count": 20}


async def test_ended_batches_have_no_jobs(engine: FakeEngine, engine_client: TestClient) -> None:
    """Finishing or deleting a batch removes its jobs, failed ones included."""
    done = engine.create_batch(total_jobs=3)
    gone = engine.create_batch(total_jobs=3)
    engine.fail_jobs(done, 1)
    engine.fail_jobs(gone, 1)
    ids = engine.failed_job_ids(done) + engine.failed_job_ids(gone)
    engine.finish(done)
    engine.delete(gone)

    assert await get_json(engine_client, "/job") == []
    for job_id in ids:
        await get_json(engine_client, f"/job/{job_id}", status=404)


async def test_legacy_jobs_have_no_batch_id_and_named_engines_serve_jobs(
    aiohttp_client: AiohttpClient,
) -> None:
    """batchId arrived on JobDto in 7.22: an older engine leaves it out; the job endpoints
    answer under /engine/{name} too."""
    legacy = FakeEngine(legacy=True, engine_name="other")
    client = await aiohttp_client(legacy.app)
    batch = legacy.create_batch(total_jobs=1)
    definition = legacy.batch(batch).batch_job_definition_id

    [job] = await get_json(client, f"/engine/other/job?jobDefinitionId={definition}")

    assert list(job) == [k for k in JOB_KEYS if k != "batchId"]


async def test_job_log_failures_carry_message_activity_and_instance(
    engine: FakeEngine, engine_client: TestClient
) -> None:
    """The historic job log's failure entries show each job's own message, the failed
    activity and, where the engine sets it, the process instance."""
    migration = engine.create_batch("instance-migration", 2)
    variables = engine.create_batch("set-variables", 1)
    engine.fail_jobs(migration, 2)
    engine.fail_jobs(variables, 1, activity_id="Task_C")
    jobs = {j["id"]: j for j in await get_json(engine_client, "/job?withException=true")}

    log = await get_json(engine_client, "/history/job-log?failureLog=true")

    assert len(log) == 3
    for entry in log:
        job = jobs[entry["jobId"]]
        assert entry["jobExceptionMessage"] == job["exceptionMessage"]
        assert entry["failedActivityId"] == job["failedActivityId"]
        assert entry["processInstanceId"] == job["processInstanceId"]
    assert {e["failedActivityId"] for e in log} == {None, "Task_C"}
    assert sum(e["processInstanceId"] is not None for e in log) == 1


def test_migration_message_is_the_engines_validation_report() -> None:
    """ENGINE-23004's text, as MigratingProcessInstanceValidationReportImpl writes it."""
    message = migration_failure_message("pi-1", "Task_X")

    lines = message.split("\n")
    assert lines[0] == "ENGINE-23004 Cannot migrate process instance 'pi-1':"
    assert lines[1].startswith("\tCannot migrate activity instance 'Task_X:")
    assert lines[2] == "\t\tThere is no migration instruction for this instance's activity"
    assert message == migration_failure_message("pi-1", "Task_X")  # stable per instance
