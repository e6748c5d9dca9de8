"""``batchscope demo``: the real daemon against the built-in simulator, on loopback.

Within a minute a newcomer sees batches fail, stall, get suspended, cancelled, vanish and
pass in the logs, in ``/metrics`` and in
``/api/v1/batches``, with no engine and no Datadog account.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import sys

from batchscope.runtime.daemon import Daemon
from batchscope.settings import Settings, load_settings
from batchscope.simulator.datadog import FakeDatadog
from batchscope.simulator.engine import FakeEngine
from batchscope.simulator.scenario import DemoScenario
from batchscope.simulator.server import RunningSimulator, start_simulator
from batchscope.sinks.logs import configure_logging

DEMO_API_KEY = "demo-api-key"
DEMO_APP_KEY = "demo-app-key"


def demo_settings(user: Settings, sim_engine_url: str, sim_datadog_url: str) -> Settings:
    """The demo's own targets and timings, with the user's ``http.*``, ``log_format`` and
    ``log_level`` (from the same sources as ``run``; flags already applied). Unless the
    user chose a host, the demo listens on loopback only."""
    http = user.http
    token = (http.api_token.get_secret_value() if http.api_token is not None
             else secrets.token_urlsafe(16))
    return load_settings(None, environ={}, overrides={
        "state_path": ":memory:",
        "log_format": user.log_format,
        "log_level": user.log_level,
        "poll_interval": 1,
        "retention": 600,
        "http.host": http.host if "host" in http.model_fields_set else "127.0.0.1",
        "http.port": http.port,
        "http.api_token": token,
        "http.max_body_bytes": http.max_body_bytes,
        # The demo timeline assumes 1-2 s polls and 15 s of silence before "stalled".
        "engines": [{"name": "demo-engine", "url": sim_engine_url, "stall_after": 15}],
        "datadog": [{"name": "demo-datadog", "url": sim_datadog_url, "api_key": DEMO_API_KEY,
                     "app_key": DEMO_APP_KEY, "stall_after": 15, "not_found_grace": 10}],
    })


async def run_demo(user: Settings, *, duration: float | None = None) -> int:
    sim = await start_simulator(
        engine=FakeEngine(),
        datadog=FakeDatadog(api_key=DEMO_API_KEY, app_key=DEMO_APP_KEY, not_found_for=2.0),
    )
    try:
        settings = demo_settings(user, sim.engine_url, sim.datadog_url)
        return await _run(settings, sim, duration)
    finally:
        await sim.close()


async def _run(settings: Settings, sim: RunningSimulator, duration: float | None) -> int:
    assert settings.http.api_token is not None
    token = settings.http.api_token.get_secret_value()
    configure_logging(log_format=settings.log_format, level=settings.log_level,
                      secrets=[token])
    daemon = Daemon(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await daemon.start()
    base = f"http://{settings.http.host}:{daemon.http_port}"
    sys.stderr.write(
        f"\nbatchscope demo: simulated engine at {sim.engine_url}, "
        f"simulated Datadog at {sim.datadog_url}\n"
        f"  metrics:  {base}/metrics\n"
        f"  batches:  {base}/api/v1/batches\n"
        f"  events:   {base}/api/v1/events\n"
        f"  watch a CI batch: curl -H 'Authorization: Bearer {token}' "
        f"-d '{{\"batch_id\": \"...\"}}' {base}/api/v1/datadog/batches\n"
        "Within about a minute batches fail, stall, get suspended, cancelled, vanish and pass. "
        "Ctrl-C stops.\n\n"
    )
    scenario = DemoScenario(
        sim.engine, sim.datadog,
        on_datadog_batch=lambda batch_id: daemon.watch("demo-datadog", batch_id),
    )
    driver = asyncio.create_task(scenario.run(stop))
    try:
        if duration is None:
            await stop.wait()
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), duration)
    finally:
        stop.set()
        await driver
        await daemon.stop()
    return 0
