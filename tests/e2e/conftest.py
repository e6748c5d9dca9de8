"""End-to-end fixtures (helpers in e2e_support.py). ``prometheus`` and ``promtool`` are required
in CI: when one is missing and the ``CI`` environment variable is set the test fails; elsewhere
it is skipped."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

# The tests import e2e_support.py from this folder; pyproject's pytest `pythonpath` does not
# list tests/e2e (and --import-mode=importlib does not add test folders to sys.path).
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

from batchscope.runtime.daemon import Daemon
from batchscope.simulator.datadog import FakeDatadog
from batchscope.simulator.engine import FakeEngine
from batchscope.simulator.server import start_simulator
from e2e_support import (
    API_KEY,
    APP_KEY,
    PrometheusServer,
    Stack,
    require_tool,
    stack_settings,
)


@pytest.fixture
async def stack_factory() -> AsyncIterator[Callable[..., Any]]:
    """``await stack_factory(engines=[...], **settings)`` -> a started :class:`Stack`."""
    started: list[Stack] = []

    async def make(**kwargs: Any) -> Stack:
        sim = await start_simulator(
            engine=FakeEngine(), datadog=FakeDatadog(api_key=API_KEY, app_key=APP_KEY)
        )
        try:
            daemon = Daemon(stack_settings(sim, **kwargs))
            await daemon.start()
        except BaseException:
            await sim.close()
            raise
        stack = Stack(sim, daemon, aiohttp.ClientSession())
        started.append(stack)
        return stack

    yield make
    for stack in started:
        await stack.http.close()
        await stack.daemon.stop()
        await stack.sim.close()


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], PrometheusServer]]:
    """Start real Prometheus servers; every one is stopped (killed if need be) afterwards.

    The binary is looked up when a server is started, inside the test: under CI a missing
    ``prometheus`` is then a test failure rather than a setup error."""
    servers: list[PrometheusServer] = []

    def start(config: dict[str, Any]) -> PrometheusServer:
        binary = require_tool("prometheus")
        server = PrometheusServer(binary, tmp_path / f"prometheus-{len(servers)}")
        servers.append(server)
        server.start(config)
        return server

    yield start
    for server in servers:
        server.stop()
