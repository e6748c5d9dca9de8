"""A first sighting admitted in one step (``RecordBook._admit_entering``) leaves the tracker
exactly as the two-step path (``_admit``, diagnosis, ``_transition``) did."""

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
    stalling and ending, with a tracker small enough to evict and refuse, with and without
    Cockpit links: events, notices, lookups and every index are the same after each."""
    rnd = random.Random(seed)
    max_tracked = rnd.randint(1, 8)
    one, two = (EngineTracker(retention=1e9, max_tracked=max_tracked),
                TwoStep(retention=1e9, max_tracked=max_tracked))
    if rnd.random() < 0.5:
        for t in (one, two):
            t.links[(Source.ENGINE, "e")] = EngineLinks(COCKPIT)
    now, next_id, live = 1000.0, 0, {}
    for _ in range(8):
        now += 10
        for _ in range(rnd.randint(0, 4)):
            next_id += 1
            live[f"b{next_id}"] = {"completed": 0, "failed": int(rnd.random() < 0.2),
                                   "suspended": rnd.random() < 0.1}
        for batch_id in list(live):
            if rnd.random() < 0.3:
                del live[batch_id]
            elif rnd.random() < 0.3:
                live[batch_id]["completed"] = min(10, live[batch_id]["completed"] + 3)
        rows = [eng(batch_id, **kw) for batch_id, kw in live.items()]
        stall_after = rnd.choice([0.0, 15.0, 25.0, 1e9])
        outcomes = []
        for t in (one, two):
            t.take_changes()
            out = t.engine_runtime("e", rows, now, stall_after=stall_after)
            for batch_id in out.missing:
                out.extend(t.engine_resolve("e", batch_id, hist(batch_id, end=now - 1), now))
            outcomes.append((out.events, out.notices, out.missing, out.lookups))
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
