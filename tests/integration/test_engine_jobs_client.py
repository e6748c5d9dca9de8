"""The engine's job lookups (sources/engine_jobs.py) against the simulated engine over real
loopback HTTP: the failed execution jobs of a batch as Cockpit asks for them, failed seed and
monitor jobs, job counts, the engine's paging rules, and its errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from batchscope import redaction
from batchscope.model import FailedJob
from batchscope.settings.models import EngineTarget
from batchscope.simulator.engine import FakeEngine
from batchscope.simulator.server import RunningSimulator, start_simulator
from batchscope.sources.engine import EngineClient
from batchscope.sources.engine_jobs import MESSAGE_LIMIT, EngineJobs
from batchscope.sources.fetch import PollError


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    async with await start_simulator(engine=FakeEngine()) as running:
        yield running


def lookups(session: aiohttp.ClientSession, url: str, **target: Any) -> EngineJobs:
    settings: dict[str, Any] = {"name": "prod", "url": url, "request_timeout": 2, **target}
    return EngineJobs(EngineClient(EngineTarget(**settings), session))


def job_requests(engine: FakeEngine) -> list[str]:
    """The job requests the engine received (paths below the REST root, with queries)."""
    paths = [r.path_qs.removeprefix("/engine-rest") for r in engine.requests]
    return [p for p in paths if p.startswith(("/job?", "/job/"))]


async def test_failed_execution_jobs_are_what_cockpit_shows(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    """One request (the sample fits a page) for the failed execution jobs: each with its
    message, failed activity and process instance as the engine has them."""
    engine = sim.engine
    batch = engine.create_batch("instance-migration", 20)
    definition = engine.batch(batch).batch_job_definition_id
    engine.complete_jobs(batch, 5)
    engine.fail_jobs(batch, 2)
    engine.fail_jobs(batch, 3, message="boom", activity_id="Task_B",
                     process_instance_ids=["pi-1", "pi-2", "pi-3"])

    found = await lookups(session, sim.engine_url).failed_execution_jobs(definition, 50)

    [request] = job_requests(engine)
    assert request.startswith(f"/job?jobDefinitionId={definition}&withException=true"
                              "&noRetriesLeft=true&")
    assert "maxResults=50" in request and "firstResult=0" in request
    assert {j.job_id for j in found} == set(engine.failed_job_ids(batch))
    assert [j.job_id for j in found] == sorted(j.job_id for j in found)
    given = sorted((j.message, j.activity_id, j.process_instance_id) for j in found
                   if j.message == "boom")
    assert given == [("boom", "Task_B", f"pi-{i}") for i in (1, 2, 3)]
    defaults = [j for j in found if j.message != "boom"]
    assert len(defaults) == 2 and all(
        j.message is not None and j.message.startswith("ENGINE-23004 Cannot migrate process "
                                                       "instance '")
        and j.activity_id is None and j.process_instance_id is None for j in defaults)
    assert {j.job_definition_id for j in found} == {definition}


async def test_the_sample_is_read_in_pages_of_page_size(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    """A sample larger than page_size takes several pages, each job once; a sample smaller
    than the failures takes only the sample."""
    engine = sim.engine
    batch = engine.create_batch("instance-deletion", 40)
    definition = engine.batch(batch).batch_job_definition_id
    engine.fail_jobs(batch, 25)
    jobs = lookups(session, sim.engine_url, page_size=10)

    everything = await jobs.failed_execution_jobs(definition, 50)
    paged = job_requests(engine)
    engine.clear_requests()
    three = await jobs.failed_execution_jobs(definition, 3)

    assert len(everything) == 25 and len({j.job_id for j in everything}) == 25
    assert len(paged) == 3 and all("maxResults=10" in p for p in paged)
    assert [j.job_id for j in three] == [j.job_id for j in everything[:3]]
    assert len(job_requests(engine)) == 1 and "maxResults=3" in job_requests(engine)[0]


async def test_an_engine_with_a_max_results_limit_is_paged_within_it(
    session: aiohttp.ClientSession,
) -> None:
    """queryMaxResultsLimit applies to authenticated requests: with page_size within the
    limit the sample is read; a page_size over it is the engine's 400 (http_4xx)."""
    engine = FakeEngine(username="monitor", password="pw", query_max_results_limit=10)
    async with await start_simulator(engine=engine) as sim:
        batch = engine.create_batch("instance-deletion", 30)
        definition = engine.batch(batch).batch_job_definition_id
        engine.fail_jobs(batch, 15)
        auth = {"username": "monitor", "password": "pw"}

        within = await lookups(session, sim.engine_url, page_size=10,
                               **auth).failed_execution_jobs(definition, 50)
        with pytest.raises(PollError) as over:
            await lookups(session, sim.engine_url, page_size=11,
                          **auth).failed_execution_jobs(definition, 50)

    assert len(within) == 15
    assert over.value.reason == "http_4xx" and "Max results limit of 10" in over.value.detail


async def test_failed_seed_and_monitor_jobs_in_one_request_each(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    """failed_job finds the seed or monitor job with no retries left (failedJobs does not
    count them), None while they are healthy; one request each."""
    engine = sim.engine
    seeding = engine.create_batch("instance-migration", 300, jobs_per_seed=100)
    finishing = engine.create_batch("instance-migration", 10)
    engine.complete_jobs(finishing, 10)
    seed_definition = engine.batch(seeding).seed_job_definition_id
    monitor_definition = engine.batch(finishing).monitor_job_definition_id
    jobs = lookups(session, sim.engine_url)

    healthy = (await jobs.failed_job(seed_definition), await jobs.failed_job(monitor_definition))
    engine.fail_seed_job(seeding, "seed broke")
    engine.fail_monitor_job(finishing)
    seed = await jobs.failed_job(seed_definition)
    monitor = await jobs.failed_job(monitor_definition)

    assert healthy == (None, None)
    assert seed == FailedJob(job_id=str(engine.seed_job_id(seeding)), message="seed broke",
                             process_instance_id=None, activity_id=None,
                             job_definition_id=seed_definition)
    assert monitor is not None and monitor.job_id == engine.monitor_job_id(finishing)
    assert monitor.message is not None and monitor.message.startswith("ENGINE-03083 ")
    assert len(job_requests(engine)) == 4
    assert all("noRetriesLeft=true" in p and "maxResults=1" in p for p in job_requests(engine))


async def test_job_counts_tell_a_batch_awaiting_its_monitor_job(
    sim: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    """/job/count of the execution jobs: what remains, 0 once every job ran (the batch
    awaits its monitor job), and with no_retries_left the failed ones only."""
    engine = sim.engine
    batch = engine.create_batch("instance-deletion", 10)
    definition = engine.batch(batch).batch_job_definition_id
    jobs = lookups(session, sim.engine_url)
    engine.complete_jobs(batch, 6)
    engine.fail_jobs(batch, 1)

    counts = (await jobs.job_count(definition),
              await jobs.job_count(definition, no_retries_left=True))
    engine.retry_failed(batch)
    engine.complete_jobs(batch, 4)

    assert counts == (4, 1)
    assert await jobs.job_count(definition) == 0
    assert await jobs.job_count("no-such-definition") == 0


async def test_named_engines_and_a_wrong_engine_name(session: aiohttp.ClientSession) -> None:
    """Under /engine/{name} the lookups work; a wrong engine name behind the auth filter is
    a 404 that says nothing about jobs: a PollError http_4xx, never "no failed job"."""
    engine = FakeEngine(engine_name="billing", username="monitor", password="pw")
    async with await start_simulator(engine=engine) as sim:
        batch = engine.create_batch("instance-deletion", 5)
        engine.fail_jobs(batch, 1)
        definition = engine.batch(batch).batch_job_definition_id
        auth = {"username": "monitor", "password": "pw"}

        found = await lookups(session, f"{sim.engine_url}/engine/billing",
                              **auth).failed_execution_jobs(definition, 50)
        wrong = lookups(session, f"{sim.engine_url}/engine/nope", **auth)
        for lookup in (wrong.failed_job(definition), wrong.failed_execution_jobs(definition, 5),
                       wrong.job_count(definition)):
            with pytest.raises(PollError) as caught:
                await lookup
            assert caught.value.reason == "http_4xx" and caught.value.status == 404
            assert "Process engine nope not available" in caught.value.detail

    assert len(found) == 1


@pytest.mark.parametrize(("fault", "reason"), [
    ({"status": 500, "body": '{"type":"ProcessEngineException","message":"down","code":0}'},
     "http_5xx"),
    ({"truncate": True}, "invalid_response"),
    ({"status": 200, "body": "[{"}, "invalid_response"),
    ({"delay": 1.5}, "timeout"),
])
async def test_a_failing_job_endpoint_is_a_poll_error(
    sim: RunningSimulator, session: aiohttp.ClientSession, fault: dict[str, Any], reason: str
) -> None:
    """Errors, a cut body, malformed JSON and a slow answer of /job: PollError with the
    engine source's reasons, within the request timeout."""
    engine = sim.engine
    batch = engine.create_batch("instance-deletion", 5)
    engine.fail_jobs(batch, 1)
    engine.inject("/job?", **fault)
    jobs = lookups(session, sim.engine_url, request_timeout=0.5)

    with pytest.raises(PollError) as caught:
        await jobs.failed_execution_jobs(engine.batch(batch).batch_job_definition_id, 5)

    assert caught.value.reason == reason


async def test_hostile_messages_are_data_cut_and_without_our_secrets(
    session: aiohttp.ClientSession,
) -> None:
    """An exception message with markup, control characters, our engine password and 900
    more characters: kept as text, the password hidden, cut to at most 500 characters."""
    password = "hunter2-secret-engine-pw"
    engine = FakeEngine(username="monitor", password=password)
    hostile = f"<b>x</b>\x1b[2J\n{{{{7*7}}}} monitor:{password} " + "y" * 900
    redaction.reset([password])
    try:
        async with await start_simulator(engine=engine) as sim:
            batch = engine.create_batch("instance-deletion", 5)
            engine.fail_jobs(batch, 1, message=hostile)
            [job] = await lookups(session, sim.engine_url, username="monitor",
                                  password=password).failed_execution_jobs(
                engine.batch(batch).batch_job_definition_id, 5)
    finally:
        redaction.reset()

    assert job.message is not None and len(job.message) <= MESSAGE_LIMIT
    assert job.message.startswith("<b>x</b>\x1b[2J\n{{7*7}} monitor:")
    assert password not in job.message and job.message.endswith("…")
