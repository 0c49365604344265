"""Metric names: those monitoring.metrics defines, and those a PromQL expression references.

No PromQL parser in Python is needed for this: strings, label matchers, range brackets and
grouping label lists are cut out, and the identifiers left that are not functions (followed by
a parenthesis), keywords or numbers are metric names. promtool checks the syntax separately.
"""

from __future__ import annotations

import re

from monitoring.metrics import REGISTRY

# Series each metric type exposes, by suffix added to the family name prometheus_client reports.
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}
_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "and",
    "or",
    "unless",
    "atan2",
    "inf",
    "nan",
}
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.])[A-Za-z_:][\w:]*(?![\w:]|\s*\()")


def defined_series() -> dict[str, str]:
    """Every series name the registry can expose, mapped to its metric's name in metrics.py.

    Counters are named with ``_total`` (as in metrics.py), histograms by their base name.
    """
    series: dict[str, str] = {}
    for family in REGISTRY.collect():
        name = family.name + "_total" if family.type == "counter" else family.name
        for suffix in _SUFFIXES[family.type]:
            series[family.name + suffix] = name
    return series


def metric_names(expr: str) -> set[str]:
    """Metric (or recorded series) names referenced by a PromQL expression."""
    if "__name__" in expr:
        raise ValueError(f"select metrics by name, not by __name__ matchers: {expr!r}")
    text = _STRING.sub(" ", expr)
    text = _MATCHERS.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    text = _RANGES.sub(" ", text)
    return {name for name in _IDENTIFIER.findall(text) if name.lower() not in _KEYWORDS}
