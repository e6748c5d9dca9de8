"""The unchanged row's fast path (issue 12) decides exactly what the full path decides.

A steady engine cycle re-reads every runtime row. ``parse_statistics_row`` remembers each
batch's row and hands out the same snapshot object while the row's JSON text stays the same;
``EngineTracker.engine_runtime`` takes a row identical to the one it applied last time as
unchanged and only checks it against the clock. These tests drive two pipelines side by side
over random upstream histories:

* the fast one: ``parse_statistics_page`` (``parse_statistics_row`` with its memory, a page
  at a time) into a tracker, as the daemon does;
* the reference: the full parse (``_parse_statistics_row_checked``, the parse as it always was)
  into another tracker, which then gets a fresh snapshot object for every row and so never
  takes the fast path;

and require the same transitions, lookups, missing batches, skipped rows, date problems,
records and change sets after every poll. The clock-only rules (``stalled`` after
``stall_after`` without any row change, back when ``stall_after`` grows) are tested on their
own too, as is the memory's bound and the default date format's fast parse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchscope.model import EngineBatchSnapshot, Source, State
from batchscope.sinks.state_format import record_from_row, record_to_row
from batchscope.sources import engine_json
from batchscope.sources.engine_json import (
    BadRow,
    DateProblem,
    _parse_date,
    _parse_statistics_row_checked,
    parse_engine_date,
    parse_statistics_page,
    parse_statistics_row,
    row_id,
)
from batchscope.tracker import Outcome, Tracker
from batchscope.tracker.diagnosis import LookupKind
from tracker_builders import hist

T = "prod"
STALL = 100.0
START = 10_000.0
IDS = ("e1", "e2", "e3", "e4")

PROPERTY_SETTINGS = settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# Date values as engines send them: the default pattern, other patterns, epoch millis,
# nothing, and values no pattern reads (reported as problems).
DATES: tuple[object, ...] = (
    "2024-07-09T13:33:42.165+0200", "2024-07-09T13:33:42.165+02:00", "2024-07-09T11:33:42Z",
    "09.07.2024 13:33", 1720524822165, 1720524822165.0, None, "yesterday", True, [],
)


def raw_row(batch_id: str, **fields: Any) -> dict[str, Any]:
    """A ``/batch/statistics`` row with the engine's field set and key order."""
    row: dict[str, Any] = {
        "id": batch_id, "type": "instance-migration", "totalJobs": 10, "jobsCreated": 10,
        "batchJobsPerSeed": 100, "invocationsPerBatchJob": 1,
        "seedJobDefinitionId": f"{batch_id}-seed", "monitorJobDefinitionId": f"{batch_id}-mon",
        "batchJobDefinitionId": f"{batch_id}-jobs", "suspended": False, "tenantId": None,
        "createUserId": "demo", "startTime": "2024-07-09T13:33:42.165+0200",
        "executionStartTime": None, "remainingJobs": 10, "completedJobs": 0, "failedJobs": 0,
    }
    row.update(fields)
    return row


def over_http(rows: list[Any]) -> list[object]:
    """The rows as the client sees them: encoded by the engine, decoded by orjson."""
    decoded: list[object] = orjson.loads(orjson.dumps(rows))
    return decoded


# --------------------------------------------------------------------------- the upstream


@dataclass
class Upstream:
    """The engine's runtime rows (raw JSON values), changed by the operations."""

    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    stale: dict[str, dict[str, Any]] = field(default_factory=dict)  # listed once before

    def apply(self, op: tuple[Any, ...]) -> None:
        kind, batch_id = op[0], op[1]
        row = self.rows.get(batch_id)
        if kind == "create":
            if row is None:
                self.rows[batch_id] = raw_row(batch_id, totalJobs=op[2], jobsCreated=op[3],
                                              remainingJobs=op[2])
            return
        if row is None:
            return
        if kind == "dup":  # offset paging lists the batch twice: an older answer first
            self.stale[batch_id] = dict(row)
            return
        new = dict(row)
        if kind == "work":
            done = min(op[2], new["remainingJobs"]) if isinstance(new["remainingJobs"],
                                                               int) else op[2]
            new["completedJobs"] = new["completedJobs"] + done
            new["remainingJobs"] = new["remainingJobs"] - done
        elif kind == "seed":
            new["jobsCreated"] = op[2]
        elif kind == "fail":
            new["failedJobs"] = op[2]
        elif kind == "suspend":
            new["suspended"] = op[2]
        elif kind in ("date", "odd"):  # odd: a value in another JSON type, or broken
            new[op[2]] = op[3]
        elif kind == "extra":  # a field the parse does not read
            new["createUserId"] = op[2]
        elif kind == "end":
            del self.rows[batch_id]
            return
        self.rows[batch_id] = new

    def listing(self) -> list[dict[str, Any]]:
        listed = [self.stale[b] for b in sorted(self.stale) if b in self.rows]
        self.stale.clear()
        return listed + [self.rows[b] for b in sorted(self.rows)]


eid = st.sampled_from(IDS)
ODD_VALUES: dict[str, tuple[object, ...]] = {
    "suspended": (0, 1, 0.0, "false", None),
    "totalJobs": (10.0, True, -1, "10", None),
    "failedJobs": (False, 0.0, 1.0, None),
    "jobsCreated": (None, 10.0, False),
    "id": ("", 7),
    "type": (None, ""),
    "tenantId": ("acme", 5, ""),
}
odd_op = st.sampled_from(sorted(ODD_VALUES)).flatmap(
    lambda name: st.tuples(st.just("odd"), eid, st.just(name), st.sampled_from(ODD_VALUES[name])))
ops = st.lists(
    st.one_of(
        st.tuples(st.just("create"), eid, st.sampled_from((0, 10, 20)),
                  st.sampled_from((0, 5, 10, 20))),
        st.tuples(st.just("work"), eid, st.integers(0, 4)),
        st.tuples(st.just("seed"), eid, st.integers(0, 20)),
        st.tuples(st.just("fail"), eid, st.integers(0, 3)),
        st.tuples(st.just("suspend"), eid, st.booleans()),
        st.tuples(st.just("date"), eid, st.sampled_from(("startTime", "executionStartTime")),
                  st.sampled_from(DATES)),
        st.tuples(st.just("extra"), eid, st.sampled_from(("demo", "ops", None))),
        st.tuples(st.just("dup"), eid),
        st.tuples(st.just("end"), eid),
        odd_op,
        st.tuples(st.just("poll"), st.just("")), st.tuples(st.just("poll"), st.just("")),
        st.tuples(st.just("poll"), st.just("")), st.tuples(st.just("poll"), st.just("")),
        st.tuples(st.just("advance"), st.just(""), st.floats(0, 1.6 * STALL)),
        st.tuples(st.just("stall_after"), st.just(""), st.sampled_from((STALL / 2, STALL,
                                                                         3 * STALL))),
        st.tuples(st.just("resolve"), eid, st.booleans()),
        st.tuples(st.just("restart"), st.just("")),
    ),
    min_size=10, max_size=70,
)


# --------------------------------------------------------------------------- the pipelines


@dataclass
class Pipeline:
    """Parse a listing like ``EngineClient.runtime_batches`` does, then apply it."""

    fast: bool
    tracker: Tracker = field(default_factory=lambda: Tracker(retention=1e9, max_tracked=100))

    def poll(self, raws: list[object], now: float, stall_after: float
             ) -> tuple[Outcome, list[tuple[str | None, str]], list[DateProblem]]:
        problems: list[DateProblem] = []
        rows: list[EngineBatchSnapshot] = []
        skipped: list[tuple[str | None, str]] = []
        if self.fast:
            rows, skipped = parse_statistics_page(raws, problems)
        else:
            for raw in raws:
                try:
                    rows.append(_parse_statistics_row_checked(raw, problems))
                except BadRow as exc:
                    skipped.append((row_id(raw), str(exc)))
        unreadable = frozenset(b for b, _ in skipped if b is not None)
        out = self.tracker.engine_runtime(T, rows, now, stall_after, unreadable)
        return out, skipped, problems

    def restart(self) -> None:
        old = self.tracker
        self.tracker = Tracker(retention=old.retention, max_tracked=old.max_tracked,
                               seq=old.seq)
        self.tracker.restore([record_from_row(orjson.loads(orjson.dumps(record_to_row(r))))
                              for r in old.records.values()], old.seq)


def assert_same(fast: Tracker, ref: Tracker) -> None:
    """Records (every persisted field), per-state counts, indexes and changes agree."""
    assert fast.records == ref.records
    assert +fast.counts == +ref.counts
    assert {k: set(v) for k, v in fast.active.items()} == {k: set(v)
                                                            for k, v in ref.active.items()}
    assert fast.seq == ref.seq
    changed_fast, forgotten_fast = fast.take_changes()
    changed_ref, forgotten_ref = ref.take_changes()
    assert sorted(r.key for r in changed_fast) == sorted(r.key for r in changed_ref)
    assert sorted(forgotten_fast) == sorted(forgotten_ref)


@PROPERTY_SETTINGS
@given(ops)
def test_fast_path_decides_what_the_full_path_decides(operations: list[tuple[Any, ...]]) -> None:
    """Random upstream histories (progress, failures, suspends, seeding, date formats,
    unreadable and re-typed fields, duplicate rows, endings, clock and stall_after changes,
    restarts): the fast pipeline's outcome of every poll equals the reference's."""
    engine_json._PARSED_ROWS.clear()
    upstream = Upstream()
    fast, ref = Pipeline(fast=True), Pipeline(fast=False)
    now, stall_after = START, STALL
    previous: dict[str, bytes] = {}  # rows listed once in the previous poll, as JSON text
    for op in operations:
        kind = op[0]
        if kind == "poll":
            listing = upstream.listing()
            applied = {b: r.runtime_row
                       for b, r in fast.tracker.active_for(Source.ENGINE, T).items()}
            got = fast.poll(over_http(listing), now, stall_after)
            want = ref.poll(over_http(listing), now, stall_after)
            assert got[0].events == want[0].events
            assert got[0].lookups == want[0].lookups
            assert got[0].missing == want[0].missing
            assert got[0].notices == want[0].notices
            assert got[1] == want[1]  # skipped rows, with the same error
            assert got[2] == want[2]  # date problems, every poll as ever
            assert_same(fast.tracker, ref.tracker)
            # A row listed unchanged since the last poll was not parsed or applied again:
            # the record still holds the very snapshot of last time.
            ids = [r["id"] for r in listing]
            texts = {r["id"]: orjson.dumps(r) for r in listing if ids.count(r["id"]) == 1}
            for batch_id, text in texts.items():
                rec = fast.tracker.active_for(Source.ENGINE, T).get(batch_id)
                if previous.get(batch_id) == text and rec is not None:
                    assert rec.runtime_row is applied.get(batch_id)
            previous = texts
            now += 1.0
        elif kind == "advance":
            now += op[2]
        elif kind == "stall_after":
            stall_after = op[2]
        elif kind == "resolve":  # the history lookup of a batch that left the listing
            if op[1] not in upstream.rows:
                record = hist(op[1], start=START, end=now) if op[2] else None
                outs = [p.tracker.engine_resolve(T, op[1], record, now) for p in (fast, ref)]
                assert outs[0].events == outs[1].events
                assert_same(fast.tracker, ref.tracker)
        elif kind == "restart":
            fast.restart()
            ref.restart()
            previous = {}
        else:
            upstream.apply(op)


entries = st.one_of(
    st.builds(lambda i, c, f: raw_row(f"p{i}", completedJobs=c, failedJobs=f),
              st.integers(0, 5), st.integers(0, 10), st.integers(0, 2)),
    st.sampled_from(ODD_VALUES["suspended"]).map(lambda v: raw_row("odd", suspended=v)),
    st.sampled_from(DATES).map(lambda v: raw_row("dated", startTime=v)),
    st.sampled_from([None, "row", 7, [], {"id": "no-fields"}, {"id": ["unhashable"]}]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(entries, max_size=12), min_size=1, max_size=4))
def test_a_page_parses_as_its_rows_one_by_one(pages: list[list[object]]) -> None:
    """parse_statistics_page gives the rows, skipped entries (id and error) and date
    problems of parse_statistics_row called on each entry, for any entries, page after
    page (the memory filled by one answering for the next)."""
    engine_json._PARSED_ROWS.clear()
    for page in pages:
        raws = over_http(page)
        got_problems: list[DateProblem] = []
        got_rows, got_skipped = parse_statistics_page(raws, got_problems)
        want_problems: list[DateProblem] = []
        want_rows, want_skipped = [], []
        for raw in over_http(page):
            try:
                want_rows.append(_parse_statistics_row_checked(raw, want_problems))
            except BadRow as exc:
                want_skipped.append((row_id(raw), str(exc)))
        assert got_rows == want_rows
        assert got_skipped == want_skipped
        assert got_problems == want_problems


def test_an_unchanged_row_is_the_same_snapshot_and_costs_no_parse() -> None:
    """The same row (new dict objects, as every poll decodes them) gives the very snapshot
    of the first parse; a changed row, or one whose value only changed its JSON type, does
    not; the date problems come again with every parse, as before."""
    engine_json._PARSED_ROWS.clear()
    row = raw_row("b1", startTime="next tuesday")
    first: list[DateProblem] = []
    snapshot = parse_statistics_row(over_http([row])[0], first)
    again: list[DateProblem] = []
    assert parse_statistics_row(over_http([row])[0], again) is snapshot
    assert first == again == [DateProblem("startTime", "next tuesday")]
    changed = parse_statistics_row(over_http([raw_row("b1", completedJobs=1,
                                                      startTime="next tuesday")])[0])
    assert changed is not snapshot and changed.jobs.completed == 1
    with pytest.raises(BadRow, match="'suspended' must be a boolean"):
        parse_statistics_row(over_http([raw_row("b1", suspended=0)])[0])
    with pytest.raises(BadRow, match="'totalJobs' must be a non-negative integer"):
        parse_statistics_row(over_http([raw_row("b1", totalJobs=10.0)])[0])


def test_rows_that_are_not_plain_json_are_parsed_without_the_memory() -> None:
    """A datetime, or a str subclass, would write the same JSON text as a plain value that
    parses differently: such rows are parsed in full each time."""
    engine_json._PARSED_ROWS.clear()
    when = datetime(2024, 7, 9, 11, 33, 42, tzinfo=UTC)
    problems: list[DateProblem] = []
    odd = parse_statistics_row(raw_row("b2", startTime=when), problems)
    assert odd.start_time is None and problems[0].field == "startTime"
    plain = parse_statistics_row(raw_row("b2", startTime=when.isoformat()))
    assert plain.start_time == when.timestamp()

    class Id(str):
        pass

    assert parse_statistics_row(raw_row(Id("b3"))).batch_id == "b3"
    assert "b3" not in engine_json._PARSED_ROWS


def poll(tracker: Tracker, rows: list[dict[str, Any]], now: float,
         stall_after: float = STALL) -> Outcome:
    return tracker.engine_runtime(T, [parse_statistics_row(r) for r in over_http(rows)], now,
                                  stall_after)


def test_a_batch_without_any_change_still_stalls_after_stall_after() -> None:
    """An unchanged row takes the fast path every poll, yet the batch becomes stalled once
    stall_after has passed since its last progress (not a poll earlier), with the stall
    lookup; progress brings it back. A failed or suspended batch never stalls."""
    engine_json._PARSED_ROWS.clear()
    tracker = Tracker(retention=3600, max_tracked=100)
    rows = [raw_row("s1", completedJobs=2, remainingJobs=8),
            raw_row("f1", failedJobs=1, completedJobs=1, remainingJobs=9),
            raw_row("p1", suspended=True)]
    first = poll(tracker, rows, START)
    assert [(e.batch_id, e.to_state) for e in first.events] == [
        ("s1", State.IN_PROGRESS), ("f1", State.FAILED), ("p1", State.SUSPENDED)]
    applied = tracker.get(Source.ENGINE, T, "s1").runtime_row  # type: ignore[union-attr]
    for now in (START + 1, START + STALL / 2, START + STALL - 0.001):
        out = poll(tracker, rows, now)
        assert out.events == [] and out.lookups == []
        rec = tracker.get(Source.ENGINE, T, "s1")
        assert rec is not None and rec.runtime_row is applied  # the fast path was taken
        assert rec.last_seen == now
    out = poll(tracker, rows, START + STALL)
    assert [(e.batch_id, e.from_state, e.to_state) for e in out.events] == [
        ("s1", State.IN_PROGRESS, State.STALLED)]
    assert [(r.batch_id, r.kind) for r in out.lookups] == [("s1", LookupKind.STALL)]
    assert poll(tracker, rows, START + 3 * STALL).events == []
    rows[0] = raw_row("s1", completedJobs=3, remainingJobs=7)
    out = poll(tracker, rows, START + 3 * STALL + 1)
    assert [(e.batch_id, e.from_state, e.to_state) for e in out.events] == [
        ("s1", State.STALLED, State.IN_PROGRESS)]
    assert poll(tracker, rows, START + 4 * STALL).events == []
    out = poll(tracker, rows, START + 4 * STALL + 1)
    assert [(e.batch_id, e.to_state) for e in out.events] == [("s1", State.STALLED)]


def test_a_longer_stall_after_takes_a_stalled_batch_back_without_a_row_change() -> None:
    """stall_after is a setting a reload can change: the fast path applies the new value to
    an unchanged row at once, in both directions."""
    engine_json._PARSED_ROWS.clear()
    tracker = Tracker(retention=3600, max_tracked=100)
    rows = [raw_row("s2")]
    poll(tracker, rows, START)
    assert [e.to_state for e in poll(tracker, rows, START + STALL).events] == [State.STALLED]
    out = poll(tracker, rows, START + STALL + 1, stall_after=10 * STALL)
    assert [(e.from_state, e.to_state) for e in out.events] == [
        (State.STALLED, State.IN_PROGRESS)]
    out = poll(tracker, rows, START + STALL + 2, stall_after=STALL / 2)
    assert [e.to_state for e in out.events] == [State.STALLED]


def test_the_memory_keeps_what_the_tracker_holds_and_forgets_the_rest() -> None:
    """A row whose snapshot the tracker still holds (its last applied row) survives every
    pruning, however many batches come and go; rows nothing holds any more (batches listed
    once, or forgotten by the tracker) are dropped: the memory stays bounded."""
    memory = engine_json._PARSED_ROWS
    memory.clear()
    limit = engine_json._ParsedRows.MIN_PARSES
    tracker = Tracker(retention=10.0, max_tracked=1000)
    live = [raw_row(f"live-{i}") for i in range(50)]
    tracker.engine_runtime(T, [parse_statistics_row(r) for r in over_http(live)], START, STALL)
    applied = {b: r.runtime_row for b, r in tracker.active_for(Source.ENGINE, T).items()}
    for round_ in range(6 * limit // 100):
        # Each listing: the live batches, and 100 that are listed once and never again.
        for raw in over_http([raw_row(f"gone-{round_}-{i}") for i in range(100)]):
            parse_statistics_row(raw)
        again = {r.batch_id: r for r in (parse_statistics_row(x) for x in over_http(live))}
        assert all(again[b] is applied[b] for b in applied)  # never parsed again
        assert len(memory) <= 50 + 2 * limit
    assert "gone-0-0" not in memory
    # The tracker forgets the live batches (ended, then past retention): so does the memory.
    for batch_id in applied:
        tracker.engine_resolve(T, batch_id, None, START + 1)
    tracker.expire(START + 100)
    del applied, again
    memory.prune()
    assert not any(k.startswith("live-") for k in memory.entries)


# --------------------------------------------------------------------------- dates

two = st.integers(0, 99).map(lambda n: f"{n:02d}")


@settings(max_examples=2000, deadline=None)
@given(year=st.integers(1000, 9999), month=two, day=two, hour=two, minute=two, second=two,
       millis=st.integers(0, 999), zone=st.one_of(
           st.just("Z"), st.tuples(st.sampled_from("+-"), two, two).map("".join)))
def test_the_default_date_format_parses_as_the_general_path(
        year: int, month: str, day: str, hour: str, minute: str, second: str, millis: int,
        zone: str) -> None:
    """yyyy-MM-dd'T'HH:mm:ss.SSSZ through the fast path gives the general path's epoch
    seconds, or raises where it raises (day 31 of June, hour 24, offset +1860 or +2400)."""
    value = f"{year:04d}-{month}-{day}T{hour}:{minute}:{second}.{millis:03d}{zone}"
    try:
        want: float | None = _parse_date(value)
    except ValueError:
        want = None
    if want is None:
        with pytest.raises(ValueError):
            parse_engine_date(value)
    else:
        assert parse_engine_date(value) == want


def test_default_dates_in_every_offset() -> None:
    """Known instants: the fast path's answers for the engine's usual offsets."""
    moment = datetime(2024, 7, 9, 13, 33, 42, 165000, tzinfo=timezone(timedelta(hours=2)))
    assert parse_engine_date("2024-07-09T13:33:42.165+0200") == moment.timestamp()
    assert parse_engine_date("2024-07-09T11:33:42.165Z") == moment.timestamp()
    assert parse_engine_date("2024-07-09T02:03:42.165-0930") == moment.timestamp()
    assert math.isclose(parse_engine_date("2024-07-09T13:33:42.165+1800"),
                        moment.timestamp() - 16 * 3600)
    for bad in ("2024-07-09T13:33:42.165+1860", "2024-07-09T13:33:42.165+1900",
                "2024-06-31T13:33:42.165+0200", "2024-07-09T24:00:00.000+0000"):
        with pytest.raises(ValueError, match=r"^unrecognised date"):
            parse_engine_date(bad)
