"""Normalise the engine's JSON (Camunda 7 / Operaton / CIB seven) into snapshots.

Pure functions: a malformed row raises :class:`BadRow` naming the field, so the caller can
skip that row and keep the rest of the page.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from batchscope.model import EngineBatchSnapshot, EngineHistoryRecord, JobCounts


class BadRow(ValueError):
    """One list entry that cannot be understood."""


# yyyy-MM-dd'T'HH:mm:ss.SSSZ by default; operators may reconfigure the format, so accept
# missing seconds/fraction, any fraction length, and offsets as +0100, +01:00, +01 or Z.
_DATE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?"
    r"\s*(Z|[+-]\d{2}(?::?\d{2})?)?$"
)


def parse_engine_date(value: str) -> float:
    """Epoch seconds of an engine date string; naive dates are taken as UTC."""
    m = _DATE.match(value.strip())
    if m is None:
        raise ValueError(f"unrecognised date {value!r}")
    year, month, day, hour, minute, second, fraction, offset = m.groups()
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    tz = UTC
    if offset and offset != "Z":
        sign = -1 if offset[0] == "-" else 1
        digits = offset[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
        tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
    moment = datetime(
        int(year), int(month), int(day), int(hour), int(minute), int(second or 0), micros,
        tzinfo=tz,
    )
    return moment.timestamp()


def _str(row: dict[str, Any], name: str) -> str:
    value = row.get(name)
    if not isinstance(value, str) or not value:
        raise BadRow(f"field {name!r} must be a non-empty string, got {type(value).__name__}")
    return value


def _int(row: dict[str, Any], name: str, default: int | None = None) -> int:
    value = row.get(name)
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRow(f"field {name!r} must be a non-negative integer, got {value!r}")
    return value


def _optional_date(row: dict[str, Any], name: str) -> float | None:
    value = row.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRow(f"field {name!r} must be a date string")
    try:
        return parse_engine_date(value)
    except ValueError as exc:
        raise BadRow(f"field {name!r}: {exc}") from exc


def _row(row: object) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise BadRow(f"entry is a {type(row).__name__}, not an object")
    return row


def row_id(row: object) -> str | None:
    """Best-effort id of a row, for naming a skipped entry in a log line."""
    if isinstance(row, dict) and isinstance(row.get("id"), str):
        return str(row["id"])
    return None


def parse_statistics_row(raw: object) -> EngineBatchSnapshot:
    """A ``BatchStatisticsDto`` row of ``/batch/statistics``."""
    row = _row(raw)
    total = _int(row, "totalJobs")
    suspended = row.get("suspended", False)
    if not isinstance(suspended, bool):
        raise BadRow(f"field 'suspended' must be a boolean, got {suspended!r}")
    tenant = row.get("tenantId")
    return EngineBatchSnapshot(
        batch_id=_str(row, "id"),
        batch_type=_str(row, "type"),
        jobs=JobCounts(
            total=total,
            created=_int(row, "jobsCreated", default=total),
            completed=_int(row, "completedJobs"),
            remaining=_int(row, "remainingJobs"),
            failed=_int(row, "failedJobs"),
        ),
        suspended=suspended,
        start_time=_optional_date(row, "startTime"),  # absent before Camunda 7.18
        tenant_id=tenant if isinstance(tenant, str) else None,
    )


def parse_history_row(raw: object, *, deleted: bool = False) -> EngineHistoryRecord:
    """A ``HistoricBatchDto`` row of ``/history/batch``."""
    row = _row(raw)
    total = row.get("totalJobs")
    if total is not None and (isinstance(total, bool) or not isinstance(total, int)):
        raise BadRow(f"field 'totalJobs' must be an integer, got {total!r}")
    return EngineHistoryRecord(
        batch_id=_str(row, "id"),
        batch_type=_str(row, "type"),
        total_jobs=total,
        start_time=_optional_date(row, "startTime"),
        end_time=_optional_date(row, "endTime"),
        deleted=deleted,
    )


def shows_delete(entries: object) -> bool:
    """Whether a user-operation log page records a Delete of the batch."""
    if not isinstance(entries, list):
        raise BadRow("user-operation log is not a list")
    return any(
        isinstance(e, dict) and e.get("operationType") == "Delete" for e in entries
    )
