"""What ``batchscope wait`` hands to CI systems: the gate's verdict, JUnit XML, a JSON
summary and a Markdown step summary.

Pure functions from the final records (:class:`WaitedBatch`, built from the core's records
by ``oneshot.py``) to text: no I/O, no clock (times are passed in), so every report can be
checked byte by byte. Everything upstream-controlled (test names, locations, devices,
failure messages, links) is treated as hostile: escaped for XML and Markdown, stripped of
characters XML 1.0 cannot carry, and cut to a bounded size.

The gate (:func:`verdict`): a batch passes when it ends ``passed`` or ``skipped``; it fails
when it ends ``failed``, ``cancelled`` or ``vanished``, except a Datadog batch whose only
failing results have the execution rule ``non_blocking``, which passes (as datadog-ci
decides: non-blocking failures never fail the job). A batch not yet terminal is pending.

A wait ends when every batch is terminal, at its timeout, or when a signal (SIGINT,
SIGTERM: a CI job cancelled or out of time) interrupts it; each report says which, and
what was known of every batch then.
"""

from __future__ import annotations

import math
import re
import signal
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal
from urllib.parse import quote

import orjson

Verdict = Literal["passed", "failed", "pending"]
Outcome = Literal["passed", "failed", "timed_out", "interrupted"]

#: The state shown for a batch never seen before the timeout.
UNKNOWN: Final = "unknown"
#: Result states that are not failures.
_FINE_RESULT_STATES: Final = frozenset({"passed", "skipped"})
_PASSING_STATES: Final = frozenset({"passed", "skipped"})
NON_BLOCKING: Final = "non_blocking"

#: Upstream text is cut to these sizes in the reports (a hostile upstream could send
#: megabytes in a test name; a CI report must stay readable and small).
MAX_ATTRIBUTE_CHARS: Final = 1_000
MAX_TEXT_CHARS: Final = 8_000
#: Failing results listed per batch in the Markdown summary (GitHub caps a step summary
#: at 1 MiB); the JUnit XML and the JSON summary list them all.
MAX_MARKDOWN_ROWS: Final = 50

SUMMARY_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class WaitedBatch:
    """One batch ``wait`` was asked about, as known at the end.

    ``state`` is the tracker's state (``unknown`` when the batch was never seen);
    ``results`` are the detail view's CI results (``http/views.batch_detail``).
    ``started_at`` (epoch seconds) is the engine's start time, else the first sighting.
    """

    source: str
    target: str
    batch_id: str
    state: str
    terminal: bool
    batch_type: str | None = None
    reason: str | None = None
    failure: Mapping[str, Any] | None = None
    link: str | None = None
    counts: Mapping[str, Any] = field(default_factory=dict)
    results: tuple[Mapping[str, Any], ...] = ()
    started_at: float | None = None
    duration_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class IdleCheck:
    """``wait --source engine --idle``: whether the engine had no runtime batch (of
    ``types``) at the end; ``remaining`` counts them (None: the engine never answered),
    ``WaitReport.batches`` samples them."""

    target: str
    types: tuple[str, ...]
    idle: bool
    remaining: int | None


@dataclass(frozen=True, slots=True)
class WaitReport:
    """The end of one ``wait``: the batches, whether it timed out or was interrupted (by
    the signal named in ``interrupted``: ``SIGINT``, ``SIGTERM``), and when."""

    batches: tuple[WaitedBatch, ...]
    timed_out: bool
    started_at: float
    finished_at: float
    timeout_seconds: float
    idle: IdleCheck | None = None
    interrupted: str | None = None

    @property
    def elapsed(self) -> float:
        return self.finished_at - self.started_at


# --------------------------------------------------------------------------- the gate


def failing_results(batch: WaitedBatch) -> list[Mapping[str, Any]]:
    """Results of an ended batch that did not pass: failed, or never finished."""
    if not batch.terminal:
        return []
    return [r for r in batch.results if r.get("state") not in _FINE_RESULT_STATES]


def is_non_blocking(result: Mapping[str, Any]) -> bool:
    return result.get("execution_rule") == NON_BLOCKING


def blocking_failures(batch: WaitedBatch) -> list[Mapping[str, Any]]:
    return [r for r in failing_results(batch) if not is_non_blocking(r)]


def non_blocking_failures(batch: WaitedBatch) -> list[Mapping[str, Any]]:
    return [r for r in failing_results(batch) if is_non_blocking(r)]


def verdict(batch: WaitedBatch) -> Verdict:
    """The gate's view of one batch (see the module docstring)."""
    if not batch.terminal:
        return "pending"
    if batch.state in _PASSING_STATES:
        return "passed"
    if (batch.source == "datadog" and batch.state == "failed"
            and non_blocking_failures(batch) and not blocking_failures(batch)):
        return "passed"
    return "failed"


def shown_state(batch: WaitedBatch) -> str:
    """The state printed for a batch: its own, except ``passed`` for a Datadog batch that
    failed on non-blocking results only (it passes the gate and is reported so)."""
    if batch.state == "failed" and verdict(batch) == "passed":
        return "passed"
    return batch.state


def outcome(report: WaitReport) -> Outcome:
    """A failure is definite even while another batch is still running: it wins over a
    timeout and over an interruption (the gate has failed whatever the rest does). An
    interrupted wait whose batches did not all pass (``--idle``: the engine was not idle)
    is ``interrupted``."""
    if report.idle is not None:
        if report.idle.idle:
            return "passed"
        return "interrupted" if report.interrupted else "timed_out"
    verdicts = [verdict(b) for b in report.batches]
    if "failed" in verdicts:
        return "failed"
    if report.interrupted and "pending" in verdicts:
        return "interrupted"
    if report.timed_out or "pending" in verdicts:
        return "timed_out"
    return "passed"


EXIT_CODES: Final = {"passed": 0, "failed": 1, "timed_out": 3}


def signal_exit_code(name: str | None) -> int:
    """The shell's code for a process ended by the signal ``name``: 128 + its number
    (130 SIGINT, 143 SIGTERM); 130 for a name that is no signal."""
    try:
        return 128 + signal.Signals[name or ""].value
    except KeyError:
        return 128 + signal.SIGINT.value


def exit_code(report: WaitReport) -> int:
    """0 passed, 1 a batch failed (non-blocking results aside), 3 timed out, 128 + the
    signal's number when interrupted (130 SIGINT, 143 SIGTERM)."""
    result = outcome(report)
    if result == "interrupted":
        return signal_exit_code(report.interrupted)
    return EXIT_CODES[result]


# --------------------------------------------------------------------------- hostile text

# Characters XML 1.0 cannot carry at all (not even escaped): most C0 controls, lone
# surrogates, U+FFFE and U+FFFF.
_XML_INVALID = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def clean(value: object, limit: int = MAX_ATTRIBUTE_CHARS) -> str:
    """Upstream text fit for any report: a string, XML-safe characters, at most ``limit``."""
    text = _XML_INVALID.sub("\ufffd", value if isinstance(value, str) else str(value))
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def seconds(value: object) -> str | None:
    """A JUnit ``time`` (seconds, 3 decimals) from a number; None when not a sane one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return f"{value:.3f}"


def result_seconds(result: Mapping[str, Any]) -> str | None:
    """A result's ``duration_ms`` as JUnit seconds."""
    ms = result.get("duration_ms")
    if isinstance(ms, bool) or not isinstance(ms, int | float) or not math.isfinite(ms):
        return None
    return seconds(ms / 1000.0)


def _iso(epoch: float | None) -> str | None:
    if epoch is None or not math.isfinite(epoch):
        return None
    try:
        return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return None


def _text(value: object) -> str:
    """A value as report text: JSON's spelling for booleans."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _where(result: Mapping[str, Any]) -> str:
    parts = [str(result[k]) for k in ("location", "device") if result.get(k)]
    return ", ".join(parts)


def result_label(result: Mapping[str, Any]) -> str:
    """``Checkout flow [aws:eu-central-1, chrome.laptop_large]``."""
    name = result.get("test_name") or result.get("test_public_id") or "?"
    where = _where(result)
    return f"{name} [{where}]" if where else str(name)


def _first_message(failure: Mapping[str, Any] | None) -> str | None:
    if not failure:
        return None
    messages = failure.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[0], Mapping):
        message = messages[0].get("message")
        return None if message is None else str(message)
    return None


# --------------------------------------------------------------------------- JUnit XML


def junit_xml(report: WaitReport) -> str:
    """JUnit XML as GitLab, Jenkins, Azure DevOps and GitHub's test reporters read it.

    One ``testsuite`` per batch. A Datadog batch has one ``testcase`` per CI result
    (``classname`` the test's name or id, ``name`` with location and device, ``time`` in
    seconds): a blocking failure is a ``failure`` (type ``failed`` or ``timed_out``) whose
    message and text carry location, device, reason and link; a ``non_blocking`` failure is
    ``skipped`` with a message starting ``non_blocking failure`` (counted and shown by every
    reporter, failing none); a result still running at the timeout is an ``error`` of type
    ``wait_timeout`` (``wait_interrupted`` when a signal stopped the wait). An engine batch
    is one ``testcase`` (``classname`` ``engine.<type>``).
    A failed or pending batch none of whose test cases says so gets a test case of its own,
    so that no report shows a failed gate as green.
    """
    root = ET.Element("testsuites", {"name": "batchscope wait"})
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    total_time = 0.0
    suites = ([_idle_suite(report, report.idle)] if report.idle is not None
              else [_batch_suite(report, b) for b in report.batches])
    for suite in suites:
        root.append(suite)
        for key in totals:
            totals[key] += int(suite.get(key, "0"))
        total_time += float(suite.get("time", "0"))
    for key, value in totals.items():
        root.set(key, str(value))
    root.set("time", f"{total_time:.3f}")
    ET.indent(root)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            + ET.tostring(root, encoding="unicode") + "\n")


def _suite(name: str, started_at: float | None) -> ET.Element:
    suite = ET.Element("testsuite", {"name": clean(name)})
    stamp = _iso(started_at)
    if stamp is not None:
        suite.set("timestamp", stamp)
    return suite


def _properties(suite: ET.Element, values: Iterable[tuple[str, object]]) -> None:
    props = ET.SubElement(suite, "properties")
    for name, value in values:
        if value is not None and value != "":
            ET.SubElement(props, "property", {"name": name, "value": clean(value)})


def _close_suite(suite: ET.Element, cases: Sequence[ET.Element], time: float) -> None:
    counts = {"tests": len(cases), "failures": 0, "errors": 0, "skipped": 0}
    for case in cases:
        for tag, key in (("failure", "failures"), ("error", "errors"), ("skipped", "skipped")):
            if case.find(tag) is not None:
                counts[key] += 1
    for key, value in counts.items():
        suite.set(key, str(value))
    suite.set("time", f"{time:.3f}")
    suite.extend(cases)


def _case(classname: str, name: str, time: str | None) -> ET.Element:
    case = ET.Element("testcase", {"classname": clean(classname), "name": clean(name)})
    if time is not None:
        case.set("time", time)
    return case


def _outcome_element(case: ET.Element, tag: str, *, message: str, type_: str,
                     lines: Iterable[tuple[str, object]]) -> None:
    element = ET.SubElement(case, tag, {"message": clean(message), "type": clean(type_)})
    body = "\n".join(f"{label}: {_text(value)}" for label, value in lines
                     if value is not None and value != "")
    if body:
        element.text = clean(body, MAX_TEXT_CHARS)


def _batch_suite(report: WaitReport, batch: WaitedBatch) -> ET.Element:
    suite = _suite(f"{batch.source}/{batch.target}/{batch.batch_id}", batch.started_at)
    _properties(suite, [
        ("source", batch.source), ("target", batch.target), ("batch_id", batch.batch_id),
        ("batch_type", batch.batch_type), ("state", batch.state),
        ("verdict", verdict(batch)), ("reason", batch.reason), ("link", batch.link),
    ])
    if batch.source == "engine":
        case = _engine_case(report, batch)
        duration = batch.duration_seconds
        _close_suite(suite, [case], duration if duration is not None
                     and seconds(duration) is not None else 0.0)
        return suite
    cases = [_result_case(report, batch, r) for r in batch.results]
    _unique_names(cases)
    said = any(c.find("failure") is not None or c.find("error") is not None for c in cases)
    if not said and verdict(batch) != "passed":
        cases.append(_batch_case(report, batch))
    time = sum(float(c.get("time", "0")) for c in cases)
    _close_suite(suite, cases, time)
    return suite


def _unique_names(cases: Sequence[ET.Element]) -> None:
    """Reporters (GitLab among them) show one case per classname and name: a second
    result of the same test, location and device gets ``#2``, and so on."""
    seen: dict[tuple[str | None, str | None], int] = {}
    for case in cases:
        key = (case.get("classname"), case.get("name"))
        seen[key] = seen.get(key, 0) + 1
        if seen[key] > 1:
            case.set("name", f"{case.get('name')} #{seen[key]}")


def _unfinished_type(report: WaitReport) -> str:
    """The ``error`` type of what had not finished when the wait ended."""
    return "wait_timeout" if report.interrupted is None else "wait_interrupted"


def _unfinished_message(report: WaitReport, what: str) -> str:
    if report.interrupted is not None:
        return (f"{what} when batchscope wait was interrupted by {report.interrupted} "
                f"after {report.elapsed:.1f} s")
    return (f"{what} when batchscope wait timed out after "
            f"{report.timeout_seconds:g} s")


def _result_case(report: WaitReport, batch: WaitedBatch,
                 result: Mapping[str, Any]) -> ET.Element:
    name = result.get("test_name") or result.get("test_public_id") or "?"
    case = _case(str(name), result_label(result), result_seconds(result))
    state = str(result.get("state"))
    details = [
        ("test", result.get("test_name")), ("test_public_id", result.get("test_public_id")),
        ("location", result.get("location")), ("device", result.get("device")),
        ("execution_rule", result.get("execution_rule")), ("state", state),
        ("timed_out", result.get("timed_out")), ("retries", result.get("retries")),
        ("result_id", result.get("result_id")), ("reason", batch.reason),
        ("link", result.get("link")), ("batch", batch.link or batch.batch_id),
    ]
    where = _where(result) or "no location"
    if state in _FINE_RESULT_STATES:
        if state == "skipped":
            rule = result.get("execution_rule")
            ET.SubElement(case, "skipped", {"message": clean(
                "skipped by its execution rule" if rule == "skipped" else "skipped")})
        return case
    if not batch.terminal:
        _outcome_element(case, "error", type_=_unfinished_type(report), lines=details,
                         message=_unfinished_message(report, f"still {state} at {where}"))
        return case
    timed_out = result.get("timed_out") is True
    what = "timed out" if timed_out else ("failed" if state == "failed"
                                          else f"did not finish ({state})")
    message = f"{what} at {where} (batch {batch.state}"
    message += f": {batch.reason})" if batch.reason else ")"
    if result.get("link"):
        message += f" {result['link']}"
    if is_non_blocking(result):
        _outcome_element(case, "skipped", type_=NON_BLOCKING, lines=details,
                         message=f"non_blocking failure: {message}")
    else:
        _outcome_element(case, "failure", type_="timed_out" if timed_out else "failed",
                         lines=details, message=message)
    return case


def _batch_case(report: WaitReport, batch: WaitedBatch) -> ET.Element:
    """The batch itself as a test case: for a batch whose results do not tell its end."""
    case = _case(f"{batch.source}.batch", batch.batch_id, seconds(batch.duration_seconds))
    _fail_or_error(report, batch, case)
    return case


def _engine_case(report: WaitReport, batch: WaitedBatch) -> ET.Element:
    case = _case(f"engine.{batch.batch_type or 'batch'}", batch.batch_id,
                 seconds(batch.duration_seconds))
    if verdict(batch) != "passed":
        _fail_or_error(report, batch, case)
    return case


def _fail_or_error(report: WaitReport, batch: WaitedBatch, case: ET.Element) -> None:
    first = _first_message(batch.failure)
    failed_jobs = batch.failure.get("failed_jobs") if batch.failure else None
    lines: list[tuple[str, object]] = [
        ("batch", batch.batch_id), ("source", batch.source), ("target", batch.target),
        ("type", batch.batch_type), ("state", batch.state), ("reason", batch.reason),
        ("link", batch.link), ("failed_jobs", failed_jobs),
        *((k, v) for k, v in batch.counts.items()),
    ]
    messages = batch.failure.get("messages") if batch.failure else None
    if isinstance(messages, list):
        for m in messages:
            if isinstance(m, Mapping):
                lines.append(("message", f"{m.get('count', '?')}x {m.get('message')}"))
    if not batch.terminal:
        what = ("not seen" if batch.state == UNKNOWN else f"still {batch.state}")
        if batch.reason:
            what += f" ({batch.reason})"
        _outcome_element(case, "error", type_=_unfinished_type(report), lines=lines,
                         message=_unfinished_message(report, what))
        return
    message = f"batch {batch.state}"
    if batch.reason:
        message += f": {batch.reason}"
    if first:
        message += f": {first}"
    if batch.link:
        message += f" {batch.link}"
    _outcome_element(case, "failure", type_=batch.reason or batch.state, lines=lines,
                     message=message)


def left_text(idle: IdleCheck) -> str:
    if idle.remaining is None:
        return "the engine never answered"
    return f"{idle.remaining} runtime batches left"


def _idle_suite(report: WaitReport, idle: IdleCheck) -> ET.Element:
    suite = _suite(f"engine/{idle.target}/idle", report.started_at)
    kinds = ", ".join(idle.types) if idle.types else "any type"
    _properties(suite, [("target", idle.target), ("types", ", ".join(idle.types)),
                        ("remaining", idle.remaining)])
    case = _case("engine.idle", f"no runtime batch ({kinds})", seconds(report.elapsed))
    if not idle.idle:
        lines = [(b.batch_id, f"{b.state} {b.batch_type or ''}".strip())
                 for b in report.batches]
        _outcome_element(case, "error", type_=_unfinished_type(report), lines=lines,
                         message=_unfinished_message(report, left_text(idle)))
    _close_suite(suite, [case], float(case.get("time", "0")))
    return suite


# --------------------------------------------------------------------------- JSON summary


def batch_summary(batch: WaitedBatch) -> dict[str, Any]:
    """One batch in the JSON summary."""
    return {
        "source": batch.source, "target": batch.target, "batch_id": batch.batch_id,
        "batch_type": batch.batch_type, "state": batch.state,
        "shown_state": shown_state(batch), "verdict": verdict(batch),
        "non_blocking_failures": len(non_blocking_failures(batch)),
        "reason": batch.reason, "failure": batch.failure, "link": batch.link,
        "counts": dict(batch.counts), "started_at": _iso_z(batch.started_at),
        "duration_seconds": batch.duration_seconds,
        "results": [dict(r) for r in batch.results],
    }


def _iso_z(epoch: float | None) -> str | None:
    stamp = _iso(epoch)
    return None if stamp is None else stamp + "Z"


def json_summary(report: WaitReport) -> str:
    """The ``--json`` file: the outcome and exit code, whether it timed out or was
    ``interrupted`` (the signal's name, else null), then each batch's final state,
    ``verdict``, ``reason``, ``failure``, ``link`` and results (``state`` is the tracker's;
    ``shown_state`` is what stdout printed)."""
    doc: dict[str, Any] = {
        "version": SUMMARY_VERSION,
        "outcome": outcome(report),
        "exit_code": exit_code(report),
        "timed_out": report.timed_out,
        "interrupted": report.interrupted,
        "timeout_seconds": report.timeout_seconds,
        "started_at": _iso_z(report.started_at),
        "finished_at": _iso_z(report.finished_at),
        "elapsed_seconds": round(report.elapsed, 3),
    }
    if report.idle is not None:
        doc["idle"] = {"target": report.idle.target, "types": list(report.idle.types),
                       "idle": report.idle.idle, "remaining": report.idle.remaining}
    doc["batches"] = [batch_summary(b) for b in report.batches]
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2, default=str).decode() + "\n"


# --------------------------------------------------------------------------- Markdown

# Inside a table cell no line starts with the text, so only inline syntax needs escaping.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")
_CODE_SAFE = re.compile(r"[A-Za-z0-9._:/@+=-]{1,200}")
_ICONS: Final = {"passed": "✅", "failed": "❌", "pending": "⏳", "timed_out": "⏳",
                 "interrupted": "🛑"}


def md(value: object, limit: int = 200) -> str:
    """Upstream text for a Markdown table cell: HTML and Markdown both inert, one line."""
    text = clean(value, limit)
    text = " ".join(text.split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", text)


def code(value: object) -> str:
    """An identifier as a code span when it is plain (ids, names), else escaped text."""
    text = value if isinstance(value, str) else str(value)
    return f"`{text}`" if _CODE_SAFE.fullmatch(text) else md(text)


def md_link(label: str, url: object) -> str:
    """``[label](url)`` for an http(s) URL (percent-encoded so it cannot end the link);
    the bare label for anything else."""
    if not isinstance(url, str) or not re.match(r"https?://", url, re.IGNORECASE):
        return label
    safe = quote(clean(url, 2_000), safe=":/?#@!$&'*+,;=%~._-")
    return f"[{label}]({safe})"


def _results_text(batch: WaitedBatch) -> str:
    if not batch.results:
        counts = batch.counts
        if "total_jobs" in counts:
            return (f"{counts.get('completed_jobs', 0)}/{counts.get('total_jobs', 0)} jobs, "
                    f"{counts.get('failed_jobs', 0)} failed")
        return ""
    by_state: dict[str, int] = {}
    for r in batch.results:
        by_state[str(r.get("state"))] = by_state.get(str(r.get("state")), 0) + 1
    text = ", ".join(f"{n} {state}" for state, n in sorted(by_state.items()))
    nb = len(non_blocking_failures(batch))
    if nb:
        text += f" ({nb} non\\_blocking)"
    return text


def markdown_summary(report: WaitReport) -> str:
    """The ``$GITHUB_STEP_SUMMARY`` section: a table of the batches, then the failing
    results (blocking, then non-blocking) with links, at most :data:`MAX_MARKDOWN_ROWS`
    per batch."""
    result = outcome(report)
    title = (f"interrupted ({md(report.interrupted)})" if result == "interrupted" else
             {"passed": "passed", "failed": "failed", "timed_out": "timed out"}[result])
    lines = [f"### {_ICONS[result]} batchscope wait: {title}", ""]
    if report.idle is not None:
        idle = report.idle
        kinds = ", ".join(code(t) for t in idle.types) if idle.types else "any type"
        when = (f"after {report.timeout_seconds:g} s" if report.interrupted is None else
                f"when interrupted by {md(report.interrupted)} after {report.elapsed:.1f} s")
        lines.append(f"Engine {code(idle.target)}, batches of {kinds}: "
                     + ("idle." if idle.idle else f"not idle {when}: {left_text(idle)}."))
        lines.append("")
    if report.batches:
        lines += ["| Batch | Source | State | Gate | Results | Reason |",
                  "|---|---|---|---|---|---|"]
        for b in report.batches:
            label = md_link(code(b.batch_id), b.link)
            v = verdict(b)
            lines.append(f"| {label} | {md(b.source)} {md(b.target)} | {md(shown_state(b))} "
                         f"| {_ICONS[v]} {v} | {_results_text(b)} | {md(b.reason or '')} |")
        lines.append("")
    for heading, pick in (("Failing results", blocking_failures),
                          ("Non-blocking failures (reported, not failing the gate)",
                           non_blocking_failures)):
        rows = [(b, r) for b in report.batches for r in pick(b)]
        if not rows:
            continue
        lines += [f"#### {heading}", "",
                  "| Batch | Test | Location | Device | State | Result |",
                  "|---|---|---|---|---|---|"]
        shown: dict[str, int] = {}
        for b, r in rows:
            shown[b.batch_id] = shown.get(b.batch_id, 0) + 1
            if shown[b.batch_id] > MAX_MARKDOWN_ROWS:
                continue
            state = "timed out" if r.get("timed_out") is True else str(r.get("state"))
            test = md(r.get("test_name") or r.get("test_public_id") or "?")
            lines.append(f"| {code(b.batch_id)} | {test} | {md(r.get('location') or '')} "
                         f"| {md(r.get('device') or '')} | {md(state)} "
                         f"| {md_link('open', r.get('link'))} |")
        for batch_id, n in shown.items():
            if n > MAX_MARKDOWN_ROWS:
                lines.append(f"| {code(batch_id)} | … and {n - MAX_MARKDOWN_ROWS} more "
                             "| | | | |")
        lines.append("")
    engine_failures = [b for b in report.batches
                       if b.source == "engine" and _first_message(b.failure)]
    for b in engine_failures:
        lines.append(f"- {code(b.batch_id)}: {md(_first_message(b.failure), 500)}")
    if engine_failures:
        lines.append("")
    return "\n".join(lines) + "\n"
