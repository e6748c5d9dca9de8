"""Shared fixtures."""

from __future__ import annotations

import os

# Before batchscope is imported: its value types are built frozen at run time in tests,
# so a mutation of a shared snapshot or event raises (see batchscope.model.value_type).
os.environ["FROZEN_BATCHSCOPE_VALUES"] = "1"

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
