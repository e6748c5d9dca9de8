"""Failures of one batch's lookup must not be taken for the batch's end or the target's."""

from __future__ import annotations

import orjson

from batchscope.model import Source
from batchscope.simulator.engine import FakeEngine
from harness import running_stack
from helpers import LogLines, wait_until


async def test_batch_missing_from_one_listing_is_not_vanished(logs: LogLines) -> None:
    """Offset paging can skip a running batch once (another ended between two pages). With
    no history row (history level below FULL) it must not be reported vanished."""
    engine = FakeEngine(history=False)
    ids = sorted(engine.create_batch(total_jobs=3) for _ in range(3))
    async with running_stack(engine=engine) as stack:
        await wait_until(lambda: len(logs.events("batch.transition")) == 3)
        # one listing that lacks the middle batch, exactly as a shifted page would
        rows = [{"id": i, "type": "instance-migration", "totalJobs": 3, "jobsCreated": 3,
                 "completedJobs": 0, "remainingJobs": 3, "failedJobs": 0, "suspended": False}
                for i in ids if i != ids[1]]
        engine.clear_requests()
        engine.inject("/batch/statistics", body=orjson.dumps(rows), times=1)
        await wait_until(lambda: any(r.path_qs.endswith(f"/batch/{ids[1]}")
                                     for r in engine.requests), what="runtime check")
        await wait_until(lambda: stack.daemon.targets[(Source.ENGINE, "prod")].poller
                         .heartbeat.attempts > 5)
        assert logs.events("batch.transition", to_state="vanished") == []
        rec = stack.daemon.tracker.get(Source.ENGINE, "prod", ids[1])
        assert rec is not None and rec.state.value == "in_progress"
        # a batch that really left (and has no history) is still reported vanished
        engine.delete(ids[0], cascade=True)
        await wait_until(lambda: logs.events("batch.transition", batch_id=ids[0],
                                             to_state="vanished"))


async def test_one_bad_datadog_batch_does_not_take_the_target_down(logs: LogLines) -> None:
    """A batch that keeps answering 500 is logged once; the others keep their cadence and
    the target stays up (only when every watched batch fails is the target down)."""
    async with running_stack() as stack:
        dd = stack.datadog
        bad, good, steady = dd.create_batch(), dd.create_batch(), dd.create_batch()
        for batch in (bad, good, steady):  # steady stays in progress: not every poll fails
            stack.daemon.watch("ci", batch)
        dd.inject(f"/ci/batch/{bad}", status=500, body=b'{"errors": ["boom"]}', times=None)
        await wait_until(lambda: logs.events("datadog.batch_error", batch_id=bad))
        dd.finish(good, "passed")
        await wait_until(lambda: logs.events("batch.transition", batch_id=good,
                                             to_state="passed"))
        poller = stack.daemon.targets[(Source.DATADOG, "ci")].poller
        attempts = poller.heartbeat.attempts
        await wait_until(lambda: poller.heartbeat.attempts >= attempts + 5)
        assert await stack.sample("batchscope_target_up", source="datadog", target="ci") == 1
        assert logs.events("target.down", target="ci") == []
        assert len(logs.events("datadog.batch_error", batch_id=bad)) == 1
        dd.clear_faults()
        dd.finish(bad, "failed")
        await wait_until(lambda: logs.events("batch.transition", batch_id=bad,
                                             to_state="failed"))
