"""Dead letters: rejected messages kept in ``<topic>.dlq`` with their original bytes and why.

Each dead letter carries the original key and value and headers ``reason`` (low-cardinality,
the metric label), ``detail``, ``source_topic``, ``source_partition`` and ``source_offset``
(and ``replays`` when the message had been re-driven from the DLQ before, ``truncated_from``
when it was too large to keep whole). Delivery is at least once: a crash after the rejects
were flushed but before the batch was logged sends them again on the retry, so readers
deduplicate by source partition and offset (``unique_by_source``).

``replay`` re-drives letters to the main topic after a fix (``stackrec dlq replay``): valid
ones are then logged by the next ingest, still-invalid ones come back to the DLQ as new letters
counting their ``replays`` (passed over once they reach ``max_replays``). Each reason has its
own consumer group on the DLQ (``<group>.dlq-replay.<reason>``) whose committed offsets say how
far that reason has been replayed, so no letter is re-driven twice (a crash between the
re-drive and the commit may do it once: at least once, again).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError, MessageSizeTooLargeError
from kafka.structs import OffsetAndMetadata

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
    replays: int = 0  # times the message had been re-driven from the DLQ before this rejection


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
    if letter.replays:
        headers.append(("replays", str(letter.replays).encode()))
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
        self,
        key: bytes | None,
        value: bytes | None,
        partition: int,
        offset: int,
        why: Rejection,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Dead-letter one message; ``headers`` are the original's (a ``replays`` count
        carries over, so a re-driven message that fails again is not re-driven forever)."""
        replays = _int(dict(headers or ()).get("replays"), 0)
        letter = DeadLetter(
            key, value, why.reason, why.detail, self.topic, partition, offset, replays=replays
        )
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


def _reader(kafka: KafkaConfig, group: str | None = None) -> KafkaConsumer:
    try:
        return KafkaConsumer(group_id=group, enable_auto_commit=False, **kafka.client_options())
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
        replays=max(number("replays"), 0),
    )


def _int(raw: bytes | None, default: int) -> int:
    try:
        return int(raw) if raw is not None else default
    except ValueError:
        return default


# --- inspect and replay ---------------------------------------------------------------------
def summarize(letters: list[DeadLetter], limit: int = 5) -> dict[str, Any]:
    """Counts by reason (one per source message) and the ``limit`` latest samples of each."""
    unique = unique_by_source(letters)
    by_reason: dict[str, list[DeadLetter]] = {}
    for letter in unique:
        by_reason.setdefault(letter.reason, []).append(letter)
    return {
        "letters": len(letters),
        "messages": len(unique),
        "reasons": {
            reason: {
                "count": len(group),
                "samples": [_sample(x) for x in group[-limit:]] if limit else [],
            }
            for reason, group in sorted(by_reason.items(), key=lambda kv: -len(kv[1]))
        },
    }


def _sample(letter: DeadLetter) -> dict[str, Any]:
    value = letter.value or b""
    return {
        "source": f"{letter.source_topic}/{letter.source_partition}@{letter.source_offset}",
        "source_partition": letter.source_partition,
        "source_offset": letter.source_offset,
        "dlq_partition": letter.dlq_partition,
        "dlq_offset": letter.dlq_offset,
        "detail": letter.detail,
        "key": None if letter.key is None else letter.key.decode("utf-8", "replace"),
        "bytes": letter.truncated_from or len(value),
        "value": None if letter.value is None else value[:200].decode("utf-8", "replace"),
        "replays": letter.replays,
    }


@dataclass
class ReplayResult:
    replayed: int = 0  # re-driven to the main topic
    already: int = 0  # replayed by an earlier run (behind the reason's group offsets)
    given_up: int = 0  # re-driven ``max_replays`` times already and still rejected
    truncated: int = 0  # only a prefix was kept: cannot be replayed
    by_reason: dict[str, int] = field(default_factory=dict)


def replay_group(group_id: str, reason: str) -> str:
    return f"{group_id}.dlq-replay.{reason}"


def replay(
    kafka: KafkaConfig,
    topic: str,
    group_id: str,
    reason: str | None = None,
    max_replays: int = 3,
) -> ReplayResult:
    """Re-drive dead letters (of ``reason``, or all) not replayed yet to ``topic``, keyed and
    valued as originally, then record per reason how far the DLQ has been replayed.

    A letter that came back from ``max_replays`` earlier replays is passed over for good: a
    message no fix has made valid should not circulate forever.
    """
    letters = read_dead_letters(kafka, topic)
    reasons = sorted({x.reason for x in letters if reason is None or x.reason == reason})
    done = {r: _committed(kafka, topic, replay_group(group_id, r)) for r in reasons}
    result = ReplayResult()
    chosen: list[DeadLetter] = []
    for letter in unique_by_source(letters):
        if letter.reason not in done:
            continue
        if letter.dlq_offset < done[letter.reason].get(letter.dlq_partition, 0):
            result.already += 1
        elif letter.truncated_from is not None:
            result.truncated += 1
        elif letter.replays >= max_replays:
            result.given_up += 1
        else:
            chosen.append(letter)
    _redrive(kafka, topic, chosen)
    for letter in chosen:
        result.by_reason[letter.reason] = result.by_reason.get(letter.reason, 0) + 1
    result.replayed = len(chosen)
    ends: dict[int, int] = {}
    for letter in letters:
        ends[letter.dlq_partition] = max(ends.get(letter.dlq_partition, 0), letter.dlq_offset + 1)
    for r in reasons:
        _commit(kafka, topic, replay_group(group_id, r), ends)
    return result


def _redrive(kafka: KafkaConfig, topic: str, letters: list[DeadLetter]) -> None:
    if not letters:
        return
    try:
        producer = KafkaProducer(linger_ms=5, batch_size=1 << 20, **kafka.producer_options())
    except KafkaError as error:
        raise BrokerUnavailable(f"replay to {kafka.bootstrap} failed: {error}") from None
    try:
        futures = [
            producer.send(
                topic,
                key=x.key,
                value=x.value,
                headers=[
                    ("replays", str(x.replays + 1).encode()),
                    ("replay_of", f"{x.dlq_partition}:{x.dlq_offset}".encode()),
                ],
            )
            for x in letters
        ]
        producer.flush()
        for future in futures:
            future.get(timeout=30)
    except KafkaError as error:
        raise BrokerUnavailable(f"replay to {kafka.bootstrap} failed: {error}") from None
    finally:
        producer.close()


def _committed(kafka: KafkaConfig, topic: str, group: str) -> dict[int, int]:
    """The group's committed offsets on ``<topic>.dlq``, per partition."""
    consumer = _reader(kafka, group)
    dlq = dead_letter_topic(topic)
    try:
        found = {
            p: consumer.committed(TopicPartition(dlq, p))
            for p in consumer.partitions_for_topic(dlq) or ()
        }
    except KafkaError as error:
        raise BrokerUnavailable(f"reading {group} at {kafka.bootstrap} failed: {error}") from None
    finally:
        consumer.close(autocommit=False)
    return {p: o for p, o in found.items() if o is not None}


def _commit(kafka: KafkaConfig, topic: str, group: str, offsets: dict[int, int]) -> None:
    if not offsets:
        return
    consumer = _reader(kafka, group)
    dlq = dead_letter_topic(topic)
    try:
        partitions = {p: TopicPartition(dlq, p) for p in offsets}
        consumer.assign(list(partitions.values()))
        consumer.commit({partitions[p]: OffsetAndMetadata(o, "", -1) for p, o in offsets.items()})
    except KafkaError as error:
        raise BrokerUnavailable(
            f"committing {group} at {kafka.bootstrap} failed: {error}"
        ) from None
    finally:
        consumer.close(autocommit=False)
