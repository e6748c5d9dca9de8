"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers import LogLines

from batchscope.sinks.logs import configure_logging


@pytest.fixture
def logs() -> Iterator[LogLines]:
    """Route batchscope's structured logs to an in-memory JSON stream for the test."""
    lines = LogLines()
    configure_logging(log_format="json", level="debug", stream=lines.stream,
                      secrets=["s3cr3t-api-key", "s3cr3t-app-key", "s3cr3t-password",
                               "s3cr3t-token"])
    yield lines
