"""Fault injection shared by both fakes."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from batchscope.simulator.datadog import FakeDatadog
from batchscope.simulator.engine import FakeEngine
from sim_support import DD_HEADERS, get_json


async def test_status_fault_applies_once(engine: FakeEngine, engine_client: TestClient) -> None:
    """A scripted status answers the next matching request only, then the real API resumes."""
    engine.inject("/batch/statistics", status=503, body='{"type": "x"}')

    async with engine_client.get("/batch/statistics") as resp:
        assert (resp.status, await resp.text()) == (503, '{"type": "x"}')
        assert resp.content_type == "application/json"
    assert await get_json(engine_client, "/batch/statistics") == []


async def test_fault_matches_path_and_query_only(
    engine: FakeEngine, engine_client: TestClient
) -> None:
    """Only requests whose path (with query) contains the string are affected."""
    engine.inject("completed=true", status=500)

    await get_json(engine_client, "/history/batch?completed=false")
    async with engine_client.get("/history/batch?completed=true") as resp:
        assert resp.status == 500


async def test_counted_and_unlimited_faults(
    datadog: FakeDatadog, datadog_client: TestClient
) -> None:
    """times=N fails N requests; times=None fails until clear_faults()."""
    batch_id = datadog.create_batch()
    path = f"/api/v1/synthetics/ci/batch/{batch_id}"
    datadog.inject(batch_id, status=502, times=2)

    statuses = []
    for _ in range(3):
        async with datadog_client.get(path, headers=DD_HEADERS) as resp:
            statuses.append(resp.status)
    datadog.inject(batch_id, status=500, times=None)
    for _ in range(3):
        async with datadog_client.get(path, headers=DD_HEADERS) as resp:
            statuses.append(resp.status)
    datadog.clear_faults()
    async with datadog_client.get(path, headers=DD_HEADERS) as resp:
        statuses.append(resp.status)

    assert statuses == [502, 502, 200, 500, 500, 500, 200]


def test_times_must_be_positive(engine: FakeEngine) -> None:
    """A fault that could never fire is a mistake in the test."""
    with pytest.raises(ValueError, match="times"):
        engine.inject("/batch", times=0)


async def test_malformed_body(engine: FakeEngine, engine_client: TestClient) -> None:
    """A body alone (no status) gives a 200 with that body: here, broken JSON."""
    engine.inject("/batch/statistics", body=b'[{"id": ')

    async with engine_client.get("/batch/statistics") as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        with pytest.raises(json.JSONDecodeError):
            await resp.json()


async def test_content_type_can_be_changed(engine: FakeEngine, engine_client: TestClient) -> None:
    """An HTML error page from a proxy, say, is served with its own content type."""
    engine.inject("/batch", status=502, body="<html>Bad Gateway</html>", content_type="text/html")
    async with engine_client.get("/batch") as resp:
        assert resp.status == 502 and resp.content_type == "text/html"


async def test_delay_then_real_response(engine: FakeEngine, engine_client: TestClient) -> None:
    """A delay without status holds the request back, then serves the real answer."""
    engine.create_batch(batch_id="b")
    engine.inject("/batch/statistics", delay=0.05)

    started = time.perf_counter()
    rows = await get_json(engine_client, "/batch/statistics")

    assert time.perf_counter() - started >= 0.05
    assert [r["id"] for r in rows] == ["b"]


async def test_delay_trips_client_timeout(engine: FakeEngine, engine_client: TestClient) -> None:
    """A delay longer than the client's timeout makes the request time out."""
    engine.inject("/batch/statistics", delay=0.5)
    with pytest.raises(asyncio.TimeoutError):
        await engine_client.get("/batch/statistics", timeout=aiohttp.ClientTimeout(total=0.05))


async def test_truncated_body(engine: FakeEngine, engine_client: TestClient) -> None:
    """truncate sends fewer bytes than Content-Length announces and drops the connection."""
    engine.create_many(20)
    engine.inject("/batch/statistics", truncate=True)

    async with engine_client.get("/batch/statistics") as resp:
        assert resp.status == 200
        announced = int(resp.headers["Content-Length"])
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    full = await get_json(engine_client, "/batch/statistics")
    assert announced == len(json.dumps(full, separators=(",", ":")).encode())


async def test_truncated_scripted_body(engine: FakeEngine, engine_client: TestClient) -> None:
    """truncate also works on a scripted body, even an empty one."""
    engine.inject("/batch", status=500, body=b"", truncate=True)
    async with engine_client.get("/batch") as resp:
        assert resp.status == 500
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_extra_headers_on_real_response(
    datadog: FakeDatadog, datadog_client: TestClient
) -> None:
    """Scripted headers are added to the answer, e.g. a Retry-After on a 429."""
    datadog.inject(
        "/api/v1",
        status=429,
        body='{"errors": ["Too many requests"]}',
        headers={"Retry-After": "7"},
    )
    async with datadog_client.get("/api/v1/synthetics/ci/batch/x", headers=DD_HEADERS) as resp:
        assert resp.status == 429 and resp.headers["Retry-After"] == "7"


async def test_faults_apply_before_auth_and_are_recorded(aiohttp_client: AiohttpClient) -> None:
    """Faults fire (and requests are logged) even for requests that would be unauthorized."""
    secured = FakeEngine(username="u", password="p")
    client = await aiohttp_client(secured.app)
    secured.inject("/batch", status=504)
    async with client.get("/batch?maxResults=1") as resp:
        assert resp.status == 504
    async with client.get("/batch?maxResults=2") as resp:
        assert resp.status == 401
    assert [r.path_qs for r in secured.requests] == ["/batch?maxResults=1", "/batch?maxResults=2"]
