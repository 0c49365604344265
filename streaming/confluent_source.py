"""The confluent-kafka (librdkafka) consumer behind the ``Source`` interface.

Optional (``pip install confluent-kafka``): several times faster than kafka-python at
consuming, chosen with ``ConsumerConfig(client="confluent")``. librdkafka retries a lost
broker in the background instead of raising, so a broker that dies mid-batch shows up as an
empty poll and then a failed commit, which we turn into ``BrokerUnavailable``.
"""

from __future__ import annotations

import uuid

from streaming.kafka_config import KafkaConfig
from streaming.source import Block, CommitRejected, OnAssign
from streaming.topics import BrokerUnavailable

try:
    from confluent_kafka import (
        Consumer,
        KafkaError,
        KafkaException,
        Message,
        TopicCollection,
        TopicPartition,
    )
    from confluent_kafka.admin import AdminClient
except ImportError:  # pragma: no cover - exercised only where the extra is missing
    Consumer = None


FETCH_QUEUE_BACKOFF_MS = 10


class ConfluentSource:
    """A consumer-group member of ``topic`` reading with confluent-kafka."""

    def __init__(
        self,
        kafka: KafkaConfig,
        topic: str,
        group_id: str,
        on_assign: OnAssign,
        session_timeout_ms: int,
        max_poll_interval_ms: int,
        max_poll_records: int,
    ) -> None:
        if Consumer is None:
            raise ImportError(
                "ConsumerConfig(client='confluent') needs confluent-kafka: "
                "pip install confluent-kafka==2.16.1"
            )
        self.topic, self.bootstrap = topic, kafka.bootstrap
        self._consumer = Consumer(
            {
                **kafka.confluent_options(),
                "group.id": group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                # librdkafka pauses a partition's fetches this long whenever its local queue
                # is over the thresholds (default 1 s): the queue fills while a batch is
                # validated and logged, and the next batch then stalls. 10 ms: no stall.
                "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
                "session.timeout.ms": session_timeout_ms,
                "heartbeat.interval.ms": max(100, session_timeout_ms // 3),
                "max.poll.interval.ms": max(max_poll_interval_ms, session_timeout_ms),
            }
        )
        self._max_poll_records = max_poll_records
        self._admin = AdminClient(kafka.confluent_options())  # for the topic's id only

        def assign(consumer, partitions) -> None:
            starts = on_assign([tp.partition for tp in partitions])
            for tp in partitions:
                if tp.partition in starts:
                    tp.offset = starts[tp.partition]
            consumer.assign(partitions)

        self._consumer.subscribe([topic], on_assign=assign)

    def poll(self, max_records: int, timeout_s: float) -> Block:
        try:
            messages = self._consumer.consume(
                min(max_records, self._max_poll_records), timeout=timeout_s
            )
        except KafkaException as error:
            raise self._failed(error) from None
        # map() over the C methods, not a comprehension: no bytecode per message, which is
        # most of what this path adds to librdkafka's own cost (~1 us of ~5 us per event)
        if any(map(Message.error, messages)):
            for m in messages:
                if m.error() is not None and m.error().code() != KafkaError._PARTITION_EOF:
                    raise self._failed(m.error())
            messages = [m for m in messages if m.error() is None]
        return Block(
            list(map(Message.partition, messages)),
            list(map(Message.offset, messages)),
            list(map(Message.value, messages)),
            messages,
            _key,
            _headers,
        )

    def assigned(self) -> set[int]:
        return {tp.partition for tp in self._consumer.assignment()}

    def topic_id(self) -> str | None:
        """Asked of the admin API (librdkafka's consumer metadata does not carry it), in the
        UUID form kafka-python gives, so a log can switch clients."""
        try:
            topics = self._admin.describe_topics(TopicCollection([self.topic]))
            found = topics[self.topic].result(timeout=10).topic_id
        except KafkaException as error:
            raise self._failed(error) from None
        if found is None:
            return None
        high = found.get_most_significant_bits() & (2**64 - 1)
        low = found.get_least_significant_bits() & (2**64 - 1)
        return str(uuid.UUID(int=(high << 64) | low)) if high or low else None

    def commit(self, offsets: dict[int, int]) -> None:
        try:
            self._consumer.commit(
                offsets=[TopicPartition(self.topic, p, o) for p, o in offsets.items()],
                asynchronous=False,
            )
        except KafkaException as error:
            code = error.args[0].code() if error.args else None
            if code in (
                KafkaError.REBALANCE_IN_PROGRESS,
                KafkaError.ILLEGAL_GENERATION,
                KafkaError.UNKNOWN_MEMBER_ID,
                KafkaError._ASSIGNMENT_LOST,
                KafkaError._STATE,
            ):
                raise CommitRejected(f"commit refused during a rebalance: {error}") from None
            raise self._failed(error) from None

    def lag(self, logged: dict[int, int]) -> int:
        """From the high watermarks librdkafka cached from fetches (no request), else asked;
        Tansu's can be short by the last batch, so each partition's lag is clamped at 0."""
        try:
            total = 0
            for tp in self._consumer.assignment():
                _, end = self._consumer.get_watermark_offsets(tp, cached=True)
                if end < 0:
                    _, end = self._consumer.get_watermark_offsets(tp, timeout=10)
                total += max(0, end - logged.get(tp.partition, 0))
            return total
        except KafkaException as error:
            raise self._failed(error) from None

    def caught_up(self, positions: dict[int, int]) -> bool:
        try:
            assigned = self._consumer.assignment()
            ends = [
                (tp.partition, self._consumer.get_watermark_offsets(tp, cached=True)[1])
                for tp in assigned
            ]
        except KafkaException as error:
            raise self._failed(error) from None
        return bool(ends) and all(end >= 0 and positions.get(p, 0) >= end for p, end in ends)

    def close(self) -> None:
        self._consumer.close()

    def _failed(self, error: object) -> BrokerUnavailable:
        return BrokerUnavailable(f"Kafka at {self.bootstrap} failed mid-batch: {error}")


def _key(message) -> bytes | None:
    return message.key()


def _headers(message) -> list[tuple[str, bytes]] | None:
    return message.headers()
