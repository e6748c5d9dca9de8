"""Normalise the engine's JSON (Camunda 7 / Operaton / CIB seven) into snapshots.

Pure functions: a malformed row raises :class:`BadRow` naming the field, so the caller can
skip that row and keep the rest of the page. An optional date the parser cannot read does
not make a row malformed: the field becomes None and the problem is collected in a list
the caller passes (``problems``), so that it can be reported once.

A poll re-reads every runtime row each cycle, and most have not changed since the last one:
:func:`parse_statistics_row` remembers each batch's row (its JSON text) and hands out the
very same snapshot object while the row stays the same, so an unchanged row costs one
``orjson.dumps`` and a comparison, and the tracker can tell it is unchanged by identity.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from batchscope.model import EngineBatchSnapshot, EngineHistoryRecord, JobCounts


class BadRow(ValueError):
    """One list entry that cannot be understood."""


@dataclass(frozen=True, slots=True)
class DateProblem:
    """A date field whose value could not be read; the row was kept with the field None."""

    field: str
    value: str


# --------------------------------------------------------------------------- dates

# The engine writes dates with the Jackson pattern yyyy-MM-dd'T'HH:mm:ss.SSSZ in the JVM's
# zone (2024-07-09T13:33:42.165+0200). Installations may set another pattern (the REST
# API's dateFormat context parameter): z (zone names such as CEST), XXX (+02:00), without
# milliseconds or seconds, or a local style such as dd.MM.yyyy HH:mm.
_ZONE = (
    r"(?P<zone>Z|[+-]\d{2}(?::?\d{2})?"
    r"|(?:GMT|UTC|UT)(?:[+-]\d{1,2}(?::?\d{2})?)?"
    r"|[A-Za-z]{2,5}|[A-Za-z_]+(?:/[A-Za-z0-9_+-]+)+)"
)
_TIME = r"(?P<hour>\d{1,2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:[.,](?P<fraction>\d{1,9}))?)?"
_ISO_DATE = re.compile(
    rf"(?P<year>\d{{4}})-(?P<month>\d{{2}})-(?P<day>\d{{2}})(?:[T ]{_TIME})?\s*{_ZONE}?"
)
_DOTTED_DATE = re.compile(
    rf"(?P<day>\d{{1,2}})\.(?P<month>\d{{1,2}})\.(?P<year>\d{{4}})(?:,?\s+{_TIME})?\s*{_ZONE}?"
)

# Short zone names as Java prints them with the pattern letter z (its legacy short ids).
# They name a fixed offset: the summer variants (CEST, EDT...) are names of their own.
# CST and IST are ambiguous; Java reads them as America/Chicago and Asia/Kolkata.
_ZONE_NAMES: Final[dict[str, float]] = {
    "UTC": 0, "GMT": 0, "UT": 0, "WET": 0, "WEST": 1, "BST": 1,
    "CET": 1, "CEST": 2, "MET": 1, "MEST": 2, "EET": 2, "EEST": 3, "MSK": 3,
    "IST": 5.5, "HKT": 8, "SGT": 8, "AWST": 8, "JST": 9, "KST": 9,
    "ACST": 9.5, "ACDT": 10.5, "AEST": 10, "AEDT": 11, "NZST": 12, "NZDT": 13,
    "BRT": -3, "ART": -3, "AST": -4, "ADT": -3, "EST": -5, "EDT": -4, "CST": -6, "CDT": -5,
    "MST": -7, "MDT": -6, "PST": -8, "PDT": -7, "AKST": -9, "AKDT": -8, "HST": -10,
}


def _offset(sign: str, digits: str) -> timezone:
    digits = digits.replace(":", "")
    if len(digits) <= 2:  # +02, GMT+2
        hours, minutes = int(digits), 0
    else:  # +0200, +02:00, GMT+2:30
        hours, minutes = int(digits[:-2]), int(digits[-2:])
    if hours > 18 or minutes > 59:
        raise ValueError(f"offset {sign}{digits} out of range")
    delta = timedelta(hours=hours, minutes=minutes)
    return timezone(-delta if sign == "-" else delta)


def _zone(text: str | None) -> tzinfo:
    """The zone of a date's suffix; a date without one is taken as UTC."""
    if text is None or text == "Z":
        return UTC
    if text[0] in "+-":
        return _offset(text[0], text[1:])
    upper = text.upper()
    for prefix in ("GMT", "UTC", "UT"):
        rest = upper[len(prefix):]
        if upper.startswith(prefix) and rest[:1] in ("+", "-"):
            return _offset(rest[0], rest[1:])
    if upper in _ZONE_NAMES:
        return timezone(timedelta(hours=_ZONE_NAMES[upper]))
    if "/" in text:
        try:
            return ZoneInfo(text)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    raise ValueError(f"unknown time zone {text!r}")


# The engine's default pattern exactly (2024-07-09T13:33:42.165+0200, or Z): parsed by
# datetime.fromisoformat, ten times faster than the general path below and with the same
# result. fromisoformat would also take offsets up to 23:59 and minutes up to 99, which the
# general path refuses: those (hours over 18, minutes over 59) are left to it, by the
# pattern itself (no group to read per date).
_DEFAULT_DATE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}"
    r"(?:Z|[+-](?:0[0-9]|1[0-8])[0-5][0-9])"
)


def parse_engine_date(value: str) -> float:
    """Epoch seconds of an engine date string.

    Accepts the engine's default ``yyyy-MM-dd'T'HH:mm:ss.SSSZ`` and the variants operators
    configure: offsets as ``+0200``, ``+02:00``, ``+02`` or ``Z``; zone names (``CEST``,
    ``UTC``, ``GMT+02:00``, ``Europe/Berlin``); no milliseconds or seconds; a space for
    ``T``; and ``dd.MM.yyyy HH:mm[:ss]``. A date without a zone is taken as UTC (the
    engine's JVM zone is not known to the client). Raises :class:`ValueError` otherwise.
    """
    if _DEFAULT_DATE.fullmatch(value) is not None:
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            pass  # e.g. day 31 of a 30-day month: the general path says so in its words
    return _parse_date(value)


def _parse_date(value: str) -> float:
    """:func:`parse_engine_date` for every accepted pattern (the general path)."""
    text = value.strip()
    match = _ISO_DATE.fullmatch(text) or _DOTTED_DATE.fullmatch(text)
    if match is None:
        raise ValueError(f"unrecognised date {value!r}")
    parts = match.groupdict()
    fraction = parts["fraction"] or "0"
    try:
        moment = datetime(
            int(parts["year"]), int(parts["month"]), int(parts["day"]),
            int(parts["hour"] or 0), int(parts["minute"] or 0), int(parts["second"] or 0),
            int(fraction[:6].ljust(6, "0")),
            tzinfo=_zone(parts["zone"]),
        )
    except ValueError as exc:
        raise ValueError(f"unrecognised date {value!r}: {exc}") from exc
    return moment.timestamp()


def _date_value(
    row: dict[str, Any], name: str, problems: list[DateProblem] | None
) -> tuple[float | None, bool]:
    """(epoch seconds or None, whether a value was present but unreadable)."""
    value = row.get(name)
    if value is None:
        return None, False
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) / 1000.0, False  # Jackson's timestamps: epoch milliseconds
    if isinstance(value, str):
        try:
            return parse_engine_date(value), False
        except ValueError:
            pass
    if problems is not None:
        problems.append(DateProblem(name, value if isinstance(value, str) else repr(value)))
    return None, True


def _optional_date(
    row: dict[str, Any], name: str, problems: list[DateProblem] | None
) -> float | None:
    value = row.get(name)
    if value is None:
        return None
    if type(value) is str:
        try:
            return parse_engine_date(value)  # the usual value, without _date_value's tuple
        except ValueError:
            pass  # _date_value reports it
    return _date_value(row, name, problems)[0]


# --------------------------------------------------------------------------- rows


def _str(row: dict[str, Any], name: str) -> str:
    value = row.get(name)
    if not isinstance(value, str) or not value:
        raise BadRow(f"field {name!r} must be a non-empty string, got {type(value).__name__}")
    return value


def _opt_str(row: dict[str, Any], name: str) -> str | None:
    value = row.get(name)
    return value if isinstance(value, str) and value else None


def _int(row: dict[str, Any], name: str, default: int | None = None) -> int:
    value = row.get(name)
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRow(f"field {name!r} must be a non-negative integer, got {value!r}")
    return value


def _row(row: object) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise BadRow(f"entry is a {type(row).__name__}, not an object")
    return row


def row_id(row: object) -> str | None:
    """Best-effort id of a row, for naming a skipped entry in a log line (and for the
    paging guard of the history sweep's pages)."""
    if type(row) is dict or isinstance(row, dict):
        value = row.get("id")
        if type(value) is str:
            return value
        if isinstance(value, str):
            return str(value)
    return None


def _references(entries: dict[str, _Entry]) -> dict[str, int]:
    """The reference count of each entry's snapshot, as this very expression sees it."""
    return {k: _getrefcount(e[1]) for k, e in entries.items()}


def _referenced(entries: dict[str, _Entry], alone: int) -> dict[str, _Entry]:
    """The entries whose snapshot something else holds too (the same expression shape as
    :func:`_references`, so that ``alone`` is the count of one held by its entry only)."""
    return {k: e for k, e in entries.items() if _getrefcount(e[1]) > alone}


class _ParsedRows:
    """The statistics rows parsed lately, by batch id: ``(JSON text, snapshot, date
    problems)``.

    A row whose JSON text equals the remembered one gets the remembered snapshot (and its
    date problems again, as a fresh parse would report them). The text is compared rather
    than the decoded values, which would take ``1`` for ``true`` or ``1.0`` (rows the full
    parse refuses).

    The memory is bounded without knowing where a listing ends or which batches are gone,
    and costs nothing on the unchanged row's path: after as many parses (new or changed
    rows) as it holds (at least :attr:`MIN_PARSES`), it keeps only the entries whose
    snapshot something else still holds. The tracker holds the last row it applied of
    every batch it tracks (``TrackedBatch.runtime_row``), so a batch still running is never
    forgotten; the engine client's page memory holds the rows of the pages it keeps. One
    neither holds any more is dropped at the next pruning: the memory holds about as many
    rows as a listing has.
    """

    MIN_PARSES: Final = 4096

    __slots__ = ("entries", "parses", "prune_at")

    def __init__(self) -> None:
        self.entries: dict[str, _Entry] = {}
        self.parses = 0  # since the last pruning
        self.prune_at = self.MIN_PARSES

    def remember(self, batch_id: str, text: bytes, row: dict[str, Any],
                 problems: list[DateProblem] | None) -> EngineBatchSnapshot:
        """Parse a row not remembered (or changed) and remember it."""
        found: list[DateProblem] = []
        snapshot = _parse_statistics_row(row, found)  # BadRow: not remembered
        self.parses += 1
        if self.parses >= self.prune_at:
            self.prune()
        # A copy: orjson's own bytes object keeps its whole output buffer (~8 KiB
        # whatever the text's length), 80 MB for 10,000 rows.
        self.entries[batch_id] = (memoryview(text).tobytes(), snapshot, tuple(found))
        if problems is not None:
            problems.extend(found)
        return snapshot

    def prune(self) -> None:
        """Forget the rows whose snapshot nothing else holds any more."""
        kept = _referenced(self.entries, _UNHELD)
        self.entries.clear()  # the same dict: a page being parsed holds it
        self.entries.update(kept)
        self.parses = 0
        self.prune_at = max(self.MIN_PARSES, len(self.entries))

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, batch_id: str) -> bool:
        return batch_id in self.entries

    def clear(self) -> None:
        self.entries.clear()
        self.parses = 0
        self.prune_at = self.MIN_PARSES


_Entry = tuple[bytes, EngineBatchSnapshot, tuple[DateProblem, ...]]
# CPython's reference counts; a Python without them prunes everything (0 > 0 never holds).
_getrefcount: Final[Callable[[object], int]] = getattr(sys, "getrefcount", lambda _: 0)
# The count _referenced sees for a snapshot only its entry holds.
_UNHELD: Final = _references(
    {"": (b"", EngineBatchSnapshot("", "", JobCounts(0, 0, 0, 0, 0), False), ())})[""]


_PARSED_ROWS: Final = _ParsedRows()

# Rows come from orjson.loads: plain dicts, lists, str, int, float, bool and None, whose
# JSON text tells them apart exactly. orjson would also write datetimes, dataclasses and
# subclasses of str, int and dict as text equal to that of other values: these raise
# instead, and such a row is parsed without the memory. (So would NaN and infinities, which
# it writes as null; no JSON document decodes to them.)
_AS_DECODED: Final = (orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
                      | orjson.OPT_PASSTHROUGH_SUBCLASS)
_dumps: Final = orjson.dumps


def parse_statistics_row(
    raw: object, problems: list[DateProblem] | None = None
) -> EngineBatchSnapshot:
    """A ``BatchStatisticsDto`` row of ``/batch/statistics``.

    ``startTime`` and ``executionStartTime`` are optional (absent before Camunda 7.18): one
    that cannot be read is None and appended to ``problems``.

    A row equal (as JSON text) to the one last parsed for its batch id returns the same
    snapshot object as then, with the same date problems appended to ``problems``.
    """
    if type(raw) is dict:
        batch_id = raw.get("id")
        if type(batch_id) is str:
            try:
                text = _dumps(raw, option=_AS_DECODED)
            except TypeError:  # not as decoded (orjson.JSONEncodeError is a TypeError)
                return _parse_statistics_row(raw, problems)
            # Per row of every listing: the unchanged row's path, kept short.
            memory = _PARSED_ROWS
            entry = memory.entries.get(batch_id)
            if entry is not None and entry[0] == text:
                if entry[2] and problems is not None:
                    problems.extend(entry[2])
                return entry[1]
            return memory.remember(batch_id, text, raw, problems)
    return _parse_statistics_row(raw, problems)


def parse_statistics_page(
    page: list[object], problems: list[DateProblem] | None = None
) -> tuple[list[EngineBatchSnapshot], list[tuple[str | None, str]]]:
    """:func:`parse_statistics_row` over a page: the rows read, in order, and the
    ``(row_id, error)`` of each row that could not be (:class:`BadRow`). The same results
    as a loop over the rows, without a Python call per unchanged row."""
    rows: list[EngineBatchSnapshot] = []
    skipped: list[tuple[str | None, str]] = []
    append = rows.append
    memory = _PARSED_ROWS
    entries = memory.entries
    dumps, option = _dumps, _AS_DECODED
    for raw in page:
        if type(raw) is dict:
            batch_id = raw.get("id")
            if type(batch_id) is str:
                try:
                    text = dumps(raw, option=option)
                except TypeError:
                    pass
                else:
                    entry = entries.get(batch_id)
                    if entry is not None and entry[0] == text:
                        if entry[2] and problems is not None:
                            problems.extend(entry[2])
                        append(entry[1])
                        continue
                    try:
                        append(memory.remember(batch_id, text, raw, problems))
                    except BadRow as exc:
                        skipped.append((batch_id, str(exc)))
                    continue
        try:
            append(_parse_statistics_row(raw, problems))
        except BadRow as exc:
            skipped.append((row_id(raw), str(exc)))
    return rows, skipped


def _parse_statistics_row(
    raw: object, problems: list[DateProblem] | None
) -> EngineBatchSnapshot:
    """:func:`parse_statistics_row` without the memory: a fast path for a well-formed row
    (every check of the full parse, in the form that costs least), else the full parse,
    which raises the first problem in the same order as ever."""
    if type(raw) is dict:
        get = raw.get
        total = get("totalJobs")
        created = get("jobsCreated")
        if created is None:
            created = total
        completed = get("completedJobs")
        remaining = get("remainingJobs")
        failed = get("failedJobs")
        suspended = get("suspended", False)
        batch_id = get("id")
        batch_type = get("type")
        if (type(total) is int and total >= 0 and type(created) is int and created >= 0
                and type(completed) is int and completed >= 0
                and type(remaining) is int and remaining >= 0
                and type(failed) is int and failed >= 0
                and (suspended is True or suspended is False)
                and type(batch_id) is str and batch_id
                and type(batch_type) is str and batch_type):
            # Positional (JobCounts' field order): keywords cost a third of the call.
            return _snapshot(raw, batch_id, batch_type,
                             JobCounts(total, created, completed, remaining, failed),
                             suspended, problems)
    return _parse_statistics_row_checked(raw, problems)


def _parse_statistics_row_checked(
    raw: object, problems: list[DateProblem] | None
) -> EngineBatchSnapshot:
    """The full parse: each field checked in turn, the first problem raised."""
    row = _row(raw)
    total = _int(row, "totalJobs")
    suspended = row.get("suspended", False)
    if not isinstance(suspended, bool):
        raise BadRow(f"field 'suspended' must be a boolean, got {suspended!r}")
    batch_id, batch_type = _str(row, "id"), _str(row, "type")
    jobs = JobCounts(
        total=total,
        created=_int(row, "jobsCreated", default=total),
        completed=_int(row, "completedJobs"),
        remaining=_int(row, "remainingJobs"),
        failed=_int(row, "failedJobs"),
    )
    return _snapshot(row, batch_id, batch_type, jobs, suspended, problems)


def _snapshot(row: dict[str, Any], batch_id: str, batch_type: str, jobs: JobCounts,
              suspended: bool, problems: list[DateProblem] | None) -> EngineBatchSnapshot:
    """The snapshot of a row whose required fields are checked (both parse paths)."""
    get = row.get
    tenant, batch_jobs, seed, monitor = (get("tenantId"), get("batchJobDefinitionId"),
                                         get("seedJobDefinitionId"),
                                         get("monitorJobDefinitionId"))
    # _opt_str inlined below: four calls per row, 40,000 in a first cycle.
    return EngineBatchSnapshot(  # positional, in field order (see above)
        batch_id,
        batch_type,
        jobs,
        suspended,
        _optional_date(row, "startTime", problems),  # start_time
        tenant if isinstance(tenant, str) and tenant else None,  # tenant_id
        _optional_date(row, "executionStartTime", problems),  # execution_start_time
        batch_jobs if isinstance(batch_jobs, str) and batch_jobs else None,
        seed if isinstance(seed, str) and seed else None,
        monitor if isinstance(monitor, str) and monitor else None,
    )


def parse_history_row(
    raw: object, *, deleted: bool = False, problems: list[DateProblem] | None = None
) -> EngineHistoryRecord:
    """A ``HistoricBatchDto`` row of ``/history/batch``.

    An ``endTime`` that is present but unreadable still means the batch ended:
    ``end_time`` is None and ``end_time_unreadable`` is set. Like the optional dates it is
    appended to ``problems``.
    """
    row = _row(raw)
    total = row.get("totalJobs")
    if total is not None and (isinstance(total, bool) or not isinstance(total, int)):
        raise BadRow(f"field 'totalJobs' must be an integer, got {total!r}")
    batch_id, batch_type = _str(row, "id"), _str(row, "type")
    start_time = _optional_date(row, "startTime", problems)
    end_time, end_unreadable = _date_value(row, "endTime", problems)
    return EngineHistoryRecord(
        batch_id=batch_id,
        batch_type=batch_type,
        total_jobs=total,
        start_time=start_time,
        end_time=end_time,
        deleted=deleted,
        end_time_unreadable=end_unreadable,
        batch_job_definition_id=_opt_str(row, "batchJobDefinitionId"),
        execution_start_time=_optional_date(row, "executionStartTime", problems),
        removal_time=_optional_date(row, "removalTime", problems),
    )


# --------------------------------------------------------------------------- evidence


def shows_delete(entries: object) -> bool:
    """Whether a user-operation log page records a Delete of the batch."""
    if not isinstance(entries, list):
        raise BadRow("user-operation log is not a list")
    return any(
        isinstance(e, dict) and e.get("operationType") == "Delete" for e in entries
    )


@dataclass(frozen=True, slots=True)
class DeletePage:
    """One page of batch ``Delete`` entries of the user-operation log, newest first, as far
    as it goes back to a time: the batches deleted then, whether an older entry was reached
    (the next page is not needed), and whether an entry in the window could not be read."""

    batch_ids: frozenset[str]
    reached_older: bool
    unreadable: bool
    size: int  # entries on the page, of any kind


def read_delete_page(entries: object, since: float) -> DeletePage:
    """The ``Delete`` entries of a page sorted ``timestamp desc``, down to ``since``.

    An entry whose time cannot be read might lie in the window; one in the window without a
    batch id names no batch: either makes the page ``unreadable`` (the caller cannot tell
    a batch was not deleted). Entries of other operations are passed over.
    """
    if not isinstance(entries, list):
        raise BadRow("user-operation log is not a list")
    deleted: set[str] = set()
    unreadable = False
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("operationType") != "Delete":
            continue
        stamp, bad = _date_value(entry, "timestamp", None)
        if stamp is None or bad:
            unreadable = True
            continue
        if stamp < since:
            return DeletePage(frozenset(deleted), True, unreadable, len(entries))
        batch_id = entry.get("batchId")
        if isinstance(batch_id, str) and batch_id:
            deleted.add(batch_id)
        else:
            unreadable = True
    return DeletePage(frozenset(deleted), False, unreadable, len(entries))


#: How long before the batch's endTime the last execution job may have been deleted for
#: the deletion to count as the batch's own. A delete removes the remaining jobs and ends
#: the batch in one transaction (milliseconds apart); a failed job deleted by hand lets the
#: batch complete only at the monitor job's next run, usually seconds later.
JOB_DELETION_WINDOW: Final = 2.0


def shows_job_deletion(entries: object, end_time: float | None) -> bool:
    """Whether a historic job log page (deletion entries, newest first) proves a delete.

    A deletion entry counts when it was written at the batch's end; with no readable end
    time or entry timestamp, any deletion entry counts.
    """
    if not isinstance(entries, list):
        raise BadRow("historic job log is not a list")
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("deletionLog") is not True:
            continue
        if end_time is None:
            return True
        stamp, unreadable = _date_value(entry, "timestamp", None)
        if stamp is None or unreadable or stamp >= end_time - JOB_DELETION_WINDOW:
            return True
    return False


# --------------------------------------------------------------------------- errors

_MISSING = {
    "batch": re.compile(r"Batch with id '(?P<id>.*)' does not exist"),
    "history": re.compile(r"Historic batch with id '(?P<id>.*)' does not exist"),
}


def says_does_not_exist(body: object, kind: str, batch_id: str) -> bool:
    """Whether a 404 body is the engine's own ExceptionDto saying the batch does not exist.

    ``kind`` is ``"batch"`` (``GET /batch/{id}``) or ``"history"``
    (``GET /history/batch/{id}``). Any other 404 (an unknown engine name, a proxy's page,
    an empty body) is not an answer about the batch.
    """
    if not isinstance(body, dict):
        return False
    message = body.get("message")
    if not isinstance(message, str):
        return False
    match = _MISSING[kind].fullmatch(message.strip())
    return match is not None and match["id"] == batch_id
