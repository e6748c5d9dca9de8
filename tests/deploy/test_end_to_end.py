"""The shipped rules and dashboard queries against a real Prometheus scraping `batchscope demo`.

Loopback only: the demo serves its built-in simulator and /metrics on 127.0.0.1, and a
throw-away Prometheus (Debian package `prometheus`) scrapes it every second with the
alert rules loaded.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RULES_FILE = REPO / "deploy" / "prometheus" / "batchscope-rules.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "batchscope-dashboard.json"

pytestmark = pytest.mark.slow

Runner = Callable[..., subprocess.CompletedProcess[str]]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


@dataclass
class Stack:
    demo_url: str
    prom_url: str

    def query(self, expr: str) -> dict[str, Any]:
        url = f"{self.prom_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        status, body = _get(url)
        result: dict[str, Any] = json.loads(body) if body else {"status": f"http {status}"}
        return result


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, prometheus_server: str) -> Iterator[Stack]:
    """batchscope demo plus a Prometheus scraping it with the rules loaded (module scope)."""
    work = tmp_path_factory.mktemp("e2e")
    demo_port, prom_port = _free_port(), _free_port()

    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHSCOPE_", "DD_"))}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO / "daemon"), os.environ.get("PYTHONPATH")) if p
    )
    env.pop("NOTIFY_SOCKET", None)
    demo_log = (work / "demo.log").open("wb")
    demo = subprocess.Popen(
        [
            *(sys.executable, "-m", "batchscope", "demo"),
            *("--host", "127.0.0.1", "--port", str(demo_port), "--duration", "300"),
        ],
        stdout=demo_log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=work,
    )
    (work / "batchscope-rules.yml").write_text(RULES_FILE.read_text())
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["batchscope-rules.yml"],
        "scrape_configs": [
            {
                "job_name": "batchscope",
                "static_configs": [{"targets": [f"127.0.0.1:{demo_port}"]}],
            }
        ],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    prom_log = (work / "prometheus.log").open("wb")
    prom = subprocess.Popen(
        [
            prometheus_server,
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            "--log.level=warn",
        ],
        stdout=prom_log,
        stderr=subprocess.STDOUT,
        cwd=work,
    )
    stack = Stack(f"http://127.0.0.1:{demo_port}", f"http://127.0.0.1:{prom_port}")
    try:
        _wait(lambda: _get(f"{stack.demo_url}/readyz")[0] == 200, "batchscope demo /readyz")

        def scraped_enough() -> bool:
            result = stack.query('count_over_time(up{job="batchscope"}[1m]) >= 8')
            return bool(result.get("data", {}).get("result"))

        _wait(scraped_enough, "eight successful Prometheus scrapes")
        yield stack
    finally:
        _stop(prom)
        _stop(demo)
        demo_log.close()
        prom_log.close()


def test_exposition_passes_promtool_check_metrics(
    stack: Stack, promtool: str, runner: Runner
) -> None:
    """The demo's /metrics output, which rules and dashboard query, passes promtool's lint."""
    status, body = _get(f"{stack.demo_url}/metrics")
    assert status == 200
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=body,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_all_alert_rules_evaluate_cleanly(stack: Stack) -> None:
    """Prometheus loaded every shipped rule and evaluates each without error."""
    _, body = _get(f"{stack.prom_url}/api/v1/rules")
    groups = json.loads(body)["data"]["groups"]
    loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
    expected = {
        rule["alert"]
        for group in yaml.safe_load(RULES_FILE.read_text())["groups"]
        for rule in group["rules"]
    }
    assert set(loaded) == expected
    for name, rule in loaded.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))


def _dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "10s").replace("$__range", "1m")
            expr = re.sub(r"\$\{?(source|target)\}?", ".*", expr)
            out.append((f"{panel['title']} {target['refId']}", expr))
    return out


def test_every_dashboard_query_runs(stack: Stack) -> None:
    """Every dashboard query succeeds against real data; the core panels are not empty."""
    empty = []
    for where, expr in _dashboard_queries():
        result = stack.query(expr)
        assert result["status"] == "success", (where, result)
        if not result["data"]["result"]:
            empty.append(where)
    core = ("Target health", "Batches by state", "Poll latency", "Transitions by new state")
    assert not [w for w in empty if w.startswith(core)], empty


def test_target_health_shows_both_sources(stack: Stack) -> None:
    """The Target health query sees one healthy engine and one healthy datadog target."""
    result = stack.query('batchscope_target_up{source=~".*", target=~".*"}')["data"]["result"]
    assert {r["metric"]["source"] for r in result} == {"engine", "datadog"}
    assert all(r["value"][1] == "1" for r in result)
