"""End-to-end fixtures (helpers in e2e_support.py). ``prometheus`` and ``promtool`` are required
in CI: when one is missing and the ``CI`` environment variable is set the test fails; elsewhere
it is skipped."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from e2e_support import PrometheusServer, require_tool, stack_settings
from harness import Stack, running_simulator, serving


@pytest.fixture
async def stack_factory() -> AsyncIterator[Callable[..., Any]]:
    """``await stack_factory(engines=[...], **settings)`` -> a started :class:`Stack`."""
    async with AsyncExitStack() as exits:

        async def make(**kwargs: Any) -> Stack:
            sim = await exits.enter_async_context(running_simulator())
            return await exits.enter_async_context(
                serving(sim, stack_settings(sim, **kwargs), Stack))

        yield make


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
