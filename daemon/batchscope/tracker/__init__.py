"""The core: pure state tracking, snapshots and observations in, transition events out."""

from batchscope.tracker.core import (
    Changes,
    ConfiguredIds,
    Core,
    DatadogMemory,
    DatadogWatch,
    EngineWatch,
    TargetMemory,
    TargetWatch,
)
from batchscope.tracker.engine import HistoryCursor
from batchscope.tracker.records import Key, Outcome, ResultSlot, TargetKey, TrackedBatch
from batchscope.tracker.tracker import Tracker

__all__ = [
    "Changes",
    "ConfiguredIds",
    "Core",
    "DatadogMemory",
    "DatadogWatch",
    "EngineWatch",
    "HistoryCursor",
    "Key",
    "Outcome",
    "ResultSlot",
    "TargetKey",
    "TargetMemory",
    "TargetWatch",
    "TrackedBatch",
    "Tracker",
]
