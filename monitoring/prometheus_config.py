"""A runnable Prometheus config from the shipped ``prometheus.yml``, for the addresses in use.

The shipped file is the reviewed, promtool-checked source of truth, written for the default
local ports. ``stackrec up --with-monitoring`` and the integration test run Prometheus with a
copy in which only the scrape targets (and, for tests, the intervals) differ, and the rule
files are absolute paths, so the copy can live in a run directory away from ``monitoring/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

MONITORING_DIR = Path(__file__).resolve().parent
TEMPLATE = MONITORING_DIR / "prometheus.yml"

# scrape job name in the shipped config -> ScrapeTargets field
_JOBS = {
    "stackrec-exporter": "exporter",
    "stackrec-pushgateway": "pushgateway",
    "prometheus": "prometheus",
}


class PrometheusConfigError(ValueError):
    """The shipped config lacks a scrape job this module rewrites, or a target is malformed."""


@dataclass(frozen=True)
class ScrapeTargets:
    exporter: str = "127.0.0.1:9464"  # `stackrec serve` /metrics (STACKREC_METRICS_PORT)
    pushgateway: str = "127.0.0.1:9091"  # where short flow runs push (STACKREC_PUSHGATEWAY)
    prometheus: str = "127.0.0.1:9090"  # Prometheus scraping itself

    def __post_init__(self) -> None:
        for name in ("exporter", "pushgateway", "prometheus"):
            target = getattr(self, name)
            host, _, port = target.rpartition(":")
            if not host or not port.isdigit():
                raise PrometheusConfigError(f"{name} target {target!r}: need host:port")


def render(
    targets: ScrapeTargets = ScrapeTargets(),
    scrape_interval_s: float | None = None,
    template: Path = TEMPLATE,
) -> str:
    """The shipped config with ``targets``, absolute rule paths and an optional interval."""
    config = yaml.safe_load(template.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for job_name, field_name in _JOBS.items():
        if job_name not in jobs:
            raise PrometheusConfigError(f"{template} has no scrape job {job_name!r}")
        jobs[job_name]["static_configs"] = [{"targets": [getattr(targets, field_name)]}]
    config["rule_files"] = [
        str((template.parent / pattern).resolve()) for pattern in config.get("rule_files", [])
    ]
    if scrape_interval_s is not None:
        interval = f"{int(scrape_interval_s * 1000)}ms"
        config["global"].update(
            scrape_interval=interval, scrape_timeout=interval, evaluation_interval=interval
        )
    return yaml.safe_dump(config, sort_keys=False)
