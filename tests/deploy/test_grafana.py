"""deploy/grafana/batchscope-dashboard.json: importable and wired to a chosen data source.

Which metrics the panels query is checked in test_promql.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "batchscope-dashboard.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def test_dashboard_metadata(dashboard: dict[str, Any]) -> None:
    """A stable uid and title, a recent schemaVersion, no hard-coded id."""
    assert dashboard["uid"] == "batchscope"
    assert dashboard["title"] == "batchscope"
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard.get("id") is None
    assert "batchscope" in dashboard["tags"]


def test_datasource_variable(dashboard: dict[str, Any]) -> None:
    """A `datasource` variable of type datasource restricted to Prometheus."""
    variable = _variables(dashboard)["datasource"]
    assert variable["type"] == "datasource"
    assert variable["query"] == "prometheus"


@pytest.mark.parametrize("name", ["source", "target"])
def test_label_values_variables(dashboard: dict[str, Any], name: str) -> None:
    """`source` and `target` come from label_values() on the data source, multi + All."""
    variable = _variables(dashboard)[name]
    assert variable["type"] == "query"
    assert variable["datasource"] == DATASOURCE
    query = variable["query"]["query"]
    assert query.startswith("label_values(")
    assert query.endswith(f", {name})")
    assert variable["multi"] is True
    assert variable["includeAll"] is True
    assert variable["allValue"] == ".*"


def test_every_query_uses_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    """Panels and their queries point at ${datasource}, never at a fixed data source uid."""
    for panel in _panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip()


def test_panel_ids_unique_and_titled(dashboard: dict[str, Any]) -> None:
    """Every panel has a unique id, a title, and (outside rows) a description."""
    panels = list(_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["title"].strip()
        if panel["type"] != "row":
            assert panel.get("description", "").strip(), panel["title"]


def test_grid_layout_fits_and_does_not_overlap(dashboard: dict[str, Any]) -> None:
    """Panels sit inside the 24-column grid without overlapping each other."""
    occupied: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0, panel["title"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in occupied, f"{panel['title']} overlaps {occupied[(x, y)]}"
                occupied[(x, y)] = panel["title"]


def test_filters_apply_to_labelled_panels(dashboard: dict[str, Any]) -> None:
    """Queries on per-target metrics honour the $target filter (and $source where it exists)."""
    per_target = (
        "batchscope_target_up",
        "batchscope_batches",
        "batchscope_batch_state",
        "batchscope_batch_jobs",
        "batchscope_batch_transitions_total",
        "batchscope_poll_",
        "batchscope_ci_",
        "batchscope_rate_limit_remaining",
    )
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            expr = target["expr"]
            if any(name in expr for name in per_target):
                assert 'target=~"$target"' in expr, (panel["title"], expr)
