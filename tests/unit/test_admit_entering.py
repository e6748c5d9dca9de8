"""First sightings admitted in one step (``RecordBook._admit_entering``), and the running
ones of a listing all at once (``EngineTracker._admit_running``,
``RecordBook._admit_all_entering``), leave the tracker exactly as the two-step path
(``_admit``, diagnosis, ``_transition``, one row at a time) did."""

from __future__ import annotations

import random
from typing import Any

import pytest

from batchscope.model import Source, State
from batchscope.tracker import rules
from batchscope.tracker.engine import EngineTracker, _new_record
from batchscope.tracker.links import EngineLinks
from batchscope.tracker.records import Outcome
from tracker_builders import eng, hist

COCKPIT = "https://cockpit.example/camunda/app/cockpit/default"


class TwoStep(EngineTracker):
    """The tracker with the first-sighting path as it was before the one-step admission."""

    def _engine_first_sighting(self, target: str, row: Any, now: float, stall_after: float,
                               out: Outcome) -> None:
        rec = _new_record(target, row.batch_id, row.batch_type, now, row.start_time, row.jobs)
        rec.runtime_row = row
        if not self._admit(rec, out):
            return
        state = rules.engine_runtime_state(row, now, now, stall_after)
        self._diagnose_runtime(rec, row, state, out)
        self._transition(rec, state, now, out)

    stall_after = 0.0

    def engine_runtime(self, target: str, rows: Any, now: float, stall_after: float,
                       unreadable: frozenset[str] = frozenset()) -> Outcome:
        self.stall_after = stall_after
        return super().engine_runtime(target, rows, now, stall_after, unreadable)

    def _admit_running(self, target: str, rows: list[Any], now: float, out: Outcome) -> None:
        for row in rows:  # one at a time, as before the bulk admission
            self._engine_first_sighting(target, row, now, self.stall_after, out)


def state_of(t: EngineTracker) -> dict[str, Any]:
    """Everything the tracker keeps (zero counts aside: a Counter reads them as 0)."""
    return {
        "records": {k: (r, r.diagnosis) for k, r in t.records.items()},
        "counts": {k: v for k, v in t.counts.items() if v},
        "active": {k: list(v) for k, v in t.active.items()},
        "ended": {s: list(v) for s, v in t._ended_by_source.items()},
        "dirty": set(t.dirty), "forgotten": set(t.forgotten), "version": t.version,
        "state_changes": t.state_changes, "seq": t.seq, "evictions": t.evictions,
        "refused": t.refused, "per_source": dict(t._per_source),
    }


@pytest.mark.parametrize("seed", range(60))
def test_one_step_admission_equals_the_two_step_path(seed: int) -> None:
    """Random cycles of batches appearing (running, failed, suspended), progressing,
    stalling, ending, expiring and listed again after their end, with a tracker small
    enough to evict and refuse, with and without Cockpit links, saves and deferred
    numbering: events (in listing order), notices, lookups and every index are the same
    after each."""
    rnd = random.Random(seed)
    max_tracked = rnd.choice([rnd.randint(1, 8), 1000])  # full (evicting) or roomy
    retention = rnd.choice([1e9, 15.0])  # short: ended batches expire between cycles
    one, two = (EngineTracker(retention=retention, max_tracked=max_tracked),
                TwoStep(retention=retention, max_tracked=max_tracked))
    if rnd.random() < 0.5:
        for t in (one, two):
            t.links[(Source.ENGINE, "e")] = EngineLinks(COCKPIT)
    now, next_id, live = 1000.0, 0, {}
    gone: dict[str, dict[str, Any]] = {}
    for _ in range(8):
        now += 10
        for _ in range(rnd.randint(0, 4)):
            next_id += 1
            live[f"b{next_id}"] = {"completed": 0, "failed": int(rnd.random() < 0.2),
                                   "suspended": rnd.random() < 0.1}
        if gone and rnd.random() < 0.4:
            # An ended batch listed again (the monitor job's lag): once evicted and
            # forgotten, it is a first sighting whose key leaves the forgotten set.
            batch_id = rnd.choice(sorted(gone))
            live[batch_id] = gone.pop(batch_id)
        for batch_id in list(live):
            if rnd.random() < 0.3:
                gone[batch_id] = live.pop(batch_id)
            elif rnd.random() < 0.3:
                live[batch_id]["completed"] = min(10, live[batch_id]["completed"] + 3)
        rows = [eng(batch_id, **kw) for batch_id, kw in live.items()]
        stall_after = rnd.choice([0.0, 15.0, 25.0, 1e9])
        deferred = rnd.random() < 0.3
        saved = rnd.random() < 0.5  # else the forgotten keys wait for a later save
        outcomes = []
        for t in (one, two):
            if saved:
                t.take_changes()
            t.expire(now)
            t.deferred_numbering = deferred
            out = t.engine_runtime("e", rows, now, stall_after=stall_after)
            # The listing's events in listing order, one per batch at most (as row by row).
            order = [rows.index(next(r for r in rows if r.batch_id == e.batch_id))
                     for e in out.events]
            assert order == sorted(set(order))
            t.deferred_numbering = False
            for batch_id in out.missing:
                out.extend(t.engine_resolve("e", batch_id, hist(batch_id, end=now - 1), now))
            outcomes.append((list(out.events), out.notices, out.missing, out.lookups))
            t.number(out.events)
        assert outcomes[0] == outcomes[1]
        assert state_of(one) == state_of(two)


def test_a_running_first_sighting_carries_its_cockpit_link() -> None:
    """A batch first seen running gets its Cockpit page as its diagnosis link, on the
    event and on the record (the one-step path sets it as _admit did)."""
    tracker = EngineTracker(retention=3600.0, max_tracked=10)
    tracker.links[(Source.ENGINE, "e")] = EngineLinks(COCKPIT)
    out = tracker.engine_runtime("e", [eng("b1", completed=2)], 100.0, stall_after=600.0)
    (event,) = out.events
    assert (event.from_state, event.to_state) == (State.NONE, State.IN_PROGRESS)
    link = event.diagnosis.link
    assert link is not None and link.startswith(COCKPIT) and "b1" in link
    record = tracker.get(Source.ENGINE, "e", "b1")
    assert record is not None and record.diagnosis.link == link
    assert record.diagnosis.reason is None
