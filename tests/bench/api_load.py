"""Load on the read API with many tracked batches: response size, latency, /healthz p50.

    python tests/bench/api_load.py [--batches 45000] [--clients 24] [--seconds 10]

Builds a core holding ``--batches`` engine batches (as the daemon would after polling),
serves the real HTTP app on loopback, and lets ``--clients`` clients fetch
``/api/v1/batches`` (the default page) in a loop while one client measures ``/healthz``.
Prints the page size, the listing latency and the /healthz latency percentiles, and the
process's peak RSS. A benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import time
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry

from batchscope.http.app import build_app
from batchscope.http.ports import ApiPorts, WatchOutcome
from batchscope.http.server import start_http_server
from batchscope.model import EngineBatchSnapshot, JobCounts, Source
from batchscope.runtime.health import HealthBoard
from batchscope.runtime.sdnotify import SystemdNotifier
from batchscope.settings import HttpSettings
from batchscope.sinks.events import EventBuffer
from batchscope.tracker import Core, EngineWatch
from batchscope.tracker.observations import RuntimeListed


class NoWatches:
    def datadog_targets(self) -> list[str]:
        return []

    def watch(self, target: str, batch_id: str) -> WatchOutcome:
        return WatchOutcome.REFUSED

    def unwatch(self, target: str, batch_id: str) -> bool:
        return False

    async def commit(self) -> bool:
        return True


def core_with(n: int) -> Core:
    core = Core(retention=3600, max_tracked=max(n, 1))
    core.configure([EngineWatch(name="prod", stall_after=900)], 0.0)
    rows = [EngineBatchSnapshot(batch_id=f"{i:08d}-batch", batch_type="instance-migration",
                                jobs=JobCounts(100, 100, 40, 60, 0), suspended=False)
            for i in range(n)]
    core.apply((Source.ENGINE, "prod"), RuntimeListed(rows), 1.0)
    return core


async def run(args: argparse.Namespace) -> dict[str, Any]:
    core = core_with(args.batches)
    board = HealthBoard({}, core, SystemdNotifier(None))
    board.started = True
    ports = ApiPorts(batches=core, events=EventBuffer(), health=board, watch_list=NoWatches(),
                     targets=board)
    app = build_app(ports, CollectorRegistry(), HttpSettings())
    runner, port = await start_http_server(app, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{port}"
    listing: list[float] = []
    health: list[float] = []
    size = 0
    stop = time.monotonic() + args.seconds

    async def lister(http: aiohttp.ClientSession) -> None:
        nonlocal size
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            async with http.get(base + "/api/v1/batches") as resp:
                body = await resp.read()
            listing.append(time.perf_counter() - t0)
            size = len(body)

    async def prober(http: aiohttp.ClientSession) -> None:
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            async with http.get(base + "/healthz") as resp:
                await resp.read()
            health.append(time.perf_counter() - t0)
            await asyncio.sleep(0.05)

    try:
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(prober(http), *(lister(http) for _ in range(args.clients)))
    finally:
        await runner.cleanup()

    def pct(values: list[float], q: float) -> float:
        return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000

    return {
        "batches": args.batches, "clients": args.clients, "page_bytes": size,
        "listings": len(listing), "listing_p50_ms": round(pct(listing, 0.5), 1),
        "healthz_p50_ms": round(statistics.median(health) * 1000, 1),
        "healthz_p95_ms": round(pct(health, 0.95), 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=45_000)
    parser.add_argument("--clients", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=10.0)
    print(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
