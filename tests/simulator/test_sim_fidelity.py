"""The fakes answer like the real upstreams: the engine's DTOs (key order, field sets, error
codes), its user-operation and historic job logs as the engine writes them, its date formats;
Datadog's results as datadog-ci reads them."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from batchscope.simulator.datadog import SAMPLE_METADATA, FakeDatadog
from batchscope.simulator.engine import FakeEngine
from sim_support import DD_HEADERS, FakeClock, get_json

REAL = json.loads(
    (Path(__file__).parents[1] / "fixtures" / "real_bodies" / "camunda7-dto-utc.json")
    .read_text()
)
BATCH_PATH = "/api/v1/synthetics/ci/batch/"


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


# --------------------------------------------------------------------------- engine DTOs


async def test_rows_have_the_real_dtos_keys_in_order(
    engine: FakeEngine, engine_client: TestClient
) -> None:
    """Statistics, batch, historic batch and user-operation rows have exactly the keys of the
    engine's own DTOs, in the engine's order."""
    batch = engine.create_batch()
    engine.suspend(batch)
    engine.delete(batch)
    running = engine.create_batch()

    [stats] = await get_json(engine_client, f"/batch/statistics?batchId={running}")
    single = await get_json(engine_client, f"/batch/{running}")
    historic = await get_json(engine_client, f"/history/batch/{batch}")
    entries = await get_json(engine_client, f"/history/user-operation?batchId={batch}")

    assert list(stats) == list(REAL["statistics_row_seeding"][0])
    assert list(single) == list(REAL["batch_by_id"])
    assert list(historic) == list(REAL["history_row_completed"])
    assert [list(e) for e in entries] == [list(REAL["user_operation_delete"][0])] * 2


@pytest.mark.parametrize(
    ("path", "status", "real"),
    [
        ("/batch/nope", 404, "error_404_batch"),
        ("/history/batch/nope", 404, "error_404_history"),
        ("/history/batch?sortBy=endTimeX&sortOrder=desc", 400, "error_400_sortBy"),
    ],
)
async def test_errors_are_the_real_exception_dtos(
    engine_client: TestClient, path: str, status: int, real: str
) -> None:
    """404s and invalid parameters answer the engine's ExceptionDto, code null."""
    body = await get_json(engine_client, path, status=status)
    assert list(body) == list(REAL[real])
    assert body["code"] is None
    if real != "error_400_sortBy":
        assert body == REAL[real]
    else:
        assert body["message"] == REAL[real]["message"]


async def test_max_results_errors_carry_code_0(aiohttp_client: AiohttpClient) -> None:
    """Bad-user-request 400s (max results, unbound results) carry code 0, as in 7.18+."""
    engine = FakeEngine(query_max_results_limit=200, username="monitor", password="pw")
    client = await aiohttp_client(engine.app, headers=basic("monitor", "pw"))

    too_many = await get_json(client, "/batch/statistics?maxResults=201", status=400)
    unbound = await get_json(client, "/history/batch", status=400)

    assert too_many == REAL["error_400_max_results"]
    assert unbound == REAL["error_400_unbound"]


async def test_unknown_engine_behind_filter_is_the_filters_raw_body(
    aiohttp_client: AiohttpClient,
) -> None:
    """The filter's 404 for an unknown engine name is the exact text the engine writes."""
    engine = FakeEngine(bearer_token="t0ken")
    client = await aiohttp_client(engine.app)
    async with client.get("/engine/nope/batch/statistics") as resp:
        assert resp.status == 404
        assert await resp.text() == REAL["error_404_engine_filter_raw"]


async def test_removal_time_comes_from_the_batch_history_ttl(
    aiohttp_client: AiohttpClient, clock: FakeClock
) -> None:
    """With batchOperationHistoryTimeToLive, an ended batch gets endTime + TTL as its
    removalTime; a running one has none."""
    engine = FakeEngine(clock=clock, utc_offset="+0000", batch_history_ttl=7 * 86400)
    done, running = engine.create_batch(), engine.create_batch()
    clock.advance(60)
    engine.finish(done)
    client = await aiohttp_client(engine.app)

    ended = await get_json(client, f"/history/batch/{done}")
    still = await get_json(client, f"/history/batch/{running}")

    assert ended["endTime"] == "2016-01-25T12:34:42.165+0000"
    assert ended["removalTime"] == "2016-02-01T12:34:42.165+0000"
    assert still["removalTime"] is None


@pytest.mark.parametrize(
    ("date_format", "zone", "offset", "expected"),
    [
        ("yyyy-MM-dd'T'HH:mm:ss.SSSZ", None, "+0200", "2016-01-25T14:33:42.165+0200"),
        ("yyyy-MM-dd'T'HH:mm:ss.SSSXXX", None, "+0200", "2016-01-25T14:33:42.165+02:00"),
        ("yyyy-MM-dd'T'HH:mm:ss.SSSXXX", None, "+0000", "2016-01-25T12:33:42.165Z"),
        ("yyyy-MM-dd'T'HH:mm:ss.SSSz", "CEST", "+0200", "2016-01-25T14:33:42.165CEST"),
        ("yyyy-MM-dd'T'HH:mm:ssZ", None, "-0500", "2016-01-25T07:33:42-0500"),
        ("dd.MM.yyyy HH:mm", None, "+0000", "25.01.2016 12:33"),
    ],
)
async def test_configured_date_formats(
    aiohttp_client: AiohttpClient, clock: FakeClock, date_format: str, zone: str | None,
    offset: str, expected: str,
) -> None:
    """The REST API's dateFormat setting changes how every date is written."""
    engine = FakeEngine(clock=clock, utc_offset=offset, date_format=date_format, zone_name=zone)
    engine.create_batch()
    client = await aiohttp_client(engine.app)
    [row] = await get_json(client, "/batch/statistics")
    assert row["startTime"] == expected


async def test_date_format_can_be_any_function(
    aiohttp_client: AiohttpClient, clock: FakeClock
) -> None:
    """A custom pattern (here Java's Date.toString) renders in the JVM's zone."""
    engine = FakeEngine(clock=clock, utc_offset="+0100",
                        date_format=lambda m: m.strftime("%a %b %d %H:%M:%S CET %Y"))
    engine.create_batch()
    client = await aiohttp_client(engine.app)
    [row] = await get_json(client, "/batch/statistics")
    assert row["startTime"] == "Mon Jan 25 13:33:42 CET 2016"


def test_date_format_with_zone_letter_needs_a_zone_name() -> None:
    """The z pattern prints a zone name, so the fake must be told which."""
    with pytest.raises(ValueError, match="zone_name"):
        FakeEngine(date_format="yyyy-MM-dd'T'HH:mm:ss.SSSz")
    with pytest.raises(ValueError, match="date_format"):
        FakeEngine(date_format="yyyy/MM/dd")


# --------------------------------------------------------------------------- user-operation log


async def test_unauthenticated_delete_writes_no_user_operation(
    engine: FakeEngine, engine_client: TestClient
) -> None:
    """By default (restrictUserOperationLogToAuthenticatedUsers) an unauthenticated delete or
    suspend leaves no user-operation entry; an authenticated one does."""
    anonymous, known = engine.create_batch(), engine.create_batch()
    engine.suspend(anonymous, user=None)
    engine.delete(anonymous, user=None)
    engine.delete(known, user="ops")

    assert await get_json(engine_client, f"/history/user-operation?batchId={anonymous}") == []
    [entry] = await get_json(engine_client, f"/history/user-operation?batchId={known}")
    assert (entry["operationType"], entry["userId"]) == ("Delete", "ops")


async def test_unrestricted_user_operation_log_logs_anonymous_deletes(
    aiohttp_client: AiohttpClient,
) -> None:
    """With restrictUserOperationLogToAuthenticatedUsers=false the entry is written with a
    null userId; below history FULL nothing is written either way."""
    engine = FakeEngine(restrict_user_operation_log=False)
    below_full = FakeEngine(restrict_user_operation_log=False, history=False)
    batch, other = engine.create_batch(), below_full.create_batch()
    engine.delete(batch, user=None)
    below_full.delete(other, user=None)

    [entry] = await get_json(await aiohttp_client(engine.app), "/history/user-operation")
    assert (entry["operationType"], entry["userId"], entry["batchId"]) == ("Delete", None, batch)
    assert await get_json(await aiohttp_client(below_full.app), "/history/user-operation") == []


# --------------------------------------------------------------------------- historic job log


async def job_log(client: TestClient, definition: str, query: str = "") -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = await get_json(
        client, f"/history/job-log?jobDefinitionId={definition}{query}"
    )
    return rows


def kinds(rows: list[dict[str, Any]]) -> list[str]:
    flags = ("creationLog", "failureLog", "successLog", "deletionLog")
    return [next(f.removesuffix("Log") for f in flags if row[f]) for row in rows]


async def test_job_log_follows_the_execution_jobs(
    engine: FakeEngine, engine_client: TestClient, clock: FakeClock
) -> None:
    """Creation entries when the seed job creates jobs, success and failure entries as they
    run, deletion entries for the jobs a delete removes; all on the execution jobs' job
    definition, with the batch's type and id as its type and configuration."""
    batch = engine.create_batch("instance-migration", total_jobs=5, jobs_per_seed=4)
    definition = engine.batch(batch).batch_job_definition_id
    clock.advance(1)
    engine.complete_jobs(batch, 2)
    clock.advance(1)
    engine.fail_jobs(batch, 1, message="boom")
    clock.advance(1)
    engine.delete(batch, user=None)

    rows = await job_log(engine_client, definition)

    assert kinds(rows) == ["creation"] * 4 + ["success"] * 2 + ["failure"] + ["deletion"] * 2
    created = {r["jobId"] for r in rows[:4]}
    ran = {r["jobId"] for r in rows[4:7]}
    deleted = [r for r in rows if r["deletionLog"]]
    # the failed job and the one never run; the fifth job was never created
    assert len(created) == 4 and len(ran) == 3 and ran < created
    assert {r["jobId"] for r in deleted} == created - ran | {rows[6]["jobId"]}
    assert rows[6]["jobExceptionMessage"] == "boom" and rows[6]["jobRetries"] == 1
    assert [r["jobRetries"] for r in deleted] == [3, 0]
    assert {(r["jobDefinitionType"], r["jobDefinitionConfiguration"], r["batchId"])
            for r in rows} == {("instance-migration", batch, batch)}
    assert deleted[0]["timestamp"] == "2016-01-25T13:33:45.165+0100"
    assert len({r["id"] for r in rows}) == len(rows)


async def test_job_log_keys_and_filters(
    engine: FakeEngine, engine_client: TestClient, clock: FakeClock
) -> None:
    """HistoricJobLogDto keys in order; deletionLog/successLog/jobDefinitionId filter, the
    newest first with sortBy=timestamp desc, paging and the count agree."""
    batch = engine.create_batch(total_jobs=4)
    other = engine.create_batch(total_jobs=2)
    definition = engine.batch(batch).batch_job_definition_id
    clock.advance(1)
    engine.complete_jobs(batch, 3)
    engine.complete_jobs(other, 2)
    clock.advance(1)
    engine.delete(batch)

    [row] = await job_log(engine_client, definition, "&deletionLog=true")
    successes = await job_log(engine_client, definition, "&successLog=true")
    newest = await job_log(engine_client, definition,
                           "&sortBy=timestamp&sortOrder=desc&firstResult=0&maxResults=1")
    everything = await get_json(engine_client, "/history/job-log")
    count = await get_json(engine_client, "/history/job-log/count?successLog=true")

    assert list(row) == [
        "id", "timestamp", "removalTime", "jobId", "jobDueDate", "jobRetries", "jobPriority",
        "jobExceptionMessage", "jobDefinitionId", "jobDefinitionType",
        "jobDefinitionConfiguration", "activityId", "failedActivityId", "executionId",
        "processInstanceId", "processDefinitionId", "processDefinitionKey", "deploymentId",
        "tenantId", "hostname", "rootProcessInstanceId", "batchId", "creationLog",
        "failureLog", "successLog", "deletionLog",
    ]
    assert row["deletionLog"] is True and row["jobDefinitionId"] == definition
    assert kinds(successes) == ["success"] * 3
    assert newest == [row]
    assert len(everything) == 4 + 2 + 3 + 2 + 1
    assert count == {"count": 5}


async def test_completed_batch_has_success_entries_only(
    engine: FakeEngine, engine_client: TestClient
) -> None:
    """A batch the monitor job completes has no deletion entry: finish runs what is left."""
    batch = engine.create_batch(total_jobs=150, jobs_per_seed=100)
    definition = engine.batch(batch).batch_job_definition_id
    engine.fail_jobs(batch, 2)
    engine.finish(batch)

    assert await job_log(engine_client, definition, "&deletionLog=true") == []
    successes = await job_log(engine_client, definition, "&successLog=true")
    assert len({r["jobId"] for r in successes}) == 150


async def test_deleting_failed_jobs_by_hand(
    engine: FakeEngine, engine_client: TestClient, clock: FakeClock
) -> None:
    """Cockpit's "delete job" on failed jobs: deletion entries, the jobs count as completed,
    and the batch can finish."""
    batch = engine.create_batch(total_jobs=4)
    definition = engine.batch(batch).batch_job_definition_id
    engine.complete_jobs(batch, 2)
    engine.fail_jobs(batch, 2)
    clock.advance(10)
    engine.delete_failed_jobs(batch)
    [row] = await get_json(engine_client, f"/batch/statistics?batchId={batch}")
    clock.advance(20)
    engine.finish(batch)

    deleted = await job_log(engine_client, definition, "&deletionLog=true")
    assert (row["completedJobs"], row["failedJobs"], row["remainingJobs"]) == (4, 0, 0)
    assert len(deleted) == 2 and {r["timestamp"] for r in deleted} == {
        "2016-01-25T13:33:52.165+0100"}
    historic = await get_json(engine_client, f"/history/batch/{batch}")
    assert historic["endTime"] == "2016-01-25T13:34:12.165+0100"


async def test_retried_jobs_run_again(engine: FakeEngine, engine_client: TestClient) -> None:
    """A failed job given retries runs again: its next entry is for the same job id."""
    batch = engine.create_batch(total_jobs=3)
    definition = engine.batch(batch).batch_job_definition_id
    engine.fail_jobs(batch, 1)
    engine.retry_failed(batch)
    engine.complete_jobs(batch, 1)

    failure = await job_log(engine_client, definition, "&failureLog=true")
    success = await job_log(engine_client, definition, "&successLog=true")
    assert [r["jobId"] for r in failure] == [r["jobId"] for r in success]


async def test_no_job_log_below_full_or_after_cleanup(
    aiohttp_client: AiohttpClient, clock: FakeClock
) -> None:
    """Below history FULL there is no job log; history cleanup removes a batch's job log."""
    below_full = FakeEngine(clock=clock, history=False)
    full = FakeEngine(clock=clock)
    a, b = below_full.create_batch(), full.create_batch()
    below_full.complete_jobs(a, 5)
    full.finish(b)
    full.remove_history(b)

    assert await get_json(await aiohttp_client(below_full.app), "/history/job-log") == []
    assert await get_json(await aiohttp_client(full.app), "/history/job-log") == []
    assert full.job_log(b) == []


async def test_legacy_job_log_has_no_batch_id(aiohttp_client: AiohttpClient) -> None:
    """Job log entries carry batchId only from 7.22; a legacy engine has none."""
    engine = FakeEngine(legacy=True)
    engine.create_batch(total_jobs=1)
    [row] = await get_json(await aiohttp_client(engine.app), "/history/job-log")
    assert "batchId" not in row and row["creationLog"] is True


async def test_bulk_created_batches_stay_cheap_in_the_job_log(
    aiohttp_client: AiohttpClient,
) -> None:
    """10,000 batches of 100 jobs keep one creation run each; a page is rendered lazily."""
    engine = FakeEngine()
    ids = engine.create_many(10_000)
    assert [len(engine.job_log(b)) for b in ids[:3]] == [1, 1, 1]
    client = await aiohttp_client(engine.app)
    rows = await get_json(client, "/history/job-log?firstResult=0&maxResults=5")
    assert len(rows) == 5 and all(r["creationLog"] for r in rows)


# --------------------------------------------------------------------------- datadog


async def get_results(client: TestClient, batch_id: str) -> list[dict[str, Any]]:
    body = await get_json(client, BATCH_PATH + batch_id, headers=DD_HEADERS)
    results: list[dict[str, Any]] = body["data"]["results"]
    return results


async def test_in_progress_result_as_datadog_ci_reads_it(
    datadog: FakeDatadog, datadog_client: TestClient
) -> None:
    """While running, duration is 0 (not null) and retries/timed_out are null; max_retries
    is null when the test has none configured; an API test has no device."""
    batch_id = datadog.create_batch(tests=[
        {"test_public_id": "aaa-aaa-aaa", "test_type": "api", "max_retries": None},
    ], metadata={})
    [result] = await get_results(datadog_client, batch_id)
    assert result["duration"] == 0
    assert (result["retries"], result["max_retries"], result["timed_out"]) == (None, None, None)
    assert "device" not in result and "initial_result_id" not in result


async def test_finished_result_without_retry(
    datadog: FakeDatadog, datadog_client: TestClient, clock: FakeClock
) -> None:
    """A result that passed at the first attempt has retries 0, timed_out false, a duration
    and keeps its result_id."""
    batch_id = datadog.create_batch()
    [before, _] = await get_results(datadog_client, batch_id)
    clock.advance(1.5)
    datadog.finish(batch_id, "passed")
    [after, _] = await get_results(datadog_client, batch_id)
    assert after["result_id"] == before["result_id"]
    assert (after["retries"], after["timed_out"], after["duration"]) == (0, False, 1500.0)


async def test_selective_rerun_skips(datadog: FakeDatadog, datadog_client: TestClient) -> None:
    """A test skipped by a selective rerun is a skipped entry with its decision and no
    location, result_id or duration; a rerun decision on a run test is passed through."""
    skip = {"decision": "skip", "reason": "passed", "linked_result_id": "123"}
    run = {"decision": "run", "reason": "failed", "linked_result_id": "456"}
    batch_id = datadog.create_batch(tests=[
        {"test_public_id": "aaa-aaa-aaa", "selective_rerun": skip},
        {"test_public_id": "bbb-bbb-bbb", "selective_rerun": run},
    ], metadata={})
    skipped, rerun = await get_results(datadog_client, batch_id)
    assert (skipped["status"], skipped["execution_rule"]) == ("skipped", "skipped")
    assert skipped["selective_rerun"] == skip
    assert not {"location", "result_id", "duration", "device"} & set(skipped)
    assert (skipped["retries"], skipped["max_retries"], skipped["timed_out"]) == (None,) * 3
    assert rerun["selective_rerun"] == run and rerun["status"] == "in_progress"
    assert isinstance(rerun["result_id"], str)


def test_sample_metadata_is_what_datadog_ci_sends() -> None:
    """The sample CI metadata spells the commit as datadog-ci does (git.commit.sha) and has
    the CI job and provider names."""
    assert SAMPLE_METADATA["git"]["commit"]["sha"]
    assert "commitSha" not in SAMPLE_METADATA["git"]
    assert SAMPLE_METADATA["ci"]["job"]["name"] and SAMPLE_METADATA["ci"]["provider"]["name"]

