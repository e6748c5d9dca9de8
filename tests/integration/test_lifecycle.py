"""Full lifecycles through the real daemon against real-HTTP fake upstreams.

Each test asserts the same story three ways: log lines, /metrics samples, /api/v1/batches.
"""

from __future__ import annotations

from typing import Any

from batchscope.model import Source, State
from batchscope.simulator.engine import FakeEngine
from harness import API_KEY, APP_KEY, TOKEN, running_stack
from helpers import LogLines, wait_until


def transitions(logs: LogLines, batch_id: str) -> list[tuple[str, str]]:
    return [(line["from_state"], line["to_state"])
            for line in logs.events("batch.transition", batch_id=batch_id)]


async def test_engine_batch_lifecycle(logs: LogLines) -> None:
    """A migration batch goes in_progress -> failed -> in_progress -> passed; everything agrees."""
    async with running_stack() as stack:
        eng = stack.engine
        batch = eng.create_batch("instance-migration", total_jobs=10)
        await wait_until(lambda: transitions(logs, batch) == [("none", "in_progress")],
                         what="first sighting")
        eng.complete_jobs(batch, 4)
        eng.fail_jobs(batch, 2)
        await wait_until(lambda: ("in_progress", "failed") in transitions(logs, batch))
        failed_line = logs.events("batch.transition", batch_id=batch, to_state="failed")[0]
        assert failed_line["level"] == "warning"
        assert failed_line["failed_jobs"] == 2 and failed_line["completed_jobs"] == 4
        assert failed_line["source"] == "engine" and failed_line["target"] == "prod"
        assert await stack.sample("batchscope_batch_state", source="engine", target="prod",
                                  batch_id=batch, batch_type="instance-migration",
                                  state="failed") == 1
        assert await stack.sample("batchscope_batch_jobs", target="prod", batch_id=batch,
                                  batch_type="instance-migration", kind="failed") == 2
        eng.retry_failed(batch)
        await wait_until(lambda: ("failed", "in_progress") in transitions(logs, batch))
        eng.complete_jobs(batch, 6)
        eng.finish(batch)
        await wait_until(lambda: ("in_progress", "passed") in transitions(logs, batch))

        assert transitions(logs, batch) == [
            ("none", "in_progress"), ("in_progress", "failed"), ("failed", "in_progress"),
            ("in_progress", "passed"),
        ]
        seqs = [line["seq"] for line in logs.events("batch.transition")]
        assert seqs == list(range(1, len(seqs) + 1))
        passed = logs.events("batch.transition", batch_id=batch, to_state="passed")[0]
        assert passed["duration_seconds"] is not None and passed["duration_seconds"] >= 0
        assert passed["level"] == "info"

        assert await stack.sample("batchscope_batch_transitions_total", source="engine",
                                  target="prod", from_state="in_progress",
                                  to_state="failed") == 1
        assert await stack.sample("batchscope_batches", source="engine", target="prod",
                                  state="passed") == 1
        assert await stack.sample("batchscope_batch_duration_seconds_count", source="engine",
                                  target="prod", state="passed") == 1
        # per-batch series vanish once the batch is terminal
        assert await stack.sample("batchscope_batch_state", source="engine", target="prod",
                                  batch_id=batch, batch_type="instance-migration",
                                  state="in_progress") is None
        rows = await stack.get_json("/api/v1/batches?source=engine")
        assert [(r["batch_id"], r["state"]) for r in rows] == [(batch, "passed")]
        events = await stack.get_json("/api/v1/events?after=0")
        assert [e["to_state"] for e in events if e["batch_id"] == batch] == [
            "in_progress", "failed", "in_progress", "passed"]


async def test_engine_cancel_vanish_and_between_polls(logs: LogLines) -> None:
    """Deleted -> cancelled, suspended-then-ended -> cancelled, history gone -> vanished,
    and a batch created and finished between two polls is found by the history sweep."""
    async with running_stack() as stack:
        eng = stack.engine
        deleted = eng.create_batch("instance-deletion", total_jobs=5)
        suspended = eng.create_batch("instance-modification", total_jobs=5)
        cascade = eng.create_batch("set-job-retries", total_jobs=5)
        await wait_until(lambda: len(logs.events("batch.transition")) == 3)
        eng.suspend(suspended)
        await wait_until(lambda: ("in_progress", "suspended") in transitions(logs, suspended))
        eng.delete(deleted)
        eng.delete(suspended)
        eng.delete(cascade, cascade=True)
        await wait_until(lambda: ("in_progress", "cancelled") in transitions(logs, deleted))
        await wait_until(lambda: ("suspended", "cancelled") in transitions(logs, suspended))
        await wait_until(lambda: ("in_progress", "vanished") in transitions(logs, cascade))

        # created and finished with no await in between: no poll can see it running
        quick = eng.create_batch("historic-instance-deletion", total_jobs=1)
        eng.complete_jobs(quick, 1)
        eng.finish(quick)
        await wait_until(lambda: transitions(logs, quick) != [])
        assert transitions(logs, quick) == [("none", "passed")]
        vanished = logs.events("batch.transition", batch_id=cascade)[-1]
        assert vanished["level"] == "warning"
        counts = {s: await stack.sample("batchscope_batches", source="engine", target="prod",
                                        state=s.value) for s in State if s is not State.NONE}
        assert counts[State.CANCELLED] == 2 and counts[State.VANISHED] == 1
        assert counts[State.SKIPPED] == 0  # every state present, zero included


async def test_batches_finished_before_start_are_recorded_silently(logs: LogLines) -> None:
    """History rows that ended before the daemon started produce no transition and no count."""
    eng = FakeEngine()
    old = eng.create_batch("instance-migration", total_jobs=1)
    eng.complete_jobs(old, 1)
    eng.finish(old)
    async with running_stack(engine=eng) as stack:
        await wait_until(lambda: stack.daemon.ready, what="ready")
        await wait_until(lambda: stack.daemon.tracker.get(Source.ENGINE, "prod", old))
        assert logs.events("batch.transition") == []
        total = sum(v for (name, _), v in (await stack.samples()).items()
                    if name == "batchscope_batch_transitions_total")
        assert total == 0


async def post(stack: Any, body: Any, token: str | None = TOKEN) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = body if isinstance(body, (bytes, str)) else None
    kwargs: dict[str, Any] = {"data": data} if data is not None else {"json": body}
    async with stack.http.post(stack.base + "/api/v1/datadog/batches", headers=headers,
                               **kwargs) as resp:
        return resp.status, await resp.json()


async def test_datadog_batch_lifecycle(logs: LogLines) -> None:
    """A CI batch registered over the API: results retry and pass, the batch passes."""
    async with running_stack() as stack:
        dd = stack.datadog
        batch = dd.create_batch(
            tests=[{"test_public_id": "abc-def-ghi", "test_name": "Login",
                    "test_type": "browser", "location": "aws:eu-central-1",
                    "device": "chrome.laptop_large", "execution_rule": "blocking"}],
            metadata={"ci": {"pipeline": {"url": "https://ci.example/run/1"}},
                      "git": {"branch": "main", "commitSha": "abc123"}},
        )
        status, body = await post(stack, {"batch_id": batch})
        assert status == 201 and body["state"] == "none"
        await wait_until(lambda: transitions(logs, batch) == [("none", "in_progress")])
        dd.set_result(batch, "abc-def-ghi", new_attempt=True)
        await wait_until(lambda: len(logs.events("ci_result.transition", batch_id=batch)) == 2)
        dd.set_result(batch, "abc-def-ghi", status="passed")
        dd.finish(batch, "passed")
        await wait_until(lambda: ("in_progress", "passed") in transitions(logs, batch))

        results = logs.events("ci_result.transition", batch_id=batch)
        assert [(r["from_state"], r["to_state"]) for r in results] == [
            ("none", "in_progress"), ("in_progress", "in_progress"), ("in_progress", "passed")]
        # a fast retry: the attempt in flight keeps its id with retries 0, the final attempt
        # has a new id and retries 1
        assert results[1]["retries"] == 0 and results[1]["result_id"] == results[0]["result_id"]
        assert results[2]["retries"] == 1 and results[2]["result_id"] != results[0]["result_id"]
        assert results[2]["test_name"] == "Login" and results[2]["location"] == "aws:eu-central-1"
        final = logs.events("batch.transition", batch_id=batch, to_state="passed")[0]
        assert final["results_total"] == 1 and final["results_passed"] == 1
        assert final["pipeline_url"] == "https://ci.example/run/1"
        assert final["git_branch"] == "main" and final["git_commit"] == "abc123"
        assert await stack.sample("batchscope_ci_test_results_total", target="ci",
                                  test_public_id="abc-def-ghi", status="passed") == 1
        # terminal batches are not polled again
        polled = len([r for r in dd.requests if batch in r[1]])
        await wait_until(lambda: stack.daemon.targets[(Source.DATADOG, "ci")].poller
                         .heartbeat.attempts > 3)
        assert len([r for r in dd.requests if batch in r[1]]) == polled
        assert API_KEY not in logs.raw and APP_KEY not in logs.raw and TOKEN not in logs.raw


async def test_datadog_failed_unknown_and_vanished(logs: LogLines) -> None:
    """failed is terminal for Datadog, unknown statuses keep the state, long 404s vanish."""
    async with running_stack() as stack:
        dd = stack.datadog
        failing, odd = dd.create_batch(), dd.create_batch()
        # Before the watch: a new watch is polled at once (first sighting).
        dd.finish(failing, "failed")
        dd.set_status(odd, "exploded")
        for batch in (failing, odd, "never-existed"):
            assert (await post(stack, {"batch_id": batch}))[0] == 201
        await wait_until(lambda: ("none", "failed") in transitions(logs, failing))
        await wait_until(lambda: logs.events("datadog.unknown_status", batch_id=odd))
        await wait_until(lambda: ("none", "vanished") in transitions(logs, "never-existed"))
        assert len(logs.events("datadog.unknown_status", batch_id=odd)) == 1
        assert transitions(logs, odd) == [("none", "in_progress")]
        rows = {r["batch_id"]: r for r in await stack.get_json("/api/v1/batches?source=datadog")}
        assert rows[odd]["upstream_status"] == "exploded"
        assert rows[failing]["state"] == "failed"
