"""The benchmark's upstreams in their own process: the built-in simulator, pre-loaded.

Run by ``bench.py`` as a subprocess so that the benchmark process's CPU time and memory are
the daemon's alone. It serves the fake engine and the fake Datadog API on loopback, creates the
batches, prints one JSON line (URLs, keys, the Datadog batch ids, the control URL) and then
serves a small control API on a third port:

- ``GET  /stats``  -> this process's CPU seconds, peak RSS and the number of upstream requests
  answered since the previous call (the request log is cleared so it cannot grow).
- ``POST /mutate/engine?fraction=0.05&seed=1`` -> change about ``fraction`` of the running
  engine batches (progress, failed jobs, suspend, finish, delete); returns what it did.
- ``POST /mutate/datadog?fraction=0.05&seed=1`` -> change about ``fraction`` of the Datadog
  batches (a result retry or pass, some batches finish passed/failed).

Usage: ``python tests/bench/simproc.py --engine-batches 10000 --datadog-batches 1000``
(with ``PYTHONPATH=daemon``). Stops on SIGTERM/SIGINT or when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import signal
import sys
import time
from collections import Counter
from typing import Any

import orjson
from aiohttp import web

from batchscope.simulator.datadog import FakeDatadog
from batchscope.simulator.engine import FakeEngine
from batchscope.simulator.server import RunningSimulator, start_simulator

API_KEY = "bench-api-key"
APP_KEY = "bench-app-key"
BATCH_TYPES = ("instance-migration", "instance-modification", "instance-deletion",
               "set-job-retries", "process-set-removal-time")


def populate_engine(engine: FakeEngine, n: int, rng: random.Random) -> dict[str, int]:
    """``n`` running batches in mixed states: ~5% with failed jobs, ~3% suspended, ~40% with
    some completed jobs, the rest freshly seeded."""
    done = {"failed": 0, "suspended": 0, "progressed": 0}
    per_type = max(1, n // len(BATCH_TYPES))
    ids: list[str] = []
    for i, batch_type in enumerate(BATCH_TYPES):
        count = per_type if i < len(BATCH_TYPES) - 1 else n - per_type * (len(BATCH_TYPES) - 1)
        ids += engine.create_many(count, type=batch_type, total_jobs=rng.choice((10, 100, 1000)))
    for batch_id in ids:
        roll = rng.random()
        if roll < 0.05:
            engine.complete_jobs(batch_id, 1)
            engine.fail_jobs(batch_id, rng.randint(1, 3))
            done["failed"] += 1
        elif roll < 0.08:
            engine.suspend(batch_id)
            done["suspended"] += 1
        elif roll < 0.48:
            engine.complete_jobs(batch_id, rng.randint(1, 9))
            done["progressed"] += 1
    return done


def mutate_engine(engine: FakeEngine, fraction: float, rng: random.Random) -> dict[str, int]:
    """Change ``fraction`` of the running batches. Of the changed ones: 40% make progress (no
    state change), 20% get failed jobs, 10% are suspended, 20% finish, 10% are deleted."""
    running = engine.runtime_ids()
    chosen = rng.sample(running, max(1, round(len(running) * fraction)))
    done = {"progressed": 0, "failed": 0, "suspended": 0, "finished": 0, "deleted": 0}
    for batch_id in chosen:
        roll = rng.random()
        if roll < 0.4:
            engine.complete_jobs(batch_id, 1)
            done["progressed"] += 1
        elif roll < 0.6:
            engine.fail_jobs(batch_id, 1)
            done["failed"] += 1
        elif roll < 0.7:
            engine.suspend(batch_id)
            done["suspended"] += 1
        elif roll < 0.9:
            engine.finish(batch_id)
            done["finished"] += 1
        else:
            engine.delete(batch_id)
            done["deleted"] += 1
    return done


def mutate_datadog(datadog: FakeDatadog, fraction: float, rng: random.Random) -> dict[str, int]:
    """Change ``fraction`` of the in-progress CI batches: half see a retry of one result, a
    quarter finish passed, a quarter finish failed."""
    open_ids = [b for b in datadog.batch_ids() if datadog.batch(b).status == "in_progress"]
    chosen = rng.sample(open_ids, max(1, round(len(open_ids) * fraction)))
    done = {"retried": 0, "passed": 0, "failed": 0}
    for batch_id in chosen:
        roll = rng.random()
        if roll < 0.5:
            datadog.set_result(batch_id, "abc-def-ghi", new_attempt=True)
            done["retried"] += 1
        elif roll < 0.75:
            datadog.finish(batch_id, "passed")
            done["passed"] += 1
        else:
            datadog.finish(batch_id, "failed")
            done["failed"] += 1
    return done


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def control_app(sim: RunningSimulator) -> web.Application:
    async def stats(_: web.Request) -> web.Response:
        answered = len(sim.engine.requests) + len(sim.datadog.requests)
        paths = Counter(r.path_qs.split("?")[0] for r in sim.engine.requests)
        sim.engine.clear_requests()
        sim.datadog.clear_requests()
        return web.json_response({"cpu_seconds": time.process_time(), "requests": answered,
                                  "engine_paths": paths, "peak_rss_mb": _peak_rss_mb()})

    async def mutate(request: web.Request) -> web.Response:
        fraction = float(request.query.get("fraction", "0.05"))
        rng = random.Random(int(request.query.get("seed", "1")))
        if request.match_info["source"] == "engine":
            return web.json_response(mutate_engine(sim.engine, fraction, rng))
        return web.json_response(mutate_datadog(sim.datadog, fraction, rng))

    app = web.Application()
    app.router.add_get("/stats", stats)
    app.router.add_post("/mutate/{source:engine|datadog}", mutate)
    return app


async def serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    # stdin closing (the parent died) also stops us: never leak a simulator.
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def watch_stdin() -> None:
        await reader.read()
        stop.set()

    stdin_task = asyncio.create_task(watch_stdin())
    rng = random.Random(args.seed)
    engine = FakeEngine()
    datadog = FakeDatadog(api_key=API_KEY, app_key=APP_KEY)
    setup = populate_engine(engine, args.engine_batches, rng)
    datadog_ids = datadog.create_many(args.datadog_batches)
    async with await start_simulator("127.0.0.1", engine=engine, datadog=datadog) as sim:
        runner = web.AppRunner(control_app(sim), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        hello: dict[str, Any] = {
            "engine_url": sim.engine_url, "datadog_url": sim.datadog_url,
            "control_url": f"http://{host}:{port}", "api_key": API_KEY, "app_key": APP_KEY,
            "engine_setup": setup, "datadog_ids": datadog_ids,
        }
        sys.stdout.write(orjson.dumps(hello).decode() + "\n")
        sys.stdout.flush()
        try:
            await stop.wait()
        finally:
            stdin_task.cancel()
            await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine-batches", type=int, default=10_000)
    parser.add_argument("--datadog-batches", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=42)
    asyncio.run(serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
