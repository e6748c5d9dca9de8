"""The OpenAPI document: valid OpenAPI 3.1, the same routes as the app, and every documented
answer (errors included) produced by the app served with small ports and checked against
its schema."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from prometheus_client import CollectorRegistry

from batchscope.http.app import build_app
from batchscope.http.openapi import openapi_document
from batchscope.http.ports import ApiPorts, PollProblem, TargetStatus, WatchOutcome
from batchscope.model import (
    DATADOG_BATCH_TYPE,
    SOURCE_STATES,
    BatchTransition,
    CiMetadata,
    CiResult,
    Diagnosis,
    JobCounts,
    Reason,
    ResultCounts,
    ResultState,
    ResultTransition,
    Source,
    State,
)
from batchscope.settings import HttpSettings
from batchscope.sinks.events import EventBuffer
from batchscope.tracker import Key, ResultSlot, TrackedBatch
from batchscope.tracker.links import DatadogLinks
from openapi_kit import OpenApiChecker

TOKEN = "openapi-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ENGINE_ID = "4f6d3c2a-0000-4000-8000-000000000001"
CI_ID = "ci-batch-1"


def engine_record() -> TrackedBatch:
    return TrackedBatch(
        source=Source.ENGINE, target="prod", batch_id=ENGINE_ID,
        batch_type="instance-migration", state=State.FAILED, state_since=100.0,
        first_seen=90.0, last_seen=120.0,
        jobs=JobCounts(total=10, created=10, completed=4, remaining=6, failed=2),
        diagnosis=Diagnosis(reason=Reason.FAILED_JOBS, link="https://cockpit.example/#/batch",
                            failure={"failed_jobs": 2, "sampled": 2, "messages": [{
                                "message": "boom", "count": 2, "job_ids": ["j1", "j2"],
                                "process_instance_ids": ["p1"], "activity_ids": ["Task_A"]}]}))


def ci_result(status: str = "failed") -> CiResult:
    return CiResult(test_public_id="abc-def-ghi", status=status, location="aws:eu-west-1",
                    device="chrome.laptop_large", test_name="Checkout", test_type="browser",
                    execution_rule="blocking", result_id="r-1", retries=0, duration_ms=1234.0,
                    timed_out=False)


def ci_record() -> TrackedBatch:
    return TrackedBatch(
        source=Source.DATADOG, target="ci", batch_id=CI_ID, batch_type=DATADOG_BATCH_TYPE,
        state=State.FAILED, state_since=100.0, first_seen=90.0, last_seen=120.0,
        raw_status="failed",
        results={"abc-def-ghi|aws:eu-west-1|chrome.laptop_large": ResultSlot(
            state=ResultState.FAILED, result_id="r-1", retries=0, latest=ci_result())},
        result_counts=ResultCounts(total=1, failed=1),
        diagnosis=Diagnosis(reason=Reason.BLOCKING_RESULTS_FAILED, failure={
            "results_failed": 1, "results": [{
                "test_public_id": "abc-def-ghi", "test_name": "Checkout",
                "location": "aws:eu-west-1", "device": "chrome.laptop_large",
                "execution_rule": "blocking", "timed_out": False, "retries": 0,
                "result_id": "r-1", "link": "https://app.datadoghq.com/x"}]},
            link="https://app.datadoghq.com/synthetics/explorer/ci?batchResultId=ci-batch-1"))


class Ports:
    """Every port, over a dict of records and a real EventBuffer."""

    def __init__(self) -> None:
        self.records: dict[Key, TrackedBatch] = {r.key: r for r in (engine_record(),
                                                                    ci_record())}
        self.events = EventBuffer()
        self.full = False
        self.commit_ok = True

    def batches(self) -> Iterator[TrackedBatch]:
        return iter(self.records.values())

    def batches_after(self, after: Key | None) -> Iterator[TrackedBatch]:
        return iter([self.records[k] for k in sorted(self.records)
                     if after is None or k > after])

    def get(self, source: Source, target: str, batch_id: str) -> TrackedBatch | None:
        return self.records.get((source, target, batch_id))

    def healthy(self) -> bool:
        return True

    @property
    def ready(self) -> bool:
        return True

    def datadog_targets(self) -> list[str]:
        return ["ci"]

    def watch(self, target: str, batch_id: str) -> WatchOutcome:
        key = (Source.DATADOG, target, batch_id)
        if key in self.records:
            return WatchOutcome.ALREADY
        if self.full:
            return WatchOutcome.REFUSED
        self.records[key] = TrackedBatch(
            source=Source.DATADOG, target=target, batch_id=batch_id,
            batch_type=DATADOG_BATCH_TYPE, state=State.NONE, state_since=1.0, first_seen=1.0,
            last_seen=1.0)
        return WatchOutcome.ADDED

    def unwatch(self, target: str, batch_id: str) -> bool:
        return self.records.pop((Source.DATADOG, target, batch_id), None) is not None

    async def commit(self) -> bool:
        return self.commit_ok

    def targets(self) -> list[TargetStatus]:
        now = time.time()
        return [
            TargetStatus(Source.ENGINE, "prod", True, 10.0, now, now, None,
                         {s: 1 if s is State.FAILED else 0
                          for s in SOURCE_STATES[Source.ENGINE]}),
            TargetStatus(Source.DATADOG, "ci", False, 5.0, now, None,
                         PollProblem("auth", "HTTP 403: Forbidden"),
                         dict.fromkeys((State.NONE, *SOURCE_STATES[Source.DATADOG]), 0)),
        ]

    def result_links(self, target: str) -> DatadogLinks | None:
        return DatadogLinks("https://app.datadoghq.com") if target == "ci" else None


def sample_events(buffer: EventBuffer) -> None:
    buffer.extend([
        BatchTransition(seq=1, time=100.0, source=Source.ENGINE, target="prod",
                        batch_id=ENGINE_ID, batch_type="instance-migration",
                        from_state=State.NONE, to_state=State.IN_PROGRESS,
                        jobs=JobCounts(10, 10, 0, 10, 0)),
        BatchTransition(seq=2, time=101.0, source=Source.DATADOG, target="ci", batch_id=CI_ID,
                        batch_type=DATADOG_BATCH_TYPE, from_state=State.IN_PROGRESS,
                        to_state=State.FAILED, duration_seconds=11.0,
                        results=ResultCounts(total=1, failed=1),
                        metadata=CiMetadata(pipeline_url="https://ci.example/1",
                                            git_branch="main", git_commit="abc")),
        ResultTransition(seq=3, time=101.0, target="ci", batch_id=CI_ID, result=ci_result(),
                         from_state=ResultState.IN_PROGRESS, to_state=ResultState.FAILED),
    ])


@asynccontextmanager
async def client(ports: Ports, *, token: str | None = TOKEN, max_streams: int = 4,
                 max_body_bytes: int = 65536) -> AsyncIterator[TestClient[Any, Any]]:
    app = build_app(ApiPorts(batches=ports, events=ports.events, health=ports,
                             watch_list=ports, targets=ports),
                    CollectorRegistry(), HttpSettings(api_token=token,
                                                      max_body_bytes=max_body_bytes),
                    stream_heartbeat=0.05, max_streams=max_streams)
    c: TestClient[Any, Any] = TestClient(TestServer(app))
    await c.start_server()
    try:
        yield c
    finally:
        await c.close()


async def answer(c: TestClient[Any, Any], checker: OpenApiChecker, method: str, path: str,
                 **kwargs: Any) -> tuple[int, Any]:
    resp = await c.request(method, path, **kwargs)
    raw = await resp.read()
    ctype = resp.headers.get("Content-Type")
    body: Any = raw
    if ctype is not None and ctype.startswith("application/json"):
        body = await resp.json()
    elif not raw:
        body = None
    checker.check(method, path, resp.status, ctype if raw else None, body)
    return resp.status, body


def test_the_document_is_valid_openapi_3_1() -> None:
    """openapi-spec-validator accepts it as OpenAPI 3.1 and every schema is valid 2020-12."""
    doc = openapi_document()
    assert doc["openapi"].startswith("3.1")
    validate_openapi(doc)
    for schema in doc["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


def test_every_error_answer_is_the_error_object() -> None:
    """Every documented 4xx/5xx answer is application/json with the Error schema."""
    for path, item in openapi_document()["paths"].items():
        for method, op in item.items():
            for status, response in op["responses"].items():
                if int(status) >= 400:
                    assert response["content"] == {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Error"}}}, (method, path)


def test_the_document_names_every_api_route_and_no_other() -> None:
    """The routes the app serves under /api/v1 and the operations documented are the same
    (HEAD, added by aiohttp for each GET, aside)."""
    app = build_app(ApiPorts(batches=Ports(), events=EventBuffer(), health=Ports(),
                             watch_list=Ports()), CollectorRegistry(), HttpSettings())
    served = {(r.method, r.resource.canonical) for r in app.router.routes()
              if r.resource is not None and r.resource.canonical.startswith("/api/v1")
              and r.method != "HEAD"}
    documented = {(m.upper(), p) for p, item in openapi_document()["paths"].items()
                  for m in item}
    assert served == documented


async def test_every_documented_answer_happens_and_matches_its_schema() -> None:
    """Each documented (operation, status) pair is produced by the app and its body
    validates against the document; nothing documented goes unexercised."""
    checker = OpenApiChecker()
    ports = Ports()
    sample_events(ports.events)
    async with client(ports) as c:
        # reads
        assert (await answer(c, checker, "GET", "/api/v1/batches"))[0] == 200
        assert (await answer(c, checker, "GET", "/api/v1/batches?limit=1"))[0] == 200
        for bad in ("limit=0", "limit=1_0", "state=nope", "source=x", "cursor=%%%"):
            assert (await answer(c, checker, "GET", f"/api/v1/batches?{bad}"))[0] == 400, bad
        status, engine = await answer(c, checker, "GET",
                                      f"/api/v1/batches/engine/prod/{ENGINE_ID}")
        assert status == 200 and engine["failure"]["messages"][0]["message"] == "boom"
        assert "results" not in engine
        status, ci = await answer(c, checker, "GET", f"/api/v1/batches/datadog/ci/{CI_ID}")
        link = ci["results"][0]["link"]  # built by the target's links, into its app
        assert status == 200 and link.startswith("https://app.datadoghq.com/") and "r-1" in link
        for bad in (f"nope/prod/{ENGINE_ID}", "engine/prod/has%20space"):
            assert (await answer(c, checker, "GET", f"/api/v1/batches/{bad}"))[0] == 400, bad
        for gone in ("engine/prod/gone", f"engine/elsewhere/{ENGINE_ID}", "datadog/prod/x"):
            status, body = await answer(c, checker, "GET", f"/api/v1/batches/{gone}")
            assert status == 404, gone
        assert "no datadog target 'prod'" in body["error"]
        status, events = await answer(c, checker, "GET", "/api/v1/events")
        assert status == 200 and [e["seq"] for e in events] == [1, 2, 3]
        status, events = await answer(c, checker, "GET", "/api/v1/events?last=2")
        assert [e["seq"] for e in events] == [2, 3]
        for bad in ("after=x", "limit=0", "last=0", "after=%201"):
            assert (await answer(c, checker, "GET", f"/api/v1/events?{bad}"))[0] == 400, bad
        status, targets = await answer(c, checker, "GET", "/api/v1/targets")
        assert status == 200 and targets[1]["last_error"] == {
            "reason": "auth", "detail": "HTTP 403: Forbidden"}
        status, doc = await answer(c, checker, "GET", "/api/v1/openapi.json")
        assert status == 200 and doc == openapi_document()
        # the stream: a bounded one, bad positions, and one too many
        status, body = await answer(c, checker, "GET", "/api/v1/events/stream?timeout=0.2")
        assert status == 200 and b"id: 3\n" in body
        for bad in ("after=x", "timeout=0", "timeout=nan", "timeout=1e9"):
            assert (await answer(c, checker, "GET",
                                 f"/api/v1/events/stream?{bad}"))[0] == 400, bad
        assert (await answer(c, checker, "GET", "/api/v1/events/stream",
                             headers={"Last-Event-ID": "two"}))[0] == 400
        # writes
        post = "/api/v1/datadog/batches"
        assert (await answer(c, checker, "POST", post, json={"batch_id": "new-1"},
                             headers=AUTH))[0] == 201
        assert (await answer(c, checker, "POST", post, json={"batch_id": "new-1"},
                             headers=AUTH))[0] == 200
        assert (await answer(c, checker, "POST", post, data=b"{", headers=AUTH))[0] == 400
        assert (await answer(c, checker, "POST", post, json={"batch_id": "x"}))[0] == 401
        assert (await answer(c, checker, "POST", post, data=b"x" * 70000,
                             headers=AUTH))[0] == 413
        ports.full = True
        assert (await answer(c, checker, "POST", post, json={"batch_id": "new-2"},
                             headers=AUTH))[0] == 503
        delete = "/api/v1/datadog/batches/new-1"
        assert (await answer(c, checker, "DELETE", delete))[0] == 401
        assert (await answer(c, checker, "DELETE", delete, headers=AUTH))[0] == 204
        assert (await answer(c, checker, "DELETE", delete, headers=AUTH))[0] == 404
        assert (await answer(c, checker, "DELETE", delete + "?target=nope",
                             headers=AUTH))[0] == 404
        assert (await answer(c, checker, "DELETE", "/api/v1/datadog/batches/a%20b",
                             headers=AUTH))[0] == 400
    async with client(ports, token=None) as c:
        assert (await answer(c, checker, "POST", post, json={"batch_id": "x"}))[0] == 403
        assert (await answer(c, checker, "DELETE", delete))[0] == 403
    async with client(ports, max_streams=1) as c:
        first = await c.get("/api/v1/events/stream")
        assert first.status == 200
        assert (await answer(c, checker, "GET", "/api/v1/events/stream"))[0] == 503
        first.close()

    documented = {(m.upper(), p, s) for p, item in checker.doc["paths"].items()
                  for m, op in item.items() for s in op["responses"]}
    assert documented - checker.seen == set()


async def test_unknown_api_paths_and_methods_answer_json_errors() -> None:
    """The router's own 404 and 405 under /api/ are JSON errors (405 with Allow); outside
    /api/ the page's missing assets stay plain 404s."""
    async with client(Ports()) as c:
        resp = await c.get("/api/v1/nothing-here")
        assert resp.status == 404 and "error" in await resp.json()
        resp = await c.patch("/api/v1/targets")
        assert resp.status == 405 and "error" in await resp.json()
        assert "GET" in resp.headers["Allow"]
        resp = await c.get("/static/nothing.js")
        assert resp.status == 404 and resp.content_type == "text/plain"


async def test_the_stream_does_not_hold_up_shutdown() -> None:
    """An open stream ends as soon as the app shuts down: the client sees the end of the
    stream and the server's cleanup does not wait out its timeout."""
    ports = Ports()
    async with client(ports) as c:
        resp = await c.get("/api/v1/events/stream")
        assert resp.status == 200
        await resp.content.readuntil(b"\n\n")  # the opening comment and retry:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await c.server.app.shutdown()
        tail = await asyncio.wait_for(resp.content.read(), 5)
        assert loop.time() - started < 2
        assert resp.content.at_eof() and b"data:" not in tail


@pytest.mark.parametrize("name", ["app.js", "app.css", "favicon.svg"])
async def test_page_assets_are_served_with_etags(name: str) -> None:
    """The page's files come from the package, with an ETag that answers 304 when the
    browser has them, and the security headers."""
    async with client(Ports()) as c:
        resp = await c.get(f"/static/{name}")
        assert resp.status == 200 and len(await resp.read()) > 100
        etag = resp.headers["ETag"]
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        again = await c.get(f"/static/{name}", headers={"If-None-Match": etag})
        assert again.status == 304


async def test_an_idle_stream_sends_keep_alive_comments() -> None:
    """With no events, the stream writes comment lines every heartbeat (proxies keep it
    open) and no data; an event added later arrives as its message."""
    ports = Ports()
    async with client(ports) as c:  # heartbeat 0.05 s
        resp = await c.get("/api/v1/events/stream")
        seen = b""
        async with asyncio.timeout(5):
            while seen.count(b": keep-alive\n\n") < 3:
                seen += await resp.content.readline()
        assert b"data:" not in seen
        sample_events(ports.events)
        async with asyncio.timeout(5):
            while seen.count(b"data: {") < 3:
                seen += await resp.content.readline()
        assert [int(n) for n in re.findall(rb"^id: (\d+)$", seen, re.MULTILINE)] == [1, 2, 3]
        resp.close()
