"""Schemathesis fuzzes the API of a real daemon (polling the simulator, on loopback) from its
own OpenAPI document: no 5xx, every answer documented and matching its schema, every 4xx a
JSON {"error": ...}, and nothing tracked changes when a request is rejected.

Bounded and repeatable: a fixed number of examples per operation, derandomized (Hypothesis
derives its seed from the test), no example database. The daemon runs on its own event
loop in a thread, because schemathesis calls the API synchronously."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from batchscope.http.openapi import openapi_document
from batchscope.sinks.logs import configure_logging
from harness import DATADOG, TOKEN, running_stack

EXAMPLES = 30  # per operation
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class LiveDaemon:
    """A daemon + simulator stack on a thread's own event loop."""

    def __init__(self) -> None:
        self.base = ""
        self.log = io.StringIO()
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="fuzzed-daemon", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(30):
            raise AssertionError("the daemon did not start within 30 s")
        if self._failed is not None:
            raise AssertionError("the daemon failed to start") from self._failed

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._failed = exc
            self._ready.set()

    async def _main(self) -> None:
        async with running_stack() as stack:
            stack.engine.create_batch(total_jobs=10)
            failing = stack.engine.create_batch(type="instance-modification", total_jobs=5)
            stack.engine.fail_jobs(failing, 1)
            await stack.watch(stack.datadog.create_batch())
            self.base = stack.base
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._ready.set()
            await self._stop.wait()

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the daemon did not stop"

    def tracked(self) -> set[tuple[str, str, str]]:
        """Every tracked key (states may move with polling; the set moves only by writes)."""
        resp = requests.get(self.base + "/api/v1/batches?limit=10000", timeout=10)
        resp.raise_for_status()
        return {(r["source"], r["target"], r["batch_id"]) for r in resp.json()}


@pytest.fixture(scope="module")
def live_daemon() -> Iterator[LiveDaemon]:
    configure_logging(log_format="json", level="info", stream=io.StringIO(),
                      secrets=[TOKEN])
    daemon = LiveDaemon()
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.close()


# The document the daemon serves at /api/v1/openapi.json (test_openapi.py checks they are
# the same), loaded at collection time so each operation is its own test.
schema = schemathesis.openapi.from_dict(openapi_document())


def bounded(case: Any) -> None:
    """The event stream never ends by itself: give every valid request a short timeout."""
    if case.operation.path != "/api/v1/events/stream":
        return
    query = dict(case.query or {})
    try:
        if float(query.get("timeout", "inf")) > 0.3:
            query["timeout"] = 0.2
    except (TypeError, ValueError):
        pass  # an invalid value: the 400 comes at once
    case.query = query


def rejectable(case: Any) -> list[Any]:
    """Schema-valid requests the contract rejects, exempt from the check that valid data is
    accepted: a cursor this API did not hand out (opaque, so no fuzzer can make one), and a
    watch on a Datadog target that is not configured (SPEC: 400)."""
    body = case.body if isinstance(case.body, dict) else {}
    if ("cursor" in (case.query or {})
            or (case.operation.method.upper() == "POST"
                and body.get("target") not in (None, DATADOG))):
        return [positive_data_acceptance]
    return []


@schema.parametrize()
@settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_api_survives_fuzzing(case: Any, live_daemon: LiveDaemon) -> None:
    """Each generated request gets a documented answer that matches its schema (the
    default checks), never a 5xx; a 4xx is a JSON error object and leaves the tracked
    batches as they were."""
    bounded(case)
    before = live_daemon.tracked()
    response = case.call_and_validate(base_url=live_daemon.base, headers=AUTH, timeout=10,
                                      excluded_checks=rejectable(case))
    assert response.status_code < 500, response.text
    if 400 <= response.status_code < 500:
        body = response.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"]
        assert live_daemon.tracked() == before, "a rejected request changed what is tracked"
