"""Test helpers: parsed JSON log capture and condition waits (never sleeps as sync)."""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

DAEMON_DIR = Path(__file__).resolve().parents[1] / "daemon"


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a ``python -m batchscope`` subprocess: this one's, with the
    package importable and nothing that would configure it from outside the test (settings
    variables, Datadog keys, systemd credentials, a CI runner's step summary); ``extra``
    on top."""
    out = {k: v for k, v in os.environ.items()
           if not k.startswith(("BATCHSCOPE_", "DD_", "CREDENTIALS_DIRECTORY", "GITHUB_"))}
    out["PYTHONPATH"] = str(DAEMON_DIR)
    out.update(extra)
    return out


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
