"""Restarts of the real daemon process: kill -9 at several points, changes while it is down,
SIGTERM, an unusable state file, an invalid configuration.

The daemon runs as ``python -m batchscope run --config FILE`` against the simulator served by
this test process on loopback; everything asserted comes from the JSON lines it printed and
from the state file it left behind (read with sqlite3 between runs).

What a restart must guarantee (SPEC.md "Lifecycle"): a transition that happened while the
daemon was down is reported once after it comes back, and nothing already reported is
reported as new. A kill -9 between logging an event and committing it can only lead to that
event being reported again by the next run (at-least-once); the tests below check that this
is the only way a transition repeats, by comparing each run's first event per batch with the
state the previous run had committed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from batchscope.simulator.engine import FakeEngine
from batchscope.simulator.server import RunningSimulator, start_simulator
from harness import API_KEY, APP_KEY, TOKEN, free_port, new_datadog

DAEMON_DIR = Path(__file__).resolve().parents[2] / "daemon"
EX_CONFIG = 78
NONE, RUNNING = "none", "in_progress"

pytestmark = pytest.mark.slow


def config_text(sim: RunningSimulator, port: int, state_path: Path) -> str:
    return f"""
log_format = "json"
log_level = "info"
state_path = "{state_path}"
retention = 3600
shutdown_timeout = 2

[http]
host = "127.0.0.1"
port = {port}
api_token = "{TOKEN}"

[[engines]]
name = "prod"
url = "{sim.engine_url}"
poll_interval = 0.05
page_size = 50
stall_after = 600
request_timeout = 2

[[datadog]]
name = "ci"
url = "{sim.datadog_url}"
api_key = "{API_KEY}"
app_key = "{APP_KEY}"
poll_interval = 0.05
not_found_grace = 0.3
stall_after = 600
request_timeout = 2
"""


@dataclass
class Committed:
    """What the state file holds after a run: the event seq, the seq numbers reserved beyond
    it (SEQ_RESERVE; released by a clean stop) and each batch's state."""

    seq: int
    reserved: int
    states: dict[str, str]

    @property
    def next_start(self) -> int:
        """The seq the next process starts from."""
        return max(self.seq, self.reserved)


def read_state(path: Path) -> Committed:
    conn = sqlite3.connect(path)
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        states = {bid: json.loads(data)["state"]
                  for bid, data in conn.execute("SELECT batch_id, data FROM batches")}
    finally:
        conn.close()
    seq = int(meta.get("seq", 0))
    return Committed(seq, int(meta.get("seq_reserved", seq)), states)


@dataclass
class Run:
    """One daemon process and the JSON lines it wrote."""

    index: int
    out: Path
    proc: asyncio.subprocess.Process
    committed_after: Committed | None = None
    exit_code: int | None = None

    def lines(self) -> list[dict[str, Any]]:
        text = self.out.read_text()
        if not text.endswith("\n"):  # a kill -9 may cut the last line short
            text = text[: text.rfind("\n") + 1]
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def events(self) -> list[dict[str, Any]]:
        """Batch and result transitions: the lines that carry a ``seq``."""
        return [line for line in self.lines()
                if line["event"] in ("batch.transition", "ci_result.transition")]

    def transitions(self) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line["event"] == "batch.transition"]

    def chain(self, batch_id: str) -> list[tuple[str, str]]:
        return [(t["from_state"], t["to_state"]) for t in self.transitions()
                if t["batch_id"] == batch_id]


@dataclass
class Harness:
    tmp: Path
    sim: RunningSimulator
    port: int = field(default_factory=free_port)
    runs: list[Run] = field(default_factory=list)

    @property
    def state_path(self) -> Path:
        return self.tmp / "state.db"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        path = self.tmp / "batchscope.toml"
        if not path.exists():
            path.write_text(config_text(self.sim, self.port, self.state_path))
        return path

    @property
    def run(self) -> Run:
        return self.runs[-1]

    async def start(self, *extra: str) -> Run:
        out = self.tmp / f"run{len(self.runs) + 1}.out"
        proc = await spawn("run", "--config", str(self.config_path), *extra, stdout=out)
        self.runs.append(Run(len(self.runs) + 1, out, proc))
        await self.wait_ready()
        return self.run

    async def wait_ready(self, timeout: float = 20.0) -> None:
        """Poll GET /readyz until 200 (every target polled once), never a fixed sleep."""
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while True:
                assert self.run.proc.returncode is None, self.run.out.read_text()
                try:
                    async with http.get(self.base + "/readyz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                assert time.monotonic() < deadline, "daemon not ready in time"
                await asyncio.sleep(0.02)

    async def kill9(self) -> None:
        self.run.proc.send_signal(signal.SIGKILL)
        self.run.exit_code = await self.run.proc.wait()
        self.run.committed_after = read_state(self.state_path)

    async def terminate(self, timeout: float = 10.0) -> float:
        """SIGTERM; returns how long the process took to exit."""
        started = time.monotonic()
        self.run.proc.send_signal(signal.SIGTERM)
        self.run.exit_code = await asyncio.wait_for(self.run.proc.wait(), timeout)
        self.run.committed_after = read_state(self.state_path)
        return time.monotonic() - started

    async def watch(self, batch_id: str) -> None:
        async with aiohttp.ClientSession() as http, http.post(
                self.base + "/api/v1/datadog/batches", json={"batch_id": batch_id},
                headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status in (200, 201), await resp.text()

    async def wait_for(self, condition: Callable[[], Any], timeout: float = 20.0,
                       what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.run.proc.returncode is None, self.run.out.read_text()[-3000:]
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.02)

    async def wait_polls(self, n: int) -> None:
        """Until every target has completed ``n`` more polls (read from /metrics)."""
        async def polls() -> list[float]:
            async with aiohttp.ClientSession() as http, http.get(self.base + "/metrics") as r:
                text = await r.text()
            return [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                    if line.startswith("batchscope_polls_total{")]
        start = await polls()
        deadline = time.monotonic() + 20
        while any(now < before + n for now, before in zip(await polls(), start, strict=True)):
            assert time.monotonic() < deadline, "targets stopped polling"
            await asyncio.sleep(0.02)

    async def wait_committed(self) -> None:
        """Until the state file holds everything the current run logged."""
        def done() -> bool:
            logged = self.run.events()
            return not logged or read_state(self.state_path).seq >= logged[-1]["seq"]
        await self.wait_for(done, what="state committed")


def env() -> dict[str, str]:
    environ = dict(os.environ)
    environ["PYTHONPATH"] = os.pathsep.join(
        [str(DAEMON_DIR), *filter(None, [environ.get("PYTHONPATH")])])
    environ["PYTHONUNBUFFERED"] = "1"
    for name in list(environ):
        if name.startswith(("BATCHSCOPE_", "DD_")) or name in ("NOTIFY_SOCKET",
                                                               "CREDENTIALS_DIRECTORY"):
            del environ[name]
    return environ


async def spawn(*args: str, stdout: Path) -> asyncio.subprocess.Process:
    with stdout.open("wb") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "batchscope", *args, stdout=out,
            stderr=asyncio.subprocess.STDOUT, env=env(), cwd=stdout.parent,
        )


@contextmanager
def db_write_lock(path: Path) -> Iterator[None]:
    """Hold SQLite's write lock on the state file: the daemon's commits wait, then fail."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


# --------------------------------------------------------------------------- assertions


def check_runs(runs: list[Run]) -> None:
    """The restart invariants over all runs.

    * within a run: seq +1 per event; per batch, each event starts where the previous ended;
    * seq strictly increases across runs: run N+1 starts above every seq run N logged, right
      after run N's last seq when it stopped cleanly, above the reservation after a kill;
    * run N+1's first event for a batch starts from the state run N committed for it (``none``
      only for a batch the state file does not know): no re-discovery, no lost change;
    * an event of run N is repeated by run N+1 only if run N was killed before committing it.
    """
    for run in runs:
        seqs = [e["seq"] for e in run.events()]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True, run.index
        chains: dict[str, list[dict[str, Any]]] = {}
        for t in run.transitions():
            chains.setdefault(t["batch_id"], []).append(t)
        for batch_id, chain in chains.items():
            for a, b in itertools.pairwise(chain):
                assert b["from_state"] == a["to_state"], (run.index, batch_id, a, b)
    for previous, run in itertools.pairwise(runs):
        committed = previous.committed_after
        assert committed is not None
        started = [line for line in run.lines() if line["event"] == "daemon.started"]
        assert started and started[0]["seq"] == committed.next_start, (run.index, started)
        logged = [e["seq"] for e in previous.events()]
        if previous.exit_code == 0:
            assert committed.next_start == committed.seq == (logged[-1] if logged else
                                                             committed.seq)
        if run.events():
            first = run.events()[0]["seq"]
            assert first == committed.next_start + 1, run.index
            assert not logged or first > logged[-1], f"run {run.index} reused seq {first}"
        events = run.transitions()
        firsts: dict[str, dict[str, Any]] = {}
        for t in events:
            firsts.setdefault(t["batch_id"], t)
        for batch_id, first in firsts.items():
            assert first["from_state"] == committed.states.get(batch_id, NONE), (
                f"run {run.index}: {batch_id} restarted from {first['from_state']}, "
                f"state file said {committed.states.get(batch_id, NONE)}")
        uncommitted = {(t["batch_id"], t["from_state"], t["to_state"])
                       for t in previous.transitions() if t["seq"] > committed.seq}
        for t in events:
            key = (t["batch_id"], t["from_state"], t["to_state"])
            earlier = any((e["batch_id"], e["from_state"], e["to_state"]) == key
                          for r in runs[: run.index - 1] for e in r.transitions())
            assert not earlier or key in uncommitted, f"run {run.index} repeated {key}"


def all_chains(runs: list[Run], batch_id: str) -> list[tuple[str, str]]:
    """The distinct transitions of a batch over all runs, in order (repeats removed)."""
    out: list[tuple[str, str]] = []
    for run in runs:
        for step in run.chain(batch_id):
            if step not in out:
                out.append(step)
    return out


# --------------------------------------------------------------------------- tests


@pytest.fixture
async def harness(tmp_path: Path) -> Any:
    sim = await start_simulator(engine=FakeEngine(), datadog=new_datadog())
    h = Harness(tmp_path, sim)
    try:
        yield h
    finally:
        for run in h.runs:
            if run.proc.returncode is None:
                run.proc.kill()
                await run.proc.wait()
        await sim.close()


async def test_kill9_at_several_points_loses_no_transition(harness: Harness) -> None:
    """Three kill -9s (idle after a commit, right after logging, in the middle of a burst of
    200 first sightings), with batches finishing, failing, being deleted, starting and
    starting-and-ending while the daemon is down: every change is reported after the restart,
    none is lost or re-discovered, repeats only of what the killed run had not committed, seq
    continues from the committed value; a final SIGTERM exits 0 with everything committed."""
    h, eng, dd = harness, harness.sim.engine, harness.sim.datadog
    old = eng.create_batch("instance-migration", total_jobs=1)
    eng.finish(old)  # ended before the daemon ever ran: recorded silently, never an event

    # run 1: learn about everything, then die at an idle moment after a commit
    await h.start()
    engine_ids = {name: eng.create_batch("instance-migration", total_jobs=10)
                  for name in ("passes", "fails", "vanishes", "cancelled", "keeps")}
    ci_ids = {name: dd.create_batch() for name in ("passes", "fails", "gone", "keeps")}
    for batch_id in ci_ids.values():
        await h.watch(batch_id)
    everything = [*engine_ids.values(), *ci_ids.values()]
    await h.wait_for(lambda: all(h.run.chain(b) == [(NONE, RUNNING)] for b in everything),
                     what="first sightings")
    await h.wait_committed()
    await h.kill9()

    # down #1
    eng.finish(engine_ids["passes"])
    eng.fail_jobs(engine_ids["fails"], 3)
    eng.delete(engine_ids["vanishes"], cascade=True)
    eng.delete(engine_ids["cancelled"])
    quick = eng.create_batch("set-variables", total_jobs=1)
    eng.finish(quick)
    fresh = eng.create_batch("instance-restart", total_jobs=5)
    dd.finish(ci_ids["passes"], "passed")
    dd.finish(ci_ids["fails"], "failed")
    dd.delete(ci_ids["gone"])
    down1 = {
        engine_ids["passes"]: (RUNNING, "passed"), engine_ids["fails"]: (RUNNING, "failed"),
        engine_ids["vanishes"]: (RUNNING, "vanished"),
        engine_ids["cancelled"]: (RUNNING, "cancelled"), quick: (NONE, "passed"),
        fresh: (NONE, RUNNING), ci_ids["passes"]: (RUNNING, "passed"),
        ci_ids["fails"]: (RUNNING, "failed"), ci_ids["gone"]: (RUNNING, "vanished"),
    }

    # run 2: report the changes, die the moment the last one is logged
    await h.start()
    await h.wait_for(lambda: all(step in h.run.chain(b) for b, step in down1.items()),
                     what="changes made during the first downtime")
    await h.kill9()
    assert h.run.chain(old) == []

    # down #2
    eng.retry_failed(engine_ids["fails"])
    eng.finish(engine_ids["fails"])
    eng.fail_jobs(engine_ids["keeps"], 1)
    dd.finish(ci_ids["keeps"], "passed")
    down2 = {engine_ids["fails"]: ("failed", "passed"), engine_ids["keeps"]: (RUNNING, "failed"),
             ci_ids["keeps"]: (RUNNING, "passed")}

    # run 3: report them, then die in the middle of a burst of first sightings
    await h.start()
    await h.wait_for(lambda: all(step in h.run.chain(b) for b, step in down2.items()),
                     what="changes made during the second downtime")
    burst = eng.create_many(200, type="instance-deletion", total_jobs=3)
    await h.wait_for(lambda: any(h.run.chain(b) for b in burst), what="the burst starting")
    await h.kill9()

    # run 4: every burst batch is reported (again, if uncommitted); SIGTERM
    committed3 = h.run.committed_after
    assert committed3 is not None
    assert any(b not in committed3.states for b in burst), "the kill came after the burst"
    await h.start()
    await h.wait_for(lambda: all(h.run.chain(b) == [(NONE, RUNNING)]
                                 for b in burst if b not in committed3.states),
                     what="burst batches the killed run had not committed")
    took = await h.terminate()
    assert h.run.exit_code == 0 and took < 5, (h.run.exit_code, took)
    final = h.run.committed_after
    assert final is not None
    assert final.seq == h.run.events()[-1]["seq"]
    stopped = [line for line in h.run.lines() if line["event"] == "daemon.stopped"]
    assert stopped and stopped[0]["seq"] == final.seq

    check_runs(h.runs)
    expected_final = {
        engine_ids["passes"]: "passed", engine_ids["fails"]: "passed",
        engine_ids["vanishes"]: "vanished", engine_ids["cancelled"]: "cancelled",
        engine_ids["keeps"]: "failed", quick: "passed", fresh: RUNNING, old: "passed",
        ci_ids["passes"]: "passed", ci_ids["fails"]: "failed", ci_ids["gone"]: "vanished",
        ci_ids["keeps"]: "passed", **dict.fromkeys(burst, RUNNING),
    }
    assert {b: final.states.get(b) for b in expected_final} == expected_final
    assert all_chains(h.runs, engine_ids["fails"]) == [
        (NONE, RUNNING), (RUNNING, "failed"), ("failed", "passed")]
    assert all_chains(h.runs, engine_ids["passes"]) == [(NONE, RUNNING), (RUNNING, "passed")]
    assert all_chains(h.runs, quick) == [(NONE, "passed")]
    assert all(all_chains(h.runs, b) == [(NONE, RUNNING)] for b in burst)
    assert all(not run.chain(old) for run in h.runs)

    # run 5: nothing changed, so nothing is reported; seq carries on from the stop
    await h.start()
    await h.wait_polls(3)
    assert h.run.transitions() == []
    assert await h.terminate() < 5 and h.run.exit_code == 0
    check_runs(h.runs)


async def test_kill9_between_logging_and_commit_repeats_only_uncommitted_events(
        harness: Harness) -> None:
    """With the state file's write lock held, the daemon logs transitions it cannot commit;
    killed then, the next run reports exactly those transitions again (from the committed
    states) and nothing else: at-least-once, never lost, never re-discovered."""
    h, eng = harness, harness.sim.engine
    a, b = eng.create_batch(total_jobs=10), eng.create_batch(total_jobs=10)
    await h.start()
    await h.wait_for(lambda: h.run.chain(a) and h.run.chain(b), what="first sightings")
    await h.wait_committed()
    with db_write_lock(h.state_path):
        eng.fail_jobs(a, 1)
        eng.finish(b)
        await h.wait_for(lambda: h.run.chain(a)[-1:] == [(RUNNING, "failed")]
                         and h.run.chain(b)[-1:] == [(RUNNING, "passed")], what="logged")
        await h.kill9()
    assert h.run.committed_after is not None
    assert h.run.committed_after.states == {a: RUNNING, b: RUNNING}

    await h.start()
    await h.wait_for(lambda: h.run.chain(a) and h.run.chain(b), what="reported again")
    await h.wait_committed()
    assert h.run.chain(a) == [(RUNNING, "failed")] and h.run.chain(b) == [(RUNNING, "passed")]
    assert await h.terminate() < 5 and h.run.exit_code == 0
    check_runs(h.runs)


async def test_sigterm_exits_0_quickly_with_state_committed(harness: Harness) -> None:
    """SIGTERM while polling (with a request in flight to a slow engine): exit code 0 within a
    few seconds, ``daemon.stopped`` logged, the state file holds the last seq and states."""
    h, eng = harness, harness.sim.engine
    batch = eng.create_batch(total_jobs=10)
    await h.start()
    await h.wait_for(lambda: h.run.chain(batch), what="first sighting")
    eng.fail_jobs(batch, 1)
    await h.wait_for(lambda: h.run.chain(batch)[-1:] == [(RUNNING, "failed")])
    eng.inject("/batch/statistics", delay=4, times=None)  # the next poll hangs (> 2 s)
    requests = len(eng.requests)
    await h.wait_for(lambda: len(eng.requests) > requests, what="a hanging request")
    took = await h.terminate()
    eng.clear_faults()
    assert h.run.exit_code == 0
    assert took < 5, took
    committed = h.run.committed_after
    assert committed is not None
    assert committed.seq == h.run.events()[-1]["seq"]
    assert committed.states[batch] == "failed"
    assert [line["event"] for line in h.run.lines()][-1] == "daemon.stopped"


async def test_corrupt_state_file_exits_78_and_reset_state_starts(harness: Harness) -> None:
    """Garbage in the state file: exit 78 with a message naming the path (nothing else
    started); ``--reset-state`` starts afresh on the same file."""
    h = harness
    h.state_path.write_bytes(b"this is not an SQLite database, it is garbage " * 100)
    out = h.tmp / "corrupt.out"
    proc = await spawn("run", "--config", str(h.config_path), stdout=out)
    assert await asyncio.wait_for(proc.wait(), 20) == EX_CONFIG
    message = out.read_text()
    assert str(h.state_path) in message and "--reset-state" in message, message

    batch = h.sim.engine.create_batch(total_jobs=3)
    await h.start("--reset-state")
    await h.wait_for(lambda: h.run.chain(batch) == [(NONE, RUNNING)])
    assert await h.terminate() < 5 and h.run.exit_code == 0
    assert h.run.committed_after is not None
    assert h.run.committed_after.states[batch] == RUNNING


@pytest.mark.parametrize(("config", "setting"), [
    ('poll_interval = "soon"\n', "poll_interval"),
    ('[[engines]]\nname = "prod"\n', "engines.0.url"),
    ("[http]\nport = 70000\n", "http.port"),
], ids=["bad_duration", "missing_url", "port_out_of_range"])
async def test_invalid_config_exits_78_naming_the_setting(
        tmp_path: Path, config: str, setting: str) -> None:
    """An invalid configuration file: exit code 78 and a line naming the dotted setting."""
    path = tmp_path / "bad.toml"
    path.write_text(f'state_path = "{tmp_path / "state.db"}"\n' + config)
    out = tmp_path / "bad.out"
    proc = await spawn("run", "--config", str(path), stdout=out)
    assert await asyncio.wait_for(proc.wait(), 20) == EX_CONFIG
    assert setting in out.read_text(), out.read_text()
    assert not (tmp_path / "state.db").exists()


def test_store_reserves_seq_numbers_until_a_clean_close(tmp_path: Path) -> None:
    """The state store's seq reservation on its own: a store that is not closed (a kill)
    makes the next one start above everything reserved; a clean close leaves no gap."""
    from batchscope.sinks.store import SEQ_RESERVE, StateStore

    async def save(store: StateStore, seq: int) -> None:
        await store.save([], [], seq, {})

    path = str(tmp_path / "state.db")
    crashed = StateStore(path)
    assert crashed.open_blocking().seq == 0
    asyncio.run(save(crashed, 7))
    crashed.reserve_seq_blocking(SEQ_RESERVE + 500)  # a burst bigger than the reservation
    # no close: the process died with up to SEQ_RESERVE + 500 numbers possibly logged. A
    # dead process holds no lock and no connection: drop both without the clean close.
    assert crashed._conn is not None
    crashed._conn.close()
    crashed._unlock()
    after_kill = StateStore(path)
    assert after_kill.open_blocking().seq == SEQ_RESERVE + 500

    async def clean_run() -> None:
        await save(after_kill, SEQ_RESERVE + 512)
        await after_kill.close()

    asyncio.run(clean_run())
    assert StateStore(path).open_blocking().seq == SEQ_RESERVE + 512


async def test_a_watch_acknowledged_with_201_survives_a_kill(harness: Harness) -> None:
    """A CI job registers a batch, gets 201, and the daemon is killed at once: after the
    restart the batch is still watched and its result reported. While the state file cannot
    be written (its write lock held), a registration is not acknowledged with 201."""
    h, dd = harness, harness.sim.datadog
    acknowledged, refused = dd.create_batch(), dd.create_batch()
    await h.start()
    await h.wait_committed()

    async def post(batch_id: str) -> int:
        async with aiohttp.ClientSession() as http, http.post(
                h.base + "/api/v1/datadog/batches", json={"batch_id": batch_id},
                headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            return resp.status

    assert await post(acknowledged) == 201
    await h.kill9()  # no chance for a later commit
    assert acknowledged in (h.run.committed_after or read_state(h.state_path)).states

    await h.start()
    with db_write_lock(h.state_path):
        status = await post(refused)
        await h.kill9()
    assert status != 201 or refused in read_state(h.state_path).states

    dd.finish(acknowledged, "passed")
    dd.finish(refused, "passed")
    await h.start()
    await h.wait_for(lambda: h.run.chain(acknowledged)[-1:] in (
        [(NONE, "passed")], [(RUNNING, "passed")]), what="the acknowledged batch's result")
    await h.terminate()
    check_runs(h.runs)
