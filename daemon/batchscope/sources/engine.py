"""Client of one process engine's batch REST API (Camunda 7, Operaton, CIB seven)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import aiohttp
import orjson

from batchscope.model import EngineBatchSnapshot, EngineHistoryRecord, Notice, Source
from batchscope.sources.engine_json import (
    BadRow,
    DateProblem,
    parse_history_row,
    parse_statistics_page,
    read_delete_page,
    row_id,
    says_does_not_exist,
    shows_delete,
    shows_job_deletion,
)
from batchscope.sources.fetch import NotFound, PollError, Response, get_json, ssl_context

if TYPE_CHECKING:
    from batchscope.settings import EngineTarget


@dataclass(slots=True)
class SkippedRow:
    """A list entry that could not be understood; the rest of its page was kept."""

    endpoint: str
    batch_id: str | None
    error: str


@dataclass(slots=True)
class Listing:
    rows: list[EngineBatchSnapshot] = field(default_factory=list)
    skipped: list[SkippedRow] = field(default_factory=list)
    server_time: float | None = None  # the engine's clock when the first page was served
    #: Problems reported for the first time on this target (``upstream.date_unparsable``):
    #: each (endpoint, field) once per client, i.e. once per target.
    warnings: list[Notice] = field(default_factory=list)


@dataclass(slots=True)
class HistoryListing:
    rows: list[EngineHistoryRecord] = field(default_factory=list)
    skipped: list[SkippedRow] = field(default_factory=list)
    warnings: list[Notice] = field(default_factory=list)  # as Listing.warnings


#: Longest upstream value quoted in a warning.
WARNING_VALUE_CHARS = 64

#: Rows one paged listing may hold when the client is given no bound: the default of
#: ``max_tracked_batches`` (a listing longer than the tracker can hold is not worth reading).
DEFAULT_MAX_ROWS = 50_000

_HISTORY_BY_ID = "/history/batch/{id}"
_T = TypeVar("_T")

#: How far before the start of its window a sweep of the user-operation log reads back: a
#: delete logs its entry and ends the historic batch in one transaction (milliseconds
#: apart, on one clock); this covers an entry logged a little before the end it caused.
DELETE_LOG_SLACK = 60.0
#: Pages of batch Delete entries one sweep reads (of 100) before it gives up and lets each
#: batch be asked about alone: a wave of more deletes than that is asked one by one.
DELETE_LOG_PAGES = 5


@dataclass(frozen=True, slots=True)
class DeleteSweep:
    """The batch ``Delete`` entries of the user-operation log since ``since`` (engine
    clock), read once for all the batches that ended in a cycle.

    ``complete``: every entry since then was read and understood, so a batch that ended at
    or after ``since`` and is not in ``batch_ids`` has no Delete entry.
    """

    since: float
    batch_ids: frozenset[str]
    complete: bool

    def knows(self, record: EngineHistoryRecord) -> bool | None:
        """Whether the log records a Delete of the batch; None when the sweep cannot say
        (incomplete, or the batch ended before its window or at an unreadable time)."""
        if record.batch_id in self.batch_ids:
            return True
        if self.complete and _ended_since(record, self.since):
            return False
        return None


def _ended_since(record: EngineHistoryRecord, since: float) -> bool:
    """Whether a batch ended (at a readable time) within a delete sweep's window."""
    return record.end_time is not None and record.end_time >= since


class DeleteLog:
    """One cycle's view of the user-operation log's batch deletes: swept at most once, on
    the first question, for every batch that ended since ``since`` (a cycle's endings).

    Asked about each ended batch in turn, it spares one user-operation request per batch;
    a sweep that fails or cannot be read leaves every answer to the per-batch query.
    """

    def __init__(self, client: EngineClient, since: float) -> None:
        self._client = client
        self.since = since
        self._lock = asyncio.Lock()
        self._swept = False
        self.sweep: DeleteSweep | None = None

    async def knows(self, record: EngineHistoryRecord) -> bool | None:
        """:meth:`DeleteSweep.knows`, the log swept on the first call that needs it."""
        if not _ended_since(record, self.since):
            return None  # no sweep made for a batch it could not answer about
        async with self._lock:
            if not self._swept:
                self._swept = True
                try:
                    self.sweep = await self._client.deletes_since(self.since)
                except PollError:
                    self.sweep = None  # each batch is asked about alone, as without a sweep
        return None if self.sweep is None else self.sweep.knows(record)


class EngineClient:
    """Reads batches of one engine; every method raises :class:`PollError` on failure."""

    def __init__(
        self,
        target: EngineTarget,
        session: aiohttp.ClientSession,
        *,
        on_progress: Callable[[], None] | None = None,
        max_rows: int = DEFAULT_MAX_ROWS,
    ) -> None:
        """``max_rows`` bounds every paged listing (``max_tracked_batches``): an upstream
        whose pages never end fails the poll instead of filling the memory."""
        self.target = target
        self._session = session
        self._max_rows = max_rows
        self._base = target.url.rstrip("/")
        self._headers = {"Accept": "application/json"}
        if target.bearer_token is not None:
            self._headers["Authorization"] = f"Bearer {target.bearer_token.get_secret_value()}"
        elif target.username is not None:
            password = target.password.get_secret_value() if target.password else ""
            token = base64.b64encode(f"{target.username}:{password}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        self._ssl = ssl_context(target.verify_tls, target.ca_file)
        self._on_progress = on_progress
        # History lookups of many finished batches at once must not flood the engine.
        self._lookups = asyncio.Semaphore(8)
        # (endpoint, field) pairs already reported unreadable: each is reported once.
        self._reported: set[tuple[str, str]] = set()
        # Warnings from single lookups, handed out with the next listing.
        self._pending_warnings: list[Notice] = []
        self._pages = _StatisticsPages()

    def _date_warnings(self, endpoint: str, problems: list[DateProblem]) -> list[Notice]:
        """Notices for the date fields of ``endpoint`` not reported on this target yet."""
        notices: list[Notice] = []
        for problem in problems:
            key = (endpoint, problem.field)
            if key in self._reported:
                continue
            self._reported.add(key)
            notices.append(Notice("upstream.date_unparsable", "warning", {
                "source": Source.ENGINE.value, "target": self.target.name,
                "endpoint": endpoint, "field": problem.field,
                "value": problem.value[:WARNING_VALUE_CHARS],
            }))
        return notices

    def _warnings(self, endpoint: str, problems: list[DateProblem]) -> list[Notice]:
        """A complete listing's new warnings, with those of single lookups since the last."""
        pending, self._pending_warnings = self._pending_warnings, []
        return [*pending, *self._date_warnings(endpoint, problems)]

    async def fetch(self, path: str, params: dict[str, str] | None = None) -> Response:
        """GET one engine REST path (auth, TLS, size cap and error reasons applied)."""
        return await self._get(path, params)

    async def _get(self, path: str, params: dict[str, str] | None = None,
                   decode: Callable[[bytes], Any] = orjson.loads) -> Response:
        response = await get_json(
            self._session,
            f"{self._base}{path}",
            params=params,
            headers=self._headers,
            timeout=self.target.request_timeout,
            max_bytes=self.target.max_response_bytes,
            ssl_option=self._ssl,
            decode=decode,
        )
        if self._on_progress is not None:
            self._on_progress()
        return response

    async def _get_list(self, path: str, params: dict[str, str]) -> list[object]:
        return _as_list(path, (await self._get(path, params)).body)

    def _tenant_params(self) -> dict[str, str]:
        if self.target.tenant_ids:
            return {"tenantIdIn": ",".join(self.target.tenant_ids)}
        return {}

    async def runtime_batches(self) -> Listing:
        """Every runtime batch with its statistics, paged with an explicit ``maxResults``.

        ``maxResults`` is always sent: an engine with ``queryMaxResultsLimit`` refuses
        unbounded queries. The sort is by id so that pages are stable. Paging that does not
        end (a full page bringing no new id, or more rows than ``max_rows`` allows) raises
        :class:`PollError` ``invalid_response``.
        """
        listing = Listing()
        problems: list[DateProblem] = []
        page_size = self.target.page_size
        paging = _Paging("/batch/statistics", page_size, self._max_rows)
        first = 0
        while True:
            params = {
                "sortBy": "batchId", "sortOrder": "asc",
                "firstResult": str(first), "maxResults": str(page_size),
                **self._tenant_params(),
            }
            response = await self._get("/batch/statistics", params,
                                       decode=self._pages.decoder(first, page_size))
            page: StatisticsPage = response.body
            if listing.server_time is None:
                listing.server_time = response.server_time
            paging.check(page.size, first, page.ids)
            problems.extend(page.problems)
            listing.rows.extend(page.rows)
            listing.skipped.extend(SkippedRow("/batch/statistics", batch_id, error)
                                   for batch_id, error in page.skipped)
            if page.size < page_size:
                self._pages.keep_until(first)
                listing.warnings = self._warnings("/batch/statistics", problems)
                return listing
            paging.check_another()
            first += page_size

    async def finished_since(self, since: float, page_size: int = 100) -> HistoryListing:
        """Historic batches that ended at or after ``since`` (epoch seconds), newest first.

        The history query has no time filter, so page by ``endTime desc`` until a row is
        older than ``since``. A row whose endTime cannot be read is kept (it has ended), and
        paging stops after a page whose end times could none be read. Paging that does not
        end (rows that all end in the future, a full page bringing no new id) raises
        :class:`PollError` ``invalid_response``, as in :meth:`runtime_batches`.
        """
        listing = HistoryListing()
        problems: list[DateProblem] = []
        paging = _Paging("/history/batch", page_size, self._max_rows)
        first = 0
        while True:
            params = {
                "completed": "true", "sortBy": "endTime", "sortOrder": "desc",
                "firstResult": str(first), "maxResults": str(page_size),
                **self._tenant_params(),
            }
            page = await self._get_list("/history/batch", params)
            paging.check(len(page), first, (row_id(raw) for raw in page))
            reached_older = readable = unreadable = False
            for raw in page:
                try:
                    record = parse_history_row(raw, problems=problems)
                except BadRow as exc:
                    listing.skipped.append(SkippedRow("/history/batch", row_id(raw), str(exc)))
                    continue
                unreadable = unreadable or record.end_time_unreadable
                if record.end_time is not None:
                    readable = True
                    if record.end_time < since:
                        reached_older = True
                        break
                listing.rows.append(record)
            # A page whose end times are all unreadable cannot say where ``since`` is; a
            # date format the client does not know must not make every sweep read the
            # whole history.
            if reached_older or (unreadable and not readable) or len(page) < page_size:
                listing.warnings = self._warnings("/history/batch", problems)
                return listing
            paging.check_another()
            first += page_size

    async def history_record(self, batch_id: str) -> EngineHistoryRecord | None:
        """The historic row of a batch, or None when the engine says it has none.

        Only the engine's own answer ("Historic batch with id '…' does not exist") means
        none; any other 404 (an unknown engine name, a proxy's page, an empty body) is a
        :class:`PollError` ``http_4xx``: the URL is wrong, the batch has not ended.
        Unreadable dates are reported with the next listing.
        """
        path = f"/history/batch/{quote(batch_id, safe='')}"
        async with self._lookups:
            try:
                body = (await self._get(path)).body
            except NotFound as exc:
                if says_does_not_exist(exc.body, "history", batch_id):
                    return None
                raise _foreign_404(path, exc) from exc
        problems: list[DateProblem] = []
        try:
            record = parse_history_row(body, problems=problems)
        except BadRow as exc:
            raise PollError("invalid_response", f"/history/batch/{batch_id}: {exc}") from exc
        self._pending_warnings.extend(self._date_warnings(_HISTORY_BY_ID, problems))
        return record

    async def still_running(self, batch_id: str) -> bool:
        """Whether the runtime still has the batch (``GET /batch/{id}``).

        False only on the engine's own "Batch with id '…' does not exist"; another 404
        raises :class:`PollError` ``http_4xx``.
        """
        path = f"/batch/{quote(batch_id, safe='')}"
        async with self._lookups:
            try:
                await self._get(path)
            except NotFound as exc:
                if says_does_not_exist(exc.body, "batch", batch_id):
                    return False
                raise _foreign_404(path, exc) from exc
        return True

    async def was_deleted(self, batch_id: str) -> bool:
        """Whether the user-operation log records a Delete (cancel) of the batch.

        The engine writes it only at history level FULL and, by default, only when the
        delete was made by an authenticated user.
        """
        params = {
            "batchId": batch_id, "entityType": "Batch", "operationType": "Delete",
            "maxResults": "10",
        }
        return await self._look_up("/history/user-operation", params, shows_delete)

    async def deletes_since(self, since: float, page_size: int = 100) -> DeleteSweep:
        """The batch Delete entries of the user-operation log logged at or after ``since``
        (less :data:`DELETE_LOG_SLACK`), newest first: one request per page of them, in
        place of one per ended batch. No date goes into the query (the engine's date
        format is its own): the entries come sorted, and the reading stops at an older
        one. Incomplete (``complete`` False) after :data:`DELETE_LOG_PAGES` pages or when
        an entry in the window cannot be read.
        """
        window = since - DELETE_LOG_SLACK
        deleted: set[str] = set()
        for page_number in range(DELETE_LOG_PAGES):
            params = {
                "entityType": "Batch", "operationType": "Delete",
                "sortBy": "timestamp", "sortOrder": "desc",
                "firstResult": str(page_number * page_size), "maxResults": str(page_size),
            }
            page = await self._look_up("/history/user-operation", params,
                                       lambda body: read_delete_page(body, window))
            deleted |= page.batch_ids
            if page.unreadable:
                return DeleteSweep(since, frozenset(deleted), complete=False)
            if page.reached_older or page.size < page_size:
                return DeleteSweep(since, frozenset(deleted), complete=True)
        return DeleteSweep(since, frozenset(deleted), complete=False)

    async def jobs_were_deleted(self, record: EngineHistoryRecord) -> bool:
        """Whether the historic job log shows the batch's execution jobs deleted at its end.

        A delete (cancel) removes the jobs that never ran and logs a deletion entry for
        each; a completed batch has none written at its end. One request: the newest
        deletion entry of the execution jobs' job definition.
        """
        if record.batch_job_definition_id is None:
            return False
        params = {
            "jobDefinitionId": record.batch_job_definition_id, "deletionLog": "true",
            "sortBy": "timestamp", "sortOrder": "desc",
            "firstResult": "0", "maxResults": "1",
        }
        return await self._look_up("/history/job-log", params,
                                   lambda body: shows_job_deletion(body, record.end_time))

    async def _look_up(self, path: str, params: dict[str, str],
                       read: Callable[[object], _T]) -> _T:
        """One lookup request (within the lookups' concurrency bound), its body read by
        ``read``; a body it cannot read (:class:`BadRow`) is an ``invalid_response``."""
        async with self._lookups:
            body = (await self._get(path, params)).body
        try:
            return read(body)
        except BadRow as exc:
            raise PollError("invalid_response", f"{path}: {exc}") from exc

    async def with_delete_evidence(self, record: EngineHistoryRecord,
                                   deletes: DeleteLog | None = None) -> EngineHistoryRecord:
        """``record`` with ``deleted`` set when there is evidence the batch was deleted.

        Evidence is a Delete in the user-operation log or, since an unauthenticated delete
        writes none, deletion entries in the historic job log of its execution jobs; the
        job log is asked only when the user-operation log proved nothing. ``deletes`` (the
        cycle's sweep of the log) answers for the user-operation log where it can; else the
        batch's own entries are asked for.
        """
        if not record.ended or record.deleted:
            return record
        logged = None if deletes is None else await deletes.knows(record)
        if logged is None:
            logged = await self.was_deleted(record.batch_id)
        if not (logged or await self.jobs_were_deleted(record)):
            return record
        return replace(record, deleted=True)


@dataclass(frozen=True, slots=True)
class StatisticsPage:
    """One ``/batch/statistics`` page, parsed: its rows, the rows it could not read
    (``(batch id, error)``), the ids of both (those of the rows, then of the skipped
    ones: for the paging guard), the date problems found, and how many entries it had."""

    size: int
    rows: list[EngineBatchSnapshot]
    skipped: list[tuple[str | None, str]]
    ids: list[str | None]
    problems: list[DateProblem]


class _StatisticsPages:
    """The last listing's pages by offset, with their bodies: a page served again byte
    for byte is neither decoded nor parsed again (issue 12).

    A steady cycle of an engine whose batches did not move serves the very pages of the
    last one; their parse is a pure function of the body, so the same
    :class:`StatisticsPage` (the same snapshot objects, which the tracker's fast path
    recognises) is the answer. A page that differs in any byte is decoded and parsed (the
    row memory of :mod:`engine_json` still spares its unchanged rows). Holds one body per
    full page of the last complete listing (and, after a listing that failed part-way,
    of the pages read beyond its end until the next complete one): about one listing,
    bounded as a listing is by ``max_rows``.
    """

    __slots__ = ("_pages",)

    def __init__(self) -> None:
        self._pages: dict[int, tuple[bytes, StatisticsPage]] = {}

    def decoder(self, first: int, page_size: int) -> Callable[[bytes], StatisticsPage]:
        """The ``decode`` of the page at ``firstResult`` ``first``."""
        def decode(body: bytes) -> StatisticsPage:
            known = self._pages.get(first)
            if known is not None and known[0] == body:
                return known[1]
            # JSONDecodeError: get_json says "malformed JSON"
            page = _as_list("/batch/statistics", orjson.loads(body))
            problems: list[DateProblem] = []
            # One call per page: the unchanged row's path is a few operations.
            rows, skipped = parse_statistics_page(page, problems)
            # The ids the parse read, not read again from each raw row.
            ids: list[str | None] = [r.batch_id for r in rows]
            ids.extend(batch_id for batch_id, _ in skipped)
            parsed = StatisticsPage(len(page), rows, skipped, ids, problems)
            # A full page may be asked for again: keep it. (Only full pages are worth it:
            # the last one changes whenever a batch is created.)
            if len(page) >= page_size:
                self._pages[first] = (body, parsed)
            else:
                self._pages.pop(first, None)
            return parsed
        return decode

    def keep_until(self, last: int) -> None:
        """Forget pages beyond the last one of a complete listing (the list shrank)."""
        for first in [f for f in self._pages if f > last]:
            del self._pages[first]


def _as_list(path: str, body: object) -> list[object]:
    """A listing's decoded body, which must be a JSON array."""
    if not isinstance(body, list):
        raise PollError("invalid_response",
                        f"{path} answered a {type(body).__name__}, not a list")
    return body


def _foreign_404(path: str, exc: NotFound) -> PollError:
    """A 404 that is not the engine's answer about the batch: the URL is wrong."""
    return PollError(
        "http_4xx", f"HTTP 404 from {path} that is not the engine's 'does not exist' "
        f"answer: {exc.detail}", status=404,
    )


class _Paging:
    """Guards one paged listing against an upstream whose pages never end.

    An engine or proxy that ignores ``firstResult`` serves the same full page again; a
    broken one may serve full pages of new rows forever (or rows that all end in the
    future, for the history sweep). Either would read until the memory runs out. Paging
    stops with :class:`PollError` ``invalid_response`` when a full page brings no id not
    already listed, and before a page beyond ``max_rows + page_size`` rows.
    """

    __slots__ = (
        "_endpoint",
        "_max_rows",
        "_page_size",
        "_pages",
        "_previous",
        "_rows",
        "_seen",
    )

    def __init__(self, endpoint: str, page_size: int, max_rows: int) -> None:
        self._endpoint = endpoint
        self._page_size = page_size
        self._max_rows = max_rows
        self._pages = 0
        self._rows = 0
        self._seen: set[str | None] = {None}  # None: a row without an id is never new
        self._previous: list[str | None] = []

    def check(self, size: int, first: int, ids: Iterable[str | None]) -> None:
        """Account for a page just read (``size`` rows at ``firstResult`` ``first``, with
        these batch ids); raise when it is full and repeats what earlier pages listed.
        ``ids`` is read only for a full page (a generator costs nothing otherwise)."""
        self._pages += 1
        self._rows += size
        if size < self._page_size:
            return  # the last page: whatever it holds, paging ends here
        listed = list(ids)
        new = set(listed)
        new -= self._seen
        if not new:
            n = self._pages
            if n > 1 and listed == self._previous:
                what = (f"page {n} repeated the ids of page {n - 1} (the engine or a proxy "
                        f"ignores firstResult={first})")
            elif n == 1:
                what = f"page 1 is full ({size} rows) and names no batch id"
            else:
                what = (f"page {n} (firstResult={first}) brought no id that earlier pages "
                        f"had not listed")
            raise PollError("invalid_response", f"paging did not end: {self._endpoint} {what}")
        self._seen.update(new)
        self._previous = listed

    def check_another(self) -> None:
        """Raise instead of reading a page beyond ``max_rows + page_size`` rows."""
        if self._rows >= self._max_rows + self._page_size:
            raise PollError(
                "invalid_response",
                f"paging did not end: {self._endpoint} still full after {self._pages} pages "
                f"({self._rows} rows), more than max_tracked_batches ({self._max_rows}) "
                f"can hold",
            )
