"""The engine and Datadog clients against upstreams that answer like the real ones, over real
loopback HTTP: the real engine bodies, configured date formats, foreign 404s, delete evidence
from the historic job log, and Datadog results and metadata as datadog-ci sees them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from batchscope.model import Notice
from batchscope.settings.models import DatadogTarget, EngineTarget
from batchscope.simulator.datadog import FakeDatadog
from batchscope.simulator.engine import FakeEngine
from batchscope.simulator.server import RunningSimulator, start_simulator
from batchscope.sources.datadog import DatadogClient
from batchscope.sources.engine import EngineClient
from batchscope.sources.fetch import PollError

REAL_BODIES = Path(__file__).parents[1] / "fixtures" / "real_bodies"
BATCH = "d2bd4a2e-3e1b-11ef-9a1b-0242ac120002"
START = 1720524822.165  # the real bodies' startTime, 2024-07-09T11:33:42.165Z
END = 1720526465.999
DD_KEYS = {"api_key": "k-api", "app_key": "k-app"}
JAVA_DATE = "%a %b %d %H:%M:%S CET %Y"  # java.util.Date.toString(): no parser reads it

AiohttpServer = Callable[[web.Application], Awaitable[TestServer]]


class Clock:
    """Epoch seconds that move only when a test says so."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def simulator(engine: FakeEngine | None = None,
                    datadog: FakeDatadog | None = None) -> RunningSimulator:
    return await start_simulator(engine=engine, datadog=datadog or FakeDatadog(
        api_key=DD_KEYS["api_key"], app_key=DD_KEYS["app_key"]))


def engine_client(session: aiohttp.ClientSession, url: str, name: str = "prod",
                  **target: Any) -> EngineClient:
    return EngineClient(EngineTarget(name=name, url=url, page_size=50, request_timeout=5,
                                     **target), session)


def datadog_client(session: aiohttp.ClientSession, url: str) -> DatadogClient:
    return DatadogClient(DatadogTarget(name="ci", url=url, request_timeout=5, **DD_KEYS),
                         session)


def paths(engine: FakeEngine, part: str) -> list[str]:
    return [r.path_qs for r in engine.requests if part in r.path_qs]


# --------------------------------------------------------------------------- real bodies


def real_engine_app(bodies: dict[str, Any], seen: list[str]) -> web.Application:
    """An engine that answers with the real DTO bodies of one JVM time zone."""

    def answer(payload: object, status: int = 200) -> web.Response:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        return web.Response(text=text, status=status, content_type="application/json")

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.path_qs)
        path = request.path
        if path == "/engine-rest/batch/statistics":
            return answer([*bodies["statistics_row_seeding"],
                           *bodies["statistics_row_suspended_failed"]])
        if path == "/engine-rest/history/batch":
            return answer(bodies["history_list_completed_with_removal"])
        if path == f"/engine-rest/history/batch/{BATCH}":
            return answer(bodies["history_row_completed"])
        if path == f"/engine-rest/batch/{BATCH}":
            return answer(bodies["batch_by_id"])
        if path == "/engine-rest/history/user-operation":
            delete = request.query.get("batchId") == BATCH
            return answer(bodies["user_operation_delete" if delete else "user_operation_empty"])
        if path.startswith("/engine-rest/history/batch/"):
            return answer(bodies["error_404_history"], 404)
        if path.startswith("/engine-rest/batch/"):
            return answer(bodies["error_404_batch"], 404)
        if path.startswith("/engine-rest/engine/"):
            return answer(bodies["error_404_engine_filter_raw"], 404)
        return answer(bodies["error_400_sortBy"], 400)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    return app


@pytest.mark.parametrize("zone", ["camunda7-dto-utc.json", "camunda7-dto-europe-berlin.json"])
async def test_client_reads_every_real_body(
    aiohttp_server: AiohttpServer, session: aiohttp.ClientSession, zone: str
) -> None:
    """Listings, lookups, the user-operation log and the engine's own 404s, as the engine's
    DTOs write them in either JVM zone, give the same instants and answers."""
    bodies = json.loads((REAL_BODIES / zone).read_text())
    seen: list[str] = []
    server = await aiohttp_server(real_engine_app(bodies, seen))
    client = engine_client(session, str(server.make_url("/engine-rest")))

    listing = await client.runtime_batches()
    history = await client.finished_since(END - 60)
    record = await client.history_record(BATCH)
    gone = await client.history_record("nope")
    running, not_running = await client.still_running(BATCH), await client.still_running("nope")
    assert record is not None
    evidence = await client.with_delete_evidence(record)
    wrong_engine = engine_client(session, str(server.make_url("/engine-rest/engine/nope")))
    with pytest.raises(PollError) as caught:
        await wrong_engine.history_record(BATCH)

    assert [r.batch_id for r in listing.rows] == [BATCH, "f00d"]
    assert listing.rows[0].start_time == pytest.approx(START)
    assert listing.warnings == [] and history.warnings == [] and listing.skipped == []
    [swept] = history.rows
    assert swept.end_time == pytest.approx(END) and swept.removal_time == pytest.approx(
        END + 7 * 86400)
    assert record.end_time == pytest.approx(END) and record.batch_job_definition_id == "job-1"
    assert gone is None and running is True and not_running is False
    assert evidence.deleted is True
    assert not [p for p in seen if "/history/job-log" in p]  # the Delete entry sufficed
    assert caught.value.reason == "http_4xx" and "Process engine nope" in caught.value.detail


# --------------------------------------------------------------------------- foreign 404s


async def test_engines_own_not_found_answers_mean_gone(session: aiohttp.ClientSession) -> None:
    """The engine's "does not exist" ExceptionDtos: no history row, not running."""
    engine = FakeEngine()
    done = engine.create_batch()
    engine.finish(done)
    async with await simulator(engine) as sim:
        client = engine_client(session, sim.engine_url)
        assert await client.history_record("never-existed") is None
        assert await client.still_running(done) is False
        assert await client.still_running("never-existed") is False
        record = await client.history_record(done)
        assert record is not None and record.ended


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("<html><body><h1>404 Not Found</h1>nginx</body></html>", "text/html"),
        ('{"detail": "Not Found"}', "application/json"),
        ("", "application/json"),
        ("Not Found", "text/plain"),
        ('{"type":"InvalidRequestException","message":"Process engine x not available",'
         '"code":null}', "application/json"),
        ('{"type":"InvalidRequestException","message":"Historic batch with id \'other\' does '
         'not exist","code":null}', "application/json"),
    ],
    ids=["html", "detail", "empty", "text", "engine-filter", "other-id"],
)
async def test_foreign_404_is_a_target_error(
    session: aiohttp.ClientSession, body: str, content_type: str
) -> None:
    """A 404 that is not the engine's answer about this batch raises http_4xx from the
    history lookup and the runtime check: never "no history", never "not running"."""
    engine = FakeEngine()
    batch = engine.create_batch()
    async with await simulator(engine) as sim:
        client = engine_client(session, sim.engine_url)
        engine.inject(f"/history/batch/{batch}", status=404, body=body,
                      content_type=content_type)
        engine.inject(f"/batch/{batch}", status=404, body=body, content_type=content_type)
        for lookup in (client.history_record, client.still_running):
            with pytest.raises(PollError) as caught:
                await lookup(batch)
            assert caught.value.reason == "http_4xx" and caught.value.status == 404
        # the same lookups answer normally once the proxy is gone
        assert await client.still_running(batch) is True
        record = await client.history_record(batch)
        assert record is not None and not record.ended


@pytest.mark.parametrize("auth_filter", [True, False], ids=["filter", "no-filter"])
async def test_wrong_engine_name_is_a_target_error(
    session: aiohttp.ClientSession, auth_filter: bool
) -> None:
    """A base URL naming an engine that does not exist: the filter's 404 "Process engine X
    not available" or, without the filter, the 400 "No process engine available"."""
    credentials = {"username": "monitor", "password": "pw"} if auth_filter else {}
    engine = FakeEngine(engine_name="prod", **credentials)
    batch = engine.create_batch()
    async with await simulator(engine) as sim:
        client = engine_client(session, f"{sim.engine_url}/engine/payments", **credentials)
        for lookup in (client.history_record, client.still_running):
            with pytest.raises(PollError) as caught:
                await lookup(batch)
            assert caught.value.reason == "http_4xx"
            assert caught.value.status == (404 if auth_filter else 400)
        with pytest.raises(PollError, match=r"not available|No process engine"):
            await client.runtime_batches()


@pytest.mark.parametrize(
    ("body", "content_type"),
    [("<html>404</html>", "text/html"), ('{"detail": "Not Found"}', "application/json"),
     ("", "application/json")],
    ids=["html", "detail", "empty"],
)
async def test_datadog_foreign_404_is_a_target_error(
    session: aiohttp.ClientSession, body: str, content_type: str
) -> None:
    """Only Datadog's {"errors": [...]} 404 means not found (None); another 404 raises."""
    async with await simulator() as sim:
        client = datadog_client(session, sim.datadog_url)
        batch = sim.datadog.create_batch()
        assert await client.batch("not-yet") is None
        sim.datadog.inject(f"/ci/batch/{batch}", status=404, body=body,
                           content_type=content_type)
        with pytest.raises(PollError) as caught:
            await client.batch(batch)
        assert caught.value.reason == "http_4xx" and caught.value.status == 404
        parsed = await client.batch(batch)
        assert parsed is not None and parsed.snapshot.status == "in_progress"


# --------------------------------------------------------------------------- dates


async def test_unreadable_dates_keep_rows_and_warn_once_per_target(
    session: aiohttp.ClientSession, clock: Clock
) -> None:
    """With a date format no parser knows, batches are still tracked with null dates; each
    (endpoint, field) is reported once per target, whatever the number of listings."""
    engine = FakeEngine(clock=clock, date_format=lambda m: m.strftime(JAVA_DATE))
    first = engine.create_batch(total_jobs=10)
    second = engine.create_batch(total_jobs=10)
    engine.complete_jobs(first, 1)
    async with await simulator(engine) as sim:
        client = engine_client(session, sim.engine_url)
        listing = await client.runtime_batches()
        again = await client.runtime_batches()
        other_target = engine_client(session, sim.engine_url, name="other")
        other = await other_target.runtime_batches()

    assert sorted(r.batch_id for r in listing.rows) == sorted([first, second])
    assert all(r.start_time is None for r in listing.rows) and listing.skipped == []
    assert [notice_fields(n) for n in listing.warnings] == [
        ("prod", "/batch/statistics", "startTime"),
        ("prod", "/batch/statistics", "executionStartTime"),
    ]
    warning = listing.warnings[0]
    assert (warning.event, warning.level) == ("upstream.date_unparsable", "warning")
    assert warning.fields["source"] == "engine"
    assert warning.fields["value"] == "Tue Jul 09 12:33:42 CET 2024"  # the JVM zone, +0100
    assert again.warnings == [] and len(again.rows) == 2
    assert [notice_fields(n)[0] for n in other.warnings] == ["other", "other"]


def notice_fields(notice: Notice) -> tuple[str, str, str]:
    f = notice.fields
    return (f["target"], f["endpoint"], f["field"])


async def test_warning_value_is_cut(session: aiohttp.ClientSession, clock: Clock) -> None:
    """An unreadable value is quoted in at most 64 characters."""
    engine = FakeEngine(clock=clock, date_format=lambda m: "x" * 500)
    engine.create_batch()
    async with await simulator(engine) as sim:
        listing = await engine_client(session, sim.engine_url).runtime_batches()
    assert listing.warnings[0].fields["value"] == "x" * 64


async def test_unreadable_end_time_still_ends(session: aiohttp.ClientSession,
                                              clock: Clock) -> None:
    """A history row with an unreadable endTime has ended: in the sweep and in the
    lookup; the lookup's warning comes with the next listing, each once."""
    engine = FakeEngine(clock=clock, date_format=lambda m: m.strftime(JAVA_DATE))
    done = engine.create_batch()
    clock.now += 30
    engine.finish(done)
    async with await simulator(engine) as sim:
        client = engine_client(session, sim.engine_url)
        record = await client.history_record(done)
        swept = await client.finished_since(START)
        listing = await client.runtime_batches()
        swept_again = await client.finished_since(START)

    assert record is not None and record.ended and record.end_time_unreadable
    assert record.end_time is None
    [row] = swept.rows
    assert row.batch_id == done and row.ended
    fields = {(n.fields["endpoint"], n.fields["field"]) for n in swept.warnings}
    assert ("/history/batch/{id}", "endTime") in fields  # the lookup's, handed on
    assert ("/history/batch", "endTime") in fields
    assert listing.warnings == [] and swept_again.warnings == []


async def test_sweep_stops_on_a_page_without_readable_end_times(
    session: aiohttp.ClientSession, clock: Clock
) -> None:
    """When no endTime of a page can be read, the sweep does not page through the whole
    history on every cycle."""
    engine = FakeEngine(clock=clock, date_format=lambda m: m.strftime(JAVA_DATE))
    for _ in range(5):
        batch = engine.create_batch()
        clock.now += 1
        engine.finish(batch)
    async with await simulator(engine) as sim:
        swept = await engine_client(session, sim.engine_url).finished_since(START, page_size=2)
    assert len(swept.rows) == 2
    assert len(paths(engine, "/history/batch?")) == 1


@pytest.mark.parametrize(
    ("date_format", "zone", "offset"),
    [
        ("yyyy-MM-dd'T'HH:mm:ss.SSSZ", None, "+0200"),
        ("yyyy-MM-dd'T'HH:mm:ss.SSSXXX", None, "+0200"),
        ("yyyy-MM-dd'T'HH:mm:ss.SSSz", "CEST", "+0200"),
        ("yyyy-MM-dd'T'HH:mm:ss.SSSz", "EDT", "-0400"),
        ("yyyy-MM-dd'T'HH:mm:ssZ", None, "+0530"),
        ("dd.MM.yyyy HH:mm", None, "+0000"),
    ],
)
async def test_configured_date_formats_read_back(
    session: aiohttp.ClientSession, clock: Clock, date_format: str, zone: str | None,
    offset: str,
) -> None:
    """Every date format an installation may configure reads back to the engine's instant
    (to the precision the format keeps), without warnings."""
    engine = FakeEngine(clock=clock, date_format=date_format, zone_name=zone, utc_offset=offset)
    batch = engine.create_batch()
    clock.now += 125
    engine.finish(batch)
    async with await simulator(engine) as sim:
        client = engine_client(session, sim.engine_url)
        record = await client.history_record(batch)
        swept = await client.finished_since(START)
    precision = 60.0 if "ss" not in date_format else (1.0 if "SSS" not in date_format else 1e-3)
    assert record is not None
    assert record.start_time == pytest.approx(START, abs=precision)
    assert record.end_time == pytest.approx(START + 125, abs=precision)
    assert [r.batch_id for r in swept.rows] == [batch] and swept.warnings == []


# --------------------------------------------------------------------------- delete evidence


async def test_unauthenticated_delete_is_proven_by_the_job_log(
    session: aiohttp.ClientSession, clock: Clock
) -> None:
    """No user-operation entry (an unauthenticated delete), but the execution jobs were
    deleted at the batch's end: deleted, after one user-operation and one job-log request."""
    engine = FakeEngine(clock=clock)
    batch = engine.create_batch(total_jobs=10)
    engine.complete_jobs(batch, 3)
    clock.now += 5
    engine.delete(batch, user=None)
    async with await simulator(engine) as sim:
        client = engine_client(session, sim.engine_url)
        record = await client.history_record(batch)
        assert record is not None and not record.deleted
        evidence = await client.with_delete_evidence(record)
    assert evidence.deleted is True
    assert evidence.end_time == record.end_time and evidence.batch_id == batch
    [job_log] = paths(engine, "/history/job-log")
    definition = engine.batch(batch).batch_job_definition_id
    assert f"jobDefinitionId={definition}" in job_log and "deletionLog=true" in job_log
    assert "maxResults=1" in job_log
    assert len(paths(engine, "/history/user-operation")) == 1


async def test_authenticated_delete_needs_no_job_log(
    session: aiohttp.ClientSession, clock: Clock
) -> None:
    """When the user-operation log shows the Delete, the job log is not asked."""
    engine = FakeEngine(clock=clock)
    batch = engine.create_batch()
    engine.delete(batch, user="ops")
    async with await simulator(engine) as sim:
        client = engine_client(session, sim.engine_url)
        record = await client.history_record(batch)
        assert record is not None
        assert (await client.with_delete_evidence(record)).deleted is True
    assert paths(engine, "/history/job-log") == []


async def test_completed_batches_are_not_deleted(
    session: aiohttp.ClientSession, clock: Clock
) -> None:
    """A batch the monitor job completed has no delete evidence, even when failed jobs were
    deleted by hand before it completed; a running batch is not asked about at all."""
    engine = FakeEngine(clock=clock)
    plain, hand = engine.create_batch(total_jobs=5), engine.create_batch(total_jobs=5)
    running = engine.create_batch()
    engine.complete_jobs(plain, 5)
    engine.complete_jobs(hand, 3)
    engine.fail_jobs(hand, 2)
    clock.now += 10
    engine.delete_failed_jobs(hand)
    clock.now += 25  # the monitor job's next run completes it
    engine.finish(plain)
    engine.finish(hand)
    async with await simulator(engine) as sim:
        client = engine_client(session, sim.engine_url)
        records = [await client.history_record(b) for b in (plain, hand, running)]
        engine.clear_requests()
        results = [await client.with_delete_evidence(r) for r in records if r is not None]
    assert [r.deleted for r in results] == [False, False, False]
    assert len(paths(engine, "/history/job-log")) == 2  # not for the running one
    assert len(paths(engine, "/history/user-operation")) == 2


async def test_unreadable_end_time_with_deletions_is_deleted(
    session: aiohttp.ClientSession, clock: Clock
) -> None:
    """With an unreadable endTime the ended batch is still checked; any deletion entry of
    its execution jobs counts."""
    engine = FakeEngine(clock=clock, date_format=lambda m: m.strftime(JAVA_DATE))
    batch = engine.create_batch()
    engine.delete(batch, user=None)
    async with await simulator(engine) as sim:
        client = engine_client(session, sim.engine_url)
        record = await client.history_record(batch)
        assert record is not None and record.end_time is None and record.ended
        assert (await client.with_delete_evidence(record)).deleted is True


async def test_cascade_delete_leaves_no_history(session: aiohttp.ClientSession) -> None:
    """A cascading delete removes the historic batch: the engine's own 404, so None."""
    engine = FakeEngine()
    batch = engine.create_batch()
    engine.delete(batch, cascade=True, user=None)
    async with await simulator(engine) as sim:
        client = engine_client(session, sim.engine_url)
        assert await client.history_record(batch) is None
        assert await client.still_running(batch) is False


async def test_job_log_that_is_not_a_list_is_invalid(
    session: aiohttp.ClientSession, clock: Clock
) -> None:
    """A job log answer that is not a list is an invalid response, not "not deleted"."""
    engine = FakeEngine(clock=clock)
    batch = engine.create_batch()
    engine.delete(batch, user=None)
    async with await simulator(engine) as sim:
        client = engine_client(session, sim.engine_url)
        record = await client.history_record(batch)
        assert record is not None
        engine.inject("/history/job-log", status=200, body='{"count": 3}')
        with pytest.raises(PollError) as caught:
            await client.with_delete_evidence(record)
    assert caught.value.reason == "invalid_response"


# --------------------------------------------------------------------------- datadog


@pytest.mark.parametrize(
    "git",
    [{"branch": "main", "commit": {"sha": "abc123", "message": "m"}},
     {"branch": "main", "commitSha": "abc123"}],
    ids=["datadog-ci", "published-model"],
)
async def test_both_metadata_spellings(
    session: aiohttp.ClientSession, git: dict[str, Any]
) -> None:
    """The commit comes out the same from datadog-ci's git.commit.sha and the published
    model's git.commitSha; the CI job and provider names are read."""
    metadata = {"ci": {"job": {"name": "e2e"}, "provider": {"name": "github"},
                       "pipeline": {"url": "https://ci.example/1"}}, "git": git}
    async with await simulator() as sim:
        batch = sim.datadog.create_batch(metadata=metadata)
        parsed = await datadog_client(session, sim.datadog_url).batch(batch)
    assert parsed is not None
    meta = parsed.snapshot.metadata
    assert (meta.git_commit, meta.git_branch, meta.pipeline_url) == (
        "abc123", "main", "https://ci.example/1")
    assert (meta.job_name, meta.provider_name) == ("e2e", "github")


async def test_result_fields_through_a_fast_retry(
    session: aiohttp.ClientSession, clock: Clock
) -> None:
    """In progress: duration unknown, nulls; first attempt failed: same id, retries 0,
    timed_out false; final: new id, retries 1, initial_result_id; a selective-rerun skip
    has no location or id; max_retries as configured."""
    tests = [
        {"test_public_id": "abc-def-ghi", "location": "aws:eu-central-1",
         "device": "chrome.laptop_large", "max_retries": 1},
        {"test_public_id": "jkl-mno-pqr", "selective_rerun": {
            "decision": "skip", "reason": "passed", "linked_result_id": "42"}},
    ]
    datadog = FakeDatadog(clock=clock, **DD_KEYS)
    async with await simulator(datadog=datadog) as sim:
        client = datadog_client(session, sim.datadog_url)
        batch = datadog.create_batch(tests=tests, metadata={})

        async def results() -> tuple[Any, ...]:
            parsed = await client.batch(batch)
            assert parsed is not None and parsed.skipped_results == []
            return parsed.snapshot.results

        running, skipped = await results()
        clock.now += 2
        datadog.set_result(batch, "abc-def-ghi", new_attempt=True)
        retrying, _ = await results()
        clock.now += 2
        datadog.set_result(batch, "abc-def-ghi", status="passed")
        final, _ = await results()

    assert running.duration_ms is None and running.retries is None
    assert (running.timed_out, running.max_retries) == (None, 1)
    assert (retrying.result_id, retrying.retries, retrying.timed_out) == (
        running.result_id, 0, False)
    assert retrying.duration_ms == 2000.0 and retrying.status == "in_progress"
    assert final.result_id != running.result_id and final.retries == 1
    assert final.initial_result_id == running.result_id and final.status == "passed"
    assert (skipped.status, skipped.location, skipped.result_id) == ("skipped", "", None)
    assert (skipped.selective_rerun, skipped.linked_result_id) == ("skip", "42")
