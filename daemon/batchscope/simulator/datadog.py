"""A fake Datadog Synthetics CI API: CI batches, their per-test results, and the two endpoints
batchscope and datadog-ci use (get a batch, trigger tests).

It reproduces what the live API does beyond its OpenAPI document, as the official client
(datadog-ci) reads it: the ``in_progress`` status; ``duration`` 0 while a result runs;
``retries``, ``max_retries`` and ``timed_out`` null until known; fast retries (the failed
first attempt stays ``in_progress`` under its ``result_id`` with ``retries`` 0, the final
attempt has a new ``result_id``, ``retries`` 1 and ``initial_result_id``); skipped entries
(execution rule, selective rerun) without location or result id; CI metadata as datadog-ci
sends it (``git.commit.sha``); a freshly triggered batch briefly answering 404; 403
``{"errors": ["API key required"]}``; and calendar-aligned rate limiting with
``X-RateLimit-*`` headers (429s counted in ``rate_limited``). A batch's life can be scripted
for exact times (:meth:`FakeDatadog.at`): results ending one after another, the batch after.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import secrets
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from batchscope.simulator.faults import FaultInjector

Clock = Callable[[], float]
Row = dict[str, object]

FINAL_RESULT_STATUSES = frozenset({"passed", "failed", "skipped"})
RATE_LIMIT_NAME = "synthetics_ci_batch"

SAMPLE_TESTS: tuple[Mapping[str, Any], ...] = (
    {
        "test_public_id": "abc-def-ghi",
        "test_name": "Checkout flow",
        "test_type": "browser",
        "location": "aws:eu-central-1",
        "device": "chrome.laptop_large",
        "execution_rule": "blocking",
        "max_retries": 1,
    },
    {
        "test_public_id": "jkl-mno-pqr",
        "test_name": "Health endpoint",
        "test_type": "api",
        "location": "aws:us-east-1",
        "device": None,
        "execution_rule": "blocking",
        "max_retries": 0,
    },
)

SAMPLE_METADATA: Mapping[str, Any] = {
    "ci": {
        "job": {"name": "e2e-tests", "url": "https://ci.example.com/acme/shop/jobs/5678"},
        "pipeline": {"url": "https://ci.example.com/acme/shop/pipelines/1234"},
        "provider": {"name": "github"},
    },
    "git": {
        "branch": "main",
        "commit": {
            "sha": "3f0c1b2a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a",
            "message": "Checkout: retry the payment call",
            "author": {"name": "Dev Eloper", "email": "dev@example.com"},
        },
        "repository_url": "https://github.com/acme/shop",
    },
}

# Known locations as the trigger endpoint describes them; others get generic entries.
_LOCATIONS: Mapping[str, tuple[str, str]] = {
    "aws:eu-central-1": ("Frankfurt (AWS)", "EMEA"),
    "aws:us-east-1": ("N. Virginia (AWS)", "Americas"),
    "aws:ap-northeast-1": ("Tokyo (AWS)", "Asia Pacific"),
}


@dataclass(slots=True)
class CIResult:
    """One result slot of a batch: a test at a location on a device.

    ``duration`` None means not measured yet (served as 0). ``retry_pending`` marks a failed
    attempt whose fast retry runs: the final status comes with a new ``result_id``.
    """

    test_public_id: str
    test_name: str | None
    test_type: str | None
    location: str | None
    device: str | None
    execution_rule: str
    result_id: str | None
    status: str = "in_progress"
    retries: int | None = None
    max_retries: int | None = None
    timed_out: bool | None = None
    duration: float | None = None
    initial_result_id: str | None = None
    selective_rerun: Mapping[str, Any] | None = None
    retry_pending: bool = False

    def render(self) -> Row:
        """The JSON object the batch endpoint returns for this result."""
        row: Row = {
            "test_public_id": self.test_public_id,
            "test_name": self.test_name,
            "test_type": self.test_type,
            "status": self.status,
            "execution_rule": self.execution_rule,
        }
        if self.execution_rule != "skipped":
            # skipped entries carry no location, device, duration or result id
            row["location"] = self.location
            if self.device is not None:
                row["device"] = self.device
            row["result_id"] = self.result_id
            if self.initial_result_id is not None:
                row["initial_result_id"] = self.initial_result_id
            row["duration"] = self.duration if self.duration is not None else 0
        row |= {
            "retries": self.retries,
            "max_retries": self.max_retries,
            "timed_out": self.timed_out,
        }
        if self.selective_rerun is not None:
            row["selective_rerun"] = dict(self.selective_rerun)
        return row


@dataclass(slots=True)
class CIBatch:
    """A CI batch: its raw status string, CI metadata and results."""

    id: str
    created_at: float
    metadata: Mapping[str, Any]
    results: list[CIResult] = field(default_factory=list)
    status: str = "in_progress"

    def render(self) -> Row:
        return {
            "data": {
                "status": self.status,
                "metadata": self.metadata,
                "results": [result.render() for result in self.results],
            }
        }


def _errors(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return _json({"errors": [message]}, status, headers)


def _json(
    payload: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload), status=status, headers=headers, content_type="application/json"
    )


class FakeDatadog(FaultInjector):
    """In-memory Datadog Synthetics CI batches behind the real endpoints."""

    def __init__(
        self,
        *,
        clock: Clock = time.time,
        api_key: str = "demo-api-key",
        app_key: str = "demo-app-key",
        rate_limit: int | None = None,
        rate_limit_period: float = 60,
        not_found_for: float = 0.0,
    ) -> None:
        super().__init__()
        self.clock = clock
        self.api_key = api_key
        self.app_key = app_key
        self.rate_limit = rate_limit
        self.rate_limit_period = rate_limit_period
        self.not_found_for = not_found_for
        self._batches: dict[str, CIBatch] = {}
        self._random = random.Random()
        self._location_ids: dict[str, int] = {name: i for i, name in enumerate(_LOCATIONS, 1)}
        self._window = -1
        self._window_used = 0
        #: requests answered 429 by the rate limit (the pacing tests expect none)
        self.rate_limited = 0
        self._timeline: list[tuple[float, int, Callable[[], None]]] = []
        self._timeline_order = itertools.count()

    # ----------------------------------------------------------------- control API

    def create_batch(
        self,
        batch_id: str | None = None,
        tests: Sequence[Mapping[str, Any]] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Start a batch with one in-progress result per test entry.

        Each entry gives ``test_public_id`` and optionally ``test_name``, ``test_type``,
        ``location``, ``device``, ``execution_rule`` (``skipped`` makes a skipped entry),
        ``max_retries`` (None: null) and ``selective_rerun`` (the decision object, e.g.
        ``{"decision": "skip", "reason": "passed", "linked_result_id": "..."}``; a skip makes
        a skipped entry). ``tests=None`` uses :data:`SAMPLE_TESTS`, ``metadata=None`` uses
        :data:`SAMPLE_METADATA` (pass ``{}`` for none).
        """
        batch_id = batch_id or str(uuid.uuid4())
        if batch_id in self._batches:
            raise ValueError(f"batch {batch_id!r} already exists")
        batch = CIBatch(
            id=batch_id,
            created_at=self.clock(),
            metadata=SAMPLE_METADATA if metadata is None else metadata,
        )
        batch.results = [self._new_result(spec) for spec in (tests or SAMPLE_TESTS)]
        self._batches[batch_id] = batch
        return batch_id

    def create_many(self, n: int) -> list[str]:
        """Create ``n`` sample batches (benchmarks)."""
        return [self.create_batch() for _ in range(n)]

    def set_result(
        self,
        batch_id: str,
        test_public_id: str,
        *,
        status: str | None = None,
        location: str | None = None,
        device: str | None = None,
        retries: int | None = None,
        new_attempt: bool = False,
        duration: float | None = None,
        timed_out: bool | None = None,
    ) -> None:
        """Update the results of a test; ``location``/``device`` narrow which slots.

        ``new_attempt`` models a fast retry: the attempt shown failed and another runs. The
        first attempt keeps its ``result_id`` and gets ``retries`` 0, a duration and
        ``timed_out`` false, status still ``in_progress``; a later non-final attempt gets a
        new ``result_id`` (``initial_result_id``: the first) and ``retries`` + 1. The final
        status after a retry (``status``, :meth:`finish`) comes with a new ``result_id``,
        ``retries`` + 1 and ``initial_result_id``. Raises ``KeyError`` when no slot matches.
        """
        batch = self._batch(batch_id)
        slots = [
            r
            for r in batch.results
            if r.test_public_id == test_public_id
            and location in (None, r.location)
            and device in (None, r.device)
        ]
        if not slots:
            raise KeyError(f"no result for {test_public_id!r} in batch {batch_id!r}")
        for result in slots:
            if duration is not None:
                result.duration = duration
            if new_attempt:
                self._new_attempt(batch, result)
            if retries is not None:
                result.retries = retries
            if timed_out is not None:
                result.timed_out = timed_out
            if status is not None:
                self._conclude(batch, result, status)

    def finish(self, batch_id: str, status: str) -> None:
        """Set the batch status and give unfinished results the same status.

        Any string is accepted; for one that is not a result status (e.g. ``"exploded"``) the
        results are left as they are.
        """
        batch = self._batch(batch_id)
        batch.status = status
        if status in FINAL_RESULT_STATUSES:
            for result in batch.results:
                if result.status == "in_progress":
                    self._conclude(batch, result, status)

    def set_status(self, batch_id: str, raw: str) -> None:
        """Set the raw batch status without touching the results."""
        self._batch(batch_id).status = raw

    def delete(self, batch_id: str) -> None:
        """Forget the batch; it answers 404 from now on (idempotent)."""
        self._batches.pop(batch_id, None)

    def batch(self, batch_id: str) -> CIBatch:
        """The batch model, for inspection; ``KeyError`` when unknown."""
        self.advance()
        return self._batch(batch_id)

    def at(self, when: float, change: Callable[[], None]) -> None:
        """Script a change (``lambda: fake.finish(batch, "passed")``) for the moment the
        fake's clock reaches ``when``: a batch's life with exact end times, whatever the
        timing of the requests. Applied, in time order, before a batch is answered or
        inspected (and by :meth:`advance`)."""
        heapq.heappush(self._timeline, (when, next(self._timeline_order), change))

    def advance(self) -> None:
        """Apply the scripted changes that are due by now."""
        now = self.clock()
        while self._timeline and self._timeline[0][0] <= now:
            heapq.heappop(self._timeline)[2]()

    def batch_ids(self) -> list[str]:
        """Ids of all known batches, in creation order."""
        return list(self._batches)

    # ----------------------------------------------------------------- model internals

    def _batch(self, batch_id: str) -> CIBatch:
        batch = self._batches.get(batch_id)
        if batch is None:
            raise KeyError(f"no batch {batch_id!r}")
        return batch

    def _result_id(self) -> str:
        return str(self._random.randrange(10**18, 10**19))

    def _new_result(self, spec: Mapping[str, Any]) -> CIResult:
        rerun = spec.get("selective_rerun")
        rule = "skipped" if rerun and rerun.get("decision") == "skip" else spec.get(
            "execution_rule", "blocking")
        skipped = rule == "skipped"
        return CIResult(
            test_public_id=spec["test_public_id"],
            test_name=spec.get("test_name"),
            test_type=spec.get("test_type"),
            location=None if skipped else spec.get("location", "aws:us-east-1"),
            device=None if skipped else spec.get("device"),
            execution_rule=rule,
            result_id=None if skipped else self._result_id(),
            status="skipped" if skipped else "in_progress",
            max_retries=None if skipped else spec.get("max_retries", 0),
            selective_rerun=rerun,
        )

    def _elapsed_ms(self, batch: CIBatch) -> float:
        return round((self.clock() - batch.created_at) * 1000.0, 1)

    def _new_attempt(self, batch: CIBatch, result: CIResult) -> None:
        """The attempt shown failed and a fast retry runs (see :meth:`set_result`)."""
        if result.retries is None:
            result.retries = 0
        else:
            result.initial_result_id = result.initial_result_id or result.result_id
            result.result_id = self._result_id()
            result.retries += 1
        if result.duration is None:
            result.duration = self._elapsed_ms(batch)
        result.timed_out = False
        result.retry_pending = True

    def _conclude(self, batch: CIBatch, result: CIResult, status: str) -> None:
        """Give a result its status; a final one gets a duration, ``retries`` and
        ``timed_out`` if unset, and a new ``result_id`` when it ends a fast retry."""
        result.status = status
        if status not in FINAL_RESULT_STATUSES or status == "skipped":
            return
        if result.retry_pending:
            result.retry_pending = False
            result.initial_result_id = result.initial_result_id or result.result_id
            result.result_id = self._result_id()
            result.retries = (result.retries or 0) + 1
        if result.duration is None:
            result.duration = self._elapsed_ms(batch)
        if result.retries is None:
            result.retries = 0
        if result.timed_out is None:
            result.timed_out = False

    # ----------------------------------------------------------------- HTTP application

    def make_app(self) -> web.Application:
        """A new application serving the API paths (they start with ``/api/v1``)."""
        app = web.Application(middlewares=[self.middleware(), self._guard])
        app.router.add_get("/api/v1/synthetics/ci/batch/{batch_id}", self._get_batch)
        app.router.add_post("/api/v1/synthetics/tests/trigger/ci", self._trigger)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """API and application key check (403), then the rate limit (429 + headers)."""
        if not request.headers.get("DD-API-KEY"):
            return _errors(403, "API key required")
        if not self._authenticated(request):
            return _errors(403, "Forbidden")
        if self.rate_limit is None:
            return await handler(request)
        allowed, headers = self._spend_rate_limit(self.rate_limit)
        if not allowed:
            self.rate_limited += 1
            return _errors(429, "Too many requests", headers)
        response = await handler(request)
        response.headers.update(headers)
        return response

    def _authenticated(self, request: web.Request) -> bool:
        api_key = request.headers.get("DD-API-KEY", "").encode()
        app_key = request.headers.get("DD-APPLICATION-KEY", "").encode()
        return secrets.compare_digest(api_key, self.api_key.encode()) and secrets.compare_digest(
            app_key, self.app_key.encode()
        )

    def _spend_rate_limit(self, limit: int) -> tuple[bool, dict[str, str]]:
        """Count one request against the calendar-aligned window; return verdict and headers."""
        now, period = self.clock(), self.rate_limit_period
        window = math.floor(now / period)
        if window != self._window:
            self._window, self._window_used = window, 0
        self._window_used += 1
        headers = {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Period": f"{period:g}",
            "X-RateLimit-Remaining": str(max(0, limit - self._window_used)),
            "X-RateLimit-Reset": str(math.ceil((window + 1) * period - now)),
            "X-RateLimit-Name": RATE_LIMIT_NAME,
        }
        return self._window_used <= limit, headers

    async def _get_batch(self, request: web.Request) -> web.Response:
        self.advance()
        batch = self._batches.get(request.match_info["batch_id"])
        if batch is None or self.clock() - batch.created_at < self.not_found_for:
            return _errors(404, "Batch does not exist.")
        return _json(batch.render())

    async def _trigger(self, request: web.Request) -> web.Response:
        """Create a batch from ``{"tests": [{"public_id": ...}], "metadata": {...}}``."""
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _errors(400, "JSON format is wrong")
        tests = body.get("tests") if isinstance(body, dict) else None
        if not isinstance(tests, list) or not tests or not all(map(_is_ci_test, tests)):
            return _errors(400, "JSON format is wrong")
        metadata = body.get("metadata")
        specs = [spec for test in tests for spec in _specs_from_ci_test(test)]
        batch = self._batch(
            self.create_batch(tests=specs, metadata=metadata if isinstance(metadata, dict) else {})
        )
        return _json(self._trigger_response(batch, tests))

    def _trigger_response(self, batch: CIBatch, tests: list[dict[str, Any]]) -> Row:
        triggered = [r for r in batch.results if r.result_id is not None]
        names = list(dict.fromkeys(r.location for r in triggered if r.location is not None))
        return {
            "batch_id": batch.id,
            "locations": [self._location(name) for name in names],
            "results": [
                {
                    "device": r.device,
                    "location": self._location_id(r.location) if r.location else None,
                    "public_id": r.test_public_id,
                    "result_id": r.result_id,
                }
                for r in triggered
            ],
            "triggered_check_ids": list(dict.fromkeys(t["public_id"] for t in tests)),
        }

    def _location_id(self, name: str) -> int:
        """Stable numeric id per location name, as the trigger response reports them."""
        return self._location_ids.setdefault(name, len(self._location_ids) + 1)

    def _location(self, name: str) -> Row:
        display, region = _LOCATIONS.get(name, (name, "Other"))
        return {
            "display_name": display,
            "id": self._location_id(name),
            "is_active": True,
            "name": name,
            "region": region,
        }


def _is_ci_test(test: object) -> bool:
    return isinstance(test, dict) and isinstance(test.get("public_id"), str)


def _specs_from_ci_test(test: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One result slot per location and device of a triggered test (SyntheticsCITest)."""
    devices: list[str | None] = list(test.get("deviceIds") or [None])
    retry = test.get("retry")
    return [
        {
            "test_public_id": test["public_id"],
            "test_name": f"Synthetic test {test['public_id']}",
            "test_type": "browser" if test.get("deviceIds") else "api",
            "location": location,
            "device": device,
            "execution_rule": "blocking",
            "max_retries": retry.get("count", 0) if isinstance(retry, dict) else 0,
        }
        for location in test.get("locations") or ["aws:us-east-1"]
        for device in devices
    ]
