"""Soak run: the real daemon, polling every 0.05 s, under a continuous churn of batches.

A script, not a test. The daemon runs in this process (HTTP server, poll loops, SQLite state
file, JSON logs rendered to /dev/null) against the built-in simulator on loopback. A driver
creates engine and Datadog CI batches all the time and walks them to every end (passed,
failed, cancelled, vanished, stalled, created-and-finished between polls, unknown statuses)
with a short retention (5 s), so terminal batches are forgotten continuously. Polling 200x
faster than the default 10 s compresses hours of production polling into minutes.

Every report interval it prints the process RSS (``VmRSS`` from /proc/self/status), the events
emitted, tracked / in-flight batches, the event ring buffer, the engine poller's history
window, the state file (+WAL) size, the /metrics size, asyncio tasks and Python objects (and
the memory Python allocated, ``py_mb``, when run with ``PYTHONTRACEMALLOC=1``); at
the end a verdict compares the middle and end figures: nothing may grow without bound.

    PYTHONPATH=daemon python tests/bench/soak.py               # 120 s
    PYTHONPATH=daemon python tests/bench/soak.py --minutes 30  # 30 minutes (~100 h at 10 s)

The fakes are pruned as a real engine / Datadog would be (history cleanup, old CI batches
deleted, request logs cleared), so the process's memory is the daemon's to explain.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import socket
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from batchscope.runtime.daemon import Daemon
from batchscope.settings import load_settings
from batchscope.simulator.datadog import FakeDatadog
from batchscope.simulator.engine import FakeEngine
from batchscope.simulator.server import RunningSimulator, start_simulator
from batchscope.sinks.logs import configure_logging

API_KEY, APP_KEY, TOKEN = "soak-api-key", "soak-app-key", "soak-token"
TESTS = [{"test_public_id": f"tst-{i:03d}", "test_name": f"Test {i}", "test_type": "api",
          "location": "aws:eu-central-1", "execution_rule": "blocking"} for i in range(3)]


def vm_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Churn:
    """Creates and ends batches on the fakes; prunes what a real upstream would clean up."""

    engine: FakeEngine
    datadog: FakeDatadog
    http: aiohttp.ClientSession
    daemon_url: str
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    running: dict[str, str] = field(default_factory=dict)  # engine batch id -> script
    ended: dict[str, float] = field(default_factory=dict)  # engine id -> end (for cleanup)
    ci_open: dict[str, str] = field(default_factory=dict)  # CI batch id -> script
    ci_done: dict[str, float] = field(default_factory=dict)
    created: int = 0
    ci_created: int = 0

    ENGINE_SCRIPTS = ("pass", "pass", "fail-then-pass", "cancel", "suspend-cancel", "vanish",
                      "stall-then-pass", "instant")
    CI_SCRIPTS = ("pass", "pass", "fail", "retry-pass", "skip", "gone", "odd-then-pass")

    async def tick(self, now: float) -> None:
        for _ in range(2):
            self.new_engine_batch(now)
        for batch_id, script in list(self.running.items()):
            self.step_engine(batch_id, script, now)
        if self.rng.random() < 0.5:
            await self.new_ci_batch()
        for batch_id, script in list(self.ci_open.items()):
            self.step_ci(batch_id, script, now)
        self.prune(now)

    def new_engine_batch(self, now: float) -> None:
        script = self.rng.choice(self.ENGINE_SCRIPTS)
        batch_id = self.engine.create_batch(self.rng.choice(("instance-migration",
                                                             "instance-deletion")),
                                            total_jobs=20)
        self.created += 1
        if script == "instant":  # started and ended between two polls: the history sweep
            self.engine.finish(batch_id)
            self.ended[batch_id] = now
            return
        self.running[batch_id] = script

    def step_engine(self, batch_id: str, script: str, now: float) -> None:
        eng, rng = self.engine, self.rng
        batch = eng.batch(batch_id)
        age = now - batch.start_time
        if script == "stall-then-pass" and age < 4.0:
            return  # no progress: stalled after stall_after (2 s)
        if rng.random() < 0.3:
            return
        if script == "fail-then-pass" and batch.failed_jobs == 0 and batch.completed_jobs == 5:
            eng.fail_jobs(batch_id, 2)
            return
        if script == "fail-then-pass" and batch.failed_jobs and rng.random() < 0.3:
            eng.retry_failed(batch_id)
            return
        if script == "suspend-cancel" and batch.completed_jobs >= 4:
            if not batch.suspended:
                eng.suspend(batch_id)
            elif rng.random() < 0.2:
                self.end_engine(batch_id, now, lambda: eng.delete(batch_id))
            return
        if script == "cancel" and batch.completed_jobs >= 6:
            self.end_engine(batch_id, now, lambda: eng.delete(batch_id))
            return
        if script == "vanish" and batch.completed_jobs >= 6:
            self.end_engine(batch_id, now, lambda: eng.delete(batch_id, cascade=True))
            return
        if batch.pending_jobs + (batch.total_jobs - batch.jobs_created) > 0:
            eng.complete_jobs(batch_id, 2)
        else:
            self.end_engine(batch_id, now, lambda: eng.finish(batch_id))

    def end_engine(self, batch_id: str, now: float, end: Any) -> None:
        end()
        del self.running[batch_id]
        self.ended[batch_id] = now

    async def new_ci_batch(self) -> None:
        script = self.rng.choice(self.CI_SCRIPTS)
        batch_id = self.datadog.create_batch(tests=TESTS, metadata={})
        self.ci_created += 1
        async with self.http.post(f"{self.daemon_url}/api/v1/datadog/batches",
                                  json={"batch_id": batch_id},
                                  headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 201, await resp.text()
        self.ci_open[batch_id] = script

    def step_ci(self, batch_id: str, script: str, now: float) -> None:
        dd, rng = self.datadog, self.rng
        age = now - dd.batch(batch_id).created_at
        if script == "gone" and age > 0.5:
            dd.delete(batch_id)  # 404 past not_found_grace: vanished
            self.ci_done[batch_id] = now
            del self.ci_open[batch_id]
            return
        if script == "odd-then-pass" and 0.3 < age < 1.0:
            dd.set_status(batch_id, "queued_for_rerun")
            return
        if age < 1.0 or rng.random() < 0.4:
            return
        test = rng.choice(TESTS)["test_public_id"]
        if script == "retry-pass" and rng.random() < 0.3:
            dd.set_result(batch_id, test, new_attempt=True)
            return
        outcome = {"fail": "failed", "skip": "skipped"}.get(script, "passed")
        dd.finish(batch_id, outcome)
        self.ci_done[batch_id] = now
        del self.ci_open[batch_id]

    def prune(self, now: float) -> None:
        """History cleanup and deleted CI batches, 30 s after the end; request logs."""
        for batch_id, ended in list(self.ended.items()):
            if now - ended > 30:
                self.engine.remove_history(batch_id)
                del self.ended[batch_id]
        # the fake keeps user-operation entries of removed batches; a real history cleanup
        # removes them with the batch
        keep = set(self.running) | set(self.ended)
        self.engine._operations = [op for op in self.engine._operations if op.batch_id in keep]
        for batch_id, ended in list(self.ci_done.items()):
            if now - ended > 30:
                self.datadog.delete(batch_id)
                del self.ci_done[batch_id]
        self.engine.clear_requests()
        self.datadog.clear_requests()
        # the fake memoises up to 100,000 formatted dates; every batch brings new ones
        self.engine._format_date._cache.clear()


def file_size(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


async def sample(daemon: Daemon, http: aiohttp.ClientSession, state: Path, started: float,
                 churn: Churn) -> dict[str, Any]:
    async with http.get(f"http://127.0.0.1:{daemon.http_port}/metrics") as resp:
        metrics = await resp.read()
    gc.collect()
    cursors = [daemon.core.cursor(t.name) for t in daemon.settings.engines]
    recent = sum(len(c.recent) for c in cursors if c is not None)
    return {
        "t": time.monotonic() - started,
        "rss_mb": vm_rss_mb(),
        # Python-allocated memory, when run with PYTHONTRACEMALLOC=1 (slower)
        "py_mb": tracemalloc.get_traced_memory()[0] / 2**20 if tracemalloc.is_tracing()
        else float("nan"),
        "events": daemon.tracker.seq,
        "tracked": len(daemon.tracker),
        "in_flight": sum(1 for _ in daemon.tracker.iter_active()),
        "buffer": len(daemon.events),
        "recent": recent,
        "state_kb": file_size(state) / 1024,
        "metrics_kb": len(metrics) / 1024,
        "tasks": len(asyncio.all_tasks()),
        "objects": len(gc.get_objects()),
        "upstream": len(churn.engine.runtime_ids()) + len(churn.engine.history_ids())
        + len(churn.datadog.batch_ids()),
    }


COLUMNS = ("t", "rss_mb", "py_mb", "events", "tracked", "in_flight", "buffer", "recent", "state_kb",
           "metrics_kb", "tasks", "objects", "upstream")


def row(s: dict[str, Any], label: str = "") -> str:
    cells = [f"{s[c]:>9.1f}" if isinstance(s[c], float) else f"{s[c]:>9}" for c in COLUMNS]
    return " ".join(cells) + (f"  {label}" if label else "")


async def soak(seconds: float, report_every: float) -> int:
    # every event is rendered as a JSON line, as in production, then thrown away
    configure_logging(log_format="json", level="info", stream=DEVNULL,
                      secrets=[API_KEY, APP_KEY, TOKEN])
    tmp = Path(tempfile.mkdtemp(prefix="batchscope-soak-"))
    state = tmp / "state.db"
    sim: RunningSimulator = await start_simulator(
        engine=FakeEngine(), datadog=FakeDatadog(api_key=API_KEY, app_key=APP_KEY))
    settings = load_settings(None, environ={}, overrides={
        "state_path": str(state), "http.host": "127.0.0.1", "http.port": free_port(),
        "http.api_token": TOKEN, "retention": 5, "shutdown_timeout": 2,
        "engines": [{"name": "prod", "url": sim.engine_url, "poll_interval": 0.05,
                     "stall_after": 2, "page_size": 100, "request_timeout": 2}],
        "datadog": [{"name": "ci", "url": sim.datadog_url, "api_key": API_KEY,
                     "app_key": APP_KEY, "poll_interval": 0.05, "not_found_grace": 1,
                     "stall_after": 30, "request_timeout": 2}],
    })
    daemon = Daemon(settings)
    await daemon.start()
    http = aiohttp.ClientSession()
    churn = Churn(sim.engine, sim.datadog, http, f"http://127.0.0.1:{daemon.http_port}")
    samples: list[dict[str, Any]] = []  # start, middle, end
    periodic: list[dict[str, Any]] = []
    try:
        await daemon.wait_ready(10)
        started = time.monotonic()
        print(f"soak: {seconds:.0f} s, polling every 0.05 s, retention 5 s, state {state}")
        print(" ".join(f"{c:>9}" for c in COLUMNS))
        samples.append(await sample(daemon, http, state, started, churn))
        print(row(samples[-1], "start"), flush=True)
        next_report = started + report_every
        middle_done = False
        while (now := time.monotonic()) - started < seconds:
            await churn.tick(time.time())
            if not middle_done and now - started >= seconds / 2:
                samples.append(await sample(daemon, http, state, started, churn))
                print(row(samples[-1], "middle"), flush=True)
                middle_done = True
            elif now >= next_report:
                periodic.append(await sample(daemon, http, state, started, churn))
                print(row(periodic[-1]), flush=True)
                next_report += report_every
            await asyncio.sleep(0.1)
        samples.append(await sample(daemon, http, state, started, churn))
        print(row(samples[-1], "end"), flush=True)
    finally:
        await http.close()
        await daemon.stop()
        await sim.close()

    _, middle, end = samples
    print(f"engine batches created {churn.created}, CI batches created {churn.ci_created}, "
          f"events {end['events']}, events/s {end['events'] / end['t']:.0f}")
    growth = end["rss_mb"] - middle["rss_mb"]
    # Warm-up fills the event ring buffer (10,000 events, ~2 min here) and the engine poller's
    # history window (SWEEP_OVERLAP, 120 s of endings); after that nothing should grow.
    late = [p for p in periodic if p["t"] >= 2 * end["t"] / 3] or [end]
    slope = (end["rss_mb"] - late[0]["rss_mb"]) / max(1e-9, end["t"] - late[0]["t"]) * 60
    print(f"rss start {samples[0]['rss_mb']:.1f} MiB, middle {middle['rss_mb']:.1f}, "
          f"end {end['rss_mb']:.1f}; last third {slope:+.2f} MiB/min")
    verdicts = {
        "rss (end - middle) < 15 MiB": growth < 15,
        "rss over the last third < 2 MiB/min": slope < 2,
        "tracked batches bounded (end <= 2x middle + 50)": end["tracked"]
        <= 2 * middle["tracked"] + 50,
        "event buffer at most its capacity (10,000)": end["buffer"] <= 10_000,
        "state file bounded (end <= 2x middle + 512 KiB)": end["state_kb"]
        <= 2 * middle["state_kb"] + 512,
        "tasks constant": end["tasks"] <= middle["tasks"] + 5,
    }
    for name, ok in verdicts.items():
        print(f"{'ok ' if ok else 'FAIL'} {name}")
    return 0 if all(verdicts.values()) else 1


DEVNULL = open(os.devnull, "w")  # noqa: SIM115 - for the whole run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="batchscope soak run (see the docstring)")
    parser.add_argument("--seconds", type=float, default=120.0, help="duration (default 120)")
    parser.add_argument("--minutes", type=float, help="duration in minutes (overrides --seconds)")
    parser.add_argument("--report-every", type=float, default=None,
                        help="seconds between report lines (default: duration / 12)")
    args = parser.parse_args(argv)
    seconds = args.minutes * 60 if args.minutes is not None else args.seconds
    report = args.report_every or max(5.0, seconds / 12)
    return asyncio.run(soak(seconds, report))


if __name__ == "__main__":
    sys.exit(main())
