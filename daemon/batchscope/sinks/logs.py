"""Structured logs: JSON lines (or console lines on a TTY), one line per event.

Every line carries ``timestamp`` (ISO 8601 UTC), ``level`` and ``event`` first. Secrets
registered with :func:`configure_logging` or :func:`register_secrets` (kept by
:mod:`batchscope.redaction`) are hidden twice: in every string value before rendering
(which also catches a secret cut at the end of a value) and in the final rendered line, so
no processor, exception or upstream message can leak one.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, Final, TextIO

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from batchscope import redaction
from batchscope.model import Event, Notice

REDACTED: Final = redaction.REDACTED
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def _leading_keys(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Put timestamp, level and event first, as the contract shows them."""
    ordered: dict[str, Any] = {
        "timestamp": event_dict.pop("timestamp", None),
        "level": event_dict.pop("level", None),
        "event": event_dict.pop("event", None),
    }
    ordered.update(event_dict)
    return ordered


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        # Only prose (an error text cut mid-secret) can end with a piece of a secret that
        # must go; an identifier (a batch id ending like the start of a hex key) stays.
        return redaction.redact_tail(value) if " " in value or "\n" in value else value
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


# A tuple: isinstance with a union (dict | list | tuple) is several times slower.
_CONTAINERS: Final = (dict, list, tuple)


def _redact_values(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Hide a secret cut at the end of a string value (whole secrets: see _redact_line).

    In place, and only the values that can hold prose: most values of a transition line
    are identifiers, numbers and None.
    """
    if not len(redaction.registry()):
        return event_dict
    for key, value in event_dict.items():
        kind = type(value)
        if kind is int or value is None:
            continue
        if kind is str or isinstance(value, str):
            if " " in value or "\n" in value:
                event_dict[key] = redaction.redact_tail(value)
        elif isinstance(value, _CONTAINERS):
            event_dict[key] = _redact_value(value)
    return event_dict


def _redact_line(line: str) -> str:
    """Whole secrets (every form) and echoed credentials anywhere in the rendered line."""
    return redaction.redact(line, tail=False)


class _JsonEventLines:
    """Renders a batch of events as the configured JSON chain renders each one (the same
    keys in the same order, the level filter, both redactions), in one write.

    A first cycle logs one line per batch, 10,000 of them; through the structlog chain one
    by one, that was half its CPU (issue 12). Here the timestamp is taken once per batch,
    values are checked for cut secrets in place, whole secrets are hidden in the joined
    text at once (:meth:`~batchscope.redaction.SecretRegistry.redact_json_lines`) and the
    stream is written once. Used only while the chain is the one :func:`configure_logging`
    installed with it (``processors``: not after another ``structlog.configure``, e.g. a
    test's ``capture_logs``) and no context variables are bound (the chain would merge
    them into every line).
    """

    __slots__ = ("_min_level", "_stamper", "_stream", "processors")

    def __init__(self, stream: TextIO, min_level: int, processors: list[Processor]) -> None:
        self._stream = stream
        self._min_level = min_level
        self._stamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
        self.processors = tuple(processors)

    def in_charge(self) -> bool:
        """Whether these lines are what the configured chain would write. (By content:
        ``capture_logs`` swaps the processors inside the same list.)"""
        return (tuple(structlog.get_config()["processors"]) == self.processors
                and not structlog.contextvars.get_contextvars())

    def write(self, events: Iterable[Event]) -> None:
        info = self._min_level <= logging.INFO
        warning = self._min_level <= logging.WARNING
        timestamp = self._stamper(None, "", {})["timestamp"]
        tails = len(redaction.registry()) > 0
        lines: list[str] = []
        try:
            self._render(events, lines, info, warning, timestamp, tails)
        finally:
            # Whatever was rendered before a failure is written, as the chain would have.
            if lines:
                self._write(lines)
            self._stream.flush()

    def _render(self, events: Iterable[Event], lines: list[str], info: bool, warning: bool,
                timestamp: str, tails: bool) -> None:
        for event in events:
            if event.bad_news:
                if not warning:
                    continue
                level = "warning"
            elif info:
                level = "info"
            else:
                continue
            line: dict[str, Any] = {"timestamp": timestamp, "level": level,
                                    "event": event.event_name}
            line.update(event.fields())
            # Decoded at once: each bytes object orjson returns holds a whole output
            # buffer, and 10,000 of them alive together cost 80 MB of fresh pages.
            text = orjson.dumps(line, default=str).decode()
            if (" " in text or "\\n" in text) and tails:
                # Compact JSON has a blank or an escaped line break only inside a string
                # value: only then can a value be prose that _redact_values would change.
                text = orjson.dumps(_redact_values(None, "", line), default=str).decode()
            lines.append(text)
            if len(lines) == _LINES_PER_WRITE:
                self._write(lines)

    def _write(self, lines: list[str]) -> None:
        """Write the lines and empty the list."""
        lines.append("")
        text = "\n".join(lines)
        lines.clear()
        self._stream.write(redaction.registry().redact_json_lines(text))


#: Lines joined, redacted and written at once: about 40 KB, small enough for the allocator
#: to reuse the same memory for each chunk (megabytes at once cost fresh pages each time).
_LINES_PER_WRITE: Final = 128


#: Set by :func:`configure_logging` when lines are JSON: events are then written in batches.
_event_lines: _JsonEventLines | None = None


class _JsonRenderer:
    def __call__(self, _: WrappedLogger, __: str, event_dict: EventDict) -> str:
        return _redact_line(orjson.dumps(event_dict, default=str).decode())


class _ConsoleRenderer:
    def __init__(self, colors: bool) -> None:
        self._inner = structlog.dev.ConsoleRenderer(
            colors=colors,
            exception_formatter=structlog.dev.plain_traceback,
        )

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        rendered = self._inner(logger, name, event_dict)
        return _redact_line(rendered if isinstance(rendered, str) else str(rendered))


def configure_logging(
    *,
    log_format: str | None,
    level: str = "info",
    stream: TextIO | None = None,
    secrets: Iterable[str] = (),
) -> None:
    """Configure structlog once for the process (called from the CLI, and by tests)."""
    out = stream if stream is not None else sys.stdout
    if log_format is None:
        log_format = "console" if out.isatty() else "json"
    global _event_lines
    redaction.reset(secrets)
    min_level = _LEVELS.get(level, logging.INFO)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    if log_format == "json":
        # show_locals=False: local variables of a traceback may hold keys and passwords.
        shared.append(structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        ))
        renderer = _JsonRenderer()
    else:
        renderer = _ConsoleRenderer(colors=out.isatty())
    processors: list[Processor] = [*shared, _redact_values, _leading_keys, renderer]
    _event_lines = (_JsonEventLines(out, min_level, processors) if log_format == "json"
                    else None)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(min_level),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def register_secrets(secrets: Iterable[str]) -> None:
    """Add secret values (e.g. from reloaded settings) to what every log line hides."""
    redaction.register(secrets)


def get_logger() -> Any:
    """A lazy logger: safe at import time, it follows the configuration of each call."""
    return structlog.get_logger("batchscope")


class EventLog:
    """Writes transition events and notices as log lines."""

    def __init__(self) -> None:
        self._log = get_logger()

    def events(self, events: Iterable[Event]) -> None:
        lines = _event_lines
        if lines is not None and lines.in_charge():
            lines.write(events)
            return
        for event in events:
            fields: MutableMapping[str, Any] = event.fields()
            if event.bad_news:
                self._log.warning(event.event_name, **fields)
            else:
                self._log.info(event.event_name, **fields)

    def target_down(self, source: str, target: str, reason: str, error: str) -> None:
        self._log.warning("target.down", source=source, target=target, reason=reason,
                          error=error)

    def target_up(self, source: str, target: str) -> None:
        self._log.info("target.up", source=source, target=target)

    def notices(self, notices: Iterable[Notice]) -> None:
        full = 0
        for notice in notices:
            if notice.event == "tracker.full":
                full += 1
                continue
            getattr(self._log, notice.level)(notice.event, **notice.fields)
        if full:
            # One line per poll, not one per refused batch.
            self._log.error("tracker.full", refused_batches=full,
                            hint="raise max_tracked_batches or lower retention")
