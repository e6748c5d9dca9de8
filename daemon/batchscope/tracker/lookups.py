"""The diagnosis lookups the core wants made: asked for, cached, made within a budget."""

from __future__ import annotations

from collections.abc import Iterable

from batchscope.model import Source, State
from batchscope.tracker.diagnosis import Findings, LookupKind, LookupRequest, engine_diagnosis
from batchscope.tracker.tracker import Tracker


class LookupQueue:
    """Lookups asked for and not done yet, per engine target, oldest first.

    A request is dropped when its batch leaves the state it was for, and never queued when
    the same evidence is already known (a failed-jobs sample for the same failed count): a
    steady cycle queues nothing.
    """

    def __init__(self, tracker: Tracker) -> None:
        self._tracker = tracker
        self._pending: dict[str, dict[str, LookupRequest]] = {}

    def add(self, target: str, requests: Iterable[LookupRequest]) -> None:
        pending = self._pending.setdefault(target, {})
        for request in requests:
            if not self._cached(target, request):
                pending[request.batch_id] = request
        for batch_id in [b for b, r in pending.items() if self._stale(target, r)]:
            del pending[batch_id]

    def due(self, target: str, budget: int) -> tuple[list[LookupRequest], int]:
        """The lookups to make this cycle (at most ``budget``), and how many wait."""
        pending = list(self._pending.get(target, {}).values())
        return pending[:budget], max(0, len(pending) - budget)

    def done(self, target: str, request: LookupRequest, findings: Findings) -> None:
        """Fold what a lookup found into the batch's diagnosis, if it still applies."""
        self._pending.get(target, {}).pop(request.batch_id, None)
        rec = self._tracker.get(Source.ENGINE, target, request.batch_id)
        if rec is not None and not self._stale(target, request):
            reason, failure = engine_diagnosis(rec.state, rec.jobs, findings)
            self._tracker.diagnose(rec, reason, failure)

    def forget(self, target: str) -> None:
        self._pending.pop(target, None)

    def _cached(self, target: str, request: LookupRequest) -> bool:
        rec = self._tracker.get(Source.ENGINE, target, request.batch_id)
        if rec is None or request.kind is not LookupKind.FAILED_JOBS:
            return False
        failure = rec.diagnosis.failure
        return failure is not None and failure.get("failed_jobs") == request.failed_jobs

    def _stale(self, target: str, request: LookupRequest) -> bool:
        rec = self._tracker.get(Source.ENGINE, target, request.batch_id)
        wanted = State.FAILED if request.kind is LookupKind.FAILED_JOBS else State.STALLED
        return rec is None or rec.state is not wanted
