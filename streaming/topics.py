"""Topic administration: the interactions topic and its dead-letter twin, created up front.

Partition counts are fixed at creation (Tansu cannot grow them, and key-by-user ordering
depends on a stable count), so we create both topics before anything produces to them.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from streaming.kafka_config import KafkaConfig


class BrokerUnavailable(ConnectionError):
    """No Kafka broker answered at the configured bootstrap address."""


def dead_letter_topic(topic: str) -> str:
    return f"{topic}.dlq"


def require_broker(kafka: KafkaConfig) -> None:
    """Fail fast, in one line, when no broker listens at the bootstrap address."""
    if not kafka.reachable():
        raise BrokerUnavailable(
            f"no Kafka broker at {kafka.bootstrap}: start one with `stackrec up` "
            "or set STACKREC_KAFKA_BOOTSTRAP"
        )


@contextlib.contextmanager
def _admin(kafka: KafkaConfig) -> Iterator[KafkaAdminClient]:
    """An admin client for one call; Kafka errors become ``BrokerUnavailable`` in one line."""
    require_broker(kafka)
    try:
        admin = KafkaAdminClient(**kafka.client_options())
    except KafkaError:
        raise BrokerUnavailable(
            f"no Kafka broker at {kafka.bootstrap}: start one with `stackrec up` "
            "or set STACKREC_KAFKA_BOOTSTRAP"
        ) from None
    try:
        yield admin
    except KafkaError as error:
        raise BrokerUnavailable(f"Kafka at {kafka.bootstrap} failed: {error}") from None
    finally:
        admin.close()


def ensure_topics(kafka: KafkaConfig, topic: str, partitions: int) -> None:
    """Create ``topic`` and ``<topic>.dlq`` if they do not exist yet."""
    with _admin(kafka) as admin:
        existing = set(admin.list_topics())
        wanted = [
            NewTopic(name, partitions, 1)
            for name in (topic, dead_letter_topic(topic))
            if name not in existing
        ]
        if wanted:  # another process may create one between list and create: fine
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(wanted)


def topic_id(kafka: KafkaConfig, topic: str) -> str | None:
    """The broker's id of ``topic``; None if it does not exist (or the broker gives none)."""
    with _admin(kafka) as admin:
        described = admin.describe_topics([topic])
    found = [t.get("topic_id") for t in described if t.get("error_code", 0) == 0]
    value = uuid.UUID(str(found[0])) if found and found[0] else None
    return str(value) if value and value.int else None  # all zeros: the broker has no ids
