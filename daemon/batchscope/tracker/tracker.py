"""The tracker: a pure state machine from successive snapshots to transition events.

No I/O and no clock: every call gets ``now`` (epoch seconds). All mutation happens inside
one synchronous call, so a reader on the event loop never sees a half-applied poll.
"""

from __future__ import annotations

from batchscope.tracker.datadog import DatadogTracker
from batchscope.tracker.engine import EngineTracker


class Tracker(EngineTracker, DatadogTracker):
    """Every tracked batch of both sources (records and rules share one :class:`RecordBook`)."""
