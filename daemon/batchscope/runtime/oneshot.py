"""``batchscope once`` and ``batchscope wait``: the daemon's parts without the daemon."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TextIO

import aiohttp

from batchscope import redaction
from batchscope.http.views import batch_detail, batch_view
from batchscope.model import (
    BatchTransition,
    EngineBatchSnapshot,
    Event,
    Reason,
    ResultState,
    ResultTransition,
    Source,
    State,
)
from batchscope.runtime import compose
from batchscope.runtime.compose import TargetSettings
from batchscope.runtime.pollers import DatadogPoller, EnginePoller, Publish, TargetPoller
from batchscope.runtime.publisher import Publisher
from batchscope.runtime.reports import UNKNOWN, IdleCheck, WaitedBatch, WaitReport
from batchscope.settings import DatadogTarget, EngineTarget, Settings
from batchscope.sinks.logs import EventLog
from batchscope.sources.engine import EngineClient
from batchscope.sources.engine_json import BadRow, parse_statistics_row
from batchscope.sources.fetch import PollError
from batchscope.tracker import Core, Outcome, TrackedBatch
from batchscope.tracker.links import DatadogLinks, EngineLinks
from batchscope.tracker.observations import EndLookedUp, HistorySwept, RuntimeListed
from batchscope.tracker.rules import engine_end_state, engine_runtime_state

#: Runtime batches listed per type and poll by ``wait --idle`` (the rest are counted).
IDLE_SAMPLE: Final = 20


class OneShot:
    """A core, log-only publishing and pollers for some targets: no state file, no HTTP."""

    def __init__(self, settings: Settings, *, publish: Publish | None = None) -> None:
        self.settings = settings
        self.core: Core = compose.new_core(settings)
        self.log = EventLog()
        self.publish: Publish = publish if publish is not None else Publisher(self.log)
        self._sessions: list[aiohttp.ClientSession] = []

    def start(self, targets: list[TargetSettings]) -> list[TargetPoller]:
        self.publish(self.core.configure([compose.target_watch(t) for t in targets],
                                         time.time()))
        pollers = []
        for t in targets:
            session = compose.new_session(t)
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


def _pick(targets: Sequence[Any], name: str | None, source: str) -> Any:
    if name is None:
        if len(targets) != 1:
            raise LookupError(f"name a --target: {len(targets)} {source} targets are configured")
        return targets[0]
    for t in targets:
        if t.name == name:
            return t
    raise LookupError(f"no {source} target named {name!r}")


# --------------------------------------------------------------------------- progress

# C0/C1 controls (ANSI escapes among them) in upstream text must not reach a terminal.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")


class Progress:
    """``wait``'s progress lines on stderr: one per change, never one per poll.

    A line is written when a batch's state, reason or (engine) tenth of completed jobs
    changes, when a CI result finishes or is retried, when the upstream fails or recovers.
    Upstream text is stripped of control characters and registered secrets.
    """

    def __init__(self, stream: TextIO | None, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self._stream = stream
        self._clock = clock
        self._started = clock()
        self._shown: dict[tuple[str, str], tuple[object, ...]] = {}

    def line(self, text: str) -> None:
        if self._stream is None:
            return
        text = redaction.redact(_CONTROLS.sub(" ", text), tail=False)
        self._stream.write(f"[{self._clock() - self._started:7.1f}s] {text}\n")
        self._stream.flush()

    def changed(self, key: tuple[str, str], value: tuple[object, ...]) -> bool:
        """Whether ``value`` differs from what was shown for ``key`` (and remember it)."""
        if self._shown.get(key) == value:
            return False
        self._shown[key] = value
        return True


def _describe(rec: TrackedBatch) -> tuple[tuple[object, ...], str]:
    """A batch's progress key (what counts as a change) and its line."""
    reason = None if rec.diagnosis.reason is None else rec.diagnosis.reason.value
    text = UNKNOWN if rec.state is State.NONE else rec.state.value
    decile: int | None = None
    if rec.jobs is not None:
        j = rec.jobs
        decile = (10 * j.completed // j.total) if j.total else None
        text += f" ({j.completed}/{j.total} jobs, {j.failed} failed)"
    elif rec.result_counts is not None:
        c = rec.result_counts
        text += (f" (results: {c.passed} passed, {c.failed} failed, "
                 f"{c.in_progress} running)")
    missing = (rec.source is Source.DATADOG and rec.not_found_since is not None
               and not rec.terminal)
    if missing:
        text += " — not found (Datadog answers 404), vanished if it lasts"
    if reason is not None:
        text += f" reason={reason}"
    return (rec.state, reason, decile, missing), text


def _result_line(event: ResultTransition, links: DatadogLinks | None) -> str | None:
    """A CI result's change worth a line: it finished, or a new attempt started."""
    r = event.result
    where = ", ".join(x for x in (r.location, r.device) if x)
    name = r.test_name or r.test_public_id
    label = f"{name} [{where}]" if where else name
    if event.to_state is ResultState.IN_PROGRESS:
        if event.from_state is ResultState.NONE:
            return None  # the first sighting of a running result is no news
        what = f"retrying (attempt {(r.retries or 0) + 1})"
    else:
        what = event.to_state.value
        if r.timed_out:
            what += " (timed out)"
    if r.execution_rule and r.execution_rule != "blocking":
        what += f" ({r.execution_rule})"
    line = f"{event.target} {event.batch_id}: result {what}: {label}"
    if event.to_state is ResultState.FAILED and links is not None:
        link = links.result(r.test_public_id, r.result_id, batch_id=event.batch_id,
                            test_type=r.test_type)
        if link:
            line += f" {link}"
    return line


# --------------------------------------------------------------------------- waiting


@dataclass(slots=True)
class _Health:
    """The upstream's health as ``wait`` reports it: once per change, like the daemon."""

    shot: OneShot
    poller: TargetPoller
    progress: Progress
    down: str | None = None

    def failed(self, error: PollError) -> None:
        if error.reason == self.down:
            return
        self.down = error.reason
        self.shot.target_down(self.poller, error)
        self.progress.line(f"{self.poller.source.value}/{self.poller.name}: upstream error "
                           f"({error.reason}): {error.detail}; still trying")

    def ok(self) -> None:
        if self.down is None:
            return
        self.down = None
        self.shot.log.target_up(self.poller.source.value, self.poller.name)
        self.progress.line(f"{self.poller.source.value}/{self.poller.name}: upstream "
                           "answers again")


@dataclass(slots=True)
class _Waiter:
    """The state of one ``wait`` over some batch ids of one target."""

    source: Source
    target: TargetSettings
    batch_ids: list[str]
    progress: Progress
    core: Core | None = None
    #: Engine ids the engine has neither running nor in history: ended, decided by the rule.
    unrecorded: dict[str, State] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)
    log: EventLog = field(default_factory=EventLog)

    @property
    def links(self) -> DatadogLinks | None:
        if isinstance(self.target, DatadogTarget):
            return DatadogLinks(self.target.app_base_url)
        return None

    def publish(self, outcome: Outcome) -> None:
        """Events become progress lines (and durations); notices stay log lines."""
        self._events(outcome.events)
        if outcome.notices:
            self.log.notices(outcome.notices)

    def _events(self, events: Iterable[Event]) -> None:
        wanted = set(self.batch_ids)
        for event in events:
            if event.batch_id not in wanted:
                continue
            if isinstance(event, BatchTransition):
                if event.duration_seconds is not None:
                    self.durations[event.batch_id] = event.duration_seconds
            elif isinstance(event, ResultTransition):
                line = _result_line(event, self.links)
                if line is not None:
                    self.progress.line(f"{self.source.value}/{line}")

    def record(self, batch_id: str) -> TrackedBatch | None:
        assert self.core is not None
        return self.core.get(self.source, self.target.name, batch_id)

    def done(self, batch_id: str) -> bool:
        rec = self.record(batch_id)
        return batch_id in self.unrecorded or (rec is not None and rec.terminal)

    def pending(self) -> list[str]:
        return [b for b in self.batch_ids if not self.done(b)]

    def show(self) -> None:
        """One line for each batch whose state (or progress step) changed."""
        for batch_id in self.batch_ids:
            rec = self.record(batch_id)
            if rec is not None and (rec.state is not State.NONE
                                    or rec.not_found_since is not None):
                key, text = _describe(rec)
                if rec.terminal and rec.state not in (State.PASSED, State.SKIPPED):
                    link = rec.diagnosis.link or self._fallback_link(batch_id, finished=True)
                    text += f" {link}" if link else ""
            elif batch_id in self.unrecorded:
                state = self.unrecorded[batch_id]
                key = (state,)
                text = f"{state.value} (the engine has it neither running nor in its history)"
            else:
                continue
            if self.progress.changed((self.source.value, batch_id), key):
                self.progress.line(f"{self.source.value}/{self.target.name} {batch_id}: "
                                   f"{text}")

    def waited(self, batch_id: str) -> WaitedBatch:
        """What the reports say of one batch at the end."""
        rec = self.record(batch_id)
        name = self.target.name
        if rec is None or rec.state is State.NONE:  # never seen (a watched id is NONE)
            state = self.unrecorded.get(batch_id)
            return WaitedBatch(
                source=self.source.value, target=name, batch_id=batch_id,
                state=UNKNOWN if state is None else state.value, terminal=state is not None,
                batch_type=None if rec is None else rec.batch_type,
                reason=Reason.NO_HISTORY.value if state is State.VANISHED else None,
                link=self._fallback_link(batch_id, finished=state is not None))
        detail = batch_detail(rec, self.links)
        return WaitedBatch(
            source=self.source.value, target=name, batch_id=batch_id,
            state=rec.state.value, terminal=rec.terminal, batch_type=rec.batch_type,
            reason=detail["reason"], failure=detail["failure"],
            link=detail["link"] or self._fallback_link(batch_id, finished=rec.terminal),
            counts=detail["counts"], results=tuple(detail.get("results", ())),
            started_at=rec.start_time if rec.start_time is not None else rec.first_seen,
            duration_seconds=self.durations.get(batch_id))

    def _fallback_link(self, batch_id: str, *, finished: bool) -> str | None:
        """The upstream UI's page when the diagnosis gave none (or has not run)."""
        if isinstance(self.target, DatadogTarget):
            return DatadogLinks(self.target.app_base_url).batch(batch_id)
        if self.target.cockpit_url is not None:
            return EngineLinks(self.target.cockpit_url).batch(batch_id, finished=finished)
        return None


async def _gather_raising(tasks: Iterable[Any]) -> list[Any]:
    """All of them run to the end; then the first failure is raised."""
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


async def _engine_cycle(waiter: _Waiter, poller: EnginePoller) -> None:
    """One look at the engine, for the waited-on batches only.

    ``GET /batch/statistics?batchId=ID&maxResults=1`` per batch still running (never a
    listing of every batch); a batch that left the runtime list (or was never in it) is
    asked about with ``GET /history/batch/{id}`` and, when it ended, the delete evidence;
    a failed or stalled one gets the diagnosis lookups. The core decides the states, with
    the one end-of-batch rule.
    """
    client, core, key, clock = poller.client, poller.core, poller.key, poller.clock
    pending = waiter.pending()
    pages = await _gather_raising(
        client.fetch("/batch/statistics", {"batchId": b, "maxResults": "1"}) for b in pending)
    rows: list[EngineBatchSnapshot] = []
    unreadable: set[str] = set()
    server_time = pages[0].server_time if pages else None
    for batch_id, page in zip(pending, pages, strict=True):
        if not isinstance(page.body, list):
            raise PollError("invalid_response", "/batch/statistics answered a "
                            f"{type(page.body).__name__}, not a list")
        for raw in page.body:
            try:
                row = parse_statistics_row(raw, [])
            except BadRow:
                unreadable.add(batch_id)  # listed, so still running; read again next time
                continue
            if row.batch_id == batch_id:
                rows.append(row)
    listed = core.apply(key, RuntimeListed(rows, server_time, frozenset(unreadable)), clock())
    # The diagnosis lookups the core asked for (failed jobs' messages, a failed seed or
    # monitor job), as the daemon's poller makes them: a gate stuck on a failed batch says
    # why. Only when a batch's failure changes, within the target's budget.
    await poller.diagnose()
    poller.publish(core.annotate(listed))
    for batch_id in listed.missing:
        record = await client.history_record(batch_id)
        if record is not None:
            record = await client.with_delete_evidence(record)
        poller.publish(core.apply(key, EndLookedUp(batch_id, record), clock()))
    seen = {r.batch_id for r in rows} | unreadable
    for batch_id in pending:
        if batch_id in seen or core.get(Source.ENGINE, poller.name, batch_id) is not None:
            continue
        await _never_listed(waiter, poller, client, batch_id)


async def _never_listed(waiter: _Waiter, poller: EnginePoller, client: EngineClient,
                        batch_id: str) -> None:
    """A batch not in the runtime list when first asked: it ended before (or never was)."""
    record = await client.history_record(batch_id)
    if record is None:
        state = engine_end_state(None, State.NONE)
        if state is not None:
            waiter.unrecorded[batch_id] = state
        return
    if not record.ended:
        return  # between the runtime and the history tables: ask again next cycle
    record = await client.with_delete_evidence(record)
    if record.end_time is not None and record.start_time is not None:
        waiter.durations[batch_id] = max(0.0, record.end_time - record.start_time)
    # The core records it (with a transition when it ended after the wait started).
    poller.publish(poller.core.apply(poller.key, HistorySwept([record]), poller.clock()))


#: The signals that stop a ``wait`` with its reports (a CI runner cancelling the job sends
#: SIGTERM, GitHub Actions SIGINT first; Ctrl-C is SIGINT).
STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True, slots=True)
class _Ending:
    """How a wait's polling ended: it finished, the deadline passed, or a signal came."""

    timed_out: bool = False
    #: The signal's name (``SIGINT``, ``SIGTERM``) when one stopped it.
    interrupted: str | None = None


@contextlib.contextmanager
def _stop_signals(loop: asyncio.AbstractEventLoop,
                  stop: Callable[[signal.Signals], None]) -> Iterator[None]:
    """``stop(signal)`` on SIGINT and SIGTERM while in the block; then the handlers in
    effect before come back (asyncio.Runner's own SIGINT handler among them).

    Outside the main thread a loop cannot handle signals: the block runs without.
    """
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    added: list[signal.Signals] = []
    try:
        for sig in STOP_SIGNALS:
            try:
                loop.add_signal_handler(sig, stop, sig)
            except (RuntimeError, ValueError, NotImplementedError):
                break
            added.append(sig)
        yield
    finally:
        for sig in added:
            loop.remove_signal_handler(sig)
            handler = previous[sig]
            if handler is not None:
                signal.signal(sig, handler)


async def _poll_until(deadline: float, poll: Callable[[], Awaitable[None]],
                      close: Callable[[], Awaitable[None]]) -> _Ending:
    """Run ``poll`` (a loop that returns once the wait is over) until it returns, the
    ``deadline`` (``time.monotonic()``) passes, or SIGINT or SIGTERM comes; then
    ``close``, always, still under the signal handlers (a second signal while stopping
    changes nothing). A deadline or a signal cancels ``poll`` at once, in-flight requests
    included. An error ``poll`` raises is raised (after ``close``).
    """
    loop = asyncio.get_running_loop()
    ended: list[_Ending] = []  # the first reason to stop wins
    polling = asyncio.ensure_future(poll())

    def interrupt(sig: signal.Signals) -> None:
        if not ended and not polling.done():
            ended.append(_Ending(interrupted=sig.name))
            polling.cancel()

    with _stop_signals(loop, interrupt):
        try:
            await asyncio.wait([polling], timeout=max(0.0, deadline - time.monotonic()))
            if not polling.done():
                ended.append(_Ending(timed_out=True))
        finally:
            if not polling.done():  # the deadline passed, or our caller cancelled us
                polling.cancel()
                await asyncio.wait([polling])
            await close()
    if ended:
        return ended[0]
    polling.result()  # finished, or raised
    return _Ending()


async def wait_for_batches(
    settings: Settings,
    source: str,
    target: str | None,
    batch_ids: Sequence[str],
    deadline: float,
    *,
    timeout_seconds: float,
    progress: Progress | None = None,
) -> WaitReport:
    """Poll until every batch is terminal, ``deadline`` (``time.monotonic()``) passes, or
    SIGINT or SIGTERM comes (a CI job cancelled or out of time); the report says which
    (``timed_out``, ``interrupted``) and what is known of each batch.

    ``deadline`` bounds everything, slow or stuck upstream requests and their retries
    included: a CI gate answers on time. Raises LookupError for an unknown target.
    """
    src = Source(source)
    chosen: TargetSettings
    if src is Source.ENGINE:
        chosen = _pick(settings.engines, target, source)
    else:
        picked: DatadogTarget = _pick(settings.datadog, target, source)
        chosen = picked.model_copy(update={"batch_ids": list(batch_ids)})
    progress = progress if progress is not None else Progress(None)
    waiter = _Waiter(src, chosen, list(dict.fromkeys(batch_ids)), progress)
    shot = OneShot(settings, publish=waiter.publish)
    waiter.core, waiter.log = shot.core, shot.log
    started = time.time()

    async def poll() -> None:
        [poller] = shot.start([chosen])
        health = _Health(shot, poller, progress)
        while True:
            try:
                if isinstance(poller, EnginePoller):
                    await _engine_cycle(waiter, poller)
                else:
                    assert isinstance(poller, DatadogPoller)
                    await poller.poll_once()
            except PollError as exc:
                health.failed(exc)
            else:
                health.ok()
            waiter.show()
            if not waiter.pending():
                return
            await asyncio.sleep(poller.interval)

    ending = await _poll_until(deadline, poll, shot.close)
    return WaitReport(batches=tuple(waiter.waited(b) for b in waiter.batch_ids),
                      timed_out=ending.timed_out, started_at=started, finished_at=time.time(),
                      timeout_seconds=timeout_seconds, interrupted=ending.interrupted)


# --------------------------------------------------------------------------- --idle


@dataclass(slots=True)
class _Sample:
    rows: list[EngineBatchSnapshot]
    total: int


async def _runtime_sample(client: EngineClient, types: Sequence[str]) -> _Sample:
    """The engine's runtime batches (of ``types``): up to :data:`IDLE_SAMPLE` per type
    listed, all counted (``/batch/count`` only when the sample is full)."""
    sample = _Sample([], 0)
    kinds: list[str | None] = list(types) or [None]
    for batch_type in kinds:
        where = {} if batch_type is None else {"type": batch_type}
        page = (await client.fetch("/batch/statistics", {
            **where, "sortBy": "batchId", "sortOrder": "asc",
            "firstResult": "0", "maxResults": str(IDLE_SAMPLE)})).body
        if not isinstance(page, list):
            raise PollError("invalid_response", "/batch/statistics answered a "
                            f"{type(page).__name__}, not a list")
        for raw in page:
            # A row the client cannot read is still a batch: counted below all the same.
            with contextlib.suppress(BadRow):
                sample.rows.append(parse_statistics_row(raw, []))
        if len(page) < IDLE_SAMPLE:
            sample.total += len(page)
            continue
        counted = (await client.fetch("/batch/count", where)).body
        count = counted.get("count") if isinstance(counted, dict) else None
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise PollError("invalid_response", "/batch/count answered no count")
        sample.total += max(count, len(page))
    return sample


def _idle_batch(row: EngineBatchSnapshot, target: EngineTarget, now: float) -> WaitedBatch:
    state = engine_runtime_state(row, now, now, target.stall_after)
    link = (EngineLinks(target.cockpit_url).batch(row.batch_id)
            if target.cockpit_url is not None else None)
    return WaitedBatch(source=Source.ENGINE.value, target=target.name, batch_id=row.batch_id,
                       state=state.value, terminal=False, batch_type=row.batch_type,
                       link=link, counts=row.jobs.fields(with_created=True),
                       started_at=row.start_time)


def _idle_line(target: str, types: Sequence[str], sample: _Sample,
               batches: list[WaitedBatch]) -> str:
    kinds = f" of type {', '.join(types)}" if types else ""
    if sample.total == 0:
        return f"engine/{target}: idle (no runtime batch{kinds})"
    shown = ", ".join(
        f"{b.batch_id} ({b.batch_type}, {b.state}, "
        f"{b.counts.get('completed_jobs')}/{b.counts.get('total_jobs')} jobs)"
        for b in batches)
    more = sample.total - len(batches)
    return (f"engine/{target}: {sample.total} runtime batches{kinds}: {shown}"
            + (f" and {more} more" if more > 0 else ""))


async def wait_until_idle(
    settings: Settings,
    target: str | None,
    types: Sequence[str],
    deadline: float,
    *,
    timeout_seconds: float,
    progress: Progress | None = None,
) -> WaitReport:
    """Poll until the engine has no runtime batch (of ``types``): the gate before an
    engine upgrade. Every batch the credentials can see counts, whatever the target's
    ``tenant_ids``: an upgrade concerns them all. The deadline and SIGINT/SIGTERM end it
    as they end :func:`wait_for_batches`. Raises LookupError for an unknown target.
    """
    chosen: EngineTarget = _pick(settings.engines, target, Source.ENGINE.value)
    types = list(dict.fromkeys(types))
    progress = progress if progress is not None else Progress(None)
    shot = OneShot(settings)
    started = time.time()
    batches: list[WaitedBatch] = []
    sample = _Sample([], -1)

    async def poll() -> None:
        nonlocal batches, sample
        [poller] = shot.start([chosen])
        assert isinstance(poller, EnginePoller)
        health = _Health(shot, poller, progress)
        while True:
            try:
                sample = await _runtime_sample(poller.client, types)
            except PollError as exc:
                health.failed(exc)
            else:
                health.ok()
                now = time.time()
                batches = [_idle_batch(r, chosen, now) for r in sample.rows]
                key = (sample.total, tuple((b.batch_id, b.state) for b in batches))
                if progress.changed(("engine-idle", chosen.name), key):
                    progress.line(_idle_line(chosen.name, types, sample, batches))
                if sample.total == 0:
                    return
            await asyncio.sleep(poller.interval)

    ending = await _poll_until(deadline, poll, shot.close)
    idle = IdleCheck(target=chosen.name, types=tuple(types), idle=sample.total == 0,
                     remaining=None if sample.total < 0 else sample.total)
    return WaitReport(batches=tuple(batches), timed_out=ending.timed_out, started_at=started,
                      finished_at=time.time(), timeout_seconds=timeout_seconds, idle=idle,
                      interrupted=ending.interrupted)
