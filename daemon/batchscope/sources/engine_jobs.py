"""The engine's job endpoints, as the diagnosis of a failed or stalled batch needs them.

A batch has three job definitions (statistics row: ``seedJobDefinitionId``,
``monitorJobDefinitionId``, ``batchJobDefinitionId``). Its failed execution jobs are what
Cockpit's batch page shows (``GET /job?jobDefinitionId=...&withException=true&
noRetriesLeft=true``, camunda-bpm-platform webapps ``batches/components/batch.js``,
``_loadFailedJobs``); a failed seed or monitor job is the same query on its own job
definition, and ``failedJobs`` of the statistics never counts it.

Every request goes through :meth:`EngineClient.fetch` (authentication, TLS, the size cap, the
timeout and the error reasons of the rest of the engine source), always with an explicit
``maxResults``: an engine with ``queryMaxResultsLimit`` refuses unbounded queries. What the
engine says about a job is upstream text: kept as data, never interpreted, the secrets this
process knows hidden and cut to size (:data:`MESSAGE_LIMIT`, :data:`ID_LIMIT`).
"""

from __future__ import annotations

from typing import Any, Final

from batchscope.model import FailedJob
from batchscope.redaction import shorten
from batchscope.sources.engine import EngineClient
from batchscope.sources.fetch import NotFound, PollError, Response

#: Characters of an exception message kept (a cut one ends in "…", within the limit).
MESSAGE_LIMIT: Final = 500
#: Characters of an id kept (the engine's id columns are at most 255 wide).
ID_LIMIT: Final = 255


class BadJob(ValueError):
    """A job entry (or count) that is not what the engine sends."""


def _cut(text: str, limit: int) -> str:
    """``text`` with known secrets hidden, then at most ``limit`` characters ("…" at a cut)."""
    short = shorten(text, limit)
    return short if len(short) <= limit else shorten(text, limit - 1)


def _text(row: dict[str, Any], name: str, limit: int) -> str | None:
    value = row.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadJob(f"field {name!r} must be a string or null, got {type(value).__name__}")
    return _cut(value, limit)


def _id(row: dict[str, Any]) -> str:
    value = row.get("id")
    if not isinstance(value, str) or not value:
        raise BadJob(f"field 'id' must be a non-empty string, got {type(value).__name__}")
    return _cut(value, ID_LIMIT)


def parse_failed_job(raw: object) -> FailedJob:
    """A ``JobDto`` as a :class:`FailedJob`.

    ``id`` is required; ``exceptionMessage``, ``processInstanceId``, ``failedActivityId``
    (7.13+) and ``jobDefinitionId`` may be null or absent; fields this parser does not use
    (or does not know: a later engine or a fork may add some) are ignored. A value of the
    wrong type raises :class:`BadJob` naming the field.
    """
    if not isinstance(raw, dict):
        raise BadJob(f"job entry is a {type(raw).__name__}, not an object")
    return FailedJob(
        job_id=_id(raw),
        message=_text(raw, "exceptionMessage", MESSAGE_LIMIT),
        process_instance_id=_text(raw, "processInstanceId", ID_LIMIT),
        activity_id=_text(raw, "failedActivityId", ID_LIMIT),
        job_definition_id=_text(raw, "jobDefinitionId", ID_LIMIT),
    )


def parse_count(raw: object) -> int:
    """A ``CountResultDto``: ``{"count": n}`` with n a non-negative integer."""
    count = raw.get("count") if isinstance(raw, dict) else None
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise BadJob(f"count must be a non-negative integer, got {count!r}")
    return count


class EngineJobs:
    """Job lookups of one engine target; every method raises :class:`PollError` on failure
    (reasons as every engine request: ``timeout``, ``connection``, ``http_4xx``, ``auth``,
    ``invalid_response``...)."""

    def __init__(self, client: EngineClient) -> None:
        self._client = client

    async def failed_execution_jobs(
        self, batch_job_definition_id: str, sample: int
    ) -> list[FailedJob]:
        """Up to ``sample`` execution jobs of the batch that have no retries left and an
        exception, in the engine's job id order (stable between pages), each job once.

        Pages of at most the target's ``page_size`` (which the operator keeps within the
        engine's ``queryMaxResultsLimit``): one request for the default sample of 50.
        """
        jobs: dict[str, FailedJob] = {}
        page_size = max(1, min(sample, self._client.target.page_size))
        first = 0
        while len(jobs) < sample:
            wanted = min(page_size, sample - len(jobs))
            page = await self._jobs({
                "jobDefinitionId": batch_job_definition_id,
                "withException": "true", "noRetriesLeft": "true",
                "sortBy": "jobId", "sortOrder": "asc",
                "firstResult": str(first), "maxResults": str(wanted),
            })
            before = len(jobs)
            for job in page:
                jobs.setdefault(job.job_id, job)
            # A short page is the last; a page with nothing new (an upstream ignoring
            # firstResult) would only repeat itself.
            if len(page) < wanted or len(jobs) == before:
                break
            first += len(page)
        return list(jobs.values())[:sample]

    async def failed_job(self, job_definition_id: str) -> FailedJob | None:
        """The job of this job definition that has no retries left, None when there is none:
        for the seed and the monitor job, which exist once at a time. One request.

        ``withException`` is not asked: a seed or monitor job whose retries were set to 0
        by hand stalls the batch all the same (its message is then None).
        """
        page = await self._jobs({
            "jobDefinitionId": job_definition_id, "noRetriesLeft": "true",
            "firstResult": "0", "maxResults": "1",
        })
        return page[0] if page else None

    async def job_count(self, job_definition_id: str, *, no_retries_left: bool = False) -> int:
        """How many jobs of this job definition exist (only those with no retries left when
        ``no_retries_left``): 0 execution jobs while the batch is still listed means it
        awaits its monitor job. One request (``GET /job/count``)."""
        params = {"jobDefinitionId": job_definition_id}
        if no_retries_left:
            params["noRetriesLeft"] = "true"
        body = (await self._get("/job/count", params)).body
        try:
            return parse_count(body)
        except BadJob as exc:
            raise PollError("invalid_response", f"/job/count: {exc}") from exc

    async def _jobs(self, params: dict[str, str]) -> list[FailedJob]:
        body = (await self._get("/job", params)).body
        if not isinstance(body, list):
            raise PollError("invalid_response",
                            f"/job answered a {type(body).__name__}, not a list")
        try:
            return [parse_failed_job(raw) for raw in body]
        except BadJob as exc:
            raise PollError("invalid_response", f"/job: {exc}") from exc

    async def _get(self, path: str, params: dict[str, str]) -> Response:
        try:
            return await self._client.fetch(path, params)
        except NotFound as exc:
            # /job has no 404 of its own: an unknown engine name, or a proxy's page.
            raise PollError("http_4xx", f"HTTP 404 from {path}: {exc.detail}",
                            status=404) from exc
