"""Where an engine first cycle's CPU goes, stage by stage, in microseconds per row.

    PYTHONPATH=daemon python tests/bench/stages.py [--batches 10000] [--runs 7]

``bench.py`` measures whole cycles against the simulator over HTTP; this script takes the same
rows (the simulator's ``/batch/statistics`` rows for ``simproc.populate_engine``'s batches) and
times each stage of a first cycle on its own, in this process, without HTTP: decoding the
pages, parsing the rows (with and without the row memory), the core's first sightings,
numbering, and each sink (log lines rendered to /dev/null with secrets registered, metrics,
the event buffer). Each stage's best of ``--runs`` (process CPU time). A script, not a test.

The last line, ``reference: least Python``, is not batchscope: it is the least any Python
design spends per first sighting after decoding (one object from the row with its two dates,
one event, one JSON line; nothing checked, remembered, indexed, counted or redacted), to
compare the stages with.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from simproc import populate_engine

from batchscope.model import EngineBatchSnapshot, Source
from batchscope.simulator.engine import FakeEngine
from batchscope.sinks.events import EventBuffer
from batchscope.sinks.logs import EventLog, configure_logging
from batchscope.sinks.metrics import Metrics
from batchscope.sources import engine_json
from batchscope.tracker import Outcome
from batchscope.tracker.core import Core, EngineWatch
from batchscope.tracker.observations import RuntimeListed

PAGE_SIZE = 500
TARGET = (Source.ENGINE, "bench")


def statistics_pages(n: int) -> list[bytes]:
    """The JSON pages the simulator would serve for ``n`` populated batches."""
    engine = FakeEngine()
    populate_engine(engine, n, random.Random(1))
    rows = [engine.statistics_row(batch_id) for batch_id in engine.runtime_ids()]
    return [orjson.dumps(rows[i:i + PAGE_SIZE]) for i in range(0, len(rows), PAGE_SIZE)]


def best_of(runs: int, stage: Callable[[], Any]) -> float:
    """The least CPU time of ``runs`` calls (the machine's noise only ever adds)."""
    best = float("inf")
    for _ in range(runs):
        gc.collect()
        start = time.process_time()
        stage()
        best = min(best, time.process_time() - start)
    return best


def annotate_time(first_sightings: Callable[[], tuple[Core, Outcome]]) -> float:
    """CPU time of numbering a first cycle's events (on a fresh core each time)."""
    core, outcome = first_sightings()
    gc.collect()
    start = time.process_time()
    core.annotate(outcome)
    return time.process_time() - start


class _LeastRow:
    """The least a first sighting can be: a few slots filled from the row."""

    __slots__ = ("batch_id", "batch_type", "completed", "execution_start", "failed",
                 "remaining", "start", "suspended", "total")

    def __init__(self, row: dict[str, Any]) -> None:
        get = row.get
        self.batch_id, self.batch_type = get("id"), get("type")
        self.total, self.completed = get("totalJobs"), get("completedJobs")
        self.remaining, self.failed = get("remainingJobs"), get("failedJobs")
        self.suspended = get("suspended")
        start, execution = get("startTime"), get("executionStartTime")
        self.start = None if start is None else datetime.fromisoformat(start).timestamp()
        self.execution_start = (None if execution is None
                                else datetime.fromisoformat(execution).timestamp())


class _LeastEvent:
    __slots__ = ("row", "seq")

    def __init__(self, seq: int, row: _LeastRow) -> None:
        self.seq, self.row = seq, row


def least_python(decoded: list[list[dict[str, Any]]]) -> list[str]:
    """A reference, not batchscope: the least Python any design spends on a first
    sighting, with nothing checked, remembered, indexed, counted or redacted: one object
    from the decoded row (its two dates parsed), one event, one JSON log line."""
    lines, seq, dumps = [], 0, orjson.dumps
    for page in decoded:
        for raw in page:
            row = _LeastRow(raw)
            seq += 1
            event = _LeastEvent(seq, row)
            lines.append(dumps({
                "timestamp": "2026-01-01T00:00:00Z", "level": "info",
                "event": "batch.transition", "seq": event.seq, "source": "engine",
                "target": "bench", "batch_id": row.batch_id, "batch_type": row.batch_type,
                "from_state": "none", "to_state": "in_progress", "total_jobs": row.total,
                "completed_jobs": row.completed, "remaining_jobs": row.remaining,
                "failed_jobs": row.failed}).decode())
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv)
    n, runs = args.batches, args.runs
    pages = statistics_pages(n)

    def parse_all() -> list[EngineBatchSnapshot]:
        rows: list[EngineBatchSnapshot] = []
        for page in pages:
            rows.extend(engine_json.parse_statistics_page(orjson.loads(page))[0])
        return rows

    def parse_first() -> None:
        engine_json._PARSED_ROWS.clear()  # a fresh process has parsed nothing
        parse_all()

    snapshots = parse_all()

    def first_sightings() -> tuple[Core, Outcome]:
        core = Core(retention=3600.0, max_tracked=50_000)
        core.configure([EngineWatch(TARGET[1], 600.0)], time.time())
        return core, core.apply(TARGET, RuntimeListed(rows=snapshots), time.time())

    core, outcome = first_sightings()
    core.annotate(outcome)
    events = outcome.events
    metrics = Metrics(core.tracker, max_batch_series=500)
    buffer = EventBuffer()
    log = EventLog()
    decoded = [orjson.loads(p) for p in pages]
    stages: list[tuple[str, Callable[[], Any]]] = [
        ("decode pages (orjson)", lambda: [orjson.loads(p) for p in pages]),
        ("decode + parse, first time", parse_first),
        ("decode + parse, unchanged", parse_all),
        ("core: first sightings", first_sightings),
        ("log lines (JSON)", lambda: log.events(events)),
        ("metrics", lambda: metrics.observe(events)),
        ("event buffer", lambda: buffer.extend(events)),
        ("reference: least Python", lambda: least_python(decoded)),
    ]
    with open(os.devnull, "w") as devnull:
        configure_logging(log_format="json", level="info", stream=devnull,
                          secrets=["bench-api-key", "bench-app-key", "engine-password"])
        print(f"{n} engine batches, best of {runs} runs (CPU)")
        results = {name: best_of(runs, stage) for name, stage in stages}
        results["core: numbering (annotate)"] = min(annotate_time(first_sightings)
                                                    for _ in range(runs))
    for name, seconds in results.items():
        print(f"{name:30s} {seconds * 1e3:8.1f} ms {seconds / n * 1e6:7.2f} us/row")
    return 0


if __name__ == "__main__":
    sys.exit(main())
