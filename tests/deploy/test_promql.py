"""Every PromQL expression we ship (alert rules, Grafana dashboard) uses only real metrics.

The metric list below is this test's own copy of the contract's metric table (plus the two
reliability metrics), so a renamed or invented metric in a dashboard or rule fails here.
A small PromQL tokenizer separates metric names from functions, aggregation operators,
keywords, label names, strings, numbers, durations and Grafana variables.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RULES_FILE = REPO / "deploy" / "prometheus" / "batchscope-rules.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "batchscope-dashboard.json"

Runner = Callable[..., subprocess.CompletedProcess[str]]

# ---------------------------------------------------------------- the contract's metrics
# name -> (type, labels)
SPEC_METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "batchscope_batch_transitions_total": (
        "counter",
        frozenset({"source", "target", "from_state", "to_state"}),
    ),
    "batchscope_batches": ("gauge", frozenset({"source", "target", "state"})),
    "batchscope_batch_duration_seconds": ("histogram", frozenset({"source", "target", "state"})),
    "batchscope_batch_state": (
        "gauge",
        frozenset({"source", "target", "batch_id", "batch_type", "state"}),
    ),
    "batchscope_batch_jobs": ("gauge", frozenset({"target", "batch_id", "batch_type", "kind"})),
    "batchscope_ci_batch_results": ("gauge", frozenset({"target", "batch_id", "status"})),
    "batchscope_ci_test_results_total": (
        "counter",
        frozenset({"target", "test_public_id", "status"}),
    ),
    "batchscope_batch_series_dropped": ("gauge", frozenset()),
    "batchscope_target_up": ("gauge", frozenset({"source", "target"})),
    "batchscope_polls_total": ("counter", frozenset({"source", "target"})),
    "batchscope_poll_errors_total": ("counter", frozenset({"source", "target", "reason"})),
    "batchscope_poll_duration_seconds": ("histogram", frozenset({"source", "target"})),
    "batchscope_last_successful_poll_timestamp_seconds": (
        "gauge",
        frozenset({"source", "target"}),
    ),
    "batchscope_rate_limit_remaining": ("gauge", frozenset({"source", "target"})),
    "batchscope_build_info": ("gauge", frozenset({"version", "python_version"})),
    # reliability issue
    "batchscope_tracked_batches": ("gauge", frozenset()),
    "batchscope_batch_evictions_total": ("counter", frozenset()),
    # diagnosis issue (SPEC.md's metric table names it too)
    "batchscope_diagnosis_lookups_total": ("counter", frozenset({"source", "target", "outcome"})),
}
# Series Prometheus itself adds for every scrape target.
SCRAPE_SERIES: dict[str, frozenset[str]] = {"up": frozenset()}
# Labels the scrape adds to every series (and common relabelled ones).
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "service", "container"})

STATES = {"in_progress", "suspended", "stalled", "failed", "passed", "skipped", "cancelled"}
STATES |= {"vanished"}
LABEL_VALUES: dict[str, set[str]] = {
    "source": {"engine", "datadog"},
    "state": STATES,
    "to_state": STATES,
    "from_state": STATES | {"none"},
    "kind": {"total", "created", "completed", "remaining", "failed"},
    "reason": {
        "timeout",
        "connection",
        "http_4xx",
        "http_5xx",
        "rate_limited",
        "auth",
        "invalid_response",
    },
    "status": {"in_progress", "passed", "failed", "skipped"},
}


def allowed_series() -> dict[str, frozenset[str]]:
    """Queryable series names with their labels (histograms expand to _bucket/_sum/_count)."""
    out = dict(SCRAPE_SERIES)
    for name, (kind, labels) in SPEC_METRICS.items():
        if kind == "histogram":
            out[f"{name}_bucket"] = labels | {"le"}
            out[f"{name}_sum"] = labels
            out[f"{name}_count"] = labels
        else:
            out[name] = labels
    return out


# ---------------------------------------------------------------- the tokenizer

AGGREGATIONS = {
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
}
LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = LABEL_LIST_KEYWORDS | {"bool", "offset", "and", "or", "unless", "atan2"}
NUMBER_WORDS = {"inf", "nan"}

_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_NUMBER = re.compile(
    r"(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
    r"(?:(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*)?"
)
_VARIABLE = re.compile(r"\$(?:\{[^}]*\}|\w+)")
_MATCHER = re.compile(
    r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"
    r"(\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|`[^`]*`)\s*,?"
)


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[tuple[str, str, str], ...]  # (label, op, value)


def _skip_string(expr: str, i: int) -> int:
    quote = expr[i]
    j = i + 1
    while j < len(expr) and expr[j] != quote:
        j += 2 if expr[j] == "\\" and quote != "`" else 1
    return j + 1


def _closing(expr: str, i: int, open_: str, close: str) -> int:
    """Index of the bracket closing the one at *i* (strings skipped)."""
    depth = 0
    j = i
    while j < len(expr):
        ch = expr[j]
        if ch in "\"'`":
            j = _skip_string(expr, j)
            continue
        if ch == open_:
            depth += 1
        elif ch == close:
            depth -= 1
            if depth == 0:
                return j
        j += 1
    raise ValueError(f"unbalanced {open_!r} in {expr!r}")


def _parse_matchers(body: str) -> tuple[tuple[str, str, str], ...]:
    found = []
    pos = 0
    body = body.strip()
    while pos < len(body):
        m = _MATCHER.match(body, pos)
        if not m:
            raise ValueError(f"cannot parse label matchers {body!r}")
        raw = m.group(3)
        value = raw[1:-1] if raw[0] == "`" else json.loads('"' + raw[1:-1] + '"')
        found.append((m.group(1), m.group(2), value))
        pos = m.end()
    return tuple(found)


def _next_nonspace(expr: str, j: int) -> int:
    while j < len(expr) and expr[j].isspace():
        j += 1
    return j


def selectors(expr: str) -> list[Selector]:
    """Vector selectors (metric name + label matchers) in a PromQL expression."""
    out: list[Selector] = []
    i, n = 0, len(expr)
    while i < n:
        ch = expr[i]
        if ch in "\"'`":
            i = _skip_string(expr, i)
        elif ch == "#":
            newline = expr.find("\n", i)
            i = n if newline < 0 else newline + 1
        elif ch == "[":  # range or subquery durations
            i = _closing(expr, i, "[", "]") + 1
        elif ch == "$":
            m = _VARIABLE.match(expr, i)
            i = m.end() if m else i + 1
        elif ch == "{":  # selector without a leading name: {__name__="..."}
            end = _closing(expr, i, "{", "}")
            matchers = _parse_matchers(expr[i + 1 : end])
            names = [v for label, op, v in matchers if label == "__name__" and op == "="]
            out.extend(Selector(name, matchers) for name in names)
            i = end + 1
        elif ch.isdigit() or (ch == "." and i + 1 < n and expr[i + 1].isdigit()):
            m = _NUMBER.match(expr, i)
            assert m
            i = m.end()
        elif _IDENT.match(expr, i):
            m = _IDENT.match(expr, i)
            assert m
            word, end = m.group(0), m.end()
            after = _next_nonspace(expr, end)
            following = expr[after] if after < n else ""
            lowered = word.lower()
            if lowered in LABEL_LIST_KEYWORDS:
                # by (...), without (...), on (...), ignoring (...), group_left (...)
                i = _closing(expr, after, "(", ")") + 1 if following == "(" else end
                continue
            grouping = _IDENT.match(expr, after)
            not_a_metric = (
                lowered in KEYWORDS
                or lowered in NUMBER_WORDS
                or following == "("  # a function call or an aggregation operator
                or (  # sum by (x) (...)
                    lowered in AGGREGATIONS
                    and grouping is not None
                    and grouping.group(0).lower() in ("by", "without")
                )
            )
            if not_a_metric:
                i = end
            elif following == "{":
                close = _closing(expr, after, "{", "}")
                out.append(Selector(word, _parse_matchers(expr[after + 1 : close])))
                i = close + 1
            else:
                out.append(Selector(word, ()))
                i = end
        else:
            i += 1
    return out


def metric_names(expr: str) -> set[str]:
    return {s.metric for s in selectors(expr)}


# ---------------------------------------------------------------- the expressions we ship


def _rule_exprs() -> Iterator[tuple[str, str]]:
    for group in yaml.safe_load(RULES_FILE.read_text())["groups"]:
        for rule in group["rules"]:
            yield f"rule {rule.get('alert') or rule.get('record')}", rule["expr"]


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


_LABEL_VALUES = re.compile(r"^\s*label_values\((?:(.*),\s*)?([A-Za-z_][A-Za-z0-9_]*)\)\s*$")


def _dashboard_exprs() -> Iterator[tuple[str, str]]:
    dashboard = _dashboard()
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        m = _LABEL_VALUES.match(text)
        assert m, f"variable {variable['name']}: expected label_values(...), got {text!r}"
        if m.group(1):
            yield f"variable {variable['name']}", m.group(1)


ALL_EXPRS = list(_rule_exprs()) + list(_dashboard_exprs())


# ---------------------------------------------------------------- tokenizer self-tests


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("up", {"up"}),
        ('foo{a="b"} > 0', {"foo"}),
        (
            'histogram_quantile(0.9, sum by (le, job) (rate(x_bucket{a=~"$v"}[$__rate_interval])))',
            {"x_bucket"},
        ),
        (
            "sum(rate(a_total[5m])) by (job) / on (job) group_left (version) b_info",
            {"a_total", "b_info"},
        ),
        ("count without (batch_id, batch_type) (m) or n * 0", {"m", "n"}),
        ("time() - m offset 1h > bool 0", {"m"}),
        ('m{l="a{b}c", k=~"x|y"} unless ignoring (state) n', {"m", "n"}),
        ("topk(10, sum by (id) (increase(c_total[1h:5m]))) > 1e3", {"c_total"}),
        ('{__name__="via_name", job="j"}', {"via_name"}),
        ("sum without (from_state) (increase(t_total[10m])) > 0 and Inf > NaN", {"t_total"}),
        ('max by (target, batch_id) (jobs{kind="failed"})  # comment up', {"jobs"}),
        ("sum(x) by (a) + count(y) without (b)", {"x", "y"}),
    ],
)
def test_tokenizer_finds_exactly_the_metrics(expr: str, expected: set[str]) -> None:
    """Functions, aggregations, keywords, labels, numbers and variables are not metrics."""
    assert metric_names(expr) == expected


def test_tokenizer_reads_label_matchers() -> None:
    """Matchers inside {...} come back as (label, op, value), strings unescaped."""
    [selector] = selectors('m{a="x", b!="y\\"z", c=~"$v|w", d!~`raw`}')
    assert selector.matchers == (
        ("a", "=", "x"),
        ("b", "!=", 'y"z'),
        ("c", "=~", "$v|w"),
        ("d", "!~", "raw"),
    )


# ---------------------------------------------------------------- the real checks


def test_there_are_expressions_to_check() -> None:
    """The dashboard and the rules both contribute expressions (the check is not vacuous)."""
    sources = {where.split()[0] for where, _ in ALL_EXPRS}
    assert sources == {"rule", "panel", "variable"}
    assert len(ALL_EXPRS) > 20


@pytest.mark.parametrize(("where", "expr"), ALL_EXPRS, ids=[w for w, _ in ALL_EXPRS])
def test_expression_uses_only_contract_metrics_and_labels(where: str, expr: str) -> None:
    """Every metric exists in the contract; matcher labels and fixed values are real ones."""
    allowed = allowed_series()
    found = selectors(expr)
    assert found, f"{where}: no metric found in {expr!r}"
    for selector in found:
        assert selector.metric in allowed, f"{where}: unknown metric {selector.metric!r}"
        labels = allowed[selector.metric] | TARGET_LABELS
        for label, op, value in selector.matchers:
            assert label in labels, f"{where}: {selector.metric} has no label {label!r}"
            if op in ("=", "!=") and label in LABEL_VALUES:
                assert value in LABEL_VALUES[label], f"{where}: {label}={value!r} is not a value"


def test_dashboard_covers_the_operational_metrics() -> None:
    """The dashboard charts each metric an operator needs (see the operations issue)."""
    used = set().union(*(metric_names(e) for w, e in ALL_EXPRS if not w.startswith("rule")))
    assert used >= {
        "batchscope_target_up",
        "batchscope_last_successful_poll_timestamp_seconds",
        "batchscope_poll_errors_total",
        "batchscope_poll_duration_seconds_bucket",
        "batchscope_batches",
        "batchscope_batch_transitions_total",
        "batchscope_batch_state",
        "batchscope_batch_jobs",
        "batchscope_ci_batch_results",
        "batchscope_ci_test_results_total",
        "batchscope_batch_duration_seconds_bucket",
        "batchscope_rate_limit_remaining",
        "batchscope_batch_series_dropped",
    }


GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
    "${__range}": "1h",
}


def _substitute(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    expr = re.sub(r"\$\{?(source|target|datasource)\}?", ".*", expr)
    assert "$" not in expr, f"unsubstituted variable in {expr!r}"
    return expr


def test_dashboard_expressions_parse_with_promtool(
    tmp_path: Path, promtool: str, runner: Runner
) -> None:
    """Every dashboard expression is valid PromQL (checked by promtool as recording rules)."""
    exprs = [(w, e) for w, e in _dashboard_exprs()]
    rules = {
        "groups": [
            {
                "name": "batchscope-dashboard-syntax",
                "rules": [
                    {"record": f"batchscope_dashboard:expr_{i}", "expr": _substitute(e)}
                    for i, (_, e) in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-exprs.rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    result = runner([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout
