"""Client of the Datadog Synthetics CI batch API, and the normalisation of its JSON."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
import structlog

from batchscope.model import CiMetadata, CiResult, DatadogBatchSnapshot
from batchscope.sources.fetch import NotFound, PollError, RateLimit, get_json, ssl_context

if TYPE_CHECKING:
    from batchscope.settings import DatadogTarget


@dataclass(slots=True)
class ParsedBatch:
    snapshot: DatadogBatchSnapshot
    skipped_results: list[str] = field(default_factory=list)


def _opt_str(obj: dict[str, Any], name: str) -> str | None:
    value = obj.get(name)
    return value if isinstance(value, str) else None


def _opt_number(obj: dict[str, Any], name: str) -> float | None:
    value = obj.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _opt_int(obj: dict[str, Any], name: str) -> int | None:
    value = _opt_number(obj, name)
    return int(value) if value is not None else None


def _opt_bool(obj: dict[str, Any], name: str) -> bool | None:
    value = obj.get(name)
    return value if isinstance(value, bool) else None


def _dig(obj: object, *path: str) -> str | None:
    for name in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(name)
    return obj if isinstance(obj, str) else None


def parse_result(raw: object) -> CiResult:
    """One entry of ``results``.

    ``duration`` is 0 while a result is in progress (datadog-ci's own fixtures), which
    means unknown, not zero milliseconds. ``retries``, ``max_retries`` and ``timed_out``
    are null until known. Entries skipped by execution rule or by a selective rerun have
    no ``location``, ``result_id`` or ``duration``.
    """
    if not isinstance(raw, dict):
        raise ValueError(f"result is a {type(raw).__name__}, not an object")
    test_id = raw.get("test_public_id")
    status = raw.get("status")
    if not isinstance(test_id, str) or not test_id:
        raise ValueError("result has no test_public_id")
    if not isinstance(status, str):
        raise ValueError(f"result of {test_id} has no status")
    duration = _opt_number(raw, "duration")
    if duration == 0 and status == "in_progress":
        duration = None
    rerun = raw.get("selective_rerun")
    if not isinstance(rerun, dict):
        rerun = {}
    return CiResult(
        test_public_id=test_id,
        status=status,
        location=_opt_str(raw, "location") or "",
        device=_opt_str(raw, "device") or "",
        test_name=_opt_str(raw, "test_name"),
        test_type=_opt_str(raw, "test_type"),
        execution_rule=_opt_str(raw, "execution_rule"),
        result_id=_opt_str(raw, "result_id"),
        retries=_opt_int(raw, "retries"),
        duration_ms=duration,
        initial_result_id=_opt_str(raw, "initial_result_id"),
        timed_out=_opt_bool(raw, "timed_out"),
        max_retries=_opt_int(raw, "max_retries"),
        selective_rerun=_opt_str(rerun, "decision"),
        linked_result_id=_opt_str(rerun, "linked_result_id"),
    )


def parse_metadata(meta: object) -> CiMetadata:
    """CI metadata in both spellings: datadog-ci sends ``git.commit.sha``, the published
    model names ``git.commitSha``."""
    return CiMetadata(
        pipeline_url=_dig(meta, "ci", "pipeline", "url"),
        git_branch=_dig(meta, "git", "branch"),
        git_commit=_dig(meta, "git", "commit", "sha") or _dig(meta, "git", "commitSha"),
        job_name=_dig(meta, "ci", "job", "name"),
        provider_name=_dig(meta, "ci", "provider", "name"),
    )


def parse_batch(batch_id: str, body: object) -> ParsedBatch:
    """Normalise a ``SyntheticsBatchDetails`` body.

    The status enum is not validated: the live API sends ``in_progress``, absent from the
    published enum, and may send other values; the tracker decides what they mean.
    """
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise PollError("invalid_response", "batch body has no 'data' object")
    status = data.get("status")
    if not isinstance(status, str) or not status:
        raise PollError("invalid_response", "batch has no 'status' string")
    raw_results = data.get("results") or []
    if not isinstance(raw_results, list):
        raise PollError("invalid_response", "batch 'results' is not a list")
    results: list[CiResult] = []
    skipped: list[str] = []
    for raw in raw_results:
        try:
            results.append(parse_result(raw))
        except ValueError as exc:
            skipped.append(str(exc))
    snapshot = DatadogBatchSnapshot(
        batch_id=batch_id, status=status, results=tuple(results),
        metadata=parse_metadata(data.get("metadata")),
    )
    return ParsedBatch(snapshot, skipped)


def says_not_found(body: object) -> bool:
    """Whether a 404 body is Datadog's own answer (``{"errors": [...]}``): the batch is
    not known (yet). Anything else (a proxy's page, an empty body) means a wrong URL."""
    return isinstance(body, dict) and isinstance(body.get("errors"), list)


class Pacer:
    """Spends Datadog's rate-limit budget so that a large watch list never hits 429.

    It trusts the latest ``X-RateLimit-Remaining`` and counts its own requests down from
    it; when only the reserve is left it waits for the window to reset.
    """

    def __init__(self, reserve_fraction: float = 0.05) -> None:
        self._reserve_fraction = reserve_fraction
        self._remaining: int | None = None
        self._reserve = 1
        self._reset_at: float | None = None
        self.window_from_headers = False  # the wait is the upstream's window, not a 429's

    def update(self, rate_limit: RateLimit, now: float) -> None:
        self._remaining = rate_limit.remaining
        if rate_limit.limit:
            self._reserve = max(1, int(rate_limit.limit * self._reserve_fraction))
        if rate_limit.reset is not None:
            self._reset_at = now + rate_limit.reset
            self.window_from_headers = True

    def blocked_for(self, seconds: float | None, now: float) -> None:
        """After a 429: nothing may be sent until the given delay has passed."""
        self._remaining = 0
        self._reset_at = now + (seconds if seconds is not None else 5.0)
        self.window_from_headers = False  # the poll loop's backoff says this one

    @property
    def reset_at(self) -> float | None:
        return self._reset_at

    def delay(self, now: float) -> float:
        """Seconds to wait before the next request (0: send now, and count it)."""
        if self._remaining is None:
            return 0.0
        if self._remaining > self._reserve:
            self._remaining -= 1
            return 0.0
        if self._reset_at is None or now >= self._reset_at:
            self._remaining = None  # a new window; the next response tells its budget
            return 0.0
        return self._reset_at - now


class DatadogClient:
    """Reads CI batches of one Datadog organisation, at most ``max_concurrency`` at a time."""

    def __init__(
        self,
        target: DatadogTarget,
        session: aiohttp.ClientSession,
        *,
        on_progress: Callable[[], None] | None = None,
    ) -> None:
        self.target = target
        self._session = session
        self._base = target.base_url.rstrip("/")
        self._headers = {"Accept": "application/json"}
        if target.api_key is not None:
            self._headers["DD-API-KEY"] = target.api_key.get_secret_value()
        if target.app_key is not None:
            self._headers["DD-APPLICATION-KEY"] = target.app_key.get_secret_value()
        self._ssl = ssl_context(target.verify_tls, target.ca_file)
        self._slots = asyncio.Semaphore(target.max_concurrency)
        self._on_progress = on_progress
        self.rate_limit: RateLimit | None = None
        self.pacer = Pacer()
        self._told_window: float | None = None

    def _tell_long_wait(self, wait: float) -> None:
        """A rate-limit window that pauses polling for longer than a poll interval is said
        once per window (the headers are capped, so it is at most MAX_UPSTREAM_WAIT)."""
        interval = self.target.poll_interval or 5.0
        window = self.pacer.reset_at
        if wait > interval and window != self._told_window and self.pacer.window_from_headers:
            self._told_window = window
            structlog.get_logger("batchscope").warning(
                "target.waiting", source="datadog", target=self.target.name,
                seconds=round(wait, 1), reason="rate_limited",
                hint="X-RateLimit-Remaining is spent; polling resumes when the window resets")

    async def batch(self, batch_id: str) -> ParsedBatch | None:
        """The batch, or None while Datadog answers 404 for it.

        Only Datadog's own 404 (a JSON body with an ``errors`` list) means not found;
        another 404 raises :class:`PollError` ``http_4xx`` (a target error).
        """
        async with self._slots:
            while (wait := self.pacer.delay(time.monotonic())) > 0:
                self._tell_long_wait(wait)
                # Waiting for the rate-limit window is progress, not a wedged loop.
                if self._on_progress is not None:
                    self._on_progress()
                await asyncio.sleep(min(wait, 1.0))
            try:
                response = await get_json(
                    self._session,
                    f"{self._base}/api/v1/synthetics/ci/batch/{quote(batch_id, safe='')}",
                    headers=self._headers,
                    timeout=self.target.request_timeout,
                    max_bytes=self.target.max_response_bytes,
                    ssl_option=self._ssl,
                )
            except NotFound as exc:
                if says_not_found(exc.body):
                    return None
                raise PollError(
                    "http_4xx", "HTTP 404 that is not Datadog's 'errors' answer: "
                    f"{exc.detail}", status=404,
                ) from exc
            except PollError as exc:
                if exc.rate_limit is not None:
                    self.rate_limit = exc.rate_limit
                    self.pacer.update(exc.rate_limit, time.monotonic())
                if exc.reason == "rate_limited":
                    self.pacer.blocked_for(exc.retry_after, time.monotonic())
                raise
            finally:
                if self._on_progress is not None:
                    self._on_progress()
        if response.rate_limit is not None:
            self.rate_limit = response.rate_limit
            self.pacer.update(response.rate_limit, time.monotonic())
        return parse_batch(batch_id, response.body)
