"""Fixtures for the simulator tests: a hand-driven clock and clients for both fake APIs."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from batchscope.simulator.datadog import FakeDatadog
from batchscope.simulator.engine import FakeEngine
from sim_support import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def engine(clock: FakeClock) -> FakeEngine:
    return FakeEngine(clock=clock)


@pytest.fixture
async def engine_client(aiohttp_client: AiohttpClient, engine: FakeEngine) -> TestClient:
    return await aiohttp_client(engine.app)


@pytest.fixture
def datadog(clock: FakeClock) -> FakeDatadog:
    return FakeDatadog(clock=clock)


@pytest.fixture
async def datadog_client(aiohttp_client: AiohttpClient, datadog: FakeDatadog) -> TestClient:
    return await aiohttp_client(datadog.app)
