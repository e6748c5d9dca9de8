"""Shared fixtures."""

from __future__ import annotations

import pytest

from batchscope.sinks.logs import configure_logging
from helpers import LogLines


@pytest.fixture
def logs() -> LogLines:
    """Route batchscope's structured logs to an in-memory JSON stream for the test."""
    lines = LogLines()
    configure_logging(log_format="json", level="debug", stream=lines.stream,
                      secrets=["s3cr3t-api-key", "s3cr3t-app-key", "s3cr3t-password",
                               "s3cr3t-token"])
    return lines
