"""The producer API for product services: validate, key by user, send, and account for it.

Delivery: each send gets a future; ``flush`` waits for all and raises the first failure, so
a caller that flushed without error knows every event reached the broker (acks=all).
Invalid events raise ``InvalidEvent`` before they leave the process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from types import TracebackType

from kafka import KafkaProducer
from kafka.errors import KafkaError

from streaming.events import Event, encode_event
from streaming.kafka_config import KafkaConfig
from streaming.topics import BrokerUnavailable, require_broker


class EventProducer:
    def __init__(self, kafka: KafkaConfig, topic: str) -> None:
        self.topic = topic
        self.bootstrap = kafka.bootstrap
        require_broker(kafka)
        try:
            self._producer = KafkaProducer(
                linger_ms=20, batch_size=256 * 1024, **kafka.producer_options()
            )
        except KafkaError:
            raise BrokerUnavailable(
                f"no Kafka broker at {kafka.bootstrap}: start one with `stackrec up`"
            ) from None
        self._pending: list = []

    def send(self, event: Event) -> None:
        """Validate and queue one event, keyed by its user so a user's events stay ordered."""
        value = encode_event(event)
        self._pending.append(
            self._producer.send(self.topic, key=event.user_id.encode(), value=value)
        )
        if len(self._pending) >= 10_000:
            self.flush()

    def flush(self) -> None:
        self._producer.flush()
        pending, self._pending = self._pending, []
        for future in pending:
            try:
                future.get(timeout=30)
            except KafkaError as error:
                raise BrokerUnavailable(f"send to {self.bootstrap} failed: {error}") from None

    def close(self) -> None:
        self._producer.close()

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if kind is None:
                self.flush()
        finally:
            self.close()


def send_events(
    producer: EventProducer,
    events: Iterable[Event],
    rate_per_s: float | None = None,
    on_sent: Callable[[int], None] | None = None,
) -> int:
    """Send events in order, at most ``rate_per_s`` per second; returns how many were sent."""
    sent = 0
    started = time.monotonic()
    for event in events:
        producer.send(event)
        sent += 1
        if rate_per_s:
            ahead_s = sent / rate_per_s - (time.monotonic() - started)
            if ahead_s > 0:
                time.sleep(ahead_s)
        if on_sent and sent % 1000 == 0:
            on_sent(1000)
    producer.flush()
    if on_sent and sent % 1000:
        on_sent(sent % 1000)
    return sent
