"""The log pipeline: line shape, levels and secret redaction."""

from __future__ import annotations

import io
import json

from batchscope.model import BatchTransition, JobCounts, Source, State
from batchscope.sinks.logs import EventLog, configure_logging, get_logger, register_secrets


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_transition_line_shape_and_level() -> None:
    """timestamp, level and event come first; bad news is a warning; fields as SPEC.md."""
    out = io.StringIO()
    configure_logging(log_format="json", stream=out)
    EventLog().events([BatchTransition(
        seq=17, time=0.0, source=Source.ENGINE, target="prod", batch_id="b", batch_type="t",
        from_state=State.IN_PROGRESS, to_state=State.FAILED,
        jobs=JobCounts(total=100, created=100, completed=40, remaining=60, failed=3),
    )])
    (line,) = lines(out)
    assert list(line)[:3] == ["timestamp", "level", "event"]
    assert str(line["timestamp"]).endswith("Z")
    assert line["level"] == "warning" and line["event"] == "batch.transition"
    assert list(line)[3:] == ["seq", "source", "target", "batch_id", "batch_type",
                              "from_state", "to_state", "total_jobs", "completed_jobs",
                              "remaining_jobs", "failed_jobs", "duration_seconds"]


def test_secrets_are_redacted_even_when_escaped() -> None:
    """A secret never appears, also when JSON escaping changed its quotes or backslashes,
    and also when it was registered after start (a reload)."""
    out = io.StringIO()
    tricky = 'pa"ss\\word\t1'
    configure_logging(log_format="json", stream=out, secrets=[tricky])
    register_secrets(["later-secret-9"])
    log = get_logger()
    log.error("upstream.echo", body=f"token={tricky}", other="later-secret-9")
    try:
        raise RuntimeError(f"failed with {tricky}")
    except RuntimeError:
        log.exception("poll.crashed")
    raw = out.getvalue()
    assert "pa\\\"ss" not in raw and "later-secret-9" not in raw
    assert raw.count("**********") >= 3
    assert all(json.loads(line) for line in raw.splitlines())
