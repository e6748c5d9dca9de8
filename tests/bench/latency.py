"""How soon the end of a Datadog CI batch is seen: adaptive polling against fixed polling.

    PYTHONPATH=daemon python tests/bench/latency.py [--batches 400] [--seed 1]
        [--poll-interval 5] [--time-scale 1] [--rate-limit 0] [--json]

N CI batches with realistic timelines: suites of Synthetic tests that repeat from batch to
batch, each test (per location and device) with its own typical duration, plus noise per
batch and per result and a short wait before each test runs; results end one after another;
some fail, some of those are retried (fast retries), a few batches end early (a batch
timeout); Datadog finalises a batch up to a second after its last result. The batches start
over ``--batches x 0.75`` seconds, each watched (as a CI job's POST) a moment after it was
triggered.

The same timelines run twice at once, in this process, over real loopback HTTP: on one
fake Datadog watched by a daemon polling every ``poll_interval`` (fixed, as before), on
another watched by the adaptive scheduler. Each side is the real code: settings, core,
``DatadogPoller``, ``DatadogClient`` on aiohttp, ``poll_forever``. The fake applies each
batch's scripted changes at their exact times (``FakeDatadog.at``), so a batch's *actual
end* is known to the microsecond; the *detection latency* is the time from it to the
daemon's terminal ``batch.transition`` (its ``time``). Requests per batch are counted by
the fake, as are 429 answers (``--rate-limit N`` sets N requests per 10 s on both).

The adaptive side starts with nothing learnt (as after a first install) and learns as the
batches end; "warm" is the batches started after the first quarter of the run.

``--time-scale 0.2`` runs five times faster (every duration and poll_interval scaled),
latencies reported back at scale 1; for quick looks only, overheads do not scale.

From bench.py: ``from latency import Config, run_phase``; ``await run_phase(Config(...))``
returns the report as a dict (see :func:`report_dict`).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from aiohttp import web

from batchscope.model import BatchTransition, ResultTransition, Source, is_terminal
from batchscope.runtime import compose
from batchscope.runtime.daemon import Daemon
from batchscope.runtime.poll_loop import RunningTarget, poll_forever
from batchscope.runtime.pollers import DatadogPoller
from batchscope.settings import DatadogTarget, load_settings
from batchscope.simulator.datadog import FakeDatadog
from batchscope.sinks.logs import configure_logging
from batchscope.sources.datadog import DatadogClient
from batchscope.tracker import Outcome

API_KEY = "latency-api-key"
APP_KEY = "latency-app-key"
LOCATIONS = ("aws:eu-central-1", "aws:us-east-1", "aws:ap-northeast-1", "gcp:europe-west3")
DEVICES = ("chrome.laptop_large", "firefox.laptop_large", "chrome.mobile_small")
MODES = ("fixed", "adaptive")


# --------------------------------------------------------------------------- the workload


@dataclass(frozen=True)
class Config:
    batches: int = 400
    seed: int = 1
    poll_interval: float = 5.0
    time_scale: float = 1.0
    rate_limit: int = 0  # requests per 10 s on each fake; 0: none
    spacing: float = 0.75  # seconds between batch starts (at scale 1)
    tests: int = 40  # the catalogue
    suites: int = 10


@dataclass(frozen=True)
class Step:
    """One scripted change, ``at`` seconds after the batch's trigger."""

    at: float
    test: str
    location: str
    device: str | None
    status: str | None  # None: a failed attempt with a fast retry to come
    duration: float  # seconds the attempt ran


@dataclass
class Plan:
    """One batch's timeline (seconds after its trigger, at scale 1)."""

    batch_id: str
    trigger: float  # after the run's start
    watch: float  # when the CI job POSTs it
    specs: list[dict[str, Any]]
    steps: list[Step]
    end: float
    status: str
    cut: bool  # ended early: a batch timeout


@dataclass(frozen=True)
class Test:
    """A Synthetic test of the catalogue: its typical duration, and a factor per location
    and device (None: an API test, no device)."""

    id: str
    type: str
    typical: float
    locations: dict[str, float]
    devices: dict[str | None, float]
    retries: int


def workload(cfg: Config) -> list[Plan]:
    """The same batches for every mode, from the seed."""
    rng = random.Random(cfg.seed)
    catalogue = []
    for n in range(cfg.tests):
        browser = rng.random() < 0.6
        typical = (min(240.0, max(10.0, rng.lognormvariate(math.log(45), 0.5))) if browser
                   else min(30.0, max(0.5, rng.lognormvariate(math.log(4), 0.7))))
        # The random draws in this order: the same seed gives the same workload as ever.
        test_id = f"{rng.choice('abcdefgh')}{n:02d}-{rng.randrange(100, 999)}-xyz"
        locations = {loc: rng.uniform(0.9, 1.15)
                     for loc in rng.sample(LOCATIONS, rng.randint(1, 3))}
        devices: dict[str | None, float] = (
            {d: rng.uniform(0.95, 1.1) for d in rng.sample(DEVICES, rng.randint(1, 2))}
            if browser else {None: 1.0})
        catalogue.append(Test(test_id, "browser" if browser else "api", typical, locations,
                              devices, rng.choice((0, 1))))
    suites = [rng.sample(catalogue, rng.randint(2, 7)) for _ in range(cfg.suites)]
    weights = [1 / (k + 1) for k in range(cfg.suites)]  # some pipelines run more often
    plans = []
    clock = 0.0
    for n in range(cfg.batches):
        clock += rng.expovariate(1 / cfg.spacing)
        suite = rng.choices(suites, weights)[0]
        pace = rng.lognormvariate(0, 0.05)  # a slow or fast run of the whole suite
        specs, steps, ends, failed = [], [], [], False
        for test in suite:
            for loc, loc_factor in test.locations.items():
                for device, dev_factor in test.devices.items():
                    specs.append({"test_public_id": test.id, "test_name": test.id,
                                  "test_type": test.type, "location": loc, "device": device,
                                  "execution_rule": "blocking", "max_retries": test.retries})
                    typical = test.typical * loc_factor * dev_factor * pace
                    run = typical * rng.lognormvariate(0, 0.08)
                    start = rng.uniform(0, 1.0)  # waits for a runner
                    if rng.random() < 0.04:  # this attempt fails, somewhere along the way
                        first = run * rng.uniform(0.2, 1.0)
                        if test.retries:
                            steps.append(Step(start + first, test.id, loc, device, None, first))
                            again = typical * rng.lognormvariate(0, 0.08)
                            end = start + first + 0.3 + again
                            ok = rng.random() < 0.75
                            steps.append(Step(end, test.id, loc, device,
                                              "passed" if ok else "failed", again))
                            failed |= not ok
                        else:
                            end = start + first
                            steps.append(Step(end, test.id, loc, device, "failed", first))
                            failed = True
                    else:
                        end = start + run
                        steps.append(Step(end, test.id, loc, device, "passed", run))
                    ends.append(end)
        end = max(ends) + rng.uniform(0, 1.0)  # Datadog finalises the batch
        cut = rng.random() < 0.04
        if cut:
            end = end * rng.uniform(0.3, 0.9)
            steps = [s for s in steps if s.at < end]
        plans.append(Plan(
            batch_id=f"{n:04d}-{rng.getrandbits(40):010x}", trigger=clock,
            watch=clock + rng.uniform(0.2, 1.5), specs=specs, steps=steps, end=end,
            status="failed" if failed or cut else "passed", cut=cut))
    return plans


def script(fake: FakeDatadog, plans: list[Plan], t0: float, scale: float) -> None:
    """Create every batch and script its life on the fake (absolute times from ``t0``)."""
    for plan in plans:
        fake.create_batch(plan.batch_id, tests=plan.specs, metadata={})
        base = t0 + plan.trigger * scale
        for step in plan.steps:
            fake.at(base + step.at * scale, _step(fake, plan.batch_id, step, scale))
        fake.at(base + plan.end * scale, _finish(fake, plan, scale))


def _step(fake: FakeDatadog, batch_id: str, step: Step, scale: float) -> Callable[[], None]:
    def apply() -> None:
        fake.set_result(batch_id, step.test, location=step.location, device=step.device,
                        duration=round(step.duration * scale * 1000, 1),
                        new_attempt=step.status is None, status=step.status)
    return apply


def _finish(fake: FakeDatadog, plan: Plan, scale: float) -> Callable[[], None]:
    def apply() -> None:
        if plan.cut:  # the batch timed out: what still runs is timed out and failed
            for r in fake.batch(plan.batch_id).results:
                if r.status == "in_progress":
                    r.timed_out = True
        fake.finish(plan.batch_id, plan.status)
    return apply


# --------------------------------------------------------------------------- one side


@dataclass
class Side:
    mode: str
    fake: FakeDatadog
    runner: web.AppRunner
    url: str
    daemon: Daemon | None = None
    rt: RunningTarget | None = None
    seen_end: dict[str, float] = field(default_factory=dict)
    seen_results: dict[tuple[str, str, str, str], float] = field(default_factory=dict)

    def publish(self, outcome: Outcome) -> None:
        for event in outcome.events:
            if isinstance(event, BatchTransition):
                if is_terminal(Source.DATADOG, event.to_state):
                    self.seen_end.setdefault(event.batch_id, event.time)
            elif isinstance(event, ResultTransition) and event.to_state.value != "in_progress":
                r = event.result
                self.seen_results.setdefault(
                    (event.batch_id, r.test_public_id, r.location, r.device), event.time)
        assert self.daemon is not None
        self.daemon.parts.publish(outcome)


async def serve(fake: FakeDatadog) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(fake.make_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def start_side(side: Side, cfg: Config, stop: asyncio.Event) -> asyncio.Task[None]:
    interval = cfg.poll_interval * cfg.time_scale
    settings = load_settings(None, environ={}, overrides={
        "state_path": ":memory:", "http.host": "127.0.0.1",
        "datadog": [{"name": "ci", "url": side.url, "api_key": API_KEY, "app_key": APP_KEY,
                     "poll_interval": interval, "request_timeout": 10,
                     "max_concurrency": 8, "not_found_grace": 600 * cfg.time_scale,
                     "stall_after": 3600}],
    })
    side.daemon = daemon = Daemon(settings)
    [target] = compose.configured_targets(settings)
    assert isinstance(target, DatadogTarget)
    daemon.parts.publish(daemon.core.configure([compose.target_watch(target)], time.time()))
    session = compose.new_session(target)
    heartbeat = compose.heartbeat_for(target)
    client = DatadogClient(target, session, on_progress=heartbeat.beat)
    poller = DatadogPoller(target.name, interval, daemon.core, client, side.publish,
                           time.time, heartbeat, adaptive=side.mode == "adaptive")
    daemon.metrics.add_target(*poller.key)
    side.rt = rt = RunningTarget(settings=target, poller=poller, session=session)
    return asyncio.create_task(poll_forever(
        rt, stop=stop, metrics=daemon.metrics, log_sink=daemon.parts.log, clock=time.time,
        after_poll=lambda: None))


# --------------------------------------------------------------------------- the run


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@dataclass
class Numbers:
    batches: int
    median_s: float
    p95_s: float
    mean_s: float
    requests_per_batch: float
    result_median_s: float
    result_p95_s: float
    missed: int  # ends never seen within the run


def numbers(side: Side, plans: list[Plan], t0: float, scale: float,
            requests: dict[str, int]) -> Numbers:
    lat = [(side.seen_end[p.batch_id] - (t0 + (p.trigger + p.end) * scale)) / scale
           for p in plans if p.batch_id in side.seen_end]
    results = []
    for p in plans:
        base = t0 + p.trigger * scale
        for s in p.steps:
            key = (p.batch_id, s.test, s.location, s.device or "")
            seen = side.seen_results.get(key)
            if s.status is not None and seen is not None:
                results.append((seen - (base + s.at * scale)) / scale)
    reqs = [requests.get(p.batch_id, 0) for p in plans]
    return Numbers(
        batches=len(plans), median_s=percentile(lat, 0.5), p95_s=percentile(lat, 0.95),
        mean_s=statistics.fmean(lat) if lat else math.nan,
        requests_per_batch=statistics.fmean(reqs) if reqs else math.nan,
        result_median_s=percentile(results, 0.5), result_p95_s=percentile(results, 0.95),
        missed=len(plans) - len(lat))


def count_requests(fake: FakeDatadog) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in fake.requests:
        batch_id = r.path_qs.rsplit("/", 1)[-1]
        counts[batch_id] = counts.get(batch_id, 0) + 1
    return counts


async def run_phase(cfg: Config, progress: Callable[[str], None] | None = None
                    ) -> dict[str, Any]:
    """Both sides over the same timelines; the report as a dict."""
    plans = workload(cfg)
    scale = cfg.time_scale
    stop = asyncio.Event()
    sides = []
    for mode in MODES:
        fake = FakeDatadog(api_key=API_KEY, app_key=APP_KEY,
                           rate_limit=cfg.rate_limit or None, rate_limit_period=10 * scale)
        runner, url = await serve(fake)
        sides.append(Side(mode, fake, runner, url))
    tasks = []
    t0 = time.time() + 1.0
    try:
        for side in sides:
            script(side.fake, plans, t0, scale)
            tasks.append(await start_side(side, cfg, stop))
        loop = asyncio.get_running_loop()
        for plan in sorted(plans, key=lambda p: p.watch):
            for side in sides:
                loop.call_at(loop.time() + (t0 + plan.watch * scale - time.time()),
                             _watch, side, plan.batch_id)
        last_end = max(t0 + (p.trigger + p.end) * scale for p in plans)
        deadline = last_end + 4 * cfg.poll_interval * scale + 5
        ticks = 0
        while time.time() < deadline:
            if all(len(side.seen_end) == len(plans) for side in sides):
                break
            await asyncio.sleep(1.0)
            ticks += 1
            if progress is not None and ticks % 15 == 0:
                progress(" ".join(f"{s.mode}: {len(s.seen_end)}/{len(plans)} ended"
                                  for s in sides))
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for side in sides:
            if side.rt is not None:
                await side.rt.session.close()
            await side.runner.cleanup()
    warm_from = plans[len(plans) // 4].trigger if plans else 0.0
    out: dict[str, Any] = {"config": asdict(cfg), "machine": {"cpus": os.cpu_count()}}
    for side in sides:
        requests = count_requests(side.fake)
        warm = [p for p in plans if p.trigger >= warm_from]
        out[side.mode] = {
            "all": asdict(numbers(side, plans, t0, scale, requests)),
            "warm": asdict(numbers(side, warm, t0, scale, requests)),
            "rate_limited_answers": side.fake.rate_limited,
            "learnt_keys": (0 if side.daemon is None
                            else len(side.daemon.core.durations("ci"))),
            "early_ends": asdict(numbers(side, [p for p in plans if p.cut], t0, scale,
                                         requests)),
        }
    fixed = count_requests(sides[0].fake)
    adaptive = count_requests(sides[1].fake)
    more = [adaptive.get(p.batch_id, 0) - fixed.get(p.batch_id, 0) for p in plans]
    out["adaptive_minus_fixed_requests"] = {
        "batches_more": sum(1 for d in more if d > 0), "max": max(more, default=0),
        "min": min(more, default=0)}
    return out


def _watch(side: Side, batch_id: str) -> None:
    assert side.daemon is not None
    side.daemon.watch("ci", batch_id)


# --------------------------------------------------------------------------- reporting


def table(report: dict[str, Any]) -> str:
    cfg = report["config"]
    lines = [
        f"batchscope latency bench: {cfg['batches']} Datadog CI batches, poll_interval "
        f"{cfg['poll_interval']:g} s, seed {cfg['seed']}, time scale {cfg['time_scale']:g}, "
        f"rate limit {cfg['rate_limit'] or 'none'}{' per 10 s' if cfg['rate_limit'] else ''}, "
        f"{report['machine']['cpus']} CPUs",
        "",
        f"{'':<34}{'fixed':>10}{'adaptive':>10}",
    ]

    def row(label: str, group: str, key: str, fmt: str = "{:.2f}") -> None:
        values = [report[mode][group][key] for mode in MODES]
        lines.append(f"{label:<34}" + "".join(f"{fmt.format(v):>10}" for v in values))

    for group, title in (("all", "all batches"), ("warm", "warm (after the first quarter)"),
                         ("early_ends", "batches that ended early")):
        n = report["fixed"][group]["batches"]
        lines.append(f"{title} (n={n})")
        row("  batch end latency median (s)", group, "median_s")
        row("  batch end latency p95 (s)", group, "p95_s")
        row("  batch end latency mean (s)", group, "mean_s")
        row("  requests per batch", group, "requests_per_batch")
        if group != "early_ends":
            row("  result end latency median (s)", group, "result_median_s")
            row("  result end latency p95 (s)", group, "result_p95_s")
        row("  ends not seen", group, "missed", "{:d}")
    lines.append(f"{'429 answers':<34}" + "".join(
        f"{report[mode]['rate_limited_answers']:>10}" for mode in MODES))
    diff = report["adaptive_minus_fixed_requests"]
    lines.append(f"per batch, adaptive minus fixed requests: {diff['min']} to {diff['max']}; "
                 f"more in {diff['batches_more']} batches")
    lines.append(f"learnt keys (adaptive): {report['adaptive']['learnt_keys']}")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=Config.batches)
    parser.add_argument("--seed", type=int, default=Config.seed)
    parser.add_argument("--poll-interval", type=float, default=Config.poll_interval)
    parser.add_argument("--time-scale", type=float, default=Config.time_scale)
    parser.add_argument("--rate-limit", type=int, default=Config.rate_limit,
                        help="requests per 10 s on each fake Datadog (0: none)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = Config(batches=args.batches, seed=args.seed, poll_interval=args.poll_interval,
                 time_scale=args.time_scale, rate_limit=args.rate_limit)
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    with open(os.devnull, "w") as devnull:
        configure_logging(log_format="json", level="info", stream=devnull)
        report = asyncio.run(run_phase(cfg, progress))
    if args.json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
