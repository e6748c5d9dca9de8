"""The adaptive Datadog scheduler (tracker/pacing.py) in simulated time: its two hard bounds
(the request budget of fixed polling, the longest gap), where it spends the budget, what it
learns and how that is kept (bounded, and through the state file's format), and the
rate-limit window.

Simulated time only: the scheduler is pure, so a batch's life is a timeline and a loop that
jumps from one due time to the next; nothing here measures the wall clock.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchscope.model import CiResult, DatadogBatchSnapshot, Source
from batchscope.sinks.state_format import memory_from_meta, memory_to_meta
from batchscope.tracker import ConfiguredIds, Core, DatadogMemory, DatadogWatch
from batchscope.tracker.pacing import (
    Estimate,
    LearntDurations,
    PacingPolicy,
    RateWindow,
    Schedule,
)

EPS = 1e-6
D = (Source.DATADOG, "ci")


# --------------------------------------------------------------------------- a batch's life


@dataclass
class Result:
    """One result of a simulated batch: its first attempt ends ``first`` seconds after the
    batch started (``ok``: it passed); a failed one may be retried, ending ``retry`` s after
    the first attempt."""

    key: tuple[str, str, str]
    first: float
    ok: bool = True
    retry: float | None = None

    @property
    def end(self) -> float:
        return self.first + (self.retry or 0.0)


@dataclass
class Life:
    """A CI batch as the upstream sees it: started at ``origin``, watched ``watch_delay``
    later, its status final ``lag`` seconds after its last result (or at ``cut``)."""

    batch_id: str
    origin: float
    tests: list[Result]
    watch_delay: float = 0.0
    lag: float = 0.0
    cut: float | None = None  # ends early (a batch timeout), relative to origin
    not_found_for: float = 0.0  # answers 404 this long after the origin

    @property
    def end(self) -> float:
        natural = max(t.end for t in self.tests) + self.lag
        return self.origin + (natural if self.cut is None else min(natural, self.cut))

    @property
    def status(self) -> str:
        return "passed" if all(t.ok or t.retry for t in self.tests) else "failed"

    def snapshot(self, now: float) -> DatadogBatchSnapshot | None:
        if now < self.origin + self.not_found_for:
            return None
        results = []
        for n, t in enumerate(self.tests):
            rid = f"{self.batch_id}-{n}"
            age = now - self.origin
            common = {"test_public_id": t.key[0], "location": t.key[1], "device": t.key[2]}
            if age < t.first and now < self.end:
                results.append(CiResult(status="in_progress", result_id=rid, **common))
            elif t.retry is not None and age < t.end and now < self.end:
                results.append(CiResult(status="in_progress", result_id=rid, retries=0,
                                        duration_ms=t.first * 1000, **common))
            elif t.retry is not None:
                results.append(CiResult(status="passed", result_id=rid + "-r",
                                        initial_result_id=rid, retries=1,
                                        duration_ms=t.retry * 1000, **common))
            else:
                results.append(CiResult(status="passed" if t.ok else "failed", result_id=rid,
                                        retries=0, duration_ms=t.first * 1000, **common))
        status = "in_progress" if now < self.end else self.status
        return DatadogBatchSnapshot(self.batch_id, status, tuple(results))


@dataclass
class Run:
    """What a simulated run did: every request per batch, when each end was seen."""

    starts: dict[str, float] = field(default_factory=dict)
    polls: dict[str, list[float]] = field(default_factory=dict)
    seen_end: dict[str, float] = field(default_factory=dict)


def run(schedule: Schedule, lives: list[Life], *, until: float = 1e6,
        fails: Callable[[str, int], bool] = lambda batch, n: False,
        late: Callable[[], float] = lambda: 0.0,
        latency: Callable[[], float] = lambda: 0.0) -> Run:
    """Drive ``schedule`` the way the poller does: wake at the next due time (plus
    ``late()``, a loop running behind), ask about what is due, hand the answers back
    ``latency()`` seconds later (a request's round trip)."""
    out = Run()
    joining = sorted(lives, key=lambda life: life.origin + life.watch_delay)
    live = {life.batch_id: life for life in lives}
    now = min(life.origin for life in lives)
    while joining or len(schedule):
        wake = [t for t in (schedule.next_due(now),) if t is not None]
        if joining:
            wake.append(joining[0].origin + joining[0].watch_delay)
        now = max(now, min(wake) + late())
        if now > until:
            break
        while joining and joining[0].origin + joining[0].watch_delay <= now:
            life = joining.pop(0)
            schedule.add(life.batch_id, life.origin + life.watch_delay, now)
            out.starts[life.batch_id] = now
        for batch_id in schedule.take_due(now):
            polls = out.polls.setdefault(batch_id, [])
            polls.append(now)
            answer = now + latency()
            if fails(batch_id, len(polls)):
                schedule.failed(batch_id, answer)
                continue
            snapshot = live[batch_id].snapshot(answer)
            schedule.answered(batch_id, snapshot, answer)
            if snapshot is not None and snapshot.status != "in_progress":
                out.seen_end[batch_id] = answer
                schedule.drop(batch_id)
    return out


def fixed_polls(life: Life, interval: float) -> tuple[int, float]:
    """Requests and the end's sighting of fixed polling from the watch on."""
    start = life.origin + life.watch_delay
    n = max(0, math.ceil((life.end - start) / interval - EPS))
    return n + 1, start + n * interval


def trained(interval: float, lives: list[Life], rounds: int = 6) -> LearntDurations:
    """Durations learnt by running the same batches ``rounds`` times before."""
    learnt = LearntDurations()
    for n in range(rounds):
        again = [Life(f"{life.batch_id}#{n}", 0.0, life.tests) for life in lives]
        run(Schedule(interval, learnt), again)
    return learnt


# --------------------------------------------------------------------------- the bounds


def assert_within_bounds(run_: Run, interval: float, max_gap: float) -> None:
    for batch_id, polls in run_.polls.items():
        start = run_.starts[batch_id]
        assert polls[0] == start, "a batch new to the scheduler is asked about at once"
        for n, t in enumerate(polls, 1):
            assert n <= 1 + math.floor((t - start) / interval + EPS), (
                f"{batch_id}: request {n} at {t - start:.3f} s exceeds fixed polling's budget")
        for a, b in itertools.pairwise(polls):
            assert b - a <= max_gap + EPS, f"{batch_id}: {b - a:.3f} s between two requests"


keys = st.sampled_from([("t-a", "aws:eu-central-1", "chrome"), ("t-b", "aws:us-east-1", ""),
                        ("t-c", "aws:eu-central-1", ""), ("t-d", "gcp:asia", "firefox")])


@st.composite
def lives_and_knowledge(draw: st.DrawFn) -> tuple[float, list[Life], LearntDurations]:
    interval = draw(st.sampled_from([0.5, 1.0, 5.0]))
    learnt = LearntDurations()
    for key in draw(st.lists(keys, unique=True)):
        mean = draw(st.floats(0.1, 40.0)) * interval
        for _ in range(draw(st.integers(1, 4))):
            learnt.learn(key, mean * draw(st.floats(0.5, 1.5)))
    lives = []
    for n in range(draw(st.integers(1, 3))):
        tests = [Result(key, draw(st.floats(0.05, 40.0)) * interval, ok=draw(st.booleans()),
                      retry=draw(st.none() | st.floats(0.1, 10.0)) if n % 2 else None)
                 for key in draw(st.lists(keys, min_size=1, max_size=3, unique=True))]
        lives.append(Life(
            f"b{n}", origin=draw(st.floats(0, 30.0)) * interval, tests=tests,
            watch_delay=draw(st.floats(0, 2.0)), lag=draw(st.floats(0, 2.0)),
            cut=draw(st.none() | st.floats(0.1, 30.0).map(lambda x: x * interval)),
            not_found_for=draw(st.sampled_from([0.0, 0.0, 3.0])) * interval))
    return interval, lives, learnt


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lives_and_knowledge(), st.integers(0, 2**32 - 1))
def test_never_more_requests_than_fixed_polling_and_never_a_longer_gap(
        case: tuple[float, list[Life], LearntDurations], seed: int) -> None:
    """Whatever the batches do (results ending early or late, retries, 404s at first, tests
    known, wrongly known or unknown), however long the requests take and whichever fail: a
    batch is asked about at once when it is new, never more often by any instant than fixed
    polling would have, and never more than 2 x poll_interval apart; and its end is seen."""
    interval, lives, learnt = case
    rng = random.Random(seed)
    schedule = Schedule(interval, learnt)
    result = run(schedule, lives, fails=lambda batch, n: rng.random() < 0.1,
                 latency=lambda: rng.uniform(0, 0.2 * interval))
    assert_within_bounds(result, interval, schedule.policy.max_gap)
    assert set(result.seen_end) == {life.batch_id for life in lives}
    for life in lives:
        assert result.seen_end[life.batch_id] >= life.end


def test_a_loop_running_late_never_makes_more_requests() -> None:
    """Cycles that start late (a busy loop, slow requests) shift requests later, never
    beyond the budget: lateness cannot be made up for by asking twice."""
    rng = random.Random(7)
    lives = [Life(f"b{n}", origin=n * 3.0, tests=[Result(("t", "l", ""), 40.0 + n)])
             for n in range(5)]
    schedule = Schedule(5.0, trained(5.0, lives))
    result = run(schedule, lives, late=lambda: rng.uniform(0, 0.6))
    for batch_id, polls in result.polls.items():
        start = result.starts[batch_id]
        assert all(n <= 1 + math.floor((t - start) / 5.0 + EPS)
                   for n, t in enumerate(polls, 1))


# --------------------------------------------------------------------------- where it spends


def test_requests_move_from_the_quiet_start_to_the_expected_end() -> None:
    """A test known to take about 60 s: while nothing can end the batch is asked about once
    per 2 x poll_interval, around 60 s the saved requests come close together, so the end is
    seen much sooner than fixed polling sees it, with fewer requests in all."""
    test = Result(("checkout", "aws:eu-central-1", "chrome"), 60.0)
    learnt = trained(5.0, [Life("x", 0.0, [test])])
    assert learnt.estimate(test.key) is not None
    life = Life("b", 1000.0, [Result(test.key, 61.3)], lag=0.2)
    result = run(Schedule(5.0, learnt), [life])
    polls = [t - 1000.0 for t in result.polls["b"]]
    quiet = [t for t in polls if t < 45.0]
    assert [round(b - a, 6) for a, b in itertools.pairwise(quiet)] == [10.0] * (
        len(quiet) - 1), "one request per 2 x poll_interval while no end is expected"
    near = [t for t in polls if 55.0 <= t <= 62.0]
    assert len(near) >= 4 and max(b - a for a, b in itertools.pairwise(near)) < 2.5
    fixed_requests, fixed_seen = fixed_polls(life, 5.0)
    latency = result.seen_end["b"] - life.end
    assert latency < (fixed_seen - life.end) / 2
    assert len(polls) <= fixed_requests


def test_a_batch_of_unknown_tests_is_polled_as_before() -> None:
    """Nothing learnt about its tests: every poll_interval, like fixed polling."""
    life = Life("b", 0.0, [Result(("new", "l", ""), 33.0)])
    result = run(Schedule(5.0), [life])
    assert result.polls["b"] == [0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0]


def test_when_every_result_is_final_the_batch_end_is_awaited_closely() -> None:
    """All results are final but the batch is not (Datadog finalises it a moment later):
    the next request comes at the densest spacing, and the end is seen within a second."""
    test = Result(("t", "l", ""), 60.0)
    learnt = trained(5.0, [Life("x", 0.0, [test])])
    life = Life("b", 0.0, [Result(test.key, 60.0)], lag=1.5)
    schedule = Schedule(5.0, learnt)
    result = run(schedule, [life])
    polls = result.polls["b"]
    settled = next(n for n, t in enumerate(polls) if t >= 60.0)
    assert polls[settled + 1] - polls[settled] <= schedule.policy.min_gap + EPS
    assert result.seen_end["b"] - life.end < 1.0


def test_a_late_batch_is_polled_closely_then_back_to_every_interval() -> None:
    """An end much later than learnt: past the expected window the spacing grows from
    dense back to poll_interval, never wider."""
    test = Result(("t", "l", ""), 20.0)
    learnt = trained(5.0, [Life("x", 0.0, [test])])
    life = Life("b", 0.0, [Result(test.key, 200.0)])
    result = run(Schedule(5.0, learnt), [life])
    late = [t for t in result.polls["b"] if t > 40.0]
    gaps = [b - a for a, b in itertools.pairwise(late)]
    assert gaps and all(g <= 5.0 + EPS for g in gaps) and gaps[-1] == 5.0


def test_a_new_batch_is_due_at_once_and_a_failed_request_is_retried_within_bounds() -> None:
    """First sighting: due the moment it is added. A failed request is asked again half an
    interval later at the earliest, and the budget still holds (not before start + P)."""
    schedule = Schedule(5.0)
    schedule.add("b", origin=90.0, now=100.0)
    assert schedule.take_due(100.0) == ["b"]
    schedule.failed("b", 100.5)
    due = schedule.next_due(100.5)
    assert due is not None and 105.0 <= due <= 110.0
    assert schedule.take_due(104.9) == []


def test_take_due_honours_the_rate_allowance_longest_due_first() -> None:
    """A wave takes at most what the rate limit allows, the longest due first; the rest
    stay due for the next wave."""
    schedule = Schedule(5.0)
    for n in range(5):
        schedule.add(f"b{n}", 0.0, float(n))
    assert schedule.take_due(10.0, limit=2) == ["b0", "b1"]
    assert schedule.take_due(10.0, limit=0) == []
    assert schedule.take_due(10.0) == ["b2", "b3", "b4"]


def test_a_clock_set_back_does_not_stop_polling() -> None:
    """The wall clock steps back an hour: due times move with it, so the next request is
    still at most the longest gap away."""
    schedule = Schedule(5.0)
    schedule.add("b", 0.0, 10_000.0)
    assert schedule.take_due(10_000.0) == ["b"]
    schedule.answered("b", DatadogBatchSnapshot("b", "in_progress"), 10_000.0)
    due = schedule.next_due(6_400.0)
    assert due is not None and due <= 6_400.0 + schedule.policy.max_gap


# --------------------------------------------------------------------------- learning


def test_learns_when_each_test_ended_after_its_batch_started() -> None:
    """A passed first attempt seen running before: its duration when it fits between the
    two answers; the middle of them when it is shorter (it waited to run). Failed attempts
    and results first seen already over (after a restart) are not learnt."""
    schedule = Schedule(5.0)
    schedule.add("b", origin=0.0, now=0.0)
    key_a, key_b, key_c = ("a", "l", ""), ("b", "l", ""), ("c", "l", "")

    def answer(now: float, *results: CiResult) -> None:
        assert schedule.take_due(now) == ["b"]
        schedule.answered("b", DatadogBatchSnapshot("b", "in_progress", results), now)

    running = [CiResult(k[0], "in_progress", k[1], k[2], result_id=k[0]) for k in (key_a,
                                                                                   key_b)]
    c = CiResult("c", "passed", "l", "", result_id="c", retries=0, duration_ms=1000)
    answer(0.0, *running, c)  # c ran 1 s and is over: the batch started 1 s ago at least
    answer(5.0, *running, c)
    answer(10.0, CiResult("a", "passed", "l", "", result_id="a", retries=0, duration_ms=8000),
           CiResult("b", "passed", "l", "", result_id="b", retries=0, duration_ms=2000), c)
    a, b = schedule.durations.estimate(key_a), schedule.durations.estimate(key_b)
    assert a is not None and a.mean == 8.0  # ended between 6 and 11 s after the start
    # b ran 2 s but was still running 6 s after the start: it waited, then ended
    # between 6 and 11 s
    assert b is not None and b.mean == 8.5
    assert schedule.durations.estimate(key_c) is None

    schedule.drop("b")
    schedule.add("f", origin=20.0, now=20.0)
    assert schedule.take_due(20.0) == ["f"]
    schedule.answered("f", DatadogBatchSnapshot("f", "in_progress", (
        CiResult("a", "in_progress", "l", "", result_id="fa"),)), 20.0)
    assert schedule.take_due(30.0) == ["f"]
    schedule.answered("f", DatadogBatchSnapshot("f", "in_progress", (
        CiResult("a", "failed", "l", "", result_id="fa", retries=0, duration_ms=3000),)), 30.0)
    assert schedule.durations.estimate(key_a) == a


def test_the_estimate_follows_a_test_that_got_slower() -> None:
    """A test that now takes twice as long: within a dozen batches the mean is there and
    the deviation small again."""
    learnt = LearntDurations()
    key = ("t", "l", "")
    for _ in range(3):
        learnt.learn(key, 10.0)
    for _ in range(12):
        learnt.learn(key, 20.0)
    estimate = learnt.estimate(key)
    assert estimate is not None and 19.0 < estimate.mean <= 20.0 and estimate.dev < 2.0
    assert estimate.samples == 15


def test_learnt_durations_are_bounded_least_recently_learnt_first() -> None:
    """At most ``capacity`` keys; learning refreshes a key; the state's rows keep the order,
    so a restart evicts the same keys; unreadable rows are dropped, not fatal."""
    learnt = LearntDurations(capacity=3)
    for name in ("a", "b", "c"):
        learnt.learn((name, "l", ""), 1.0)
    learnt.learn(("a", "l", ""), 2.0)  # a is now the most recent
    learnt.learn(("d", "l", ""), 1.0)  # evicts b, the least recently learnt
    assert [k[0] for k in learnt] == ["c", "a", "d"]
    for n in range(100):
        learnt.learn((f"x{n}", "l", ""), float(n))
    assert len(learnt) == 3
    rows = orjson.loads(orjson.dumps(learnt.to_json()))
    assert LearntDurations.from_json(rows, capacity=3) == learnt
    assert [k[0] for k in LearntDurations.from_json(rows, capacity=2)] == ["x98", "x99"]
    garbage = [["a", "l", "", "x", 1, 1], "no", ["b", "l", "", -1, 1, 1], ["c", "l", "", 3, 1, 2]]
    assert LearntDurations.from_json(garbage).keys() == [("c", "l", "")]
    assert len(LearntDurations.from_json({"not": "a list"})) == 0
    learnt.learn(("y", "l", ""), math.nan)
    assert ("y", "l", "") not in learnt


def test_learnt_durations_are_kept_with_the_state_and_old_state_still_loads() -> None:
    """Learning marks the core changed; the durations go through the state file's meta and
    come back after a restart, beside the configured ids; a meta written before there were
    durations loads as it did."""
    core = Core(retention=3600, max_tracked=100)
    watch = DatadogWatch(name="ci", stall_after=100.0, not_found_grace=5.0, batch_ids=("b-1",))
    core.configure([watch], 0.0)
    core.take_changes()
    assert not core.has_changes
    core.durations("ci").learn(("t", "l", "chrome"), 42.5)
    assert core.has_changes
    memory = core.take_changes().memory
    assert not core.has_changes
    meta = orjson.loads(orjson.dumps(memory_to_meta(memory)))
    assert meta["datadog:ci"]["configured"] == ["b-1"]

    restarted = Core(retention=3600, max_tracked=100)
    restarted.restore([], 0, memory_from_meta(meta))
    restarted.configure([watch], 10.0)
    assert restarted.durations("ci") == core.durations("ci")
    assert restarted.durations("ci").estimate(("t", "l", "chrome")) == Estimate.first(42.5)
    assert not restarted.has_changes
    assert restarted.take_changes().memory[D] == DatadogMemory(
        ConfiguredIds(["b-1"]), core.durations("ci"))

    old = memory_from_meta({"datadog:ci": {"configured": ["b-1"]}})
    assert old == {D: ConfiguredIds(["b-1"])}
    before = Core(retention=3600, max_tracked=100)
    before.restore([], 0, old)
    before.configure([watch], 10.0)
    assert len(before.durations("ci")) == 0

    restarted.configure([], 20.0)  # the target is gone: its durations with it
    assert D not in restarted.take_changes().memory


# --------------------------------------------------------------------------- the rate limit


class Upstream:
    """A calendar-aligned rate limit as Datadog (and the simulator) applies it."""

    def __init__(self, limit: int, period: float) -> None:
        self.limit, self.period = limit, period
        self.window, self.used, self.rejected = -1, 0, 0

    def answer(self, now: float) -> tuple[int, int, float]:
        window = math.floor(now / self.period)
        if window != self.window:
            self.window, self.used = window, 0
        self.used += 1
        if self.used > self.limit:
            self.rejected += 1
        reset = math.ceil((window + 1) * self.period - now)
        return self.limit, max(0, self.limit - self.used), reset


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 50), st.sampled_from([1.0, 10.0, 60.0]), st.integers(0, 2**32 - 1),
       st.integers(0, 3))
def test_the_rate_window_never_lets_a_request_meet_a_429(
        limit: int, period: float, seed: int, others: int) -> None:
    """Requests sent in waves of what the window allows, answered out of order, with
    others (``batchscope wait``, datadog-ci) spending up to 3 requests per window unseen:
    as long as others stay within the reserve, no request is rejected."""
    rng = random.Random(seed)
    upstream, window = Upstream(limit, period), RateWindow()
    others = min(others, window.reserve if window.limit else 1)
    now, sent = 0.0, 0
    others_spent: dict[int, int] = {}
    while now < 5 * period:
        allowance = window.allowance(now)
        wave = 20 if allowance is None else min(allowance, 20)
        window.spend(wave)
        answers = [upstream.answer(now + rng.uniform(0, 0.01)) for _ in range(wave)]
        rng.shuffle(answers)
        for lim, remaining, reset in answers:
            window.observe(lim, remaining, reset, now + 0.02)
        current = math.floor(now / period)
        reserve = max(1, math.ceil(limit * 0.05))
        if others_spent.get(current, 0) < min(others, reserve - 1):
            upstream.answer(now)  # another client, within the reserve minus the probe
            others_spent[current] = others_spent.get(current, 0) + 1
        sent += wave
        wake = window.wait_until(now + 0.03)
        now = max(now + 0.03, wake or 0.0)
    assert upstream.rejected == 0
    assert sent >= limit  # it did go up to the limit, not below it out of caution


def test_a_429_makes_the_next_wave_a_single_request() -> None:
    """Before any answer and after a 429 one request probes; otherwise what is left minus
    the reserve; an upstream that sends no rate-limit headers is not limited."""
    window = RateWindow()
    assert window.allowance(0.0) == 1  # before any answer
    window.observe(100, 80, 30.0, 0.0)
    assert window.allowance(1.0) == 75  # 5 kept for others
    window.throttled()
    assert window.allowance(2.0) == 1
    window.observe(None, None, None, 3.0)  # answers without rate-limit headers
    assert window.allowance(3.0) is None


def test_policy_bounds_follow_poll_interval() -> None:
    """The longest gap is 2 x poll_interval, the densest spacing poll_interval / 20; the
    budget by t is what polling every poll_interval from the start makes by t."""
    policy = PacingPolicy(5.0)
    assert (policy.max_gap, policy.min_gap) == (10.0, 0.25)
    assert [policy.allowed_by(0.0, t) for t in (0.0, 4.99, 5.0, 12.0)] == [1, 1, 2, 3]
