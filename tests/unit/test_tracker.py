"""The tracker as a table: (history of snapshots, snapshot, now) -> events, per SPEC.md rule."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from batchscope.model import (
    BatchTransition,
    CiResult,
    DatadogBatchSnapshot,
    EngineBatchSnapshot,
    EngineHistoryRecord,
    ResultState,
    ResultTransition,
    Source,
    State,
)
from batchscope.tracker import Tracker
from tracker_builders import dd, eng, hist, res

T = "prod"
STALL = 100.0


def transitions(events: list[object]) -> list[tuple[str, str]]:
    return [(e.from_state.value, e.to_state.value) for e in events
            if isinstance(e, BatchTransition)]


def new_tracker(**kw: float) -> Tracker:
    return Tracker(retention=kw.get("retention", 3600.0),
                   max_tracked=int(kw.get("max_tracked", 1000)))


@dataclass
class Row:
    """One row of the engine runtime table: snapshots at t=0,10,20,... then the check."""

    id: str
    steps: list[EngineBatchSnapshot]
    now: float
    snapshot: EngineBatchSnapshot
    expected: list[tuple[str, str]]
    step_times: list[float] = field(default_factory=list)


ENGINE_RUNTIME_TABLE = [
    Row("first sighting running", [], 0, eng(), [("none", "in_progress")]),
    Row("first sighting suspended", [], 0, eng(suspended=True), [("none", "suspended")]),
    Row("first sighting with failed jobs", [], 0, eng(failed=1), [("none", "failed")]),
    Row("suspended wins over failed", [eng()], 10, eng(failed=2, suspended=True),
        [("in_progress", "suspended")]),
    Row("failed jobs make a running batch failed", [eng()], 10, eng(completed=3, failed=1),
        [("in_progress", "failed")]),
    Row("retried failed jobs return to in_progress", [eng(), eng(failed=1)], 20,
        eng(completed=4), [("failed", "in_progress")]),
    Row("activated batch returns to in_progress", [eng(), eng(suspended=True)], 20, eng(),
        [("suspended", "in_progress")]),
    Row("no progress for stall_after is stalled", [eng(completed=1)], STALL, eng(completed=1),
        [("in_progress", "stalled")]),
    Row("no progress just under stall_after is not stalled", [eng(completed=1)], STALL - 1,
        eng(completed=1), []),
    Row("progress ends a stall", [eng(completed=1), eng(completed=1)], STALL + 10,
        eng(completed=2), [("stalled", "in_progress")], [0, STALL]),
    Row("seeding counts as progress", [eng(created=5)], STALL, eng(created=6), []),
    Row("a suspended batch is suspended, not stalled", [eng(suspended=True)], 10 * STALL,
        eng(suspended=True), []),
    Row("failed wins over stalled", [eng(failed=1)], 10 * STALL, eng(failed=1), []),
    Row("unchanged snapshot gives no event", [eng(completed=2)], 10, eng(completed=2), []),
]


@pytest.mark.parametrize("row", ENGINE_RUNTIME_TABLE, ids=lambda r: r.id)
def test_engine_runtime_rules(row: Row) -> None:
    """Each runtime rule of SPEC.md yields exactly the expected transitions."""
    tracker = new_tracker()
    times = row.step_times or [10.0 * i for i in range(len(row.steps))]
    for t, snap in zip(times, row.steps, strict=True):
        tracker.engine_runtime(T, [snap], t, STALL)
    out = tracker.engine_runtime(T, [row.snapshot], row.now, STALL)
    assert transitions(out.events) == row.expected
    assert out.missing == []


@pytest.mark.parametrize(
    ("last", "record", "expected", "duration"),
    [
        (eng(completed=10), hist(), ("in_progress", "passed"), 50.0),
        (eng(completed=3), hist(deleted=True), ("in_progress", "cancelled"), 50.0),
        (eng(suspended=True), hist(), ("suspended", "cancelled"), 50.0),
        (eng(failed=2), hist(), ("failed", "passed"), 50.0),
        (eng(completed=3), None, ("in_progress", "vanished"), 60.0),
    ],
    ids=["ended", "deleted", "ended while suspended", "failed then ended", "history 404"],
)
def test_engine_end_rules(
    last: EngineBatchSnapshot, record: EngineHistoryRecord | None,
    expected: tuple[str, str], duration: float,
) -> None:
    """A batch that leaves the runtime list gets its end from history, as SPEC.md says."""
    tracker = new_tracker()
    tracker.engine_runtime(T, [eng(start=0.0)], 0.0, STALL)
    tracker.engine_runtime(T, [last], 30.0, STALL)
    gone = tracker.engine_runtime(T, [], 60.0, STALL)
    assert gone.missing == ["b1"]
    out = tracker.engine_resolve(T, "b1", record, 60.0)
    assert transitions(out.events) == [expected]
    event = out.events[0]
    assert isinstance(event, BatchTransition)
    assert event.duration_seconds == pytest.approx(duration)
    assert tracker.active_for(Source.ENGINE, T) == {}


def test_engine_end_waits_for_history_end_time() -> None:
    """A history row without endTime decides nothing: the batch is asked about again."""
    tracker = new_tracker()
    tracker.engine_runtime(T, [eng()], 0.0, STALL)
    assert tracker.engine_runtime(T, [], 10.0, STALL).missing == ["b1"]
    assert tracker.engine_resolve(T, "b1", hist(end=None), 10.0).events == []
    assert tracker.engine_runtime(T, [], 20.0, STALL).missing == ["b1"]


def test_engine_duration_falls_back_to_first_sighting() -> None:
    """Without startTime (engines before 7.18) the duration starts at the first sighting."""
    tracker = new_tracker()
    tracker.engine_runtime(T, [eng()], 100.0, STALL)
    tracker.engine_runtime(T, [], 130.0, STALL)
    out = tracker.engine_resolve(T, "b1", hist(start=None, end=160.0), 170.0)
    assert isinstance(out.events[0], BatchTransition)
    assert out.events[0].duration_seconds == pytest.approx(60.0)


@pytest.mark.parametrize(
    ("record", "watermark", "expected"),
    [
        (hist("short", end=500.0), 400.0, [("none", "passed")]),
        (hist("short", end=500.0, deleted=True), 400.0, [("none", "cancelled")]),
        (hist("old", end=300.0), 400.0, []),
    ],
    ids=["ended between polls", "deleted between polls", "ended before the daemon started"],
)
def test_engine_history_sweep(
    record: EngineHistoryRecord, watermark: float, expected: list[tuple[str, str]]
) -> None:
    """Batches found only in history: new endings are transitions, old ones are recorded."""
    tracker = new_tracker()
    out = tracker.engine_history(T, [record], 600.0, watermark)
    assert transitions(out.events) == expected
    rec = tracker.get(Source.ENGINE, T, record.batch_id)
    assert rec is not None and rec.terminal
    assert tracker.seq == len(expected)


def test_engine_terminal_batches_are_never_reported_again() -> None:
    """Once terminal, neither a late runtime row nor the sweep produces another event."""
    tracker = new_tracker()
    tracker.engine_runtime(T, [eng()], 0.0, STALL)
    tracker.engine_runtime(T, [], 10.0, STALL)
    tracker.engine_resolve(T, "b1", hist(end=5.0), 10.0)
    assert tracker.engine_runtime(T, [eng(completed=5)], 20.0, STALL).events == []
    assert tracker.engine_history(T, [hist(end=5.0)], 30.0, 0.0).events == []
    assert tracker.engine_resolve(T, "b1", None, 40.0).events == []


def test_engine_failed_is_not_terminal() -> None:
    """An engine batch with failed jobs stays tracked and polled (it can still finish)."""
    tracker = new_tracker()
    tracker.engine_runtime(T, [eng(failed=1)], 0.0, STALL)
    assert "b1" in tracker.active_for(Source.ENGINE, T)


def test_targets_are_independent() -> None:
    """The same batch id on two engines is two batches; one listing never touches the other."""
    tracker = new_tracker()
    tracker.engine_runtime("a", [eng()], 0.0, STALL)
    tracker.engine_runtime("b", [eng()], 0.0, STALL)
    assert tracker.engine_runtime("a", [], 10.0, STALL).missing == ["b1"]
    assert tracker.engine_runtime("b", [eng()], 10.0, STALL).missing == []


# ------------------------------------------------------------------------------ datadog

DD = "datadog"


def watched(now: float = 0.0) -> Tracker:
    tracker = new_tracker()
    added, _ = tracker.datadog_watch(DD, "ci-1", now)
    assert added
    return tracker


@pytest.mark.parametrize(
    ("steps", "now", "snap", "expected"),
    [
        ([], 1.0, dd("in_progress"), [("none", "in_progress")]),
        ([dd("in_progress")], 10.0, dd("passed"), [("in_progress", "passed")]),
        ([dd("in_progress")], 10.0, dd("failed"), [("in_progress", "failed")]),
        ([dd("in_progress")], 10.0, dd("skipped"), [("in_progress", "skipped")]),
        ([dd("in_progress")], 2700.0, dd("in_progress"), [("in_progress", "stalled")]),
        ([dd("in_progress")], 2699.0, dd("in_progress"), []),
        ([], 1.0, dd("passed"), [("none", "passed")]),
        ([dd("in_progress")], 10.0, dd("exploded"), []),
    ],
    ids=["first sighting", "passed", "failed", "skipped", "stalled",
         "not yet stalled", "already passed", "unknown status keeps state"],
)
def test_datadog_batch_rules(
    steps: list[DatadogBatchSnapshot], now: float, snap: DatadogBatchSnapshot,
    expected: list[tuple[str, str]],
) -> None:
    """Datadog batch statuses map to states as SPEC.md says (stall_after 2700 s)."""
    tracker = watched()
    for i, step in enumerate(steps):
        tracker.datadog_snapshot(DD, step, float(i + 1), 2700.0)
    out = tracker.datadog_snapshot(DD, snap, now, 2700.0)
    assert transitions(out.events) == expected


def test_datadog_unknown_status_is_reported_once() -> None:
    """An unknown status string is kept and logged once, never a crash or a transition."""
    tracker = watched()
    tracker.datadog_snapshot(DD, dd("in_progress"), 1.0, 2700.0)
    first = tracker.datadog_snapshot(DD, dd("exploded"), 2.0, 2700.0)
    second = tracker.datadog_snapshot(DD, dd("exploded"), 3.0, 2700.0)
    assert [n.event for n in first.notices] == ["datadog.unknown_status"]
    assert first.notices[0].fields["status"] == "exploded"
    assert second.notices == []
    rec = tracker.get(Source.DATADOG, DD, "ci-1")
    assert rec is not None and rec.state is State.IN_PROGRESS and rec.raw_status == "exploded"


def test_datadog_terminal_duration_counts_from_watch() -> None:
    """A finished CI batch's duration starts when it was first watched."""
    tracker = watched(now=100.0)
    out = tracker.datadog_snapshot(DD, dd("passed"), 160.0, 2700.0)
    event = out.events[0]
    assert isinstance(event, BatchTransition) and event.duration_seconds == 60.0
    assert tracker.active_for(Source.DATADOG, DD) == {}


def test_datadog_not_found_grace() -> None:
    """404s become vanished only after not_found_grace; a 200 in between resets the clock."""
    tracker = watched()
    assert tracker.datadog_not_found(DD, "ci-1", 10.0, 60.0).events == []
    assert tracker.datadog_not_found(DD, "ci-1", 70.0, 60.0).events == []
    tracker.datadog_snapshot(DD, dd("in_progress"), 71.0, 2700.0)
    assert tracker.datadog_not_found(DD, "ci-1", 100.0, 60.0).events == []
    out = tracker.datadog_not_found(DD, "ci-1", 161.0, 60.0)
    assert transitions(out.events) == [("in_progress", "vanished")]


def result_transitions(events: list[object]) -> list[tuple[str, str, str | None, int | None]]:
    return [(e.from_state.value, e.to_state.value, e.result.result_id, e.result.retries)
            for e in events if isinstance(e, ResultTransition)]


def test_ci_result_lifecycle_with_retry() -> None:
    """Results: first sighting, a new attempt (new result_id naming the first one in
    initial_result_id), then the final state."""
    tracker = watched()
    a = tracker.datadog_snapshot(DD, dd("in_progress", res("in_progress")), 1.0, 2700.0)
    b = tracker.datadog_snapshot(DD, dd("in_progress", res("in_progress")), 2.0, 2700.0)
    c = tracker.datadog_snapshot(DD, dd("in_progress", res(
        "in_progress", result_id="r2", retries=0, initial="r1")), 3.0, 2700.0)
    d = tracker.datadog_snapshot(DD, dd("in_progress", res(
        "in_progress", result_id="r2", retries=1, initial="r1")), 4.0, 2700.0)
    e = tracker.datadog_snapshot(DD, dd("passed", res(
        "passed", result_id="r2", retries=1, initial="r1")), 5.0, 2700.0)
    assert result_transitions(a.events) == [("none", "in_progress", "r1", None)]
    assert result_transitions(b.events) == []
    assert result_transitions(c.events) == [("in_progress", "in_progress", "r2", 0)]
    assert result_transitions(d.events) == [("in_progress", "in_progress", "r2", 1)]
    assert result_transitions(e.events) == [("in_progress", "passed", "r2", 1)]
    # the result event precedes the batch's terminal event
    assert isinstance(e.events[0], ResultTransition) and isinstance(e.events[1], BatchTransition)
    final = e.events[1]
    assert isinstance(final, BatchTransition) and final.results is not None
    assert (final.results.total, final.results.passed) == (1, 1)


def test_ci_result_slots_are_test_location_device() -> None:
    """Two locations of one test are two results."""
    tracker = watched()
    other = CiResult(test_public_id="abc-def-ghi", status="failed", location="aws:us-east-1",
                     device="chrome.laptop_large", result_id="r9")
    out = tracker.datadog_snapshot(DD, dd("in_progress", res("passed"), other), 1.0, 2700.0)
    assert sorted(e.to_state for e in out.events if isinstance(e, ResultTransition)) == [
        ResultState.FAILED, ResultState.PASSED]


def test_terminal_datadog_batch_is_not_polled() -> None:
    """Finished CI batches leave the active set that the poller iterates."""
    tracker = watched()
    tracker.datadog_snapshot(DD, dd("failed"), 1.0, 2700.0)
    assert tracker.active_for(Source.DATADOG, DD) == {}
    assert tracker.datadog_snapshot(DD, dd("passed"), 2.0, 2700.0).events == []


# ------------------------------------------------------------------------------ mechanics


def test_seq_increases_by_one_and_continues_after_restore() -> None:
    """Every event gets the next sequence number, across a save/restore."""
    tracker = new_tracker()
    out = tracker.engine_runtime(T, [eng("a"), eng("b", failed=1)], 0.0, STALL)
    out2 = tracker.engine_runtime(T, [eng("a", suspended=True)], 1.0, STALL)
    seqs = [e.seq for e in out.events + out2.events]
    assert seqs == [1, 2, 3]
    restored = new_tracker()
    restored.restore(tracker.records.values(), tracker.seq)
    later = restored.engine_runtime(T, [eng("a")], 2.0, STALL)
    assert [e.seq for e in later.events] == [4]
    assert transitions(later.events) == [("suspended", "in_progress")]


def test_retention_forgets_terminal_batches() -> None:
    """Terminal batches stay for `retention`, then are forgotten (and reported as such)."""
    tracker = new_tracker(retention=100.0)
    tracker.engine_history(T, [hist("x", end=10.0)], 50.0, 0.0)
    tracker.take_changes()
    assert tracker.expire(149.0) == 0
    assert tracker.expire(150.0) == 1
    assert tracker.get(Source.ENGINE, T, "x") is None
    assert tracker.take_changes()[1] == [(Source.ENGINE, T, "x")]


def test_full_tracker_evicts_terminal_then_refuses() -> None:
    """At max_tracked_batches the oldest terminal batch goes first; then new ones are refused."""
    tracker = new_tracker(max_tracked=2)
    tracker.engine_history(T, [hist("old", end=10.0)], 20.0, 0.0)
    tracker.engine_runtime(T, [eng("a")], 30.0, STALL)
    out = tracker.engine_runtime(T, [eng("a"), eng("b")], 40.0, STALL)
    assert transitions(out.events) == [("none", "in_progress")]
    assert tracker.evictions == 1 and tracker.get(Source.ENGINE, T, "old") is None
    refused = tracker.engine_runtime(T, [eng("a"), eng("b"), eng("c")], 50.0, STALL)
    assert refused.events == []
    assert [n.event for n in refused.notices] == ["tracker.full"]
    assert tracker.get(Source.ENGINE, T, "c") is None and tracker.refused == 1


def test_state_counts_follow_transitions() -> None:
    """Per-state counts (what batchscope_batches shows) match the records."""
    tracker = new_tracker()
    tracker.engine_runtime(T, [eng("a"), eng("b", failed=1), eng("c", suspended=True)], 0.0,
                           STALL)
    tracker.engine_runtime(T, [eng("a"), eng("b")], 1.0, STALL)
    tracker.engine_resolve(T, "c", hist("c"), 2.0)
    counts = {s: tracker.counts[(Source.ENGINE, T, s)] for s in State if s is not State.NONE}
    assert counts[State.IN_PROGRESS] == 2
    assert counts[State.CANCELLED] == 1
    assert sum(counts.values()) == len(tracker) == 3


def test_unchanged_polls_mark_nothing_for_the_store() -> None:
    """A poll that changes nothing leaves nothing to write; a counter change does."""
    tracker = new_tracker()
    tracker.engine_runtime(T, [eng("a"), eng("b")], 0.0, STALL)
    tracker.take_changes()
    tracker.engine_runtime(T, [eng("a"), eng("b")], 1.0, STALL)
    assert tracker.take_changes() == ([], [])
    tracker.engine_runtime(T, [eng("a", completed=1), eng("b")], 2.0, STALL)
    assert [r.batch_id for r in tracker.take_changes()[0]] == ["a"]
    dd_tracker = watched()
    dd_tracker.datadog_snapshot(DD, dd("in_progress", res("in_progress")), 1.0, 2700.0)
    dd_tracker.take_changes()
    dd_tracker.datadog_snapshot(DD, dd("in_progress", res("in_progress")), 2.0, 2700.0)
    assert dd_tracker.take_changes() == ([], [])


def test_rewatch_before_a_save_is_not_lost() -> None:
    """Unwatch then watch again before the store saves: the record is written, not deleted."""
    tracker = watched()
    tracker.take_changes()
    tracker.datadog_unwatch(DD, "ci-1")
    tracker.datadog_watch(DD, "ci-1", 5.0)
    changed, forgotten = tracker.take_changes()
    assert [r.batch_id for r in changed] == ["ci-1"] and forgotten == []


def test_duplicate_result_slots_do_not_flip_flop() -> None:
    """The same test twice at one location/device: two results, no event on a quiet poll."""
    tracker = watched()
    snap = dd("in_progress", res("passed", result_id="r1"), res("failed", result_id="r2"))
    first = tracker.datadog_snapshot(DD, snap, 1.0, 2700.0)
    again = tracker.datadog_snapshot(DD, snap, 2.0, 2700.0)
    assert len([e for e in first.events if isinstance(e, ResultTransition)]) == 2
    assert again.events == []


def test_forget_target_drops_its_records() -> None:
    """Records of a target that is no longer configured are dropped, others kept."""
    tracker = new_tracker()
    tracker.engine_runtime("old", [eng("a", failed=1)], 0.0, STALL)
    tracker.engine_runtime(T, [eng("b")], 0.0, STALL)
    assert tracker.forget_target(Source.ENGINE, "old") == 1
    assert tracker.targets() == {(Source.ENGINE, T)}
    assert tracker.counts[(Source.ENGINE, "old", State.FAILED)] == 0


# --------------------------------------------------------------------------- result lineage


def test_results_listed_in_another_order_change_nothing() -> None:
    """Results are identified by their result_id lineage, not by their position: the same
    results in another order (two of them sharing test, location and device) give no event."""
    tracker = watched()
    first = res("in_progress", result_id="a1")
    twin = res("failed", result_id="a2")  # same test, location and device as ``first``
    other = res("passed", result_id="b1", test="xyz-xyz-xyz")
    out = tracker.datadog_snapshot(DD, dd("in_progress", first, twin, other), 1.0, 2700.0)
    assert len(result_transitions(out.events)) == 3
    again = tracker.datadog_snapshot(DD, dd("in_progress", other, twin, first), 2.0, 2700.0)
    assert again.events == []
    rec = tracker.get(Source.DATADOG, DD, "ci-1")
    assert rec is not None and rec.result_counts is not None
    assert (rec.result_counts.total, rec.result_counts.failed) == (3, 1)


def test_a_fast_retry_is_exactly_one_retry_event() -> None:
    """datadog-ci's fast retry: the attempt in flight keeps its id with retries 0, the final
    attempt has a new id, retries 1 and initial_result_id: one event, not a new result."""
    tracker = watched()
    tracker.datadog_snapshot(DD, dd("in_progress", res("in_progress", result_id="r1",
                                                        retries=0)), 1.0, 2700.0)
    out = tracker.datadog_snapshot(DD, dd("in_progress", res(
        "passed", result_id="r2", retries=1, initial="r1")), 2.0, 2700.0)
    assert result_transitions(out.events) == [("in_progress", "passed", "r2", 1)]
    # both attempts listed at once: the latest counts, nothing is reported twice
    both = tracker.datadog_snapshot(DD, dd("passed", res("failed", result_id="r1", retries=0),
                                           res("passed", result_id="r2", retries=1,
                                               initial="r1")), 3.0, 2700.0)
    assert result_transitions(both.events) == []
    assert transitions(both.events) == [("in_progress", "passed")]


def test_results_without_ids_are_told_apart_by_occurrence() -> None:
    """Results skipped by a selective rerun have no result_id: two of one test, location and
    device are two results, stable across polls."""
    tracker = watched()
    skipped = res("skipped", result_id=None)
    out = tracker.datadog_snapshot(DD, dd("in_progress", skipped, skipped), 1.0, 2700.0)
    assert len(result_transitions(out.events)) == 2
    assert tracker.datadog_snapshot(DD, dd("in_progress", skipped, skipped), 2.0,
                                    2700.0).events == []


def test_a_flood_of_results_is_capped_with_one_notice() -> None:
    """10,000 results sharing test, location and device: each is followed up to the cap,
    the rest counted, one datadog.results_capped notice, and a second poll is quiet."""
    from batchscope.tracker.datadog import MAX_RESULTS_PER_BATCH

    tracker = watched()
    flood = tuple(res("in_progress", result_id=f"r{i}") for i in range(10_000))
    out = tracker.datadog_snapshot(DD, dd("in_progress", *flood), 1.0, 2700.0)
    assert len(result_transitions(out.events)) == MAX_RESULTS_PER_BATCH
    assert [n.event for n in out.notices] == ["datadog.results_capped"]
    rec = tracker.get(Source.DATADOG, DD, "ci-1")
    assert rec is not None and len(rec.results) == MAX_RESULTS_PER_BATCH
    assert rec.result_counts is not None and rec.result_counts.total == 10_000
    again = tracker.datadog_snapshot(DD, dd("in_progress", *flood), 2.0, 2700.0)
    assert again.events == [] and again.notices == []
