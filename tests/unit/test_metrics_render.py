"""``GET /metrics`` renders the per-batch series once per tracker change (issue 12), and
writes exactly what prometheus_client's encoders write.

The per-batch families (``batchscope_batch_state``, ``batchscope_batch_jobs``,
``batchscope_ci_batch_results``) are rendered when the tracker changed, and kept; the
exposition serves them as rendered and every other family through prometheus_client. These
tests compare the result with prometheus_client's own encoders byte for byte, over random
trackers changed in random ways between scrapes (a stale cache would show the old value),
with label values that need escaping, for every ``max_batch_series``; and serve it over real
HTTP beside prometheus_client's own aiohttp handler.
"""

from __future__ import annotations

import gzip
import heapq
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

from batchscope.model import STATES, CiResult, DatadogBatchSnapshot, Source, State
from batchscope.sinks.metrics import (
    OPENMETRICS,
    TEXT,
    Metrics,
    exposition,
    metrics_handler,
    render,
)
from batchscope.tracker import Tracker
from tracker_builders import eng

ENGINE, DATADOG = "prod", 'ci "eu"\\west'
STALL = 100.0

# Label values as upstreams may send them: quotes, backslashes, newlines, any unicode.
label_text = st.text(
    alphabet=st.sampled_from(['a', 'Z', '0', '-', '"', '\\', '\n', ' ', 'é', '✓', '{', '}', '=']),
    min_size=1, max_size=8)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("engine"), label_text, label_text, st.integers(0, 12),
                  st.integers(0, 3), st.booleans()),
        st.tuples(st.just("watch"), label_text),
        st.tuples(st.just("ci"), st.integers(0, 9), st.sampled_from(
            ("in_progress", "passed", "failed")), st.integers(0, 3)),
        st.tuples(st.just("unwatch"), st.integers(0, 9)),
        st.tuples(st.just("end"), st.integers(0, 9)),
        st.tuples(st.just("cap"), st.sampled_from((0, 1, 3, 500))),
        st.tuples(st.just("advance"), st.floats(0, 2 * STALL)),
        st.tuples(st.just("poll"), st.sampled_from((ENGINE, DATADOG)), st.booleans(),
                  st.floats(0, 30)),
        st.tuples(st.just("lookup"), st.sampled_from(("ok", "error", "skipped_budget")),
                  st.integers(1, 3)),
        st.tuples(st.just("rate_limit"), st.integers(0, 100)),
        st.tuples(st.just("retarget"), st.booleans()),
        st.just(("scrape",)), st.just(("scrape",)),
    ),
    min_size=5, max_size=40,
)


def stock(metrics: Metrics, fmt: str) -> bytes:
    """prometheus_client's own encoder on the daemon's registry (the per-batch families
    come from the same collector: this checks the encoding, not what it shows)."""
    encode = generate_latest if fmt == TEXT else openmetrics_latest
    body: bytes = encode(metrics.registry)
    return body


class Original:
    """What the tracker's families were before any cache: built from the tracker at each
    scrape, the first max_batch_series batches chosen with heapq.nsmallest."""

    def __init__(self, metrics: Metrics) -> None:
        self.tracker = metrics.collector.tracker
        self.targets = list(metrics.collector.targets)
        self.limit = metrics.collector.max_batch_series

    def collect(self) -> Iterator[Metric]:
        tracker = self.tracker
        batches = GaugeMetricFamily("batchscope_batches", "Tracked batches per state.",
                                    labels=["source", "target", "state"])
        for source, target in self.targets:
            for state in STATES:
                batches.add_metric([source.value, target, state.value],
                                   tracker.counts[(source, target, state)])
        yield batches
        active = [rec for rec in tracker.iter_active() if rec.state is not State.NONE]
        shown, dropped = active, 0
        if len(active) > self.limit:
            rank = {State.FAILED: 0, State.STALLED: 1, State.SUSPENDED: 2,
                    State.IN_PROGRESS: 3, State.NONE: 4}
            shown = heapq.nsmallest(self.limit, active,
                                    key=lambda rec: (rank.get(rec.state, 9), rec.state_since))
            dropped = len(active) - self.limit
        state_family = GaugeMetricFamily(
            "batchscope_batch_state", "1 for each non-terminal batch, labelled with its state.",
            labels=["source", "target", "batch_id", "batch_type", "state"])
        jobs_family = GaugeMetricFamily(
            "batchscope_batch_jobs", "Job counts of non-terminal engine batches.",
            labels=["target", "batch_id", "batch_type", "kind"])
        results_family = GaugeMetricFamily(
            "batchscope_ci_batch_results", "Result counts of non-terminal Datadog CI batches.",
            labels=["target", "batch_id", "status"])
        for rec in shown:
            state_family.add_metric(
                [rec.source.value, rec.target, rec.batch_id, rec.batch_type, rec.state.value], 1)
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
            value=dropped)
        yield GaugeMetricFamily(
            "batchscope_tracked_batches",
            "Batches held by the tracker (terminal ones included).", value=len(tracker))
        yield CounterMetricFamily(
            "batchscope_batch_evictions",
            "Terminal batches forgotten early to stay within max_tracked_batches.",
            value=tracker.evictions)


def assert_exposition(metrics: Metrics) -> None:
    """Both formats: the whole exposition is prometheus_client's encoding of the registry,
    and the tracker's part is what the uncached original collector shows now."""
    for fmt, encode in ((TEXT, generate_latest), (OPENMETRICS, openmetrics_latest)):
        body = render(metrics.registry, fmt)
        assert body == stock(metrics, fmt)
        original = CollectorRegistry()
        original.register(Original(metrics))
        want: bytes = encode(original)
        assert metrics.collector.encoded(fmt) + (b"# EOF\n" if fmt == OPENMETRICS else b"") \
            == want


def metrics_for(tracker: Tracker, cap: int) -> Metrics:
    metrics = Metrics(tracker, max_batch_series=cap)
    metrics.add_target(Source.ENGINE, ENGINE)
    metrics.add_target(Source.DATADOG, DATADOG)
    return metrics


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_exposition_is_prometheus_clients_after_every_change(operations: list[Any]) -> None:
    """Engine and CI batches appear, progress, fail, stall, end and go; the cap changes;
    at every scrape both formats are byte for byte prometheus_client's output."""
    tracker = Tracker(retention=1e9, max_tracked=1000)
    metrics = metrics_for(tracker, 3)
    now = 1_000.0
    engine_rows: dict[str, Any] = {}
    watched: list[str] = []
    for op in operations:
        kind = op[0]
        if kind == "engine":
            _, batch_id, batch_type, completed, failed, suspended = op
            engine_rows[batch_id] = replace(
                eng(batch_id, completed=completed, total=12, failed=failed,
                    suspended=suspended), batch_type=batch_type)
            metrics.observe(tracker.engine_runtime(ENGINE, list(engine_rows.values()), now,
                                                   STALL).events)
        elif kind == "end" and engine_rows:
            gone = sorted(engine_rows)[op[1] % len(engine_rows)]
            del engine_rows[gone]
            metrics.observe(tracker.engine_resolve(ENGINE, gone, None, now).events)
        elif kind == "watch":
            tracker.datadog_watch(DATADOG, op[1], now)
            watched.append(op[1])
        elif kind == "ci" and watched:
            batch_id = watched[op[1] % len(watched)]
            results = tuple(CiResult(test_public_id=f"t-{i}", status=op[2],
                                     location="loc", device="dev", result_id=f"r{i}")
                            for i in range(op[3]))
            metrics.observe(tracker.datadog_snapshot(
                DATADOG, DatadogBatchSnapshot(batch_id, op[2], results), now, STALL).events)
        elif kind == "unwatch" and watched:
            tracker.datadog_unwatch(DATADOG, watched.pop(op[1] % len(watched)))
        elif kind == "cap":
            metrics.collector.max_batch_series = op[1]
        elif kind == "poll":
            source = Source.ENGINE if op[1] == ENGINE else Source.DATADOG
            if op[2]:
                metrics.poll_succeeded(source, op[1], op[3], now)
            else:
                metrics.poll_failed(source, op[1], "http_5xx", op[3])
        elif kind == "lookup":
            metrics.diagnosis_lookup(Source.ENGINE, ENGINE, op[1], op[2])
        elif kind == "rate_limit":
            metrics.rate_limit(Source.DATADOG, DATADOG, op[1])
        elif kind == "retarget":  # a reload drops the Datadog target, or brings it back
            if op[1]:
                metrics.remove_target(Source.DATADOG, DATADOG)
            elif (Source.DATADOG, DATADOG) not in metrics.collector.targets:
                metrics.add_target(Source.DATADOG, DATADOG)
        elif kind == "advance":
            now += op[1]
            metrics.observe(tracker.engine_runtime(ENGINE, list(engine_rows.values()), now,
                                                   STALL).events)
        else:
            assert_exposition(metrics)
    assert_exposition(metrics)


def test_per_batch_series_are_rendered_once_per_change() -> None:
    """Scrapes with no change in between get the very same rendered families; a change of
    one batch renders again, and shows the new value; the cap is part of what is cached."""
    tracker = Tracker(retention=3600, max_tracked=100)
    metrics = metrics_for(tracker, 500)
    rows = [eng(f"b{i}", completed=i) for i in range(5)]
    tracker.engine_runtime(ENGINE, rows, 1_000.0, STALL)
    collector = metrics.collector
    first = collector.per_batch()
    render(metrics.registry, TEXT)
    assert collector.per_batch() is first
    tracker.engine_runtime(ENGINE, rows, 1_001.0, STALL)  # nothing changed upstream
    assert collector.per_batch() is first
    rows[2] = eng("b2", completed=7)
    tracker.engine_runtime(ENGINE, rows, 1_002.0, STALL)
    second = collector.per_batch()
    assert second is not first
    text = render(metrics.registry, TEXT).decode()
    assert ('batchscope_batch_jobs{batch_id="b2",batch_type="instance-migration",'
            'kind="completed",target="prod"} 7.0') in text
    collector.max_batch_series = 2
    assert collector.per_batch() is not second and collector.per_batch().dropped == 3
    assert_exposition(metrics)


def test_the_cap_shows_failed_then_stalled_then_oldest_first() -> None:
    """Over the cap, batches needing attention come first, oldest state first; the rest
    are counted in batchscope_batch_series_dropped."""
    tracker = Tracker(retention=3600, max_tracked=100)
    metrics = metrics_for(tracker, 3)
    tracker.engine_runtime(ENGINE, [eng("ok-old")], 1_000.0, STALL)
    tracker.engine_runtime(ENGINE, [eng("ok-old"), eng("ok-new"), eng("bad", failed=1),
                                    eng("held", suspended=True)], 1_010.0, STALL)
    text = render(metrics.registry, TEXT).decode()
    shown = [line.split('batch_id="')[1].split('"')[0] for line in text.splitlines()
             if line.startswith("batchscope_batch_state{")]
    assert shown == ["bad", "held", "ok-old"]
    assert "batchscope_batch_series_dropped 1.0" in text
    assert_exposition(metrics)
    # A state change alone (no batch added or gone) reorders what the cap shows.
    tracker.engine_runtime(ENGINE, [eng("ok-old"), eng("ok-new", failed=2), eng("bad"),
                                    eng("held", suspended=True)], 1_020.0, STALL)
    assert_exposition(metrics)
    tracker.engine_resolve(ENGINE, "ok-new", None, 1_030.0)
    assert_exposition(metrics)


async def serve(aiohttp_client: Any, handler: Any) -> TestClient[Any, Any]:
    app = web.Application()
    app.router.add_get("/metrics", handler)
    client: TestClient[Any, Any] = await aiohttp_client(app)
    return client


async def test_get_metrics_answers_as_prometheus_clients_handler(aiohttp_client: Any) -> None:
    """Over real HTTP, for Prometheus' Accept headers (text, OpenMetrics, none), a name[]
    filter and a non-default escaping: the same status, content type and body as
    prometheus_client's aiohttp handler, compressed when asked."""
    tracker = Tracker(retention=3600, max_tracked=100)
    metrics = metrics_for(tracker, 500)
    tracker.engine_runtime(ENGINE, [eng("b1", completed=3), eng("b2", failed=1)], 1.0, STALL)
    ours = await serve(aiohttp_client, metrics_handler(metrics.registry))
    theirs = await serve(aiohttp_client, make_aiohttp_handler(metrics.registry))
    for accept, query in (
        ("text/plain;version=0.0.4;q=0.5,*/*;q=0.1", ""),
        ("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5", ""),
        ("application/openmetrics-text; version=1.0.0; escaping=dots", ""),
        ("", ""),
        ("text/plain", "?name[]=batchscope_batch_state&name[]=batchscope_batches"),
    ):
        got = await ours.get("/metrics" + query, headers={"Accept": accept})
        want = await theirs.get("/metrics" + query, headers={"Accept": accept})
        assert got.status == want.status == 200
        assert got.headers["Content-Type"] == want.headers["Content-Type"]
        assert await got.read() == await want.read()
    got = await ours.get("/metrics", headers={"Accept-Encoding": "gzip"},
                         auto_decompress=False)
    assert got.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(await got.read()) == stock(metrics, TEXT)


def test_exposition_picks_the_format_prometheus_client_would() -> None:
    """The content type follows prometheus_client's negotiation; the fast path serves the
    default escaping only and answers the same bytes as the encoder it stands for."""
    tracker = Tracker(retention=3600, max_tracked=100)
    metrics = metrics_for(tracker, 500)
    tracker.engine_runtime(ENGINE, [eng('we"ird\\id\n')], 1.0, STALL)
    body, content_type = exposition(metrics.registry, "application/openmetrics-text")
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert body == stock(metrics, OPENMETRICS) and body.endswith(b"# EOF\n")
    assert b'batch_id="we\\"ird\\\\id\\n"' in body
    body, content_type = exposition(metrics.registry, "text/plain")
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert body == stock(metrics, TEXT)


def test_a_collector_registered_by_others_is_encoded_at_every_scrape() -> None:
    """A collector the daemon does not follow (registered on the registry by anyone) shows
    its current values at every scrape, in its place."""
    tracker = Tracker(retention=3600, max_tracked=100)
    metrics = metrics_for(tracker, 500)
    value = [1.0]

    class Foreign:
        def collect(self) -> Any:
            yield GaugeMetricFamily("foreign_value", "Changes behind the daemon's back.",
                                    value=value[0])

    foreign = Foreign()
    metrics.registry.register(foreign)
    assert b"foreign_value 1.0" in render(metrics.registry, TEXT)
    value[0] = 2.0
    assert render(metrics.registry, TEXT) == stock(metrics, TEXT)
    assert b"foreign_value 2.0" in render(metrics.registry, OPENMETRICS)
    metrics.registry.unregister(foreign)
    assert b"foreign_value" not in render(metrics.registry, TEXT)
    assert render(metrics.registry, OPENMETRICS) == stock(metrics, OPENMETRICS)
