"""Serve the fake engine and the fake Datadog API over real HTTP on loopback.

The engine is mounted under ``/engine-rest`` so its base URL looks like a real deployment's
(``http://127.0.0.1:PORT/engine-rest``); the Datadog base URL is the bare origin because its
paths already start with ``/api/v1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import TracebackType

from aiohttp import web

from batchscope.simulator.datadog import FakeDatadog
from batchscope.simulator.engine import FakeEngine

ENGINE_PREFIX = "/engine-rest"


@dataclass
class RunningSimulator:
    """Both fakes, the URLs they listen on, and the runners to stop them."""

    engine: FakeEngine
    datadog: FakeDatadog
    engine_url: str
    datadog_url: str
    _runners: list[web.AppRunner] = field(default_factory=list, repr=False)

    async def close(self) -> None:
        """Stop listening and drop open connections."""
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()

    async def __aenter__(self) -> RunningSimulator:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def _serve(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, str]:
    """Start ``app`` on ``host:port`` (0 picks a free port); return the runner and origin."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_host, bound_port = runner.addresses[0][:2]
    if ":" in bound_host:
        bound_host = f"[{bound_host}]"
    return runner, f"http://{bound_host}:{bound_port}"


async def start_simulator(
    host: str = "127.0.0.1",
    engine: FakeEngine | None = None,
    datadog: FakeDatadog | None = None,
    engine_port: int = 0,
    datadog_port: int = 0,
) -> RunningSimulator:
    """Serve both fakes (fresh ones unless given). Use ``async with await start_simulator()``."""
    engine = engine or FakeEngine()
    datadog = datadog or FakeDatadog()
    engine_root = web.Application()
    engine_root.add_subapp(ENGINE_PREFIX, engine.make_app())
    engine_runner, engine_origin = await _serve(engine_root, host, engine_port)
    try:
        datadog_runner, datadog_origin = await _serve(datadog.make_app(), host, datadog_port)
    except BaseException:
        await engine_runner.cleanup()
        raise
    return RunningSimulator(
        engine=engine,
        datadog=datadog,
        engine_url=engine_origin + ENGINE_PREFIX,
        datadog_url=datadog_origin,
        _runners=[engine_runner, datadog_runner],
    )
