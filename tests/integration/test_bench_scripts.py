"""The benchmark scripts (tests/bench) still run and still measure what they say.

They are scripts, not tests, and nothing else runs them: a change in the daemon's internals
they drive (the parser's memory, the core, the pollers) could break them unnoticed until the
next performance review. Run here at a tiny scale; no timing is asserted, only that every
phase ran and counted what it had to.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "tests" / "bench"

pytestmark = pytest.mark.slow


def run(script: str, *args: str) -> str:
    """Run a bench script as its README says (``PYTHONPATH=daemon``); its stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHSCOPE_", "DD_"))}
    env["PYTHONPATH"] = str(ROOT / "daemon")
    done = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_bench_runs_every_phase_and_the_latency_phase() -> None:
    """bench.py at a small scale: every phase, with the events and requests it must make
    (each engine batch a first sighting; the floor and a steady cycle read the statistics
    pages and nothing else), the verdicts, and the Datadog latency phase's report."""
    report: dict[str, Any] = json.loads(run(
        "bench.py", "--engine-batches", "300", "--datadog-batches", "20", "--repeat", "1",
        "--render-runs", "1", "--latency-batches", "4", "--latency-time-scale", "0.05",
        "--json"))
    phases = {p["name"]: p for p in report["phases"]}
    assert list(phases) == ["floor", "engine-first", "persist-first", "engine-steady",
                            "persist-steady", "engine-changed", "datadog-first",
                            "datadog-steady", "persist-datadog", "datadog-changed"]
    assert phases["floor"]["engine_paths"] == {"/engine-rest/batch/statistics": 1}
    assert phases["engine-first"]["events"] == 300
    steady = phases["engine-steady"]
    assert steady["events"] == 0
    assert steady["engine_paths"] == {"/engine-rest/batch/statistics": 1,
                                      "/engine-rest/history/batch": 1}
    assert phases["engine-changed"]["events"] > 0
    assert phases["datadog-first"]["events"] >= 20  # each batch, then its results
    assert all(p["cpu_s"] >= 0 for p in phases.values())
    targets = report["targets"]
    assert set(targets) >= {"engine_cycle_cpu_s", "engine_vs_floor", "metrics_render_ms",
                            "peak_rss_mb"}
    assert targets["engine_vs_floor"]["first"] > 0
    latency = report["datadog_latency"]
    for mode in ("fixed", "adaptive"):
        assert latency[mode]["all"]["batches"] == 4
        assert latency[mode]["all"]["requests_per_batch"] > 0


def test_stages_times_every_stage() -> None:
    """stages.py: one line per stage, each a CPU time per row, the reference line too."""
    out = run("stages.py", "--batches", "300", "--runs", "1")
    rows = {line[:30].strip(): line[30:].split() for line in out.splitlines()[1:]}
    assert set(rows) == {"decode pages (orjson)", "decode + parse, first time",
                         "decode + parse, unchanged", "core: first sightings",
                         "log lines (JSON)", "metrics", "event buffer",
                         "reference: least Python", "core: numbering (annotate)"}
    for name, (ms, ms_unit, per_row, unit) in rows.items():
        assert (ms_unit, unit) == ("ms", "us/row"), name
        assert math.isfinite(float(ms)) and float(per_row) >= 0, name
