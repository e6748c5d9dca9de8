"""A daemon wired to real-HTTP fake upstreams on loopback, with the probes the reliability
tests need: /metrics samples, log-line queries, and waits on conditions (never sleeps).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from batchscope.runtime.daemon import Daemon
from batchscope.settings import Settings, load_settings
from batchscope.simulator.datadog import FakeDatadog
from batchscope.simulator.engine import FakeEngine
from batchscope.simulator.server import RunningSimulator, start_simulator
from helpers import LogLines

API_KEY = "s3cr3t-api-key"
APP_KEY = "s3cr3t-app-key"
TOKEN = "s3cr3t-token"
ENGINE = "prod"
DATADOG = "ci"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def engine_target(url: str, name: str = ENGINE, **overrides: Any) -> dict[str, Any]:
    target: dict[str, Any] = {"name": name, "url": url, "poll_interval": 0.05,
                              "stall_after": 600, "page_size": 50, "request_timeout": 2}
    target.update(overrides)
    return target


def datadog_target(url: str, name: str = DATADOG, **overrides: Any) -> dict[str, Any]:
    target: dict[str, Any] = {"name": name, "url": url, "api_key": API_KEY, "app_key": APP_KEY,
                              "poll_interval": 0.05, "request_timeout": 2,
                              "not_found_grace": 0.3, "stall_after": 600}
    target.update(overrides)
    return target


def make_settings(engines: list[dict[str, Any]], datadog: list[dict[str, Any]],
                  **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "state_path": ":memory:", "http.host": "127.0.0.1", "http.port": free_port(),
        "http.api_token": TOKEN, "engines": engines, "datadog": datadog,
        "retention": 3600, "shutdown_timeout": 2,
    }
    values.update(overrides)
    return load_settings(None, overrides=values, environ={})


def new_datadog(**kwargs: Any) -> FakeDatadog:
    return FakeDatadog(api_key=API_KEY, app_key=APP_KEY, **kwargs)


@dataclass
class Stack:
    sim: RunningSimulator
    daemon: Daemon
    http: aiohttp.ClientSession
    logs: LogLines
    extra: list[RunningSimulator] = field(default_factory=list)

    @property
    def engine(self) -> FakeEngine:
        return self.sim.engine

    @property
    def datadog(self) -> FakeDatadog:
        return self.sim.datadog

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.daemon.http_port}"

    # ------------------------------------------------------------------ HTTP probes

    async def get(self, path: str) -> tuple[int, str, float]:
        """Status, body and how long the daemon took to answer."""
        started = time.monotonic()
        async with self.http.get(self.base + path) as resp:
            body = await resp.text()
        return resp.status, body, time.monotonic() - started

    async def samples(self) -> Samples:
        status, text, _ = await self.get("/metrics")
        assert status == 200
        out: Samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, frozenset(s.labels.items()))] = s.value
        return out

    async def sample(self, name: str, **labels: str) -> float | None:
        return (await self.samples()).get((name, frozenset(labels.items())))

    async def errors(self, source: str, target: str) -> dict[str, float]:
        """batchscope_poll_errors_total of a target, by reason."""
        out = {}
        for (name, labels), value in (await self.samples()).items():
            d = dict(labels)
            if (name == "batchscope_poll_errors_total" and d["source"] == source
                    and d["target"] == target):
                out[d["reason"]] = value
        return out

    async def up(self, source: str, target: str) -> float | None:
        return await self.sample("batchscope_target_up", source=source, target=target)

    async def post_watch(self, batch_id: str, target: str | None = None) -> int:
        body: dict[str, str] = {"batch_id": batch_id}
        if target is not None:
            body["target"] = target
        async with self.http.post(self.base + "/api/v1/datadog/batches", json=body,
                                  headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            return resp.status

    # ------------------------------------------------------------------ log queries

    def transitions(self, batch_id: str) -> list[tuple[str, str]]:
        return [(line["from_state"], line["to_state"])
                for line in self.logs.events("batch.transition", batch_id=batch_id)]

    def downs(self, source: str, target: str) -> list[dict[str, Any]]:
        return self.logs.events("target.down", source=source, target=target)

    def ups(self, source: str, target: str) -> list[dict[str, Any]]:
        return self.logs.events("target.up", source=source, target=target)


async def eventually(probe: Callable[[], Awaitable[Any]], timeout: float = 10.0,
                     what: str = "condition") -> Any:
    """Await ``probe`` until it returns something truthy, failing after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def running_stack(
    logs: LogLines,
    *,
    engine: FakeEngine | None = None,
    datadog: FakeDatadog | None = None,
    engine_overrides: dict[str, Any] | None = None,
    datadog_overrides: dict[str, Any] | None = None,
    extra_engines: Sequence[tuple[str, dict[str, Any]]] = (),
    **overrides: Any,
) -> AsyncIterator[Stack]:
    """The simulator, a daemon watching one engine target and one Datadog target on it, and
    an HTTP client; ``extra_engines`` adds (name, overrides) targets on their own fakes."""
    sim = await start_simulator(engine=engine or FakeEngine(),
                                datadog=datadog or new_datadog())
    extra: list[RunningSimulator] = []
    try:
        overrides_ = dict(engine_overrides or {})
        engines = [engine_target(overrides_.pop("url", sim.engine_url), **overrides_)]
        for name, target_overrides in extra_engines:
            other = await start_simulator(engine=FakeEngine(), datadog=new_datadog())
            extra.append(other)
            engines.append(engine_target(other.engine_url, name=name, **target_overrides))
        settings = make_settings(
            engines, [datadog_target(sim.datadog_url, **(datadog_overrides or {}))], **overrides
        )
        daemon = Daemon(settings)
        await daemon.start()
        http = aiohttp.ClientSession()
        try:
            yield Stack(sim, daemon, http, logs, extra)
        finally:
            await http.close()
            await daemon.stop()
    finally:
        for other in extra:
            other.engine.clear_faults()
            await other.close()
        sim.engine.clear_faults()
        sim.datadog.clear_faults()
        await sim.close()
