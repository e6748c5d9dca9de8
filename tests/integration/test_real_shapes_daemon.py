"""Issue-8 cases through the whole daemon: real engine and datadog-ci shapes, end to end."""

from __future__ import annotations

from batchscope.simulator.engine import FakeEngine
from harness import Stack, running_stack
from helpers import LogLines, eventually, wait_until

ENGINE_404 = '{"type":"InvalidRequestException","message":"Process engine prod2 not available"}'


async def polls_total(stack: Stack, source: str = "engine", target: str = "prod") -> float:
    ok = await stack.sample("batchscope_polls_total", source=source, target=target) or 0.0
    failed = sum(v for (name, labels), v in (await stack.samples()).items()
                 if name == "batchscope_poll_errors_total"
                 and ("source", source) in labels and ("target", target) in labels)
    return ok + failed


async def more_polls(stack: Stack, at_least: float, source: str = "engine",
                     target: str = "prod") -> bool:
    return await polls_total(stack, source, target) >= at_least


def states(logs: LogLines, batch: str) -> list[tuple[str, str]]:
    return [(e["from_state"], e["to_state"])
            for e in logs.events("batch.transition", batch_id=batch)]


async def test_batches_stay_visible_when_dates_use_another_pattern(logs: LogLines) -> None:
    """An engine configured with dd.MM.yyyy HH:mm dates: its batches are still tracked and
    end normally; the unreadable-date problem (if any) is logged once, not per row."""
    for pattern, zone in (("dd.MM.yyyy HH:mm", None), ("yyyy-MM-dd'T'HH:mm:ss.SSSz", "CEST")):
        engine = FakeEngine(date_format=pattern, zone_name=zone)
        async with running_stack(engine=engine):
            batch = engine.create_batch(total_jobs=2)
            await wait_until(lambda b=batch: states(logs, b) == [("none", "in_progress")])
            engine.complete_jobs(batch, 2)
            engine.finish(batch)
            await wait_until(lambda b=batch: ("in_progress", "passed") in states(logs, b))
    problems = logs.events("upstream.date_unparsable")
    assert len({(p["endpoint"], p["field"]) for p in problems}) == len(problems)


async def test_an_unparsable_optional_date_keeps_the_batch(logs: LogLines) -> None:
    """A date pattern batchscope cannot read: the batch is kept (startTime null) and the
    problem is one warning per target and field, not one per row per poll."""
    engine = FakeEngine(date_format=lambda m: f"at {m:%H:%M} on day {m:%j}")
    async with running_stack(engine=engine) as stack:
        batches = [engine.create_batch(total_jobs=2) for _ in range(3)]
        await wait_until(lambda: all(states(logs, b) for b in batches))
        before = len(logs.events("upstream.date_unparsable"))
        assert before >= 1
        polls = await polls_total(stack)
        await eventually(lambda: more_polls(stack, polls + 5), what="five more polls")
        assert len(logs.events("upstream.date_unparsable")) == before
        assert {p["field"] for p in logs.events("upstream.date_unparsable")} <= {
            "startTime", "executionStartTime", "removalTime", "endTime"}


async def test_a_foreign_404_is_a_target_error_never_an_ending(logs: LogLines) -> None:
    """A proxy or a wrong engine name answering 404 for history lookups: target.down with
    http_4xx, and the batch that left the runtime list keeps its state; once the real
    engine answers again, its "does not exist" ends the batch as vanished."""
    engine = FakeEngine(history=False)
    async with running_stack(engine=engine) as stack:
        batch = engine.create_batch(total_jobs=2)
        await wait_until(lambda: states(logs, batch) == [("none", "in_progress")])
        for n, (body, ctype) in enumerate((
                (ENGINE_404, "application/json"), ("<html>404</html>", "text/html"),
                ('{"detail": "Not Found"}', "application/json"), ("", "text/plain"))):
            engine.clear_faults()
            engine.inject("/history/batch/", status=404, body=body, content_type=ctype,
                          times=None)
            engine.inject("/batch/" + batch, status=404, body=body, content_type=ctype,
                          times=None)
            if n == 0:
                engine.delete(batch, cascade=True)  # gone from runtime and history
            await wait_until(lambda: logs.events("target.down"), what="target.down")
            polls = await polls_total(stack)
            await eventually(lambda p=polls: more_polls(stack, p + 1), what="a poll")
            assert logs.events("target.down")[0]["reason"] == "http_4xx"
            assert states(logs, batch) == [("none", "in_progress")], body
            assert await stack.sample("batchscope_target_up", source="engine",
                                      target="prod") == 0
        engine.clear_faults()  # the engine's own "does not exist" now answers
        await wait_until(lambda: ("in_progress", "vanished") in states(logs, batch),
                         timeout=30)
        assert logs.events("target.up")


async def test_a_delete_without_a_user_operation_entry_is_cancelled(logs: LogLines) -> None:
    """An unauthenticated DELETE writes no user-operation entry (the engine's default): the
    historic job log's deletion entries still make it cancelled, not passed."""
    engine = FakeEngine()
    async with running_stack(engine=engine):
        batch = engine.create_batch(total_jobs=10)
        await wait_until(lambda: states(logs, batch) == [("none", "in_progress")])
        engine.complete_jobs(batch, 3)
        engine.delete(batch, user=None)
        await wait_until(lambda: len(states(logs, batch)) == 2)
        assert states(logs, batch)[-1] == ("in_progress", "cancelled")
        done = engine.create_batch(total_jobs=2)
        await wait_until(lambda: states(logs, done) == [("none", "in_progress")])
        engine.complete_jobs(done, 2)
        engine.finish(done)
        await wait_until(lambda: len(states(logs, done)) == 2)
        assert states(logs, done)[-1] == ("in_progress", "passed")


async def test_a_foreign_datadog_404_does_not_start_the_grace_clock(logs: LogLines) -> None:
    """Only Datadog's own {"errors": [...]} 404 means not found: a proxy's 404 is a batch
    error, and the batch never becomes vanished because of it."""
    async with running_stack(datadog_target={"not_found_grace": 0.2}) as stack:
        stack.datadog.create_batch(batch_id="ci-1")
        await stack.watch("ci-1")
        await wait_until(lambda: states(logs, "ci-1") == [("none", "in_progress")])
        stack.datadog.inject("/ci/batch/ci-1", status=404, body="<html>gateway</html>",
                             content_type="text/html", times=None)
        await wait_until(lambda: logs.events("target.down") or logs.events(
            "datadog.batch_error"), what="an error line")
        polls = await polls_total(stack, "datadog", "ci")
        await eventually(lambda: more_polls(stack, polls + 10, "datadog", "ci"),
                         what="ten more polls, far beyond the grace")
        assert states(logs, "ci-1") == [("none", "in_progress")]
        stack.datadog.clear_faults()
        stack.datadog.delete("ci-1")
        await wait_until(lambda: ("in_progress", "vanished") in states(logs, "ci-1"))
