"""Serving the fakes on loopback, in-process and as ``python -m batchscope.simulator``."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from batchscope.simulator.engine import FakeEngine
from batchscope.simulator.server import start_simulator
from sim_support import DD_HEADERS

DAEMON_DIR = Path(__file__).resolve().parents[2] / "daemon"


async def test_serves_both_apis_on_loopback() -> None:
    """Engine under /engine-rest, Datadog at the origin, both over real TCP; close stops them."""
    engine = FakeEngine(engine_name="default")
    async with await start_simulator(engine=engine) as sim:
        engine_batch = sim.engine.create_batch()
        datadog_batch = sim.datadog.create_batch()
        assert sim.engine is engine
        assert sim.engine_url.startswith("http://127.0.0.1:")
        assert sim.engine_url.endswith("/engine-rest")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{sim.engine_url}/engine/default/batch/{engine_batch}") as resp:
                assert resp.status == 200
                assert (await resp.json())["id"] == engine_batch
            url = f"{sim.datadog_url}/api/v1/synthetics/ci/batch/{datadog_batch}"
            async with http.get(url, headers=DD_HEADERS) as resp:
                assert resp.status == 200
            async with http.get(f"{sim.engine_url.removesuffix('/engine-rest')}/batch") as resp:
                assert resp.status == 404
    assert [r.path_qs for r in engine.requests] == [
        f"/engine-rest/engine/default/batch/{engine_batch}"
    ]
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(sim.engine_url + "/engine")


async def test_port_in_use_is_reported(unused_tcp_port: int) -> None:
    """Asking for a taken port fails cleanly instead of leaving half a simulator running."""
    async with await start_simulator(engine_port=unused_tcp_port) as sim:
        with pytest.raises(OSError):
            await start_simulator(datadog_port=unused_tcp_port)
        assert sim.engine_url.startswith(f"http://127.0.0.1:{unused_tcp_port}/")


@pytest.mark.slow
async def test_module_entry_point_prints_urls_and_stops_on_sigterm() -> None:
    """``python -m batchscope.simulator`` prints both URLs, serves them, exits 0 on SIGTERM."""
    env = {**os.environ, "PYTHONPATH": str(DAEMON_DIR)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "batchscope.simulator",
        "--engine-port",
        "0",
        "--datadog-port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        engine_line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        datadog_line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        engine_url = engine_line.split()[1]
        datadog_url = datadog_line.split()[1]
        created = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert created.startswith("datadog batch created: ")
        async with aiohttp.ClientSession() as http:
            async with http.get(engine_url + "/batch/statistics") as resp:
                assert resp.status == 200 and len(await resp.json()) >= 1
            async with http.get(datadog_url + "/api/v1/synthetics/ci/batch/x") as resp:
                assert resp.status == 403
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
