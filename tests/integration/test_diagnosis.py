"""Diagnosis through the daemon: why a batch failed or stalled, in its transition line and
in the API, at a bounded cost in upstream requests."""

from __future__ import annotations

from typing import Any

from batchscope.simulator.engine import FakeEngine
from harness import Stack, running_stack
from helpers import LogLines, eventually, wait_until

COCKPIT = "https://camunda.example.com/camunda/app/cockpit/default"
MIGRATION = ("ENGINE-23004 Cannot migrate process instance: no migration instruction for "
             "activity 'Task_A'")


def line(logs: LogLines, batch: str, to_state: str) -> dict[str, Any] | None:
    found = logs.events("batch.transition", batch_id=batch, to_state=to_state)
    return found[0] if found else None


def job_requests(engine: FakeEngine) -> int:
    """Requests to the engine's job endpoints (not the historic job log)."""
    return sum(1 for r in engine.requests
               if "/job?" in r.path_qs or "/job/" in r.path_qs)


async def test_a_failed_batch_says_why_in_its_transition_line(logs: LogLines) -> None:
    """Entering failed: the failed jobs' messages are looked up before the line is written,
    grouped by message with instance and activity ids, and shown in the API row."""
    engine = FakeEngine()
    async with running_stack(engine=engine,
                             engine_target={"cockpit_url": COCKPIT}) as stack:
        batch = engine.create_batch(total_jobs=10)
        await wait_until(lambda: line(logs, batch, "in_progress"))
        engine.fail_jobs(batch, 3, message=MIGRATION, activity_id="Task_A",
                         process_instance_ids=["pi-1", "pi-2", "pi-3", "pi-4"])
        failed = await wait_until(lambda: line(logs, batch, "failed"))
        assert failed["reason"] == "failed_jobs"
        assert failed["failure"]["failed_jobs"] == 3
        (group,) = failed["failure"]["messages"]
        assert group["message"] == MIGRATION and group["count"] == 3
        assert group["activity_ids"] == ["Task_A"]
        ids = group["process_instance_ids"]
        assert len(ids) == 3 and set(ids) < {"pi-1", "pi-2", "pi-3", "pi-4"}
        assert failed["link"].startswith(COCKPIT) and batch in failed["link"]
        (row,) = await stack.get_json("/api/v1/batches?state=failed")
        assert row["reason"] == "failed_jobs" and row["message"] == MIGRATION
        assert row["link"] == failed["link"]


async def test_a_stalled_batch_with_a_failed_seed_job_says_so(logs: LogLines) -> None:
    """failedJobs does not count a failed seed job: when the batch stops moving, the seed
    and monitor jobs are looked at, and the stall carries seed_job_failed and its message."""
    engine = FakeEngine()
    async with running_stack(engine=engine, engine_target={"stall_after": 0.4}):
        batch = engine.create_batch(total_jobs=300, jobs_per_seed=100)
        engine.fail_seed_job(batch, "ENGINE-13031 seed job could not be executed")
        stalled = await wait_until(lambda: line(logs, batch, "stalled"))
        assert stalled["reason"] == "seed_job_failed"
        assert "seed job" in stalled["failure"]["messages"][0]["message"]


async def test_lookups_are_bounded_cached_and_absent_in_a_steady_cycle(
        logs: LogLines) -> None:
    """Five batches fail at once with a budget of two lookups per cycle: all five are
    explained over later cycles (skipped_budget counted), and once explained, steady
    cycles make no job request at all."""
    engine = FakeEngine()
    async with running_stack(engine=engine,
                             engine_target={"diagnosis_lookups": 2}) as stack:
        batches = [engine.create_batch(total_jobs=10) for _ in range(5)]
        await wait_until(lambda: all(line(logs, b, "in_progress") for b in batches))
        for b in batches:
            engine.fail_jobs(b, 1, message=f"boom {b}")
        await wait_until(lambda: all(line(logs, b, "failed") for b in batches))

        async def explained() -> bool:
            rows = await stack.get_json("/api/v1/batches?state=failed")
            return len(rows) == 5 and all(r["message"] for r in rows)

        await eventually(explained, what="every failure explained")
        assert await stack.sample("batchscope_diagnosis_lookups_total", source="engine",
                                  target="prod", outcome="ok") == 5
        skipped = await stack.sample("batchscope_diagnosis_lookups_total", source="engine",
                                     target="prod", outcome="skipped_budget")
        assert skipped is not None and skipped >= 3
        before = job_requests(engine)
        assert before >= 5  # the lookups above went to the job endpoint
        polls = await stack.sample("batchscope_polls_total", source="engine", target="prod")
        await eventually(lambda: _polled(stack, (polls or 0) + 5), what="five steady cycles")
        assert job_requests(engine) == before


async def _polled(stack: Stack, at_least: float) -> bool:
    value = await stack.sample("batchscope_polls_total", source="engine", target="prod")
    return value is not None and value >= at_least


async def test_a_failing_job_endpoint_never_loses_the_transition(logs: LogLines) -> None:
    """The job endpoint answers 500: the transition is still one line, with failure null,
    and the lookup is counted as an error."""
    engine = FakeEngine()
    async with running_stack(engine=engine) as stack:
        batch = engine.create_batch(total_jobs=10)
        await wait_until(lambda: line(logs, batch, "in_progress"))
        engine.inject("/job?", status=500, body='{"type":"X","message":"down"}', times=None)
        engine.fail_jobs(batch, 2)
        failed = await wait_until(lambda: line(logs, batch, "failed"))
        assert failed["reason"] == "failed_jobs" and failed["failure"] is None
        assert len(logs.events("batch.transition", batch_id=batch, to_state="failed")) == 1
        assert await stack.sample("batchscope_diagnosis_lookups_total", source="engine",
                                  target="prod", outcome="error") == 1


async def test_hostile_exception_messages_are_data(logs: LogLines) -> None:
    """An exception message is upstream text: cut at 500 characters, never interpreted,
    and a credential of ours inside it is redacted in the log line."""
    engine = FakeEngine(username="monitor", password="hunter2-secret-pw")
    hostile = "<script>alert(1)</script> auth monitor:hunter2-secret-pw " + "y" * 900
    async with running_stack(engine=engine, engine_target={
            "username": "monitor", "password": "hunter2-secret-pw"}):
        batch = engine.create_batch(total_jobs=10)
        await wait_until(lambda: line(logs, batch, "in_progress"))
        engine.fail_jobs(batch, 1, message=hostile)
        failed = await wait_until(lambda: line(logs, batch, "failed"))
        message = failed["failure"]["messages"][0]["message"]
        assert message.startswith("<script>alert(1)</script>") and len(message) <= 500
        assert "hunter2-secret-pw" not in logs.stream.getvalue()


async def test_ends_say_how_they_ended(logs: LogLines) -> None:
    """cancelled by a delete says deleted; a batch with no history says no_history."""
    engine = FakeEngine()
    async with running_stack(engine=engine):
        deleted, gone = engine.create_batch(total_jobs=5), engine.create_batch(total_jobs=5)
        await wait_until(lambda: line(logs, deleted, "in_progress") and line(
            logs, gone, "in_progress"))
        engine.delete(deleted)
        engine.delete(gone, cascade=True)
        cancelled = await wait_until(lambda: line(logs, deleted, "cancelled"))
        vanished = await wait_until(lambda: line(logs, gone, "vanished"))
        assert cancelled["reason"] == "deleted" and vanished["reason"] == "no_history"


async def test_a_ci_batch_failure_names_its_failing_results(logs: LogLines) -> None:
    """A failed CI batch lists its failing blocking results with result links; a batch
    whose only failure is non-blocking is passed."""
    async with running_stack(datadog_target={"app_url": "https://app.datadoghq.eu"}) as stack:
        dd = stack.datadog
        bad = dd.create_batch(tests=[{"test_public_id": "aaa-bbb-ccc", "test_name": "Checkout",
                                      "execution_rule": "blocking"}])
        soft = dd.create_batch(tests=[{"test_public_id": "ddd-eee-fff", "test_name": "Flaky",
                                       "execution_rule": "non_blocking"}])
        for b in (bad, soft):
            await stack.watch(b)
        dd.set_result(bad, "aaa-bbb-ccc", status="failed")
        dd.finish(bad, "failed")
        dd.set_result(soft, "ddd-eee-fff", status="failed")
        dd.finish(soft, "failed")
        failed = await wait_until(lambda: line(logs, bad, "failed"))
        assert failed["reason"] == "blocking_results_failed"
        (res,) = failed["failure"]["results"]
        assert res["test_public_id"] == "aaa-bbb-ccc" and res["link"].startswith(
            "https://app.datadoghq.eu/")
        assert await wait_until(lambda: line(logs, soft, "passed"))
        assert line(logs, soft, "failed") is None
