"""``python -m batchscope.simulator``: both fake upstreams plus the demo scenario, standalone.

Useful to point a real batchscope configuration (or alerting tests) at realistic, moving data.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from batchscope.simulator.datadog import FakeDatadog
from batchscope.simulator.scenario import DemoScenario
from batchscope.simulator.server import start_simulator


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m batchscope.simulator",
        description="Serve fake Camunda 7 and Datadog Synthetics CI APIs with a demo scenario.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--engine-port", type=int, default=9848, help="0 picks a free port")
    parser.add_argument("--datadog-port", type=int, default=9849, help="0 picks a free port")
    return parser.parse_args(argv)


def _announce(batch_id: str) -> None:
    """Datadog batches are watched by id, so tell the user each new one."""
    print(f"datadog batch created: {batch_id}", flush=True)


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    datadog = FakeDatadog(not_found_for=2.0)
    async with await start_simulator(
        args.host, datadog=datadog, engine_port=args.engine_port, datadog_port=args.datadog_port
    ) as sim:
        print(f"engine:  {sim.engine_url}", flush=True)
        print(
            f"datadog: {sim.datadog_url} (DD-API-KEY {datadog.api_key}, "
            f"DD-APPLICATION-KEY {datadog.app_key})",
            flush=True,
        )
        await DemoScenario(sim.engine, datadog, on_datadog_batch=_announce).run(stop)


def main(argv: list[str] | None = None) -> int:
    """Run until SIGINT/SIGTERM."""
    asyncio.run(_serve(_parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
