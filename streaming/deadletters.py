"""Dead letters: rejected messages kept in ``<topic>.dlq`` with their original bytes and why.

Each dead letter carries the original key and value and headers ``reason`` (low-cardinality,
the metric label), ``detail``, ``source_topic``, ``source_partition`` and ``source_offset``.
Delivery is at least once: a crash after the rejects were flushed but before the batch was
logged sends them again on the retry, so readers deduplicate by source partition and offset
(``read_dead_letters`` does).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError, MessageSizeTooLargeError

from streaming.events import Rejection
from streaming.kafka_config import KafkaConfig
from streaming.topics import BrokerUnavailable, dead_letter_topic

KEEP_BYTES = 64 * 1024  # what is kept of a message too large for the dead-letter topic


@dataclass(frozen=True)
class DeadLetter:
    key: bytes | None
    value: bytes | None
    reason: str
    detail: str
    source_topic: str
    source_partition: int
    source_offset: int
    dlq_partition: int = -1  # where it sits in the dead-letter topic (when read back)
    dlq_offset: int = -1
    truncated_from: int | None = None  # original size, when only a prefix could be kept


def headers_of(letter: DeadLetter) -> list[tuple[str, bytes]]:
    headers = [
        ("reason", letter.reason.encode()),
        ("detail", letter.detail.encode("utf-8", "replace")),
        ("source_topic", letter.source_topic.encode()),
        ("source_partition", str(letter.source_partition).encode()),
        ("source_offset", str(letter.source_offset).encode()),
    ]
    if letter.truncated_from is not None:
        headers.append(("truncated_from", str(letter.truncated_from).encode()))
    return headers


class DeadLetterSender:
    """One producer to ``<topic>.dlq``, opened on the first reject; ``flush`` makes the sent
    letters durable (acks=all) and raises ``BrokerUnavailable`` if any failed.

    A message too large for the dead-letter topic (the client's or the broker's limit) is kept
    as its first ``KEEP_BYTES`` with a ``truncated_from`` header, rather than failing the batch
    over and over (a poison message).
    """

    def __init__(self, kafka: KafkaConfig, topic: str) -> None:
        self.kafka, self.topic = kafka, topic
        self._producer: KafkaProducer | None = None
        self._pending: list[tuple[object, DeadLetter, str]] = []

    def send(
        self, key: bytes | None, value: bytes | None, partition: int, offset: int, why: Rejection
    ) -> None:
        letter = DeadLetter(key, value, why.reason, why.detail, self.topic, partition, offset)
        self.send_letter(letter, dead_letter_topic(self.topic))

    def send_letter(self, letter: DeadLetter, topic: str) -> None:
        """Queue ``letter`` (headers included) for ``topic``."""
        try:
            if self._producer is None:
                self._producer = KafkaProducer(
                    linger_ms=5, batch_size=1 << 20, **self.kafka.producer_options()
                )
            try:
                future = self._send(letter, topic)
            except MessageSizeTooLargeError:
                letter = _truncated(letter)
                future = self._send(letter, topic)
        except KafkaError as error:
            raise self._failed(error) from None
        self._pending.append((future, letter, topic))

    def flush(self) -> None:
        if self._producer is None:
            return
        pending, self._pending = self._pending, []
        try:
            self._producer.flush()
            retry = []
            for future, letter, topic in pending:
                try:
                    future.get(timeout=30)
                except MessageSizeTooLargeError:  # the broker's limit is lower than ours
                    if letter.truncated_from is not None:
                        raise
                    retry.append(self._send(_truncated(letter), topic))
            self._producer.flush()
            for future in retry:
                future.get(timeout=30)
        except KafkaError as error:
            raise self._failed(error) from None

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()
            self._producer = None

    def _send(self, letter: DeadLetter, topic: str):
        return self._producer.send(
            topic, key=letter.key, value=letter.value, headers=headers_of(letter)
        )

    def _failed(self, error: Exception) -> BrokerUnavailable:
        return BrokerUnavailable(f"dead letter to {self.kafka.bootstrap} failed: {error}")


def _truncated(letter: DeadLetter) -> DeadLetter:
    size = len(letter.value or b"")
    return replace(letter, value=(letter.value or b"")[:KEEP_BYTES], truncated_from=size)


def read_dead_letters(
    kafka: KafkaConfig, topic: str, idle_s: float = 0.5, timeout_s: float = 30.0
) -> list[DeadLetter]:
    """Every letter in ``<topic>.dlq`` from the beginning, in partition then offset order,
    without joining a group (reading changes nothing). Copies a crash re-sent are kept: see
    ``unique_by_source``. Reads to the end offsets, then until a poll idles ``idle_s``."""
    consumer = _reader(kafka)
    try:
        dlq = dead_letter_topic(topic)
        partitions = [
            TopicPartition(dlq, p) for p in sorted(consumer.partitions_for_topic(dlq) or ())
        ]
        if not partitions:
            return []
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        letters: list[DeadLetter] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            polled = consumer.poll(timeout_ms=int(idle_s * 1000), max_records=10_000)
            for records in polled.values():
                letters += [_letter(r) for r in records]
            at_end = all(consumer.position(tp) >= ends[tp] for tp in partitions)
            if not polled and at_end:
                break
    except KafkaError as error:
        raise BrokerUnavailable(
            f"reading {topic}.dlq at {kafka.bootstrap} failed: {error}"
        ) from None
    finally:
        consumer.close(autocommit=False)
    return sorted(letters, key=lambda x: (x.dlq_partition, x.dlq_offset))


def unique_by_source(letters: list[DeadLetter]) -> list[DeadLetter]:
    """The first copy of each source message (dead letters are at least once)."""
    seen: set[tuple[str, int, int]] = set()
    unique: list[DeadLetter] = []
    for letter in letters:
        source = (letter.source_topic, letter.source_partition, letter.source_offset)
        if source not in seen:
            seen.add(source)
            unique.append(letter)
    return unique


def _reader(kafka: KafkaConfig) -> KafkaConsumer:
    try:
        return KafkaConsumer(enable_auto_commit=False, **kafka.client_options())
    except KafkaError:
        raise BrokerUnavailable(
            f"no Kafka broker at {kafka.bootstrap}: start one with `stackrec up`"
        ) from None


def _letter(record) -> DeadLetter:
    headers = {k: v for k, v in record.headers or ()}

    def text(name: str, default: str = "") -> str:
        return headers[name].decode("utf-8", "replace") if name in headers else default

    def number(name: str) -> int:
        try:
            return int(text(name, "-1"))
        except ValueError:
            return -1

    truncated = number("truncated_from")
    return DeadLetter(
        key=record.key,
        value=record.value,
        reason=text("reason", "unknown"),
        detail=text("detail"),
        source_topic=text("source_topic"),
        source_partition=number("source_partition"),
        source_offset=number("source_offset"),
        dlq_partition=record.partition,
        dlq_offset=record.offset,
        truncated_from=truncated if truncated >= 0 else None,
    )
