"""The helpers the dashboard and rule tests rely on find exactly the names they should."""

from __future__ import annotations

import pytest

from tests.monitoring.promql_names import defined_series, metric_names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'histogram_quantile(0.95, sum by (le, s) (rate(a_bucket{m=~"m", x="{y}"}[1h])))',
            {"a_bucket"},
        ),
        ("time() - max by (model) (a) > 3 * 600 or absent(b)", {"a", "b"}),
        ("a / on (topic) group_left (reason) b offset 30m unless c", {"a", "b", "c"}),
        ('sum(rate(foo{a="b(c)"}[5m])) by (job) > 1e3 and bool 0x1F', {"foo"}),
        ("max_over_time(deriv(x:y:rate5m[15m:1m])[1h:]) > Inf", {"x:y:rate5m"}),
        ("vector(1)", set()),
    ],
)
def test_metric_names_finds_only_metrics(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_metric_names_rejects_name_matchers() -> None:
    with pytest.raises(ValueError, match="__name__"):
        metric_names('{__name__="stackrec_cycles_total"}')


def test_defined_series_expands_types() -> None:
    series = defined_series()
    # a counter: its samples and creation time, both named after the _total metric
    assert series["stackrec_cycles_total"] == "stackrec_cycles_total"
    assert series["stackrec_cycles_created"] == "stackrec_cycles_total"
    # a histogram: buckets, sum, count
    histogram = "stackrec_stage_duration_seconds"
    for suffix in ("_bucket", "_sum", "_count", "_created"):
        assert series[histogram + suffix] == histogram
    # a gauge: only its name
    assert series["stackrec_consumer_lag_events"] == "stackrec_consumer_lag_events"
    assert "stackrec_consumer_lag_events_total" not in series
    assert "stackrec_cycles" not in series
