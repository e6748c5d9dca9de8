"""What a poller hands the core: one type per kind of upstream answer."""

from __future__ import annotations

from dataclasses import dataclass

from batchscope.model import DatadogBatchSnapshot, EngineBatchSnapshot, EngineHistoryRecord
from batchscope.tracker.diagnosis import Findings, LookupRequest


@dataclass(frozen=True, slots=True)
class RuntimeListed:
    """A complete ``/batch/statistics`` listing; ``unreadable`` rows are still running."""

    rows: list[EngineBatchSnapshot]
    server_time: float | None = None
    unreadable: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class EndLookedUp:
    """What the engine says of a batch that left the runtime list."""

    batch_id: str
    history: EngineHistoryRecord | None  # None: the engine has no history row
    still_running: bool = False


@dataclass(frozen=True, slots=True)
class HistorySwept:
    """One history sweep; the rows :meth:`Core.unseen_endings` named carry delete evidence."""

    rows: list[EngineHistoryRecord]


@dataclass(frozen=True, slots=True)
class Diagnosed:
    """What a diagnosis lookup found for a batch the core asked about."""

    request: LookupRequest
    findings: Findings


@dataclass(frozen=True, slots=True)
class CiBatchSeen:
    snapshot: DatadogBatchSnapshot


@dataclass(frozen=True, slots=True)
class CiBatchNotFound:
    batch_id: str


EngineObservation = RuntimeListed | EndLookedUp | HistorySwept | Diagnosed
DatadogObservation = CiBatchSeen | CiBatchNotFound
Observation = EngineObservation | DatadogObservation
