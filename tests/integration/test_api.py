"""The HTTP API: probes, filters, events, auth and bad input (which changes nothing)."""

from __future__ import annotations

from typing import Any

import pytest

from batchscope.model import Source
from harness import TOKEN, Stack, running_stack
from helpers import LogLines, wait_until


async def call(stack: Stack, method: str, path: str, *, token: str | None = TOKEN,
               **kwargs: Any) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with stack.http.request(method, stack.base + path, headers=headers,
                                  **kwargs) as resp:
        body = await resp.read()
        return resp.status, (await resp.json()) if body else None


def watched(stack: Stack) -> list[str]:
    return sorted(stack.daemon.tracker.active_for(Source.DATADOG, "ci"))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"batch_id": "has spaces"}', "batch_id must match"),
        (b'{"batch_id": ""}', "batch_id must match"),
        (b'{"batch_id": "' + b"x" * 129 + b'"}', "batch_id must match"),
        (b'{"batch_id": 42}', "batch_id must match"),
        (b'{"batch_id": "../etc"}', "batch_id must match"),
        (b'{"batch_id": "ok-1", "target": "nope"}', "unknown Datadog target"),
        (b'{"batch_id": "ok-1", "target": 7}', "target must be a string"),
        (b'{"batch_id": "ok-1", "extra": true}', "unknown field(s): extra"),
    ],
    ids=["malformed", "array", "spaces", "empty", "too long", "number", "slash",
         "unknown target", "target type", "extra field"],
)
async def test_bad_watch_requests_are_rejected_and_change_nothing(
    logs: LogLines, body: bytes, message: str
) -> None:
    """Each kind of bad input answers 400 with {"error": ...}; the watch list is unchanged."""
    async with running_stack() as stack:
        status, answer = await call(stack, "POST", "/api/v1/datadog/batches", data=body)
        assert status == 400
        assert message in answer["error"]
        assert watched(stack) == []


async def test_write_endpoints_need_the_token(logs: LogLines) -> None:
    """Wrong or missing bearer token: 401; nothing is added or removed."""
    async with running_stack() as stack:
        for token in (None, "wrong-token", ""):
            status, answer = await call(stack, "POST", "/api/v1/datadog/batches",
                                        token=token, json={"batch_id": "b-1"})
            assert status == 401 and "error" in answer
        assert watched(stack) == []
        assert (await call(stack, "POST", "/api/v1/datadog/batches",
                           json={"batch_id": "b-1"}))[0] == 201
        status, _ = await call(stack, "DELETE", "/api/v1/datadog/batches/b-1", token="bad")
        assert status == 401 and watched(stack) == ["b-1"]
        status, _ = await call(stack, "DELETE", "/api/v1/datadog/batches/b-1")
        assert status == 204 and watched(stack) == []
        status, answer = await call(stack, "DELETE", "/api/v1/datadog/batches/b-1")
        assert status == 404 and "not watched" in answer["error"]


async def test_write_endpoints_disabled_without_token(logs: LogLines) -> None:
    """With no http.api_token configured the write endpoints answer 403 with an explanation."""
    async with running_stack(**{"http.api_token": None}) as stack:
        status, answer = await call(stack, "POST", "/api/v1/datadog/batches",
                                    json={"batch_id": "b-1"})
        assert status == 403 and "api_token" in answer["error"]
        assert watched(stack) == []


async def test_oversized_body_is_refused(logs: LogLines) -> None:
    """A body above http.max_body_bytes is refused before parsing."""
    async with running_stack() as stack:
        status, _ = await call(stack, "POST", "/api/v1/datadog/batches",
                               data=b'{"batch_id": "' + b"a" * 200_000 + b'"}')
        assert status == 413
        assert watched(stack) == []


async def test_watch_is_idempotent(logs: LogLines) -> None:
    """Watching a batch twice answers 201 then 200 and keeps one entry."""
    async with running_stack() as stack:
        first = await call(stack, "POST", "/api/v1/datadog/batches", json={"batch_id": "b-1"})
        again = await call(stack, "POST", "/api/v1/datadog/batches",
                           json={"batch_id": "b-1", "target": "ci"})
        assert (first[0], again[0]) == (201, 200)
        assert watched(stack) == ["b-1"]


async def test_batch_filters_and_event_paging(logs: LogLines) -> None:
    """?source= ?target= ?state= filter the list; /events?after=N pages; bad values are 400."""
    async with running_stack() as stack:
        a = stack.engine.create_batch(total_jobs=5)
        b = stack.engine.create_batch(total_jobs=5)
        stack.engine.fail_jobs(b, 1)
        await wait_until(lambda: len(logs.events("batch.transition")) >= 2)
        assert [r["batch_id"] for r in await stack.get_json("/api/v1/batches?state=failed")] \
            == [b]
        assert {r["batch_id"] for r in await stack.get_json(
            "/api/v1/batches?source=engine&target=prod")} == {a, b}
        assert await stack.get_json("/api/v1/batches?target=other") == []
        events = await stack.get_json("/api/v1/events")
        assert [e["seq"] for e in events] == [1, 2]
        later = await stack.get_json("/api/v1/events?after=1")
        assert [e["seq"] for e in later] == [2]
        assert later[0]["event"] == "batch.transition" and later[0]["timestamp"]
        for path in ("/api/v1/batches?source=nope", "/api/v1/batches?state=nope",
                     "/api/v1/events?after=x", "/api/v1/events?limit=0"):
            status, answer = await call(stack, "GET", path)
            assert status == 400 and "error" in answer


async def test_probes_landing_page_and_openmetrics(logs: LogLines) -> None:
    """/healthz, /readyz, the landing page, and OpenMetrics when asked for."""
    async with running_stack() as stack:
        await wait_until(lambda: stack.daemon.ready)
        assert (await call(stack, "GET", "/healthz"))[0] == 200
        assert (await call(stack, "GET", "/readyz"))[0] == 200
        async with stack.http.get(stack.base + "/") as resp:
            assert resp.status == 200 and "/metrics" in await resp.text()
        async with stack.http.get(
            stack.base + "/metrics",
            headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        ) as resp:
            text = await resp.text()
            assert resp.content_type == "application/openmetrics-text"
            assert text.rstrip().endswith("# EOF")
        plain = await stack.metrics_text()
        assert "# TYPE batchscope_batch_transitions_total counter" in plain
        assert 'batchscope_build_info{' in plain
        assert 'batchscope_poll_errors_total{reason="rate_limited",source="datadog",' \
               'target="ci"} 0.0' in plain


async def test_readyz_waits_for_first_poll(logs: LogLines) -> None:
    """Not ready until every target had a poll attempt (a target that hangs keeps it 503)."""
    async with running_stack(engine_target={"request_timeout": 5}) as stack:
        stack.engine.inject("/batch/statistics", delay=3.0, times=None)
        status, _ = await call(stack, "GET", "/readyz")
        assert status == 503
        assert (await call(stack, "GET", "/healthz"))[0] == 200
        stack.engine.clear_faults()
