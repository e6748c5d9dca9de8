"""SystemdNotifier against real AF_UNIX datagram sockets (path and abstract namespace)."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchscope.runtime.sdnotify import SystemdNotifier

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="sd_notify and abstract sockets are Linux-only"
)

# sun_path is 108 bytes including the terminating NUL.
_MAX_UNIX_PATH = 107


class Receiver:
    """A bound SOCK_DGRAM socket standing in for systemd's notify socket."""

    def __init__(self, sock: socket.socket, notify_socket: str) -> None:
        self.sock = sock
        self.notify_socket = notify_socket  # the value systemd would put in $NOTIFY_SOCKET

    def recv(self) -> str:
        self.sock.settimeout(2.0)
        return self.sock.recv(65536).decode()

    def pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(65536, socket.MSG_PEEK)
        except BlockingIOError:
            return False
        finally:
            self.sock.setblocking(True)
        return True


def _short_dir(tmp_path: Path) -> Path:
    if len(str(tmp_path / "notify.sock")) <= _MAX_UNIX_PATH:
        return tmp_path
    return Path(tempfile.mkdtemp(prefix="sdn-", dir="/tmp"))  # pragma: no cover


@pytest.fixture
def path_receiver(tmp_path: Path) -> Iterator[Receiver]:
    path = _short_dir(tmp_path) / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        yield Receiver(sock, str(path))
    finally:
        sock.close()


@pytest.fixture
def abstract_receiver() -> Iterator[Receiver]:
    name = f"batchscope-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        yield Receiver(sock, "@" + name)
    finally:
        sock.close()


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest) -> Receiver:
    fixture = "path_receiver" if request.param == "path" else "abstract_receiver"
    value = request.getfixturevalue(fixture)
    assert isinstance(value, Receiver)
    return value


def _notifier(receiver: Receiver, **extra: str) -> SystemdNotifier:
    return SystemdNotifier.from_environ({"NOTIFY_SOCKET": receiver.notify_socket, **extra})


def test_ready_is_delivered(receiver: Receiver) -> None:
    """ready() sends the datagram READY=1 to the socket named by NOTIFY_SOCKET."""
    with _notifier(receiver) as notifier:
        assert notifier.enabled
        assert notifier.ready() is True
    assert receiver.recv() == "READY=1"


def test_ready_with_status_is_one_datagram(receiver: Receiver) -> None:
    """ready(status) sends READY=1 and STATUS= together in a single datagram."""
    with _notifier(receiver) as notifier:
        assert notifier.ready("2 targets, 0 tracked")
    assert receiver.recv() == "READY=1\nSTATUS=2 targets, 0 tracked"
    assert not receiver.pending()


def test_status_is_folded_to_one_line(receiver: Receiver) -> None:
    """status() replaces newlines so the text stays a single STATUS= assignment."""
    with _notifier(receiver) as notifier:
        assert notifier.status("engine/prod ok\ndatadog/dd error: timeout\r\n")
    message = receiver.recv()
    assert message == "STATUS=engine/prod ok datadog/dd error: timeout"
    assert "\n" not in message


def test_watchdog_ping(receiver: Receiver) -> None:
    """watchdog() sends WATCHDOG=1."""
    with _notifier(receiver) as notifier:
        assert notifier.watchdog()
    assert receiver.recv() == "WATCHDOG=1"


def test_stopping(receiver: Receiver) -> None:
    """stopping() sends STOPPING=1 (with an optional STATUS=)."""
    with _notifier(receiver) as notifier:
        assert notifier.stopping()
        assert notifier.stopping("shutting down")
    assert receiver.recv() == "STOPPING=1"
    assert receiver.recv() == "STOPPING=1\nSTATUS=shutting down"


def test_notify_sends_arbitrary_fields(receiver: Receiver) -> None:
    """notify(**fields) joins KEY=VALUE pairs with newlines, values rendered with str()."""
    with _notifier(receiver) as notifier:
        assert notifier.notify(STATUS="ok", X_BATCHSCOPE_TRACKED=12)
        assert notifier.send("WATCHDOG=trigger")
        assert notifier.notify() is False  # nothing to say: nothing sent
    assert receiver.recv() == "STATUS=ok\nX_BATCHSCOPE_TRACKED=12"
    assert receiver.recv() == "WATCHDOG=trigger"
    assert not receiver.pending()


def test_one_socket_is_reused_and_is_cloexec_nonblocking(path_receiver: Receiver) -> None:
    """All messages go through one socket that is close-on-exec and non-blocking."""
    notifier = _notifier(path_receiver)
    try:
        notifier.ready()
        first = notifier._sock
        notifier.watchdog()
        assert first is not None
        assert notifier._sock is first
        assert not os.get_inheritable(first.fileno())
        assert first.getblocking() is False
    finally:
        notifier.close()


def test_full_receive_queue_does_not_block(path_receiver: Receiver) -> None:
    """When nobody reads the socket, sends fail fast with False instead of blocking."""
    with _notifier(path_receiver) as notifier:
        results = [notifier.watchdog() for _ in range(5000)]
    assert results[0] is True
    assert False in results  # the receive queue (net.unix.max_dgram_qlen) filled up


def test_disabled_when_notify_socket_unset() -> None:
    """Without NOTIFY_SOCKET every call is a no-op returning False and nothing is opened."""
    notifier = SystemdNotifier.from_environ({})
    assert notifier.enabled is False
    assert notifier.ready() is False
    assert notifier.status("x") is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False
    assert notifier._sock is None
    notifier.close()


@pytest.mark.parametrize("value", ["", "@", "relative/notify.sock", "vsock:2:1234"])
def test_disabled_for_unsupported_addresses(value: str) -> None:
    """Empty, bare '@', relative and vsock: addresses disable the notifier."""
    notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": value})
    assert notifier.enabled is False
    assert notifier.ready() is False


def test_from_environ_defaults_to_os_environ(
    monkeypatch: pytest.MonkeyPatch, path_receiver: Receiver
) -> None:
    """from_environ() with no argument reads os.environ."""
    monkeypatch.setenv("NOTIFY_SOCKET", path_receiver.notify_socket)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    with SystemdNotifier.from_environ() as notifier:
        assert notifier.enabled
        assert notifier.watchdog_interval() == 15.0
        assert notifier.ready()
    assert path_receiver.recv() == "READY=1"


def test_no_exception_when_path_socket_went_away(path_receiver: Receiver) -> None:
    """If the notify socket disappears (systemd gone), sends return False and do not raise."""
    notifier = _notifier(path_receiver)
    assert notifier.ready()
    path_receiver.sock.close()
    os.unlink(path_receiver.notify_socket)
    assert notifier.watchdog() is False
    assert notifier.status("still alive") is False
    assert notifier.stopping() is False
    notifier.close()


def test_no_exception_when_abstract_socket_went_away(abstract_receiver: Receiver) -> None:
    """A closed abstract-namespace receiver makes sends return False without raising."""
    notifier = _notifier(abstract_receiver)
    assert notifier.ready()
    abstract_receiver.sock.close()
    assert notifier.watchdog() is False
    notifier.close()


def test_no_exception_for_a_path_that_never_existed(tmp_path: Path) -> None:
    """A NOTIFY_SOCKET path with nothing bound yields False, not an exception."""
    notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "missing.sock")})
    assert notifier.enabled
    assert notifier.ready() is False
    notifier.close()


def test_no_exception_for_an_overlong_path() -> None:
    """A path longer than sun_path allows is a failed send, not an exception."""
    notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": "/" + "x" * 300})
    assert notifier.ready() is False
    notifier.close()


def test_send_after_close_reopens(path_receiver: Receiver) -> None:
    """close() releases the socket; a later send opens a new one and still works."""
    notifier = _notifier(path_receiver)
    notifier.close()
    assert notifier.watchdog()
    notifier.close()
    assert path_receiver.recv() == "WATCHDOG=1"


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    """WATCHDOG_USEC=60000000 (WatchdogSec=60) gives a ping every 30 seconds."""
    notifier = SystemdNotifier.from_environ(
        {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "60000000"}
    )
    assert notifier.watchdog_interval() == 30.0


def test_watchdog_interval_for_this_pid() -> None:
    """WATCHDOG_PID equal to our pid keeps the watchdog enabled."""
    notifier = SystemdNotifier.from_environ(
        {"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}
    )
    assert notifier.watchdog_interval() == 5.0


def test_watchdog_interval_none_for_another_pid() -> None:
    """WATCHDOG_PID naming another process (inherited env) disables the watchdog."""
    notifier = SystemdNotifier.from_environ(
        {"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    )
    assert notifier.watchdog_interval() is None


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "-5"},
        {"WATCHDOG_USEC": "soon"},
        {"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "not-a-pid"},
    ],
)
def test_watchdog_interval_none_when_unset_or_invalid(env: dict[str, str]) -> None:
    """No, zero, negative or unparsable WATCHDOG_USEC (or a garbage WATCHDOG_PID) → None."""
    assert SystemdNotifier.from_environ(env).watchdog_interval() is None


def test_repr_mentions_state() -> None:
    """repr() shows whether the notifier is enabled (useful in startup logs)."""
    assert "enabled=False" in repr(SystemdNotifier.from_environ({}))
