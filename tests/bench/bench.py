"""Benchmark of batchscope's hot paths at scale (a script, not a test).

    PYTHONPATH=daemon python tests/bench/bench.py [--engine-batches 10000]
        [--datadog-batches 1000] [--repeat 3] [--json] [--profile PHASE]
        [--latency-batches 400]

The upstreams (the built-in simulator, pre-loaded with batches) run in a subprocess
(``simproc.py``), so this process's CPU time and RSS are the daemon's alone; the simulator's
CPU per phase is reported beside it. The daemon side is the real code: a ``Daemon`` built from
settings (its HTTP server and poll loops are not started), its pollers' ``poll_once`` through the
real aiohttp clients, the tracker, and ``Daemon.publish`` into the real sinks (JSON log lines
rendered to /dev/null, metrics, the event ring buffer), plus ``Daemon.persist`` into a real
SQLite state file. See README.md beside this file.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import os
import platform
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp
import orjson
from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as _openmetrics_latest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import latency  # beside this file

from batchscope.model import Source
from batchscope.runtime import compose
from batchscope.runtime.daemon import Daemon
from batchscope.settings import Settings, load_settings
from batchscope.sinks.logs import configure_logging
from batchscope.sinks.metrics import exposition
from batchscope.sources import engine_json

HERE = Path(__file__).resolve().parent
generate_openmetrics = cast(Callable[[Any], bytes], _openmetrics_latest)  # untyped upstream
TARGET_CYCLE_CPU_S = 1.0
TARGET_RSS_MB = 150.0
TARGET_STEADY_X = 2.0  # engine-steady CPU as a multiple of the floor's (issue 12)
TARGET_FIRST_X = 3.0  # engine-first likewise
TARGET_RENDER_MS = 10.0  # /metrics render CPU at the default max_batch_series
TARGET_LATENCY_S = 1.25  # Datadog: median batch-end detection latency, adaptive (issue 12)
DEFAULT_MAX_BATCH_SERIES = 500
PHASES = ("floor", "engine-first", "engine-steady", "engine-changed", "datadog-first",
          "datadog-steady", "datadog-changed", "persist-first", "persist-steady", "persist-datadog")


# --------------------------------------------------------------------------- measurements


def vm_status() -> dict[str, float]:
    """VmHWM (peak RSS) and VmRSS of this process in MiB, from /proc/self/status."""
    out: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return out


def written_bytes() -> int:
    """Bytes this process passed to write() so far (``wchar`` of /proc/self/io)."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _path_kinds(paths: dict[str, int]) -> dict[str, int]:
    """Engine requests by endpoint: a batch id in the path becomes ``{id}`` (one key per
    endpoint, not one per batch)."""
    kinds: dict[str, int] = {}
    for path, n in paths.items():
        parts = path.split("/")
        if len(parts) > 3 and parts[-2] == "batch" and parts[-1] not in ("statistics",):
            parts[-1] = "{id}"
        kind = "/".join(parts)
        kinds[kind] = kinds.get(kind, 0) + n
    return dict(sorted(kinds.items()))


def ru_maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@dataclass
class Phase:
    name: str
    wall_s: float
    cpu_s: float  # this (daemon) process: all threads, including the state-store thread
    sim_cpu_s: float  # the simulator subprocess over the same interval
    events: int  # transition events emitted (tracker seq delta)
    requests: int  # upstream HTTP requests answered by the simulator
    peak_rss_mb: float  # ru_maxrss after the phase (monotonic)
    vm_hwm_mb: float
    vm_rss_mb: float
    runs: int = 1
    note: str = ""
    samples_cpu_s: list[float] = field(default_factory=list)
    engine_paths: dict[str, int] = field(default_factory=dict)  # engine requests by path
    # Each run's CPU time over the floor run made right before it (the same machine phase);
    # engine-first and engine-steady only.
    floor_ratios: list[float] = field(default_factory=list)


@dataclass
class Render:
    max_batch_series: int
    fmt: str
    wall_ms: float
    cpu_ms: float
    bytes: int
    samples: int
    runs: int


@dataclass
class Assembled:
    """A daemon built from settings, with its pollers and their sessions (no loops)."""

    daemon: Daemon
    sessions: list[aiohttp.ClientSession]
    pollers: dict[Source, Any]

    async def close(self) -> None:
        for session in self.sessions:
            await session.close()
        await self.daemon.parts.state.close()


class Floor:
    """The floor: one aiohttp session GETting every ``/batch/statistics`` page (the daemon's
    query and page size) and decoding it with orjson, nothing else."""

    def __init__(self, engine_url: str, page_size: int) -> None:
        self.url = engine_url + "/batch/statistics"
        self.page_size = page_size
        self.http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.http = aiohttp.ClientSession()
        await self.cycle()  # connected, as the daemon's session is after its first cycle

    async def cycle(self) -> int:
        assert self.http is not None
        first = rows = 0
        while True:
            params = {"sortBy": "batchId", "sortOrder": "asc",
                      "firstResult": str(first), "maxResults": str(self.page_size)}
            async with self.http.get(self.url, params=params,
                                     headers={"Accept": "application/json"}) as resp:
                page = orjson.loads(await resp.read())
            rows += len(page)
            if len(page) < self.page_size:
                return rows
            first += self.page_size

    async def aclose(self) -> None:
        if self.http is not None:
            await self.http.close()


class Simulator:
    """The simproc.py subprocess and its control API."""

    def __init__(self, engine_batches: int, datadog_batches: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "simproc.py"), "--engine-batches", str(engine_batches),
             "--datadog-batches", str(datadog_batches)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.close()
            raise SystemExit("simulator subprocess did not start")
        self.hello: dict[str, Any] = orjson.loads(line)
        self.control = self.hello["control_url"]
        self.http: aiohttp.ClientSession | None = None

    async def stats(self) -> dict[str, Any]:
        if self.http is None:
            self.http = aiohttp.ClientSession()
        async with self.http.get(self.control + "/stats") as resp:
            return dict(await resp.json())

    async def mutate(self, source: str, fraction: float, seed: int) -> dict[str, int]:
        if self.http is None:
            self.http = aiohttp.ClientSession()
        async with self.http.post(f"{self.control}/mutate/{source}",
                                  params={"fraction": str(fraction), "seed": str(seed)}) as resp:
            return dict(await resp.json())

    async def aclose(self) -> None:
        if self.http is not None:
            await self.http.close()
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.phases: list[Phase] = []
        self.renders: list[Render] = []
        self.profiles: dict[str, str] = {}
        self.peak_by_cap: dict[int, float] = {}  # ru_maxrss after rendering with that cap
        self.latency: dict[str, Any] | None = None  # latency.run_phase's report
        self._floor_before: Phase | None = None  # the floor run measured last, if just now

    async def measure(self, name: str, action: Callable[[], Awaitable[Any]],
                      daemon: Daemon | None, sim: Simulator, *, note: str = "") -> Phase:
        await sim.stats()  # reset the request counter
        before = await sim.stats()
        seq0 = daemon.tracker.seq if daemon is not None else 0
        profiler = cProfile.Profile() if name in self.args.profile else None
        wall0, cpu0 = time.perf_counter(), time.process_time()
        if profiler is not None:
            profiler.enable()
        await action()
        if profiler is not None:
            profiler.disable()
        cpu1, wall1 = time.process_time(), time.perf_counter()
        after = await sim.stats()
        if profiler is not None:
            self.profiles[name] = profile_text(profiler, self.args.profile_lines,
                                               self.args.profile_sort)
        vm = vm_status()
        phase = Phase(
            name=name, wall_s=wall1 - wall0, cpu_s=cpu1 - cpu0,
            sim_cpu_s=after["cpu_seconds"] - before["cpu_seconds"],
            events=daemon.tracker.seq - seq0 if daemon is not None else 0,
            requests=after["requests"],
            peak_rss_mb=ru_maxrss_mb(), vm_hwm_mb=vm.get("VmHWM", 0.0),
            vm_rss_mb=vm.get("VmRSS", 0.0), note=note,
            engine_paths=_path_kinds(after.get("engine_paths", {})),
        )
        phase.samples_cpu_s = [phase.cpu_s]
        floor, self._floor_before = self._floor_before, phase if name == "floor" else None
        if floor is not None and floor.cpu_s > 0 and name in ("engine-first", "engine-steady"):
            phase.floor_ratios = [phase.cpu_s / floor.cpu_s]
        return phase

    async def repeated(self, name: str, action: Callable[[], Awaitable[Any]],
                       daemon: Daemon | None, sim: Simulator, runs: int, *, note: str = "",
                       before_each: Callable[[int], Awaitable[Any]] | None = None) -> None:
        """Run ``runs`` times; keep the run with the median CPU time."""
        results = []
        for i in range(runs):
            if before_each is not None:
                await before_each(i)
            results.append(await self.measure(name, action, daemon, sim, note=note))
        self.phases.append(self._median(results))

    @staticmethod
    def _median(results: list[Phase]) -> Phase:
        """The run with the median CPU time, carrying every run's CPU time."""
        ordered = sorted(results, key=lambda p: p.cpu_s)
        chosen = ordered[len(ordered) // 2]
        chosen.runs = len(results)
        chosen.samples_cpu_s = [p.cpu_s for p in ordered]
        chosen.floor_ratios = sorted(r for p in results for r in p.floor_ratios)
        return chosen

    async def _drain_lookups(self, daemon: Daemon, engine: Any) -> int:
        """Poll until the diagnosis lookups owed since the first sightings are done.

        The ~5% of batches failed at their first sighting each want one failed-jobs lookup,
        at most ``diagnosis_lookups`` (20) per cycle; a steady cycle makes none (SPEC.md), so
        the steady phase is measured once they are done. Returns the cycles it took."""
        cycles = 0
        while daemon.core.lookups_due(engine.name, 1)[0] and cycles < 1000:
            await engine.poll_once()
            cycles += 1
        return cycles

    async def persist_phase(self, name: str, daemon: Daemon, sim: Simulator, when: str) -> None:
        """``Daemon.persist`` (SQLite state file): rows written and bytes written."""
        rows = len(daemon.tracker.dirty)
        wchar = written_bytes()
        phase = await self.measure(name, daemon.persist, daemon, sim)
        # The console and JSON logs go to /dev/null and count too, but persist logs nothing.
        written = (written_bytes() - wchar) / 1e6
        phase.note = f"{when}: {rows} rows, {written:.1f} MB written"
        self.phases.append(phase)

    async def run(self) -> None:
        args = self.args
        baseline = vm_status().get("VmRSS", 0.0)
        sim = Simulator(args.engine_batches, args.datadog_batches)
        try:
            with tempfile.TemporaryDirectory(prefix="batchscope-bench-") as tmp:
                await self._run(sim, Path(tmp))
        finally:
            await sim.aclose()
        self.memory = {"baseline_rss_mb": baseline, "ru_maxrss_mb": ru_maxrss_mb(),
                       **{f"{k}_mb": v for k, v in vm_status().items()}}
        self.sim_setup = sim.hello["engine_setup"]
        if args.latency_batches > 0:
            # After the rest, alone: it runs in real time (about the batches' own length).
            self.latency = await latency.run_phase(latency.Config(
                batches=args.latency_batches, time_scale=args.latency_time_scale))

    def _settings(self, sim: Simulator, state_path: Path) -> Settings:
        hello = sim.hello
        return load_settings(None, environ={}, overrides={
            "state_path": str(state_path), "http.host": "127.0.0.1",
            "engines": [{"name": "bench", "url": hello["engine_url"], "request_timeout": 60}],
            "datadog": [{"name": "ci", "url": hello["datadog_url"], "api_key": hello["api_key"],
                         "app_key": hello["app_key"], "request_timeout": 60}],
        })

    def _assemble(self, settings: Settings) -> Assembled:
        """A daemon's parts without its loops: each phase drives a poller by hand."""
        daemon = Daemon(settings)
        configured = compose.configured_targets(settings)
        daemon.parts.publish(daemon.core.configure(
            [compose.target_watch(t) for t in configured], time.time()))
        sessions, pollers = [], {}
        for t in configured:
            session = compose.new_session(t)
            sessions.append(session)
            poller = compose.make_poller(
                t, settings=settings, core=daemon.core, publish=daemon.parts.publish,
                clock=time.time, session=session, heartbeat=compose.heartbeat_for(t))
            daemon.metrics.add_target(*poller.key)
            pollers[poller.source] = poller
        return Assembled(daemon, sessions, pollers)

    async def _first_cycles(self, sim: Simulator, tmp: Path, settings: Settings,
                            before_each: Callable[[int], Awaitable[Any]]) -> Assembled:
        """engine-first on fresh daemons (``--repeat`` of them); the median is shown and the
        last daemon goes on to the other phases."""
        results: list[Phase] = []
        assembled: Assembled | None = None
        for i in range(self.args.repeat):
            if assembled is not None:
                await assembled.close()
            await before_each(i)
            assembled = self._assemble(settings if i == self.args.repeat - 1 else
                                       self._settings(sim, tmp / f"first-{i}.db"))
            # A fresh process has parsed no row yet: the rows the previous daemon's parses
            # remembered must not make this first cycle cheaper than a real one.
            engine_json._PARSED_ROWS.clear()
            gc.collect()
            results.append(await self.measure(
                "engine-first", assembled.pollers[Source.ENGINE].poll_once, assembled.daemon,
                sim, note=f"{self.args.engine_batches} first sightings, fresh daemon each"))
        assert assembled is not None
        self.phases.append(self._median(results))
        return assembled

    async def _run(self, sim: Simulator, tmp: Path) -> None:
        args, hello = self.args, sim.hello
        settings = self._settings(sim, tmp / "state.db")
        # The floor runs right before each engine-first and engine-steady run: the same
        # machine load, and the same process (heap) for the steady ones.
        page_size = settings.engines[0].page_size
        floor, floor_runs = Floor(hello["engine_url"], page_size), []

        async def floor_run(_: int) -> None:
            floor_runs.append(await self.measure(
                "floor", floor.cycle, None, sim,
                note=f"bare GET + orjson of every page ({page_size} rows), before each "
                     "engine-first and engine-steady run"))

        await floor.start()
        try:
            assembled = await self._first_cycles(sim, tmp, settings, floor_run)
        except BaseException:
            await floor.aclose()
            raise
        daemon, pollers = assembled.daemon, assembled.pollers
        engine = pollers[Source.ENGINE]
        datadog = pollers[Source.DATADOG]
        try:
            await self.persist_phase("persist-first", daemon, sim, "after engine-first")
            drained = await self._drain_lookups(daemon, engine)
            await daemon.persist()
            await self.repeated("engine-steady", engine.poll_once, daemon, sim, args.repeat,
                                note=f"no upstream change (after {drained} cycles drained the "
                                     "first sightings' diagnosis lookups)",
                                before_each=floor_run)
            await floor.aclose()
            self.phases.insert(0, self._median(floor_runs))
            await self.persist_phase("persist-steady", daemon, sim, "after a no-change cycle")

            async def mutate_engine(i: int) -> None:
                await daemon.persist()
                await sim.mutate("engine", args.change, seed=100 + i)

            await self.repeated("engine-changed", engine.poll_once, daemon, sim, args.repeat,
                                note=f"~{args.change:.0%} of batches changed",
                                before_each=mutate_engine)
            await daemon.persist()

            for batch_id in hello["datadog_ids"]:
                daemon.watch("ci", batch_id)
            p = await self.measure("datadog-first", datadog.poll_once, daemon, sim,
                                   note=f"{len(hello['datadog_ids'])} watched batches")
            self.phases.append(p)
            await daemon.persist()
            await self.repeated("datadog-steady", datadog.poll_once, daemon, sim, args.repeat,
                                note="no upstream change")
            await daemon.persist()
            await datadog.poll_once()
            await self.persist_phase("persist-datadog", daemon, sim,
                                     "after a no-change Datadog round")

            async def mutate_datadog(i: int) -> None:
                await sim.mutate("datadog", args.change, seed=200 + i)

            await self.repeated("datadog-changed", datadog.poll_once, daemon, sim, args.repeat,
                                note=f"~{args.change:.0%} of open batches changed",
                                before_each=mutate_datadog)
            await daemon.persist()
            await self._renders(daemon)
        finally:
            await floor.aclose()
            await assembled.close()
        self.tracked = {
            "tracked": len(daemon.tracker),
            "active_engine": len(daemon.tracker.active_for(Source.ENGINE, "bench")),
            "active_datadog": len(daemon.tracker.active_for(Source.DATADOG, "ci")),
        }

    async def _renders(self, daemon: Daemon) -> None:
        """generate_latest() in both formats, then a real ``GET /metrics`` through the
        daemon's aiohttp app with ``Accept-Encoding: gzip`` as Prometheus sends it (server-side
        CPU: the handler renders and compresses on the event loop of this process)."""
        from batchscope.http.app import build_app
        from batchscope.http.ports import ApiPorts

        collector = daemon.metrics.collector
        registry = daemon.metrics.registry
        ports = ApiPorts(batches=daemon.core, events=daemon.events, health=daemon.health,
                         watch_list=daemon.watch_list, targets=daemon.health)
        app = build_app(ports, registry, daemon.settings.http)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession(auto_decompress=False) as http:
                for cap in sorted({500, self.args.engine_batches + self.args.datadog_batches}):
                    collector.max_batch_series = cap
                    self._render_cap(daemon, cap)
                    for fmt, accept in (("http text gz", "text/plain"), (
                            "http om gz", "application/openmetrics-text; version=1.0.0")):
                        walls, cpus = [], []
                        size = 0
                        for _ in range(self.args.render_runs):
                            w0, c0 = time.perf_counter(), time.process_time()
                            async with http.get(
                                f"http://127.0.0.1:{port}/metrics",
                                headers={"Accept": accept, "Accept-Encoding": "gzip"},
                            ) as resp:
                                size = len(await resp.read())
                                assert resp.headers.get("Content-Encoding") == "gzip"
                            cpus.append(time.process_time() - c0)
                            walls.append(time.perf_counter() - w0)
                        self.renders.append(Render(
                            max_batch_series=cap, fmt=fmt,
                            wall_ms=statistics.median(walls) * 1000,
                            cpu_ms=statistics.median(cpus) * 1000, bytes=size, samples=0,
                            runs=self.args.render_runs,
                        ))
                    self.peak_by_cap[cap] = ru_maxrss_mb()
        finally:
            await runner.cleanup()
            collector.max_batch_series = daemon.settings.max_batch_series

    def _render_cap(self, daemon: Daemon, cap: int) -> None:
        """What ``GET /metrics`` renders (``exposition``: the per-batch families as rendered
        at the last tracker change) in both formats; the same right after one batch changed
        (the first scrape after a poll that changed something: the families are assembled
        again, only that batch's lines rendered again); and prometheus_client's own encoders
        on the same registry, for comparison (the bytes are the same)."""
        registry, tracker = daemon.metrics.registry, daemon.tracker
        active = next(tracker.iter_active(), None)

        def one_changed() -> None:
            if active is not None:
                tracker.dirty.add(active.key)  # as a save-worthy change of that batch does

        text, openmetrics = "text/plain;version=0.0.4", "application/openmetrics-text;version=1.0.0"
        cases: list[tuple[str, Callable[[], bytes], Callable[[], None] | None]] = [
            ("text", lambda: exposition(registry, text)[0], None),
            ("openmetrics", lambda: exposition(registry, openmetrics)[0], None),
            ("text, 1 changed", lambda: exposition(registry, text)[0], one_changed),
            ("om, 1 changed", lambda: exposition(registry, openmetrics)[0], one_changed),
            ("stock text", lambda: generate_latest(registry), None),
            ("stock om", lambda: generate_openmetrics(registry), None),
        ]
        for fmt, render, before in cases:
            walls, cpus = [], []
            body = b""
            for _ in range(self.args.render_runs):
                if before is not None:
                    before()
                w0, c0 = time.perf_counter(), time.process_time()
                body = render()
                cpus.append(time.process_time() - c0)
                walls.append(time.perf_counter() - w0)
            samples = sum(1 for line in body.splitlines() if line and line[:1] != b"#")
            self.renders.append(Render(
                max_batch_series=cap, fmt=fmt, wall_ms=statistics.median(walls) * 1000,
                cpu_ms=statistics.median(cpus) * 1000, bytes=len(body), samples=samples,
                runs=self.args.render_runs,
            ))

    # ----------------------------------------------------------------------- reporting

    def floor_ratio(self, phase: Phase) -> float | None:
        """An engine phase's CPU time as a multiple of the floor's: the median of each run's
        ratio to the floor run made right before it (engine-first, engine-steady), which
        shares its machine phase; else the median run's over the median floor run's."""
        if phase.floor_ratios:
            return statistics.median(phase.floor_ratios)
        floor = next((p for p in self.phases if p.name == "floor"), None)
        if floor is None or floor.cpu_s <= 0 or not phase.name.startswith("engine-"):
            return None
        return phase.cpu_s / floor.cpu_s

    def verdicts(self) -> dict[str, Any]:
        cycle = next(p for p in self.phases if p.name == "engine-first")
        steady = next(p for p in self.phases if p.name == "engine-steady")
        changed = next(p for p in self.phases if p.name == "engine-changed")
        floor = next(p for p in self.phases if p.name == "floor")
        worst = max(cycle.cpu_s, steady.cpu_s, changed.cpu_s)
        first_x, steady_x = self.floor_ratio(cycle), self.floor_ratio(steady)
        default_renders = {r.fmt: r.cpu_ms for r in self.renders
                           if r.max_batch_series == DEFAULT_MAX_BATCH_SERIES}
        # The default configuration (max_batch_series 500) is what the target is about; the
        # uncapped render comes last and is reported beside it.
        peak = self.peak_by_cap.get(500, self.memory["ru_maxrss_mb"])
        return {
            "engine_cycle_cpu_s": {"target": TARGET_CYCLE_CPU_S, "first": cycle.cpu_s,
                                   "steady": steady.cpu_s, "changed": changed.cpu_s,
                                   "ok": worst < TARGET_CYCLE_CPU_S},
            "engine_vs_floor": {
                "floor_cpu_s": floor.cpu_s,
                "first": first_x, "first_target": TARGET_FIRST_X,
                "steady": steady_x, "steady_target": TARGET_STEADY_X,
                "changed": self.floor_ratio(changed),
                "ok": (first_x is not None and first_x <= TARGET_FIRST_X
                       and steady_x is not None and steady_x <= TARGET_STEADY_X),
            },
            "metrics_render_ms": {
                "target": TARGET_RENDER_MS, "max_batch_series": DEFAULT_MAX_BATCH_SERIES,
                **default_renders,
                "ok": all(default_renders.get(f, float("inf")) <= TARGET_RENDER_MS
                          for f in ("text", "openmetrics")),
            },
            "peak_rss_mb": {"target": TARGET_RSS_MB, "value": peak, "ok": peak < TARGET_RSS_MB,
                            "by_max_batch_series": {str(k): v
                                                    for k, v in self.peak_by_cap.items()}},
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "config": {"engine_batches": self.args.engine_batches,
                       "datadog_batches": self.args.datadog_batches,
                       "repeat": self.args.repeat, "change_fraction": self.args.change,
                       "python": platform.python_version(), "machine": platform.machine(),
                       "cpus": os.cpu_count()},
            "simulator_setup": self.sim_setup,
            "phases": [asdict(p) for p in self.phases],
            "metrics_render": [asdict(r) for r in self.renders],
            "memory": self.memory,
            "tracker": self.tracked,
            "targets": self.verdicts(),
            "profiles": self.profiles,
            "datadog_latency": self.latency,
        }

    def table(self) -> str:
        out = io.StringIO()
        a = self.args
        out.write(f"batchscope bench: {a.engine_batches} engine batches, {a.datadog_batches} "
                  f"Datadog batches, Python {platform.python_version()}, "
                  f"{os.cpu_count()} CPUs\n\n")
        out.write(f"{'phase':<16}{'wall s':>8}{'cpu s':>8}{'xfloor':>8}{'sim cpu':>9}"
                  f"{'events':>8}{'reqs':>7}{'peakRSS':>9}  note\n")
        for p in self.phases:
            runs = f" (median of {p.runs})" if p.runs > 1 else ""
            ratio = self.floor_ratio(p)
            x = f"{ratio:.2f}" if ratio is not None else "-"
            out.write(f"{p.name:<16}{p.wall_s:>8.3f}{p.cpu_s:>8.3f}{x:>8}{p.sim_cpu_s:>9.3f}"
                      f"{p.events:>8}{p.requests:>7}{p.peak_rss_mb:>8.1f}M  {p.note}{runs}\n")
        out.write(f"\n/metrics render ({self.tracked['tracked']} tracked, "
                  f"{self.tracked['active_engine']} + {self.tracked['active_datadog']} "
                  "non-terminal)\n")
        out.write(f"{'max_batch_series':<18}{'format':<17}{'wall ms':>9}{'cpu ms':>9}"
                  f"{'bytes':>11}{'samples':>9}\n")
        for r in self.renders:
            out.write(f"{r.max_batch_series:<18}{r.fmt:<17}{r.wall_ms:>9.1f}{r.cpu_ms:>9.1f}"
                      f"{r.bytes:>11}{r.samples or '-':>9}\n")
        m = self.memory
        out.write(f"\nmemory: baseline RSS {m['baseline_rss_mb']:.1f} MiB, ru_maxrss "
                  f"{m['ru_maxrss_mb']:.1f} MiB, VmHWM {m.get('VmHWM_mb', 0):.1f} MiB, "
                  f"VmRSS at end {m.get('VmRSS_mb', 0):.1f} MiB\n")
        v = self.verdicts()
        c, r = v["engine_cycle_cpu_s"], v["peak_rss_mb"]
        by_cap = ", ".join(f"{v:.1f} MiB after rendering with max_batch_series {k}"
                           for k, v in sorted(self.peak_by_cap.items()))
        out.write(f"peak RSS: {by_cap}\n")
        out.write(f"targets: engine cycle CPU < {c['target']} s: first {c['first']:.3f}, steady "
                  f"{c['steady']:.3f}, changed {c['changed']:.3f} -> "
                  f"{'OK' if c['ok'] else 'MISSED'}; peak RSS (max_batch_series 500) < "
                  f"{r['target']:.0f} MiB: {r['value']:.1f} -> "
                  f"{'OK' if r['ok'] else 'MISSED'}\n")
        f, m = v["engine_vs_floor"], v["metrics_render_ms"]
        out.write(f"targets: engine vs floor ({f['floor_cpu_s']:.3f} s): steady "
                  f"{f['steady']:.2f}x (<= {f['steady_target']:g}x), first {f['first']:.2f}x "
                  f"(<= {f['first_target']:g}x) -> {'OK' if f['ok'] else 'MISSED'}; /metrics "
                  f"render at max_batch_series {m['max_batch_series']}: text "
                  f"{m.get('text', float('nan')):.1f} ms, openmetrics "
                  f"{m.get('openmetrics', float('nan')):.1f} ms (<= {m['target']:g} ms) -> "
                  f"{'OK' if m['ok'] else 'MISSED'}; after one batch changed: text "
                  f"{m.get('text, 1 changed', float('nan')):.1f} ms, openmetrics "
                  f"{m.get('om, 1 changed', float('nan')):.1f} ms\n")
        if self.latency is not None:
            out.write("\n" + latency.table(self.latency))
            out.write(self.latency_verdict(self.latency) + "\n")
        for name, text in self.profiles.items():
            out.write(f"\n--- cProfile of {name} (cumulative) ---\n{text}")
        return out.getvalue()

    @staticmethod
    def latency_verdict(report: dict[str, Any]) -> str:
        """Issue 12's Datadog goal: the adaptive median at most 1.25 s, with no more
        requests per batch than fixed polling, and no 429."""
        fixed, adaptive = report["fixed"]["all"], report["adaptive"]["all"]
        ok = (adaptive["median_s"] <= TARGET_LATENCY_S
              and adaptive["requests_per_batch"] <= fixed["requests_per_batch"]
              and report["adaptive"]["rate_limited_answers"] == 0)
        return (f"targets: Datadog median end latency {adaptive['median_s']:.2f} s (fixed "
                f"{fixed['median_s']:.2f} s, <= {TARGET_LATENCY_S:g} s), requests per batch "
                f"{adaptive['requests_per_batch']:.1f} (fixed {fixed['requests_per_batch']:.1f}"
                f"), 429 answers {report['adaptive']['rate_limited_answers']} -> "
                f"{'OK' if ok else 'MISSED'}")


def profile_text(profiler: cProfile.Profile, lines: int, sort: str) -> str:
    buf = io.StringIO()
    stats = pstats.Stats(profiler, stream=buf)
    stats.sort_stats(sort).print_stats(lines)
    return buf.getvalue()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="batchscope benchmark (see README.md)")
    parser.add_argument("--engine-batches", type=int, default=10_000)
    parser.add_argument("--datadog-batches", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of the steady/changed phases (the median is shown)")
    parser.add_argument("--render-runs", type=int, default=5)
    parser.add_argument("--change", type=float, default=0.05,
                        help="fraction of batches changed in the *-changed phases")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.add_argument("--profile", action="append", default=[], choices=PHASES,
                        help="cProfile this phase (repeatable); top functions by own time")
    parser.add_argument("--latency-batches", type=int, default=0, metavar="N",
                        help="also run latency.py's Datadog detection-latency phase (fixed "
                             "against adaptive polling) on N CI batches; 0 (default): not, it "
                             "runs in real time (400 batches: about 6 minutes)")
    parser.add_argument("--latency-time-scale", type=float, default=1.0,
                        help="latency phase: durations scaled (0.2: five times faster, "
                             "for a quick look; overheads do not scale)")
    parser.add_argument("--profile-lines", type=int, default=30)
    parser.add_argument("--profile-sort", default="tottime", choices=("tottime", "cumulative"),
                        help="order of the profile: own time, or time including callees")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    bench = Bench(parse_args(argv))
    with open(os.devnull, "w") as devnull:
        # Log lines are rendered in full (JSON, as in production) and thrown away.
        configure_logging(log_format="json", level="info", stream=devnull)
        asyncio.run(bench.run())
    if bench.args.json:
        sys.stdout.write(orjson.dumps(bench.as_json(), option=orjson.OPT_INDENT_2).decode()
                         + "\n")
    else:
        sys.stdout.write(bench.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
