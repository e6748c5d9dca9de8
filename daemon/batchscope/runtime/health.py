"""Liveness and readiness from poll-loop progress, for /healthz, /readyz and systemd."""

from __future__ import annotations

import time
from collections.abc import Mapping

from batchscope.model import Source
from batchscope.runtime.poll_loop import RunningTarget
from batchscope.runtime.sdnotify import SystemdNotifier
from batchscope.tracker import Core


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
