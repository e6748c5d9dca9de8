"""SIGHUP: the settings file is re-read; targets start, stop and restart; state is kept."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from batchscope.simulator.datadog import FakeDatadog
from batchscope.simulator.engine import FakeEngine
from batchscope.simulator.server import start_simulator
from harness import free_port
from helpers import wait_until

DAEMON_DIR = Path(__file__).resolve().parents[2] / "daemon"


@asynccontextmanager
async def daemon_process(path: Path) -> AsyncIterator[
        tuple[asyncio.subprocess.Process, list[dict[str, object]]]]:
    """``batchscope run --config path`` as a real process, with its JSON lines as they come;
    killed on the way out if the test did not stop it."""
    env = {**os.environ, "PYTHONPATH": str(DAEMON_DIR)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "batchscope", "run", "--config", str(path), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    lines: list[dict[str, object]] = []

    async def read() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            lines.append(json.loads(raw))

    reader = asyncio.create_task(read())
    try:
        yield proc, lines
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        reader.cancel()


def config(engine_url: str, datadog_url: str | None, port: int, state: Path) -> str:
    text = f"""
poll_interval = 0.05
state_path = "{state}"
[http]
host = "127.0.0.1"
port = {port}
[[engines]]
name = "prod"
url = "{engine_url}"
"""
    if datadog_url:
        text += f"""
[[datadog]]
name = "ci"
url = "{datadog_url}"
api_key = "k-123456"
app_key = "a-123456"
batch_ids = ["ci-1"]
"""
    return text


async def test_sighup_adds_removes_and_rejects(tmp_path: Path) -> None:
    """A real daemon process: SIGHUP with a new target starts it without re-reporting known
    batches; an invalid file is rejected (logged) and the old settings stay."""
    engine, datadog = FakeEngine(), FakeDatadog(api_key="k-123456", app_key="a-123456")
    known = engine.create_batch(total_jobs=3)
    datadog.create_batch(batch_id="ci-1")
    datadog.finish("ci-1", "passed")
    port = free_port()
    path = tmp_path / "batchscope.toml"
    async with await start_simulator(engine=engine, datadog=datadog) as sim:
        path.write_text(config(sim.engine_url, None, port, tmp_path / "state.db"))
        async with daemon_process(path) as (proc, lines):

            def events(name: str) -> list[dict[str, object]]:
                return [line for line in lines if line["event"] == name]

            await wait_until(lambda: any(e["batch_id"] == known
                                         for e in events("batch.transition")), timeout=20)
            path.write_text(config(sim.engine_url, sim.datadog_url, port,
                                   tmp_path / "state.db"))
            proc.send_signal(signal.SIGHUP)
            await wait_until(lambda: events("settings.reloaded"), timeout=10)
            await wait_until(lambda: any(e["batch_id"] == "ci-1" and e["to_state"] == "passed"
                                         for e in events("batch.transition")), timeout=10)
            async with aiohttp.ClientSession() as http, http.get(
                    f"http://127.0.0.1:{port}/metrics") as resp:
                text = await resp.text()
            assert 'batchscope_target_up{source="datadog",target="ci"} 1.0' in text

            path.write_text("poll_interval = -5\n")
            proc.send_signal(signal.SIGHUP)
            await wait_until(lambda: events("settings.reload_rejected"), timeout=10)
            rejected = events("settings.reload_rejected")[0]
            assert any("poll_interval" in p for p in rejected["problems"])  # type: ignore[union-attr]
            before = len(events("batch.transition"))
            engine.fail_jobs(known, 1)  # the old engine target still runs
            await wait_until(lambda: len(events("batch.transition")) > before, timeout=10)
            assert [e["batch_id"] for e in events("batch.transition")].count(known) == 2
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 15) == 0


async def test_sighup_applies_live_settings_and_names_the_rest(tmp_path: Path) -> None:
    """SIGHUP applies log_level, retention, max_tracked_batches and max_batch_series at
    once, and the reload line names every changed setting that needs a restart."""
    engine = FakeEngine()
    port = free_port()
    path = tmp_path / "batchscope.toml"
    async with await start_simulator(engine=engine, datadog=FakeDatadog()) as sim:
        base = config(sim.engine_url, None, port, tmp_path / "state.db")
        path.write_text(base)
        async with daemon_process(path) as (proc, lines):
            first = engine.create_batch(total_jobs=3)
            await wait_until(lambda: any(e.get("batch_id") == first for e in lines), timeout=20)
            changed = base.replace(f"port = {port}", f"port = {free_port()}").replace(
                "poll_interval = 0.05",
                'poll_interval = 0.05\nlog_level = "warning"\nretention = 7\n'
                'max_batch_series = 3\nstate_path = "/tmp/elsewhere.db"')
            changed = changed.replace(f'state_path = "{tmp_path / "state.db"}"\n', "", 1)
            path.write_text(changed)
            proc.send_signal(signal.SIGHUP)
            await wait_until(lambda: any(e["event"] == "settings.reloaded" for e in lines),
                             timeout=10)
            reloaded = next(e for e in lines if e["event"] == "settings.reloaded")
            assert reloaded["restart_needed"] == ["http.port", "state_path"]
            assert {"log_level", "retention", "max_batch_series"} <= set(
                reloaded["changed"])  # type: ignore[arg-type]
            # log_level=warning now: a new batch's info line is gone, its failure is not
            second = engine.create_batch(total_jobs=3)
            engine.fail_jobs(second, 1)
            await wait_until(lambda: any(e.get("batch_id") == second for e in lines),
                             timeout=10)
            assert {e["level"] for e in lines if e.get("batch_id") == second} == {"warning"}
            async with aiohttp.ClientSession() as http, http.get(
                    f"http://127.0.0.1:{port}/metrics") as resp:
                text = await resp.text()  # the old port: the listener needs a restart
            assert "batchscope_batch_series_dropped" in text
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 15) == 0
