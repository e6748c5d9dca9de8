"""Prometheus metrics: counters for events, a collector for the tracker's current state.

Counters and histograms are instrumented directly when an event or a poll happens.
Everything describing *current* state (batches per state, per-batch series) is rendered
at scrape time from the tracker by :class:`TrackerCollector`, so a finished batch's series
disappear on their own and a scrape never does I/O.

Exposition of ``batchscope_batches`` (one series per state, 0 included)::

    batchscope_batches{source="engine",target="prod",state="failed"} 2.0
"""

from __future__ import annotations

import heapq
import platform
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from batchscope import __version__
from batchscope.model import (
    FINISHED_RESULT_STATES,
    SOURCE_STATES,
    STATES,
    BatchTransition,
    ErrorReason,
    Event,
    ResultTransition,
    Source,
    State,
    is_terminal,
    possible_transitions,
)
from batchscope.tracker import TrackedBatch, Tracker

# Batches run for minutes to hours; the client's default buckets stop at 10 s.
DURATION_BUCKETS = (
    10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 28800, 86400, float("inf"),
)
POLL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, float("inf"))

# Per-batch series are capped; the ones that need attention are shown first.
_SHOW_FIRST = {
    State.FAILED: 0, State.STALLED: 1, State.SUSPENDED: 2, State.IN_PROGRESS: 3, State.NONE: 4,
}

Targets = list[tuple[Source, str]]


class Metrics:
    """All of batchscope's metrics on a private registry."""

    def __init__(self, tracker: Tracker, *, max_batch_series: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.transitions = Counter(
            "batchscope_batch_transitions", "Batch state transitions observed by this process.",
            ["source", "target", "from_state", "to_state"], registry=r,
        )
        self.durations = Histogram(
            "batchscope_batch_duration_seconds",
            "Time from a batch's start (engine startTime, else first sighting) to its end.",
            ["source", "target", "state"], buckets=DURATION_BUCKETS, registry=r,
        )
        self.ci_results = Counter(
            "batchscope_ci_test_results", "Finished Datadog CI test results per test.",
            ["target", "test_public_id", "status"], registry=r,
        )
        self.target_up = Gauge(
            "batchscope_target_up", "1 if the last poll of the target succeeded.",
            ["source", "target"], registry=r,
        )
        self.polls = Counter(
            "batchscope_polls", "Poll cycles started.", ["source", "target"], registry=r,
        )
        self.poll_errors = Counter(
            "batchscope_poll_errors", "Poll cycles that failed, by reason.",
            ["source", "target", "reason"], registry=r,
        )
        self.poll_duration = Histogram(
            "batchscope_poll_duration_seconds", "Duration of one poll cycle.",
            ["source", "target"], buckets=POLL_BUCKETS, registry=r,
        )
        self.last_success = Gauge(
            "batchscope_last_successful_poll_timestamp_seconds",
            "Unix time of the target's last successful poll.", ["source", "target"], registry=r,
        )
        self.rate_limit_remaining = Gauge(
            "batchscope_rate_limit_remaining",
            "Requests left in the upstream's rate-limit window (X-RateLimit-Remaining).",
            ["source", "target"], registry=r,
        )
        self.diagnosis_lookups = Counter(
            "batchscope_diagnosis_lookups",
            "Failure and stall lookups (see SPEC.md's Diagnosis), by outcome.",
            ["source", "target", "outcome"], registry=r,
        )
        build = Gauge(
            "batchscope_build_info", "Version of batchscope; always 1.",
            ["version", "python_version"], registry=r,
        )
        build.labels(__version__, platform.python_version()).set(1)
        self.collector = TrackerCollector(tracker, max_batch_series=max_batch_series)
        r.register(self.collector)

    def add_target(self, source: Source, target: str) -> None:
        """Create every known series of a target at 0, so ``increase()`` sees the first event."""
        s = source.value
        for before, after in possible_transitions(source):
            self.transitions.labels(s, target, before.value, after.value)
        for state in SOURCE_STATES[source]:
            if not is_terminal(source, state):
                continue
            self.durations.labels(s, target, state.value)
        self.target_up.labels(s, target).set(0)
        self.polls.labels(s, target)
        for reason in ErrorReason:
            self.poll_errors.labels(s, target, reason)
        self.poll_duration.labels(s, target)
        self.last_success.labels(s, target)
        for outcome in LOOKUP_OUTCOMES:
            self.diagnosis_lookups.labels(s, target, outcome)
        self.collector.targets.append((source, target))

    def remove_target(self, source: Source, target: str) -> None:
        s = source.value
        for metric in (self.transitions, self.durations, self.target_up, self.polls,
                       self.poll_errors, self.poll_duration, self.last_success,
                       self.rate_limit_remaining, self.diagnosis_lookups):
            metric.remove_by_labels({"source": s, "target": target})
        if source is Source.DATADOG:
            self.ci_results.remove_by_labels({"target": target})
        self.collector.targets[:] = [t for t in self.collector.targets if t != (source, target)]

    def observe(self, events: Iterable[Event]) -> None:
        for event in events:
            if isinstance(event, BatchTransition):
                s = event.source.value
                self.transitions.labels(
                    s, event.target, event.from_state.value, event.to_state.value
                ).inc()
                if event.duration_seconds is not None:
                    self.durations.labels(s, event.target, event.to_state.value).observe(
                        event.duration_seconds
                    )
            elif isinstance(event, ResultTransition) and event.to_state in FINISHED_RESULT_STATES:
                self.ci_results.labels(
                    event.target, event.result.test_public_id, event.to_state.value
                ).inc()

    def poll_succeeded(self, source: Source, target: str, seconds: float, now: float) -> None:
        self.polls.labels(source.value, target).inc()
        self.poll_duration.labels(source.value, target).observe(seconds)
        self.target_up.labels(source.value, target).set(1)
        self.last_success.labels(source.value, target).set(now)

    def poll_failed(self, source: Source, target: str, reason: str, seconds: float) -> None:
        self.polls.labels(source.value, target).inc()
        self.poll_duration.labels(source.value, target).observe(seconds)
        self.poll_errors.labels(source.value, target, reason).inc()
        self.target_up.labels(source.value, target).set(0)

    def diagnosis_lookup(self, source: Source, target: str, outcome: str, count: int = 1
                         ) -> None:
        self.diagnosis_lookups.labels(source.value, target, outcome).inc(count)

    def rate_limit(self, source: Source, target: str, remaining: int) -> None:
        self.rate_limit_remaining.labels(source.value, target).set(remaining)


LOOKUP_OUTCOMES = ("ok", "error", "skipped_budget")


class TrackerCollector(Collector):
    """Renders the tracker's current state at each scrape (no I/O, no locks needed:
    the tracker is only changed by synchronous calls on the same event loop)."""

    def __init__(self, tracker: Tracker, *, max_batch_series: int) -> None:
        self.tracker = tracker
        self.max_batch_series = max_batch_series
        self.targets: Targets = []

    def describe(self) -> Iterable[Metric]:
        return []  # no describe-time collect: the registry must not call collect() early

    def collect(self) -> Iterator[Metric]:
        tracker = self.tracker
        batches = GaugeMetricFamily(
            "batchscope_batches", "Tracked batches per state.", labels=["source", "target", "state"]
        )
        for source, target in self.targets:
            for state in STATES:
                batches.add_metric(
                    [source.value, target, state.value], tracker.counts[(source, target, state)]
                )
        yield batches

        shown, dropped = self._per_batch_selection()
        state_family = GaugeMetricFamily(
            "batchscope_batch_state", "1 for each non-terminal batch, labelled with its state.",
            labels=["source", "target", "batch_id", "batch_type", "state"],
        )
        jobs_family = GaugeMetricFamily(
            "batchscope_batch_jobs", "Job counts of non-terminal engine batches.",
            labels=["target", "batch_id", "batch_type", "kind"],
        )
        results_family = GaugeMetricFamily(
            "batchscope_ci_batch_results", "Result counts of non-terminal Datadog CI batches.",
            labels=["target", "batch_id", "status"],
        )
        for rec in shown:
            state_family.add_metric(
                [rec.source.value, rec.target, rec.batch_id, rec.batch_type, rec.state.value], 1
            )
            if rec.jobs is not None:
                for kind, value in rec.jobs.by_kind():
                    jobs_family.add_metric([rec.target, rec.batch_id, rec.batch_type, kind], value)
            if rec.result_counts is not None:
                c = rec.result_counts
                skipped = c.total - c.passed - c.failed - c.in_progress
                for status, value in (("passed", c.passed), ("failed", c.failed),
                                      ("in_progress", c.in_progress), ("skipped", skipped)):
                    results_family.add_metric([rec.target, rec.batch_id, status], value)
        yield state_family
        yield jobs_family
        yield results_family
        yield GaugeMetricFamily(
            "batchscope_batch_series_dropped",
            "Non-terminal batches without per-batch series because of max_batch_series.",
            value=dropped,
        )
        yield GaugeMetricFamily(
            "batchscope_tracked_batches", "Batches held by the tracker (terminal ones included).",
            value=len(tracker),
        )
        yield CounterMetricFamily(
            "batchscope_batch_evictions",
            "Terminal batches forgotten early to stay within max_tracked_batches.",
            value=tracker.evictions,
        )

    def _per_batch_selection(self) -> tuple[list[TrackedBatch], int]:
        active = [rec for rec in self.tracker.iter_active() if rec.state is not State.NONE]
        limit = self.max_batch_series
        if len(active) <= limit:
            return active, 0
        chosen = heapq.nsmallest(
            limit, active, key=lambda rec: (_SHOW_FIRST.get(rec.state, 9), rec.state_since)
        )
        return chosen, len(active) - limit
