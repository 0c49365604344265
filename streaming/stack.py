"""The local stack as one unit: broker and Redis (and, on request, Prometheus and the
Pushgateway) up, down, and their health."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import redis
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from monitoring.prometheus_config import ScrapeTargets, render
from streaming import services
from streaming.kafka_config import KafkaConfig
from streaming.redis_store import RedisConfig

BROKER, REDIS = "broker", "redis"
PROMETHEUS, PUSHGATEWAY = "prometheus", "pushgateway"
MONITORING = (PROMETHEUS, PUSHGATEWAY)


@dataclass(frozen=True)
class MonitoringConfig:
    """Where the monitoring services listen and what Prometheus scrapes."""

    prometheus: tuple[str, int] = ("127.0.0.1", 9090)
    pushgateway: tuple[str, int] = ("127.0.0.1", 9091)
    exporter: tuple[str, int] = ("127.0.0.1", 9464)  # `stackrec serve` /metrics
    scrape_interval_s: float | None = None  # None: the shipped config's (15 s)

    @classmethod
    def of(
        cls,
        pushgateway: str | None,
        metrics_host: str,
        metrics_port: int,
        prometheus_port: int = 9090,
    ) -> MonitoringConfig:
        """From the settings: the Pushgateway (host:port), /metrics, and Prometheus's port."""
        gateway = cls.pushgateway
        if pushgateway:
            host, _, port = pushgateway.removeprefix("http://").rstrip("/").rpartition(":")
            if not port.isdigit():
                raise services.ServiceError(
                    f"STACKREC_PUSHGATEWAY={pushgateway!r}: expected host:port"
                )
            gateway = (host or "127.0.0.1", int(port))
        return cls(
            prometheus=("127.0.0.1", prometheus_port),
            pushgateway=gateway,
            exporter=(metrics_host, metrics_port),
        )


def up(run_dir: Path, kafka: tuple[str, int], redis_at: tuple[str, int]) -> dict[str, dict]:
    """Start both services (if not already ours and running) and wait until they answer."""
    started = {
        BROKER: services.start(BROKER, services.broker_command(*kafka), *kafka, run_dir),
        REDIS: services.start(
            REDIS, services.redis_command(*redis_at, run_dir), *redis_at, run_dir
        ),
    }
    return {
        name: {"address": f"{r.host}:{r.port}", "pid": r.pid, "log": r.log}
        for name, r in started.items()
    }


def up_monitoring(run_dir: Path, config: MonitoringConfig = MonitoringConfig()) -> dict[str, dict]:
    """Start the Pushgateway and Prometheus (data and config in ``run_dir``), wait for both.

    Prometheus runs the shipped ``monitoring/prometheus.yml`` with its targets pointed at
    ``config``, written to ``<run_dir>/prometheus.yml``.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    targets = ScrapeTargets(
        exporter=_address(config.exporter),
        pushgateway=_address(config.pushgateway),
        prometheus=_address(config.prometheus),
    )
    config_path = run_dir / "prometheus.yml"
    config_path.write_text(render(targets, config.scrape_interval_s))
    data_dir = run_dir / "prometheus-data"
    plan = {  # commands first: a missing binary fails before anything starts
        PUSHGATEWAY: (
            services.pushgateway_command(*config.pushgateway, run_dir),
            config.pushgateway,
            "STACKREC_PUSHGATEWAY",
        ),
        PROMETHEUS: (
            services.prometheus_command(*config.prometheus, config_path, data_dir),
            config.prometheus,
            "STACKREC_PROMETHEUS_PORT",
        ),
    }
    started: dict[str, services.ServiceRecord] = {}
    fresh: list[str] = []
    try:
        for name, (command, (host, port), setting) in plan.items():
            record = services.read_record(run_dir, name)
            if record is None or not services.is_running(record):
                fresh.append(name)
            started[name] = services.start(name, command, host, port, run_dir, port_setting=setting)
        for name, record in started.items():  # an open port is not yet a serving Prometheus
            _wait_http_ready(name, record)
    except services.ServiceError:
        for name in fresh:  # all or nothing: stop what this call started
            services.stop(run_dir, name)
        raise
    return {
        name: {"address": f"{r.host}:{r.port}", "pid": r.pid, "log": r.log}
        for name, r in started.items()
    }


def down(run_dir: Path) -> dict[str, bool]:
    """Stop the broker and Redis, and the monitoring services if `up` started them."""
    report = {name: services.stop(run_dir, name) for name in (BROKER, REDIS)}
    for name in MONITORING:
        if services.read_record(run_dir, name) is not None:
            report[name] = services.stop(run_dir, name)
    return report


def health(run_dir: Path, kafka: KafkaConfig, redis_config: RedisConfig) -> dict[str, dict]:
    """Whether each configured service answers a real request, and whether we started it."""
    report = {
        BROKER: {"address": kafka.bootstrap, "healthy": _broker_answers(kafka)},
        REDIS: {"address": redis_config.url, "healthy": _redis_answers(redis_config)},
    }
    for name in (BROKER, REDIS):
        record = services.read_record(run_dir, name)
        if record and services.is_running(record):
            report[name]["pid"] = record.pid
    for name in MONITORING:  # only when `up --with-monitoring` started them here
        record = services.read_record(run_dir, name)
        if record is not None:
            report[name] = {
                "address": f"{record.host}:{record.port}",
                "healthy": _http_ready(record.host, record.port),
            }
            if services.is_running(record):
                report[name]["pid"] = record.pid
    return report


def _address(host_port: tuple[str, int]) -> str:
    host, port = host_port
    return f"{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"


def _wait_http_ready(name: str, record: services.ServiceRecord, timeout_s: float = 30.0) -> None:
    """Until ``/-/ready`` answers 200: Prometheus opens its port, then answers 503 while it
    loads its TSDB and rules."""
    deadline = time.monotonic() + timeout_s
    while not _http_ready(record.host, record.port):
        if time.monotonic() > deadline:
            raise services.ServiceError(
                f"{name} on {record.host}:{record.port} did not become ready in {timeout_s:.0f} s;"
                f" see {record.log}"
            )
        time.sleep(0.1)


def _http_ready(host: str, port: int) -> bool:
    """Prometheus and the Pushgateway both answer ``/-/ready`` with 200 once serving."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/-/ready", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _broker_answers(kafka: KafkaConfig) -> bool:
    if not kafka.reachable():
        return False
    try:
        admin = KafkaAdminClient(**{**kafka.client_options(), "request_timeout_ms": 3000})
    except KafkaError:
        return False
    try:
        admin.list_topics()
        return True
    except KafkaError:
        return False
    finally:
        admin.close()


def _redis_answers(config: RedisConfig) -> bool:
    client = redis.Redis.from_url(
        config.url, socket_connect_timeout=1, socket_timeout=2, password=config.password
    )
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()
