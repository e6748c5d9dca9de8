"""Adaptive Datadog polling through the daemon (real loopback HTTP): every end is still
reported, a tight rate limit is never exceeded, a new watch is polled at once, and what the
polling learnt survives a restart in the state file."""

from __future__ import annotations

import time
from pathlib import Path

from batchscope.model import Source
from harness import DATADOG, daemon_settings, new_datadog, running_simulator, running_stack, serving
from harness import Stack as HarnessStack
from helpers import LogLines, wait_until


def ended(logs: LogLines, batch_id: str) -> list[str]:
    return [e["to_state"] for e in logs.events("batch.transition", batch_id=batch_id)
            if e["to_state"] in ("passed", "failed")]


async def test_a_tight_rate_limit_is_never_exceeded_and_every_end_is_reported(
        logs: LogLines) -> None:
    """Twelve batches polled every 0.05 s would want ~240 requests a second; the fake
    allows 10 a second. All twelve are due at once at start-up (configured ids, as after a
    restart) and twelve more are watched through the API. The daemon keeps within what the
    X-RateLimit headers say (the fake answered no 429, no poll failed for it) and still
    reports every batch's end."""
    datadog = new_datadog(rate_limit=10, rate_limit_period=1)
    configured = [datadog.create_batch() for _ in range(12)]
    async with running_stack(datadog=datadog,
                             datadog_target={"batch_ids": configured}) as stack:
        watched = [datadog.create_batch() for _ in range(12)]
        for batch_id in watched:
            await stack.watch(batch_id)
        batches = configured + watched
        await wait_until(lambda: all(logs.events("batch.transition", batch_id=b)
                                     for b in batches), timeout=30, what="first sightings")
        for n, batch_id in enumerate(batches):
            datadog.finish(batch_id, "failed" if n % 4 == 0 else "passed")
        await wait_until(lambda: all(ended(logs, b) for b in batches), timeout=30,
                         what="every end")
        errors = await stack.sample("batchscope_poll_errors_total", source="datadog",
                                    target=DATADOG, reason="rate_limited")
    assert datadog.rate_limited == 0
    assert not errors
    assert not logs.events("target.down", target=DATADOG)
    assert [ended(logs, b) for b in batches] == [
        ["failed" if n % 4 == 0 else "passed"] for n in range(len(batches))]
    assert len(datadog.requests) > 30  # more than a few windows' worth: it used the limit


async def test_a_new_watch_is_polled_at_once_not_at_the_next_interval(logs: LogLines) -> None:
    """With poll_interval 60 s a batch POSTed to the API is still seen (none -> in_progress)
    right away: the first sighting does not wait for a due time or the next interval."""
    async with running_stack(datadog_target={"poll_interval": 60}) as stack:
        await wait_until(lambda: stack.daemon.ready, what="ready")
        batch_id = stack.datadog.create_batch()
        await stack.watch(batch_id)
        await wait_until(lambda: logs.events("batch.transition", batch_id=batch_id,
                                             to_state="in_progress"),
                         what="the first sighting (the next interval is a minute away)")
        assert len([r for r in stack.datadog.requests if batch_id in r.path_qs]) == 1


async def test_learnt_durations_survive_a_restart(logs: LogLines, tmp_path: Path) -> None:
    """A result that was seen running and then passed teaches how long its test takes;
    that is saved with the state and loaded again by the next daemon on the same file."""
    state = str(tmp_path / "state.db")
    datadog = new_datadog()
    key = ("abc-def-ghi", "aws:eu-central-1", "chrome.laptop_large")
    async with running_simulator(datadog=datadog) as sim:
        settings = daemon_settings(sim, state_path=state)
        async with serving(sim, settings, HarnessStack) as stack:
            batch_id = datadog.create_batch()
            await stack.watch(batch_id)
            await wait_until(lambda: logs.events("batch.transition", batch_id=batch_id),
                             what="first sighting")
            datadog.set_result(batch_id, key[0], status="passed", duration=1234.0)
            await wait_until(lambda: len(stack.daemon.core.durations(DATADOG)) == 1,
                             what="learnt")
            learnt = stack.daemon.core.durations(DATADOG).estimate(key)
            assert learnt is not None and learnt.samples == 1
        async with serving(sim, settings, HarnessStack) as again:
            restored = again.daemon.core.durations(DATADOG).estimate(key)
            assert restored is not None and restored.samples == 1
            # kept to the millisecond
            assert abs(restored.mean - learnt.mean) < 1e-3 and abs(restored.dev - learnt.dev) < 1e-3
            assert again.daemon.core.get(Source.DATADOG, DATADOG, batch_id) is not None


async def test_a_scripted_timeline_ends_as_scripted_and_is_reported(logs: LogLines) -> None:
    """The latency benchmark's timelines (FakeDatadog.at): a result that ends, then the
    batch, at given moments of the fake's clock; the daemon reports both results (the
    scripted one with its scripted duration) and the batch's end as its last event."""
    datadog = new_datadog()
    async with running_stack(datadog=datadog) as stack:
        batch_id = datadog.create_batch()
        start = time.time()
        datadog.at(start + 0.3, lambda: datadog.set_result(
            batch_id, "jkl-mno-pqr", status="passed", duration=300.0))
        datadog.at(start + 0.6, lambda: datadog.finish(batch_id, "passed"))
        await stack.watch(batch_id)
        await wait_until(lambda: ended(logs, batch_id), what="the scripted end")
    results = [e for e in logs.events("ci_result.transition", batch_id=batch_id)
               if e["to_state"] == "passed"]
    [end] = [e for e in logs.events("batch.transition", batch_id=batch_id)
             if e["to_state"] == "passed"]
    by_test = {e["test_public_id"]: e for e in results}
    assert by_test["jkl-mno-pqr"]["duration_ms"] == 300.0
    assert sorted(by_test) == ["abc-def-ghi", "jkl-mno-pqr"]
    assert max(e["seq"] for e in results) < end["seq"]
    assert datadog.batch(batch_id).status == "passed"
