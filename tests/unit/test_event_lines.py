"""The batched JSON event lines (issue 12) write what the structlog chain writes.

With JSON logging and no context variables bound, ``EventLog.events`` renders the lines
itself, 128 per write. These tests compare it line by line with the structlog chain (the
path taken while a context variable is bound), and check the level filter, the chunking
and the secret redaction of the batched path on their own.
"""

from __future__ import annotations

import dataclasses
import io
import json
from typing import Any

import pytest
import structlog

from batchscope import redaction
from batchscope.model import (
    NO_DIAGNOSIS,
    BatchTransition,
    CiMetadata,
    CiResult,
    Diagnosis,
    Event,
    JobCounts,
    Reason,
    ResultCounts,
    ResultState,
    ResultTransition,
    Source,
    State,
)
from batchscope.redaction import REDACTED, SecretRegistry
from batchscope.sinks.logs import EventLog, configure_logging

KEY = "0123456789abcdef0123456789ABCDEF"
QUOTED = 'pa"ss\\wörd 1'  # JSON-escaped, it reads pa\"ss\\wörd 1
NEWLINE = "multi\nline-secret-7"  # JSON-escaped, it reads multi\nline-secret-7
PROBE = "probe_ctx"  # the context variable that sends EventLog down the structlog chain


class CountingStream(io.StringIO):
    """A StringIO that records how many lines each write call held: the structlog chain
    writes once per line, the batched path once per chunk of 128 lines."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[int] = []

    def write(self, s: str) -> int:
        self.chunks.append(s.count("\n"))
        return super().write(s)


def parsed(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def engine(seq: int, to_state: State, diagnosis: Diagnosis = NO_DIAGNOSIS, *,
           batch_id: str = "4f1c-9a2b", duration: float | None = None) -> BatchTransition:
    return BatchTransition(
        seq=seq, time=1_700_000_000.0 + seq, source=Source.ENGINE, target="prod",
        batch_id=batch_id, batch_type="instance-migration",
        from_state=State.IN_PROGRESS if to_state is not State.IN_PROGRESS else State.NONE,
        to_state=to_state,
        jobs=JobCounts(total=100, created=100, completed=40, remaining=60, failed=3),
        duration_seconds=duration, diagnosis=diagnosis,
    )


def datadog(seq: int, to_state: State, diagnosis: Diagnosis = NO_DIAGNOSIS) -> BatchTransition:
    return BatchTransition(
        seq=seq, time=1_700_000_000.0 + seq, source=Source.DATADOG, target="dd-eu",
        batch_id="ci-77", batch_type="synthetics-ci",
        from_state=State.IN_PROGRESS if to_state is not State.IN_PROGRESS else State.NONE,
        to_state=to_state,
        duration_seconds=81.25 if to_state is State.PASSED else None,
        results=ResultCounts(total=4, passed=2, failed=1, in_progress=1),
        metadata=CiMetadata(pipeline_url="https://ci.example/p/1 run", git_branch="main",
                            git_commit="deadbeef", job_name="e2e"),
        diagnosis=diagnosis,
    )


def result(seq: int, to_state: ResultState) -> ResultTransition:
    return ResultTransition(
        seq=seq, time=1_700_000_000.0 + seq, target="dd-eu", batch_id="ci-77",
        result=CiResult(test_public_id="abc-def-ghi", status=to_state.value,
                        location="aws:eu-central-1", device="chrome.laptop_large",
                        test_name="Checkout works", test_type="browser",
                        execution_rule="blocking", result_id=f"r{seq}", retries=1,
                        duration_ms=1234.5),
        from_state=ResultState.IN_PROGRESS, to_state=to_state,
    )


def mixed_events(first_seq: int = 1) -> list[Event]:
    """One of each kind of line: running and ended batches of both sources, results,
    and failures whose evidence is prose holding secrets, cut secrets and credentials."""
    failed = Diagnosis(
        reason=Reason.FAILED_JOBS,
        failure={"count": 3, "messages": [
            {"job_id": "j-1", "message": "Unknown property used in expression ${x.y}; key "
                                         + KEY[:12] + "…"},
            {"job_id": "j-2", "message": f"login failed for password {QUOTED} and {NEWLINE}"},
            {"job_id": "j-3", "message": "401 from upstream: Authorization: Bearer abcd1234XYZ"},
            {"job_id": "j-4", "message": "echo of multi\nline-se"},
        ]},
        link="https://cockpit.example/batch/4f1c-9a2b",
    )
    # No blank anywhere in this line: only the escaped line break marks the value as prose.
    no_blank = Diagnosis(reason=Reason.SEED_JOB_FAILED, failure={"trace": "at\n" + KEY[:8]})
    stalled = Diagnosis(reason=Reason.RESULTS_NOT_FINISHING,
                        failure={"results": [{"result_id": "r9", "message": "still running"}]},
                        link="https://app.datadoghq.eu/synthetics/ci/ci-77")
    kinds: list[Any] = [
        lambda s: engine(s, State.IN_PROGRESS, batch_id="b-" + KEY[:6]),  # an identifier
        lambda s: engine(s, State.FAILED, failed, duration=12.5),
        lambda s: engine(s, State.STALLED, no_blank),
        lambda s: engine(s, State.PASSED, duration=3600.0),
        lambda s: datadog(s, State.IN_PROGRESS),
        lambda s: datadog(s, State.STALLED, stalled),
        lambda s: datadog(s, State.PASSED),
        lambda s: result(s, ResultState.IN_PROGRESS),
        lambda s: result(s, ResultState.FAILED),
    ]
    return [make(first_seq + i) for i, make in enumerate(kinds)]


def many_events(count: int) -> list[Event]:
    """``count`` events cycling through the mix, numbered 1..count."""
    out: list[Event] = []
    while len(out) < count:
        out.extend(mixed_events(len(out) + 1))
    return out[:count]


def batched(events: list[Event], **config: Any) -> CountingStream:
    out = CountingStream()
    configure_logging(log_format="json", stream=out, **config)
    EventLog().events(events)
    return out


def one_by_one(events: list[Event], **config: Any) -> CountingStream:
    out = CountingStream()
    configure_logging(log_format="json", stream=out, **config)
    with structlog.contextvars.bound_contextvars(**{PROBE: "slow"}):
        EventLog().events(events)
    return out


def comparable(line: dict[str, Any]) -> list[tuple[str, Any]]:
    """Keys and values in order, without the timestamp and the probe variable."""
    return [(k, v) for k, v in line.items() if k not in ("timestamp", PROBE)]


@pytest.mark.parametrize("secrets", [
    pytest.param([], id="no-secrets"),
    pytest.param([KEY, QUOTED], id="secrets-joined-chunk"),
    pytest.param([KEY, QUOTED, NEWLINE], id="secret-with-line-break"),
])
def test_batched_lines_equal_the_structlog_chain_line_by_line(secrets: list[str]) -> None:
    """For a mix of every kind of event (160 of them: two chunks, over 4 KB each), each
    batched line has the same keys in the same order and the same values as the line the
    structlog chain writes, timestamp and the bound probe variable aside; the batched path
    was really taken (one write per chunk) and the chain too (one write per line)."""
    events = many_events(160)
    fast = batched(events, secrets=secrets, level="debug")
    slow = one_by_one(events, secrets=secrets, level="debug")
    fast_lines, slow_lines = parsed(fast), parsed(slow)
    assert fast.chunks == [128, 32]
    assert slow.chunks == [1] * len(events)
    assert all(line[PROBE] == "slow" for line in slow_lines)
    assert all(PROBE not in line for line in fast_lines)
    assert len(fast_lines) == len(slow_lines) == len(events)
    for fast_line, slow_line in zip(fast_lines, slow_lines, strict=True):
        assert comparable(fast_line) == comparable(slow_line)
        assert next(iter(fast_line)) == "timestamp"
        assert str(fast_line["timestamp"]).endswith("Z")


def test_batched_lines_hide_cut_secrets_in_prose_only() -> None:
    """The value-tail rule is applied in the batched path: a failure message cut in a
    secret loses the piece (also a value whose only blank is an escaped line break), while
    a batch id ending like the secret's start is kept whole."""
    events = mixed_events()
    lines = parsed(batched(events, secrets=[KEY]))
    running, failed, no_blank = lines[0], lines[1], lines[2]
    assert running["batch_id"] == "b-" + KEY[:6]
    first = failed["failure"]["messages"][0]["message"]
    assert first == "Unknown property used in expression ${x.y}; key " + REDACTED + "…"
    assert no_blank["failure"] == {"trace": "at\n" + REDACTED}


def test_more_than_a_chunk_is_written_whole_and_in_order() -> None:
    """300 events give 300 lines, one per event, each valid JSON, in seq order, written in
    three chunks (128 + 128 + 44)."""
    events = many_events(300)
    out = batched(events, level="debug")
    raw = out.getvalue()
    assert raw.endswith("\n")
    lines = raw.split("\n")[:-1]
    assert len(lines) == 300
    records = [json.loads(line) for line in lines]
    assert [r["seq"] for r in records] == list(range(1, 301))
    assert [r["event"] for r in records] == [e.event_name for e in events]
    assert out.chunks == [128, 128, 44]


@pytest.mark.parametrize(("level", "shown"), [
    ("debug", "all"), ("info", "all"), ("warning", "bad"), ("error", "none"),
])
def test_level_filter_of_the_batched_path(level: str, shown: str) -> None:
    """level=warning writes only the bad-news lines (as warnings), error writes none,
    info and debug write every line; the chain writes the very same seqs."""
    events = many_events(20)
    expected = {
        "all": [e.seq for e in events],
        "bad": [e.seq for e in events if e.bad_news],
        "none": [],
    }[shown]
    assert 0 < len([e for e in events if e.bad_news]) < len(events)
    fast = parsed(batched(events, level=level))
    slow = parsed(one_by_one(events, level=level))
    assert [line["seq"] for line in fast] == expected
    assert [line["seq"] for line in slow] == expected
    for line, event in zip(fast, [e for e in events if e.seq in expected], strict=True):
        assert line["level"] == ("warning" if event.bad_news else "info")


def test_registered_secrets_never_appear_in_batched_lines() -> None:
    """Whole secrets, in every form they take in a JSON line (raw, with escaped quotes and
    backslashes, with an escaped line break), are replaced by the redaction mark, also
    beyond the first chunk and when registered after logging was configured."""
    later = "later-secret-42"
    events = many_events(140)
    out = io.StringIO()
    configure_logging(log_format="json", stream=out, secrets=[KEY, QUOTED])
    redaction.register([NEWLINE, later])
    tail = engine(141, State.FAILED, Diagnosis(failure={"echo": f"body token={later}"}))
    EventLog().events([*events, tail])
    raw = out.getvalue()
    escaped = [json.dumps(s, ensure_ascii=False)[1:-1] for s in (KEY, QUOTED, NEWLINE)]
    for form in (KEY, QUOTED, NEWLINE, later, *escaped, "line-secret-7", 'pa\\"ss'):
        assert form not in raw, form
    lines = parsed(out)
    messages = lines[1]["failure"]["messages"]
    assert messages[1]["message"] == f"login failed for password {REDACTED} and {REDACTED}"
    assert messages[3]["message"] == "echo of " + REDACTED  # a cut secret with a line break
    assert lines[-1]["failure"] == {"echo": f"body token={REDACTED}"}
    assert lines[136]["failure"]["messages"][1]["message"].count(REDACTED) == 2


def test_bearer_credential_in_a_failure_message_is_hidden() -> None:
    """An echoed 'Bearer abcd1234XYZ' in a failure message is hidden with no secret
    registered; the words around it stay."""
    out = batched(mixed_events())
    assert "abcd1234XYZ" not in out.getvalue()
    message = parsed(out)[1]["failure"]["messages"][2]["message"]
    assert message == f"401 from upstream: Authorization: Bearer {REDACTED}"


def test_batched_chunk_hides_a_credential_as_a_single_line_does() -> None:
    """A credential whose scheme the redaction's case-insensitive rule accepts (here
    "BAS\u0130C", with a dotted capital I) is hidden in a batched line as in the line the
    chain writes, also when the chunk it is written in is longer than 4 KB and holds no
    other credential."""
    events: list[Event] = [engine(seq, State.IN_PROGRESS) for seq in range(1, 41)]
    token = "abcd1234XYZ"
    events.append(engine(41, State.FAILED, Diagnosis(
        failure={"error": f"401: Authorization: BAS\u0130C {token}"})))
    slow = one_by_one(events)
    assert token not in slow.getvalue()  # the chain hides it
    fast = batched(events)
    assert len(fast.getvalue()) > 4096
    assert token not in fast.getvalue()


def test_console_format_falls_back_to_the_chain() -> None:
    """With console lines, every event still gives one line, with its event name and seq,
    secrets hidden, the level filter applied."""
    events = mixed_events()
    out = io.StringIO()
    configure_logging(log_format="console", stream=out, secrets=[KEY, QUOTED])
    EventLog().events(events)
    text = out.getvalue()
    lines = text.splitlines()
    assert len(lines) == len(events)
    for line, event in zip(lines, events, strict=True):
        assert event.event_name in line
        assert f"seq={event.seq}" in line
    assert KEY not in text and QUOTED not in text and "abcd1234XYZ" not in text
    assert REDACTED in text

    out = io.StringIO()
    configure_logging(log_format="console", stream=out, level="warning")
    EventLog().events(events)
    assert len(out.getvalue().splitlines()) == len([e for e in events if e.bad_news])


def test_another_structlog_configuration_takes_the_lines() -> None:
    """After a later ``structlog.configure`` (here a test's ``capture_logs``), transition
    lines go through that configuration, not to the stream configure_logging set up."""
    events = mixed_events()
    out = io.StringIO()
    configure_logging(log_format="json", stream=out)
    with structlog.testing.capture_logs() as captured:
        EventLog().events(events)
    assert out.getvalue() == ""
    assert [c["seq"] for c in captured] == [e.seq for e in events]
    EventLog().events(events[:1])  # the original chain is back: the batched path again
    assert [line["seq"] for line in parsed(out)] == [events[0].seq]


class Unrenderable(BatchTransition):
    """An event whose fields cannot be rendered (a stand-in for any failure mid-batch)."""

    __slots__ = ()

    def fields(self) -> dict[str, Any]:
        raise RuntimeError("cannot render")


def test_lines_rendered_before_a_failure_are_written() -> None:
    """An event failing to render mid-batch raises, as through the chain, and the lines
    rendered before it are written and flushed (the chain had written them one by one)."""
    good = many_events(200)
    bad = Unrenderable(*(getattr(good[0], f.name) for f in dataclasses.fields(good[0])))
    out = batched([])
    configure_logging(log_format="json", stream=out)
    with pytest.raises(RuntimeError, match="cannot render"):
        EventLog().events([*good, bad, *many_events(3)])
    assert [line["seq"] for line in parsed(out)] == [e.seq for e in good]


# --------------------------------------------------------------------------- redact_json_lines


def json_lines(*values: str) -> str:
    return "".join(json.dumps({"seq": i, "message": v}, ensure_ascii=False) + "\n"
                   for i, v in enumerate(values))


def line_by_line(registry: SecretRegistry, text: str) -> str:
    return "\n".join(registry.redact(line, tail=False) for line in text.split("\n"))


PROSE = [
    f"key {KEY} in the middle",
    f"quoted {QUOTED} here",
    f"cut at the end {KEY[:10]}",
    "401: Authorization: Bearer abcd1234XYZ",
    "Authorization: Basic bW9uaXRvcjpodW50ZXIy",
    "Basic authentication required",
    f"{NEWLINE} spans two lines",
    "ends with Bearer",
    "abcd1234XYZ starts the next line",
]


@pytest.mark.parametrize("secrets", [
    pytest.param([KEY, QUOTED], id="joined"),
    pytest.param([KEY, QUOTED, NEWLINE], id="secret-with-line-break"),
    pytest.param([], id="no-secrets"),
])
@pytest.mark.parametrize("repeat", [pytest.param(1, id="short"), pytest.param(60, id="4KB+")])
def test_redact_json_lines_equals_redacting_each_line(secrets: list[str], repeat: int) -> None:
    """For JSON lines holding secrets, cut secrets, a secret with a line break and
    credential headers at the end of a line (the next line starting with what looks like
    a token), redact_json_lines gives exactly the line-by-line redact(tail=False), for a
    short text and for one over 4 KB."""
    registry = SecretRegistry(secrets)
    text = json_lines(*(PROSE * repeat))
    expected = line_by_line(registry, text)
    assert registry.redact_json_lines(text) == expected
    assert "abcd1234XYZ\"" not in expected  # the header at a line end was hidden...
    assert "\"abcd1234XYZ starts" in expected  # ...and the next line's first word kept
    if secrets:
        assert KEY not in expected and REDACTED in expected


def test_redact_json_lines_with_a_raw_line_break_secret() -> None:
    """A registered secret holding a raw line break is hidden when it sits inside a line
    (escaped) and does not swallow the line break between two lines when one line ends
    and the next begins with its halves: the result equals line by line."""
    secret = '"}\n{"seq'  # the end of one JSON line and the start of the next
    registry = SecretRegistry([secret, NEWLINE])
    text = json_lines(f"a {NEWLINE} b", "plain") + json_lines("z")
    expected = line_by_line(registry, text)
    assert registry.redact_json_lines(text) == expected
    assert expected.count("\n") == text.count("\n")
    assert "line-secret-7" not in expected and "a ********** b" in expected


@pytest.mark.parametrize("scheme", ["BAS\u0130C", "Bas\u0131c", "bearer", "BEARER"])
def test_redact_json_lines_header_hint_matches_short_and_long_texts(scheme: str) -> None:
    """Whatever spelling the case-insensitive credential rule accepts is hidden in a 4 KB+
    chunk exactly as in each of its short lines."""
    registry = SecretRegistry()
    text = json_lines(f"Authorization: {scheme} abcd1234XYZ", *(["filler " * 20] * 40))
    assert len(text) > 4096
    expected = line_by_line(registry, text)
    assert "abcd1234XYZ" not in expected
    assert registry.redact_json_lines(text) == expected
