"""The local stack as one unit: broker and Redis up, down, and their health."""

from __future__ import annotations

from pathlib import Path

import redis
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from streaming import services
from streaming.kafka_config import KafkaConfig
from streaming.redis_store import RedisConfig

BROKER, REDIS = "broker", "redis"


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


def down(run_dir: Path) -> dict[str, bool]:
    return {name: services.stop(run_dir, name) for name in (BROKER, REDIS)}


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
    return report


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
