"""Structured logs: JSON lines (or console lines on a TTY), one line per event.

Every line carries ``timestamp`` (ISO 8601 UTC), ``level`` and ``event`` first. Secrets
registered with :func:`configure_logging` are replaced in the final rendered line, so no
processor, exception or upstream message can leak one.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from batchscope.model import Event, Notice

REDACTED = "**********"
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


class _Redactor:
    """Replaces known secret values in rendered lines."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        # A JSON line holds a secret with quotes, backslashes and control characters
        # escaped: hide that form too. Longest first, so a secret containing another is
        # replaced whole.
        plain = [s for s in secrets if len(s) >= 4]
        escaped = [orjson.dumps(s).decode()[1:-1] for s in plain]
        known = {*self.secrets, *plain, *escaped}
        self.secrets = sorted(known, key=len, reverse=True)

    def __call__(self, line: str) -> str:
        for secret in self.secrets:
            if secret in line:
                line = line.replace(secret, REDACTED)
        return line


class _JsonRenderer:
    def __init__(self, redact: _Redactor) -> None:
        self._redact = redact

    def __call__(self, _: WrappedLogger, __: str, event_dict: EventDict) -> str:
        return self._redact(orjson.dumps(event_dict, default=str).decode())


class _ConsoleRenderer:
    def __init__(self, redact: _Redactor, colors: bool) -> None:
        self._redact = redact
        self._inner = structlog.dev.ConsoleRenderer(
            colors=colors,
            exception_formatter=structlog.dev.plain_traceback,
        )

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        rendered = self._inner(logger, name, event_dict)
        return self._redact(rendered if isinstance(rendered, str) else str(rendered))


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
    global _redactor
    redact = _redactor = _Redactor(secrets)
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
        renderer = _JsonRenderer(redact)
    else:
        renderer = _ConsoleRenderer(redact, colors=out.isatty())
    structlog.configure(
        processors=[*shared, _leading_keys, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


_redactor = _Redactor(())


def register_secrets(secrets: Iterable[str]) -> None:
    """Add secret values (e.g. from reloaded settings) to what every log line hides."""
    _redactor.add(secrets)


def get_logger() -> Any:
    """A lazy logger: safe at import time, it follows the configuration of each call."""
    return structlog.get_logger("batchscope")


class EventLog:
    """Writes transition events and notices as log lines."""

    def __init__(self) -> None:
        self._log = get_logger()

    def events(self, events: Iterable[Event]) -> None:
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
