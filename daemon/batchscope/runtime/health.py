"""Liveness and readiness from poll-loop progress, for /healthz, /readyz and systemd; the
targets' poll status for /api/v1/targets and the status page."""

from __future__ import annotations

import time
from collections.abc import Mapping

from batchscope.http.ports import PollProblem, TargetStatus
from batchscope.model import SOURCE_STATES, Source, State
from batchscope.runtime.poll_loop import RunningTarget
from batchscope.runtime.sdnotify import SystemdNotifier
from batchscope.settings import DatadogTarget
from batchscope.tracker import Core
from batchscope.tracker.links import DatadogLinks

#: States /api/v1/targets counts: each source's, and ``none`` for Datadog batches watched
#: but not seen yet.
_TRACKED_STATES = {Source.ENGINE: SOURCE_STATES[Source.ENGINE],
                   Source.DATADOG: (State.NONE, *SOURCE_STATES[Source.DATADOG])}


class HealthBoard:
    def __init__(self, targets: Mapping[tuple[Source, str], RunningTarget], core: Core,
                 notifier: SystemdNotifier) -> None:
        self._targets = targets
        self._core = core
        self.notifier = notifier
        self.started = False
        self._ready_sent = False

    @property
    def ready(self) -> bool:
        return self.started and all(
            rt.poller.heartbeat.attempts > 0 for rt in self._targets.values())

    def healthy(self) -> bool:
        now = time.monotonic()
        return all(rt.poller.heartbeat.alive(now) for rt in self._targets.values())

    def targets(self) -> list[TargetStatus]:
        """Every polled target (engines first, as configured) and its tracked batches."""
        counts = self._core.tracker.counts
        out = []
        for (source, name), rt in sorted(self._targets.items(),
                                         key=lambda kv: kv[0][0] is not Source.ENGINE):
            error = rt.last_error
            out.append(TargetStatus(
                source=source, target=name, up=rt.up, poll_interval=rt.poller.interval,
                last_poll=rt.last_poll, last_success=rt.last_success,
                last_error=None if error is None else PollProblem(error.reason, error.detail),
                tracked={state: counts[(source, name, state)]
                         for state in _TRACKED_STATES[source]},
            ))
        return out

    def result_links(self, target: str) -> DatadogLinks | None:
        rt = self._targets.get((Source.DATADOG, target))
        if rt is None or not isinstance(rt.settings, DatadogTarget):
            return None
        return DatadogLinks(rt.settings.app_base_url)

    def status_line(self) -> str:
        up = sum(1 for rt in self._targets.values() if rt.up)
        tracker = self._core.tracker
        active = sum(1 for _ in tracker.iter_active())
        return (f"{up}/{len(self._targets)} targets up, {active} batches in flight, "
                f"{len(tracker)} tracked, seq {tracker.seq}")

    def notify_progress(self) -> None:
        """READY=1 once, then WATCHDOG=1 only while every loop makes progress."""
        if not self.notifier.enabled:
            return
        if self.ready and not self._ready_sent:
            self.notifier.ready()
            self._ready_sent = True
        if self.healthy():
            self.notifier.watchdog()
        self.notifier.status(self.status_line())
