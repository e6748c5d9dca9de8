"""Targets that come and go, configured batch ids across restarts, request edge cases."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import aiohttp

from batchscope.model import Source
from batchscope.runtime.daemon import Daemon
from batchscope.simulator.datadog import FakeDatadog
from batchscope.simulator.engine import FakeEngine
from batchscope.simulator.server import start_simulator
from harness import API_KEY, APP_KEY, TOKEN, daemon_settings, running_stack
from helpers import LogLines, wait_until

DAEMON_DIR = Path(__file__).resolve().parents[2] / "daemon"


async def test_configured_batch_ids_are_reported_once_across_restarts(
    logs: LogLines, tmp_path: Path
) -> None:
    """A configured batch that ended and was forgotten after `retention` is not watched (and
    reported) again when the daemon restarts with the same settings."""
    datadog = FakeDatadog(api_key=API_KEY, app_key=APP_KEY)
    datadog.create_batch(batch_id="ci-fixed")
    datadog.finish("ci-fixed", "passed")
    async with await start_simulator(datadog=datadog) as sim:
        settings = daemon_settings(
            sim, state_path=str(tmp_path / "state.db"), retention=0.2,
            datadog_target={"batch_ids": ["ci-fixed"]})
        for _ in range(3):
            daemon = Daemon(settings)
            await daemon.start()
            await wait_until(lambda d=daemon: d.ready)
            await wait_until(lambda d=daemon: d.tracker.get(Source.DATADOG, "ci", "ci-fixed")
                             is None, what="forgotten after retention")
            await daemon.stop()
    reported = logs.events("batch.transition", batch_id="ci-fixed")
    assert [(e["from_state"], e["to_state"]) for e in reported] == [("none", "passed")]


async def test_removed_target_leaves_no_series(logs: LogLines) -> None:
    """After a reload drops a target, its batches and per-batch series are gone."""
    engine = FakeEngine()
    batch = engine.create_batch(total_jobs=4)
    engine.fail_jobs(batch, 1)
    async with running_stack(engine=engine) as stack:
        await wait_until(lambda: logs.events("batch.transition", to_state="failed"))
        assert await stack.sample("batchscope_batch_state", source="engine", target="prod",
                                  batch_id=batch, batch_type="instance-migration",
                                  state="failed") == 1
        without_engine = daemon_settings(stack.sim, engines=[],
                                         **{"http.port": stack.daemon.http_port})
        await stack.daemon._apply_reload(lambda: without_engine)
        samples = await stack.samples()
        assert not [k for k in samples if ("target", "prod") in k[1]]
        assert stack.daemon.tracker.targets() <= {(Source.DATADOG, "ci")}
        assert logs.events("target.forgotten", target="prod")


async def test_watch_body_split_across_packets(logs: LogLines) -> None:
    """A POST body that arrives in several TCP segments is read whole."""
    async with running_stack() as stack:
        body = b'{"batch_id": "split-1"}'
        head = (f"POST /api/v1/datadog/batches HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", stack.daemon.http_port)
        writer.write(head + body[:7])
        await writer.drain()
        await asyncio.sleep(0.05)  # let the server see the first segment alone
        writer.write(body[7:])
        await writer.drain()
        answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 201"), answer[:200]
        assert stack.daemon.tracker.get(Source.DATADOG, "ci", "split-1") is not None


async def test_busy_port_exits_78(tmp_path: Path) -> None:
    """`run` on a port another process holds: a clear message and exit 78, no traceback."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = tmp_path / "c.toml"
        config.write_text(f'state_path = ":memory:"\n[http]\nhost = "127.0.0.1"\nport = {port}\n')
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "batchscope", "run", "--config", str(config),
            env={"PYTHONPATH": str(DAEMON_DIR), "PATH": "/usr/bin:/bin"},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 78
    assert f"cannot listen on 127.0.0.1:{port}" in err.decode()
    assert "Traceback" not in err.decode()


async def test_metrics_do_not_wait_for_a_stuck_poll(logs: LogLines) -> None:
    """While a poll hangs in an upstream request, /metrics still answers at once."""
    async with running_stack(engine_target={"request_timeout": 10}) as stack:
        await wait_until(lambda: stack.daemon.ready)
        stack.engine.inject("/batch/statistics", delay=3.0, times=None)
        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession() as http:
            started = loop.time()
            async with http.get(f"{stack.base}/metrics") as resp:
                assert resp.status == 200
            assert loop.time() - started < 0.5
        stack.engine.clear_faults()
