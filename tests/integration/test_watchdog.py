"""systemd integration of the daemon: READY=1, STATUS=, WATCHDOG=1 driven by poll progress."""

from __future__ import annotations

import socket
from pathlib import Path

import aiohttp

from batchscope.runtime.daemon import Daemon
from batchscope.runtime.sdnotify import SystemdNotifier
from batchscope.simulator.datadog import FakeDatadog
from batchscope.simulator.engine import FakeEngine
from batchscope.simulator.server import start_simulator
from harness import API_KEY, APP_KEY, daemon_settings
from helpers import LogLines, wait_until


class Datagrams:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.received: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.received.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.received

    def count(self, line: str) -> int:
        return sum(1 for msg in self.drain() if line in msg.splitlines())


async def test_wedged_poll_loop_stops_watchdog_pings(tmp_path: Path, logs: LogLines) -> None:
    """READY=1 once every target was polled; WATCHDOG=1 while loops progress; a loop stuck
    in a request stops the pings (so systemd restarts it) and /healthz turns 503."""
    sock_path = tmp_path / "notify.sock"
    listener = Datagrams(sock_path)
    notifier = SystemdNotifier.from_environ(
        {"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "100000"})
    engine = FakeEngine()
    async with await start_simulator(
        engine=engine, datadog=FakeDatadog(api_key=API_KEY, app_key=APP_KEY)
    ) as sim:
        settings = daemon_settings(sim, engine_target={"request_timeout": 30})
        daemon = Daemon(settings, notifier=notifier, heartbeat_grace=0.5)
        await daemon.start()
        try:
            await wait_until(lambda: listener.count("READY=1") == 1, what="READY=1")
            await wait_until(lambda: listener.count("WATCHDOG=1") >= 3, what="pings")
            assert any(m.startswith("STATUS=") for m in listener.drain())

            engine.inject("/batch/statistics", delay=3.0, times=None)  # the loop hangs
            await wait_until(lambda: not daemon.healthy(), timeout=5, what="unhealthy")
            pings = listener.count("WATCHDOG=1")
            # several watchdog periods (0.05 s) later: still no new ping, status goes on
            statuses = sum(1 for m in listener.drain() if m.startswith("STATUS="))
            await wait_until(lambda: sum(1 for m in listener.drain()
                                         if m.startswith("STATUS=")) >= statuses + 5)
            assert listener.count("WATCHDOG=1") == pings
            async with aiohttp.ClientSession() as http, http.get(
                f"http://127.0.0.1:{daemon.http_port}/healthz"
            ) as resp:
                assert resp.status == 503
            assert listener.count("READY=1") == 1
        finally:
            engine.clear_faults()
            await daemon.stop()
    assert "STOPPING=1" in listener.drain()

