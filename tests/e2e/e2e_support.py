"""Helpers of the end-to-end tests: the settings of a daemon wired to the simulator in-process
(the stack itself is harness.py's), a real Prometheus server, and the external-tool policy
(required under CI, skipped elsewhere)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from batchscope.settings import Settings
from batchscope.simulator.server import RunningSimulator
from harness import datadog_target, engine_target, free_port, make_settings
from helpers import eventually

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "batchscope-rules.yml"
POLL_INTERVAL = 0.2  # the daemon's, for both targets


def require_tool(name: str) -> str:
    """Path of an external tool; a missing one fails under CI and skips elsewhere."""
    path = shutil.which(name)
    if path is None:
        message = f"{name!r} is not on PATH (Debian: apt-get install prometheus)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; it is required when CI is set", pytrace=False)
        pytest.skip(message)
    return path


async def wait_for(condition: Callable[[], Awaitable[Any]], *, timeout: float, what: str,
                   interval: float = 0.2) -> Any:
    """``helpers.eventually``, at a pace that suits asking Prometheus."""
    return await eventually(condition, timeout, what, interval=interval)


# --------------------------------------------------------------------------- daemon


def stack_settings(sim: RunningSimulator, engines: list[dict[str, Any]] | None = None,
                   **overrides: Any) -> Settings:
    """``engines`` (each a target's overrides; default one named "prod") and a Datadog target
    "ci" on ``sim``, polled every ``POLL_INTERVAL``; ``overrides`` change the settings."""
    return make_settings(
        [engine_target(sim.engine_url, **{"poll_interval": POLL_INTERVAL, **e})
         for e in engines or [{}]],
        [datadog_target(sim.datadog_url, poll_interval=POLL_INTERVAL)],
        **overrides,
    )


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
