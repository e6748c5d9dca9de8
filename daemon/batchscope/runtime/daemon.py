"""The supervisor: runs the poll loops, persistence, expiry, the watchdog, reloads and
signals around the parts the composition root built."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable

from aiohttp import web

from batchscope.http.app import build_app
from batchscope.http.ports import ApiPorts
from batchscope.http.server import start_http_server
from batchscope.model import Source
from batchscope.runtime import compose
from batchscope.runtime.compose import TargetSettings
from batchscope.runtime.health import HealthBoard
from batchscope.runtime.poll_loop import RunningTarget, poll_forever
from batchscope.runtime.sdnotify import SystemdNotifier
from batchscope.runtime.watching import WatchService
from batchscope.settings import Settings
from batchscope.sinks.logs import get_logger
from batchscope.tracker import Tracker
from batchscope.tracker.core import target_key

log = get_logger()


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
        self._reload = reload
        self._heartbeat_grace = heartbeat_grace
        self._persist_wanted = asyncio.Event()
        self.parts = compose.build(settings, clock=clock, reset_state=reset_state,
                                   changed=self._changed)
        self.core = self.parts.core
        self.metrics = self.parts.metrics
        self.events = self.parts.events
        self.targets: dict[tuple[Source, str], RunningTarget] = {}
        self.health = HealthBoard(self.targets, self.core,
                                  notifier or SystemdNotifier.from_environ())
        self.watch_list = WatchService(self.core, self.parts.publish, clock, self.persist)
        self.stop_event = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._background: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self.http_port: int | None = None

    @property
    def tracker(self) -> Tracker:
        return self.core.tracker

    @property
    def ready(self) -> bool:
        return self.health.ready

    def healthy(self) -> bool:
        return self.health.healthy()

    def watch(self, target: str, batch_id: str) -> bool:
        """Watch a Datadog CI batch (the demo's scenario and tests use this)."""
        return self.watch_list.watch(target, batch_id).value == "added"

    def _changed(self) -> None:
        if self.core.has_changes:
            self._persist_wanted.set()

    # ------------------------------------------------------------------ targets

    def _configure_core(self) -> None:
        self.parts.publish(self.core.configure(
            [compose.target_watch(t) for t in compose.configured_targets(self.settings)],
            self.clock()))
        self._persist_wanted.set()

    def _start_target(self, t: TargetSettings) -> None:
        session = compose.new_session(t)
        poller = compose.make_poller(
            t, settings=self.settings, core=self.core, publish=self.parts.publish,
            clock=self.clock, session=session,
            heartbeat=compose.heartbeat_for(t, self._heartbeat_grace), metrics=self.metrics)
        poller.heartbeat.expect_within(poller.interval)
        rt = RunningTarget(settings=t, poller=poller, session=session)
        self.targets[poller.key] = rt
        self.metrics.add_target(*poller.key)
        rt.task = asyncio.create_task(
            poll_forever(rt, stop=self.stop_event, metrics=self.metrics,
                         log_sink=self.parts.log, clock=self.clock,
                         after_poll=self._after_poll),
            name=f"poll {poller.source}:{poller.name}")

    def _after_poll(self) -> None:
        # An adaptive Datadog loop runs several cycles a second: only changes are saved.
        self._changed()
        self.health.notify_progress()

    async def _stop_target(self, key: tuple[Source, str], timeout: float) -> None:
        rt = self.targets.pop(key)
        if rt.task is not None:
            rt.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(rt.task, timeout)
        await rt.session.close()
        self.metrics.remove_target(*key)

    # ------------------------------------------------------------------ background

    async def _persist_loop(self) -> None:
        while True:
            await self._persist_wanted.wait()
            self._persist_wanted.clear()
            await self.persist()
            await asyncio.sleep(0.2)  # coalesce bursts of small changes into one commit

    async def persist(self) -> bool:
        """Commit pending changes; False (changes kept for the next attempt) on failure."""
        changes = self.core.take_changes()
        try:
            await self.parts.state.save(changes)
        except Exception:
            # Keep the changes for the next attempt; the daemon keeps watching meanwhile.
            self.core.requeue(changes)
            log.exception("state.write_failed", path=self.parts.state.path)
            return False
        return True

    async def _expiry_loop(self) -> None:
        period = max(1.0, min(60.0, self.settings.retention / 4))
        while True:
            await asyncio.sleep(period)
            if self.core.expire(self.clock()):
                self._persist_wanted.set()

    async def _watchdog_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.health.notify_progress()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        http = self.settings.http
        ports = ApiPorts(batches=self.core, events=self.events, health=self.health,
                         watch_list=self.watch_list, targets=self.health)
        app = build_app(ports, self.metrics.registry, http)
        try:
            self._runner, self.http_port = await start_http_server(
                app, http.host, http.port, shutdown_timeout=self.settings.shutdown_timeout)
        except OSError as exc:
            raise ListenError(exc) from exc
        self._configure_core()
        for t in compose.configured_targets(self.settings):
            self._start_target(t)
        self._background = [
            asyncio.create_task(self._persist_loop(), name="persist"),
            asyncio.create_task(self._expiry_loop(), name="expiry"),
        ]
        interval = self.health.notifier.watchdog_interval()
        if interval is not None:
            self._background.append(
                asyncio.create_task(self._watchdog_loop(interval), name="watchdog"))
        self.health.started = True
        log.info("daemon.started", http_host=http.host, http_port=self.http_port,
                 engines=[t.name for t in self.settings.engines],
                 datadog=[t.name for t in self.settings.datadog],
                 tracked=len(self.tracker), seq=self.core.seq,
                 state_path=self.settings.state_path)
        if not self.targets:
            self.health.notify_progress()

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
        old_settings = self.settings
        changed = changed_settings(old_settings, new)
        old = _targets_by_key(old_settings)
        wanted = _targets_by_key(new)
        self.settings = new
        self._apply_live(new)
        for key, t in old.items():
            moved = (key not in wanted or wanted[key] != t
                     or old_settings.interval_for(t) != new.interval_for(wanted[key]))
            if moved and key in self.targets:
                await self._stop_target(key, new.shutdown_timeout)
        self._configure_core()
        for key, t in wanted.items():
            if key not in self.targets and not self.stop_event.is_set():
                self._start_target(t)
        restart_needed = sorted(changed & RESTART_NEEDED)
        # A change that did not take effect is worth a warning: the operator thinks it did.
        (log.warning if restart_needed else log.info)(
            "settings.reloaded", targets=[f"{s.value}:{n}" for s, n in self.targets],
            changed=sorted(changed - RESTART_NEEDED), restart_needed=restart_needed)

    def _apply_live(self, new: Settings) -> None:
        """Bounds and caps take effect at once (log settings: the CLI's reload does them)."""
        self.core.tracker.retention = new.retention
        self.core.tracker.max_tracked = new.max_tracked_batches
        self.metrics.collector.max_batch_series = new.max_batch_series

    async def stop(self) -> None:
        self.stop_event.set()
        self.health.notifier.stopping()
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
        await self.parts.state.close()
        if self._runner is not None:
            await self._runner.cleanup()
        log.info("daemon.stopped", seq=self.core.seq)

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


#: Settings a running daemon cannot change: it listens and holds its state file.
RESTART_NEEDED = frozenset({"http.host", "http.port", "http.api_token", "http.max_body_bytes",
                            "state_path", "secrets_dir"})


def changed_settings(old: Settings, new: Settings) -> set[str]:
    """Dotted names of the global settings that differ (targets are compared apart)."""
    before = old.model_dump(exclude={"engines", "datadog"})
    after = new.model_dump(exclude={"engines", "datadog"})
    changed = set()
    for name in before.keys() | after.keys():
        a, b = before.get(name), after.get(name)
        if isinstance(a, dict) and isinstance(b, dict):
            changed |= {f"{name}.{k}" for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
        elif a != b:
            changed.add(name)
    return changed


def _targets_by_key(settings: Settings) -> dict[tuple[Source, str], TargetSettings]:
    return {target_key(compose.target_watch(t)): t
            for t in compose.configured_targets(settings)}
