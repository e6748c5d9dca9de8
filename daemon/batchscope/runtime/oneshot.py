"""``batchscope once`` and ``batchscope wait``: the pollers without the daemon around them."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from batchscope.http.app import batch_view
from batchscope.model import Source, State, is_terminal
from batchscope.runtime.pollers import DatadogPoller, EnginePoller, TargetPoller
from batchscope.settings import DatadogTarget, EngineTarget, Settings
from batchscope.sinks.logs import EventLog
from batchscope.sources.datadog import DatadogClient
from batchscope.sources.engine import EngineClient
from batchscope.sources.fetch import PollError
from batchscope.tracker import Outcome, Tracker
from batchscope.tracker.rules import engine_end_state


class WaitTimeout(Exception):
    pass


class _Round:
    """A tracker plus pollers for every configured target, logging events as they come."""

    def __init__(self, settings: Settings, sessions: list[aiohttp.ClientSession]) -> None:
        self.settings = settings
        self.tracker = Tracker(retention=settings.retention,
                               max_tracked=settings.max_tracked_batches)
        self.log = EventLog()
        self.pollers: list[TargetPoller] = []
        self._sessions = sessions

    def publish(self, outcome: Outcome) -> None:
        self.log.events(outcome.events)
        self.log.notices(outcome.notices)

    def add_engine(self, t: EngineTarget) -> EnginePoller:
        session = aiohttp.ClientSession()
        self._sessions.append(session)
        poller = EnginePoller(t, self.settings.interval_for(t), self.tracker,
                              EngineClient(t, session), self.publish, time.time, {})
        self.pollers.append(poller)
        return poller

    def add_datadog(self, t: DatadogTarget, batch_ids: list[str]) -> DatadogPoller:
        session = aiohttp.ClientSession()
        self._sessions.append(session)
        for batch_id in batch_ids:
            self.tracker.datadog_watch(t.name, batch_id, time.time())
        poller = DatadogPoller(t, self.settings.interval_for(t), self.tracker,
                               DatadogClient(t, session), self.publish, time.time)
        self.pollers.append(poller)
        return poller


async def poll_once(settings: Settings) -> tuple[list[dict[str, Any]], bool]:
    """One round of every target; returns (batches, whether any target failed)."""
    sessions: list[aiohttp.ClientSession] = []
    try:
        round_ = _Round(settings, sessions)
        for e in settings.engines:
            round_.add_engine(e)
        for d in settings.datadog:
            round_.add_datadog(d, list(d.batch_ids))
        results = await asyncio.gather(*(p.poll_once() for p in round_.pollers),
                                       return_exceptions=True)
        failed = False
        for poller, result in zip(round_.pollers, results, strict=True):
            if isinstance(result, BaseException):
                failed = True
                reason = result.reason if isinstance(result, PollError) else "invalid_response"
                round_.log.target_down(poller.source.value, poller.name, reason, str(result))
        rows = [batch_view(rec) for rec in round_.tracker.records.values()]
        return rows, failed
    finally:
        for s in sessions:
            await s.close()


def _pick(targets: list[Any], name: str | None, source: str) -> Any:
    if name is None:
        if len(targets) != 1:
            raise LookupError(f"name a --target: {len(targets)} {source} targets are configured")
        return targets[0]
    for t in targets:
        if t.name == name:
            return t
    raise LookupError(f"no {source} target named {name!r}")


async def wait_for_batch(
    settings: Settings, source: str, target: str | None, batch_id: str, deadline: float
) -> str:
    """Poll until the batch is terminal; returns its final state."""
    sessions: list[aiohttp.ClientSession] = []
    try:
        round_ = _Round(settings, sessions)
        poller: TargetPoller
        src = Source(source)
        if src is Source.ENGINE:
            t_e = _pick(settings.engines, target, source)
            poller = round_.add_engine(t_e)
            interval, name = settings.interval_for(t_e), t_e.name
        else:
            t_d = _pick(settings.datadog, target, source)
            poller = round_.add_datadog(t_d, [batch_id])
            interval, name = settings.interval_for(t_d), t_d.name
        while True:
            try:
                await poller.poll_once()
            except PollError as exc:
                round_.log.target_down(source, name, exc.reason, exc.detail)
            rec = round_.tracker.get(src, name, batch_id)
            if rec is not None and is_terminal(src, rec.state):
                return rec.state.value
            if src is Source.ENGINE and rec is None:
                ended = await _engine_end_state(poller, batch_id)
                if ended is not None:
                    return ended.value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                state = rec.state.value if rec is not None else "unknown"
                raise WaitTimeout(f"batch {batch_id} still {state}")
            await asyncio.sleep(min(interval, remaining))
    finally:
        for s in sessions:
            await s.close()


async def _engine_end_state(poller: TargetPoller, batch_id: str) -> State | None:
    """End state of a batch that is not in the runtime list (it may have ended long ago)."""
    assert isinstance(poller, EnginePoller)
    try:
        record = await poller.client.history_record(batch_id)
        if record is not None:
            record = await poller.client.with_delete_evidence(record)
    except PollError:
        return None
    return engine_end_state(record, State.NONE)
