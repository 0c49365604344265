"""A real cycle's metrics reach a real Prometheus through the Pushgateway, and `stackrec up
--with-monitoring` runs both services under the local stack's start/stop discipline.

Needs Debian's ``prometheus`` and ``prometheus-pushgateway`` (CI installs them); skips without.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app, replay_table
from flows.settings import Settings
from monitoring.prometheus_config import (
    MONITORING_DIR,
    PrometheusConfigError,
    ScrapeTargets,
    render,
)
from stackrec.synthetic import StreamConfig, generate
from streaming import services
from streaming import stack as local_stack
from streaming.services import ServiceError
from streaming.stack import MonitoringConfig

HOST = "127.0.0.1"
N_EVENTS = 300
needs_binaries = pytest.mark.skipif(
    not (shutil.which("prometheus") and shutil.which("prometheus-pushgateway")),
    reason="prometheus / prometheus-pushgateway not installed (apt-get install both)",
)


def query(prometheus: tuple[str, int], promql: str) -> list[dict]:
    """The instant vector of ``promql`` from Prometheus's HTTP API."""
    url = f"http://{prometheus[0]}:{prometheus[1]}/api/v1/query?" + urllib.parse.urlencode(
        {"query": promql}
    )
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def wait_for_value(prometheus: tuple[str, int], promql: str, timeout_s: float = 30.0) -> dict:
    """The single series ``promql`` returns once Prometheus has scraped it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = query(prometheus, promql)
        if result:
            assert len(result) == 1, result
            return result[0]
        time.sleep(0.5)
    raise AssertionError(f"Prometheus never returned {promql} within {timeout_s} s")


@pytest.fixture
def monitoring(tmp_path):
    """Prometheus and a Pushgateway on free loopback ports, scraping every second."""
    run_dir = tmp_path / "monitoring"
    config = MonitoringConfig(
        prometheus=(HOST, services.free_port()),
        pushgateway=(HOST, services.free_port()),
        exporter=(HOST, services.free_port()),
        scrape_interval_s=1,
    )
    try:
        local_stack.up_monitoring(run_dir, config)
        yield config
    finally:
        for name in local_stack.MONITORING:
            services.stop(run_dir, name)


# --- the rendered config -----------------------------------------------------------------------
def test_render_points_the_shipped_config_at_the_given_targets():
    targets = ScrapeTargets(exporter="10.0.0.5:1", pushgateway="gw:2", prometheus="127.0.0.1:3")
    config = yaml.safe_load(render(targets, scrape_interval_s=0.5))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["stackrec-exporter"]["static_configs"] == [{"targets": ["10.0.0.5:1"]}]
    assert jobs["stackrec-pushgateway"]["static_configs"] == [{"targets": ["gw:2"]}]
    assert jobs["stackrec-pushgateway"]["honor_labels"] is True
    assert jobs["prometheus"]["static_configs"] == [{"targets": ["127.0.0.1:3"]}]
    assert config["rule_files"] == [str(MONITORING_DIR / "rules" / "*.yml")]
    assert config["global"]["scrape_interval"] == "500ms"
    assert config["global"]["evaluation_interval"] == "500ms"
    assert config["global"]["external_labels"] == {"stack": "stackrec-local"}


def test_render_keeps_the_shipped_intervals_by_default():
    shipped = yaml.safe_load((MONITORING_DIR / "prometheus.yml").read_text())
    assert yaml.safe_load(render())["global"] == shipped["global"]


def test_a_target_without_a_port_is_refused():
    with pytest.raises(PrometheusConfigError, match="pushgateway target 'gateway': need host:port"):
        ScrapeTargets(pushgateway="gateway")


def test_the_rendered_config_is_valid_anywhere(promtool, tmp_path):
    path = tmp_path / "elsewhere" / "prometheus.yml"
    path.parent.mkdir()
    path.write_text(render(ScrapeTargets(exporter="127.0.0.1:19464"), scrape_interval_s=1))
    result = promtool("check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout + result.stderr


# --- services ----------------------------------------------------------------------------------
def test_missing_binaries_name_the_apt_packages(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: nothing to find
    with pytest.raises(ServiceError) as error:
        local_stack.up_monitoring(tmp_path / "run")
    assert str(error.value) == (
        "prometheus-pushgateway is not installed: apt-get install prometheus prometheus-pushgateway"
    )
    assert not (tmp_path / "run" / "pushgateway.json").exists()


@needs_binaries
def test_monitoring_services_start_answer_and_stop(monitoring, tmp_path):
    run_dir = tmp_path / "monitoring"
    records = {name: services.read_record(run_dir, name) for name in local_stack.MONITORING}
    assert all(r is not None and services.is_running(r) for r in records.values())
    prometheus = records["prometheus"]
    assert f"--storage.tsdb.path={run_dir / 'prometheus-data'}" in prometheus.command
    assert f"--web.listen-address={HOST}:{monitoring.prometheus[1]}" in prometheus.command
    # Prometheus loaded the alert rules through the rendered config's absolute path
    with urllib.request.urlopen(f"http://{HOST}:{monitoring.prometheus[1]}/api/v1/rules") as r:
        groups = json.loads(r.read())["data"]["groups"]
    assert any(
        rule.get("name") == "StackrecNoSuccessfulCycle" for g in groups for rule in g["rules"]
    )

    assert local_stack.down(run_dir) == {
        "broker": False,
        "redis": False,
        "prometheus": True,
        "pushgateway": True,
    }
    assert not any(services.port_open(HOST, r.port) for r in records.values())
    assert local_stack.down(run_dir) == {"broker": False, "redis": False}


@needs_binaries
def test_a_busy_prometheus_port_starts_nothing(tmp_path):
    run_dir = tmp_path / "run"
    gateway = services.free_port()
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = MonitoringConfig(prometheus=(HOST, port), pushgateway=(HOST, gateway))
        with pytest.raises(ServiceError) as error:
            local_stack.up_monitoring(run_dir, config)
    assert str(error.value) == (
        f"prometheus: port {HOST}:{port} is busy; stop what uses it or choose another port "
        "(STACKREC_PROMETHEUS_PORT)"
    )
    # the Pushgateway this call had started is stopped again
    assert services.read_record(run_dir, "pushgateway") is None
    assert not services.port_open(HOST, gateway)


# --- a real cycle, read back through Prometheus ----------------------------------------------
@pytest.mark.integration
@needs_binaries
def test_a_cycles_metrics_reach_prometheus_through_the_pushgateway(
    stack, prefect_harness, monitoring
):
    from flows.cycle import continual_cycle

    table = generate(StreamConfig(n_events=N_EVENTS, n_users=40, n_items=120, seed=5))
    replay_table(Settings.load(), table, progress=False)
    report = continual_cycle(
        overrides={
            "pushgateway": f"{HOST}:{monitoring.pushgateway[1]}",
            "train_steps": 5,
            "batch_max_wait_s": 5,
            "dim": 16,
        }
    )
    assert report["outcome"] == "published" and report["version"] == 1

    at = monitoring.prometheus
    version = wait_for_value(at, f'stackrec_published_version{{model="{stack.model}"}}')
    # honor_labels keeps the push's grouping key: one group per model, not per run
    assert version["metric"]["job"] == "stackrec"
    assert version["metric"]["instance"] == stack.model
    assert float(version["value"][1]) == 1.0
    logged = wait_for_value(at, f'stackrec_events_logged_total{{topic="{stack.topic}"}}')
    assert float(logged["value"][1]) == N_EVENTS
    consumed = wait_for_value(at, f'stackrec_events_consumed_total{{topic="{stack.topic}"}}')
    assert float(consumed["value"][1]) == N_EVENTS
    cycles = wait_for_value(
        at, f'stackrec_cycles_total{{model="{stack.model}", outcome="published"}}'
    )
    assert float(cycles["value"][1]) == 1.0
    depth = wait_for_value(at, f'stackrec_model_depth_blocks{{model="{stack.model}"}}')
    assert float(depth["value"][1]) == report["model_shape"]["depth"]
    success = wait_for_value(
        at, f'stackrec_last_success_timestamp_seconds{{model="{stack.model}"}}'
    )
    assert abs(float(success["value"][1]) - time.time()) < 120
    stages = query(at, f'stackrec_stage_duration_seconds_count{{model="{stack.model}"}}')
    assert {s["metric"]["stage"] for s in stages} >= {"evaluate", "train", "register", "publish"}


# --- the CLI ------------------------------------------------------------------------------------
@pytest.mark.integration
@needs_binaries
def test_stackrec_up_with_monitoring_then_status_then_down(tmp_path, monkeypatch):
    if services.port_open(HOST, MonitoringConfig().prometheus[1]):
        pytest.skip("port 9090 is busy; `stackrec up --with-monitoring` runs Prometheus there")
    for key in [k for k in os.environ if k.startswith("STACKREC_")]:
        monkeypatch.delenv(key)
    gateway, metrics_port = services.free_port(), services.free_port()
    env = {
        "STACKREC_HOME": str(tmp_path / "home"),
        "STACKREC_KAFKA_BOOTSTRAP": f"{HOST}:{services.free_port()}",
        "STACKREC_REDIS_URL": f"redis://{HOST}:{services.free_port()}/0",
        "STACKREC_PUSHGATEWAY": f"{HOST}:{gateway}",
        "STACKREC_METRICS_PORT": str(metrics_port),
    }
    runner = CliRunner()
    run_dir = tmp_path / "home" / "run"
    try:
        up = runner.invoke(app, ["up", "--with-monitoring", "--json"], env=env)
        assert up.exit_code == 0, up.output
        started = json.loads(up.stdout)
        assert started["prometheus"]["address"] == f"{HOST}:9090"
        assert started["pushgateway"]["address"] == f"{HOST}:{gateway}"
        scrape = yaml.safe_load(Path(run_dir / "prometheus.yml").read_text())["scrape_configs"]
        assert scrape[0]["static_configs"] == [{"targets": [f"{HOST}:{metrics_port}"]}]

        status = runner.invoke(app, ["status", "--json"], env=env)
        assert status.exit_code == 0, status.output
        health = json.loads(status.stdout)
        assert set(health) == {"broker", "redis", "prometheus", "pushgateway"}
        assert all(v["healthy"] for v in health.values())
        assert health["prometheus"]["pid"] == started["prometheus"]["pid"]
    finally:
        down = runner.invoke(app, ["down"], env=env)
    assert down.exit_code == 0, down.output
    assert down.stdout.splitlines() == [
        "broker: stopped",
        "redis: stopped",
        "prometheus: stopped",
        "pushgateway: stopped",
    ]


# --- counters keep counting across flow runs ----------------------------------------------------
RUN_ONCE = """
import sys
from monitoring import metrics
gateway, model = sys.argv[1:]
metrics.restore(gateway, "stackrec", model)
metrics.CYCLES.labels(model, "published").inc()
metrics.CYCLE_DURATION.labels(model).observe(3.0)
metrics.push(gateway, "stackrec", model)
"""


def pushed(gateway: str, sample: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{gateway}/metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample and s.labels.get("instance") == "restored":
                return s.value
    return None


@pytest.mark.integration
@needs_binaries
def test_each_flow_run_process_adds_to_the_pushed_totals_instead_of_replacing_them(monitoring):
    """Three processes, as three flow runs of a process worker: the gateway shows 3 cycles."""
    import subprocess
    import sys

    gateway = f"{HOST}:{monitoring.pushgateway[1]}"
    root = Path(__file__).resolve().parents[2]
    for _ in range(3):
        subprocess.run([sys.executable, "-c", RUN_ONCE, gateway, "restored"], cwd=root, check=True)
    assert pushed(gateway, "stackrec_cycles_total") == 3
    assert pushed(gateway, "stackrec_cycle_duration_seconds_count") == 3
    assert pushed(gateway, "stackrec_cycle_duration_seconds_sum") == 9.0


def test_an_unreachable_pushgateway_is_a_warning_not_a_failed_cycle(caplog):
    from flows.pushed import push_metrics, restore_metrics

    settings = Settings.load(pushgateway=f"{HOST}:{services.free_port()}")
    restore_metrics(settings)
    push_metrics(settings)
    assert caplog.text.count("pushgateway") == 2
