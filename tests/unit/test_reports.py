"""The `wait` report writers: the gate's verdict, JUnit XML, JSON summary, Markdown; pure
functions checked on hand-made final records, hostile upstream text included."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from batchscope.runtime import reports
from batchscope.runtime.reports import IdleCheck, WaitedBatch, WaitReport

T0 = 1_760_000_000.0  # 2025-10-09T08:53:20Z


def result(test: str = "aaa-aaa-aaa", state: str = "passed", **extra: Any) -> dict[str, Any]:
    return {"test_public_id": test, "test_name": f"Test {test}", "location": "aws:eu-west-3",
            "device": "chrome.laptop_large", "execution_rule": "blocking", "state": state,
            "retries": 0, "result_id": "123", "duration_ms": 1500, "timed_out": False,
            "link": f"https://app.example/synthetics/details/{test}/result/123", **extra}


def ci(state: str, *results: dict[str, Any], batch_id: str = "b-1", **extra: Any
       ) -> WaitedBatch:
    terminal = state not in ("in_progress", "stalled", "unknown")
    return WaitedBatch(source="datadog", target="ci", batch_id=batch_id, state=state,
                       terminal=terminal, batch_type="synthetics-ci", results=results,
                       link=f"https://app.example/synthetics/explorer/ci?batchResultId={batch_id}",
                       started_at=T0, **extra)


def engine(state: str, batch_id: str = "e-1", **extra: Any) -> WaitedBatch:
    terminal = state in ("passed", "cancelled", "vanished")
    return WaitedBatch(source="engine", target="prod", batch_id=batch_id, state=state,
                       terminal=terminal, batch_type="instance-migration", started_at=T0,
                       counts={"total_jobs": 10, "completed_jobs": 4, "failed_jobs": 0},
                       **extra)


def report(*batches: WaitedBatch, timed_out: bool = False,
           idle: IdleCheck | None = None) -> WaitReport:
    return WaitReport(batches=batches, timed_out=timed_out, started_at=T0,
                      finished_at=T0 + 12.5, timeout_seconds=600, idle=idle)


def junit(*batches: WaitedBatch, timed_out: bool = False) -> ET.Element:
    return ET.fromstring(reports.junit_xml(report(*batches, timed_out=timed_out)))


# --------------------------------------------------------------------------- the gate


def test_verdicts_follow_the_gate_rules() -> None:
    """passed/skipped pass, failed/cancelled/vanished fail, a Datadog batch failing on
    non_blocking results only passes, a running one is pending."""
    nb = result("nb", "failed", execution_rule="non_blocking")
    cases = [
        (engine("passed"), "passed"),
        (engine("cancelled"), "failed"),
        (engine("vanished"), "failed"),
        (engine("failed"), "pending"),  # failed jobs: not terminal for the engine
        (ci("skipped"), "passed"),
        (ci("failed", result(state="passed"), nb), "passed"),
        (ci("passed", result(state="passed"), nb), "passed"),
        (ci("failed", result(state="failed"), nb), "failed"),
        (ci("failed"), "failed"),  # failed, no result to excuse it
        (ci("failed", result(state="in_progress", execution_rule="non_blocking")), "passed"),
        (ci("vanished", nb), "failed"),
        (ci("in_progress", nb), "pending"),
    ]
    for batch, expected in cases:
        assert reports.verdict(batch) == expected, batch
    assert reports.shown_state(ci("failed", nb)) == "passed"
    assert reports.shown_state(ci("failed", result(state="failed"))) == "failed"


def test_a_failure_beats_a_timeout_and_a_timeout_beats_success() -> None:
    """Exit 1 as soon as one batch failed, else 3 when one is still pending, else 0."""
    ok, bad, running = ci("passed"), engine("cancelled"), ci("in_progress", batch_id="b-2")
    assert reports.exit_code(report(ok)) == 0
    assert reports.exit_code(report(ok, bad, running, timed_out=True)) == 1
    assert reports.exit_code(report(ok, running, timed_out=True)) == 3
    idle = IdleCheck("prod", (), idle=True, remaining=0)
    assert reports.exit_code(report(idle=idle)) == 0
    assert reports.exit_code(report(idle=replace(idle, idle=False, remaining=2))) == 3


# --------------------------------------------------------------------------- JUnit


def test_junit_counts_times_and_outcome_elements() -> None:
    """One suite per batch, one case per result; counts add up; durations in seconds;
    failure for blocking, skipped for non_blocking and skipped results."""
    batch = ci("failed",
               result("ok", "passed", duration_ms=61000),
               result("bad", "failed", timed_out=True, duration_ms=1234),
               result("nb", "failed", execution_rule="non_blocking", duration_ms=None),
               result("sk", "skipped", execution_rule="skipped", location=None, device=None,
                      duration_ms=None),
               reason="blocking_results_failed")
    root = junit(batch, engine("passed"))
    assert (root.get("tests"), root.get("failures"), root.get("skipped"),
            root.get("errors")) == ("5", "1", "2", "0")
    suite, eng = root.findall("testsuite")
    assert suite.get("name") == "datadog/ci/b-1"
    assert suite.get("timestamp") == "2025-10-09T08:53:20"
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("4", "1", "2")
    assert suite.get("time") == "62.234"
    cases = {c.get("classname"): c for c in suite.findall("testcase")}
    assert cases["Test ok"].get("time") == "61.000" and len(cases["Test ok"]) == 0
    assert cases["Test ok"].get("name") == "Test ok [aws:eu-west-3, chrome.laptop_large]"
    failure = cases["Test bad"].find("failure")
    assert failure is not None and failure.get("type") == "timed_out"
    assert failure.get("message") == (
        "timed out at aws:eu-west-3, chrome.laptop_large (batch failed: "
        "blocking_results_failed) https://app.example/synthetics/details/bad/result/123")
    assert "reason: blocking_results_failed" in (failure.text or "")
    assert cases["Test bad"].get("time") == "1.234"
    assert cases["Test nb"].get("time") is None  # unknown is not 0
    skipped = cases["Test nb"].find("skipped")
    assert skipped is not None and skipped.get("message", "").startswith("non_blocking failure")
    assert cases["Test sk"].get("name") == "Test sk"
    sk = cases["Test sk"].find("skipped")
    assert sk is not None and sk.get("message") == "skipped by its execution rule"
    assert eng.get("name") == "engine/prod/e-1" and eng.get("tests") == "1"
    [case] = eng.findall("testcase")
    assert case.get("classname") == "engine.instance-migration" and len(case) == 0


def test_repeated_results_get_distinct_names() -> None:
    """Two results of the same test, location and device (two lineages) stay two cases
    in reporters that key cases by classname and name; booleans read as JSON's."""
    root = junit(ci("failed", result(state="failed", timed_out=True), result(state="passed")))
    names = [c.get("name") for c in root.iter("testcase")]
    assert names == ["Test aaa-aaa-aaa [aws:eu-west-3, chrome.laptop_large]",
                     "Test aaa-aaa-aaa [aws:eu-west-3, chrome.laptop_large] #2"]
    [failure] = root.iter("failure")
    assert "timed_out: true" in (failure.text or "")


def test_insane_durations_are_left_out() -> None:
    """NaN, infinite, negative or non-numeric durations give no time attribute."""
    for bad in (float("nan"), float("inf"), -5, "12", True):
        [case] = junit(ci("passed", result(duration_ms=bad))).iter("testcase")
        assert case.get("time") is None, bad
    assert reports.seconds(0) == "0.000" and reports.seconds(2.5) == "2.500"


def test_a_failed_batch_never_reads_green() -> None:
    """A failed or vanished batch whose results say nothing (none, or all passed) gets a
    failing case of its own; a pending one an error; an engine batch a typed failure."""
    for batch in (ci("failed"), ci("vanished", reason="no_history"),
                  ci("failed", result(state="passed"))):
        root = junit(batch)
        assert root.get("failures") == "1", batch
        [failure] = root.iter("failure")
        assert f"batch {batch.state}" in failure.get("message", "")
    root = junit(ci("unknown"), timed_out=True)
    [error] = root.iter("error")
    assert error.get("type") == "wait_timeout"
    assert error.get("message") == "not seen when batchscope wait timed out after 600 s"
    failure_doc = {"failed_jobs": 3, "messages": [
        {"message": "ENGINE-13033 no mapping", "count": 3, "job_ids": ["j1"]}]}
    root = junit(engine("cancelled", reason="deleted", failure=failure_doc,
                        link="https://cockpit.example/#/batch?details=e-1"))
    [failure] = root.iter("failure")
    assert failure.get("type") == "deleted"
    assert failure.get("message") == ("batch cancelled: deleted: ENGINE-13033 no mapping "
                                      "https://cockpit.example/#/batch?details=e-1")
    assert "message: 3x ENGINE-13033 no mapping" in (failure.text or "")
    [error] = junit(engine("failed", reason="failed_jobs"), timed_out=True).iter("error")
    assert "still failed (failed_jobs)" in error.get("message", "")


def test_hostile_strings_are_escaped_and_cut() -> None:
    """Markup, quotes, `]]>`, C0 controls and lone surrogates in upstream strings: the XML
    parses, carries the text (invalid characters replaced), and a huge name is cut."""
    hostile = '<a href="x">&amp;</a> \'q\' ]]> \x00\x1b[31m \ud800 \n second line'
    batch = ci("failed", result("h", "failed", test_name=hostile, location=hostile,
                                device="d" * 100_000),
               reason=hostile)
    text = reports.junit_xml(report(batch))
    root = ET.fromstring(text)
    [case] = root.iter("testcase")
    cleaned = hostile.replace("\x00", "\ufffd").replace("\x1b", "\ufffd").replace(
        "\ud800", "\ufffd")
    assert case.get("classname") == cleaned
    assert len(case.get("name", "")) <= reports.MAX_ATTRIBUTE_CHARS
    assert case.get("name", "").endswith("…")
    [failure] = root.iter("failure")
    assert cleaned in (failure.text or "")
    assert "\x00" not in text and "\x1b" not in text
    assert '<a href="x">' not in text  # escaped, not markup


@settings(max_examples=200, deadline=None)
@given(st.text(), st.text(), st.text())
def test_any_upstream_text_gives_parseable_junit(name: str, location: str, reason: str
                                                 ) -> None:
    """Whatever text an upstream sends, the JUnit XML parses and keeps it (cleaned)."""
    batch = ci("failed", result("x", "failed", test_name=name or "n", location=location),
               reason=reason)
    root = ET.fromstring(reports.junit_xml(report(batch)))
    [case] = root.iter("testcase")
    assert case.get("classname") == reports.clean(name or "n")


# --------------------------------------------------------------------------- JSON


def test_json_summary_keeps_every_batch_and_hostile_text_exactly() -> None:
    """Outcome, exit code, per batch the state, verdict, reason, failure, link, results;
    upstream text survives byte for byte (JSON escapes it)."""
    hostile = 'a"b\\c</script>\u2028\x01'
    nb = result("nb", "failed", execution_rule="non_blocking", test_name=hostile)
    doc = json.loads(reports.json_summary(report(
        ci("failed", nb, reason="blocking_results_failed"),
        engine("cancelled", reason="deleted", failure={"failed_jobs": 1}),
        ci("in_progress", batch_id="b-2"), timed_out=True)))
    assert (doc["outcome"], doc["exit_code"], doc["timed_out"]) == ("failed", 1, True)
    assert doc["started_at"] == "2025-10-09T08:53:20Z" and doc["elapsed_seconds"] == 12.5
    first, eng, pending = doc["batches"]
    assert (first["state"], first["shown_state"], first["verdict"]) == (
        "failed", "passed", "passed")
    assert first["non_blocking_failures"] == 1 and first["reason"] == "blocking_results_failed"
    assert first["results"][0]["test_name"] == hostile
    assert (eng["verdict"], eng["reason"], eng["failure"]) == (
        "failed", "deleted", {"failed_jobs": 1})
    assert pending["verdict"] == "pending" and pending["link"].endswith("b-2")


# --------------------------------------------------------------------------- Markdown


def test_markdown_escapes_and_links_safely() -> None:
    """Table cells cannot be broken out of (pipes, newlines), HTML is inert, only http(s)
    links become links and their parentheses are encoded."""
    bad = result("bad", "failed", test_name="<img src=x onerror=alert(1)>|x\n| y",
                 link="javascript:alert(1)")
    odd = result("odd", "failed", link="https://app.example/a (b) [c]")
    text = reports.markdown_summary(report(ci("failed", bad, odd)))
    assert "<img" not in text and "&lt;img src=x onerror=alert\\(1\\)" not in text
    assert "&lt;img src=x onerror=alert(1)&gt;\\|x \\| y" in text
    assert "javascript:" not in text
    assert "[open](https://app.example/a%20%28b%29%20%5Bc%5D)" in text
    for line in text.splitlines():
        if line.startswith("| `b-1` |"):
            assert line.count("|") - line.count("\\|") == 7


def test_markdown_lists_failures_with_links_and_caps_them() -> None:
    """Batches table first, then failing results (blocking) and non-blocking ones apart;
    at most MAX_MARKDOWN_ROWS per batch, the rest counted."""
    many = [result(f"t{i}", "failed") for i in range(reports.MAX_MARKDOWN_ROWS + 7)]
    nb = result("nb", "failed", execution_rule="non_blocking")
    text = reports.markdown_summary(report(ci("failed", *many, nb), engine("passed")))
    assert text.startswith("### ❌ batchscope wait: failed\n")
    assert "| [`b-1`](https://app.example/synthetics/explorer/ci?batchResultId=b-1) |" in text
    assert "| `e-1` | engine prod | passed | ✅ passed | 4/10 jobs, 0 failed |" in text
    blocking = text.split("#### Failing results")[1].split("####")[0]
    assert blocking.count("[open](") == reports.MAX_MARKDOWN_ROWS
    assert "… and 7 more" in blocking
    assert "Test nb" in text.split("#### Non-blocking failures")[1]


def test_markdown_and_junit_for_idle() -> None:
    """--idle: a sentence (idle, or how many are left) and the sampled batches; JUnit one
    case that errors on a timeout."""
    left = IdleCheck("prod", ("instance-migration",), idle=False, remaining=3)
    running = engine("in_progress")
    text = reports.markdown_summary(report(running, idle=left, timed_out=True))
    assert "not idle after 600 s: 3 runtime batches left" in text and "`e-1`" in text
    root = ET.fromstring(reports.junit_xml(report(running, idle=left, timed_out=True)))
    [case] = root.iter("testcase")
    assert case.get("name") == "no runtime batch (instance-migration)"
    error = case.find("error")
    assert error is not None and "e-1: in_progress instance-migration" in (error.text or "")
    done = ET.fromstring(reports.junit_xml(report(idle=replace(left, idle=True, remaining=0))))
    assert done.get("tests") == "1" and done.get("errors") == "0"
