"""sinks/store.py against neighbours and broken files (issue 9, items 7 and 14).

- Two daemons on one state file: the second one is refused (exit 78) and told who holds it.
- ``--reset-state`` on a file it cannot delete, malformed ``meta`` rows: StateError naming
  the file (exit 78), never a traceback with exit 1.
- A full disk: the error says so ("database or disk is full"), not "cannot rollback".

Read-only directories are not enforced for root, which runs these tests. What really fails
as root too: a ``state_path`` that is a directory (``unlink`` answers EISDIR whoever asks)
stands in for an undeletable state file, and an immutable directory (``chattr +i``) is the
genuine read-only case where the file system supports it (skipped otherwise). A full disk
is ``PRAGMA max_page_count`` on the store's connection: SQLite then answers SQLITE_FULL.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batchscope.sinks.store import SEQ_RESERVE, StateError, StateLocked, StateStore

REPO = Path(__file__).resolve().parents[2]
EX_CONFIG = 78


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` until it is truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def close(store: StateStore) -> None:
    asyncio.run(store.close())


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[StateStore]:
    """A state store opened on a fresh file, closed after the test."""
    store = StateStore(str(tmp_path / "state.db"))
    store.open_blocking()
    try:
        yield store
    finally:
        close(store)


# ------------------------------------------------------------------ one process per file


def test_second_opener_is_refused_and_told_the_holders_pid(opened: StateStore) -> None:
    """While one store holds the file, another (even in the same process) gets
    StateLocked whose message names the holder's pid and the lock file."""
    with pytest.raises(StateLocked) as info:
        StateStore(opened.path).open_blocking()
    assert info.value.holder == os.getpid()
    assert f"pid {os.getpid()}" in str(info.value)
    assert opened.path in str(info.value) and opened.lock_path in str(info.value)
    assert isinstance(info.value, StateError)  # the CLI's exit 78 path


def test_lock_file_names_the_holder_and_is_released_on_close(tmp_path: Path) -> None:
    """The lock file holds the owner's pid while open; close() releases the lock and
    clears the pid, so the next process opens the same file normally."""
    path = str(tmp_path / "state.db")
    first = StateStore(path)
    first.open_blocking()
    assert Path(first.lock_path).read_text().strip() == str(os.getpid())
    close(first)
    assert Path(first.lock_path).read_text() == ""
    second = StateStore(path)
    second.open_blocking()  # no StateLocked
    close(second)


def test_reset_state_never_deletes_a_file_in_use(opened: StateStore) -> None:
    """--reset-state by a second process must not delete the running daemon's file."""
    asyncio.run(opened.save([], [], 42, {}))
    with pytest.raises(StateLocked):
        StateStore(opened.path).open_blocking(reset=True)
    conn = sqlite3.connect(opened.path)
    try:
        assert dict(conn.execute("SELECT key, value FROM meta"))["seq"] == "42"
    finally:
        conn.close()


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BATCHSCOPE_", "DD_", "CREDENTIALS_DIRECTORY"))}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO / "daemon"), os.environ.get("PYTHONPATH")) if p)
    return env


def _run_argv(state: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "batchscope", "run", "--host", "127.0.0.1",
            "--port", str(free_port()), "--state-path", str(state), "--log-format", "json",
            *extra]


@pytest.mark.slow
def test_two_daemons_on_one_state_file(tmp_path: Path) -> None:
    """`batchscope run` twice on one state file: the second exits 78 naming the first
    one's pid, and the first keeps running and stops cleanly (exit 0)."""
    state = tmp_path / "state.db"
    lock = Path(f"{state}.lock")
    first = subprocess.Popen(_run_argv(state), env=_clean_env(), cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: lock.exists() and lock.read_text().strip() == str(first.pid),
                 30, "the first daemon to hold the state lock")
        second = subprocess.run(_run_argv(state), env=_clean_env(), cwd=tmp_path,
                                capture_output=True, text=True, timeout=60, check=False)
        assert second.returncode == EX_CONFIG, second.stderr
        assert f"pid {first.pid}" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr + second.stdout
        assert first.poll() is None  # the holder is unaffected
    finally:
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=30)
    assert first.returncode == 0, err
    assert '"event":"daemon.stopped"' in out


# ------------------------------------------------------------ exit codes and messages


def test_reset_state_that_cannot_delete_the_file_is_a_state_error(tmp_path: Path) -> None:
    """--reset-state on a state file that cannot be deleted (here a directory: EISDIR even
    for root) raises StateError naming the file, not a bare OSError; the lock is given
    back."""
    state = tmp_path / "state.db"
    state.mkdir()
    with pytest.raises(StateError, match=r"state\.db: cannot delete it for --reset-state"):
        StateStore(str(state)).open_blocking(reset=True)
    with open(f"{state}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if still held


@pytest.mark.slow
def test_reset_state_failure_exits_78_without_traceback(tmp_path: Path) -> None:
    """`batchscope run --reset-state` on an undeletable state file exits 78 (EX_CONFIG)
    with a one-line reason, not exit 1 with a traceback."""
    state = tmp_path / "state.db"
    state.mkdir()
    result = subprocess.run(_run_argv(state, "--reset-state"), env=_clean_env(), cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == EX_CONFIG, result.stderr
    assert "cannot delete it for --reset-state" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.fixture
def immutable_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory nobody, root included, can create or delete files in (chattr +i)."""
    d = tmp_path / "ro"
    d.mkdir()
    (d / "state.db").write_bytes(b"")
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.skip("chattr not installed")
    done = subprocess.run([chattr, "+i", str(d)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"chattr +i not supported here: {done.stderr!r}")
    try:
        yield d
    finally:
        subprocess.run([chattr, "-i", str(d)], check=True)


@pytest.mark.slow
def test_reset_state_in_a_read_only_directory_exits_78(immutable_dir: Path) -> None:
    """The reported case: --reset-state with the state file in a read-only directory
    exits 78 with a message naming the file, and no traceback."""
    state = immutable_dir / "state.db"
    result = subprocess.run(_run_argv(state, "--reset-state"), env=_clean_env(),
                            cwd=immutable_dir.parent, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == EX_CONFIG, result.stderr
    assert str(state) in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert state.exists()


def _write_meta(path: Path, key: str, value: object) -> None:
    store = StateStore(str(path))
    store.open_blocking()
    close(store)
    conn = sqlite3.connect(path)
    try:
        conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
        conn.commit()
    finally:
        conn.close()


@pytest.mark.parametrize(("key", "value"), [
    ("meta", "not json"),
    ("meta", '"a string"'),
    ("meta", "[1, 2]"),
    ("meta", None),
    ("seq", "abc"),
    ("seq", "1.5"),
    ("seq", "-4"),
    ("seq", b"\x00\x01"),
    ("seq", None),
    ("seq_reserved", "lots"),
    ("schema_version", "one"),
])
def test_malformed_meta_row_is_a_state_error_naming_the_file(
    tmp_path: Path, key: str, value: object
) -> None:
    """A meta row that is not what batchscope writes raises StateError naming the file
    and the row, never AttributeError/ValueError later; the file is not left locked."""
    path = tmp_path / "state.db"
    _write_meta(path, key, value)
    with pytest.raises(StateError) as info:
        StateStore(str(path)).open_blocking()
    assert str(path) in str(info.value)
    assert f"meta row {key!r}" in str(info.value)
    fresh = StateStore(str(path))  # --reset-state can be used right away
    assert fresh.open_blocking(reset=True).seq == 0
    close(fresh)


def test_malformed_batch_row_is_a_state_error(tmp_path: Path) -> None:
    """A batches row whose JSON is not a record raises StateError naming the file."""
    path = tmp_path / "state.db"
    _write_meta(path, "seq", "1")
    conn = sqlite3.connect(path)
    try:
        conn.execute("INSERT INTO batches VALUES ('engine', 'prod', 'b1', '[\"x\"]')")
        conn.commit()
    finally:
        conn.close()
    with pytest.raises(StateError, match=str(path)):
        StateStore(str(path)).open_blocking()


async def test_full_disk_reports_the_full_disk(tmp_path: Path) -> None:
    """With the file unable to grow (SQLITE_FULL), save() raises "database or disk is
    full" itself: no "cannot rollback - no transaction is active" in its place or in its
    context. Once there is room again, the next save commits."""
    store = StateStore(str(tmp_path / "state.db"))
    store.open_blocking()

    def set_max_pages(pages: int | None) -> None:
        conn = store._conn  # max_page_count is per connection: the store's own
        assert conn is not None
        if pages is None:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")

    loop = asyncio.get_running_loop()
    await loop.run_in_executor(store._executor, set_max_pages, None)
    with pytest.raises(sqlite3.OperationalError) as info:
        await store.save([], [], 7, {"bulk": {"x": "y" * 200_000}})
    assert str(info.value) == "database or disk is full"
    assert info.value.__context__ is None
    assert "rollback" not in " ".join(getattr(info.value, "__notes__", []))

    await loop.run_in_executor(store._executor, set_max_pages, 1 << 30)
    await store.save([], [], 8, {"small": {}})
    await store.close()
    reopened = StateStore(store.path)
    loaded = reopened.open_blocking()
    assert loaded.meta == {"small": {}}
    assert loaded.seq == 8  # the clean close released the reservation
    await reopened.close()


def test_reservation_still_guards_an_unclean_end(tmp_path: Path) -> None:
    """Unchanged behaviour: without a clean close the next opener starts above the
    reserved numbers (the lock of a dead holder goes with its descriptor)."""
    path = str(tmp_path / "state.db")
    store = StateStore(path)
    store.open_blocking()
    asyncio.run(store.save([], [], 5, {}))
    # What the end of the process does: the connection and the lock descriptor go away.
    store._executor.submit(store._conn.close).result()  # type: ignore[union-attr]
    store._unlock()
    again = StateStore(path)
    assert again.open_blocking().seq == 5 + SEQ_RESERVE
    close(again)
