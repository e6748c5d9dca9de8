"""A real Prometheus scrapes a real daemon, evaluates the shipped alert rules, and sees what
the daemon saw.

The daemon and the simulator run in-process on loopback; ``prometheus`` is a subprocess with
``scrape_interval: 1s`` and ``evaluation_interval: 1s``. Every wait polls Prometheus's HTTP API
with a deadline; there are no fixed sleeps.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from batchscope.model import Source, State
from e2e_support import RULES, PrometheusServer, require_tool, wait_for
from harness import Stack

pytestmark = pytest.mark.slow

ENGINE_ALERT = "BatchscopeEngineBatchFailed"
DATADOG_ALERT = "BatchscopeDatadogCIBatchFailed"
# The shipped rules hold BatchscopeEngineBatchFailed `for: 1m` (a batch with failed jobs is
# worth a page only if nobody retries them within a minute). Waiting a minute per test run is
# too slow, so the test loads a temporary copy of the rules file in which the `for:` of the
# alerts it asserts is shortened to FOR_IN_TEST; everything else (expressions, labels, the
# other rules) is loaded exactly as shipped.
FOR_IN_TEST = "2s"
TIMEOUT = 60.0


def rules_for_test(workdir: Path) -> tuple[Path, dict[str, Any]]:
    """A copy of the shipped rules with the asserted alerts' ``for:`` shortened."""
    if not RULES.exists():
        pytest.fail(f"{RULES} is missing")
    rules = yaml.safe_load(RULES.read_text())
    found = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") in (ENGINE_ALERT, DATADOG_ALERT):
                found.add(rule["alert"])
                if "for" in rule:
                    rule["for"] = FOR_IN_TEST
    assert found == {ENGINE_ALERT, DATADOG_ALERT}, f"alerts missing from {RULES}: {found}"
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "batchscope-rules.test.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path, rules


async def transitions(prom: PrometheusServer, http: aiohttp.ClientSession,
                      **labels: str) -> float | None:
    selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
    result = await prom.query(http, f"batchscope_batch_transitions_total{{{selector}}}")
    if not result:
        return None
    assert len(result) == 1, result
    return next(iter(result.values()))


def firing(alerts: list[dict[str, Any]], name: str, **labels: str) -> list[dict[str, Any]]:
    return [
        a for a in alerts
        if a["labels"].get("alertname") == name and a["state"] == "firing"
        and all(a["labels"].get(k) == v for k, v in labels.items())
    ]


async def test_prometheus_scrapes_transitions_and_fires_shipped_alerts(
    logs: Any, tmp_path: Path, stack_factory: Callable[..., Any],
    prometheus_factory: Callable[[dict[str, Any]], PrometheusServer],
) -> None:
    """Prometheus scraping the daemon every second records an engine batch going
    none -> in_progress -> failed and a Datadog CI batch going none -> in_progress -> failed in
    ``batchscope_batch_transitions_total`` (1 each), ``batchscope_target_up`` is 1 for both
    targets, every shipped rule loads and evaluates without error, and the shipped
    BatchscopeEngineBatchFailed (for the failed batch, with its batch_id) and
    BatchscopeDatadogCIBatchFailed (for the Datadog target) alerts reach state "firing"."""
    require_tool("prometheus")  # fails under CI when missing, skips elsewhere
    stack: Stack = await stack_factory()
    rules_path, rules = rules_for_test(tmp_path)
    prom = prometheus_factory({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                   "scrape_timeout": "1s"},
        "rule_files": [str(rules_path)],
        "scrape_configs": [{
            "job_name": "batchscope",
            "static_configs": [{"targets": [f"127.0.0.1:{stack.daemon.http_port}"]}],
        }],
    })
    async with aiohttp.ClientSession() as http:
        await prom.wait_ready(http)

        # Both targets up, as Prometheus sees it: from here on it has scraped every
        # transition counter at 0, so increase() in the Datadog rule sees the step to 1.
        async def targets_up() -> bool:
            up = await prom.query(http, "batchscope_target_up")
            return {dict(k)["source"]: v for k, v in up.items()} == {"engine": 1.0,
                                                                     "datadog": 1.0}

        await wait_for(targets_up, timeout=TIMEOUT, what="batchscope_target_up == 1 for both")
        scraped = await prom.query(http, 'up{job="batchscope"}')
        assert list(scraped.values()) == [1.0]

        # engine: in_progress, then failed jobs
        eng = stack.engine
        engine_batch = eng.create_batch("instance-migration", total_jobs=10)

        async def engine_in_progress() -> bool:
            return await transitions(prom, http, source="engine", target="prod",
                                     from_state="none", to_state="in_progress") == 1

        await wait_for(engine_in_progress, timeout=TIMEOUT, what="engine none->in_progress")
        eng.complete_jobs(engine_batch, 3)
        eng.fail_jobs(engine_batch, 2)

        # datadog: watched over the API, in_progress, then failed
        dd = stack.datadog
        ci_batch = dd.create_batch()
        await stack.watch(ci_batch)

        async def ci_in_progress() -> bool:
            return await transitions(prom, http, source="datadog", target="ci",
                                     from_state="none", to_state="in_progress") == 1

        await wait_for(ci_in_progress, timeout=TIMEOUT, what="datadog none->in_progress")
        dd.finish(ci_batch, "failed")

        async def both_failed() -> bool:
            engine = await transitions(prom, http, source="engine", target="prod",
                                       from_state="in_progress", to_state="failed")
            ci = await transitions(prom, http, source="datadog", target="ci",
                                   from_state="in_progress", to_state="failed")
            return engine == 1 and ci == 1

        await wait_for(both_failed, timeout=TIMEOUT, what="in_progress->failed for both")

        # The values Prometheus holds are exactly the transitions the daemon logged.
        every = await prom.query(http, "batchscope_batch_transitions_total > 0")
        seen = {(dict(k)["source"], dict(k)["from_state"], dict(k)["to_state"]): v
                for k, v in every.items()}
        assert seen == {
            ("engine", "none", "in_progress"): 1.0, ("engine", "in_progress", "failed"): 1.0,
            ("datadog", "none", "in_progress"): 1.0, ("datadog", "in_progress", "failed"): 1.0,
        }
        logged = {(line["source"], line["from_state"], line["to_state"])
                  for line in logs.events("batch.transition")}
        assert logged == set(seen)
        rec = stack.daemon.tracker.get(Source.ENGINE, "prod", engine_batch)
        assert rec is not None and rec.state is State.FAILED
        up = await prom.query(http, "batchscope_target_up")
        assert sorted((dict(k)["source"], dict(k)["target"], v) for k, v in up.items()) == [
            ("datadog", "ci", 1.0), ("engine", "prod", 1.0)]

        async def alerts_firing() -> list[dict[str, Any]] | None:
            alerts = await prom.alerts(http)
            engine = firing(alerts, ENGINE_ALERT, batch_id=engine_batch, target="prod",
                            batch_type="instance-migration")
            ci = firing(alerts, DATADOG_ALERT, target="ci")
            return alerts if engine and ci else None

        alerts = await wait_for(alerts_firing, timeout=TIMEOUT,
                                what=f"{ENGINE_ALERT} and {DATADOG_ALERT} firing")
        engine_alert = firing(alerts, ENGINE_ALERT)[0]
        assert engine_alert["labels"]["severity"] == "warning"
        assert engine_batch in engine_alert["annotations"]["summary"]
        assert len(firing(alerts, DATADOG_ALERT)) == 1

        # Every shipped rule is loaded, and none fails to evaluate against real data.
        groups = (await prom.get(http, "/api/v1/rules"))["groups"]
        loaded = {r["name"]: r for g in groups for r in g["rules"]}
        shipped = {r.get("alert") or r.get("record") for g in rules["groups"] for r in g["rules"]}
        assert set(loaded) == shipped
        broken = {name: r.get("lastError") for name, r in loaded.items()
                  if r.get("health") == "err"}
        assert broken == {}
