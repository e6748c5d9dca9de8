"""A daemon wired to the built-in simulator over real loopback HTTP: the base the integration,
end-to-end (e2e_support.py) and reliability (reliability_kit.py) tests build on."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

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
ENGINE = "prod"  # the default engine target's name
DATADOG = "ci"  # the default Datadog target's name

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- settings


def engine_target(url: str, /, **overrides: Any) -> dict[str, Any]:
    """An engine target named ``ENGINE`` on ``url``, polled fast; ``overrides`` win."""
    return {"name": ENGINE, "url": url, "poll_interval": 0.05, "page_size": 50,
            "request_timeout": 2, **overrides}


def datadog_target(url: str, /, **overrides: Any) -> dict[str, Any]:
    """A Datadog target named ``DATADOG`` on ``url``, polled fast; ``overrides`` win."""
    return {"name": DATADOG, "url": url, "api_key": API_KEY, "app_key": APP_KEY,
            "poll_interval": 0.05, "request_timeout": 2, "not_found_grace": 0.5, **overrides}


def make_settings(engines: list[dict[str, Any]], datadog: list[dict[str, Any]], /,
                  **overrides: Any) -> Settings:
    """In-memory state, a free loopback port, ``TOKEN``; ``overrides`` (dotted keys) win."""
    values: dict[str, Any] = {
        "state_path": ":memory:", "http.host": "127.0.0.1", "http.port": free_port(),
        "http.api_token": TOKEN, "engines": engines, "datadog": datadog,
        "retention": 3600, "shutdown_timeout": 2,
    }
    values.update(overrides)
    return load_settings(None, overrides=values, environ={})


def daemon_settings(sim: RunningSimulator, **overrides: Any) -> Settings:
    """One engine and one Datadog target on ``sim``; the ``engine_target`` and
    ``datadog_target`` overrides change those, the others the settings."""
    engine = engine_target(sim.engine_url, **{"stall_after": 60,
                                              **overrides.pop("engine_target", {})})
    datadog = datadog_target(sim.datadog_url, **overrides.pop("datadog_target", {}))
    return make_settings([engine], [datadog], **overrides)


def new_datadog(**kwargs: Any) -> FakeDatadog:
    return FakeDatadog(api_key=API_KEY, app_key=APP_KEY, **kwargs)


# --------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    """The simulator, a daemon polling it and an HTTP client, with probes of the daemon."""

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

    async def samples(self) -> Samples:
        out: Samples = {}
        for family in text_string_to_metric_families(await self.metrics_text()):
            for s in family.samples:
                out[(s.name, frozenset(s.labels.items()))] = s.value
        return out

    async def sample(self, name: str, **labels: str) -> float | None:
        return (await self.samples()).get((name, frozenset(labels.items())))

    def _post_watch(self, batch_id: str, target: str | None) -> Any:
        body = {"batch_id": batch_id}
        if target is not None:
            body["target"] = target
        return self.http.post(self.base + "/api/v1/datadog/batches", json=body,
                              headers={"Authorization": f"Bearer {TOKEN}"})

    async def post_watch(self, batch_id: str, target: str | None = None) -> int:
        """Ask the API to watch a Datadog CI batch; the answer's status."""
        async with self._post_watch(batch_id, target) as resp:
            return resp.status

    async def watch(self, batch_id: str, target: str | None = None) -> None:
        """Watch a Datadog CI batch through the API; it must be accepted (201)."""
        async with self._post_watch(batch_id, target) as resp:
            assert resp.status == 201, await resp.text()


S = TypeVar("S", bound=Stack)


@asynccontextmanager
async def running_simulator(engine: FakeEngine | None = None,
                            datadog: FakeDatadog | None = None) -> AsyncIterator[RunningSimulator]:
    """The simulator on loopback; its faults are cleared before it closes."""
    sim = await start_simulator(engine=engine or FakeEngine(), datadog=datadog or new_datadog())
    try:
        yield sim
    finally:
        sim.engine.clear_faults()
        sim.datadog.clear_faults()
        await sim.close()


@asynccontextmanager
async def serving(sim: RunningSimulator, settings: Settings,
                  stack: Callable[[RunningSimulator, Daemon, aiohttp.ClientSession], S]
                  ) -> AsyncIterator[S]:
    """A started daemon and an HTTP client, as ``stack(sim, daemon, http)``; both are stopped
    on exit (the simulator is the caller's)."""
    daemon = Daemon(settings)
    await daemon.start()
    http = aiohttp.ClientSession()
    try:
        yield stack(sim, daemon, http)
    finally:
        await http.close()
        await daemon.stop()


@asynccontextmanager
async def running_stack(
    *, engine: FakeEngine | None = None, datadog: FakeDatadog | None = None,
    **overrides: Any,
) -> AsyncIterator[Stack]:
    """A :class:`Stack` with :func:`daemon_settings` (``overrides`` go there)."""
    async with (
        running_simulator(engine, datadog) as sim,
        serving(sim, daemon_settings(sim, **overrides), Stack) as stack,
    ):
        yield stack
