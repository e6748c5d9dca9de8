"""The engine client's page memory (issue 12) over real loopback HTTP: each full
``/batch/statistics`` page is kept with its parse by offset, a page served again byte for
byte is answered with the remembered parse (the same snapshot objects) without decoding,
a page that differs is decoded and parsed, pages beyond a shrunk listing are forgotten,
and nothing the listing reports (counts, errors, date warnings, the paging guard) changes.

Upstreams are the simulator's FakeEngine or a hand-made aiohttp server whose pages the test
scripts byte for byte. Which pages were parsed is seen through a spy that wraps (and calls)
the engine module's ``parse_statistics_page``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from batchscope.settings.models import EngineTarget
from batchscope.simulator.engine import FakeEngine
from batchscope.simulator.server import start_simulator
from batchscope.sources import engine as engine_module
from batchscope.sources.engine import EngineClient, Listing
from batchscope.sources.fetch import PollError

AiohttpServer = Callable[[web.Application], Awaitable[TestServer]]

PAGE = 5  # page_size of every client here
START = 1720524822.165  # 2024-07-09T11:33:42.165Z
STATISTICS = "/batch/statistics"
UNREADABLE = "Tue Jul 09 12:33:42 CET 2024"  # java.util.Date.toString(): no parser reads it


class Clock:
    """Epoch seconds that never move: the fake engine's bodies depend on nothing else."""

    def __call__(self) -> float:
        return START


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def engine_client(session: aiohttp.ClientSession, url: str, name: str = "prod",
                  max_rows: int = 1000) -> EngineClient:
    return EngineClient(EngineTarget(name=name, url=url, page_size=PAGE, request_timeout=5),
                        session, max_rows=max_rows)


@dataclass
class ParseSpy:
    """The sizes of the pages ``parse_statistics_page`` was called on, in order."""

    sizes: list[int] = field(default_factory=list)

    def take(self) -> list[int]:
        taken, self.sizes = self.sizes, []
        return taken


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> ParseSpy:
    """Record every page the engine client parses (the real parse still runs)."""
    spy = ParseSpy()
    real = engine_module.parse_statistics_page

    def spying(page: list[object], problems: Any = None) -> Any:
        spy.sizes.append(len(page))
        return real(page, problems)

    monkeypatch.setattr(engine_module, "parse_statistics_page", spying)
    return spy


async def poll_error(call: Callable[[], Awaitable[Any]]) -> PollError:
    with pytest.raises(PollError) as caught:
        await asyncio.wait_for(call(), 10)
    return caught.value


def ids(listing: Listing) -> list[str]:
    return [r.batch_id for r in listing.rows]


# ------------------------------------------------------------ a scripted statistics server


def statistics_row(index: int, start_time: str = "2024-07-09T11:33:42.165+0000"
                   ) -> dict[str, Any]:
    """A ``BatchStatisticsDto`` as Camunda 7 renders it (tests/fixtures/real_bodies)."""
    return {
        "id": f"batch-{index:04d}", "type": "instance-migration", "totalJobs": 10,
        "jobsCreated": 10, "batchJobsPerSeed": 100, "invocationsPerBatchJob": 1,
        "seedJobDefinitionId": f"seed-{index}", "monitorJobDefinitionId": f"mon-{index}",
        "batchJobDefinitionId": f"job-{index}", "suspended": False, "tenantId": None,
        "createUserId": "demo", "startTime": start_time, "executionStartTime": None,
        "remainingJobs": 10, "completedJobs": 0, "failedJobs": 0,
    }


@dataclass
class Statistics:
    """What the hand-made engine serves: ``rows`` paged by firstResult/maxResults, except
    the offsets in ``override`` (answered with that (status, body) instead)."""

    rows: list[dict[str, Any]]
    override: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    url: str = ""


@pytest.fixture
async def scripted(aiohttp_server: AiohttpServer) -> Statistics:
    state = Statistics(rows=[statistics_row(i) for i in range(7)])

    async def handle(request: web.Request) -> web.Response:
        first = int(request.query["firstResult"])
        size = int(request.query["maxResults"])
        status, body = state.override.get(
            first, (200, json.dumps(state.rows[first:first + size]).encode()))
        return web.Response(status=status, body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/engine-rest/batch/statistics", handle)
    server = await aiohttp_server(app)
    state.url = str(server.make_url("/engine-rest"))
    return state


# ------------------------------------------------------------------ an unchanged engine


async def test_unchanged_engine_gets_the_very_rows_of_the_last_listing(
    session: aiohttp.ClientSession, parses: ParseSpy
) -> None:
    """Two listings of an engine whose batches did not move (12 batches, pages of 5): the
    rows are equal, the rows of the two full pages are the very objects of the first
    listing, and only the last (not full) page is parsed again."""
    engine = FakeEngine(clock=Clock())
    created = sorted(engine.create_batch(total_jobs=10) for _ in range(12))
    async with await start_simulator(engine=engine) as sim:
        client = engine_client(session, sim.engine_url)
        first = await client.runtime_batches()
        assert parses.take() == [5, 5, 2]
        second = await client.runtime_batches()
        assert parses.take() == [2]  # the full pages came from the memory

    assert ids(first) == created and first.skipped == [] and second.skipped == []
    assert second.rows == first.rows
    for before, after in zip(first.rows[:10], second.rows[:10], strict=True):
        assert after is before


# ------------------------------------------------------------------ a batch that moved


async def test_a_changed_page_is_parsed_and_the_next_steady_listing_reuses_it(
    session: aiohttp.ClientSession, parses: ParseSpy
) -> None:
    """One batch on page 1 completes a job: the next listing reads its new counts (a new
    snapshot), every row equals what a client without memory reads, and a third listing
    with no change returns the second's objects, parsing only the last page."""
    engine = FakeEngine(clock=Clock())
    created = sorted(engine.create_batch(total_jobs=10) for _ in range(12))
    moved = created[1]
    async with await start_simulator(engine=engine) as sim:
        client = engine_client(session, sim.engine_url)
        first = await client.runtime_batches()
        engine.complete_jobs(moved, 1)
        parses.take()
        second = await client.runtime_batches()
        assert parses.take() == [5, 2]  # page 1 changed; page 2 is still the same bytes
        third = await client.runtime_batches()
        assert parses.take() == [2]
        fresh = await engine_client(session, sim.engine_url, name="fresh").runtime_batches()

    old, new = first.rows[1], second.rows[1]
    assert (old.batch_id, new.batch_id) == (moved, moved)
    assert (old.jobs.completed, old.jobs.remaining) == (0, 10)
    assert (new.jobs.completed, new.jobs.remaining) == (1, 9)
    served = engine.statistics_row(moved)
    assert (served["completedJobs"], served["remainingJobs"]) == (1, 9)
    assert new is not old
    assert ids(second) == created
    assert second.rows == fresh.rows
    assert [r for i, r in enumerate(second.rows) if i != 1] == [
        r for i, r in enumerate(first.rows) if i != 1]
    for before, after in zip(second.rows[:10], third.rows[:10], strict=True):
        assert after is before
    assert third.rows == fresh.rows


# ------------------------------------------------------------------ bad answers at a known offset


@pytest.mark.parametrize(("body", "detail"), [
    (b'[{"id": "batch-0000", "type": ', "malformed JSON: "),
    (b'{"rows": []}', "/batch/statistics answered a dict, not a list"),
])
async def test_a_bad_answer_at_a_remembered_offset_fails_then_the_good_page_serves_again(
    session: aiohttp.ClientSession, scripted: Statistics, parses: ParseSpy,
    body: bytes, detail: str,
) -> None:
    """Page 1 was remembered; the next listing gets malformed JSON (or an object instead of
    the list) at that offset: invalid_response, as without the memory. When the good page
    is served again, the listing works and still answers it from the memory."""
    client = engine_client(session, scripted.url)
    first = await client.runtime_batches()
    parses.take()

    scripted.override[0] = (200, body)
    error = await poll_error(client.runtime_batches)
    assert error.reason == "invalid_response"
    assert detail in error.detail, error.detail
    assert parses.take() == []  # nothing parsed from the bad answer

    del scripted.override[0]
    again = await client.runtime_batches()
    assert parses.take() == [2]
    assert ids(again) == [f"batch-{i:04d}" for i in range(7)]
    assert again.rows == first.rows
    for before, after in zip(first.rows[:5], again.rows[:5], strict=True):
        assert after is before


# ------------------------------------------------------------------ a listing that shrinks


async def test_a_shrunk_listing_has_only_the_remaining_batches_then_only_the_new_ones(
    session: aiohttp.ClientSession,
) -> None:
    """17 batches (3 full pages), then 10 finish: the listing has exactly the 7 left;
    then 10 other batches start: the listing has exactly the 17 running, none of those
    that finished."""
    engine = FakeEngine(clock=Clock())
    created = sorted(engine.create_batch(total_jobs=10) for _ in range(17))
    async with await start_simulator(engine=engine) as sim:
        client = engine_client(session, sim.engine_url)
        first = await client.runtime_batches()
        assert ids(first) == created
        kept = created[:3] + created[8:12]
        gone = [b for b in created if b not in kept]
        for batch_id in gone:
            engine.finish(batch_id)
        shrunk = await client.runtime_batches()
        newcomers = [engine.create_batch(total_jobs=10) for _ in range(10)]
        grown = await client.runtime_batches()
        fresh = await engine_client(session, sim.engine_url, name="fresh").runtime_batches()

    assert ids(shrunk) == sorted(kept)
    assert ids(grown) == sorted(kept + newcomers)
    assert not set(ids(grown)) & set(gone)
    assert grown.rows == fresh.rows


async def test_pages_beyond_a_shrunk_listing_are_forgotten(
    session: aiohttp.ClientSession, scripted: Statistics, parses: ParseSpy
) -> None:
    """15 rows (pages at 0, 5 and 10 full), then 7 (the listing ends at offset 5): the
    page at offset 10 is forgotten, so when the 15 rows are back, byte for byte, it is
    parsed anew (the memory holds one listing, not every page ever seen); and the rows
    are those served."""
    scripted.rows = [statistics_row(i) for i in range(15)]
    client = engine_client(session, scripted.url)
    first = await client.runtime_batches()
    assert parses.take() == [5, 5, 5, 0]

    scripted.rows = scripted.rows[:7]
    shrunk = await client.runtime_batches()
    assert parses.take() == [2]
    assert ids(shrunk) == [f"batch-{i:04d}" for i in range(7)]

    scripted.rows = [statistics_row(i) for i in range(15)]
    grown = await client.runtime_batches()
    assert parses.take() == [5, 5, 0]  # offsets 5 and 10: neither is remembered any more
    assert grown.rows == first.rows


# ------------------------------------------------------------------ date warnings


async def test_date_problem_of_a_remembered_page_is_warned_once(
    session: aiohttp.ClientSession, scripted: Statistics, parses: ParseSpy
) -> None:
    """An unreadable startTime on a row of a full page, served identically twice: the
    first listing warns (upstream.date_unparsable), the second does not (once per client),
    the row keeps a null start time; another client warns once for its own target."""
    scripted.rows[2] = statistics_row(2, start_time=UNREADABLE)
    client = engine_client(session, scripted.url)
    first = await client.runtime_batches()
    second = await client.runtime_batches()
    assert parses.take() == [5, 2, 2]
    other = await engine_client(session, scripted.url, name="other").runtime_batches()

    assert [(n.event, n.level) for n in first.warnings] == [
        ("upstream.date_unparsable", "warning")]
    assert first.warnings[0].fields == {
        "source": "engine", "target": "prod", "endpoint": "/batch/statistics",
        "field": "startTime", "value": UNREADABLE,
    }
    assert second.warnings == []
    assert second.rows[2] is first.rows[2] and first.rows[2].start_time is None
    assert first.rows[0].start_time == START
    assert [(n.fields["target"], n.fields["field"]) for n in other.warnings] == [
        ("other", "startTime")]


async def test_date_problem_of_a_page_remembered_by_a_failed_listing_is_still_warned(
    session: aiohttp.ClientSession, scripted: Statistics, parses: ParseSpy
) -> None:
    """The first listing parses (and remembers) page 1 with an unreadable startTime, then
    fails on page 2 (HTTP 500): no warning yet. The next listing answers page 1 from the
    memory, and its date problem is warned then, once."""
    scripted.rows[2] = statistics_row(2, start_time=UNREADABLE)
    scripted.override[PAGE] = (500, b'{"type": "ProcessEngineException", "message": "down"}')
    client = engine_client(session, scripted.url)
    error = await poll_error(client.runtime_batches)
    assert error.reason == "http_5xx"
    assert parses.take() == [5]

    del scripted.override[PAGE]
    listing = await client.runtime_batches()
    assert parses.take() == [2]  # page 1 from the memory
    again = await client.runtime_batches()

    assert [(n.event, n.fields["field"], n.fields["value"]) for n in listing.warnings] == [
        ("upstream.date_unparsable", "startTime", UNREADABLE)]
    assert again.warnings == []
    assert ids(listing) == [f"batch-{i:04d}" for i in range(7)]


# ------------------------------------------------------------------ the paging guard


async def test_paging_guard_fires_on_remembered_pages(
    session: aiohttp.ClientSession, parses: ParseSpy
) -> None:
    """An engine ignoring firstResult serves the same full page at every offset: the
    listing fails at page 2, and so does the next one, whose pages both come from the
    memory (nothing parsed), with the same detail."""
    engine = FakeEngine(clock=Clock())
    for _ in range(12):
        engine.create_batch(total_jobs=10)
    engine.inject(STATISTICS, ignore_first_result=True, times=None)
    async with await start_simulator(engine=engine) as sim:
        client = engine_client(session, sim.engine_url, max_rows=20)
        first = await poll_error(client.runtime_batches)
        assert parses.take() == [5, 5]
        second = await poll_error(client.runtime_batches)
        assert parses.take() == []
        asked = [r.path_qs for r in engine.requests if STATISTICS in r.path_qs]

    expected = ("paging did not end: /batch/statistics page 2 repeated the ids of page 1 "
                "(the engine or a proxy ignores firstResult=5)")
    assert (first.reason, first.detail) == ("invalid_response", expected)
    assert (second.reason, second.detail) == ("invalid_response", expected)
    assert len(asked) == 4
