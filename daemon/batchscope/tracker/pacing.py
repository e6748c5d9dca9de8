"""Adaptive polling of Datadog CI batches: when to ask about each watched batch next.

Polling every ``poll_interval`` (P) seconds asks as often at a batch's start, when nothing
can have ended, as near its end, and sees the end P/2 late on average. This scheduler
spends the same requests where ends are expected. Pure: no I/O, time passed in.

Rules, per batch, counted from ``start`` (when the scheduler took the batch on: a watch, a
configured id, a restart):

* **Budget.** By any instant ``t`` the batch has been asked about at most
  ``1 + floor((t - start) / P)`` times: never more than fixed polling from ``start`` would
  have made by then. Requests not spent while no end is expected are spent later.
* **Longest gap.** At most ``max_gap`` (2 P) between two requests for the batch. P itself
  would leave no freedom: the budget forbids a second request before ``start + P`` and the
  gap forbids one after it, and so on for every request: exactly fixed polling. Within
  these two bounds a request can always be made when the gap runs out (``max_gap >= P``).
* **First sighting.** A batch new to the scheduler is due at once.
* **Where ends are expected.** A result still running is expected to end ``mean`` seconds
  after the batch started, give or take its deviation, both learnt from earlier batches
  per test, location and device (:class:`LearntDurations`); the batch ends with its last
  result. Before that window: one request per ``max_gap``. Inside it: the requests saved so
  far, spread evenly until its end (never sparser than P). After it (late), or once every
  result is final while the batch is not: requests close together, then wider and wider
  apart up to P. With nothing to go on (a test never seen, a 404): every P, as before.
* **Rate limit.** :class:`RateWindow` keeps what the ``X-RateLimit-*`` headers allow; the
  poller sends no more than that, which wins over the longest gap.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from batchscope.model import CiResult, DatadogBatchSnapshot, ResultKey

#: Learnt keys kept per Datadog target; the least recently learnt go first.
DEFAULT_CAPACITY = 1024

_FINAL = frozenset({"passed", "failed", "skipped"})


# --------------------------------------------------------------------------- learning


@dataclass(frozen=True, slots=True)
class Estimate:
    """When a test ends, in seconds after its batch started: an exponentially weighted mean
    and mean absolute deviation (as TCP estimates round-trip times)."""

    mean: float
    dev: float
    samples: int = 1

    #: weight of a new sample in the mean and in the deviation
    MEAN_WEIGHT = 0.25
    DEV_WEIGHT = 0.25

    @classmethod
    def first(cls, seconds: float) -> Estimate:
        # One sample says little about the spread: a tenth, to be corrected by the next.
        return cls(seconds, seconds / 10, 1)

    def learn(self, seconds: float) -> Estimate:
        error = seconds - self.mean
        return Estimate(self.mean + self.MEAN_WEIGHT * error,
                        (1 - self.DEV_WEIGHT) * self.dev + self.DEV_WEIGHT * abs(error),
                        self.samples + 1)


class LearntDurations:
    """Per (test_public_id, location, device): when its first attempt ends, measured from
    its batch's start. At most ``capacity`` keys, the least recently learnt evicted first.

    Kept with the state (``sinks/state_format.py``): the order is the recency, so eviction
    after a restart forgets the same keys as before it. ``version`` changes with every
    sample, so the core knows when to save.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._keys: dict[ResultKey, Estimate] = {}  # least recently learnt first
        self.version = 0

    def __len__(self) -> int:
        return len(self._keys)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LearntDurations):
            return NotImplemented
        return list(self._keys.items()) == list(other._keys.items())

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LearntDurations({len(self._keys)} keys, capacity {self.capacity})"

    def __iter__(self) -> Iterator[ResultKey]:
        """The keys, least recently learnt first."""
        return iter(list(self._keys))

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def estimate(self, key: ResultKey) -> Estimate | None:
        return self._keys.get(key)

    def keys(self) -> list[ResultKey]:
        """Least recently learnt first."""
        return list(self._keys)

    def learn(self, key: ResultKey, seconds: float) -> None:
        """One more sample for ``key`` (ignored unless finite and not negative)."""
        if not math.isfinite(seconds) or seconds < 0:
            return
        known = self._keys.pop(key, None)
        self._keys[key] = Estimate.first(seconds) if known is None else known.learn(seconds)
        while len(self._keys) > self.capacity:
            del self._keys[next(iter(self._keys))]
        self.version += 1

    def copy(self) -> LearntDurations:
        other = LearntDurations(self.capacity)
        other._keys = dict(self._keys)
        other.version = self.version
        return other

    def to_json(self) -> list[list[Any]]:
        """``[[test_public_id, location, device, mean, dev, samples], ...]``, least recently
        learnt first; seconds rounded to milliseconds."""
        return [[*key, round(e.mean, 3), round(e.dev, 3), e.samples]
                for key, e in self._keys.items()]

    @classmethod
    def from_json(cls, rows: object, capacity: int = DEFAULT_CAPACITY) -> LearntDurations:
        """The inverse of :meth:`to_json`. Lenient: this is a cache, so a row it cannot read
        is dropped (and forgotten at the next save), never a reason to refuse a start."""
        out = cls(capacity)
        if not isinstance(rows, list):
            return out
        for row in rows:
            try:
                test, location, device, mean, dev, samples = row
                key = (str(test), str(location), str(device))
                estimate = Estimate(float(mean), float(dev), int(samples))
            except (TypeError, ValueError):
                continue
            if (math.isfinite(estimate.mean) and math.isfinite(estimate.dev)
                    and estimate.mean >= 0 and estimate.dev >= 0 and estimate.samples >= 1):
                out._keys.pop(key, None)
                out._keys[key] = estimate
        while len(out._keys) > capacity:
            del out._keys[next(iter(out._keys))]
        return out


# --------------------------------------------------------------------------- rate limit


@dataclass(slots=True)
class RateWindow:
    """What the upstream's ``X-RateLimit-*`` headers allow: how many requests may go now.

    Counts its own requests down from the smallest ``remaining`` seen in the current window
    (answers to concurrent requests arrive out of order) and leaves ``reserve`` (5% of the
    limit, at least one) to others sharing the organisation's limit (``batchscope wait``,
    datadog-ci). Before the first answer, at the start of each window and after a 429, one
    request goes alone: its answer tells what is left. (The wait a 429 asks for is the poll
    loop's backoff and the client's pacer's.) An answer whose window resets clearly later
    than the one known starts a new window: ``X-RateLimit-Reset`` is in whole seconds, so
    the window known may end up to a second after the upstream's.
    """

    limit: int | None = None
    remaining: int | None = None
    resets_at: float | None = None
    answered: bool = False  # an answer was seen (with no headers: no limit is enforced)

    @property
    def reserve(self) -> int:
        return max(1, math.ceil(self.limit * 0.05)) if self.limit else 1

    def observe(self, limit: int | None, remaining: int | None, reset: float | None,
                now: float) -> None:
        """The headers of one answer (all None: it carried none)."""
        self.answered = True
        if remaining is None:
            return
        if limit is not None:
            self.limit = limit
        at = now + reset if reset is not None else None
        if (self.remaining is None or self.resets_at is None or now >= self.resets_at
                or (at is not None and at > self.resets_at + 1.0)):
            self.remaining, self.resets_at = remaining, at  # a new window
        elif at is not None and at < self.resets_at - 1.0:
            return  # an answer from the previous window, arriving late
        else:
            self.remaining = min(self.remaining, remaining)

    def spend(self, requests: int) -> None:
        """Requests about to be sent (their answers may carry no headers)."""
        if self.remaining is not None:
            self.remaining -= requests

    def throttled(self) -> None:
        """A 429: what is left is unknown; the next request goes alone."""
        self.remaining = self.resets_at = None
        self.answered = False

    def allowance(self, now: float) -> int | None:
        """Requests that may be sent now; None: no limit known."""
        if not self.answered:
            return 1
        if self.remaining is None or self.resets_at is None:
            return None  # no limit sent, or no reset to wait for: the client's pacer decides
        if now >= self.resets_at:
            return 1  # a new window: what is left in it is unknown until one answer says
        return max(0, self.remaining - self.reserve)

    def wait_until(self, now: float) -> float | None:
        """While :meth:`allowance` is 0: when it will not be."""
        return self.resets_at if self.allowance(now) == 0 else None


# --------------------------------------------------------------------------- the schedule


@dataclass(frozen=True, slots=True)
class PacingPolicy:
    """The scheduler's constants, all relative to ``interval`` (``poll_interval``)."""

    interval: float
    gap_factor: float = 2.0  # longest gap between two requests for a batch, in intervals
    quiet_factor: float = 2.0  # spacing while no end is expected, in intervals
    min_gap_factor: float = 1 / 20  # densest spacing, in intervals
    spread: float = 2.0  # an end is expected within mean +- spread x deviation
    growth: float = 0.5  # when late: spacing grows by this many seconds per second late
    #: mean absolute deviation to standard deviation (for a normal distribution)
    dev_to_sigma: float = 1.25
    #: requests kept back from the window for after it (late, or finalising)
    reserve: int = 1

    @property
    def max_gap(self) -> float:
        return self.gap_factor * self.interval

    @property
    def quiet_gap(self) -> float:
        return min(self.quiet_factor, self.gap_factor) * self.interval

    @property
    def min_gap(self) -> float:
        return self.min_gap_factor * self.interval

    def allowed_by(self, start: float, t: float) -> int:
        """Requests the budget allows by ``t``: what fixed polling from ``start`` makes."""
        if t < start:
            return 0
        return 1 + math.floor((t - start) / self.interval + 1e-9)


@dataclass(slots=True)
class BatchPlan:
    """What the scheduler knows of one batch and when it asks next."""

    batch_id: str
    start: float  # the budget counts from here
    origin: float  # when the batch's tests started, as far as known (at most this)
    due: float
    polls: int = 0
    last_poll: float | None = None
    in_flight: bool = False
    failed: bool = False  # the latest request failed
    last_answer: float | None = None  # the latest answer (200 or 404)
    window: tuple[float, float] | None = None  # when the batch's end is expected
    settled_since: float | None = None  # every result final, the batch not yet
    # per result lineage: when its first attempt was last seen running / had ended
    running: dict[str, float] = field(default_factory=dict)
    ended: dict[str, float] = field(default_factory=dict)
    # per result lineage: the attempt running after a fast retry, and when it began
    retry: dict[str, tuple[int | None, float]] = field(default_factory=dict)

    def earliest(self, policy: PacingPolicy) -> float:
        """The budget: the next request may not go before this."""
        return self.start + self.polls * policy.interval

    def latest(self, policy: PacingPolicy) -> float:
        """The longest gap: the next request must go by this."""
        return (self.start if self.last_poll is None else self.last_poll) + policy.max_gap


def _latest_attempts(results: Iterable[CiResult]) -> dict[str, CiResult]:
    """Each result lineage's latest attempt; entries without a result id (skipped) aside."""
    latest: dict[str, CiResult] = {}
    for r in results:
        lineage = r.initial_result_id or r.result_id
        if not lineage:
            continue
        known = latest.get(lineage)
        if known is None or (r.retries or 0, bool(r.initial_result_id)) >= (
                known.retries or 0, bool(known.initial_result_id)):
            latest[lineage] = r
    return latest


def _max_quantile(ends: list[tuple[float, float]], z: float, tolerance: float) -> float:
    """The time by which the last of independent normal ends (mean, sigma) is over with
    the probability that a standard normal is below ``z`` (the batch ends with its last
    result: with many results alike, that is later and narrower than any one of them)."""
    target = 0.5 * math.erfc(-z / math.sqrt(2))
    lo = max(mu - 6 * s for mu, s in ends)
    hi = max(mu + 6 * s for mu, s in ends)
    ends = [(mu, s) for mu, s in ends if mu + 6 * s > lo]  # the others are over by then
    while hi - lo > tolerance:
        mid = (lo + hi) / 2
        below = 1.0
        for mu, s in ends:
            below *= 0.5 * math.erfc(-(mid - mu) / (s * math.sqrt(2)))
        if below < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _first_attempt(r: CiResult) -> bool:
    """Whether the entry still describes its lineage's first attempt."""
    return not r.initial_result_id and (r.retries or 0) == 0


class Schedule:
    """Every watched batch of one Datadog target: when each is due, within the budget, the
    longest gap and the rate limit, and what the answers teach (into ``durations``)."""

    def __init__(self, interval: float, durations: LearntDurations | None = None,
                 policy: PacingPolicy | None = None) -> None:
        self.policy = policy if policy is not None else PacingPolicy(interval)
        self.durations = durations if durations is not None else LearntDurations()
        self.rate = RateWindow()
        self._plans: dict[str, BatchPlan] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._pushes = 0
        self._clock = -math.inf  # the latest time seen (a clock set back shifts every plan)

    # ------------------------------------------------------------------ the batches

    def __contains__(self, batch_id: object) -> bool:
        return batch_id in self._plans

    def __len__(self) -> int:
        return len(self._plans)

    def plan(self, batch_id: str) -> BatchPlan | None:
        return self._plans.get(batch_id)

    def plans(self) -> list[BatchPlan]:
        return list(self._plans.values())

    def add(self, batch_id: str, origin: float, now: float) -> None:
        """Take a batch on (first sighting): due at once."""
        self._tick(now)
        if batch_id in self._plans:
            return
        plan = BatchPlan(batch_id, start=now, origin=min(origin, now), due=now)
        self._plans[batch_id] = plan
        self._push(plan)

    def drop(self, batch_id: str) -> None:
        """Forget a batch (terminal, unwatched)."""
        self._plans.pop(batch_id, None)

    def sync(self, watched: Mapping[str, float], now: float) -> None:
        """Make the watched batches (id -> first seen) the scheduled ones."""
        for batch_id in [b for b in self._plans if b not in watched]:
            del self._plans[batch_id]
        for batch_id, origin in watched.items():
            if batch_id not in self._plans:
                self.add(batch_id, origin, now)

    # ------------------------------------------------------------------ when

    def next_due(self, now: float | None = None) -> float | None:
        """The earliest time a batch is due (None: none is scheduled)."""
        if now is not None:
            self._tick(now)
        while self._heap:
            due, _, batch_id = self._heap[0]
            plan = self._plans.get(batch_id)
            if plan is not None and not plan.in_flight and plan.due == due:
                return due
            heapq.heappop(self._heap)
        return None

    def take_due(self, now: float, limit: int | None = None) -> list[str]:
        """The batches to ask about now, the longest due first, at most ``limit``; they
        count as asked (budget, gap) from now on."""
        self._tick(now)
        p = self.policy
        horizon = now + p.min_gap / 2  # a request due a moment later goes with these
        taken: list[str] = []
        later: list[tuple[float, int, str]] = []
        while self._heap and (limit is None or len(taken) < limit):
            entry = self._heap[0]
            due, _, batch_id = entry
            if due > horizon:
                break
            heapq.heappop(self._heap)
            plan = self._plans.get(batch_id)
            if plan is None or plan.in_flight or plan.due != due:
                continue
            if plan.earliest(p) > now:
                later.append(entry)
                continue
            plan.in_flight = True
            plan.polls += 1
            plan.last_poll = now
            taken.append(batch_id)
        for entry in later:
            heapq.heappush(self._heap, entry)
        return taken

    def answered(self, batch_id: str, snapshot: DatadogBatchSnapshot | None,
                 now: float) -> None:
        """The batch's answer: its snapshot, or None for Datadog's 404 (not known yet)."""
        plan = self._plans.get(batch_id)
        if plan is None:
            return
        self._tick(now)
        plan.in_flight = False
        plan.failed = False
        if snapshot is None:
            plan.window = plan.settled_since = None
        else:
            self._read(plan, snapshot, now)
        plan.last_answer = now
        self._schedule(plan, now)

    def failed(self, batch_id: str, now: float) -> None:
        """The request failed: ask again half an interval later (the poll loop backs off
        when the whole target fails), within the budget."""
        plan = self._plans.get(batch_id)
        if plan is None:
            return
        self._tick(now)
        plan.in_flight = False
        plan.failed = True
        p = self.policy
        plan.due = min(max(now + p.interval / 2, plan.earliest(p)), plan.latest(p))
        self._push(plan)

    def all_failing(self) -> bool:
        """Whether every scheduled batch failed at its latest request (one not asked about
        yet has not failed)."""
        return bool(self._plans) and all(plan.failed for plan in self._plans.values())

    # ------------------------------------------------------------------ internals

    def _push(self, plan: BatchPlan) -> None:
        self._pushes += 1
        heapq.heappush(self._heap, (plan.due, self._pushes, plan.batch_id))

    def _tick(self, now: float) -> None:
        """A clock set back (by more than a second) moves every plan back with it: due
        times in its future would otherwise stop polling for as long."""
        if now < self._clock - 1.0:
            shift = now - self._clock
            for plan in self._plans.values():
                plan.start += shift
                plan.origin += shift
                plan.due += shift
                if plan.last_poll is not None:
                    plan.last_poll += shift
                if plan.last_answer is not None:
                    plan.last_answer += shift
                if plan.window is not None:
                    plan.window = (plan.window[0] + shift, plan.window[1] + shift)
                if plan.settled_since is not None:
                    plan.settled_since += shift
                plan.running = {k: t + shift for k, t in plan.running.items()}
                plan.ended = {k: t + shift for k, t in plan.ended.items()}
                plan.retry = {k: (n, t + shift) for k, (n, t) in plan.retry.items()}
            self._heap = []
            for plan in self._plans.values():
                self._push(plan)
            self._clock = now
        else:
            self._clock = max(self._clock, now)

    def _schedule(self, plan: BatchPlan, now: float) -> None:
        p = self.policy
        plan.due = min(max(self._desired(plan, now), plan.earliest(p)), plan.latest(p))
        self._push(plan)

    def _desired(self, plan: BatchPlan, now: float) -> float:
        """When the next request would be best, budget and gap aside."""
        p = self.policy
        if plan.settled_since is not None:
            return now + self._spacing_after(now - plan.settled_since)
        if plan.window is None:
            return now + p.interval  # nothing to go on: fixed polling
        lo, hi = plan.window
        if now < lo - p.min_gap:
            return min(lo - p.min_gap, now + p.quiet_gap)
        if now < hi:
            spare = p.allowed_by(plan.start, hi) - plan.polls - p.reserve
            spacing = (hi - now) / max(1, spare)
            return now + min(p.interval, max(p.min_gap, spacing))
        return now + self._spacing_after(now - hi)

    def _spacing_after(self, late: float) -> float:
        p = self.policy
        return min(p.interval, p.min_gap + p.growth * max(0.0, late))

    def _read(self, plan: BatchPlan, snapshot: DatadogBatchSnapshot, now: float) -> None:
        """Learn from the answer and expect the batch's end."""
        p = self.policy
        latest = _latest_attempts(snapshot.results)
        for lineage, r in latest.items():
            if r.status in _FINAL or r.duration_ms is not None:
                self._first_attempt_ended(plan, lineage, r, now)
        ends: list[tuple[float, float]] = []
        running = unknown = False
        for lineage, r in latest.items():
            if r.status in _FINAL:
                continue
            running = True
            first_runs = lineage not in plan.ended
            if first_runs:
                plan.running[lineage] = now
            estimate = self.durations.estimate(r.key)
            if estimate is None:
                unknown = True
                continue
            if first_runs:
                expected = plan.origin + estimate.mean
            else:  # a fast retry runs: it began about when the attempt before it ended
                attempt, began = plan.retry.get(lineage, (None, plan.ended[lineage]))
                if attempt is not None and attempt != r.retries:
                    began = (plan.last_answer + now) / 2 if plan.last_answer else now
                plan.retry[lineage] = (r.retries, began)
                expected = began + estimate.mean
            sigma = max(p.dev_to_sigma * estimate.dev, 0.03 * estimate.mean, p.min_gap)
            ends.append((expected, sigma))
        if not running:
            plan.window = None
            if plan.settled_since is None:
                plan.settled_since = now
            return
        plan.settled_since = None
        if unknown or not ends:
            plan.window = None
            return
        tolerance = p.min_gap / 10
        plan.window = (_max_quantile(ends, -p.spread, tolerance),
                       _max_quantile(ends, p.spread, tolerance))

    def _first_attempt_ended(self, plan: BatchPlan, lineage: str, r: CiResult,
                             now: float) -> None:
        """A result's first attempt is over (final, or failed with a fast retry running):
        when did it end, after the batch's start? Learnt from first attempts that passed
        (a failure often ends early, an assertion, or late, a timeout) and were seen
        running by this plan, so that each is learnt once, restarts included."""
        if lineage in plan.ended:
            return
        seen_running = plan.running.pop(lineage, None)
        duration = (r.duration_ms / 1000.0 if _first_attempt(r) and r.duration_ms is not None
                    and math.isfinite(r.duration_ms) and r.duration_ms >= 0 else None)
        if duration is not None:
            # It started at the batch's start or later, and ended by now.
            plan.origin = min(plan.origin, now - duration)
        upper = now - plan.origin
        if seen_running is None:
            plan.ended[lineage] = plan.origin + (duration if duration is not None else upper)
            return
        lower = seen_running - plan.origin
        # ``duration`` is the test's own run time: when it fits between the two answers it
        # is exact; when it is shorter the test waited before it ran (the middle of the
        # interval is the best guess).
        offset = duration if duration is not None and duration >= lower else (lower + upper) / 2
        plan.ended[lineage] = plan.origin + offset
        if r.status == "passed" and _first_attempt(r):
            self.durations.learn(r.key, offset)
