"""Helpers of the end-to-end tests: a daemon wired to the simulator in-process, a real
Prometheus server, and the external-tool policy (required under CI, skipped elsewhere)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from batchscope.runtime.daemon import Daemon
from batchscope.settings import Settings, load_settings
from batchscope.simulator.datadog import FakeDatadog
from batchscope.simulator.engine import FakeEngine
from batchscope.simulator.server import RunningSimulator

API_KEY = "s3cr3t-api-key"
APP_KEY = "s3cr3t-app-key"
TOKEN = "s3cr3t-token"
REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "batchscope-rules.yml"


def require_tool(name: str) -> str:
    """Path of an external tool; a missing one fails under CI and skips elsewhere."""
    path = shutil.which(name)
    if path is None:
        message = f"{name!r} is not on PATH (Debian: apt-get install prometheus)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; it is required when CI is set", pytrace=False)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for(condition: Callable[[], Any], *, timeout: float, what: str,
                   interval: float = 0.2) -> Any:
    """Await ``condition()`` (a coroutine function) until truthy; fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while True:
        last = await condition()
        if last:
            return last
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        await asyncio.sleep(interval)


# --------------------------------------------------------------------------- daemon


@dataclass
class Stack:
    sim: RunningSimulator
    daemon: Daemon
    http: aiohttp.ClientSession

    @property
    def engine(self) -> FakeEngine:
        return self.sim.engine

    @property
    def datadog(self) -> FakeDatadog:
        return self.sim.datadog

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.daemon.http_port}"

    async def watch(self, batch_id: str) -> None:
        async with self.http.post(
            self.base + "/api/v1/datadog/batches", json={"batch_id": batch_id},
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as resp:
            assert resp.status == 201, await resp.text()


def stack_settings(sim: RunningSimulator, engines: list[dict[str, Any]] | None = None,
                   **overrides: Any) -> Settings:
    engine_defaults = {"url": sim.engine_url, "poll_interval": 0.2, "request_timeout": 2,
                       "page_size": 50}
    engines = engines or [{"name": "prod"}]
    values: dict[str, Any] = {
        "state_path": ":memory:", "http.host": "127.0.0.1", "http.port": free_port(),
        "http.api_token": TOKEN, "retention": 3600, "shutdown_timeout": 2,
        "engines": [{**engine_defaults, **e} for e in engines],
        "datadog": [{"name": "ci", "url": sim.datadog_url, "api_key": API_KEY,
                     "app_key": APP_KEY, "poll_interval": 0.2, "request_timeout": 2,
                     "not_found_grace": 0.5}],
    }
    values.update(overrides)
    return load_settings(None, overrides=values, environ={})


# --------------------------------------------------------------------------- prometheus


@dataclass
class PrometheusServer:
    """A real ``prometheus`` subprocess with its own config and storage under ``workdir``."""

    binary: str
    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, config: dict[str, Any]) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_file = self.workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log = self.workdir / "prometheus.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [self.binary, f"--config.file={config_file}",
                 f"--storage.tsdb.path={self.workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of pytest must not reach it first
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        """Terminate (SIGTERM, then SIGKILL after 10 s); safe to call twice."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    async def get(self, http: aiohttp.ClientSession, path: str, **params: str) -> Any:
        async with http.get(self.url + path, params=params) as resp:
            body = await resp.json()
        assert body["status"] == "success", body
        return body["data"]

    async def wait_ready(self, http: aiohttp.ClientSession, timeout: float = 30.0) -> None:
        async def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"prometheus exited with {self.proc.returncode}:\n{self.output()}")
            try:
                async with http.get(self.url + "/-/ready") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await wait_for(ready, timeout=timeout, what="prometheus /-/ready")

    async def query(self, http: aiohttp.ClientSession, expr: str) -> dict[frozenset[Any], float]:
        """Instant query: ``{frozenset(labels.items()): value}``."""
        data = await self.get(http, "/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        return {frozenset(r["metric"].items()): float(r["value"][1]) for r in data["result"]}

    async def alerts(self, http: aiohttp.ClientSession) -> list[dict[str, Any]]:
        return list((await self.get(http, "/api/v1/alerts"))["alerts"])


async def run_tool(*argv: str, stdin: bytes = b"", timeout: float = 60) -> tuple[int, str]:
    """Run an external tool without blocking the event loop (the daemon lives on it)."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(stdin), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")
