"""The Grafana dashboard is well formed, its PromQL is valid and it shows exactly our metrics.

No Grafana is needed: Grafana's template variables are replaced by sample values, each query
becomes a recording rule in a temporary rule file, and ``promtool check rules`` parses them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.monitoring.promql_names import defined_series, metric_names

GRAFANA = Path(__file__).resolve().parents[2] / "monitoring" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "stackrec.json"

# Metrics defined in monitoring/metrics.py that the dashboard leaves out, each with the reason.
# Every metric is on the dashboard today; an entry here must name a defined metric that is not.
DELIBERATELY_NOT_ON_DASHBOARD: dict[str, str] = {}

# Sample values for Grafana's built-in interval variables; the dashboard's own variables
# (model, topic) get "sample".
BUILTINS = {"__rate_interval": "1m", "__interval": "10m", "__range": "1d"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """All panels, rows' children included (collapsed rows keep theirs in "panels")."""
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def _queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every Prometheus annotation."""
    queries = [
        (f"panel {p['title']!r} {t['refId']}", t["expr"])
        for p in _panels(dashboard)
        for t in p.get("targets", [])
    ]
    queries += [
        (f"annotation {a['name']!r}", a["expr"])
        for a in dashboard["annotations"]["list"]
        if "expr" in a
    ]
    return queries


def _variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def _substitute(expr: str, names: set[str]) -> str:
    """The expression with Grafana variables replaced by values PromQL accepts."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in BUILTINS:
            return BUILTINS[name]
        if name in names:
            return "sample"
        raise ValueError(f"unknown Grafana variable ${name} in {expr!r}")

    return _VARIABLE.sub(value, expr)


def _check_with_promtool(promtool, exprs: list[str], tmp_path: Path):
    rules = [{"record": f"dashboard:query_{i}:check", "expr": e} for i, e in enumerate(exprs)]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    return promtool("check", "rules", str(path))


# --- structure --------------------------------------------------------------------------------
def test_dashboard_identity() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "stackrec-overview"
    assert dashboard["schemaVersion"] == 39
    assert dashboard["id"] is None  # provisioning assigns it
    assert set(_variables(dashboard)) == {"datasource", "model", "topic"}


def test_variables_are_multi_value_queries_on_defined_labels() -> None:
    variables = _variables(_dashboard())
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("model", "topic"):
        variable = variables[name]
        query = variable["query"]["query"]
        match = re.fullmatch(r"label_values\((\w+), (\w+)\)", query)
        assert match, query
        assert match.group(1) in defined_series()
        assert match.group(2) == name
        assert variable["definition"] == query
        assert variable["multi"] and variable["includeAll"] and variable["allValue"] == ".*"


def test_multi_value_variables_are_matched_by_regex() -> None:
    # model="$model" would break as soon as two models (or All) are selected
    for where, expr in _queries(_dashboard()):
        assert not re.search(r'[^=!]=\s*"\$', expr), where
        assert not re.search(r'!=\s*"\$', expr), where


def test_every_variable_is_used() -> None:
    dashboard = _dashboard()
    text = " ".join(expr for _, expr in _queries(dashboard))
    for name in ("model", "topic"):
        assert f"${name}" in text


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    panels = _panels(_dashboard())
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    taken: dict[tuple[int, int], str] = {}
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']!r} overlaps {taken[(x, y)]!r}"
                taken[(x, y)] = panel["title"]


def test_every_panel_queries_prometheus_through_the_variable() -> None:
    for panel in _panels(_dashboard()):
        if panel["type"] == "row":
            continue
        assert panel["type"] in {"timeseries", "stat", "bargauge"}, panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert target["expr"].strip() and target["legendFormat"], panel["title"]


def test_annotations_mark_stacking_and_promotions() -> None:
    annotations = {a["name"]: a for a in _dashboard()["annotations"]["list"] if "expr" in a}
    assert set(annotations) == {"Stacking", "Promotions"}
    assert metric_names(annotations["Stacking"]["expr"]) == {"stackrec_stacking_events_total"}
    assert metric_names(annotations["Promotions"]["expr"]) == {"stackrec_gate_decisions_total"}
    assert 'outcome="promoted"' in annotations["Promotions"]["expr"]
    for annotation in annotations.values():
        assert annotation["datasource"]["uid"] == "${datasource}"
        assert annotation["enable"] is True


# --- PromQL -----------------------------------------------------------------------------------
def test_substitute_replaces_grafana_variables() -> None:
    expr = 'rate(x{model=~"$model"}[$__rate_interval]) / ${topic} [$__interval] $__range'
    assert _substitute(expr, {"model", "topic"}) == 'rate(x{model=~"sample"}[1m]) / sample [10m] 1d'
    with pytest.raises(ValueError, match=r"\$nope"):
        _substitute("x{a=~'$nope'}", {"model"})


def test_every_query_is_valid_promql(promtool, tmp_path: Path) -> None:
    dashboard = _dashboard()
    names = set(_variables(dashboard))
    exprs = [_substitute(expr, names) for _, expr in _queries(dashboard)]
    assert len(exprs) >= 30
    result = _check_with_promtool(promtool, exprs, tmp_path)
    print(result.stdout, result.stderr)
    assert result.returncode == 0
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


def test_promtool_check_catches_a_broken_query(promtool, tmp_path: Path) -> None:
    # the check above would pass vacuously if promtool accepted anything
    result = _check_with_promtool(promtool, ["sum(rate(stackrec_cycles_total[5m])"], tmp_path)
    assert result.returncode != 0


def test_queries_use_only_defined_metrics() -> None:
    defined = defined_series()
    for where, expr in _queries(_dashboard()):
        names = metric_names(expr)
        assert names, f"{where}: no metric"
        assert names <= set(defined), f"{where}: undefined {sorted(names - set(defined))}"


def test_every_metric_is_shown_or_deliberately_left_out() -> None:
    defined = defined_series()
    shown = {defined.get(n, n) for _, expr in _queries(_dashboard()) for n in metric_names(expr)}
    every = set(defined.values())
    missing = every - shown - set(DELIBERATELY_NOT_ON_DASHBOARD)
    assert missing == set(), f"add a panel or a DELIBERATELY_NOT_ON_DASHBOARD reason: {missing}"
    for name, reason in DELIBERATELY_NOT_ON_DASHBOARD.items():
        assert name in every and name not in shown and reason.strip(), name


# --- provisioning -----------------------------------------------------------------------------
def test_datasource_provisioning_matches_the_dashboard() -> None:
    provisioned = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    (source,) = provisioned["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://127.0.0.1:9090"
    default = _variables(_dashboard())["datasource"]["current"]["value"]
    assert source["uid"] == default


def test_dashboard_provider_loads_json_files() -> None:
    provisioned = yaml.safe_load((GRAFANA / "provisioning/dashboards/provider.yml").read_text())
    (provider,) = provisioned["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].endswith("stackrec")
    assert provisioned["apiVersion"] == 1
