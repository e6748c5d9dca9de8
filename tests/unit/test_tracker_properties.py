"""Property-based tests of the tracker: random snapshot sequences, invariants after every call.

The invariants (SPEC.md "States" and "Events"):

* every change of a tracked batch's state yields exactly one event, whose ``from_state`` is the
  state before and whose ``to_state`` is the state after (so the per-batch from/to chain has no
  holes); no event is emitted without a change;
* terminal states are final: no event ever starts from a terminal state, and a batch that
  reached one emits nothing more until it has been forgotten;
* ``seq`` has no gaps: it increases by exactly one per event (batch and result events share it);
* the per-state counts behind ``batchscope_batches`` equal the number of records in each state,
  and the active / ended indexes hold exactly the non-terminal / terminal records;
* a record survives the state store's dict round trip unchanged and, restored into a new
  tracker, produces the same future events.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from itertools import pairwise
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchscope.model import (
    BatchTransition,
    DatadogBatchSnapshot,
    EngineBatchSnapshot,
    EngineHistoryRecord,
    ResultState,
    ResultTransition,
    Source,
    State,
    is_terminal,
)
from batchscope.sinks.store import record_from_row as record_from_dict
from batchscope.sinks.store import record_to_row as record_to_dict
from batchscope.tracker import Key, Outcome, Tracker
from tracker_builders import dd, eng, hist, res

T = "prod"
STALL = 100.0
GRACE = 30.0
RETENTION = 500.0
START = 1_000.0  # the tracker's first "now"; also the history watermark
ENGINE_IDS = ("e1", "e2", "e3")
OLD_IDS = ("o1", "o2")  # batches that ended before the daemon's watermark
DD_IDS = ("d1", "d2")
TESTS = ("t-1", "t-2")
DD_STATUSES = ("in_progress", "passed", "failed", "skipped", "exploded", "queued", "")
RESULT_STATUSES = ("in_progress", "passed", "failed", "skipped", "weird")

PROPERTY_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# --------------------------------------------------------------------------- operations
#
# Operations change a small model of the upstream (what a real engine / Datadog would do),
# and "poll"/"sweep" feed the tracker what the sources would fetch from it, the way the
# pollers do. A few raw operations feed arbitrary snapshots for good measure.

Op = tuple[Any, ...]

eid = st.sampled_from(ENGINE_IDS)
advance_op = st.tuples(st.just("advance"), st.floats(0, 120))
expire_op = st.just(("expire",))
roundtrip_op = st.just(("roundtrip",))

engine_ops = st.lists(
    st.one_of(
        st.tuples(st.just("create"), eid, st.integers(0, 20), st.integers(0, 20)),
        st.tuples(st.just("work"), eid, st.integers(0, 8)),
        st.tuples(st.just("fail"), eid, st.integers(1, 3)),
        st.tuples(st.just("retry"), eid),
        st.tuples(st.just("suspend"), eid, st.booleans()),
        st.tuples(st.just("end"), eid, st.sampled_from(["finish", "delete", "cascade"])),
        st.tuples(st.just("cleanup"), eid),
        st.tuples(st.just("old"), st.sampled_from(OLD_IDS), st.booleans()),
        st.tuples(st.just("poll"), st.booleans()),
        st.tuples(st.just("poll"), st.just(False)),
        st.tuples(st.just("poll"), st.just(False)),
        st.tuples(st.just("sweep"), st.booleans()),
        st.tuples(st.just("raw"), eid, st.integers(0, 20), st.integers(0, 20),
                  st.integers(0, 2), st.booleans()),
        advance_op, advance_op, expire_op, roundtrip_op,
    ),
    min_size=20, max_size=80,
)

did = st.sampled_from(DD_IDS)
dd_ops = st.lists(
    st.one_of(
        st.tuples(st.just("create"), did),
        st.tuples(st.just("watch"), did),
        st.tuples(st.just("unwatch"), did),
        st.tuples(st.just("status"), did, st.sampled_from(DD_STATUSES)),
        st.tuples(st.just("result"), did, st.sampled_from(TESTS),
                  st.sampled_from(RESULT_STATUSES), st.booleans()),
        st.tuples(st.just("delete"), did),
        st.just(("poll",)), st.just(("poll",)), st.just(("poll",)),
        advance_op, expire_op, roundtrip_op,
    ),
    min_size=20, max_size=80,
)


@dataclass
class UpstreamBatch:
    """An engine batch as the fake engine would hold it."""

    total: int
    created: int
    completed: int = 0
    failed: int = 0
    suspended: bool = False

    def snapshot(self, batch_id: str) -> EngineBatchSnapshot:
        return eng(batch_id, total=self.total, created=self.created, completed=self.completed,
                   failed=self.failed, suspended=self.suspended, start=START - 10)


def history_record(batch_id: str, end: float | None, deleted: bool) -> EngineHistoryRecord:
    return hist(batch_id, start=START - 10, end=end, deleted=deleted)


@dataclass
class UpstreamCiBatch:
    """A Datadog CI batch: raw status and per-test (status, result_id, retries); a retry
    names its first attempt in ``initial_result_id``, as datadog-ci shows it."""

    status: str = "in_progress"
    results: dict[str, tuple[str, str, int | None]] = field(default_factory=dict)

    def snapshot(self, batch_id: str) -> DatadogBatchSnapshot:
        return dd(self.status, *(
            res(status, test=test, device="", result_id=result_id, retries=retries,
                initial=None if retries is None else f"{batch_id}-{test}-0")
            for test, (status, result_id, retries) in self.results.items()
        ), batch_id=batch_id)


# --------------------------------------------------------------------------- the checker


def round_trip(tracker: Tracker) -> Tracker:
    """What a restart does: records through the store's JSON form into a fresh tracker."""
    fresh = Tracker(retention=tracker.retention, max_tracked=tracker.max_tracked,
                    seq=tracker.seq)
    fresh.restore(
        [record_from_dict(orjson.loads(orjson.dumps(record_to_dict(rec))))
         for rec in tracker.records.values()],
        tracker.seq,
    )
    return fresh


@dataclass
class Checker:
    """Drives a tracker and checks every invariant after each call."""

    tracker: Tracker
    now: float = START
    events: list[BatchTransition | ResultTransition] = field(default_factory=list)
    # keys whose last event was terminal; cleared only when the record is forgotten
    finished: set[Key] = field(default_factory=set)
    results: dict[tuple[Key, tuple[str, str, str]], ResultState] = field(default_factory=dict)
    # the upstreams: running engine batches; ended ones (end time or None once the history
    # row is gone, deleted); Datadog CI batches and the ids deleted there
    running: dict[str, UpstreamBatch] = field(default_factory=dict)
    ended: dict[str, tuple[float | None, bool]] = field(default_factory=dict)
    ci: dict[str, UpstreamCiBatch] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)

    def states(self) -> dict[Key, State]:
        return {k: r.state for k, r in self.tracker.records.items()}

    def call(self, action: Callable[[], Outcome]) -> Outcome:
        before = self.states()
        seq_before = self.tracker.seq
        out = action()
        self.check(before, seq_before, out)
        return out

    def check(self, before: dict[Key, State], seq_before: int, out: Outcome) -> None:
        tracker = self.tracker
        after = self.states()
        _, forgotten = tracker.take_changes()

        # seq: no gaps, +1 per event, continuing from the tracker's previous value
        seqs = [e.seq for e in out.events]
        assert seqs == list(range(seq_before + 1, seq_before + 1 + len(seqs)))
        assert tracker.seq == seq_before + len(seqs)

        # forgotten keys lose their "finished" mark (ids are never reused upstream, but a
        # forgotten batch may legitimately be seen again as a new record)
        for key in set(forgotten) | (set(before) - set(after)):
            assert key[0] is Source.DATADOG or key not in before or is_terminal(
                key[0], before[key]) or key in self.finished
            self.finished.discard(key)
            for slot in [s for s in self.results if s[0] == key]:
                del self.results[slot]

        batch_events: dict[Key, list[BatchTransition]] = {}
        for event in out.events:
            if isinstance(event, BatchTransition):
                key = (event.source, event.target, event.batch_id)
                batch_events.setdefault(key, []).append(event)
                assert event.from_state is not event.to_state
                assert not is_terminal(event.source, event.from_state), event
                assert key not in self.finished, f"event after a terminal state: {event}"
            else:
                key = (Source.DATADOG, event.target, event.batch_id)
                slot = (key, event.result.key)
                assert event.from_state is self.results.get(slot, ResultState.NONE), event
                self.results[slot] = event.to_state
                assert key not in self.finished
                assert not is_terminal(Source.DATADOG, before.get(key, State.NONE))

        for key, chain in batch_events.items():
            # every change of state is exactly one event: from the state before ...
            assert chain[0].from_state is before.get(key, State.NONE), chain
            for a, b in pairwise(chain):
                assert b.from_state is a.to_state
            last = chain[-1].to_state
            # ... to the state after (a batch ended in this call may already be evicted)
            if key in after:
                assert after[key] is last
            else:
                assert is_terminal(key[0], last)
            if is_terminal(key[0], last):
                self.finished.add(key)
                assert chain[-1].duration_seconds is not None
                assert chain[-1].duration_seconds >= 0

        # ... and no change of state without an event
        for key, state in after.items():
            if key in batch_events:
                continue
            if key in before:
                assert before[key] is state, f"{key}: {before[key]} -> {state} without event"
            else:
                # new without event: a Datadog watch (none) or a batch that ended before
                # the daemon's watermark (recorded silently, terminal)
                assert state is State.NONE or is_terminal(key[0], state), (key, state)
                if state is not State.NONE:
                    self.finished.add(key)

        # a forgotten batch (expired, evicted, unwatched) may be seen again as a new record
        self.finished &= set(after)
        self.check_indexes()
        self.events.extend(out.events)

    def check_indexes(self) -> None:
        tracker = self.tracker
        recount = Counter((r.source, r.target, r.state) for r in tracker.records.values())
        assert +tracker.counts == recount
        assert all(v >= 0 for v in tracker.counts.values())
        active = {rec.key for rec in tracker.iter_active()}
        assert active == {k for k, r in tracker.records.items() if not r.terminal}
        assert set(tracker._ended) == {k for k, r in tracker.records.items() if r.terminal}
        assert len(tracker) <= tracker.max_tracked

    # ------------------------------------------------------------------ operations

    def engine(self, op: Op) -> None:
        kind, args = op[0], op[1:]
        running, ended = self.running, self.ended
        if kind == "create" and args[0] not in running and args[0] not in ended:
            total = args[1]
            running[args[0]] = UpstreamBatch(total=total, created=min(total, args[2]))
        elif kind in ("work", "fail") and args[0] in running:
            b = running[args[0]]
            n = min(args[1], b.total - b.completed - b.failed)
            b.created = max(b.created, b.completed + b.failed + n)
            if kind == "work":
                b.completed += n
            else:
                b.failed += n
        elif kind == "retry" and args[0] in running:
            running[args[0]].failed = 0
        elif kind == "suspend" and args[0] in running:
            running[args[0]].suspended = args[1]
        elif kind == "end" and args[0] in running:
            del running[args[0]]
            how = args[1]
            ended[args[0]] = (None if how == "cascade" else self.now, how != "finish")
        elif kind == "cleanup" and args[0] in ended:
            ended[args[0]] = (None, ended[args[0]][1])
        elif kind == "old" and args[0] not in ended:
            ended[args[0]] = (START - 500, args[1])
        elif kind == "poll":
            self.engine_poll(history_lags=args[0])
        elif kind == "sweep":
            rows = [history_record(b, end, deleted) for b, (end, deleted) in ended.items()
                    if end is not None]
            if args[0]:
                rows = rows + rows  # offset paging over a changing list repeats rows
            self.call(lambda: self.tracker.engine_history(T, rows, self.now, START))
        elif kind == "raw" and args[0] not in ended:
            # an arbitrary runtime row for a batch that has not ended upstream
            total, done, failed, suspended = args[1], min(args[2], args[1]), args[3], args[4]
            snap = UpstreamBatch(total=total, created=total, completed=done,
                                 failed=min(failed, total - done), suspended=suspended)
            running[args[0]] = snap
            self.engine_poll(history_lags=False)
        elif kind in ("advance", "expire", "roundtrip"):
            self.common(op)

    def engine_poll(self, history_lags: bool) -> None:
        """What EnginePoller.poll_once does: the listing, then the end of missing batches."""
        rows = [b.snapshot(batch_id) for batch_id, b in sorted(self.running.items())]
        out = self.call(lambda: self.tracker.engine_runtime(T, rows, self.now, STALL))
        for batch_id in out.missing:
            assert batch_id not in self.running
            end, deleted = self.ended[batch_id]
            record: EngineHistoryRecord | None
            if history_lags:  # the runtime row is gone but history has no endTime yet
                record = history_record(batch_id, None, False)
            else:
                record = None if end is None else history_record(batch_id, end, deleted)
            self.call(partial(self.tracker.engine_resolve, T, batch_id, record, self.now))

    def datadog(self, op: Op) -> None:
        kind, args = op[0], op[1:]
        upstream = self.ci
        if kind == "create" and args[0] not in upstream and args[0] not in self.deleted:
            upstream[args[0]] = UpstreamCiBatch(results={
                test: ("in_progress", f"{args[0]}-{test}-0", None) for test in TESTS})
        elif kind == "watch":
            self.call(lambda: self.tracker.datadog_watch(T, args[0], self.now)[1])
        elif kind == "unwatch":
            self.call(lambda: (self.tracker.datadog_unwatch(T, args[0]), Outcome())[1])
        elif kind == "status" and args[0] in upstream:
            upstream[args[0]].status = args[1]
        elif kind == "result" and args[0] in upstream:
            batch_id, test, status, new_attempt = args
            _, result_id, retries = upstream[batch_id].results[test]
            if new_attempt:
                retries = 0 if retries is None else retries + 1
                result_id = f"{batch_id}-{test}-{retries + 1}"
            upstream[batch_id].results[test] = (status, result_id, retries)
        elif kind == "delete" and args[0] in upstream:
            del upstream[args[0]]
            self.deleted.add(args[0])
        elif kind == "poll":
            # what DatadogPoller.poll_once does: every non-terminal watched batch
            for batch_id in list(self.tracker.active_for(Source.DATADOG, T)):
                if batch_id in upstream:
                    snap = upstream[batch_id].snapshot(batch_id)
                    self.call(partial(self.tracker.datadog_snapshot, T, snap, self.now, STALL))
                else:
                    self.call(partial(self.tracker.datadog_not_found, T, batch_id, self.now,
                                      GRACE))
        elif kind in ("advance", "expire", "roundtrip"):
            self.common(op)

    def common(self, op: Op) -> None:
        kind = op[0]
        if kind == "advance":
            self.now += op[1]
        elif kind == "expire":
            before = self.states()
            self.tracker.expire(self.now)
            self.check(before, self.tracker.seq, Outcome())
            for key, rec in self.tracker.records.items():
                assert not rec.terminal or self.now - rec.state_since < self.tracker.retention, key
        elif kind == "roundtrip":
            fresh = round_trip(self.tracker)
            assert {k: record_to_dict(r) for k, r in fresh.records.items()} == {
                k: record_to_dict(r) for k, r in self.tracker.records.items()}
            assert fresh.counts == self.tracker.counts
            self.tracker = fresh
            self.check_indexes()
        else:  # pragma: no cover - the strategies produce nothing else
            raise AssertionError(op)


def final_chain_matches_records(checker: Checker) -> None:
    """Over the whole run, each batch's events form one chain; it restarts from ``none``
    only when the batch was forgotten in between, and seq counts every event once."""
    chains: dict[Key, list[BatchTransition]] = {}
    for event in checker.events:
        if isinstance(event, BatchTransition):
            chains.setdefault((event.source, event.target, event.batch_id), []).append(event)
    for chain in chains.values():
        for a, b in pairwise(chain):
            assert b.from_state is a.to_state or b.from_state is State.NONE, (a, b)
    seqs = [e.seq for e in checker.events]
    if seqs:
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


# --------------------------------------------------------------------------- properties


@PROPERTY_SETTINGS
@given(ops=engine_ops, max_tracked=st.sampled_from([3, 1000]))
def test_engine_snapshot_sequences_keep_every_invariant(ops: list[Op], max_tracked: int) -> None:
    """Random engine runtime listings, disappearances with history outcomes, history sweeps,
    time advances (stalls), expiry and restarts: one event per state change, terminal states
    final, seq gapless, counts equal to the records (also under max_tracked pressure)."""
    checker = Checker(Tracker(retention=RETENTION, max_tracked=max_tracked))
    for op in ops:
        checker.engine(op)
    final_chain_matches_records(checker)


@PROPERTY_SETTINGS
@given(ops=dd_ops, max_tracked=st.sampled_from([2, 1000]))
def test_datadog_snapshot_sequences_keep_every_invariant(ops: list[Op], max_tracked: int) -> None:
    """Random Datadog watch/unwatch, statuses (unknown ones included), results with retries,
    404s past the grace, time advances, expiry and restarts: the same invariants, and every
    result event continues its slot's chain."""
    checker = Checker(Tracker(retention=RETENTION, max_tracked=max_tracked))
    for op in ops:
        checker.datadog(op)
    final_chain_matches_records(checker)


@PROPERTY_SETTINGS
@given(engine=engine_ops, datadog=dd_ops, seq=st.integers(0, 10**6))
def test_both_sources_share_one_gapless_seq(engine: list[Op], datadog: list[Op],
                                            seq: int) -> None:
    """Engine and Datadog calls interleaved on one tracker started at a persisted seq: the
    sequence continues from it with no gap and no repeat."""
    checker = Checker(Tracker(retention=RETENTION, max_tracked=1000, seq=seq))
    for i in range(max(len(engine), len(datadog))):
        if i < len(engine):
            checker.engine(engine[i])
        if i < len(datadog):
            checker.datadog(datadog[i])
    seqs = [e.seq for e in checker.events]
    assert seqs == list(range(seq + 1, seq + 1 + len(seqs)))


def _without_roundtrips(ops: list[Op]) -> list[Op]:
    return [op for op in ops if op[0] != "roundtrip"]


def _per_batch(events: list[BatchTransition | ResultTransition]) -> dict[Any, list[Any]]:
    """Each batch's (and result slot's) events without ``seq``: batches that change in the
    same call may be numbered in another order after a restart, which is not a difference."""
    out: dict[Any, list[Any]] = {}
    for event in events:
        fields = event.fields()
        del fields["seq"]
        key = (event.event_name, fields["batch_id"], fields.get("test_public_id"))
        out.setdefault(key, []).append((event.time, fields))
    return out


@PROPERTY_SETTINGS
@given(engine=engine_ops, datadog=dd_ops)
def test_a_restored_tracker_emits_the_same_events(engine: list[Op], datadog: list[Op]) -> None:
    """Persisting and restoring the records at any point (a restart) changes nothing: the same
    calls produce the same events, field for field, as on a tracker that never restarted."""
    plain = Checker(Tracker(retention=RETENTION, max_tracked=1000))
    restarted = Checker(Tracker(retention=RETENTION, max_tracked=1000))
    for op in _without_roundtrips(engine):
        plain.engine(op)
    for op in engine:
        restarted.engine(op)
    for op in _without_roundtrips(datadog):
        plain.datadog(op)
    for op in datadog:
        restarted.datadog(op)
    assert _per_batch(plain.events) == _per_batch(restarted.events)
    assert [e.seq for e in plain.events] == [e.seq for e in restarted.events]
