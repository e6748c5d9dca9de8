"""The fake Datadog Synthetics CI API: batches, results, auth, rate limits."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from batchscope.simulator.datadog import SAMPLE_METADATA, FakeDatadog
from sim_support import DD_HEADERS, EPOCH, FakeClock, get_json

BATCH_PATH = "/api/v1/synthetics/ci/batch/"
TRIGGER_PATH = "/api/v1/synthetics/tests/trigger/ci"
BROWSER, API = "abc-def-ghi", "jkl-mno-pqr"


async def get_batch(client: TestClient, batch_id: str, status: int = 200) -> dict[str, object]:
    body: dict[str, object] = await get_json(
        client, BATCH_PATH + batch_id, status=status, headers=DD_HEADERS
    )
    return body


def results_by_test(body: dict[str, object]) -> dict[str, dict[str, object]]:
    data = body["data"]
    assert isinstance(data, dict)
    return {r["test_public_id"]: r for r in data["results"]}


async def test_batch_shape(datadog: FakeDatadog, datadog_client: TestClient) -> None:
    """A new batch is in_progress with CI metadata and one in-progress result per test."""
    batch_id = datadog.create_batch()

    body = await get_batch(datadog_client, batch_id)

    data = body["data"]
    assert isinstance(data, dict)
    assert data["status"] == "in_progress"
    assert data["metadata"] == SAMPLE_METADATA
    browser = results_by_test(body)[BROWSER]
    assert set(browser) == {
        "device",
        "duration",
        "execution_rule",
        "location",
        "result_id",
        "retries",
        "max_retries",
        "timed_out",
        "status",
        "test_name",
        "test_public_id",
        "test_type",
    }
    assert browser["status"] == "in_progress" and browser["retries"] is None
    assert browser["location"] == "aws:eu-central-1" and browser["device"] == "chrome.laptop_large"
    assert isinstance(browser["result_id"], str) and browser["result_id"].isdigit()


async def test_skipped_entry_has_no_location_or_result(
    datadog: FakeDatadog, datadog_client: TestClient
) -> None:
    """A test skipped by execution rule appears as a bare skipped entry."""
    batch_id = datadog.create_batch(
        tests=[{"test_public_id": "sss-sss-sss", "execution_rule": "skipped"}], metadata={}
    )
    [entry] = results_by_test(await get_batch(datadog_client, batch_id)).values()
    assert entry["status"] == "skipped" and entry["execution_rule"] == "skipped"
    assert not {"location", "result_id", "duration", "device"} & set(entry)


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ({}, "API key required"),
        ({"DD-APPLICATION-KEY": "demo-app-key"}, "API key required"),
        ({"DD-API-KEY": "demo-api-key"}, "Forbidden"),
        ({"DD-API-KEY": "wrong", "DD-APPLICATION-KEY": "demo-app-key"}, "Forbidden"),
    ],
)
async def test_missing_or_wrong_keys_are_403(
    datadog: FakeDatadog, datadog_client: TestClient, headers: dict[str, str], error: str
) -> None:
    """Both DD-API-KEY and DD-APPLICATION-KEY must match, else 403 with an errors list:
    "API key required" without an API key, "Forbidden" otherwise."""
    batch_id = datadog.create_batch()
    body = await get_json(datadog_client, BATCH_PATH + batch_id, status=403, headers=headers)
    assert body == {"errors": [error]}


async def test_unknown_and_deleted_batches_are_404(
    datadog: FakeDatadog, datadog_client: TestClient
) -> None:
    """Unknown ids, and deleted batches, answer 404 "Batch does not exist."."""
    batch_id = datadog.create_batch()
    datadog.delete(batch_id)
    for missing in ("nope", batch_id):
        body = await get_batch(datadog_client, missing, status=404)
        assert body == {"errors": ["Batch does not exist."]}


async def test_fresh_batch_is_404_for_not_found_for(
    aiohttp_client: AiohttpClient, clock: FakeClock
) -> None:
    """With not_found_for, a new batch answers 404 for that long, then 200."""
    datadog = FakeDatadog(clock=clock, not_found_for=3.0)
    client = await aiohttp_client(datadog.app)
    batch_id = datadog.create_batch()

    await get_batch(client, batch_id, status=404)
    clock.advance(2.9)
    await get_batch(client, batch_id, status=404)
    clock.advance(0.1)
    await get_batch(client, batch_id)


async def test_rate_limit_headers_and_429(aiohttp_client: AiohttpClient) -> None:
    """Responses carry X-RateLimit-*; past the budget 429 until the window resets."""
    clock = FakeClock(now=6000.0 + 15.0)  # 15 s into a calendar-aligned 60 s window
    datadog = FakeDatadog(clock=clock, rate_limit=2, rate_limit_period=60)
    client = await aiohttp_client(datadog.app)
    batch_id = datadog.create_batch()

    seen = []
    for _ in range(3):
        async with client.get(BATCH_PATH + batch_id, headers=DD_HEADERS) as resp:
            seen.append((resp.status, await resp.json(), dict(resp.headers)))
    clock.advance(45)
    async with client.get(BATCH_PATH + batch_id, headers=DD_HEADERS) as resp:
        after_reset = (resp.status, resp.headers["X-RateLimit-Remaining"])

    assert [s[0] for s in seen] == [200, 200, 429]
    assert seen[2][1] == {"errors": ["Too many requests"]}
    assert [s[2]["X-RateLimit-Remaining"] for s in seen] == ["1", "0", "0"]
    for _, _, headers in seen:
        assert headers["X-RateLimit-Limit"] == "2"
        assert headers["X-RateLimit-Period"] == "60"
        assert headers["X-RateLimit-Reset"] == "45"
        assert headers["X-RateLimit-Name"] == "synthetics_ci_batch"
    assert after_reset == (200, "1")


async def test_no_rate_limit_headers_by_default(
    datadog: FakeDatadog, datadog_client: TestClient
) -> None:
    """Without a rate limit configured, no X-RateLimit-* headers are sent."""
    batch_id = datadog.create_batch()
    async with datadog_client.get(BATCH_PATH + batch_id, headers=DD_HEADERS) as resp:
        assert resp.status == 200
        assert not [h for h in resp.headers if h.lower().startswith("x-ratelimit")]


async def test_fast_retry_keeps_the_failed_attempt_id_until_the_final_one(
    datadog: FakeDatadog, datadog_client: TestClient
) -> None:
    """A fast retry as datadog-ci sees it: the failed first attempt stays in_progress under
    its result_id with retries 0; the final attempt has a new result_id, retries 1 and
    initial_result_id pointing at the first."""
    batch_id = datadog.create_batch()
    first = results_by_test(await get_batch(datadog_client, batch_id))[BROWSER]
    assert "initial_result_id" not in first

    datadog.set_result(batch_id, BROWSER, new_attempt=True, duration=1200.0)
    retrying = results_by_test(await get_batch(datadog_client, batch_id))[BROWSER]
    datadog.set_result(batch_id, BROWSER, status="passed")
    final = results_by_test(await get_batch(datadog_client, batch_id))[BROWSER]

    assert retrying["status"] == "in_progress" and retrying["retries"] == 0
    assert retrying["result_id"] == first["result_id"]
    assert retrying["duration"] == 1200.0 and retrying["timed_out"] is False
    assert "initial_result_id" not in retrying
    assert final["status"] == "passed" and final["retries"] == 1
    assert final["initial_result_id"] == first["result_id"] != final["result_id"]


async def test_a_second_non_final_attempt_gets_its_own_id(
    datadog: FakeDatadog, datadog_client: TestClient
) -> None:
    """With more retries, each later attempt has a new result_id linked to the first."""
    batch_id = datadog.create_batch()
    first = results_by_test(await get_batch(datadog_client, batch_id))[BROWSER]
    datadog.set_result(batch_id, BROWSER, new_attempt=True)
    datadog.set_result(batch_id, BROWSER, new_attempt=True)
    second = results_by_test(await get_batch(datadog_client, batch_id))[BROWSER]
    datadog.finish(batch_id, "failed")
    final = results_by_test(await get_batch(datadog_client, batch_id))[BROWSER]

    assert second["status"] == "in_progress" and second["retries"] == 1
    assert second["initial_result_id"] == first["result_id"] != second["result_id"]
    assert final["status"] == "failed" and final["retries"] == 2
    assert final["initial_result_id"] == first["result_id"]
    assert len({first["result_id"], second["result_id"], final["result_id"]}) == 3


async def test_set_result_selects_slots_by_location(datadog: FakeDatadog) -> None:
    """location narrows which result slots of a test change; no match is a KeyError."""
    tests = [
        {"test_public_id": "t", "location": "aws:eu-central-1"},
        {"test_public_id": "t", "location": "aws:us-east-1"},
    ]
    batch_id = datadog.create_batch(tests=tests)
    datadog.set_result(batch_id, "t", location="aws:us-east-1", status="failed", retries=2)
    statuses = [(r.location, r.status, r.retries) for r in datadog.batch(batch_id).results]
    assert statuses == [("aws:eu-central-1", "in_progress", None), ("aws:us-east-1", "failed", 2)]
    with pytest.raises(KeyError):
        datadog.set_result(batch_id, "t", location="aws:ap-northeast-1", status="passed")


async def test_finish_concludes_results(
    datadog: FakeDatadog, datadog_client: TestClient, clock: FakeClock
) -> None:
    """finish sets the batch status and finishes in-progress results with a duration."""
    batch_id = datadog.create_batch()
    datadog.set_result(batch_id, API, status="failed", duration=10.0, timed_out=True)
    clock.advance(2.5)
    datadog.finish(batch_id, "passed")

    body = await get_batch(datadog_client, batch_id)
    results = results_by_test(body)

    assert isinstance(body["data"], dict) and body["data"]["status"] == "passed"
    assert results[BROWSER]["status"] == "passed"
    assert results[BROWSER]["duration"] == 2500.0 and results[BROWSER]["timed_out"] is False
    assert results[API]["status"] == "failed" and results[API]["timed_out"] is True


@pytest.mark.parametrize("method", ["finish", "set_status"])
async def test_unknown_status_strings_are_served_verbatim(
    datadog: FakeDatadog, datadog_client: TestClient, method: str
) -> None:
    """Statuses outside the enum are served as is; results are left untouched."""
    batch_id = datadog.create_batch()
    getattr(datadog, method)(batch_id, "exploded")

    body = await get_batch(datadog_client, batch_id)

    assert isinstance(body["data"], dict) and body["data"]["status"] == "exploded"
    assert {r["status"] for r in results_by_test(body).values()} == {"in_progress"}


async def test_trigger_creates_a_batch(datadog: FakeDatadog, datadog_client: TestClient) -> None:
    """POST trigger/ci answers batch_id, locations and results, and the batch exists."""
    payload = {
        "tests": [
            {"public_id": "aaa-bbb-ccc", "locations": ["aws:eu-central-1", "azure:westeurope"]},
            {
                "public_id": "ddd-eee-fff",
                "deviceIds": ["chrome.laptop_large"],
                "retry": {"count": 2},
            },
        ],
        "metadata": {"git": {"branch": "feature", "commitSha": "abc"}},
    }
    async with datadog_client.post(TRIGGER_PATH, json=payload, headers=DD_HEADERS) as resp:
        assert resp.status == 200
        trigger = await resp.json()

    body = await get_batch(datadog_client, trigger["batch_id"])

    assert trigger["triggered_check_ids"] == ["aaa-bbb-ccc", "ddd-eee-fff"]
    assert [loc["name"] for loc in trigger["locations"]] == [
        "aws:eu-central-1",
        "azure:westeurope",
        "aws:us-east-1",
    ]
    assert trigger["locations"][0] == {
        "display_name": "Frankfurt (AWS)",
        "id": 1,
        "is_active": True,
        "name": "aws:eu-central-1",
        "region": "EMEA",
    }
    assert [(r["public_id"], r["location"]) for r in trigger["results"]] == [
        ("aaa-bbb-ccc", 1),
        ("aaa-bbb-ccc", trigger["locations"][1]["id"]),
        ("ddd-eee-fff", 2),
    ]
    assert isinstance(body["data"], dict)
    assert body["data"]["metadata"] == payload["metadata"]
    results = body["data"]["results"]
    assert [r["result_id"] for r in results] == [r["result_id"] for r in trigger["results"]]
    assert results[2]["test_type"] == "browser" and results[2]["max_retries"] == 2


@pytest.mark.parametrize("body", [b"{not json", b"[]", b'{"tests": []}', b'{"tests": [{}]}'])
async def test_trigger_rejects_bad_bodies(datadog_client: TestClient, body: bytes) -> None:
    """A malformed trigger body answers 400 "JSON format is wrong"."""
    async with datadog_client.post(TRIGGER_PATH, data=body, headers=DD_HEADERS) as resp:
        assert resp.status == 400
        assert await resp.json() == {"errors": ["JSON format is wrong"]}


def test_create_many_and_duplicates(clock: FakeClock) -> None:
    """create_many makes distinct batches; reusing an id is refused."""
    datadog = FakeDatadog(clock=clock)
    ids = datadog.create_many(1000)
    assert len(set(ids)) == 1000 and datadog.batch_ids() == ids
    assert datadog.batch(ids[0]).created_at == EPOCH
    with pytest.raises(ValueError, match="already exists"):
        datadog.create_batch(batch_id=ids[0])
