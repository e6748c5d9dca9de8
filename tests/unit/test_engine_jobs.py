"""sources/engine_jobs.py: the JobDto parser, and the client against an upstream that answers
wrongly (a real loopback server scripted per test): every failure is a PollError with the
reason the rest of the engine source gives, and upstream text is data, cut to size."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from batchscope import redaction
from batchscope.model import FailedJob
from batchscope.settings.models import EngineTarget
from batchscope.sources.engine import EngineClient
from batchscope.sources.engine_jobs import (
    ID_LIMIT,
    MESSAGE_LIMIT,
    BadJob,
    EngineJobs,
    parse_count,
    parse_failed_job,
)
from batchscope.sources.fetch import PollError

JOB = {
    "id": "job-1", "jobDefinitionId": "def-1", "processInstanceId": None,
    "processDefinitionId": None, "processDefinitionKey": None, "executionId": None,
    "exceptionMessage": "ENGINE-23004 Cannot migrate process instance 'pi-1':\n\tboom\n",
    "failedActivityId": None, "retries": 0, "dueDate": None, "suspended": False,
    "priority": 0, "tenantId": None, "createTime": "2024-07-09T13:33:42.165+0200",
    "batchId": "b-1",
}


# --------------------------------------------------------------------------- parser


def test_a_job_dto_becomes_a_failed_job_with_its_text_untouched() -> None:
    """Multi-line messages, markup and unknown fields: the text is kept as it came."""
    hostile = "<script>alert(1)</script>\n\t${jndi:ldap://x}\x1b[2J"
    job = parse_failed_job({**JOB, "exceptionMessage": hostile, "failedActivityId": "Task_A",
                            "processInstanceId": "pi-1", "someFutureField": [1, 2]})

    assert job == FailedJob(job_id="job-1", message=hostile, process_instance_id="pi-1",
                            activity_id="Task_A", job_definition_id="def-1")


def test_fields_of_older_engines_may_be_missing() -> None:
    """Only the id is required: failedActivityId is absent before 7.13, a message may be
    null (an exception without one, or retries set to 0 by hand)."""
    job = parse_failed_job({"id": "j", "retries": 0})

    assert job == FailedJob(job_id="j", message=None, process_instance_id=None,
                            activity_id=None, job_definition_id=None)


@pytest.mark.parametrize(("raw", "field"), [
    ([JOB], "not an object"),
    ({**JOB, "id": None}, "'id'"),
    ({**JOB, "id": ""}, "'id'"),
    ({**JOB, "exceptionMessage": 42}, "'exceptionMessage'"),
    ({**JOB, "processInstanceId": {"x": 1}}, "'processInstanceId'"),
    ({**JOB, "failedActivityId": True}, "'failedActivityId'"),
    ({**JOB, "jobDefinitionId": ["d"]}, "'jobDefinitionId'"),
])
def test_wrong_types_name_the_field(raw: object, field: str) -> None:
    """A value of the wrong type is a BadJob that names what is wrong."""
    with pytest.raises(BadJob, match=field):
        parse_failed_job(raw)


def test_long_text_is_cut_within_its_limit() -> None:
    """Messages are cut to at most 500 characters and ids to 255, a cut marked with "…"."""
    job = parse_failed_job({**JOB, "exceptionMessage": "m" * 5000, "id": "i" * 1000,
                            "failedActivityId": "a" * 300})

    assert job.message is not None and len(job.message) == MESSAGE_LIMIT
    assert job.message.endswith("…") and job.message.startswith("m" * 400)
    assert len(job.job_id) == ID_LIMIT and job.job_id.endswith("…")
    assert job.activity_id is not None and len(job.activity_id) <= ID_LIMIT
    exact = parse_failed_job({**JOB, "exceptionMessage": "x" * MESSAGE_LIMIT})
    assert exact.message == "x" * MESSAGE_LIMIT


def test_a_secret_of_ours_is_hidden_before_the_cut() -> None:
    """A credential of this process inside a message is redacted before cutting, so a cut
    cannot leave a fragment of it that no longer looks like the secret."""
    secret = "s3cr3t-engine-password-0123456789"
    redaction.register([secret])
    try:
        message = "x" * (MESSAGE_LIMIT - 10) + secret
        job = parse_failed_job({**JOB, "exceptionMessage": message})
    finally:
        redaction.reset()

    assert job.message is not None and len(job.message) <= MESSAGE_LIMIT
    assert secret[:8] not in job.message


@pytest.mark.parametrize("raw", [{"count": -1}, {"count": "3"}, {"count": True}, {}, [3], None])
def test_counts_must_be_counts(raw: object) -> None:
    """A CountResultDto carries a non-negative integer; anything else is a BadJob."""
    with pytest.raises(BadJob):
        parse_count(raw)
    assert parse_count({"count": 7}) == 7


# --------------------------------------------------------------------------- client


@dataclass
class Scripted:
    """What the loopback upstream answers, and what it was asked."""

    status: int = 200
    body: bytes = b"[]"
    content_type: str = "application/json"
    seen: list[str] = field(default_factory=list)


@pytest.fixture
async def upstream(aiohttp_server: Any) -> AsyncIterator[tuple[Scripted, EngineJobs]]:
    script = Scripted()

    async def handle(request: web.Request) -> web.Response:
        script.seen.append(request.path_qs)
        resp = web.Response(status=script.status, body=script.body)
        resp.content_type = script.content_type
        return resp

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    server: TestServer = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        target = EngineTarget(name="prod", url=str(server.make_url("/engine-rest")),
                              request_timeout=5, page_size=20)
        yield script, EngineJobs(EngineClient(target, session))


@pytest.mark.parametrize(("status", "body", "content_type", "reason"), [
    (200, b"[{]", "application/json", "invalid_response"),
    (200, b'{"id": "j"}', "application/json", "invalid_response"),
    (200, b'[{"id": 5}]', "application/json", "invalid_response"),
    (200, b"<html>ok</html>", "text/html", "invalid_response"),
    (404, b"<html>Not Found</html>", "text/html", "http_4xx"),
    (400, b'{"type":"BadUserRequestException","message":"Max results limit of 10 exceeded!",'
          b'"code":0}', "application/json", "http_4xx"),
    (401, b"", "text/plain", "auth"),
    (500, b'{"type":"ProcessEngineException","message":"db down","code":0}',
     "application/json", "http_5xx"),
])
async def test_every_failure_is_a_poll_error_with_its_reason(
    upstream: tuple[Scripted, EngineJobs], status: int, body: bytes, content_type: str,
    reason: str,
) -> None:
    """Malformed JSON, a body of the wrong shape or type, and every HTTP error raise
    PollError with the reason the engine source uses for them, from each lookup."""
    script, jobs = upstream
    script.status, script.body, script.content_type = status, body, content_type

    for lookup in (jobs.failed_execution_jobs("def", 5), jobs.failed_job("def")):
        with pytest.raises(PollError) as caught:
            await lookup
        assert caught.value.reason == reason, caught.value
    if status == 200 and content_type == "application/json":
        return  # a list body is no count: covered below
    with pytest.raises(PollError) as caught:
        await jobs.job_count("def")
    assert caught.value.reason == reason


async def test_a_count_of_the_wrong_shape_is_invalid(
    upstream: tuple[Scripted, EngineJobs],
) -> None:
    """/job/count answering a list or a negative count is an invalid response."""
    script, jobs = upstream
    for body in (b"[]", b'{"count": -2}'):
        script.body = body
        with pytest.raises(PollError) as caught:
            await jobs.job_count("def")
        assert caught.value.reason == "invalid_response" and "/job/count" in str(caught.value)


async def test_an_upstream_ignoring_paging_cannot_repeat_jobs_or_loop(
    upstream: tuple[Scripted, EngineJobs],
) -> None:
    """An upstream that serves the same full page whatever firstResult says: each job is
    taken once, and paging stops at the first page that brings nothing new."""
    script, jobs = upstream
    script.body = orjson.dumps([{**JOB, "id": f"j{i}"} for i in range(20)])

    found = await jobs.failed_execution_jobs("def", 50)

    assert [job.job_id for job in found] == [f"j{i}" for i in range(20)]
    assert len(script.seen) == 2
    assert "firstResult=0" in script.seen[0] and "firstResult=20" in script.seen[1]
    assert all("maxResults=20" in path for path in script.seen)


async def test_a_page_larger_than_asked_is_cut_to_the_sample(
    upstream: tuple[Scripted, EngineJobs],
) -> None:
    """An upstream answering more rows than maxResults cannot make the sample grow."""
    script, jobs = upstream
    script.body = orjson.dumps([{**JOB, "id": f"j{i}"} for i in range(30)])

    found = await jobs.failed_execution_jobs("def", 5)

    assert len(found) == 5 and len(script.seen) == 1 and "maxResults=5" in script.seen[0]
