"""batchscope.model.value_type: frozen to mypy always, frozen at run time in the tests."""

from __future__ import annotations

import dataclasses
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from batchscope.model import (
    NO_DIAGNOSIS,
    BatchTransition,
    Diagnosis,
    EngineBatchSnapshot,
    JobCounts,
    Reason,
    Source,
    State,
)

DAEMON = Path(__file__).resolve().parents[2] / "daemon"


def test_value_types_are_frozen_in_the_test_suite() -> None:
    """conftest.py sets FROZEN_BATCHSCOPE_VALUES=1, so an accidental mutation of a shared
    snapshot or event in any test (or code under test) raises instead of corrupting the
    row and page memories silently."""
    jobs = JobCounts(10, 10, 4, 6, 0)
    snapshot = EngineBatchSnapshot("b1", "instance-migration", jobs, False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        jobs.failed = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.suspended = True  # type: ignore[misc]


def test_production_build_has_the_frozen_equality_and_hash() -> None:
    """Without the switch (production) the classes are plain slotted dataclasses: equal
    values are equal and hash alike, as frozen ones do, and they still take no new
    attribute; only FrozenInstanceError is given up."""
    code = """
from batchscope.model import BatchTransition, JobCounts, Source, State
a, b = JobCounts(1, 1, 0, 1, 0), JobCounts(1, 1, 0, 1, 0)
assert a == b and hash(a) == hash(b) and len({a, b}) == 1
a.total = 5  # allowed at run time: no FrozenInstanceError
assert a != b
try:
    a.other = 1
except AttributeError:
    pass
else:
    raise SystemExit("slots missing")
e = BatchTransition(0, 0.0, Source.ENGINE, "t", "b", "x", State.NONE, State.IN_PROGRESS)
object.__setattr__(e, "seq", 3)
print("ok", e.seq, hash(JobCounts(1, 1, 0, 1, 0)) == hash(b))
"""
    env = {k: v for k, v in os.environ.items() if k != "FROZEN_BATCHSCOPE_VALUES"}
    env["PYTHONPATH"] = str(DAEMON)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok", "3", "True"]



@pytest.mark.parametrize("seed", range(20))
def test_an_engine_transitions_fields_are_the_general_paths(seed: int) -> None:
    """An engine transition's fields (one dict display, the log line's hot path) are the
    general path's: the same names, values and order, whatever its states, counts,
    duration and diagnosis (reason, failure, link or none)."""
    rnd = random.Random(seed)
    states = list(State)
    for _ in range(50):
        reason = rnd.choice([None, *Reason])
        diagnosis = rnd.choice([
            NO_DIAGNOSIS,
            Diagnosis(reason, rnd.choice([None, {"failed_jobs": 2, "messages": []}]),
                      rnd.choice([None, "https://cockpit.example/#/batch?details=b"])),
        ])
        event = BatchTransition(
            rnd.randint(0, 10**6), 1e9, Source.ENGINE, "e", f"b{seed}", "migration",
            rnd.choice(states), rnd.choice(states),
            JobCounts(*(rnd.randint(0, 10**6) for _ in range(5))),
            rnd.choice([None, 0.0, 12.5]), None, None, diagnosis)
        fields = event.fields()
        general = event._any_fields()
        assert list(fields.items()) == list(general.items())
        jobs = JobCounts(1, 2, 3, 4, 5).fields()
        assert [k for k in fields if k in jobs] == list(jobs)
