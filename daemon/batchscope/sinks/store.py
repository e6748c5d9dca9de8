"""Persistent state in SQLite: tracked batches, the event sequence, history watermarks.

Writes run on one dedicated thread, never on the event loop. WAL mode and one transaction
per flush mean a kill -9 loses at most the last uncommitted flush and never corrupts the
file.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from batchscope.sinks.state_format import record_from_row, record_to_row
from batchscope.tracker import Key, TrackedBatch

SCHEMA_VERSION = 1
MEMORY = ":memory:"

#: Event numbers reserved ahead of the last commit. Events are logged before the commit that
#: records their ``seq``, so after a kill -9 the next process continues above the reservation
#: instead of giving logged numbers to other events. A clean close releases it (no gap).
SEQ_RESERVE = 10_000


class StateError(Exception):
    """The state file cannot be used (corrupt, newer version, unreadable)."""


@dataclass(slots=True)
class LoadedState:
    records: list[TrackedBatch] = field(default_factory=list)
    seq: int = 0
    meta: dict[str, Any] = field(default_factory=dict)


class StateStore:
    def __init__(self, path: str) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state-store")
        self._conn: sqlite3.Connection | None = None
        self._reserved = 0  # seq numbers up to here are reserved in the file
        self._saved_seq: int | None = None  # seq of the last successful write, if it was

    @property
    def persistent(self) -> bool:
        return self.path != MEMORY

    # -------------------------------------------------------------- blocking internals

    def _open(self, reset: bool) -> LoadedState:
        if not self.persistent:
            return LoadedState()
        path = Path(self.path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"{self.path}: cannot create directory: {exc.strerror}") from exc
        if reset:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        try:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            ok = conn.execute("PRAGMA quick_check").fetchone()
            if ok is None or ok[0] != "ok":
                raise StateError(f"{self.path}: integrity check failed: {ok}")
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS batches (source TEXT, target TEXT, batch_id TEXT,"
                " data TEXT, PRIMARY KEY (source, target, batch_id))"
            )
            rows = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            version = int(rows.get("schema_version", SCHEMA_VERSION))
            if version > SCHEMA_VERSION:
                raise StateError(
                    f"{self.path}: state written by a newer batchscope (schema {version}, "
                    f"this one reads {SCHEMA_VERSION})"
                )
            conn.execute(
                "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
            committed = int(rows.get("seq", 0))
            start = max(committed, int(rows.get("seq_reserved", committed)))
            self._reserve(conn, start + SEQ_RESERVE)
            state = LoadedState(
                seq=start,
                meta=orjson.loads(rows["meta"]) if "meta" in rows else {},
            )
            for (data,) in conn.execute("SELECT data FROM batches"):
                state.records.append(record_from_row(orjson.loads(data)))
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{self.path}: not a usable state file: {exc}") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise StateError(f"{self.path}: unreadable state entry: {exc}") from exc
        self._conn = conn
        return state

    def _write(
        self,
        changed: list[dict[str, Any]],
        forgotten: list[Key],
        seq: int,
        meta: dict[str, Any],
    ) -> None:
        conn = self._conn
        if conn is None:
            return
        conn.execute("BEGIN")
        try:
            conn.executemany(
                "INSERT OR REPLACE INTO batches VALUES (?, ?, ?, ?)",
                [(d["source"], d["target"], d["batch_id"], orjson.dumps(d).decode())
                 for d in changed],
            )
            conn.executemany(
                "DELETE FROM batches WHERE source = ? AND target = ? AND batch_id = ?",
                [(s.value, t, b) for s, t, b in forgotten],
            )
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('seq', ?)", (str(seq),))
            conn.execute(
                "INSERT OR REPLACE INTO meta VALUES ('meta', ?)", (orjson.dumps(meta).decode(),)
            )
            reserved = max(self._reserved, seq + SEQ_RESERVE)
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('seq_reserved', ?)",
                         (str(reserved),))
            conn.execute("COMMIT")
        except BaseException:
            self._saved_seq = None
            conn.execute("ROLLBACK")
            raise
        self._reserved = reserved
        self._saved_seq = seq

    def _reserve(self, conn: sqlite3.Connection, upto: int) -> None:
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('seq_reserved', ?)", (str(upto),))
        self._reserved = upto

    def _close(self) -> None:
        if self._conn is not None:
            if self._saved_seq is not None:
                # Everything logged was committed by the last write: release the reservation.
                self._reserve(self._conn, self._saved_seq)
            self._conn.close()
            self._conn = None

    # -------------------------------------------------------------- async API

    def open_blocking(self, *, reset: bool = False) -> LoadedState:
        """Open (and load) on the calling thread: used once at start-up."""
        return self._executor.submit(self._open, reset).result()

    @property
    def reserved_seq(self) -> int:
        """Event numbers up to this one may be published without another commit."""
        return self._reserved

    def reserve_seq_blocking(self, upto: int) -> None:
        """Reserve event numbers up to ``upto`` now, before events beyond
        :attr:`reserved_seq` are published (a burst larger than SEQ_RESERVE)."""
        if self._conn is not None and upto > self._reserved:
            conn = self._conn
            self._executor.submit(self._reserve, conn, upto).result()

    async def save(
        self,
        changed: Iterable[TrackedBatch],
        forgotten: Iterable[Key],
        seq: int,
        meta: dict[str, Any],
    ) -> None:
        # Serialise on the loop (records are mutated there); write on the store thread.
        rows = [record_to_row(rec) for rec in changed]
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(
            self._executor, self._write, rows, list(forgotten), seq, dict(meta)
        )

    async def close(self) -> None:
        """Close the file; call after a final :meth:`save` of everything published."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=True)
