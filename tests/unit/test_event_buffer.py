"""The event ring buffer behind /api/v1/events: it keeps the events and renders records on
read (issue 12), keeps order and capacity, and reads past a gap in seq (a restart)."""

from __future__ import annotations

import pytest

from batchscope.model import (
    BatchTransition,
    CiResult,
    Diagnosis,
    Event,
    JobCounts,
    Reason,
    ResultState,
    ResultTransition,
    Source,
    State,
)
from batchscope.sinks.events import EventBuffer, event_record

GAP_SEQS = (1, 2, 3, 100, 101, 102)


def event(seq: int) -> Event:
    """An engine transition or a CI result transition (alternating), stamped by seq."""
    if seq % 2:
        return ResultTransition(
            seq=seq, time=1_700_000_000.5 + seq, target="dd-eu", batch_id="ci-1",
            result=CiResult(test_public_id="abc-def-ghi", status="failed",
                            location="aws:eu-central-1", result_id=f"r{seq}"),
            from_state=ResultState.IN_PROGRESS, to_state=ResultState.FAILED,
        )
    return BatchTransition(
        seq=seq, time=1_700_000_000.0 + seq, source=Source.ENGINE, target="prod",
        batch_id=f"b{seq}", batch_type="instance-migration",
        from_state=State.IN_PROGRESS, to_state=State.FAILED,
        jobs=JobCounts(total=10, created=10, completed=4, remaining=6, failed=2),
        diagnosis=Diagnosis(Reason.FAILED_JOBS, {"count": 2}, "https://cockpit.example/b"),
    )


def buffer_of(seqs: tuple[int, ...] | range, capacity: int = 10_000) -> EventBuffer:
    buffer = EventBuffer(capacity)
    buffer.extend(event(s) for s in seqs)
    return buffer


def seqs_of(records: list[dict[str, object]]) -> list[object]:
    return [r["seq"] for r in records]


def test_records_are_rendered_on_read_as_event_record() -> None:
    """tail() and after() give exactly event_record(event) of the events added, oldest
    first, whatever their kind."""
    events = [event(s) for s in range(1, 7)]
    buffer = EventBuffer()
    buffer.extend(events)
    records = [event_record(e) for e in events]
    assert buffer.tail(6) == records
    assert buffer.after(0) == records
    assert buffer.tail(2) == records[-2:]
    assert buffer.after(4) == records[4:]
    assert records[0]["event"] == "ci_result.transition"
    assert records[1]["event"] == "batch.transition"
    assert records[1]["level"] == "warning" and records[1]["reason"] == "failed_jobs"


def test_order_and_capacity_drop_the_oldest() -> None:
    """Beyond its capacity the buffer drops the oldest events, in order, over several
    extends; len() is bounded by the capacity."""
    buffer = EventBuffer(capacity=4)
    buffer.extend(event(s) for s in range(1, 4))
    assert len(buffer) == 3
    buffer.extend(event(s) for s in range(4, 7))
    assert len(buffer) == 4
    assert seqs_of(buffer.tail(10)) == [3, 4, 5, 6]
    buffer.extend([event(7)])
    assert seqs_of(buffer.tail(10)) == [4, 5, 6, 7]
    assert seqs_of(buffer.after(0)) == [4, 5, 6, 7]
    assert seqs_of(buffer.after(5)) == [6, 7]


@pytest.mark.parametrize(("n", "expected"), [
    (-1, []), (0, []), (1, [102]), (2, [101, 102]), (6, list(GAP_SEQS)), (50, list(GAP_SEQS)),
])
def test_tail_gives_the_last_n_oldest_first(n: int, expected: list[int]) -> None:
    """tail(n) is the last n events, oldest first; nothing for n <= 0; all when n is larger
    than the buffer."""
    assert seqs_of(buffer_of(GAP_SEQS).tail(n)) == expected


@pytest.mark.parametrize(("seq", "expected"), [
    (0, [1, 2, 3, 100, 101, 102]),
    (2, [3, 100, 101, 102]),
    (3, [100, 101, 102]),
    (50, [100, 101, 102]),
    (99, [100, 101, 102]),
    (100, [101, 102]),
    (102, []),
    (500, []),
    (-5, [1, 2, 3, 100, 101, 102]),
])
def test_after_across_a_seq_gap(seq: int, expected: list[int]) -> None:
    """With seqs 1..3 then 100..102 (a restart), after(seq) gives exactly the events above
    seq, in order, rendered as event_record, and never raises."""
    events = [event(s) for s in GAP_SEQS]
    buffer = EventBuffer()
    buffer.extend(events)
    records = buffer.after(seq)
    assert seqs_of(records) == expected
    assert records == [event_record(e) for e in events if e.seq > seq]


@pytest.mark.parametrize(("seq", "limit", "expected"), [
    (0, 2, [1, 2]),
    (2, 2, [3, 100]),
    (50, 1, [100]),
    (101, 5, [102]),
    (0, 0, []),
])
def test_after_respects_the_limit_across_a_gap(seq: int, limit: int,
                                               expected: list[int]) -> None:
    """after(seq, limit) gives the first ``limit`` events above seq, also across a gap."""
    assert seqs_of(buffer_of(GAP_SEQS).after(seq, limit)) == expected


def test_after_a_gap_that_the_capacity_pushed_to_the_front() -> None:
    """When the oldest events were dropped, the buffer may start right after a gap: reads
    below, inside and above it still give the right events."""
    buffer = buffer_of((1, 2, 3, 100, 101, 102, 103), capacity=5)
    assert seqs_of(buffer.tail(10)) == [3, 100, 101, 102, 103]
    assert seqs_of(buffer.after(0)) == [3, 100, 101, 102, 103]
    assert seqs_of(buffer.after(3)) == [100, 101, 102, 103]
    assert seqs_of(buffer.after(60)) == [100, 101, 102, 103]
    assert seqs_of(buffer.after(101)) == [102, 103]
    assert buffer.after(103) == []


def test_after_on_an_empty_buffer() -> None:
    """An empty buffer gives nothing to any read."""
    buffer = EventBuffer()
    assert buffer.after(0) == [] and buffer.tail(5) == [] and len(buffer) == 0


async def test_next_change_is_completed_by_new_events_only() -> None:
    """The future next_change() hands out is shared by every waiter, stays pending across
    extend([]) and is completed by an extend that adds events; the next call gives a new,
    pending future."""
    buffer = buffer_of((1, 2))
    change = buffer.next_change()
    assert buffer.next_change() is change
    buffer.extend([])
    buffer.extend(iter(()))
    assert not change.done()
    buffer.extend([event(3)])
    assert change.done()
    await change  # completed with a result, not an exception
    following = buffer.next_change()
    assert following is not change and not following.done()
    buffer.extend([])
    assert not following.done()


async def test_next_change_when_the_buffer_is_full() -> None:
    """A full buffer keeps its length when events are added; the waiters are woken all
    the same."""
    buffer = buffer_of((1, 2), capacity=2)
    change = buffer.next_change()
    buffer.extend([event(3)])
    assert len(buffer) == 2
    assert change.done()
    await change
