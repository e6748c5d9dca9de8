"""Client of one process engine's batch REST API (Camunda 7, Operaton, CIB seven)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import quote

import aiohttp

from batchscope.model import EngineBatchSnapshot, EngineHistoryRecord
from batchscope.sources.engine_json import (
    BadRow,
    parse_history_row,
    parse_statistics_row,
    row_id,
    shows_delete,
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


@dataclass(slots=True)
class HistoryListing:
    rows: list[EngineHistoryRecord] = field(default_factory=list)
    skipped: list[SkippedRow] = field(default_factory=list)


class EngineClient:
    """Reads batches of one engine; every method raises :class:`PollError` on failure."""

    def __init__(
        self,
        target: EngineTarget,
        session: aiohttp.ClientSession,
        *,
        on_progress: Callable[[], None] | None = None,
    ) -> None:
        self.target = target
        self._session = session
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

    async def _get(self, path: str, params: dict[str, str] | None = None) -> Response:
        response = await get_json(
            self._session,
            f"{self._base}{path}",
            params=params,
            headers=self._headers,
            timeout=self.target.request_timeout,
            max_bytes=self.target.max_response_bytes,
            ssl_option=self._ssl,
        )
        if self._on_progress is not None:
            self._on_progress()
        return response

    async def _get_list(self, path: str, params: dict[str, str]) -> list[object]:
        return (await self._get_list_response(path, params))[0]

    async def _get_list_response(
        self, path: str, params: dict[str, str]
    ) -> tuple[list[object], Response]:
        response = await self._get(path, params)
        if not isinstance(response.body, list):
            raise PollError("invalid_response", f"{path} answered a "
                            f"{type(response.body).__name__}, not a list")
        return response.body, response

    def _tenant_params(self) -> dict[str, str]:
        if self.target.tenant_ids:
            return {"tenantIdIn": ",".join(self.target.tenant_ids)}
        return {}

    async def runtime_batches(self) -> Listing:
        """Every runtime batch with its statistics, paged with an explicit ``maxResults``.

        ``maxResults`` is always sent: an engine with ``queryMaxResultsLimit`` refuses
        unbounded queries. The sort is by id so that pages are stable.
        """
        listing = Listing()
        page_size = self.target.page_size
        first = 0
        while True:
            params = {
                "sortBy": "batchId", "sortOrder": "asc",
                "firstResult": str(first), "maxResults": str(page_size),
                **self._tenant_params(),
            }
            page, response = await self._get_list_response("/batch/statistics", params)
            if listing.server_time is None:
                listing.server_time = response.server_time
            for raw in page:
                try:
                    listing.rows.append(parse_statistics_row(raw))
                except BadRow as exc:
                    listing.skipped.append(SkippedRow("/batch/statistics", row_id(raw), str(exc)))
            if len(page) < page_size:
                return listing
            first += page_size

    async def finished_since(self, since: float, page_size: int = 100) -> HistoryListing:
        """Historic batches that ended at or after ``since`` (epoch seconds), newest first.

        The history query has no time filter, so page by ``endTime desc`` until a row is
        older than ``since``.
        """
        listing = HistoryListing()
        first = 0
        while True:
            params = {
                "completed": "true", "sortBy": "endTime", "sortOrder": "desc",
                "firstResult": str(first), "maxResults": str(page_size),
                **self._tenant_params(),
            }
            page = await self._get_list("/history/batch", params)
            reached_older = False
            for raw in page:
                try:
                    record = parse_history_row(raw)
                except BadRow as exc:
                    listing.skipped.append(SkippedRow("/history/batch", row_id(raw), str(exc)))
                    continue
                if record.end_time is not None and record.end_time < since:
                    reached_older = True
                    break
                listing.rows.append(record)
            if reached_older or len(page) < page_size:
                return listing
            first += page_size

    async def history_record(self, batch_id: str) -> EngineHistoryRecord | None:
        """The historic row of a batch, or None when the engine has none (404)."""
        async with self._lookups:
            try:
                body = (await self._get(f"/history/batch/{quote(batch_id, safe='')}")).body
            except NotFound:
                return None
        try:
            return parse_history_row(body)
        except BadRow as exc:
            raise PollError("invalid_response", f"/history/batch/{batch_id}: {exc}") from exc

    async def still_running(self, batch_id: str) -> bool:
        """Whether the runtime still has the batch (``GET /batch/{id}`` is not 404)."""
        async with self._lookups:
            try:
                await self._get(f"/batch/{quote(batch_id, safe='')}")
            except NotFound:
                return False
        return True

    async def was_deleted(self, batch_id: str) -> bool:
        """Whether the user-operation log records a Delete (cancel) of the batch."""
        params = {
            "batchId": batch_id, "entityType": "Batch", "operationType": "Delete",
            "maxResults": "10",
        }
        async with self._lookups:
            body = (await self._get("/history/user-operation", params)).body
        try:
            return shows_delete(body)
        except BadRow as exc:
            raise PollError("invalid_response", f"/history/user-operation: {exc}") from exc

    async def with_delete_evidence(self, record: EngineHistoryRecord) -> EngineHistoryRecord:
        if record.end_time is None or record.deleted:
            return record
        if not await self.was_deleted(record.batch_id):
            return record
        return EngineHistoryRecord(
            batch_id=record.batch_id, batch_type=record.batch_type,
            total_jobs=record.total_jobs, start_time=record.start_time,
            end_time=record.end_time, deleted=True,
        )
