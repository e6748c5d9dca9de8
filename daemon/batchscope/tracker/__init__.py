"""Pure state tracking: snapshots in, transition events out."""

from batchscope.tracker.tracker import Key, Outcome, TrackedBatch, Tracker

__all__ = ["Key", "Outcome", "TrackedBatch", "Tracker"]
