"""The composition root: builds sources, core, sinks, pollers and the HTTP app from settings.

``run`` (the daemon), ``once``, ``wait`` and ``demo`` all build their parts here, so each
part is made one way only. Nothing else in the package constructs a poller or a client.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from batchscope import __version__, redaction
from batchscope.model import Source
from batchscope.runtime.pollers import (
    CountLookup,
    DatadogPoller,
    DiagnosisPlan,
    EnginePoller,
    Heartbeat,
    Publish,
    TargetPoller,
)
from batchscope.runtime.publisher import Publisher
from batchscope.settings import DatadogTarget, EngineTarget, Settings, secret_values
from batchscope.sinks.events import EventBuffer
from batchscope.sinks.logs import EventLog
from batchscope.sinks.metrics import Metrics
from batchscope.sinks.state_format import memory_from_meta, memory_to_meta
from batchscope.sinks.store import SEQ_RESERVE, StateError, StateStore
from batchscope.sources.datadog import DatadogClient
from batchscope.sources.engine import EngineClient
from batchscope.sources.engine_jobs import EngineJobs
from batchscope.tracker import Changes, Core, DatadogWatch, EngineWatch, TargetWatch

TargetSettings = EngineTarget | DatadogTarget
Clock = Callable[[], float]


def target_watch(t: TargetSettings) -> TargetWatch:
    """What the core needs to know of a configured target."""
    if isinstance(t, EngineTarget):
        return EngineWatch(name=t.name, stall_after=t.stall_after, cockpit_url=t.cockpit_url)
    return DatadogWatch(name=t.name, stall_after=t.stall_after,
                        not_found_grace=t.not_found_grace, batch_ids=tuple(t.batch_ids),
                        app_url=t.app_base_url)


def configured_targets(settings: Settings) -> list[TargetSettings]:
    return [*settings.engines, *settings.datadog]


def new_session(t: TargetSettings) -> aiohttp.ClientSession:
    """One session per target: its connection pool is its own."""
    limit = t.max_concurrency if isinstance(t, DatadogTarget) else 10
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit),
        headers={"User-Agent": f"batchscope/{__version__}"},
    )


def heartbeat_for(t: TargetSettings, grace: float | None = None) -> Heartbeat:
    # Every completed request counts as progress, so a long cycle over many pages is not
    # mistaken for a wedged loop; a request may take up to request_timeout.
    return Heartbeat(grace=grace if grace is not None else max(60.0, 2 * t.request_timeout + 5),
                     cycle_bound=max(600.0, 60 * t.request_timeout))


def make_poller(
    t: TargetSettings,
    *,
    settings: Settings,
    core: Core,
    publish: Publish,
    clock: Clock,
    session: aiohttp.ClientSession,
    heartbeat: Heartbeat,
    metrics: Metrics | None = None,
) -> TargetPoller:
    """The one poller factory: a target's client on ``session`` and its poller."""
    interval = settings.interval_for(t)
    if isinstance(t, EngineTarget):
        client = EngineClient(t, session, on_progress=heartbeat.beat,
                              max_rows=settings.max_tracked_batches)
        count: CountLookup | None = None
        if metrics is not None:
            count = functools.partial(metrics.diagnosis_lookup, Source.ENGINE, t.name)
        plan = DiagnosisPlan(jobs=EngineJobs(client), sample=t.diagnosis_sample,
                             budget=t.diagnosis_lookups, count=count)
        return EnginePoller(t.name, interval, core, client, publish, clock, heartbeat, plan)
    return DatadogPoller(t.name, interval, core,
                         DatadogClient(t, session, on_progress=heartbeat.beat),
                         publish, clock, heartbeat)


def new_core(settings: Settings) -> Core:
    return Core(retention=settings.retention, max_tracked=settings.max_tracked_batches)


class StateFile:
    """The state store seen by the daemon: loads into the core, saves the core's changes."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    @property
    def path(self) -> str:
        return self.store.path

    def load_into(self, core: Core, *, reset: bool) -> None:
        loaded = self.store.open_blocking(reset=reset)  # StateError → exit 78
        try:
            memory = memory_from_meta(loaded.meta)
        except (ValueError, TypeError) as exc:
            raise StateError(f"{self.store.path}: unreadable meta entry: {exc}") from exc
        core.restore(loaded.records, loaded.seq, memory)

    def reserve_seq(self, last_seq: int) -> None:
        """Sequence numbers logged beyond the reservation would be handed out again after
        a crash: reserve further first (one small commit per SEQ_RESERVE events)."""
        if self.store.persistent and last_seq > self.store.reserved_seq:
            self.store.reserve_seq_blocking(last_seq + SEQ_RESERVE)

    async def save(self, changes: Changes) -> None:
        await self.store.save(changes.records, changes.forgotten, changes.seq,
                              memory_to_meta(changes.memory))

    async def close(self) -> None:
        await self.store.close()


@dataclass(slots=True)
class Parts:
    """Everything the daemon runs, built from settings."""

    settings: Settings
    clock: Clock
    core: Core
    state: StateFile
    metrics: Metrics
    events: EventBuffer
    log: EventLog
    publish: Publisher


def build(settings: Settings, *, clock: Clock = time.time, reset_state: bool = False,
          changed: Callable[[], None] | None = None) -> Parts:
    """The daemon's parts; opens (and loads) the state file. Raises StateError."""
    redaction.register(secret_values(settings))  # whoever logs, upstream text included
    core = new_core(settings)
    state = StateFile(StateStore(settings.state_path))
    state.load_into(core, reset=reset_state)
    metrics = Metrics(core.tracker, max_batch_series=settings.max_batch_series)
    events = EventBuffer()
    log = EventLog()
    publish = Publisher(log, metrics=metrics, buffer=events, reserve_seq=state.reserve_seq,
                        changed=changed)
    return Parts(settings=settings, clock=clock, core=core, state=state, metrics=metrics,
                 events=events, log=log, publish=publish)
