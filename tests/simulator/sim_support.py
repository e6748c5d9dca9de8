"""Helpers shared by the simulator tests."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

# 2016-01-25T12:33:42.165Z, the instant of the engine documentation's date example.
EPOCH = 1453725222.165

DD_HEADERS = {"DD-API-KEY": "demo-api-key", "DD-APPLICATION-KEY": "demo-app-key"}


class FakeClock:
    """Epoch seconds that only move when a test says so."""

    def __init__(self, now: float = EPOCH) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def get_json(client: TestClient, path: str, status: int = 200, **kwargs: Any) -> Any:
    """GET ``path``, check the status and the JSON content type, return the decoded body."""
    async with client.get(path, **kwargs) as resp:
        assert resp.status == status, await resp.text()
        assert resp.content_type == "application/json"
        return await resp.json()
