"""The integration harness (harness.py) with the probes the reliability tests need: timed HTTP
gets, poll errors and target_up by target, and log-line queries. Waits are
``helpers.eventually`` / ``helpers.wait_until`` (never sleeps)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import harness
from batchscope.simulator.datadog import FakeDatadog
from batchscope.simulator.engine import FakeEngine
from batchscope.simulator.server import RunningSimulator
from harness import datadog_target, engine_target, make_settings, running_simulator, serving
from helpers import LogLines

STALL_AFTER = 600  # no stall in these tests unless one asks for it
NOT_FOUND_GRACE = 0.3


@dataclass
class Stack(harness.Stack):
    logs: LogLines
    extra: list[RunningSimulator] = field(default_factory=list)

    # ------------------------------------------------------------------ HTTP probes

    async def get(self, path: str) -> tuple[int, str, float]:
        """Status, body and how long the daemon took to answer."""
        started = time.monotonic()
        async with self.http.get(self.base + path) as resp:
            body = await resp.text()
        return resp.status, body, time.monotonic() - started

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

    # ------------------------------------------------------------------ log queries

    def transitions(self, batch_id: str) -> list[tuple[str, str]]:
        return [(line["from_state"], line["to_state"])
                for line in self.logs.events("batch.transition", batch_id=batch_id)]

    def downs(self, source: str, target: str) -> list[dict[str, Any]]:
        return self.logs.events("target.down", source=source, target=target)

    def ups(self, source: str, target: str) -> list[dict[str, Any]]:
        return self.logs.events("target.up", source=source, target=target)


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
    async with AsyncExitStack() as exits:
        sim = await exits.enter_async_context(running_simulator(engine, datadog))
        engines = [engine_target(sim.engine_url, **{"stall_after": STALL_AFTER,
                                                    **(engine_overrides or {})})]
        extra: list[RunningSimulator] = []
        for name, target_overrides in extra_engines:
            other = await exits.enter_async_context(running_simulator())
            extra.append(other)
            engines.append(engine_target(other.engine_url, name=name,
                                         **{"stall_after": STALL_AFTER, **target_overrides}))
        datadog_targets = [datadog_target(sim.datadog_url, **{
            "not_found_grace": NOT_FOUND_GRACE, "stall_after": STALL_AFTER,
            **(datadog_overrides or {})})]
        settings = make_settings(engines, datadog_targets, **overrides)
        yield await exits.enter_async_context(
            serving(sim, settings, partial(Stack, logs=logs, extra=extra)))
