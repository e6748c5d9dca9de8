"""Prometheus metrics: counters for events, a collector for the tracker's current state.

Counters and histograms are instrumented directly when an event or a poll happens.
Everything describing *current* state (batches per state, per-batch series) is rendered
at scrape time from the tracker by :class:`TrackerCollector`, so a finished batch's series
disappear on their own and a scrape never does I/O.

Exposition of ``batchscope_batches`` (one series per state, 0 included)::

    batchscope_batches{source="engine",target="prod",state="failed"} 2.0

Prometheus scrapes more often than the daemon polls, and the per-batch series are most of a
scrape (3,000 samples at the default ``max_batch_series``): they are rendered once per
change of the tracker, and :func:`exposition` (what ``GET /metrics`` serves) writes them as
rendered, byte for byte what prometheus_client's encoders would write; every other family
goes through those encoders as before.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from operator import attrgetter
from typing import Any, Final, cast

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import exposition as text_format
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics import exposition as openmetrics_format
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from batchscope import __version__
from batchscope.model import (
    FINISHED_RESULT_STATES,
    SOURCE_STATES,
    STATES,
    BatchTransition,
    ErrorReason,
    Event,
    JobCounts,
    ResultCounts,
    ResultTransition,
    Source,
    State,
    is_terminal,
    possible_transitions,
)
from batchscope.tracker import Key, TrackedBatch, Tracker

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
        self.registry = MetricsRegistry()
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
        # Each of these changes only through the methods below, which say so: the
        # exposition encodes a family again only after it changed.
        for metric in (self.transitions, self.durations, self.ci_results, self.target_up,
                       self.polls, self.poll_errors, self.poll_duration, self.last_success,
                       self.rate_limit_remaining, self.diagnosis_lookups, build):
            r.follow(metric)
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
        self.registry.changed(self.transitions, self.durations, self.target_up, self.polls,
                              self.poll_errors, self.poll_duration, self.last_success,
                              self.diagnosis_lookups)

    def remove_target(self, source: Source, target: str) -> None:
        s = source.value
        for metric in (self.transitions, self.durations, self.target_up, self.polls,
                       self.poll_errors, self.poll_duration, self.last_success,
                       self.rate_limit_remaining, self.diagnosis_lookups):
            metric.remove_by_labels({"source": s, "target": target})
            self.registry.changed(metric)
        if source is Source.DATADOG:
            self.ci_results.remove_by_labels({"target": target})
            self.registry.changed(self.ci_results)
        self.collector.targets[:] = [t for t in self.collector.targets if t != (source, target)]

    def observe(self, events: Iterable[Event]) -> None:
        # Counted per label set first: a first cycle has 10,000 transitions and a few
        # distinct (from, to) pairs; the counters' children are looked up once per pair.
        # Keyed by the enum members: their label values are read once per distinct key.
        transitions: dict[tuple[Source, str, State, State], int] = {}
        results: dict[tuple[str, str, str], int] = {}
        for event in events:
            if isinstance(event, BatchTransition):
                key = (event.source, event.target, event.from_state, event.to_state)
                transitions[key] = transitions.get(key, 0) + 1
                if event.duration_seconds is not None:
                    self.durations.labels(event.source.value, event.target,
                                          event.to_state.value).observe(
                        event.duration_seconds
                    )
                    self.registry.changed(self.durations)
            elif isinstance(event, ResultTransition) and event.to_state in FINISHED_RESULT_STATES:
                result_key = (event.target, event.result.test_public_id, event.to_state.value)
                results[result_key] = results.get(result_key, 0) + 1
        for (source, target, before, after), count in transitions.items():
            self.transitions.labels(source.value, target, before.value, after.value).inc(count)
        for result_key, count in results.items():
            self.ci_results.labels(*result_key).inc(count)
        if transitions:
            self.registry.changed(self.transitions)
        if results:
            self.registry.changed(self.ci_results)

    def poll_succeeded(self, source: Source, target: str, seconds: float, now: float) -> None:
        self.polls.labels(source.value, target).inc()
        self.poll_duration.labels(source.value, target).observe(seconds)
        self.target_up.labels(source.value, target).set(1)
        self.last_success.labels(source.value, target).set(now)
        self.registry.changed(self.polls, self.poll_duration, self.target_up,
                              self.last_success)

    def poll_failed(self, source: Source, target: str, reason: str, seconds: float) -> None:
        self.polls.labels(source.value, target).inc()
        self.poll_duration.labels(source.value, target).observe(seconds)
        self.poll_errors.labels(source.value, target, reason).inc()
        self.target_up.labels(source.value, target).set(0)
        self.registry.changed(self.polls, self.poll_duration, self.poll_errors,
                              self.target_up)

    def diagnosis_lookup(self, source: Source, target: str, outcome: str, count: int = 1
                         ) -> None:
        self.diagnosis_lookups.labels(source.value, target, outcome).inc(count)
        self.registry.changed(self.diagnosis_lookups)

    def rate_limit(self, source: Source, target: str, remaining: int) -> None:
        self.rate_limit_remaining.labels(source.value, target).set(remaining)
        self.registry.changed(self.rate_limit_remaining)


LOOKUP_OUTCOMES = ("ok", "error", "skipped_budget")


class TrackerCollector(Collector):
    """Renders the tracker's current state at each scrape (no I/O, no locks needed:
    the tracker is only changed by synchronous calls on the same event loop).

    The per-batch families are built once per change of the tracker (``Tracker.changes``)
    or of ``max_batch_series``, each batch's sample lines once per change of that batch."""

    def __init__(self, tracker: Tracker, *, max_batch_series: int) -> None:
        self.tracker = tracker
        self.max_batch_series = max_batch_series
        self.targets: Targets = []
        self._per_batch: tuple[object, PerBatch] | None = None
        self._selection: tuple[object, tuple[list[TrackedBatch], int]] | None = None
        self._lines: dict[Key, _BatchLines] = {}
        self._encoded: dict[str, tuple[object, bytes]] = {}

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

        per_batch = self.per_batch()
        yield per_batch.state
        yield per_batch.jobs
        yield per_batch.results
        yield GaugeMetricFamily(
            "batchscope_batch_series_dropped",
            "Non-terminal batches without per-batch series because of max_batch_series.",
            value=per_batch.dropped,
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

    def encoded(self, fmt: str) -> bytes:
        """This collector's families in ``fmt``, as prometheus_client's encoder writes
        them; encoded again only after the tracker, the cap or the targets changed."""
        key = (self.tracker.changes, self.max_batch_series, tuple(self.targets))
        cached = self._encoded.get(fmt)
        if cached is not None and cached[0] == key:
            return cached[1]
        body = b"".join(m.rendered(fmt) if isinstance(m, PerBatchFamily) else _encode(m, fmt)
                        for m in self.collect())
        self._encoded[fmt] = (key, body)
        return body

    def per_batch(self) -> PerBatch:
        """The per-batch families as of now (the same objects while nothing changed)."""
        key = (self.tracker.changes, self.max_batch_series)
        if self._per_batch is not None and self._per_batch[0] == key:
            return self._per_batch[1]
        # Which batches are shown changes with states and membership only; a batch's
        # lines are rendered again only when what they show changed.
        tracker = self.tracker
        selection_key = (tracker.version, tracker.state_changes, self.max_batch_series)
        if self._selection is None or self._selection[0] != selection_key:
            self._selection = (selection_key, self._per_batch_selection())
        shown, dropped = self._selection[1]
        cache, lines = self._lines, {}
        for rec in shown:
            entry = cache.get(rec.key)
            if entry is None or not entry.shows(rec):
                entry = _BatchLines(rec)
            lines[rec.key] = entry
        self._lines = lines  # only the batches shown: at most max_batch_series entries
        entries = [lines[rec.key] for rec in shown]
        per_batch = PerBatch(
            state=PerBatchFamily(
                "batchscope_batch_state",
                "1 for each non-terminal batch, labelled with its state.",
                ["source", "target", "batch_id", "batch_type", "state"],
                "".join(e.state for e in entries), partial(_state_samples, shown)),
            jobs=PerBatchFamily(
                "batchscope_batch_jobs", "Job counts of non-terminal engine batches.",
                ["target", "batch_id", "batch_type", "kind"],
                "".join(e.jobs for e in entries), partial(_jobs_samples, shown)),
            results=PerBatchFamily(
                "batchscope_ci_batch_results",
                "Result counts of non-terminal Datadog CI batches.",
                ["target", "batch_id", "status"],
                "".join(e.results for e in entries), partial(_results_samples, shown)),
            dropped=dropped,
        )
        self._per_batch = (key, per_batch)
        return per_batch

    def _per_batch_selection(self) -> tuple[list[TrackedBatch], int]:
        """The non-terminal batches shown, and how many are not: all of them when they fit,
        else the first ``max_batch_series`` by (state rank, state_since), in that order
        (``sorted(...)[:limit]``, taking each state's batches by rank)."""
        limit = self.max_batch_series
        none = State.NONE
        active = [rec for batches in self.tracker.active.values() for rec in batches.values()
                  if rec.state is not none]  # as iter_active() yields them
        if len(active) <= limit:
            return active, 0
        by_state: dict[State, list[TrackedBatch]] = {}
        for rec in active:
            recs = by_state.get(rec.state)
            if recs is None:
                recs = by_state[rec.state] = []
            recs.append(rec)
        chosen: list[TrackedBatch] = []
        for state in sorted(by_state, key=lambda s: _SHOW_FIRST.get(s, 9)):
            if len(chosen) >= limit:
                break
            recs = by_state[state]
            recs.sort(key=_STATE_SINCE)  # stable: ties keep the iteration order
            chosen.extend(recs[:limit - len(chosen)])
        return chosen, len(active) - limit


_STATE_SINCE: Final = attrgetter("state_since")


# --------------------------------------------------------------------------- exposition

# prometheus_client's own helpers, typed (the library leaves them untyped).
_go_float: Final = cast(Callable[[float], str], floatToGoString)
_openmetrics_latest: Final = cast(Callable[[Any], bytes], openmetrics_format.generate_latest)

TEXT: Final = "text"
OPENMETRICS: Final = "openmetrics"
_EOF: Final = b"# EOF\n"


def _label_value(value: str) -> str:
    """A label value as both of prometheus_client's encoders escape it."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


class _BatchLines:
    """One batch's sample lines in the three per-batch families, with what they show.

    A gauge sample line is the same in both formats: name, labels sorted by name, values
    escaped, the value as Go prints a float."""

    __slots__ = ("counts", "jobs", "jobs_counts", "rec", "results", "state", "state_value")

    def __init__(self, rec: TrackedBatch) -> None:
        self.rec = rec
        self.state_value = rec.state
        self.jobs_counts = rec.jobs
        self.counts = rec.result_counts
        batch_id, batch_type = _label_value(rec.batch_id), _label_value(rec.batch_type)
        target = _label_value(rec.target)
        self.state = (f'batchscope_batch_state{{batch_id="{batch_id}",'
                      f'batch_type="{batch_type}",source="{_label_value(rec.source.value)}",'
                      f'state="{_label_value(rec.state.value)}",target="{target}"}} 1.0\n')
        self.jobs = "" if rec.jobs is None else "".join(
            f'batchscope_batch_jobs{{batch_id="{batch_id}",batch_type="{batch_type}",'
            f'kind="{kind}",target="{target}"}} {_go_float(value)}\n'
            for kind, value in rec.jobs.by_kind())
        self.results = "" if rec.result_counts is None else "".join(
            f'batchscope_ci_batch_results{{batch_id="{batch_id}",status="{status}",'
            f'target="{target}"}} {_go_float(value)}\n'
            for status, value in _result_values(rec.result_counts))

    def shows(self, rec: TrackedBatch) -> bool:
        """Whether these lines are still the batch's (batch_type and ids never change)."""
        return (self.rec is rec and self.state_value is rec.state
                and _same(self.jobs_counts, rec.jobs) and _same(self.counts, rec.result_counts))


def _same(a: JobCounts | ResultCounts | None, b: JobCounts | ResultCounts | None) -> bool:
    return a is b or a == b


def _result_values(c: ResultCounts) -> tuple[tuple[str, int], ...]:
    skipped = c.total - c.passed - c.failed - c.in_progress
    return (("passed", c.passed), ("failed", c.failed), ("in_progress", c.in_progress),
            ("skipped", skipped))


def _state_samples(shown: list[TrackedBatch]) -> list[Sample]:
    return [Sample("batchscope_batch_state",
                   {"source": r.source.value, "target": r.target, "batch_id": r.batch_id,
                    "batch_type": r.batch_type, "state": r.state.value}, 1, None)
            for r in shown]


def _jobs_samples(shown: list[TrackedBatch]) -> list[Sample]:
    return [Sample("batchscope_batch_jobs",
                   {"target": r.target, "batch_id": r.batch_id, "batch_type": r.batch_type,
                    "kind": kind}, value, None)
            for r in shown if r.jobs is not None for kind, value in r.jobs.by_kind()]


def _results_samples(shown: list[TrackedBatch]) -> list[Sample]:
    return [Sample("batchscope_ci_batch_results",
                   {"target": r.target, "batch_id": r.batch_id, "status": status}, value, None)
            for r in shown if r.result_counts is not None
            for status, value in _result_values(r.result_counts)]


class _Only:
    """A collector of one metric family, to encode it alone."""

    def __init__(self, metric: Metric) -> None:
        self._metric = metric

    def collect(self) -> Iterator[Metric]:
        yield self._metric


def _encode(metric: Metric, fmt: str) -> bytes:
    """One family as prometheus_client's encoder of ``fmt`` writes it (each family's text
    is independent of the others'; OpenMetrics ends the whole exposition with # EOF)."""
    if fmt == TEXT:
        return text_format.generate_latest(_Only(metric))
    return _openmetrics_latest(_Only(metric))[:-len(_EOF)]


_HEADERS: dict[tuple[str, str], bytes] = {}


class PerBatchFamily(GaugeMetricFamily):
    """A per-batch gauge family as of one state of the tracker.

    :meth:`rendered` is its exposition (the header as prometheus_client writes it, then the
    sample lines rendered with the batches); ``samples``, which prometheus_client's
    encoders read, are built only when one reads them."""

    def __init__(self, name: str, documentation: str, labels: list[str], body: str,
                 build: Callable[[], list[Sample]]) -> None:
        super().__init__(name, documentation, labels=labels)
        del self.samples  # built by __getattr__ when asked for
        self._body = body.encode()
        self._build = build
        self._labels = labels

    def __getattr__(self, name: str) -> Any:
        if name == "samples":
            samples = self._build()
            self.samples = samples
            return samples
        raise AttributeError(name)

    def rendered(self, fmt: str) -> bytes:
        header = _HEADERS.get((self.name, fmt))
        if header is None:
            empty = GaugeMetricFamily(self.name, self.documentation, labels=self._labels)
            header = _HEADERS[(self.name, fmt)] = _encode(empty, fmt)
        return header + self._body


class PerBatch:
    """The per-batch families and the number of batches the cap left out."""

    __slots__ = ("dropped", "jobs", "results", "state")

    def __init__(self, *, state: PerBatchFamily, jobs: PerBatchFamily,
                 results: PerBatchFamily, dropped: int) -> None:
        self.state, self.jobs, self.results, self.dropped = state, jobs, results, dropped


def _fast_format(encoder: Callable[..., bytes]) -> str | None:
    """Which format ``encoder`` (from prometheus_client's ``choose_encoder``) writes, when
    it is one :func:`render` writes the same: the text format, or OpenMetrics 1.0.0, with
    the default (underscores) escaping of names. None for any other."""
    if encoder is text_format.generate_latest:
        return TEXT
    if not isinstance(encoder, partial) or encoder.args:
        return None
    keywords = encoder.keywords
    if keywords.get("escaping") != openmetrics_format.UNDERSCORES:
        return None
    if encoder.func is text_format.generate_latest and set(keywords) == {"escaping"}:
        return TEXT
    if (encoder.func is openmetrics_format.generate_latest
            and set(keywords) == {"escaping", "version"} and keywords["version"] == "1.0.0"):
        return OPENMETRICS
    return None


class MetricsRegistry(CollectorRegistry):
    """prometheus_client's registry, which also keeps each family's encoded exposition.

    It knows its collectors in order (the order ``collect()`` follows). For the ones it
    follows (:meth:`follow`), every change is told with :meth:`changed` (``Metrics`` does,
    in the methods that change them), so their exposition is encoded again only after a change;
    a :class:`TrackerCollector` keeps its own by the tracker's changes; any other collector
    is encoded at every scrape."""

    def __init__(self) -> None:
        super().__init__(auto_describe=True)
        self.collectors: list[Collector] = []
        self._versions: dict[Collector, int] = {}
        self._encoded: dict[tuple[Collector, str], tuple[int, bytes]] = {}

    def register(self, collector: Collector) -> None:
        super().register(collector)
        self.collectors.append(collector)

    def unregister(self, collector: Collector) -> None:
        super().unregister(collector)
        self.collectors.remove(collector)
        self._versions.pop(collector, None)
        for fmt in (TEXT, OPENMETRICS):
            self._encoded.pop((collector, fmt), None)

    def follow(self, collector: Collector) -> None:
        """``collector`` changes only with a :meth:`changed` call naming it."""
        self._versions[collector] = 0

    def changed(self, *collectors: Collector) -> None:
        versions = self._versions
        for collector in collectors:
            versions[collector] += 1

    def encoded(self, collector: Collector, fmt: str) -> bytes:
        """``collector``'s families in ``fmt``, as prometheus_client's encoder writes them."""
        if isinstance(collector, TrackerCollector):
            return collector.encoded(fmt)
        version = self._versions.get(collector)
        if version is not None:
            cached = self._encoded.get((collector, fmt))
            if cached is not None and cached[0] == version:
                return cached[1]
        body = b"".join(_encode(metric, fmt) for metric in collector.collect())
        if version is not None:
            self._encoded[(collector, fmt)] = (version, body)
        return body


def render(registry: CollectorRegistry, fmt: str) -> bytes:
    """The registry's exposition in ``fmt`` (:data:`TEXT` or :data:`OPENMETRICS`), the same
    bytes as prometheus_client's encoder: of a :class:`MetricsRegistry`, each family as
    encoded after its last change; of another registry, per-batch families as rendered
    and the others through the encoder."""
    if isinstance(registry, MetricsRegistry):
        parts = [registry.encoded(collector, fmt) for collector in registry.collectors]
    else:
        parts = [metric.rendered(fmt) if isinstance(metric, PerBatchFamily)
                 else _encode(metric, fmt) for metric in registry.collect()]
    if fmt == OPENMETRICS:
        parts.append(_EOF)
    return b"".join(parts)


def exposition(registry: CollectorRegistry, accept: str,
               names: list[str] | None = None) -> tuple[bytes, str]:
    """The body and content type ``GET /metrics`` answers for an ``Accept`` header (and
    ``name[]`` filter), as prometheus_client's handler would."""
    encoder, content_type = text_format.choose_encoder(accept)
    fmt = _fast_format(encoder)
    if names:
        return encoder(registry.restricted_registry(names)), content_type
    if fmt is None:
        return encoder(registry), content_type
    return render(registry, fmt), content_type


def metrics_handler(registry: CollectorRegistry) -> Handler:
    """``GET /metrics``: prometheus_client's aiohttp handler, with :func:`exposition`."""

    async def handler(request: web.Request) -> web.Response:
        accept = ",".join(request.headers.getall(hdrs.ACCEPT, []))
        body, content_type = exposition(registry, accept, request.query.getall("name[]", []))
        response = web.Response(status=200, headers=[("Content-Type", content_type)],
                                body=body)
        response.enable_compression()
        return response

    return handler
