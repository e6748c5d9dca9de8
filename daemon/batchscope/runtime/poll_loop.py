"""One target's poll loop: poll, back off on failure, report health changes once."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from batchscope.model import ErrorReason
from batchscope.runtime.pollers import Clock, DatadogPoller, TargetPoller
from batchscope.settings import DatadogTarget, EngineTarget
from batchscope.sinks.logs import EventLog, get_logger
from batchscope.sinks.metrics import Metrics
from batchscope.sources.fetch import PollError

log = get_logger()


def backoff_delay(interval: float, failures: int, retry_after: float | None,
                  cap: float = 300.0) -> float:
    """Exponential backoff with full jitter, never shorter than the normal interval."""
    ceiling = max(interval, min(cap, interval * (2 ** min(failures, 16))))
    delay = random.uniform(interval, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))  # never parked for an upstream's whim
    return delay


def next_delay(poller: TargetPoller) -> float:
    """Seconds to the next cycle after a successful one: the interval, or for an adaptive
    Datadog poller until its next batch is due (never longer than the interval). A bug in
    the schedule falls back to the interval: it never ends the loop."""
    if isinstance(poller, DatadogPoller):
        try:
            return poller.next_delay()
        except Exception:
            log.exception("poll.crashed", source=poller.source.value, target=poller.name)
    return poller.interval


async def _pause(poller: TargetPoller, stop: asyncio.Event, delay: float,
                 early: bool) -> None:
    """Wait ``delay`` seconds or until ``stop``; with ``early``, an adaptive Datadog poller
    is looked at every ``tick`` and the wait ends when a batch was watched meanwhile (its
    first sighting is polled at once, not at the next due batch)."""
    if not (early and isinstance(poller, DatadogPoller) and poller.adaptive):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        return
    loop = asyncio.get_running_loop()
    end = loop.time() + delay
    while not stop.is_set():
        left = end - loop.time()
        if left <= 0 or _wants_poll(poller):
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), min(left, poller.tick))


def _wants_poll(poller: DatadogPoller) -> bool:
    try:
        return poller.wants_poll()
    except Exception:
        return False  # the cycle at the end of the wait meets (and logs) the same trouble


def classify_unexpected(exc: Exception) -> PollError:
    """A bug or an upstream surprise the parsers did not foresee: never kill the loop."""
    return PollError(ErrorReason.INVALID_RESPONSE, f"{type(exc).__name__}: {exc}")


@dataclass(slots=True)
class RunningTarget:
    """A configured target while it is polled: its poller, session and loop task."""

    settings: EngineTarget | DatadogTarget
    poller: TargetPoller
    session: aiohttp.ClientSession
    task: asyncio.Task[None] | None = None
    up: bool | None = None  # health as last logged (None: not polled yet)
    # What /api/v1/targets and the status page show (wall-clock seconds, the daemon's clock):
    last_poll: float | None = None  # when the last poll attempt ended
    last_success: float | None = None  # when the last successful poll ended
    last_error: PollError | None = None  # the last attempt's error; None once one succeeds


async def poll_forever(
    rt: RunningTarget,
    *,
    stop: asyncio.Event,
    metrics: Metrics,
    log_sink: EventLog,
    clock: Clock,
    after_poll: Callable[[], None],
) -> None:
    """Poll until ``stop`` is set; a failure never ends the loop, it only delays it."""
    poller = rt.poller
    source, name = poller.source, poller.name
    failures = 0
    waiting_logged = False
    while not stop.is_set():
        started = time.monotonic()
        poller.heartbeat.start_cycle()
        error: PollError | None = None
        try:
            await poller.poll_once()
        except PollError as exc:
            error = exc
        except Exception as exc:
            log.exception("poll.crashed", source=source.value, target=name)
            error = classify_unexpected(exc)
        elapsed = time.monotonic() - started
        poller.heartbeat.end_cycle()
        rt.last_poll = clock()
        rt.last_error = error
        rate_limit = poller.rate_limit
        if rate_limit is not None:
            metrics.rate_limit(source, name, rate_limit.remaining)
        if error is None:
            failures = 0
            rt.last_success = rt.last_poll
            metrics.poll_succeeded(source, name, elapsed, rt.last_poll)
            if rt.up is not True:
                if rt.up is False:
                    log_sink.target_up(source.value, name)
                rt.up = True
            delay = next_delay(poller)
            waiting_logged = False
        else:
            failures += 1
            metrics.poll_failed(source, name, error.reason, elapsed)
            if rt.up is not False:
                log_sink.target_down(source.value, name, error.reason, error.detail)
                rt.up = False
            delay = backoff_delay(poller.interval, failures, error.retry_after)
            if (error.retry_after is not None and error.retry_after > poller.interval
                    and not waiting_logged):
                # The upstream asked for a long pause (already capped by the source): say so
                # once per outage, not on every retry.
                waiting_logged = True
                log.warning("target.waiting", source=source.value, target=name,
                            seconds=round(error.retry_after, 1), reason=error.reason)
        poller.heartbeat.expect_within(delay)
        after_poll()
        await _pause(poller, stop, delay, early=error is None)
