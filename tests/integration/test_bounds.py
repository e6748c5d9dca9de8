"""Bounded resources seen from outside: tracker capacity, evictions, retention, state files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from batchscope.model import Source
from batchscope.simulator.engine import FakeEngine
from batchscope.sinks.store import SCHEMA_VERSION, StateError, StateStore
from harness import TOKEN, running_stack
from helpers import LogLines, wait_until


async def test_full_tracker_evicts_then_refuses_visibly(logs: LogLines) -> None:
    """At max_tracked_batches: terminal batches are evicted first (counted), then new batches
    are refused with one tracker.full line per poll, and the watch API answers 503."""
    engine = FakeEngine()
    async with running_stack(engine=engine, max_tracked_batches=3) as stack:
        first = engine.create_batch(total_jobs=1)
        await wait_until(lambda: logs.events("batch.transition", batch_id=first))
        engine.complete_jobs(first, 1)
        engine.finish(first)
        await wait_until(lambda: logs.events("batch.transition", batch_id=first,
                                             to_state="passed"))
        running = [engine.create_batch(total_jobs=2) for _ in range(3)]
        await wait_until(lambda: all(logs.events("batch.transition", batch_id=b)
                                     for b in running))
        assert stack.daemon.tracker.get(Source.ENGINE, "prod", first) is None
        assert await stack.sample("batchscope_batch_evictions_total") == 1
        assert await stack.sample("batchscope_tracked_batches") == 3

        extra = engine.create_batch(total_jobs=2)
        await wait_until(lambda: logs.events("tracker.full"))
        assert logs.events("batch.transition", batch_id=extra) == []
        assert logs.events("tracker.full")[0]["refused_batches"] == 1
        # Each source has its own bound: a full engine side leaves room for CI watches...
        for n in range(3):
            assert await stack.post_watch(f"ci-{n}") == 201
        # ...and watches cannot crowd out engine batches: the CI side is full on its own.
        async with stack.http.post(stack.base + "/api/v1/datadog/batches",
                                   json={"batch_id": "one-too-many"},
                                   headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 503
            assert "max_tracked_batches" in (await resp.json())["error"]
        assert await stack.sample("batchscope_tracked_batches") == 6


async def test_posted_watches_cannot_blind_engine_monitoring(logs: LogLines) -> None:
    """Anyone with the API token can POST watches; with the CI side full, a new engine
    batch is still tracked and reported."""
    engine = FakeEngine()
    async with running_stack(engine=engine, max_tracked_batches=5) as stack:
        for n in range(5):
            assert await stack.post_watch(f"flood-{n}") == 201
        assert await stack.post_watch("flood-5") == 503
        refusals = len(logs.events("tracker.full"))  # the refused watch's line
        batch = engine.create_batch(total_jobs=2)
        await wait_until(lambda: logs.events("batch.transition", batch_id=batch))
        assert len(logs.events("tracker.full")) == refusals


async def test_retention_forgets_finished_batches(logs: LogLines) -> None:
    """Terminal batches stay listed for `retention`, then disappear from the API."""
    engine = FakeEngine()
    async with running_stack(engine=engine, retention=0.3) as stack:
        batch = engine.create_batch(total_jobs=1)
        engine.complete_jobs(batch, 1)
        await wait_until(lambda: logs.events("batch.transition", batch_id=batch))
        engine.finish(batch)
        await wait_until(lambda: logs.events("batch.transition", batch_id=batch,
                                             to_state="passed"))
        await wait_until(lambda: stack.daemon.tracker.get(Source.ENGINE, "prod", batch)
                         is None, what="expiry")
        assert await stack.get_json("/api/v1/batches?source=engine") == []
        assert await stack.sample("batchscope_batches", source="engine", target="prod",
                                  state="passed") == 0


def test_state_file_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    """A state file written by a newer batchscope is not guessed at: a clear error naming
    the path (the CLI turns it into exit 78), and --reset-state starts afresh."""
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    with pytest.raises(StateError, match="newer batchscope") as info:
        StateStore(str(path)).open_blocking()
    assert str(path) in str(info.value)
    assert StateStore(str(path)).open_blocking(reset=True).records == []
