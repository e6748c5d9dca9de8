"""deploy/prometheus: the alert rules pass promtool, their unit tests, and our conventions."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROM = REPO / "deploy" / "prometheus"
RULES_FILE = PROM / "batchscope-rules.yml"
RULE_TESTS = sorted((PROM / "tests").glob("*.test.yml"))
SCRAPE_CONFIG = PROM / "scrape-config.example.yml"

REQUIRED_ALERTS = {
    "BatchscopeTargetDown",
    "BatchscopeNoSuccessfulPoll",
    "BatchscopeEngineBatchFailed",
    "BatchscopeBatchStalled",
    "BatchscopeBatchSuspendedTooLong",
    "BatchscopeDatadogCIBatchFailed",
    "BatchscopeBatchVanished",
    "BatchscopeTransitionsMissing",
    "BatchscopePerBatchSeriesDropped",
}
SEVERITIES = {"critical", "warning", "info"}

Runner = Callable[..., subprocess.CompletedProcess[str]]


def _alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES_FILE.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_rules_pass_promtool_check(promtool: str, runner: Runner) -> None:
    """`promtool check rules` accepts the rules file (syntax, templates, lint)."""
    result = runner([promtool, "check", "rules", str(RULES_FILE)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize("test_file", RULE_TESTS, ids=lambda p: p.name)
def test_rule_unit_tests_pass(test_file: Path, promtool: str, runner: Runner) -> None:
    """`promtool test rules` passes for every unit-test file in deploy/prometheus/tests."""
    result = runner([promtool, "test", "rules", str(test_file)], cwd=test_file.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_exist() -> None:
    """There is at least one promtool unit-test file, and it loads the shipped rules file."""
    assert RULE_TESTS
    for test_file in RULE_TESTS:
        spec = yaml.safe_load(test_file.read_text())
        loaded = {(test_file.parent / f).resolve() for f in spec["rule_files"]}
        assert RULES_FILE.resolve() in loaded, test_file


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    """Each alert has a promtool case where it fires and one where it does not."""
    firing: set[str] = set()
    silent: set[str] = set()
    for test_file in RULE_TESTS:
        for case in yaml.safe_load(test_file.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {a["alert"] for a in _alerts()}
    assert names - firing == set(), "never shown firing"
    assert names - silent == set(), "never shown silent"


def test_fired_alerts_have_expected_annotations() -> None:
    """Every expected alert in the unit tests pins both rendered annotations."""
    for test_file in RULE_TESTS:
        for case in yaml.safe_load(test_file.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                for alert in check.get("exp_alerts") or []:
                    assert set(alert.get("exp_annotations", {})) == {"summary", "description"}


def test_required_alerts_are_present() -> None:
    """The operations issue's alerts all exist (extra ones are allowed)."""
    assert {a["alert"] for a in _alerts()} >= REQUIRED_ALERTS


@pytest.mark.parametrize("alert", _alerts(), ids=lambda a: str(a["alert"]))
def test_alert_has_severity_summary_description_and_runbook(alert: dict[str, Any]) -> None:
    """Every alert carries a severity label and summary/description with a runbook hint."""
    assert alert["labels"]["severity"] in SEVERITIES
    annotations = alert["annotations"]
    assert annotations["summary"].strip()
    assert "Runbook:" in annotations["description"]
    assert "\n" not in annotations["summary"]


def test_alerts_keep_target_labels() -> None:
    """No alert aggregates with `by (...)`: job/instance/namespace labels stay for routing."""
    for alert in _alerts():
        assert " by (" not in alert["expr"] and " by(" not in alert["expr"], alert["alert"]


def test_scrape_config_passes_promtool(promtool: str, runner: Runner) -> None:
    """The example prometheus.yml is valid and loads the rules file (promtool check config)."""
    result = runner([promtool, "check", "config", str(SCRAPE_CONFIG)], cwd=PROM)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "1 rule files found" in output
    assert RULES_FILE.name in output


def test_scrape_config_targets_batchscope() -> None:
    """One job scraping 127.0.0.1:9847/metrics every 15s; rule_files includes the rules."""
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    assert RULES_FILE.name in config["rule_files"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    job = jobs["batchscope"]
    assert job["scrape_interval"] == "15s"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job["static_configs"] == [{"targets": ["127.0.0.1:9847"]}]
