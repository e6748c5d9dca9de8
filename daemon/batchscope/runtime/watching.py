"""The Datadog watch list as the API sees it: the core's watch list, published and saved."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from batchscope.http.ports import WatchOutcome
from batchscope.model import Source
from batchscope.runtime.pollers import Clock, Publish
from batchscope.tracker import Core, Outcome


class WatchService:
    def __init__(self, core: Core, publish: Publish, clock: Clock,
                 commit: Callable[[], Awaitable[bool]]) -> None:
        self._core = core
        self._publish = publish
        self._clock = clock
        self._commit = commit

    def datadog_targets(self) -> list[str]:
        return self._core.datadog_targets()

    def watch(self, target: str, batch_id: str) -> WatchOutcome:
        out = Outcome()
        added = self._core.watch(target, batch_id, self._clock(), out)
        self._publish(out)
        if added:
            return WatchOutcome.ADDED
        if self._core.get(Source.DATADOG, target, batch_id) is not None:
            return WatchOutcome.ALREADY
        return WatchOutcome.REFUSED

    def unwatch(self, target: str, batch_id: str) -> bool:
        out = Outcome()
        removed = self._core.unwatch(target, batch_id, out)
        self._publish(out)
        return removed

    async def commit(self) -> bool:
        return await self._commit()
