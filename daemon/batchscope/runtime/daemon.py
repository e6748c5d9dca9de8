"""The imperative shell: wires settings, state store, tracker, pollers, sinks and HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from batchscope import __version__
from batchscope.model import Source
from batchscope.runtime.pollers import (
    DatadogPoller,
    EnginePoller,
    Heartbeat,
    TargetPoller,
    backoff_delay,
    classify_unexpected,
)
from batchscope.runtime.sdnotify import SystemdNotifier
from batchscope.settings import DatadogTarget, EngineTarget, Settings
from batchscope.sinks.events import EventBuffer
from batchscope.sinks.logs import EventLog, get_logger
from batchscope.sinks.metrics import Metrics
from batchscope.sinks.store import SEQ_RESERVE, StateStore
from batchscope.sources.datadog import DatadogClient
from batchscope.sources.engine import EngineClient
from batchscope.sources.fetch import PollError
from batchscope.tracker import Outcome, Tracker

log = get_logger()

TargetSettings = EngineTarget | DatadogTarget


@dataclass(slots=True)
class RunningTarget:
    settings: TargetSettings
    poller: TargetPoller
    session: aiohttp.ClientSession
    task: asyncio.Task[None] | None = None
    up: bool | None = None  # health as last logged (None: not polled yet)


class ListenError(Exception):
    """The HTTP server cannot bind its address (in use, not permitted)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        reset_state: bool = False,
        notifier: SystemdNotifier | None = None,
        reload: Callable[[], Settings] | None = None,
        heartbeat_grace: float | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.notifier = notifier or SystemdNotifier.from_environ()
        self._reload = reload
        self._heartbeat_grace = heartbeat_grace
        self._ready_sent = False
        self.store = StateStore(settings.state_path)
        loaded = self.store.open_blocking(reset=reset_state)  # StateError → exit 78
        self.tracker = Tracker(
            retention=settings.retention,
            max_tracked=settings.max_tracked_batches,
            seq=loaded.seq,
        )
        self.tracker.restore(loaded.records, loaded.seq)
        self.meta: dict[str, Any] = loaded.meta
        self._reload_lock = asyncio.Lock()
        self.metrics = Metrics(self.tracker, max_batch_series=settings.max_batch_series)
        self.events = EventBuffer()
        self.event_log = EventLog()
        self.targets: dict[tuple[Source, str], RunningTarget] = {}
        self.stop_event = asyncio.Event()
        self._persist_wanted = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self.http_port: int | None = None
        self.started = False

    # ------------------------------------------------------------------ events

    def publish(self, outcome: Outcome) -> None:
        """Hand a tracker outcome to every sink. Synchronous: no await between the tracker
        change and its metrics, so a scrape sees a consistent picture."""
        if outcome.events:
            # Sequence numbers logged beyond the store's reservation would be handed out
            # again after a crash: reserve further first (one small commit per 10,000).
            last_seq = outcome.events[-1].seq
            if self.store.persistent and last_seq > self.store.reserved_seq:
                self.store.reserve_seq_blocking(last_seq + SEQ_RESERVE)
            self.event_log.events(outcome.events)
            self.metrics.observe(outcome.events)
            self.events.extend(outcome.events)
        if outcome.notices:
            self.event_log.notices(outcome.notices)
        if outcome.events or self.tracker.dirty or self.tracker.forgotten:
            self._persist_wanted.set()

    # ------------------------------------------------------------------ datadog watch list

    def datadog_target(self, name: str | None) -> str | None:
        """The Datadog target a watch request means, or None if ambiguous/unknown."""
        names = [t.name for t in self.settings.datadog]
        if name is None:
            return names[0] if len(names) == 1 else None
        return name if name in names else None

    def watch(self, target: str, batch_id: str) -> bool:
        added, outcome = self.tracker.datadog_watch(target, batch_id, self.clock())
        self.publish(outcome)
        if added:
            log.info("datadog.watch", target=target, batch_id=batch_id)
            self._persist_wanted.set()
        return added

    def unwatch(self, target: str, batch_id: str) -> bool:
        removed = self.tracker.datadog_unwatch(target, batch_id)
        if removed:
            log.info("datadog.unwatch", target=target, batch_id=batch_id)
            self._persist_wanted.set()
        return removed

    # ------------------------------------------------------------------ health

    @property
    def ready(self) -> bool:
        return self.started and all(
            rt.poller.heartbeat.attempts > 0 for rt in self.targets.values()
        )

    def healthy(self) -> bool:
        now = time.monotonic()
        return all(rt.poller.heartbeat.alive(now) for rt in self.targets.values())

    def status_line(self) -> str:
        up = sum(1 for rt in self.targets.values() if rt.up)
        active = sum(1 for _ in self.tracker.iter_active())
        return (f"{up}/{len(self.targets)} targets up, {active} batches in flight, "
                f"{len(self.tracker)} tracked, seq {self.tracker.seq}")

    # ------------------------------------------------------------------ targets

    def _make_target(self, t: TargetSettings) -> RunningTarget:
        interval = self.settings.interval_for(t)
        # Every completed request counts as progress, so a long cycle over many pages is
        # not mistaken for a wedged loop; a request may take up to request_timeout.
        grace = self._heartbeat_grace
        heartbeat = Heartbeat(grace=grace if grace is not None
                              else max(60.0, 2 * t.request_timeout + 5))
        poller: TargetPoller
        if isinstance(t, EngineTarget):
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=10),
                headers={"User-Agent": f"batchscope/{__version__}"},
            )
            poller = EnginePoller(
                t, interval, self.tracker,
                EngineClient(t, session, on_progress=heartbeat.beat),
                self.publish, self.clock, self.meta.setdefault(f"engine:{t.name}", {}),
            )
        else:
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=t.max_concurrency),
                headers={"User-Agent": f"batchscope/{__version__}"},
            )
            poller = DatadogPoller(
                t, interval, self.tracker,
                DatadogClient(t, session, on_progress=heartbeat.beat),
                self.publish, self.clock,
            )
            self._watch_configured(t)
        poller.heartbeat = heartbeat
        heartbeat.expect_within(interval)
        return RunningTarget(settings=t, poller=poller, session=session)

    def _watch_configured(self, t: DatadogTarget) -> None:
        """Watch the target's configured batch ids, each only once ever: an id that ended
        and was forgotten after `retention` must not be reported again by a restart."""
        meta = self.meta.setdefault(f"datadog:{t.name}", {})
        before = set(meta.get("configured", []))
        configured = []
        for batch_id in t.batch_ids:
            if (batch_id in before or self.watch(t.name, batch_id)
                    or self.tracker.get(Source.DATADOG, t.name, batch_id) is not None):
                configured.append(batch_id)
        meta["configured"] = configured

    def _forget_unconfigured(self) -> None:
        """Drop state of targets that are gone from the settings (their series too)."""
        configured = set(_targets_by_key(self.settings))
        for source, target in self.tracker.targets() - configured:
            dropped = self.tracker.forget_target(source, target)
            self.meta.pop(f"{source.value}:{target}", None)
            log.info("target.forgotten", source=source.value, target=target, batches=dropped)
        self._persist_wanted.set()

    def _start_target(self, t: TargetSettings) -> None:
        rt = self._make_target(t)
        key = (rt.poller.source, t.name)
        self.targets[key] = rt
        self.metrics.add_target(*key)
        rt.task = asyncio.create_task(self._poll_loop(rt), name=f"poll {key[0]}:{t.name}")

    async def _stop_target(self, key: tuple[Source, str], timeout: float) -> None:
        rt = self.targets.pop(key)
        if rt.task is not None:
            rt.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(rt.task, timeout)
        await rt.session.close()
        self.metrics.remove_target(*key)

    async def _poll_loop(self, rt: RunningTarget) -> None:
        poller = rt.poller
        source, name = poller.source, poller.name
        failures = 0
        while not self.stop_event.is_set():
            started = time.monotonic()
            poller.heartbeat.beat()
            error: PollError | None = None
            try:
                await poller.poll_once()
            except PollError as exc:
                error = exc
            except Exception as exc:
                log.exception("poll.crashed", source=source.value, target=name)
                error = classify_unexpected(exc)
            elapsed = time.monotonic() - started
            poller.heartbeat.attempts += 1
            rate_limit = poller.rate_limit
            if rate_limit is not None:
                self.metrics.rate_limit(source, name, rate_limit.remaining)
            if error is None:
                failures = 0
                self.metrics.poll_succeeded(source, name, elapsed, self.clock())
                if rt.up is not True:
                    if rt.up is False:
                        self.event_log.target_up(source.value, name)
                    rt.up = True
                delay = poller.interval
            else:
                failures += 1
                self.metrics.poll_failed(source, name, error.reason, elapsed)
                if rt.up is not False:
                    self.event_log.target_down(source.value, name, error.reason, error.detail)
                    rt.up = False
                delay = backoff_delay(poller.interval, failures, error.retry_after)
            self._persist_wanted.set()
            poller.heartbeat.expect_within(delay)
            self._notify_progress()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), delay)

    def _notify_progress(self) -> None:
        if self.notifier.enabled:
            if self.ready and not self._ready_sent:
                self.notifier.ready()
                self._ready_sent = True
            # Pings only while every loop makes progress: a wedged loop stops them.
            if self.healthy():
                self.notifier.watchdog()
            self.notifier.status(self.status_line())

    # ------------------------------------------------------------------ background

    async def _persist_loop(self) -> None:
        while True:
            await self._persist_wanted.wait()
            self._persist_wanted.clear()
            await self.persist()
            await asyncio.sleep(0.2)  # coalesce bursts of small changes into one commit

    async def persist(self) -> bool:
        """Commit pending changes; False (changes kept for the next attempt) on failure."""
        changed, forgotten = self.tracker.take_changes()
        try:
            await self.store.save(changed, forgotten, self.tracker.seq, self.meta)
        except Exception:
            # Keep the changes for the next attempt; the daemon keeps watching meanwhile.
            for rec in changed:
                self.tracker.dirty.add(rec.key)
            self.tracker.forgotten.update(forgotten)
            log.exception("state.write_failed", path=self.store.path)
            return False
        return True

    async def _expiry_loop(self) -> None:
        period = max(1.0, min(60.0, self.settings.retention / 4))
        while True:
            await asyncio.sleep(period)
            if self.tracker.expire(self.clock()):
                self._persist_wanted.set()

    async def _watchdog_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self._notify_progress()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        from batchscope.http.app import build_app  # the HTTP layer depends on the daemon

        http = self.settings.http
        self._runner = web.AppRunner(build_app(self), access_log=None, handle_signals=False)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, http.host, http.port).start()
        except OSError as exc:
            await self._runner.cleanup()
            raise ListenError(exc) from exc
        self.http_port = int(self._runner.addresses[0][1])
        self._forget_unconfigured()
        targets: list[TargetSettings] = [*self.settings.engines, *self.settings.datadog]
        for t in targets:
            self._start_target(t)
        self._background = [
            asyncio.create_task(self._persist_loop(), name="persist"),
            asyncio.create_task(self._expiry_loop(), name="expiry"),
        ]
        interval = self.notifier.watchdog_interval()
        if interval is not None:
            self._background.append(
                asyncio.create_task(self._watchdog_loop(interval), name="watchdog"))
        self.started = True
        log.info("daemon.started", http_host=http.host, http_port=self.http_port,
                 engines=[t.name for t in self.settings.engines],
                 datadog=[t.name for t in self.settings.datadog],
                 tracked=len(self.tracker), seq=self.tracker.seq,
                 state_path=self.settings.state_path)
        if not self.targets:
            self._notify_progress()

    async def wait_ready(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not self.ready:
                await asyncio.sleep(0.01)

    async def reload(self) -> None:
        """SIGHUP: apply a re-read settings file; an invalid one keeps the old settings."""
        if self._reload is None or self.stop_event.is_set():
            return
        async with self._reload_lock:  # two SIGHUPs in a row apply one after the other
            await self._apply_reload(self._reload)

    async def _apply_reload(self, load: Callable[[], Settings]) -> None:
        try:
            new = load()
        except Exception as exc:
            problems = getattr(exc, "problems", [str(exc)])
            log.error("settings.reload_rejected", problems=problems)
            return
        old = _targets_by_key(self.settings)
        wanted = _targets_by_key(new)
        self.settings = new
        for key, t in old.items():
            if (key not in wanted or wanted[key] != t) and key in self.targets:
                await self._stop_target(key, new.shutdown_timeout)
        self._forget_unconfigured()
        for key, t in wanted.items():
            if key not in self.targets and not self.stop_event.is_set():
                self._start_target(t)
        log.info("settings.reloaded", targets=[f"{s.value}:{n}" for s, n in self.targets])

    async def stop(self) -> None:
        self.stop_event.set()
        self.notifier.stopping()
        async with self._reload_lock:  # a reload in progress finishes first
            await self._stop_all()

    async def _stop_all(self) -> None:
        timeout = self.settings.shutdown_timeout
        tasks = [rt.task for rt in self.targets.values() if rt.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for rt in list(self.targets.values()):
            await rt.session.close()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.persist()
        await self.store.close()
        if self._runner is not None:
            await self._runner.cleanup()
        log.info("daemon.stopped", seq=self.tracker.seq)

    async def run_until_signalled(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        await self.start()
        try:
            await stop.wait()
        finally:
            log.info("daemon.stopping")
            await self.stop()


def _targets_by_key(settings: Settings) -> dict[tuple[Source, str], TargetSettings]:
    out: dict[tuple[Source, str], TargetSettings] = {
        (Source.ENGINE, t.name): t for t in settings.engines
    }
    out.update({(Source.DATADOG, t.name): t for t in settings.datadog})
    return out
