"""`batchscope wait` stopped by its CI job: cancelled or out of time, the runner sends
SIGTERM (GitLab, Jenkins, Kubernetes) or SIGINT then SIGTERM (GitHub Actions).

The real command line in a subprocess against the simulator on loopback; each test sends
the signal once the wait has polled, then reads back what a CI engineer gets: the exit code
(128 + the signal's number, never 0, a definite failure still 1), the final states on stdout,
the verdict on stderr, and every report (JUnit, JSON, step summary) written with each
batch's last known state and the unfinished ones marked as interrupted.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from batchscope.runtime.oneshot import wait_for_batches
from batchscope.settings import load_settings
from batchscope.simulator.datadog import FakeDatadog
from batchscope.simulator.engine import FakeEngine
from batchscope.simulator.server import RunningSimulator, start_simulator
from helpers import cli_env, wait_until

API_KEY, APP_KEY = "s3cr3t-api-key-value", "s3cr3t-app-key-value"
#: Far beyond every test: a wait that ends did so because of the signal.
TIMEOUT = "600"
#: From the signal to the exit, on a busy machine; the wait itself stops at once.
EXIT_WITHIN = 20.0
#: Seconds the upstream holds an answer in the in-flight test.
HELD = 8.0

CHECKOUT = {"test_public_id": "aaa-aaa-aaa", "test_name": "Checkout flow",
            "location": "aws:eu-central-1", "device": "chrome.laptop_large"}
SEARCH = {"test_public_id": "bbb-bbb-bbb", "test_name": "Search page",
          "location": "aws:us-east-1", "device": "firefox.laptop_large"}



def write_config(tmp_path: Path, sim: RunningSimulator) -> str:
    path = tmp_path / "batchscope.toml"
    path.write_text(f"""
poll_interval = 0.05
[[engines]]
name = "prod"
url = "{sim.engine_url}"
request_timeout = 30
[[datadog]]
name = "ci"
url = "{sim.datadog_url}"
api_key = "{API_KEY}"
app_key = "{APP_KEY}"
request_timeout = 30
""")
    return str(path)


@dataclass
class Reports:
    """Where one run writes its reports."""

    junit: Path
    summary: Path
    step: Path

    @classmethod
    def under(cls, tmp_path: Path) -> Reports:
        step = tmp_path / "step.md"
        step.write_text("# earlier step\n")
        return cls(tmp_path / "junit.xml", tmp_path / "summary.json", step)

    def args(self) -> list[str]:
        return ["--junit", str(self.junit), "--json", str(self.summary)]

    def doc(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.summary.read_text())
        return loaded

    def root(self) -> ET.Element:
        root = ET.parse(self.junit).getroot()
        assert root.tag == "testsuites"
        return root

    def markdown(self) -> str:
        text = self.step.read_text()
        assert text.startswith("# earlier step\n")  # appended, never overwritten
        return text


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def states(self) -> dict[str, str]:
        return dict(line.split(" ", 1) for line in self.out.splitlines())


async def start(reports: Reports, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "batchscope", "wait", "--timeout", TIMEOUT, *reports.args(),
        *args, env=cli_env(GITHUB_STEP_SUMMARY=str(reports.step)),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def signal_and_finish(proc: asyncio.subprocess.Process,
                            *signals: signal.Signals) -> Run:
    """Send ``signals`` back to back; the run as it ended, within :data:`EXIT_WITHIN`."""
    for sig in signals:
        proc.send_signal(sig)
    out, err = await asyncio.wait_for(proc.communicate(), EXIT_WITHIN)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


def requests_for(fake: FakeDatadog | FakeEngine, needle: str) -> int:
    return sum(needle in r.path_qs for r in fake.requests)


async def polled_twice(fake: FakeDatadog | FakeEngine, needle: str) -> None:
    """A second request for ``needle`` starts only after the first answer was read: the
    wait knows the state the first poll found."""
    await wait_until(lambda: requests_for(fake, needle) >= 2, timeout=30,
                     what=f"two polls of {needle}")


def errors(root: ET.Element) -> list[ET.Element]:
    return list(root.iter("error"))


def case_named(root: ET.Element, suite: str, prefix: str) -> ET.Element:
    [found] = [c for s in root.findall("testsuite") if s.get("name") == suite
               for c in s.findall("testcase") if c.get("name", "").startswith(prefix)]
    return found


def datadog_pair() -> tuple[FakeDatadog, str, str]:
    """A batch that already passed and one that never finishes (one of its two results
    passed, the other still running)."""
    datadog = FakeDatadog(api_key=API_KEY, app_key=APP_KEY)
    done = datadog.create_batch(tests=[CHECKOUT])
    datadog.finish(done, "passed")
    slow = datadog.create_batch(tests=[CHECKOUT, SEARCH])
    datadog.set_result(slow, "aaa-aaa-aaa", status="passed", duration=500)
    return datadog, done, slow


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)],
                         ids=["SIGTERM", "SIGINT"])
async def test_a_signal_stops_the_wait_with_every_report_written(
        tmp_path: Path, sig: signal.Signals, code: int) -> None:
    """SIGTERM (SIGINT) while one batch passed and one still runs: the wait exits 143
    (130) at once, not at its timeout; stdout has both final states, stderr the verdict
    naming the signal; the JUnit has exactly one error, wait_interrupted and naming the
    signal, on the running result, the passed batch's test case not failed; the JSON says
    outcome interrupted, its exit code and the signal; the step summary's title says
    interrupted (signal)."""
    datadog, done, slow = datadog_pair()
    reports = Reports.under(tmp_path)
    async with await start_simulator(datadog=datadog) as sim:
        proc = await start(reports, "--config", write_config(tmp_path, sim), done, slow)
        await polled_twice(datadog, slow)
        run = await signal_and_finish(proc, sig)
    assert run.code == code, run.err
    assert run.states == {done: "passed", slow: "in_progress"}
    verdict = run.err.splitlines()[-1]
    assert verdict.startswith(f"batchscope wait: interrupted by {sig.name} after ")
    assert verdict.endswith(f" s (1 passed, 1 pending): {slow} still in_progress")

    root = reports.root()
    [error] = errors(root)
    assert error.get("type") == "wait_interrupted"
    message = error.get("message", "")
    assert message.startswith("still in_progress at aws:us-east-1, firefox.laptop_large "
                              f"when batchscope wait was interrupted by {sig.name} after ")
    assert error is case_named(root, f"datadog/ci/{slow}", "Search page").find("error")
    passed = case_named(root, f"datadog/ci/{done}", "Checkout flow")
    assert len(passed) == 0  # no failure, error or skipped element
    assert root.get("failures") == "0" and "wait_timeout" not in reports.junit.read_text()

    doc = reports.doc()
    assert (doc["outcome"], doc["exit_code"], doc["interrupted"]) == (
        "interrupted", code, sig.name)
    assert doc["timed_out"] is False
    assert {b["batch_id"]: b["verdict"] for b in doc["batches"]} == {
        done: "passed", slow: "pending"}
    assert f"### 🛑 batchscope wait: interrupted ({sig.name})" in reports.markdown()


async def test_an_interrupted_idle_wait_says_the_engine_was_not_idle(tmp_path: Path) -> None:
    """`wait --source engine --idle` with a batch running when SIGTERM comes: exit 143,
    the running batch on stdout, the idle test case an error wait_interrupted, the JSON
    outcome interrupted with the engine not idle, the step summary interrupted."""
    engine = FakeEngine()
    running = engine.create_batch("instance-migration", total_jobs=4)
    reports = Reports.under(tmp_path)
    async with await start_simulator(engine=engine) as sim:
        proc = await start(reports, "--config", write_config(tmp_path, sim),
                           "--source", "engine", "--idle")
        await polled_twice(engine, "/batch/statistics")
        run = await signal_and_finish(proc, signal.SIGTERM)
    assert run.code == 143, run.err
    assert run.states == {running: "in_progress"}
    assert "batchscope wait: interrupted by SIGTERM after " in run.err
    assert "not idle (1 runtime batches left)" in run.err
    [error] = errors(reports.root())
    assert error.get("type") == "wait_interrupted"
    assert error.get("message", "").startswith(
        "1 runtime batches left when batchscope wait was interrupted by SIGTERM after ")
    assert running in (error.text or "")
    doc = reports.doc()
    assert (doc["outcome"], doc["exit_code"], doc["interrupted"]) == (
        "interrupted", 143, "SIGTERM")
    assert doc["idle"] == {"target": "prod", "types": [], "idle": False, "remaining": 1}
    markdown = reports.markdown()
    assert "### 🛑 batchscope wait: interrupted (SIGTERM)" in markdown
    assert "not idle when interrupted by SIGTERM after " in markdown


async def test_a_batch_that_already_failed_still_fails_the_gate(tmp_path: Path) -> None:
    """One batch failed, another still runs when SIGTERM comes: the gate has failed
    whatever the rest does, so exit 1 and outcome failed; the JSON still names the signal
    and the running batch's result is marked wait_interrupted."""
    datadog = FakeDatadog(api_key=API_KEY, app_key=APP_KEY)
    bad = datadog.create_batch(tests=[CHECKOUT])
    datadog.set_result(bad, "aaa-aaa-aaa", status="failed", duration=800)
    datadog.finish(bad, "failed")
    slow = datadog.create_batch(tests=[SEARCH])
    reports = Reports.under(tmp_path)
    async with await start_simulator(datadog=datadog) as sim:
        proc = await start(reports, "--config", write_config(tmp_path, sim), bad, slow)
        await polled_twice(datadog, slow)
        run = await signal_and_finish(proc, signal.SIGTERM)
    assert run.code == 1, run.err
    assert run.states == {bad: "failed", slow: "in_progress"}
    assert "batchscope wait: failed (1 failed, 1 pending)" in run.err
    doc = reports.doc()
    assert (doc["outcome"], doc["exit_code"], doc["interrupted"]) == ("failed", 1, "SIGTERM")
    root = reports.root()
    [failure] = root.iter("failure")
    assert failure is case_named(root, f"datadog/ci/{bad}", "Checkout flow").find("failure")
    [error] = errors(root)
    assert error.get("type") == "wait_interrupted"
    assert "### ❌ batchscope wait: failed" in reports.markdown()


@pytest.mark.parametrize("signals", [
    (signal.SIGTERM, signal.SIGTERM),
    (signal.SIGINT, signal.SIGTERM),
], ids=["SIGTERM twice", "SIGINT and SIGTERM"])
async def test_a_second_signal_right_after_the_first_changes_nothing(
        tmp_path: Path, signals: tuple[signal.Signals, ...]) -> None:
    """Two signals back to back (a runner that insists, or GitHub Actions' SIGINT then
    SIGTERM): the process is not killed by the second, one signal decides the exit code
    (the one handled first: two signals pending at once reach a process in an order the
    kernel picks), and every report is written whole and names that same signal."""
    datadog, done, slow = datadog_pair()
    reports = Reports.under(tmp_path)
    async with await start_simulator(datadog=datadog) as sim:
        proc = await start(reports, "--config", write_config(tmp_path, sim), done, slow)
        await polled_twice(datadog, slow)
        run = await signal_and_finish(proc, *signals)
    codes = {128 + sig.value: sig.name for sig in signals}
    assert run.code in codes, run.err  # not -15: not killed by the second SIGTERM
    decided = codes[run.code]
    assert "Traceback" not in run.err
    assert f"batchscope wait: interrupted by {decided} after " in run.err
    assert run.states == {done: "passed", slow: "in_progress"}
    doc = reports.doc()
    assert (doc["outcome"], doc["exit_code"], doc["interrupted"]) == (
        "interrupted", run.code, decided)
    [error] = errors(reports.root())
    assert error.get("type") == "wait_interrupted"
    assert f"interrupted by {decided} after " in error.get("message", "")
    assert f"interrupted ({decided})" in reports.markdown()


async def test_a_signal_cancels_a_request_in_flight(tmp_path: Path) -> None:
    """The upstream holds every answer for 8 s (request_timeout 30): SIGTERM during the
    first request ends the wait at once, not when the answer would come; the batch never
    seen is `unknown`, its report case an error wait_interrupted saying so. (The simulator
    itself finishes the held answer before it closes: the test lasts the 8 s.)"""
    datadog = FakeDatadog(api_key=API_KEY, app_key=APP_KEY)
    stuck = datadog.create_batch(tests=[CHECKOUT])
    datadog.inject(f"/ci/batch/{stuck}", delay=HELD, times=None)
    reports = Reports.under(tmp_path)
    async with await start_simulator(datadog=datadog) as sim:
        proc = await start(reports, "--config", write_config(tmp_path, sim), stuck)
        await wait_until(lambda: requests_for(datadog, stuck) >= 1, timeout=30,
                         what="the first request")
        began = time.monotonic()
        run = await signal_and_finish(proc, signal.SIGTERM)
        took = time.monotonic() - began
        datadog.clear_faults()
    assert run.code == 143, run.err
    assert took < HELD - 2  # the held request was abandoned, not awaited
    assert run.states == {stuck: "unknown"}
    [error] = errors(reports.root())
    assert error.get("type") == "wait_interrupted"
    assert error.get("message", "").startswith(
        "not seen when batchscope wait was interrupted by SIGTERM after ")


async def test_the_wait_handles_the_signals_only_while_it_waits(tmp_path: Path) -> None:
    """In process: while `wait_for_batches` waits, SIGTERM is the wait's (the process
    lives, the report says interrupted by SIGTERM, not timed out); once it returned, the
    SIGINT and SIGTERM handlers are the very ones in effect before."""
    stop_signals = (signal.SIGINT, signal.SIGTERM)
    before = {sig: signal.getsignal(sig) for sig in stop_signals}
    datadog, done, slow = datadog_pair()
    async with await start_simulator(datadog=datadog) as sim:
        settings = load_settings(write_config(tmp_path, sim), environ={})
        waiting = asyncio.create_task(wait_for_batches(
            settings, "datadog", None, [done, slow], time.monotonic() + float(TIMEOUT),
            timeout_seconds=float(TIMEOUT)))
        await polled_twice(datadog, slow)
        handler = signal.getsignal(signal.SIGTERM)
        # Only with a handler in place is the signal sent (else it would end pytest).
        assert handler is not before[signal.SIGTERM]
        assert handler not in (signal.SIG_DFL, signal.SIG_IGN, None)
        os.kill(os.getpid(), signal.SIGTERM)
        report = await asyncio.wait_for(waiting, EXIT_WITHIN)
    assert (report.interrupted, report.timed_out) == ("SIGTERM", False)
    assert {b.batch_id: b.state for b in report.batches} == {
        done: "passed", slow: "in_progress"}
    assert {sig: signal.getsignal(sig) for sig in stop_signals} == before
