"""Minimal, dependency-free client for the systemd service notification protocol.

The protocol (``sd_notify(3)``; systemd documents it as stable in
systemd.io/PORTABILITY_AND_STABILITY) is one ``AF_UNIX``/``SOCK_DGRAM`` datagram per
message, sent to the socket named in ``$NOTIFY_SOCKET``; the payload is newline-separated
``KEY=VALUE`` assignments. A leading ``/`` names a filesystem socket, a leading ``@`` a
socket in the Linux abstract namespace (the ``@`` stands for a NUL byte). Other forms
(``vsock:`` addresses used for VMs) are not supported: the notifier is then disabled.

Everything here is best effort. When ``$NOTIFY_SOCKET`` is unset (not started by systemd,
or not ``Type=notify``) every call is a no-op, and a failed send (socket gone, receive
queue full, message too large) is swallowed and reported as ``False``: supervision must
never take the daemon down. The socket is non-blocking, so a send never stalls the event
loop; calling the methods from the loop thread is fine.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping
from types import TracebackType

__all__ = ["SystemdNotifier"]


def _parse_address(value: str | None) -> str | None:
    """Map a ``$NOTIFY_SOCKET`` value to a socket address, or None if unusable."""
    if not value:
        return None
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None


def _parse_positive_int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        number = int(value.strip(), 10)
    except ValueError:
        return None
    return number if number > 0 else None


def _one_line(value: object) -> str:
    """Render a field value so it cannot break the ``KEY=VALUE`` line framing."""
    text = str(value)
    return " ".join(text.splitlines()) if ("\n" in text or "\r" in text) else text


class SystemdNotifier:
    """Send ``sd_notify`` messages to systemd; a no-op when not running under it.

    Build it with :meth:`from_environ`. Methods return ``True`` when the datagram was
    handed to the kernel and ``False`` when the notifier is disabled or the send failed;
    they never raise.
    """

    __slots__ = ("_address", "_sock", "_watchdog_pid", "_watchdog_usec")

    def __init__(
        self,
        address: str | None,
        *,
        watchdog_usec: int | None = None,
        watchdog_pid: int | None = None,
    ) -> None:
        """Create a notifier for a socket *address* (``None`` → disabled).

        *address* is an ``AF_UNIX`` address as the ``socket`` module takes it: a path, or a
        string starting with NUL for the abstract namespace.
        """
        self._address = address
        self._watchdog_usec = watchdog_usec
        self._watchdog_pid = watchdog_pid
        self._sock: socket.socket | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` (default: os.environ)."""
        env: Mapping[str, str] = os.environ if environ is None else environ
        address = _parse_address(env.get("NOTIFY_SOCKET"))
        watchdog_usec = _parse_positive_int(env.get("WATCHDOG_USEC"))
        raw_pid = env.get("WATCHDOG_PID")
        watchdog_pid: int | None = None
        if raw_pid is not None:
            watchdog_pid = _parse_positive_int(raw_pid)
            if watchdog_pid is None:
                # Set but garbage: sd_watchdog_enabled() treats this as "not for us".
                watchdog_usec = None
        return cls(address, watchdog_usec=watchdog_usec, watchdog_pid=watchdog_pid)

    @property
    def enabled(self) -> bool:
        """True when a usable ``$NOTIFY_SOCKET`` was given."""
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings (half of ``WatchdogSec=``), or None.

        None when the watchdog is off, or when ``$WATCHDOG_PID`` names another process
        (the variables were inherited from a parent that systemd supervises).
        """
        if self._watchdog_usec is None:
            return None
        if self._watchdog_pid is not None and self._watchdog_pid != os.getpid():
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def send(self, message: str) -> bool:
        """Send one raw datagram (``KEY=VALUE`` lines). Never raises."""
        if self._address is None:
            return False
        try:
            sock = self._sock
            if sock is None:
                sock = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
                )
                self._sock = sock
            sock.sendto(message.encode("utf-8", "replace"), self._address)
        except (OSError, ValueError):
            # OSError: socket gone (ENOENT/ECONNREFUSED), queue full (EAGAIN), too large.
            # ValueError: an address the socket module refuses (e.g. embedded NUL in a path).
            return False
        return True

    def notify(self, **fields: object) -> bool:
        """Send ``KEY=VALUE`` fields in one datagram, e.g. ``notify(READY=1, STATUS="ok")``.

        Values are rendered with ``str()`` and folded to a single line.
        """
        if not fields:
            return False
        return self.send("\n".join(f"{key}={_one_line(value)}" for key, value in fields.items()))

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (optionally with a ``STATUS=``): start-up is complete."""
        if status is None:
            return self.notify(READY=1)
        return self.notify(READY=1, STATUS=status)

    def status(self, text: str) -> bool:
        """``STATUS=<text>`` shown by ``systemctl status``; newlines become spaces."""
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the keep-alive ping; call it only when the poll loops progress."""
        return self.notify(WATCHDOG=1)

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1`` (optionally with a ``STATUS=``): shutdown has begun."""
        if status is None:
            return self.notify(STOPPING=1)
        return self.notify(STOPPING=1, STATUS=status)

    def close(self) -> None:
        """Close the socket; a later send reopens it."""
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> SystemdNotifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"SystemdNotifier(enabled={self.enabled}, "
            f"watchdog_interval={self.watchdog_interval()!r})"
        )
