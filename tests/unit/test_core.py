"""The core as a pure object: targets, the watch list, the history cursor, apply, changes."""

from __future__ import annotations

import orjson

from batchscope.model import BatchTransition, Source, State
from batchscope.sinks.state_format import (
    memory_from_meta,
    memory_to_meta,
    record_from_row,
    record_to_row,
)
from batchscope.tracker import ConfiguredIds, Core, DatadogWatch, EngineWatch, HistoryCursor
from batchscope.tracker.engine import MAX_PLAUSIBLE_SKEW, SWEEP_OVERLAP
from batchscope.tracker.observations import (
    CiBatchNotFound,
    EndLookedUp,
    HistorySwept,
    RuntimeListed,
)
from tracker_builders import eng, hist

ENGINE = EngineWatch(name="prod", stall_after=100.0)
E = (Source.ENGINE, "prod")
D = (Source.DATADOG, "ci")


def datadog(*ids: str) -> DatadogWatch:
    return DatadogWatch(name="ci", stall_after=100.0, not_found_grace=5.0, batch_ids=ids)


def states(events: list[object]) -> list[tuple[str, str, str]]:
    return [(e.batch_id, e.from_state.value, e.to_state.value) for e in events
            if isinstance(e, BatchTransition)]


def restarted(core: Core, watches: list[EngineWatch | DatadogWatch], now: float) -> Core:
    """What a restart does: the core's changes through the state file's JSON form."""
    changes = core.take_changes()
    fresh = Core(retention=3600, max_tracked=100)
    rows = [record_from_row(orjson.loads(orjson.dumps(record_to_row(r))))
            for r in core.batches()]
    meta = orjson.loads(orjson.dumps(memory_to_meta(changes.memory)))
    fresh.restore(rows, changes.seq, memory_from_meta(meta))
    fresh.configure(watches, now)
    return fresh


def test_configured_batch_ids_are_watched_once_ever() -> None:
    """A configured id is watched at start; once it ended and was forgotten, a restart with
    the same settings does not watch (and report) it again."""
    core = Core(retention=10, max_tracked=100)
    out = core.configure([datadog("b-1")], 0.0)
    assert core.watched("ci") == ["b-1"]
    assert [n.event for n in out.notices] == ["datadog.watch"]
    core.apply(D, CiBatchNotFound("b-1"), 1.0)
    core.apply(D, CiBatchNotFound("b-1"), 7.0)  # past the grace: vanished, terminal
    assert core.get(Source.DATADOG, "ci", "b-1").state is State.VANISHED  # type: ignore[union-attr]
    core.expire(100.0)
    assert core.get(Source.DATADOG, "ci", "b-1") is None
    again = restarted(core, [datadog("b-1")], 200.0)
    assert again.watched("ci") == []


def test_an_unconfigured_target_is_forgotten_with_a_notice() -> None:
    """Records and memory of a target gone from the settings are dropped, once."""
    core = Core(retention=3600, max_tracked=100)
    core.configure([ENGINE, datadog("b-1")], 0.0)
    core.apply(E, RuntimeListed([eng("x")]), 1.0)
    out = core.configure([datadog("b-1")], 2.0)
    assert [(n.event, n.fields["source"], n.fields["batches"]) for n in out.notices] == [
        ("target.forgotten", "engine", 1)]
    assert core.get(Source.ENGINE, "prod", "x") is None
    assert (Source.ENGINE, "prod") not in core.take_changes().memory


def test_the_watermark_follows_a_plausible_engine_clock_only() -> None:
    """The first listing starts the history cursor on the engine's clock (Date header) when
    the clocks differ by more than 2 s; an implausible Date is ignored with a notice."""
    for server_time, expected, notices in [
        (None, 10.0, []),
        (1_000.0 - 0.5, 10.0 - 0.0, []),  # same clock (Date has whole seconds)
        (400.0 - 0.5, 10.0 - 600.0, []),  # engine 10 minutes behind
        (1_000.0 + 10 * MAX_PLAUSIBLE_SKEW, 10.0, ["engine.clock_skew_ignored"]),
        (1_000.0 - 10 * MAX_PLAUSIBLE_SKEW, 10.0, ["engine.clock_skew_ignored"]),
    ]:
        core = Core(retention=3600, max_tracked=100)
        core.configure([ENGINE], 10.0)
        out = core.apply(E, RuntimeListed([], server_time), 1_000.0)
        cursor = core.cursor("prod")
        assert cursor is not None and cursor.watermark == expected, server_time
        assert cursor.sweep_from == expected - SWEEP_OVERLAP
        assert [n.event for n in out.notices] == notices


def test_a_watermark_from_the_future_is_not_kept() -> None:
    """A persisted watermark far ahead of the clock (written under a wrong clock) would hide
    every short batch until that date: it is discarded, with a notice."""
    core = Core(retention=3600, max_tracked=100)
    future = HistoryCursor(watermark=4_000_000_000.0, sweep_from=4_000_000_000.0)
    core.restore([], 0, {E: future})
    out = core.configure([ENGINE], 1_000.0)
    assert [n.event for n in out.notices] == ["engine.watermark_discarded"]
    core.apply(E, RuntimeListed([]), 1_000.0)
    assert core.cursor("prod").watermark == 1_000.0  # type: ignore[union-attr]


def test_a_batch_gone_from_the_runtime_ends_by_the_one_end_rule() -> None:
    """Missing runtime rows are named for lookup; a lookup saying "still running" ends
    nothing, no history row means vanished, a deleted one cancelled."""
    core = Core(retention=3600, max_tracked=100)
    core.configure([ENGINE], 0.0)
    core.apply(E, RuntimeListed([eng("a"), eng("b"), eng("c")]), 1.0)
    out = core.apply(E, RuntimeListed([], unreadable=frozenset({"c"})), 2.0)
    assert sorted(out.missing) == ["a", "b"]
    assert core.apply(E, EndLookedUp("a", None, still_running=True), 3.0).events == []
    assert states(core.apply(E, EndLookedUp("a", None), 3.0).events) == [
        ("a", "in_progress", "vanished")]
    assert states(core.apply(E, EndLookedUp("b", hist("b", deleted=True)), 3.0).events) == [
        ("b", "in_progress", "cancelled")]


def test_the_history_sweep_reports_new_endings_and_moves_its_cursor() -> None:
    """Endings after the watermark become none -> passed|cancelled (the delete evidence is
    asked only for those); older ones are recorded silently; the cursor advances."""
    core = Core(retention=3600, max_tracked=100)
    core.configure([ENGINE], 1_000.0)
    core.apply(E, RuntimeListed([]), 1_000.0)
    rows = [hist("old", start=0.0, end=500.0), hist("new", start=990.0, end=1_010.0),
            hist("gone", start=995.0, end=1_020.0, deleted=True)]
    assert [r.batch_id for r in core.unseen_endings("prod", rows)] == ["new", "gone"]
    out = core.apply(E, HistorySwept(rows), 1_030.0)
    assert states(out.events) == [("new", "none", "passed"), ("gone", "none", "cancelled")]
    assert core.get(Source.ENGINE, "prod", "old").state is State.PASSED  # type: ignore[union-attr]
    cursor = core.cursor("prod")
    assert cursor is not None and cursor.sweep_from == 1_020.0 - SWEEP_OVERLAP
    assert core.unseen_endings("prod", rows) == []
    assert core.apply(E, HistorySwept(rows), 1_040.0).events == []


def test_changes_are_handed_over_once_and_requeued_after_a_failed_save() -> None:
    """take_changes empties the change set; requeue puts it back for the next save."""
    core = Core(retention=3600, max_tracked=100)
    core.configure([ENGINE], 0.0)
    core.annotate(core.apply(E, RuntimeListed([eng("a")]), 1.0))
    changes = core.take_changes()
    assert [r.batch_id for r in changes.records] == ["a"] and changes.seq == 1
    assert not core.has_changes
    core.requeue(changes)
    assert core.has_changes
    assert [r.batch_id for r in core.take_changes().records] == ["a"]


def test_state_rows_from_before_result_lineages_still_load() -> None:
    """A record written with (test, location, device)-keyed results loads: a result id
    becomes its lineage, '#'-suffixed repeats become numbered occurrences."""
    row = {"source": "datadog", "target": "ci", "batch_id": "b", "batch_type": "synthetics-ci",
           "state": "in_progress", "state_since": 1.0, "first_seen": 1.0, "last_seen": 1.0,
           "results": [["t", "loc", "dev", "passed", "r1", None],
                       ["t", "loc", "dev#", "failed", None, 0]]}
    rec = record_from_row(row)
    assert sorted(rec.results) == ["r1", "t|loc|dev|1"]
    assert record_from_row(orjson.loads(orjson.dumps(record_to_row(rec)))).results == rec.results


def test_memory_round_trips_and_rejects_garbage() -> None:
    """Per-target memory survives the meta JSON; a malformed entry is a ValueError."""
    memory = {E: HistoryCursor(1.0, 2.0, {"x": 3.0}), D: ConfiguredIds(["b-1"])}
    assert memory_from_meta(orjson.loads(orjson.dumps(memory_to_meta(memory)))) == memory
    for bad in ([1], {"engine:prod": 5}, {"nope": {}}, {"engine:prod": {"watermark": "x"}}):
        try:
            memory_from_meta(bad)  # type: ignore[arg-type]
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad!r}")


def test_an_unreadable_end_time_still_ends_the_batch() -> None:
    """A history row whose endTime came in a format that could not be read has ended: the
    lookup decides passed, and the sweep judges it by its start time."""
    from batchscope.model import EngineHistoryRecord

    def unreadable(batch_id: str, start: float | None) -> EngineHistoryRecord:
        return EngineHistoryRecord(batch_id=batch_id, batch_type="instance-migration",
                                   total_jobs=10, start_time=start, end_time=None,
                                   end_time_unreadable=True)

    core = Core(retention=3600, max_tracked=100)
    core.configure([ENGINE], 1_000.0)
    core.apply(E, RuntimeListed([eng("a")]), 1_000.0)
    core.apply(E, RuntimeListed([]), 1_001.0)
    assert states(core.apply(E, EndLookedUp("a", unreadable("a", 990.0)), 1_002.0).events) == [
        ("a", "in_progress", "passed")]
    rows = [unreadable("short", 1_005.0), unreadable("old", 10.0), unreadable("blind", None)]
    out = core.apply(E, HistorySwept(rows), 1_010.0)
    assert states(out.events) == [("short", "none", "passed")]
    assert core.get(Source.ENGINE, "prod", "old").state is State.PASSED  # type: ignore[union-attr]


def test_a_batch_listed_twice_in_one_listing_is_applied_once() -> None:
    """Offset paging over a changing list can list one id on two pages in two states: one
    listing gives at most one transition per batch (the later row wins)."""
    core = Core(retention=3600, max_tracked=100)
    core.configure([ENGINE], 0.0)
    core.apply(E, RuntimeListed([eng("a")]), 1.0)
    for now in (2.0, 3.0, 4.0):
        out = core.apply(E, RuntimeListed([eng("a", failed=1), eng("a", suspended=True)]), now)
        assert len(states(out.events)) <= 1
    assert core.get(Source.ENGINE, "prod", "a").state is State.SUSPENDED  # type: ignore[union-attr]


def test_each_source_has_its_own_bound() -> None:
    """Watches cannot crowd engine batches out (nor the reverse): the bound is per source."""
    core = Core(retention=3600, max_tracked=2)
    core.configure([ENGINE, datadog()], 0.0)
    from batchscope.tracker import Outcome

    out = Outcome()
    assert core.watch("ci", "w1", 1.0, out) and core.watch("ci", "w2", 1.0, out)
    assert not core.watch("ci", "w3", 1.0, out)
    listed = core.apply(E, RuntimeListed([eng("a"), eng("b"), eng("c")]), 2.0)
    assert sorted(b for b, _, _ in states(listed.events)) == ["a", "b"]
    assert [n.event for n in listed.notices] == ["tracker.full"]


def test_a_cycle_that_never_completes_is_not_alive() -> None:
    """A poll loop whose requests keep completing (an upstream paging forever) still beats,
    but a cycle older than its bound is stuck: /healthz and the watchdog must say so."""
    import time

    from batchscope.runtime.pollers import Heartbeat

    beat = Heartbeat(grace=60.0, cycle_bound=5.0)
    beat.start_cycle()
    now = time.monotonic()
    beat.beat()
    assert beat.alive(now + 1)
    assert not beat.alive(now + 10)  # still beating, but the cycle is 10 s old
    beat.end_cycle()
    assert beat.alive(now + 10) and beat.attempts == 1


def test_an_upstream_wait_is_capped() -> None:
    """Retry-After of a billion seconds (or any value above the cap) never parks a loop."""
    from batchscope.runtime.poll_loop import backoff_delay

    assert backoff_delay(1.0, 1, 1e9, cap=300.0) <= 300.0
    assert backoff_delay(1.0, 1, 40.0, cap=300.0) >= 40.0


def test_events_held_for_a_lookup_are_numbered_when_published() -> None:
    """A listing's transitions wait for diagnosis lookups; a Datadog event decided meanwhile
    is published first, so the held events are numbered after it: the log stays in seq
    order, without gaps."""
    core = Core(retention=3600, max_tracked=100)
    core.configure([ENGINE, datadog("b-1")], 0.0)
    held = core.apply(E, RuntimeListed([eng("a", failed=1)]), 1.0)
    assert [e.seq for e in held.events] == [0]  # not numbered yet: a lookup is due
    assert core.lookups_due("prod", 5)[0]
    meanwhile = core.apply(D, CiBatchNotFound("b-1"), 2.0)
    meanwhile = core.apply(D, CiBatchNotFound("b-1"), 9.0)
    assert [e.seq for e in meanwhile.events] == [1]
    assert [e.seq for e in core.annotate(held).events] == [2]
    assert core.seq == 2


def test_an_ending_in_the_far_future_never_moves_the_sweep() -> None:
    """One history row ending in 2100 (broken clock, hostile upstream) must not move the
    sweep's start there: every later ending would be hidden, persistently."""
    core = Core(retention=3600, max_tracked=100)
    core.configure([ENGINE], 1_000.0)
    core.apply(E, RuntimeListed([]), 1_000.0)
    future = hist("future", start=990.0, end=4_102_444_800.0)  # 2100-01-01
    core.apply(E, HistorySwept([future]), 1_010.0)
    cursor = core.cursor("prod")
    assert cursor is not None and cursor.sweep_from == 1_000.0 - SWEEP_OVERLAP
    later = hist("later", start=1_015.0, end=1_020.0)
    assert states(core.apply(E, HistorySwept([later]), 1_030.0).events) == [
        ("later", "none", "passed")]
