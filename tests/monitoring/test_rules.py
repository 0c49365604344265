"""The Prometheus config and alert rules are valid, unit-tested per alert, and use our metrics.

promtool (Debian ``prometheus``) does the checking: ``check config`` (which also loads the
rule files it names), ``check rules`` and ``test rules`` on monitoring/rules/tests/*.yml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.monitoring.promql_names import defined_series, metric_names

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
CONFIG = MONITORING / "prometheus.yml"
RULE_FILES = sorted((MONITORING / "rules").glob("*.yml"))
RULE_TESTS = sorted((MONITORING / "rules" / "tests").glob("*.yml"))
SEVERITIES = {"critical", "warning", "info"}


def _rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def _alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in _rules() if "alert" in rule}


def _ok(result: Any) -> bool:
    print(result.stdout, result.stderr)  # shown by pytest when the assertion fails
    return result.returncode == 0


def test_rule_files_exist() -> None:
    assert [p.name for p in RULE_FILES] == ["stackrec.rules.yml"]
    assert RULE_TESTS, "no promtool unit tests in monitoring/rules/tests"


def test_prometheus_config_is_valid(promtool) -> None:
    assert _ok(promtool("check", "config", str(CONFIG)))


def test_rules_are_valid(promtool) -> None:
    assert _ok(promtool("check", "rules", *map(str, RULE_FILES)))


def test_rule_unit_tests_pass(promtool) -> None:
    result = promtool("test", "rules", *map(str, RULE_TESTS))
    assert _ok(result)
    assert "FAILED" not in result.stdout


def test_config_scrapes_the_exporter_and_the_pushgateway() -> None:
    from flows.settings import Settings

    config = yaml.safe_load(CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {
        name: [t for static in job["static_configs"] for t in static["targets"]]
        for name, job in jobs.items()
    }
    port = Settings.model_fields["metrics_port"].default
    assert targets["stackrec-exporter"] == [f"127.0.0.1:{port}"]
    assert targets["stackrec-pushgateway"] == ["127.0.0.1:9091"]
    # pushed series keep their own job/instance (the deployment), not the gateway's
    assert jobs["stackrec-pushgateway"]["honor_labels"] is True
    assert config["rule_files"] == ["rules/*.yml"]


def test_alerts_are_the_documented_set() -> None:
    assert sorted(_alerts()) == [
        "StackrecConsumerLagGrowing",
        "StackrecDeadLetterRateHigh",
        "StackrecFreshnessTooOld",
        "StackrecGateRejectionsRepeated",
        "StackrecNoSuccessfulCycle",
        "StackrecPrequentialQualityDrop",
        "StackrecPublishFailures",
    ]


@pytest.mark.parametrize("name", sorted(_alerts()))
def test_alert_has_severity_and_annotations(name: str) -> None:
    alert = _alerts()[name]
    assert alert["labels"]["severity"] in SEVERITIES
    assert set(alert["annotations"]) == {"summary", "description", "runbook"}
    assert all(text.strip() for text in alert["annotations"].values())


@pytest.mark.parametrize("name", sorted(_alerts()))
def test_alert_is_unit_tested_firing_and_not_firing(name: str) -> None:
    cases = [
        case
        for path in RULE_TESTS
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case["alertname"] == name
    ]
    assert any(case.get("exp_alerts") for case in cases), f"{name}: no firing case"
    assert any(not case.get("exp_alerts") for case in cases), f"{name}: no quiet case"


def test_rules_use_only_defined_metrics() -> None:
    defined = set(defined_series()) | {rule["record"] for rule in _rules() if "record" in rule}
    used = {name for rule in _rules() for name in metric_names(str(rule["expr"]))}
    assert used, "no metric names found in the rules"
    assert used - defined == set()


def test_recorded_names_follow_the_convention() -> None:
    # level:metric:operations, the Prometheus recording-rule naming convention
    for rule in _rules():
        if "record" in rule:
            level, metric, operations = rule["record"].split(":")
            assert level and operations, rule["record"]
            assert metric.startswith("stackrec_"), rule["record"]


def test_rule_tests_reference_the_rule_file() -> None:
    for path in RULE_TESTS:
        files = yaml.safe_load(path.read_text())["rule_files"]
        assert [(path.parent / f).resolve() for f in files] == [p.resolve() for p in RULE_FILES]
