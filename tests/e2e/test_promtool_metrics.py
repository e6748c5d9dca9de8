"""``/metrics`` of a daemon holding batches in every state, linted by the real ``promtool``.

promtool (2.42, Debian bookworm's) lints only the Prometheus *text* format: ``promtool check
metrics`` reads stdin with the text parser whatever it is. Fed OpenMetrics, it reports
"<family>_total no help text" / "<family>_created no help text" for every counter and
``_created`` sample, because OpenMetrics names a counter family without the ``_total`` suffix
(``# TYPE batchscope_polls counter`` + ``batchscope_polls_total``), which the text format does not
allow. Those reports are about the format, not about our exposition. So the OpenMetrics test
asserts that promtool reports *nothing else*, and validates the OpenMetrics grammar with
prometheus_client's strict OpenMetrics parser instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from batchscope.model import Source, State
from e2e_support import require_tool, run_tool
from harness import Stack
from helpers import wait_until

pytestmark = pytest.mark.slow

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
# A batch type that needs every label-value escape: quote, backslash, newline.
AWKWARD_TYPE = 'custom "quoted" \\ type\nsecond line'


async def stack_in_every_state(stack_factory: Callable[..., Any]) -> Stack:
    """Engine target "prod" (stall_after 0.5 s) and "steady" (default) on the same engine, and
    Datadog target "ci"; between them every state of SPEC.md is held by some batch."""
    stack: Stack = await stack_factory(engines=[
        {"name": "prod", "stall_after": 0.5}, {"name": "steady"},
    ])
    eng, dd = stack.engine, stack.datadog
    running = eng.create_batch("instance-migration", total_jobs=10)  # stalled / in_progress
    failing = eng.create_batch(AWKWARD_TYPE, total_jobs=10)
    suspended = eng.create_batch("instance-modification", total_jobs=10)
    ending = {kind: eng.create_batch("instance-deletion", total_jobs=5)
              for kind in ("passed", "cancelled", "vanished")}
    ci = {kind: dd.create_batch() for kind in ("in_progress", "passed", "failed", "skipped")}
    for batch_id in [*ci.values(), "never-existed"]:
        await stack.watch(batch_id)

    tracker = stack.daemon.tracker

    def seen(*ids: str) -> bool:
        return all(tracker.get(Source.ENGINE, "prod", b) for b in ids)

    await wait_until(lambda: seen(running, failing, suspended, *ending.values()),
                     what="first sighting")
    eng.complete_jobs(running, 2)
    eng.fail_jobs(failing, 1)
    eng.suspend(suspended)
    eng.finish(ending["passed"])
    eng.delete(ending["cancelled"])
    eng.delete(ending["vanished"], cascade=True)
    dd.set_result(ci["passed"], "abc-def-ghi", new_attempt=True)
    dd.finish(ci["passed"], "passed")
    dd.finish(ci["failed"], "failed")
    dd.finish(ci["skipped"], "skipped")

    def states() -> set[State]:
        return {state for (_, _, state), n in tracker.counts.items() if n > 0}

    every = set(State) - {State.NONE}
    await wait_until(lambda: states() >= every, timeout=20,
                     what=f"every state held (missing: {every - states()})")
    assert tracker.get(Source.ENGINE, "steady", running).state is State.IN_PROGRESS
    return stack


async def scrape(stack: Stack, accept: str | None = None) -> tuple[str, bytes]:
    headers = {"Accept": accept} if accept else {}
    async with stack.http.get(stack.base + "/metrics", headers=headers) as resp:
        assert resp.status == 200
        return resp.headers["Content-Type"], await resp.read()


async def test_text_exposition_passes_promtool(
    logs: Any, stack_factory: Callable[..., Any],
) -> None:
    """The text-format scrape of a daemon with batches in every state (and a label value that
    needs quote, backslash and newline escapes) passes ``promtool check metrics`` with exit
    code 0 and no output; it is served as ``text/plain; version=0.0.4``; every family is
    ``batchscope_*`` (or the client's ``process_*``/``python_*``); no counter or histogram
    carries ``batch_id``; ``batchscope_batches`` shows every state."""
    promtool = require_tool("promtool")
    stack = await stack_in_every_state(stack_factory)
    content_type, body = await scrape(stack)
    assert content_type.startswith("text/plain; version=0.0.4")

    code, output = await run_tool(promtool, "check", "metrics", stdin=body)
    assert (code, output) == (0, ""), output

    families = list(parse_text(body.decode()))
    names = {f.name for f in families}
    assert all(re.match(r"(batchscope|process|python)_", n) for n in names), names
    for family in families:
        if family.type in ("counter", "histogram"):
            assert all("batch_id" not in s.labels for s in family.samples), family.name
    counts = {s.labels["state"]: s.value for f in families if f.name == "batchscope_batches"
              for s in f.samples if s.value > 0}
    assert set(counts) == {s.value for s in State} - {"none"}
    awkward = [s for f in families if f.name == "batchscope_batch_state" for s in f.samples
               if s.labels["batch_type"] == AWKWARD_TYPE]
    assert [s.labels["state"] for s in awkward] == ["failed", "failed"]  # prod and steady


async def test_openmetrics_exposition(logs: Any, stack_factory: Callable[..., Any]) -> None:
    """Asked for OpenMetrics, /metrics answers ``application/openmetrics-text; version=1.0.0``
    ending with ``# EOF``, which prometheus_client's strict OpenMetrics parser accepts with the
    same series as the text format; promtool 2.42 (text parser only) reports nothing but the
    known counter-suffix mismatch described in the module docstring."""
    promtool = require_tool("promtool")
    stack = await stack_in_every_state(stack_factory)
    content_type, body = await scrape(stack, OPENMETRICS)
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith(b"# EOF\n")
    assert body.count(b"# EOF") == 1

    text = body.decode()
    families = list(parse_openmetrics(text))  # raises on any grammar error
    _, text_body = await scrape(stack)
    text_families = list(parse_text(text_body.decode()))
    om_series = {(s.name, frozenset(s.labels.items())) for f in families for s in f.samples}
    text_series = {(s.name, frozenset(s.labels.items())) for f in text_families
                   for s in f.samples}
    assert om_series == text_series

    code, output = await run_tool(promtool, "check", "metrics", stdin=body)
    declared = set(re.findall(r"^# TYPE (\S+) (?:counter|histogram|summary|gaugehistogram)",
                              text, re.M))
    expected = {f"{family}{suffix}" for family in declared for suffix in ("_total", "_created")}
    problems = [line for line in output.splitlines() if line.strip()]
    unexpected = [
        line for line in problems
        if not (line.endswith(" no help text") and line.split()[0] in expected)
    ]
    assert unexpected == [], output
    assert code == (3 if problems else 0), output
