"""Real local services for the integration tests: one Tansu broker and one Redis per session.

Each test gets its own topic, Redis prefix and run directory (``stack`` fixture), so tests
share the servers but never each other's data.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from streaming import services
from streaming.kafka_config import KafkaConfig
from streaming.redis_store import RedisConfig


@dataclass(frozen=True)
class Stack:
    home: Path
    bootstrap: str
    redis_url: str
    topic: str
    model: str

    @property
    def kafka(self) -> KafkaConfig:
        return KafkaConfig(bootstrap=self.bootstrap)

    @property
    def redis(self) -> RedisConfig:
        return RedisConfig(url=self.redis_url, prefix=f"stackrec:{self.model}")

    def env(self) -> dict[str, str]:
        return {
            "STACKREC_HOME": str(self.home),
            "STACKREC_KAFKA_BOOTSTRAP": self.bootstrap,
            "STACKREC_REDIS_URL": self.redis_url,
            "STACKREC_TOPIC": self.topic,
            "STACKREC_MODEL": self.model,
        }


@pytest.fixture(scope="session")
def servers(tmp_path_factory):
    """(bootstrap, redis_url) of a broker and a Redis started for this test session."""
    run_dir = tmp_path_factory.mktemp("services")
    host = "127.0.0.1"
    kafka_port, redis_port = services.free_port(), services.free_port()
    services.start("broker", services.broker_command(host, kafka_port), host, kafka_port, run_dir)
    services.start(
        "redis", services.redis_command(host, redis_port, run_dir), host, redis_port, run_dir
    )
    yield f"{host}:{kafka_port}", f"redis://{host}:{redis_port}/0"
    services.stop(run_dir, "broker")
    services.stop(run_dir, "redis")


@pytest.fixture
def stack(servers, tmp_path, monkeypatch) -> Stack:
    """A fresh topic, model name and run directory on the session's services, in the env."""
    bootstrap, redis_url = servers
    name = uuid.uuid4().hex[:10]
    result = Stack(tmp_path / "home", bootstrap, redis_url, f"t-{name}", f"m-{name}")
    for key in [k for k in os.environ if k.startswith("STACKREC_")]:
        monkeypatch.delenv(key)
    for key, value in result.env().items():
        monkeypatch.setenv(key, value)
    return result


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test harness (a temporary API database) for every flow-run test."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
