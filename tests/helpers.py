"""Test helpers: parsed JSON log capture and condition waits (never sleeps as sync)."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Awaitable, Callable
from typing import Any


class LogLines:
    """The JSON lines batchscope wrote, parsed."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    @property
    def raw(self) -> str:
        return self.stream.getvalue()

    def all(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.raw.splitlines() if line.strip()]

    def events(self, name: str, **match: Any) -> list[dict[str, Any]]:
        return [
            line for line in self.all()
            if line["event"] == name and all(line.get(k) == v for k, v in match.items())
        ]


async def eventually(probe: Callable[[], Awaitable[Any]], timeout: float = 10.0,
                     what: str = "condition", *, interval: float = 0.02) -> Any:
    """Await ``probe()`` every ``interval`` s until it returns something truthy (returned),
    failing after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what} (last: {value!r})")
        await asyncio.sleep(interval)


async def wait_until(condition: Callable[[], Any], timeout: float = 10.0,
                     what: str = "condition") -> Any:
    """Poll `condition` until it returns something truthy, failing after `timeout` seconds."""

    async def probe() -> Any:
        return condition()

    return await eventually(probe, timeout, what, interval=0.01)
