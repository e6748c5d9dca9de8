"""``batchscope once`` and ``batchscope wait``: the daemon's parts without the daemon."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from batchscope.http.views import batch_view
from batchscope.model import Source, State, is_terminal
from batchscope.runtime import compose
from batchscope.runtime.compose import TargetSettings
from batchscope.runtime.pollers import EnginePoller, TargetPoller
from batchscope.runtime.publisher import Publisher
from batchscope.settings import DatadogTarget, Settings
from batchscope.sinks.logs import EventLog
from batchscope.sources.fetch import PollError
from batchscope.tracker import Core
from batchscope.tracker.rules import engine_end_state


class WaitTimeout(Exception):
    pass


class OneShot:
    """A core, log-only publishing and pollers for some targets: no state file, no HTTP."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.core: Core = compose.new_core(settings)
        self.log = EventLog()
        self.publish = Publisher(self.log)
        self._sessions: list[aiohttp.ClientSession] = []

    def start(self, targets: list[TargetSettings]) -> list[TargetPoller]:
        self.publish(self.core.configure([compose.target_watch(t) for t in targets],
                                         time.time()))
        pollers = []
        for t in targets:
            session = aiohttp.ClientSession()
            self._sessions.append(session)
            pollers.append(compose.make_poller(
                t, settings=self.settings, core=self.core, publish=self.publish,
                clock=time.time, session=session, heartbeat=compose.heartbeat_for(t)))
        return pollers

    def target_down(self, poller: TargetPoller, error: BaseException) -> None:
        reason = error.reason if isinstance(error, PollError) else "invalid_response"
        self.log.target_down(poller.source.value, poller.name, reason, str(error))

    async def close(self) -> None:
        for s in self._sessions:
            await s.close()


async def poll_once(settings: Settings) -> tuple[list[dict[str, Any]], bool]:
    """One round of every target; returns (batches, whether any target failed)."""
    shot = OneShot(settings)
    try:
        pollers = shot.start(compose.configured_targets(settings))
        results = await asyncio.gather(*(p.poll_once() for p in pollers),
                                       return_exceptions=True)
        failed = False
        for poller, result in zip(pollers, results, strict=True):
            if isinstance(result, BaseException):
                failed = True
                shot.target_down(poller, result)
        return [batch_view(rec) for rec in shot.core.batches()], failed
    finally:
        await shot.close()


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
    """Poll until the batch is terminal; returns its final state.

    ``deadline`` (``time.monotonic()``) bounds everything, slow or stuck upstream
    requests and their retries included: a CI gate answers on time.
    """
    src = Source(source)
    chosen: TargetSettings
    if src is Source.ENGINE:
        chosen = _pick(settings.engines, target, source)
    else:
        picked: DatadogTarget = _pick(settings.datadog, target, source)
        chosen = picked.model_copy(update={"batch_ids": [batch_id]})
    loop = asyncio.get_running_loop()
    shot = OneShot(settings)
    state = "unknown"
    try:
        async with asyncio.timeout_at(loop.time() + (deadline - time.monotonic())):
            [poller] = shot.start([chosen])
            while True:
                try:
                    await poller.poll_once()
                except PollError as exc:
                    shot.target_down(poller, exc)
                rec = shot.core.get(src, poller.name, batch_id)
                if rec is not None:
                    state = rec.state.value
                    if is_terminal(src, rec.state):
                        return rec.state.value
                elif isinstance(poller, EnginePoller):
                    ended = await _engine_end_state(poller, batch_id)
                    if ended is not None:
                        return ended.value
                await asyncio.sleep(poller.interval)
    except TimeoutError:
        raise WaitTimeout(f"batch {batch_id} still {state}") from None
    finally:
        await shot.close()


async def _engine_end_state(poller: EnginePoller, batch_id: str) -> State | None:
    """End state of a batch that is not in the runtime list (it may have ended long ago)."""
    try:
        record = await poller.client.history_record(batch_id)
        if record is not None:
            record = await poller.client.with_delete_evidence(record)
    except PollError:
        return None
    return engine_end_state(record, State.NONE)
