"""Persistent state in SQLite: tracked batches, the event sequence, history watermarks.

Writes run on one dedicated thread, never on the event loop. WAL mode and one transaction
per flush mean a kill -9 loses at most the last uncommitted flush and never corrupts the
file.

One process at a time: opening takes an exclusive ``flock`` on ``<path>.lock`` (which
holds the owner's pid) and keeps it until :meth:`StateStore.close` or the process ends, so
a second daemon on the same file stops with :class:`StateLocked` instead of reporting every
transition a second time.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
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
    """The state file cannot be used (corrupt, newer version, unreadable, in use)."""


class StateLocked(StateError):
    """Another process holds the state file (``holder``: its pid, when it wrote one)."""

    def __init__(self, message: str, holder: int | None) -> None:
        super().__init__(message)
        self.holder = holder


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


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
        self._lock_fd: int | None = None
        self._reserved = 0  # seq numbers up to here are reserved in the file
        self._saved_seq: int | None = None  # seq of the last successful write, if it was

    @property
    def persistent(self) -> bool:
        return self.path != MEMORY

    # -------------------------------------------------------------- blocking internals

    @property
    def lock_path(self) -> str:
        return f"{self.path}.lock"

    def _open(self, reset: bool) -> LoadedState:
        if not self.persistent:
            return LoadedState()
        path = Path(self.path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"{self.path}: cannot create directory: {_why(exc)}") from exc
        self._lock()  # before anything touches the file, --reset-state included
        try:
            return self._load(reset)
        except BaseException:
            self._unlock()
            raise

    def _lock(self) -> None:
        lock_path = self.lock_path
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateError(f"{lock_path}: cannot create the state lock file: {_why(exc)}"
                             ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder is not None else "pid unknown"
            raise StateLocked(
                f"{self.path}: in use by another batchscope process ({who}, lock file "
                f"{lock_path}); stop that process or give this one another state_path",
                holder,
            ) from None
        except OSError as exc:  # e.g. ENOLCK: a file system without locks
            os.close(fd)
            raise StateError(f"{lock_path}: cannot lock the state file: {_why(exc)}") from exc
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)  # closing releases the lock
            raise StateError(f"{lock_path}: cannot write the state lock file: {_why(exc)}"
                             ) from exc
        self._lock_fd = fd

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # no stale pid for the next reader
        os.close(fd)  # releases the flock

    def _load(self, reset: bool) -> LoadedState:
        if reset:
            for suffix in ("", "-wal", "-shm"):
                name = f"{self.path}{suffix}"
                try:
                    Path(name).unlink(missing_ok=True)
                except OSError as exc:
                    raise StateError(
                        f"{name}: cannot delete it for --reset-state: {_why(exc)}") from exc
        conn: sqlite3.Connection | None = None
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
            version = self._int_row(rows, "schema_version", SCHEMA_VERSION)
            if version > SCHEMA_VERSION:
                raise StateError(
                    f"{self.path}: state written by a newer batchscope (schema {version}, "
                    f"this one reads {SCHEMA_VERSION})"
                )
            committed = self._int_row(rows, "seq", 0)
            start = max(committed, self._int_row(rows, "seq_reserved", committed))
            state = LoadedState(seq=start, meta=self._meta_row(rows))
            for (data,) in conn.execute("SELECT data FROM batches"):
                state.records.append(record_from_row(orjson.loads(data)))
            conn.execute(
                "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
            self._reserve(conn, start + SEQ_RESERVE)
        except BaseException as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, sqlite3.DatabaseError):
                raise StateError(f"{self.path}: not a usable state file: {exc}") from exc
            if isinstance(exc, ValueError | KeyError | TypeError | AttributeError):
                raise StateError(f"{self.path}: unreadable state entry: {exc!r}") from exc
            raise
        self._conn = conn
        return state

    def _int_row(self, rows: dict[Any, Any], key: str, default: int) -> int:
        """A meta row holding a non-negative integer (``default`` when there is none)."""
        if key not in rows:
            return default
        value = rows[key]
        try:
            number = int(value) if isinstance(value, str | int) else -1
        except ValueError:
            number = -1
        if number < 0:
            raise StateError(f"{self.path}: meta row {key!r} is not a non-negative integer: "
                             f"{str(value)[:40]!r}")
        return number

    def _meta_row(self, rows: dict[Any, Any]) -> dict[str, Any]:
        """The daemon's own ``meta`` row: a JSON object (its entries are the daemon's)."""
        if "meta" not in rows:
            return {}
        value = rows["meta"]
        try:
            meta = orjson.loads(value) if isinstance(value, str | bytes) else None
        except orjson.JSONDecodeError:
            meta = None
        if not isinstance(meta, dict):
            raise StateError(f"{self.path}: meta row 'meta' is not a JSON object: "
                             f"{str(value)[:40]!r}")
        return meta

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
        except BaseException as exc:
            self._saved_seq = None
            # SQLite may already have rolled the transaction back itself (a full disk, an
            # I/O error): a ROLLBACK then fails with "no transaction is active" and must
            # not hide the error that matters.
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error as rollback:
                    exc.add_note(f"(the rollback failed too: {rollback})")
            raise
        self._reserved = reserved
        self._saved_seq = seq

    def _reserve(self, conn: sqlite3.Connection, upto: int) -> None:
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('seq_reserved', ?)", (str(upto),))
        self._reserved = upto

    def _close(self) -> None:
        try:
            if self._conn is not None:
                try:
                    if self._saved_seq is not None:
                        # Everything logged was committed by the last write: release the
                        # reservation (if that fails, the next start skips the reserved
                        # numbers: a gap, never a reuse).
                        self._reserve(self._conn, self._saved_seq)
                finally:
                    self._conn.close()
                    self._conn = None
        finally:
            self._unlock()

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
