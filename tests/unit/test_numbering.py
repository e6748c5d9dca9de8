"""RecordBook.number: deferred events get their seq in place, right before publishing."""

from __future__ import annotations

from batchscope.model import (
    BatchTransition,
    CiResult,
    Event,
    JobCounts,
    ResultState,
    ResultTransition,
    Source,
    State,
)
from batchscope.sinks.events import event_record
from batchscope.tracker.records import UNNUMBERED, RecordBook


def batch(seq: int, batch_id: str) -> BatchTransition:
    return BatchTransition(
        seq=seq, time=1_700_000_000.0, source=Source.ENGINE, target="prod",
        batch_id=batch_id, batch_type="instance-migration",
        from_state=State.NONE, to_state=State.IN_PROGRESS,
        jobs=JobCounts(total=10, created=10, completed=0, remaining=10, failed=0),
    )


def result(seq: int, result_id: str) -> ResultTransition:
    return ResultTransition(
        seq=seq, time=1_700_000_000.0, target="dd-eu", batch_id="ci-1",
        result=CiResult(test_public_id="abc-def-ghi", status="passed", result_id=result_id),
        from_state=ResultState.IN_PROGRESS, to_state=ResultState.PASSED,
    )


def book(seq: int) -> RecordBook:
    return RecordBook(retention=3600.0, max_tracked=100, seq=seq)


def test_unnumbered_events_continue_from_the_book_in_order() -> None:
    """UNNUMBERED events get consecutive seqs after RecordBook.seq, in list order and of
    both kinds; an already numbered event keeps its seq; the book's seq ends at the last
    number given."""
    records = book(seq=41)
    events: list[Event] = [batch(UNNUMBERED, "a"), result(UNNUMBERED, "r1"), batch(7, "b"),
                           batch(UNNUMBERED, "c")]
    numbered = records.number(events)
    assert [e.seq for e in numbered] == [42, 43, 7, 44]
    assert records.seq == 44
    assert [e.fields()["seq"] for e in numbered] == [42, 43, 7, 44]
    assert [event_record(e)["seq"] for e in numbered] == [42, 43, 7, 44]


def test_numbering_is_in_place() -> None:
    """The very event objects (and list) handed in come back, now numbered: no copies."""
    records = book(seq=0)
    events: list[Event] = [batch(UNNUMBERED, "a"), batch(5, "b"), result(UNNUMBERED, "r1")]
    originals = list(events)
    numbered = records.number(events)
    assert numbered is events
    assert all(n is o for n, o in zip(numbered, originals, strict=True))
    assert [o.seq for o in originals] == [1, 5, 2]
    assert records.seq == 2


def test_nothing_to_number_leaves_the_book_alone() -> None:
    """An empty list or a list of numbered events changes no seq, in the book or in the
    events; a second numbering of numbered events gives no new numbers."""
    records = book(seq=9)
    assert records.number([]) == []
    assert records.seq == 9
    events: list[Event] = [batch(3, "a"), result(4, "r1")]
    assert [e.seq for e in records.number(events)] == [3, 4]
    assert records.seq == 9
    deferred: list[Event] = [batch(UNNUMBERED, "c")]
    records.number(deferred)
    records.number(deferred)
    assert deferred[0].seq == 10 and records.seq == 10


def test_deferred_numbering_continues_the_live_sequence() -> None:
    """Events numbered while deferred (UNNUMBERED from _number) are numbered after the
    ones numbered live before them: the published order is the seq order."""
    records = book(seq=0)
    live = records._number()
    records.deferred_numbering = True
    held = records._number()
    records.deferred_numbering = False
    later_live = records._number()
    assert (live, held, later_live) == (1, UNNUMBERED, 2)
    events: list[Event] = [batch(held, "x")]
    records.number(events)
    assert events[0].seq == 3 and records.seq == 3
