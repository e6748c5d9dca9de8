"""A daemon wired to the built-in simulator over real loopback HTTP, for integration tests."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from batchscope.runtime.daemon import Daemon
from batchscope.settings import Settings, load_settings
from batchscope.simulator.datadog import FakeDatadog
from batchscope.simulator.engine import FakeEngine
from batchscope.simulator.server import RunningSimulator, start_simulator

API_KEY = "s3cr3t-api-key"
APP_KEY = "s3cr3t-app-key"
TOKEN = "s3cr3t-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def daemon_settings(sim: RunningSimulator, **overrides: Any) -> Settings:
    engine: dict[str, Any] = {"name": "prod", "url": sim.engine_url, "poll_interval": 0.05,
                              "stall_after": 60, "page_size": 50, "request_timeout": 2}
    engine.update(overrides.pop("engine_target", {}))
    datadog: dict[str, Any] = {"name": "ci", "url": sim.datadog_url, "api_key": API_KEY,
                               "app_key": APP_KEY, "poll_interval": 0.05, "request_timeout": 2,
                               "not_found_grace": 0.5}
    datadog.update(overrides.pop("datadog_target", {}))
    values: dict[str, Any] = {
        "state_path": ":memory:", "http.host": "127.0.0.1", "http.port": free_port(),
        "http.api_token": TOKEN, "engines": [engine], "datadog": [datadog],
        "retention": 3600, "shutdown_timeout": 2,
    }
    values.update(overrides)
    return load_settings(None, overrides=values, environ={})


@dataclass
class Stack:
    sim: RunningSimulator
    daemon: Daemon
    http: aiohttp.ClientSession

    @property
    def engine(self) -> FakeEngine:
        return self.sim.engine

    @property
    def datadog(self) -> FakeDatadog:
        return self.sim.datadog

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.daemon.http_port}"

    async def get_json(self, path: str) -> Any:
        async with self.http.get(self.base + path) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def metrics_text(self, accept: str | None = None) -> str:
        headers = {"Accept": accept} if accept else {}
        async with self.http.get(self.base + "/metrics", headers=headers) as resp:
            assert resp.status == 200
            return await resp.text()

    async def samples(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        out = {}
        for family in text_string_to_metric_families(await self.metrics_text()):
            for s in family.samples:
                out[(s.name, frozenset(s.labels.items()))] = s.value
        return out

    async def sample(self, name: str, **labels: str) -> float | None:
        return (await self.samples()).get((name, frozenset(labels.items())))


@asynccontextmanager
async def running_stack(
    *, engine: FakeEngine | None = None, datadog: FakeDatadog | None = None,
    **overrides: Any,
) -> AsyncIterator[Stack]:
    sim = await start_simulator(
        engine=engine or FakeEngine(),
        datadog=datadog or FakeDatadog(api_key=API_KEY, app_key=APP_KEY),
    )
    daemon = Daemon(daemon_settings(sim, **overrides))
    await daemon.start()
    http = aiohttp.ClientSession()
    try:
        yield Stack(sim, daemon, http)
    finally:
        await http.close()
        await daemon.stop()
        await sim.close()
