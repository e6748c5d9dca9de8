"""`batchscope wait` as a CI job runs it: the real CLI in a subprocess, the simulator on
loopback, the reports it writes read back element by element."""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from batchscope.simulator.datadog import FakeDatadog
from batchscope.simulator.engine import FakeEngine
from batchscope.simulator.server import RunningSimulator, start_simulator
from batchscope.tracker.links import DatadogLinks
from helpers import cli_env, wait_until

API_KEY, APP_KEY = "s3cr3t-api-key-value", "s3cr3t-app-key-value"
APP_URL = "https://app.example.test"
HOSTILE = '<img src=x onerror=alert(1)> & "q" \'a\' ]]> | `x` \x07 end'

# Tests of a Datadog batch: one blocking, one non-blocking result with known durations.
TESTS = [
    {"test_public_id": "aaa-aaa-aaa", "test_name": "Checkout flow",
     "location": "aws:eu-central-1", "device": "chrome.laptop_large",
     "execution_rule": "blocking"},
    {"test_public_id": "bbb-bbb-bbb", "test_name": "Search page",
     "location": "aws:us-east-1", "device": "firefox.laptop_large",
     "execution_rule": "non_blocking"},
]



@dataclass
class Run:
    code: int
    out: str
    err: str
    seconds: float

    @property
    def states(self) -> dict[str, str]:
        """stdout's final states: one `ID STATE` line per batch."""
        return dict(line.split(" ", 1) for line in self.out.splitlines())

    def progress(self, needle: str) -> list[str]:
        """The progress lines on stderr that mention ``needle``."""
        return [line for line in self.err.splitlines()
                if line.startswith("[") and needle in line]

    def batch_lines(self, batch_id: str) -> list[str]:
        """The progress lines about a batch's own state (not its results)."""
        return [line for line in self.progress(f" {batch_id}: ")
                if f"{batch_id}: result " not in line]


async def start(*args: str, **extra_env: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "batchscope", "wait", *args, env=cli_env(**extra_env),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def finish(proc: asyncio.subprocess.Process, began: float,
                 timeout: float = 60) -> Run:
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode(), time.monotonic() - began)


async def wait(*args: str, timeout: float = 60, **extra_env: str) -> Run:
    began = time.monotonic()
    return await finish(await start(*args, **extra_env), began, timeout)


def write_config(tmp_path: Path, sim: RunningSimulator, *, engine: str = "",
                 datadog: str = "") -> str:
    path = tmp_path / "batchscope.toml"
    path.write_text(f"""
poll_interval = 0.05
[[engines]]
name = "prod"
url = "{sim.engine_url}"
page_size = 5
request_timeout = 2
cockpit_url = "https://camunda.example.test/camunda/app/cockpit/default"
{engine}
[[datadog]]
name = "ci"
url = "{sim.datadog_url}"
api_key = "{API_KEY}"
app_key = "{APP_KEY}"
app_url = "{APP_URL}"
request_timeout = 2
not_found_grace = 0.3
{datadog}
""")
    return str(path)


def new_datadog() -> FakeDatadog:
    return FakeDatadog(api_key=API_KEY, app_key=APP_KEY)


def polled(fake: FakeDatadog | FakeEngine, needle: str) -> Callable[[], bool]:
    return lambda: any(needle in r.path_qs for r in fake.requests)


def parse_junit(path: Path) -> ET.Element:
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    return root


def suites(root: ET.Element) -> dict[str, ET.Element]:
    return {s.get("name", ""): s for s in root.findall("testsuite")}


def check_junit_shape(root: ET.Element) -> None:
    """What GitLab, Jenkins, Azure DevOps and GitHub reporters read, checked everywhere:
    counts that add up, numeric times, one outcome element per test case at most."""
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in root.findall("testsuite"):
        cases = suite.findall("testcase")
        assert suite.get("name")
        assert int(suite.get("tests", "-1")) == len(cases)
        for key, tag in (("failures", "failure"), ("errors", "error"), ("skipped", "skipped")):
            assert int(suite.get(key, "-1")) == sum(c.find(tag) is not None for c in cases)
        assert math.isfinite(float(suite.get("time", "nan")))
        for key in totals:
            totals[key] += int(suite.get(key, "0"))
        for case in cases:
            assert case.get("classname") and case.get("name")
            if case.get("time") is not None:
                assert float(case.get("time", "nan")) >= 0
            outcomes = [c for c in case if c.tag in ("failure", "error", "skipped")]
            assert len(outcomes) <= 1
            for o in outcomes:
                assert o.get("message")
    for key, value in totals.items():
        assert int(root.get(key, "-1")) == value


def case_named(suite: ET.Element, prefix: str) -> ET.Element:
    [case] = [c for c in suite.findall("testcase") if c.get("name", "").startswith(prefix)]
    return case


# --------------------------------------------------------------------------- Datadog


async def test_several_batches_mixed_outcomes_reports_and_exit_1(tmp_path: Path) -> None:
    """Three Datadog batches end while waited on: one passes, one fails on a blocking
    result, one fails on a non_blocking result only. Exit 1; stdout has one line per batch
    (the non-blocking one `passed`); each change is one progress line; the JUnit XML, the
    JSON summary and the appended step summary say the same, element by element."""
    datadog = new_datadog()
    good = datadog.create_batch(tests=TESTS[:1])
    bad = datadog.create_batch(tests=TESTS)
    soft = datadog.create_batch(tests=TESTS)
    junit, summary, step = tmp_path / "out" / "junit.xml", tmp_path / "s.json", tmp_path / "step"
    step.write_text("# earlier step\n")
    async with await start_simulator(datadog=datadog) as sim:
        config = write_config(tmp_path, sim)
        began = time.monotonic()
        proc = await start("--config", config, "--junit", str(junit), "--json", str(summary),
                           good, bad, soft, GITHUB_STEP_SUMMARY=str(step))
        await wait_until(lambda: all(polled(datadog, b)() for b in (good, bad, soft)),
                         timeout=30, what="first polls")
        datadog.set_result(good, "aaa-aaa-aaa", status="passed", duration=1500)
        datadog.finish(good, "passed")
        datadog.set_result(bad, "aaa-aaa-aaa", status="failed", duration=2250, timed_out=True)
        datadog.set_result(bad, "bbb-bbb-bbb", status="passed", duration=1000)
        datadog.finish(bad, "failed")
        datadog.set_result(soft, "aaa-aaa-aaa", status="passed", duration=1000)
        datadog.set_result(soft, "bbb-bbb-bbb", status="failed", duration=3000)
        datadog.finish(soft, "failed")
        run = await finish(proc, began)
    assert run.code == 1, run.err
    assert run.states == {good: "passed", bad: "failed", soft: "passed"}
    bad_rid = datadog.batch(bad).results[0].result_id
    link = DatadogLinks(APP_URL).result("aaa-aaa-aaa", bad_rid, batch_id=bad)
    assert link is not None
    # one line per change: first sighting, then the end; never one per poll
    assert len(run.batch_lines(good)) == 2
    assert len(run.batch_lines(bad)) == 2
    assert any("result failed (timed out)" in line and "Checkout flow" in line
               and line.endswith(link) for line in run.progress(bad))
    assert any("non_blocking" in line for line in run.progress(soft))
    assert "non_blocking result failures reported, not failing the gate" in run.err
    assert API_KEY not in run.err + run.out

    root = parse_junit(junit)
    check_junit_shape(root)
    by_name = suites(root)
    assert set(by_name) == {f"datadog/ci/{b}" for b in (good, bad, soft)}
    assert root.get("tests") == "5" and root.get("failures") == "1"
    assert root.get("skipped") == "1" and root.get("errors") == "0"
    g = by_name[f"datadog/ci/{good}"]
    assert (g.get("tests"), g.get("failures"), g.get("time")) == ("1", "0", "1.500")
    [passed] = g.findall("testcase")
    assert passed.get("classname") == "Checkout flow"
    assert passed.get("name") == "Checkout flow [aws:eu-central-1, chrome.laptop_large]"
    assert passed.get("time") == "1.500" and len(passed) == 0
    b = by_name[f"datadog/ci/{bad}"]
    assert (b.get("tests"), b.get("failures"), b.get("time")) == ("2", "1", "3.250")
    failure = case_named(b, "Checkout flow").find("failure")
    assert failure is not None and failure.get("type") == "timed_out"
    message = failure.get("message", "")
    assert "aws:eu-central-1" in message and "chrome.laptop_large" in message
    assert link in message
    assert "location: aws:eu-central-1" in (failure.text or "")
    assert "device: chrome.laptop_large" in (failure.text or "")
    assert f"link: {link}" in (failure.text or "")
    assert case_named(b, "Search page").find("failure") is None
    s = by_name[f"datadog/ci/{soft}"]
    assert (s.get("failures"), s.get("skipped")) == ("0", "1")
    skipped = case_named(s, "Search page").find("skipped")
    assert skipped is not None
    assert skipped.get("message", "").startswith("non_blocking failure")
    assert "aws:us-east-1" in skipped.get("message", "")

    doc = json.loads(summary.read_text())
    assert (doc["outcome"], doc["exit_code"], doc["timed_out"]) == ("failed", 1, False)
    rows = {r["batch_id"]: r for r in doc["batches"]}
    assert rows[bad]["state"] == "failed" and rows[bad]["verdict"] == "failed"
    # the tracker may itself call it passed (non-blocking failures never fail a batch)
    assert rows[soft]["state"] in ("failed", "passed") and rows[soft]["verdict"] == "passed"
    assert rows[soft]["shown_state"] == "passed" and rows[soft]["non_blocking_failures"] == 1
    batch_link = DatadogLinks(APP_URL).batch(bad)
    assert rows[bad]["link"] == batch_link
    assert "failure" in rows[bad] and "reason" in rows[bad]
    [timed] = [r for r in rows[bad]["results"] if r["test_public_id"] == "aaa-aaa-aaa"]
    assert timed["timed_out"] is True and timed["duration_ms"] == 2250
    assert timed["link"] == link

    md = step.read_text()
    assert md.startswith("# earlier step\n")  # appended, never overwritten
    assert "batchscope wait: failed" in md
    assert f"[`{bad}`]({batch_link})" in md
    failing = md.split("#### Failing results")[1].split("####")[0]
    assert "Checkout flow" in failing and "timed out" in failing and link in failing
    assert "Search page" not in failing
    assert "Search page" in md.split("#### Non-blocking failures")[1]


async def test_only_non_blocking_failures_pass_the_gate(tmp_path: Path) -> None:
    """A batch that failed on a non_blocking result only: exit 0, reported as passed."""
    datadog = new_datadog()
    soft = datadog.create_batch(tests=TESTS)
    datadog.set_result(soft, "aaa-aaa-aaa", status="passed")
    datadog.set_result(soft, "bbb-bbb-bbb", status="failed")
    datadog.finish(soft, "failed")
    async with await start_simulator(datadog=datadog) as sim:
        run = await wait("--config", write_config(tmp_path, sim), soft)
    assert run.code == 0, run.err
    assert run.states == {soft: "passed"}
    assert "batchscope wait: passed" in run.err


async def test_timeout_exits_3_and_prints_what_is_known(tmp_path: Path) -> None:
    """One batch passes, one never ends: exit 3 on time, both final lines printed, the
    running one shown once (not per poll), reports written with a wait_timeout error."""
    datadog = new_datadog()
    done, slow = datadog.create_batch(tests=TESTS[:1]), datadog.create_batch(tests=TESTS)
    datadog.finish(done, "passed")
    datadog.set_result(slow, "aaa-aaa-aaa", status="passed", duration=500)
    junit, summary = tmp_path / "j.xml", tmp_path / "s.json"
    async with await start_simulator(datadog=datadog) as sim:
        run = await wait("--config", write_config(tmp_path, sim), "--timeout", "1.5",
                         "--junit", str(junit), "--json", str(summary), done, slow)
        polls = sum(slow in r.path_qs for r in datadog.requests)
    assert run.code == 3, run.err
    assert 1.5 <= run.seconds < 20
    assert run.states == {done: "passed", slow: "in_progress"}
    assert polls > 3 and len(run.batch_lines(slow)) == 1
    assert "timed out after 1.5 s" in run.err and f"{slow} still in_progress" in run.err
    root = parse_junit(junit)
    check_junit_shape(root)
    s = suites(root)[f"datadog/ci/{slow}"]
    error = case_named(s, "Search page").find("error")
    assert error is not None and error.get("type") == "wait_timeout"
    assert case_named(s, "Checkout flow").find("error") is None
    doc = json.loads(summary.read_text())
    assert (doc["outcome"], doc["exit_code"], doc["timed_out"]) == ("timed_out", 3, True)
    assert {r["batch_id"]: r["verdict"] for r in doc["batches"]} == {
        done: "passed", slow: "pending"}


async def test_a_failure_wins_over_a_timeout(tmp_path: Path) -> None:
    """One batch failed, another is still running at the timeout: the gate has failed
    whatever the rest does, so exit 1 (not 3)."""
    datadog = new_datadog()
    bad, slow = datadog.create_batch(tests=TESTS[:1]), datadog.create_batch(tests=TESTS[:1])
    datadog.finish(bad, "failed")
    async with await start_simulator(datadog=datadog) as sim:
        run = await wait("--config", write_config(tmp_path, sim), "--timeout", "1", bad, slow)
    assert run.code == 1, run.err
    assert run.states == {bad: "failed", slow: "in_progress"}


async def test_timeout_is_honoured_when_the_upstream_hangs(tmp_path: Path) -> None:
    """An upstream that does not answer in time (each request hangs 6 s, request_timeout
    30 s) cannot hold the gate past --timeout 1; the batch never seen is `unknown`."""
    datadog = new_datadog()
    stuck = datadog.create_batch()
    datadog.inject(f"/ci/batch/{stuck}", delay=6, times=None)
    junit = tmp_path / "j.xml"
    async with await start_simulator(datadog=datadog) as sim:
        config = write_config(tmp_path, sim).replace(
            "request_timeout = 2\nnot_found_grace", "request_timeout = 30\nnot_found_grace")
        run = await wait("--config", config, "--timeout", "1", "--junit", str(junit), stuck)
        datadog.clear_faults()
    assert run.code == 3, run.err
    assert run.seconds < 5.5  # the 6 s request was abandoned at the deadline, not awaited
    assert run.states == {stuck: "unknown"}
    root = parse_junit(junit)
    check_junit_shape(root)
    [case] = suites(root)[f"datadog/ci/{stuck}"].findall("testcase")
    error = case.find("error")
    assert error is not None and "not seen" in error.get("message", "")


async def test_an_upstream_outage_is_one_line_not_one_per_poll(tmp_path: Path) -> None:
    """Datadog answers 503 for a while: one progress line when it starts failing, one
    when it answers again, however many polls failed in between; then the gate passes."""
    datadog = new_datadog()
    batch = datadog.create_batch(tests=TESTS[:1])
    datadog.finish(batch, "passed")
    datadog.inject(f"/ci/batch/{batch}", status=503, body='{"errors": ["down"]}', times=None)
    async with await start_simulator(datadog=datadog) as sim:
        began = time.monotonic()
        proc = await start("--config", write_config(tmp_path, sim), batch)
        await wait_until(lambda: sum(batch in r.path_qs for r in datadog.requests) >= 5,
                         timeout=30, what="five failed polls")
        datadog.clear_faults()
        run = await finish(proc, began)
    assert run.code == 0, run.err
    assert len(run.progress("upstream error (http_5xx)")) == 1
    assert len(run.progress("upstream answers again")) == 1
    assert run.states == {batch: "passed"}


async def test_datadog_batch_deleted_while_waited_on_vanishes(tmp_path: Path) -> None:
    """A Datadog batch deleted during the wait answers 404: after not_found_grace it is
    vanished, exit 1, and the report has a failing test case for the batch itself."""
    datadog = new_datadog()
    gone = datadog.create_batch(tests=TESTS[:1])
    junit = tmp_path / "j.xml"
    async with await start_simulator(datadog=datadog) as sim:
        began = time.monotonic()
        proc = await start("--config", write_config(tmp_path, sim), "--junit", str(junit),
                           gone)
        await wait_until(polled(datadog, gone), timeout=30, what="first poll")
        datadog.delete(gone)
        run = await finish(proc, began)
    assert run.code == 1, run.err
    assert run.states == {gone: "vanished"}
    assert len(run.progress("not found (Datadog answers 404)")) == 1
    root = parse_junit(junit)
    check_junit_shape(root)
    [case] = suites(root)[f"datadog/ci/{gone}"].findall("testcase")
    failure = case.find("failure")
    assert failure is not None and "did not finish" in failure.get("message", "")
    assert "batch vanished" in failure.get("message", "")


async def test_hostile_upstream_strings_stay_data(tmp_path: Path) -> None:
    """A test named with markup, quotes, a control character and `]]>`: the JUnit XML
    still parses and carries the name as text, the step summary has no live HTML or
    table-breaking pipe, the terminal gets no control character."""
    datadog = new_datadog()
    ugly = datadog.create_batch(tests=[{**TESTS[0], "test_name": HOSTILE,
                                        "location": "loc|<b>x</b>"}])
    datadog.set_result(ugly, "aaa-aaa-aaa", status="failed", duration=10)
    datadog.finish(ugly, "failed")
    junit, step = tmp_path / "j.xml", tmp_path / "step.md"
    async with await start_simulator(datadog=datadog) as sim:
        run = await wait("--config", write_config(tmp_path, sim), "--junit", str(junit),
                         ugly, GITHUB_STEP_SUMMARY=str(step))
    assert run.code == 1, run.err
    root = parse_junit(junit)
    check_junit_shape(root)
    [case] = suites(root)[f"datadog/ci/{ugly}"].findall("testcase")
    assert case.get("classname") == HOSTILE.replace("\x07", "\ufffd")
    assert "\x07" not in junit.read_text()
    md = step.read_text()
    assert "<img" not in md and "<b>" not in md and "&lt;img src=x" in md
    row = next(line for line in md.splitlines() if "onerror" in line)
    assert row.count("|") - row.count("\\|") == 7  # six cells: no pipe broke out
    assert "\x07" not in run.err


# --------------------------------------------------------------------------- engine


async def test_engine_wait_asks_for_that_batch_only(tmp_path: Path) -> None:
    """`wait --source engine ID` among 30 other batches (page_size 5: a full listing
    would be 7 pages a poll): every request names the batch; the runtime is asked with
    /batch/statistics?batchId=ID&maxResults=1, history only once it has left."""
    engine = FakeEngine()
    engine.create_many(30)
    mine = engine.create_batch("instance-migration", total_jobs=10)
    async with await start_simulator(engine=engine) as sim:
        config = write_config(tmp_path, sim)
        began = time.monotonic()
        proc = await start("--config", config, "--source", "engine", mine)
        await wait_until(lambda: sum("/batch/statistics" in r.path_qs
                                     for r in engine.requests) >= 3,
                         timeout=30, what="three polls")
        engine.complete_jobs(mine, 10)
        engine.finish(mine)
        run = await finish(proc, began)
    assert run.code == 0, run.err
    assert run.states == {mine: "passed"}
    paths = [r.path_qs.removeprefix("/engine-rest") for r in engine.requests]
    statistics = [p for p in paths if p.startswith("/batch/statistics")]
    assert len(statistics) >= 4
    assert all(p == f"/batch/statistics?batchId={mine}&maxResults=1" for p in statistics)
    rest = [p for p in paths if not p.startswith("/batch/statistics")]
    assert rest and all(mine in p or "jobDefinitionId=" in p for p in rest), rest
    assert f"/history/batch/{mine}" in rest
    assert not any(p.startswith("/history/batch?") for p in paths)  # no sweep
    assert len(rest) <= 3  # the history row and the delete evidence, once
    assert len(run.batch_lines(mine)) == 2  # in_progress, passed


async def test_engine_batches_deleted_finished_and_unknown(tmp_path: Path) -> None:
    """Three engine ids at once: one deleted while waited on (cancelled), one that had
    already finished before the wait (passed), one the engine never had (vanished).
    Exit 1; the JUnit XML has one test case per batch, failing for the two bad ones."""
    engine = FakeEngine()
    doomed = engine.create_batch("instance-deletion", total_jobs=10)
    engine.complete_jobs(doomed, 4)
    old = engine.create_batch("instance-migration", total_jobs=2)
    engine.complete_jobs(old, 2)
    engine.finish(old)
    junit, summary = tmp_path / "j.xml", tmp_path / "s.json"
    async with await start_simulator(engine=engine) as sim:
        began = time.monotonic()
        proc = await start("--config", write_config(tmp_path, sim), "--source", "engine",
                           "--junit", str(junit), "--json", str(summary),
                           doomed, old, "no-such-batch")
        await wait_until(polled(engine, f"batchId={doomed}"), timeout=30, what="first poll")
        engine.delete(doomed)
        run = await finish(proc, began)
    assert run.code == 1, run.err
    assert run.states == {doomed: "cancelled", old: "passed", "no-such-batch": "vanished"}
    root = parse_junit(junit)
    check_junit_shape(root)
    by_name = suites(root)
    [cancelled] = by_name[f"engine/prod/{doomed}"].findall("testcase")
    assert cancelled.get("classname") == "engine.instance-deletion"
    assert cancelled.get("name") == doomed
    failure = cancelled.find("failure")
    assert failure is not None and "batch cancelled" in failure.get("message", "")
    assert "cockpit/default/#/batch?details=" in failure.get("message", "")
    [passed] = by_name[f"engine/prod/{old}"].findall("testcase")
    assert len(passed) == 0
    [unknown] = by_name["engine/prod/no-such-batch"].findall("testcase")
    failure = unknown.find("failure")
    assert failure is not None and failure.get("type") == "no_history"
    doc = json.loads(summary.read_text())
    states = {r["batch_id"]: (r["state"], r["verdict"]) for r in doc["batches"]}
    assert states == {doomed: ("cancelled", "failed"), old: ("passed", "passed"),
                      "no-such-batch": ("vanished", "failed")}


async def test_engine_batch_stuck_on_failed_jobs_says_why(tmp_path: Path) -> None:
    """An engine batch with failed jobs is not over: the gate waits until the timeout
    (exit 3), and the reports carry the reason and the jobs' exception message."""
    engine = FakeEngine()
    stuck = engine.create_batch("instance-migration", total_jobs=10)
    engine.complete_jobs(stuck, 5)
    engine.fail_jobs(stuck, 2, message="ENGINE-13033 <no mapping> for 'task'")
    junit, summary = tmp_path / "j.xml", tmp_path / "s.json"
    async with await start_simulator(engine=engine) as sim:
        run = await wait("--config", write_config(tmp_path, sim), "--source", "engine",
                         "--timeout", "1.5", "--junit", str(junit), "--json", str(summary),
                         stuck)
    assert run.code == 3, run.err
    assert run.states == {stuck: "failed"}
    [line] = run.batch_lines(stuck)
    assert "failed (5/10 jobs, 2 failed) reason=failed_jobs" in line
    root = parse_junit(junit)
    check_junit_shape(root)
    [case] = suites(root)[f"engine/prod/{stuck}"].findall("testcase")
    error = case.find("error")
    assert error is not None and error.get("type") == "wait_timeout"
    assert "still failed (failed_jobs)" in error.get("message", "")
    assert "2x ENGINE-13033 <no mapping> for 'task'" in (error.text or "")
    [row] = json.loads(summary.read_text())["batches"]
    assert row["reason"] == "failed_jobs" and row["failure"]["failed_jobs"] == 2
    assert row["failure"]["messages"][0]["message"] == "ENGINE-13033 <no mapping> for 'task'"


async def test_idle_without_type_waits_for_every_batch(tmp_path: Path) -> None:
    """--idle: two running batches of two types; exit 0 (stdout `idle`) only once both
    left the runtime list, one progress line per change of what is running."""
    engine = FakeEngine()
    a = engine.create_batch("instance-migration", total_jobs=2)
    b = engine.create_batch("instance-deletion", total_jobs=2)
    async with await start_simulator(engine=engine) as sim:
        began = time.monotonic()
        proc = await start("--config", write_config(tmp_path, sim), "--idle")
        await wait_until(polled(engine, "/batch/statistics"), timeout=30, what="first poll")
        engine.finish(a)
        await wait_until(lambda: proc.returncode is None and sum(
            "/batch/statistics" in r.path_qs for r in engine.requests) >= 4,
            timeout=30, what="polls after the first end")
        assert proc.returncode is None  # b still runs
        engine.finish(b)
        run = await finish(proc, began)
    assert run.code == 0, run.err
    assert run.out == "idle\n"
    lines = run.progress("engine/prod: ")
    assert "2 runtime batches" in lines[0] and a in lines[0] and b in lines[0]
    assert lines[-1].endswith("idle (no runtime batch)")
    assert len(lines) <= 3 < sum("/batch/statistics" in r.path_qs for r in engine.requests)


async def test_idle_with_type_ignores_other_types_and_times_out(tmp_path: Path) -> None:
    """--idle --type instance-migration: a running deletion batch does not hold the gate;
    a running migration does, until the timeout (exit 3, the batch printed, JSON and
    JUnit say so)."""
    engine = FakeEngine()
    engine.create_batch("instance-deletion", total_jobs=2)
    async with await start_simulator(engine=engine) as sim:
        config = write_config(tmp_path, sim)
        run = await wait("--config", config, "--idle", "--type", "instance-migration")
        assert run.code == 0, run.err
        assert run.out == "idle\n"
        assert all("type=instance-migration" in r.path_qs for r in engine.requests
                   if "/batch/statistics" in r.path_qs)
        migration = engine.create_batch("instance-migration", total_jobs=2)
        junit, summary = tmp_path / "j.xml", tmp_path / "s.json"
        run = await wait("--config", config, "--source", "engine", "--idle",
                         "--type", "instance-migration", "--type", "instance-modification",
                         "--timeout", "1", "--junit", str(junit), "--json", str(summary))
    assert run.code == 3, run.err
    assert run.states == {migration: "in_progress"}
    doc = json.loads(summary.read_text())
    assert doc["idle"] == {"target": "prod", "idle": False, "remaining": 1,
                           "types": ["instance-migration", "instance-modification"]}
    root = parse_junit(junit)
    check_junit_shape(root)
    [case] = suites(root)["engine/prod/idle"].findall("testcase")
    error = case.find("error")
    assert error is not None and "1 runtime batches left" in error.get("message", "")
    assert migration in (error.text or "")


# --------------------------------------------------------------------------- usage


async def test_usage_errors_exit_2_before_waiting(tmp_path: Path) -> None:
    """Contradictory or impossible command lines are refused at once with exit 2."""
    async with await start_simulator() as sim:
        config = write_config(tmp_path, sim)
        cases = {
            ("--idle", "some-id"): "give no BATCH_ID",
            ("--idle", "--source", "datadog"): "--idle is for --source engine",
            ("--type", "x", "some-id"): "--type needs --idle",
            (): "give at least one BATCH_ID",
            ("--timeout", "0", "some-id"): "positive number of seconds",
            ("--timeout", "nan", "some-id"): "positive number of seconds",
            ("--junit", str(tmp_path), "some-id"): "is a directory",
            ("ok-id", "bad id"): "batch id must match",
        }
        for args, message in cases.items():
            run = await wait("--config", config, *args)
            assert run.code == 2, (args, run.err)
            assert message in run.err, (args, run.err)
        assert sim.datadog.requests == [] and sim.engine.requests == []
