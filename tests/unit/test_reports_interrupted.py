"""The `wait` reports when a signal (SIGINT, SIGTERM: a CI job cancelled or out of time)
stopped the wait: the gate's outcome and exit code, and JUnit, JSON and Markdown saying
"interrupted" where they would say "timed out", checked on hand-made final records."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import replace
from typing import Any

from batchscope.runtime import reports
from batchscope.runtime.reports import IdleCheck, WaitedBatch, WaitReport

T0 = 1_760_000_000.0  # 2025-10-09T08:53:20Z
ELAPSED = 12.34
WHERE = "aws:eu-west-3, chrome.laptop_large"


def result(test: str, state: str, **extra: Any) -> dict[str, Any]:
    return {"test_public_id": test, "test_name": f"Test {test}", "location": "aws:eu-west-3",
            "device": "chrome.laptop_large", "execution_rule": "blocking", "state": state,
            "retries": 0, "result_id": "123", "duration_ms": 1500, "timed_out": False,
            "link": f"https://app.example/synthetics/details/{test}/result/123", **extra}


def ci(state: str, *results: dict[str, Any], batch_id: str) -> WaitedBatch:
    return WaitedBatch(source="datadog", target="ci", batch_id=batch_id, state=state,
                       terminal=state not in ("in_progress", "unknown"),
                       batch_type="synthetics-ci", results=results, started_at=T0,
                       link=f"https://app.example/synthetics/explorer/ci?batchResultId={batch_id}")


def engine(state: str, batch_id: str = "e-1") -> WaitedBatch:
    return WaitedBatch(source="engine", target="prod", batch_id=batch_id, state=state,
                       terminal=state in ("passed", "cancelled", "vanished"),
                       batch_type="instance-migration", started_at=T0,
                       counts={"total_jobs": 10, "completed_jobs": 4, "failed_jobs": 0})


def report(*batches: WaitedBatch, interrupted: str | None = None, timed_out: bool = False,
           idle: IdleCheck | None = None) -> WaitReport:
    return WaitReport(batches=batches, timed_out=timed_out, started_at=T0,
                      finished_at=T0 + ELAPSED, timeout_seconds=600, idle=idle,
                      interrupted=interrupted)


DONE = ci("passed", result("ok", "passed"), batch_id="b-done")
RUNNING = ci("in_progress", result("ok", "passed"), result("slow", "in_progress"),
             batch_id="b-run")
FAILED = ci("failed", result("bad", "failed"), batch_id="b-bad")
LEFT = IdleCheck("prod", ("instance-migration",), idle=False, remaining=3)


# --------------------------------------------------------------------------- the gate


def test_an_interrupted_wait_with_a_pending_batch_exits_128_plus_the_signal() -> None:
    """A batch still pending when SIGTERM (SIGINT) came: outcome `interrupted`, exit 143
    (130), the shell's convention for a process ended by that signal."""
    assert reports.outcome(report(DONE, RUNNING, interrupted="SIGTERM")) == "interrupted"
    assert reports.exit_code(report(DONE, RUNNING, interrupted="SIGTERM")) == 143
    assert reports.exit_code(report(DONE, RUNNING, interrupted="SIGINT")) == 130
    assert reports.exit_code(report(engine("unknown"), interrupted="SIGTERM")) == 143
    assert reports.signal_exit_code("SIGTERM") == 143
    assert reports.signal_exit_code("not a signal") == 130


def test_a_failure_wins_over_an_interruption_and_a_full_pass_stays_a_pass() -> None:
    """A batch that already failed makes the gate fail whatever the signal (exit 1); every
    batch passed before the signal: the gate passed (exit 0); without a signal the
    timeout's answer is unchanged (exit 3)."""
    failed = report(DONE, FAILED, RUNNING, interrupted="SIGTERM")
    assert (reports.outcome(failed), reports.exit_code(failed)) == ("failed", 1)
    passed = report(DONE, interrupted="SIGINT")
    assert (reports.outcome(passed), reports.exit_code(passed)) == ("passed", 0)
    timed_out = report(DONE, RUNNING, timed_out=True)
    assert (reports.outcome(timed_out), reports.exit_code(timed_out)) == ("timed_out", 3)


def test_an_interrupted_idle_wait_is_interrupted_unless_the_engine_was_idle() -> None:
    """--idle: interrupted while batches still ran is `interrupted` (143); interrupted
    after the engine was seen idle is `passed`; the engine never answering is no idle."""
    running = engine("in_progress")
    assert reports.exit_code(report(running, idle=LEFT, interrupted="SIGTERM")) == 143
    assert reports.outcome(report(running, idle=LEFT, interrupted="SIGTERM")) == "interrupted"
    idle = replace(LEFT, idle=True, remaining=0)
    assert reports.exit_code(report(idle=idle, interrupted="SIGTERM")) == 0
    never = replace(LEFT, remaining=None)
    assert reports.exit_code(report(idle=never, interrupted="SIGINT")) == 130
    assert reports.exit_code(report(running, idle=LEFT, timed_out=True)) == 3


# --------------------------------------------------------------------------- JUnit


def test_junit_marks_unfinished_results_wait_interrupted_naming_the_signal() -> None:
    """The result still running is an `error` of type wait_interrupted whose message names
    where, the signal and the time waited; finished results stay as they were."""
    root = ET.fromstring(reports.junit_xml(report(DONE, RUNNING, interrupted="SIGTERM")))
    assert (root.get("tests"), root.get("errors"), root.get("failures")) == ("3", "1", "0")
    [error] = root.iter("error")
    assert error.get("type") == "wait_interrupted"
    assert error.get("message") == (f"still in_progress at {WHERE} when batchscope wait was "
                                    "interrupted by SIGTERM after 12.3 s")
    for case in root.iter("testcase"):
        if case.get("classname") == "Test ok":
            assert len(case) == 0
    unseen = ET.fromstring(reports.junit_xml(report(ci("unknown", batch_id="b-x"),
                                                    engine("in_progress"),
                                                    interrupted="SIGINT")))
    messages = [(e.get("type"), e.get("message")) for e in unseen.iter("error")]
    assert messages == [
        ("wait_interrupted", "not seen when batchscope wait was interrupted by SIGINT after "
                             "12.3 s"),
        ("wait_interrupted", "still in_progress when batchscope wait was interrupted by "
                             "SIGINT after 12.3 s")]


def test_junit_of_an_interruption_is_the_timeouts_but_for_the_error_type_and_message() -> None:
    """Apart from the unfinished cases' type and message, an interrupted wait's JUnit is
    byte for byte the timed-out one's: failures, skips, times, properties, counts."""
    batches = (DONE, FAILED, RUNNING, ci("unknown", batch_id="b-x"), engine("in_progress"))
    timed_out = reports.junit_xml(report(*batches, timed_out=True))
    interrupted = reports.junit_xml(report(*batches, interrupted="SIGTERM"))
    assert timed_out.count('type="wait_timeout"') == 3
    assert interrupted == timed_out.replace('type="wait_timeout"', 'type="wait_interrupted"'
                                            ).replace("timed out after 600 s",
                                                      "was interrupted by SIGTERM after 12.3 s")


def test_junit_idle_suite_says_interrupted() -> None:
    """--idle interrupted: the one test case errors with wait_interrupted, the batches
    still running in its text."""
    root = ET.fromstring(reports.junit_xml(report(engine("in_progress"), idle=LEFT,
                                                  interrupted="SIGTERM")))
    [case] = root.iter("testcase")
    error = case.find("error")
    assert error is not None and error.get("type") == "wait_interrupted"
    assert error.get("message") == ("3 runtime batches left when batchscope wait was "
                                    "interrupted by SIGTERM after 12.3 s")
    assert "e-1: in_progress instance-migration" in (error.text or "")


# --------------------------------------------------------------------------- JSON


def test_json_summary_says_interrupted_and_by_which_signal() -> None:
    """`outcome` interrupted, the exit code, `interrupted` the signal's name (null when no
    signal came), `version` still 1; every batch's last known state is kept."""
    doc = json.loads(reports.json_summary(report(DONE, RUNNING, interrupted="SIGTERM")))
    assert (doc["version"], doc["outcome"], doc["exit_code"]) == (1, "interrupted", 143)
    assert (doc["interrupted"], doc["timed_out"], doc["elapsed_seconds"]) == (
        "SIGTERM", False, ELAPSED)
    assert [(b["batch_id"], b["state"], b["verdict"]) for b in doc["batches"]] == [
        ("b-done", "passed", "passed"), ("b-run", "in_progress", "pending")]
    failed = json.loads(reports.json_summary(report(FAILED, RUNNING, interrupted="SIGINT")))
    assert (failed["outcome"], failed["exit_code"], failed["interrupted"]) == (
        "failed", 1, "SIGINT")
    plain = json.loads(reports.json_summary(report(DONE)))
    assert plain["interrupted"] is None and plain["outcome"] == "passed"


# --------------------------------------------------------------------------- Markdown


def test_markdown_title_says_interrupted_and_pending_batches_stay_pending() -> None:
    """The title names the signal with its own icon; the batches table shows the pending
    batch as pending and the passed one as passed; a failure keeps the failed title."""
    text = reports.markdown_summary(report(DONE, RUNNING, interrupted="SIGTERM"))
    assert text.startswith("### 🛑 batchscope wait: interrupted (SIGTERM)\n")
    assert "| ⏳ pending |" in next(line for line in text.splitlines() if "`b-run`" in line)
    assert "| ✅ passed |" in next(line for line in text.splitlines() if "`b-done`" in line)
    failed = reports.markdown_summary(report(FAILED, RUNNING, interrupted="SIGTERM"))
    assert failed.startswith("### ❌ batchscope wait: failed\n")


def test_markdown_idle_sentence_says_interrupted() -> None:
    """--idle interrupted: the sentence says when it was interrupted, not a timeout."""
    text = reports.markdown_summary(report(engine("in_progress"), idle=LEFT,
                                           interrupted="SIGINT"))
    assert text.startswith("### 🛑 batchscope wait: interrupted (SIGINT)\n")
    assert ("batches of `instance-migration`: not idle when interrupted by SIGINT after "
            "12.3 s: 3 runtime batches left.") in text
    assert "after 600 s" not in text
