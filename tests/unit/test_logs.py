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
                              "remaining_jobs", "failed_jobs", "duration_seconds",
                              "reason", "failure", "link"]


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


def test_secret_cut_at_the_end_of_a_value_is_redacted() -> None:
    """An upstream message cut mid-secret (here at 500 characters, marked "…") shows no
    piece of the secret: the rendered line never contains its first characters."""
    out = io.StringIO()
    key = "0123456789abcdef0123456789ABCDEF"
    configure_logging(log_format="json", stream=out, secrets=[key])
    message = ("x" * 480 + " key " + key)[:500] + "…"
    get_logger().warning("batch.transition", failure={"messages": [{"message": message}]})
    (line,) = lines(out)
    shown = line["failure"]["messages"][0]["message"]  # type: ignore[index]
    assert key[:10] not in out.getvalue()
    assert shown.endswith("**********…")


def test_echoed_authorization_header_is_redacted_in_logs() -> None:
    """A Basic or Bearer credential echoed into any field is hidden, registered or not."""
    out = io.StringIO()
    configure_logging(log_format="json", stream=out)
    get_logger().warning("target.down", error="401: Authorization: Basic bW9uaXRvcjpodW50ZXIy")
    (line,) = lines(out)
    assert "bW9uaXRvcjpodW50ZXIy" not in out.getvalue()
    assert line["error"] == "401: Authorization: Basic **********"


def test_identifiers_are_not_mistaken_for_cut_secrets() -> None:
    """A batch id that happens to end like the start of a secret is logged whole: the
    cut-secret rule applies to prose, not to identifiers."""
    out = io.StringIO()
    key = "0123456789abcdef0123456789ABCDEF"
    configure_logging(log_format="json", stream=out, secrets=[key])
    get_logger().info("batch.transition", batch_id="b-4f1c-01234")
    (line,) = lines(out)
    assert line["batch_id"] == "b-4f1c-01234"


def test_console_lines_are_redacted_too() -> None:
    """The console renderer hides secrets as the JSON one does."""
    out = io.StringIO()
    configure_logging(log_format="console", stream=out, secrets=["console-secret-1"])
    get_logger().error("upstream.echo", body="token=console-secret-1")
    assert "console-secret-1" not in out.getvalue()
    assert "**********" in out.getvalue()
