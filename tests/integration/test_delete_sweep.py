"""The batches that end in one cycle are asked about deletes with one sweep of the
user-operation log, not one request each; whatever the sweep cannot answer is asked batch by
batch, as before. The real daemon against the simulator, and the client against a scripted
log, over loopback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from batchscope.model import EngineHistoryRecord, State
from batchscope.settings import EngineTarget
from batchscope.sources.engine import (
    DELETE_LOG_PAGES,
    DELETE_LOG_SLACK,
    DeleteLog,
    EngineClient,
)
from batchscope.sources.engine_json import BadRow, read_delete_page
from harness import running_stack
from helpers import LogLines, wait_until

AiohttpServer = Callable[[web.Application], Awaitable[TestServer]]
NOW = 1_790_000_000.0

USER_OPS = "/history/user-operation"
SWEEP = f"{USER_OPS}?entityType=Batch&operationType=Delete&sortBy=timestamp"


def ended(logs: LogLines, batch_id: str) -> tuple[str, str | None] | None:
    """The terminal state a batch's last transition entered, with its reason."""
    lines = logs.events("batch.transition", batch_id=batch_id)
    if not lines or lines[-1]["to_state"] in (State.IN_PROGRESS.value, State.NONE.value):
        return None
    return lines[-1]["to_state"], lines[-1]["reason"]


async def test_a_wave_of_endings_is_asked_about_with_one_sweep(logs: LogLines) -> None:
    """Three batches deleted by a user, three finished, one deleted by an unauthenticated
    call (no user-operation entry: the job log tells), all between two polls: each ends as
    before (cancelled 'deleted' or passed), and the user-operation log is read by a sweep,
    never once per batch."""
    async with running_stack() as stack:
        eng = stack.engine
        deleted = [eng.create_batch("instance-deletion", total_jobs=5) for _ in range(3)]
        # Every job done, the monitor job not yet run: a delete then deletes no job, and
        # only the user-operation log can tell.
        for batch_id in deleted[:2]:
            eng.complete_jobs(batch_id, 5)
        finished = [eng.create_batch("instance-migration", total_jobs=2) for _ in range(3)]
        anonymous = eng.create_batch("set-job-retries", total_jobs=5)
        everyone = [*deleted, *finished, anonymous]
        await wait_until(lambda: len(logs.events("batch.transition")) == len(everyone),
                         what="first sightings")
        eng.clear_requests()
        for batch_id in deleted:
            eng.delete(batch_id)
        for batch_id in finished:
            eng.complete_jobs(batch_id, 2)
            eng.finish(batch_id)
        eng.delete(anonymous, user=None)
        await wait_until(lambda: all(ended(logs, b) for b in everyone), what="every end")

        assert [ended(logs, b) for b in deleted] == [("cancelled", "deleted")] * 3
        assert [ended(logs, b) for b in finished] == [("passed", None)] * 3
        assert ended(logs, anonymous) == ("cancelled", "deleted")
        asked = [r.path_qs for r in eng.requests if USER_OPS in r.path_qs]
        assert asked, "the user-operation log was never read"
        assert all(SWEEP in q for q in asked), asked
        assert len(asked) <= 2  # one sweep per cycle that saw endings


async def test_a_sweep_that_fails_leaves_each_batch_to_its_own_query(logs: LogLines) -> None:
    """The sweep answers an HTML error page: each ended batch is asked about alone, and a
    deleted one is still cancelled, a finished one passed."""
    async with running_stack() as stack:
        eng = stack.engine
        deleted = eng.create_batch("instance-deletion", total_jobs=5)
        finished = eng.create_batch("instance-migration", total_jobs=2)
        await wait_until(lambda: len(logs.events("batch.transition")) == 2,
                         what="first sightings")
        eng.inject(SWEEP, status=502, body="<html>Bad Gateway</html>",
                   content_type="text/html", times=None)
        eng.clear_requests()
        eng.delete(deleted)
        eng.complete_jobs(finished, 2)
        eng.finish(finished)
        await wait_until(lambda: ended(logs, deleted) and ended(logs, finished),
                         what="both ends")

        assert ended(logs, deleted) == ("cancelled", "deleted")
        assert ended(logs, finished) == ("passed", None)
        own = {r.path_qs for r in eng.requests if f"{USER_OPS}?batchId=" in r.path_qs}
        assert any(deleted in q for q in own) and any(finished in q for q in own)


async def test_a_steady_cycle_never_reads_the_user_operation_log(logs: LogLines) -> None:
    """No batch ended: no sweep is made (it is made on the first question only)."""
    async with running_stack() as stack:
        eng = stack.engine
        eng.create_batch("instance-migration", total_jobs=5)
        await wait_until(lambda: len(logs.events("batch.transition")) == 1,
                         what="first sighting")
        eng.clear_requests()
        await wait_until(lambda: sum("/batch/statistics" in r.path_qs
                                     for r in eng.requests) >= 5, what="five cycles")
        assert not [r for r in eng.requests if USER_OPS in r.path_qs]


# --------------------------------------------------------------------------- the client


def stamp(epoch: float) -> str:
    """The engine's default date format, in UTC."""
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


def delete_entry(batch_id: str | None, epoch: float, **extra: Any) -> dict[str, Any]:
    return {"id": f"op-{batch_id}-{epoch}", "batchId": batch_id, "operationType": "Delete",
            "entityType": "Batch", "property": "cascadeToHistory", "newValue": "false",
            "timestamp": stamp(epoch), **extra}


def record(batch_id: str, end: float | None) -> EngineHistoryRecord:
    return EngineHistoryRecord(batch_id=batch_id, batch_type="instance-migration",
                               total_jobs=1, start_time=NOW - 3600, end_time=end)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def scripted_log(aiohttp_server: AiohttpServer, entries: list[Any] | str,
                       asked: list[dict[str, str]]) -> str:
    """A user-operation log that pages ``entries`` (newest first) as the engine does."""

    async def handle(request: web.Request) -> web.Response:
        asked.append(dict(request.query))
        if isinstance(entries, str):
            return web.Response(text=entries, content_type="application/json")
        first = int(request.query.get("firstResult", "0"))
        count = int(request.query.get("maxResults", "100"))
        return web.json_response(entries[first:first + count])

    app = web.Application()
    app.router.add_get("/engine-rest/history/user-operation", handle)
    server = await aiohttp_server(app)
    return str(server.make_url("/engine-rest"))


def client(session: aiohttp.ClientSession, url: str) -> EngineClient:
    return EngineClient(EngineTarget(name="prod", url=url, request_timeout=5), session)


async def test_the_sweep_reads_newest_first_down_to_its_window(
    aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
) -> None:
    """Pages are read until an entry older than the window (less the slack) shows up: the
    batches deleted in it are known deleted, a batch that ended in it and is not listed is
    known not deleted, one that ended before it is left to its own query."""
    since = NOW - 300
    entries = [delete_entry(f"d{i}", NOW - 10 * i) for i in range(150)]  # down to NOW - 1490
    asked: list[dict[str, str]] = []
    sweep = await client(session, await scripted_log(aiohttp_server, entries, asked)
                         ).deletes_since(since)
    window = since - DELETE_LOG_SLACK
    assert sweep.complete
    assert sweep.batch_ids == {f"d{i}" for i in range(150) if NOW - 10 * i >= window}
    assert len(asked) == 1  # the first page reached an older entry
    assert asked[0] == {"entityType": "Batch", "operationType": "Delete", "sortBy": "timestamp",
                        "sortOrder": "desc", "firstResult": "0", "maxResults": "100"}
    assert sweep.knows(record("d3", NOW - 30)) is True
    assert sweep.knows(record("other", NOW - 5)) is False
    assert sweep.knows(record("other", since - 1)) is None  # ended before the window
    assert sweep.knows(record("other", None)) is None  # an unreadable end


async def test_a_sweep_that_cannot_finish_or_read_an_entry_says_so(
    aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
) -> None:
    """More deletes in the window than the sweep reads, an entry without a batch id, an
    entry whose time cannot be read: the sweep is incomplete, so a batch it does not list
    is left to its own query (None), while a listed one is still known deleted."""
    since = NOW - 3600
    many = [delete_entry(f"d{i}", NOW - i) for i in range(100 * DELETE_LOG_PAGES + 1)]
    no_id = [delete_entry("d0", NOW), delete_entry(None, NOW - 1)]
    bad_time = [delete_entry("d0", NOW), {**delete_entry("d1", NOW - 1), "timestamp": "soon"}]
    for entries, pages in ((many, DELETE_LOG_PAGES), (no_id, 1), (bad_time, 1)):
        asked: list[dict[str, str]] = []
        sweep = await client(session, await scripted_log(aiohttp_server, entries, asked)
                             ).deletes_since(since)
        assert not sweep.complete
        assert len(asked) == pages
        assert sweep.knows(record("d0", NOW)) is True
        assert sweep.knows(record("other", NOW)) is None


async def test_the_cycle_sweeps_once_and_only_when_asked(
    aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
) -> None:
    """A DeleteLog sweeps on its first question, once for every later one; a batch that
    ended before its window asks nothing; a log that is not a list leaves every answer to
    the per-batch query (None), with no error."""
    asked: list[dict[str, str]] = []
    url = await scripted_log(aiohttp_server, [delete_entry("d0", NOW)], asked)
    log = DeleteLog(client(session, url), NOW - 60)
    assert await log.knows(record("old", NOW - 3600)) is None
    assert asked == []
    assert await log.knows(record("d0", NOW)) is True
    assert await log.knows(record("other", NOW - 1)) is False
    assert len(asked) == 1
    broken: list[dict[str, str]] = []
    log = DeleteLog(client(session, await scripted_log(aiohttp_server, '{"count": 1}', broken)),
                    NOW - 60)
    assert await log.knows(record("d0", NOW)) is None
    assert await log.knows(record("d1", NOW)) is None
    assert len(broken) == 1


def test_a_page_of_the_log_is_read_as_it_comes() -> None:
    """Entries of other operations and non-objects are passed over; reading stops at the
    first entry older than the window; the page's size counts every entry; a body that is
    not a list is a bad row."""
    page = read_delete_page([
        "junk", {**delete_entry("s", NOW), "operationType": "SuspendBatch"},
        delete_entry("a", NOW - 1), delete_entry("b", NOW - 100), delete_entry("c", NOW - 2),
    ], NOW - 50)
    assert page.batch_ids == {"a"} and page.reached_older and not page.unreadable
    assert page.size == 5
    with pytest.raises(BadRow):
        read_delete_page(json.loads('{"message": "no"}'), NOW)
