"""Ingest: one bounded batch from Kafka into the interaction log, exactly once.

Order of operations, which is the whole guarantee:

1. poll a bounded batch (max events or max wait) as a member of a consumer group;
2. drop records whose offsets the log already holds (a crash after step 4, before step 5);
3. validate; send rejects to ``<topic>.dlq`` with original bytes and a reason header, flush;
4. append valid events to the log: segment, then manifest, atomically;
5. commit the offsets (the next offset per partition) to the group.

A crash anywhere before 4 redoes the batch (the DLQ may then hold a reject twice: dead letters
are at-least-once); a crash between 4 and 5 is absorbed by step 2. kafka-python's consumer
is not thread-safe: one ingest, one consumer, one thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from monitoring import metrics
from streaming.events import LOG_SCHEMA, Event, Rejection, parse_event
from streaming.kafka_config import KafkaConfig
from streaming.log import InteractionLog, Segment
from streaming.topics import BrokerUnavailable, dead_letter_topic, require_broker


@dataclass(frozen=True)
class ConsumerConfig:
    topic: str = "interactions"
    group_id: str = "stackrec"
    max_events: int = 50_000  # upper bound of one batch
    max_wait_s: float = 5.0  # upper bound of time spent polling one batch
    idle_poll_ms: int = 1_000  # a poll this long that returns nothing ends a non-empty batch
    session_timeout_ms: int = 6_000  # Tansu needs this low, or each group join waits ~23 s


@dataclass
class IngestResult:
    read: int = 0  # messages polled from Kafka
    skipped: int = 0  # already in the log (redelivered after a crash)
    logged: int = 0
    dead_lettered: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    offsets: dict[int, list[int]] = field(default_factory=dict)  # partition -> [first, last]
    committed: dict[int, int] = field(default_factory=dict)  # partition -> next offset, durable
    segment: int | None = None
    lag: int = 0
    seconds: float = 0.0


class _SeekPastLogged(ConsumerRebalanceListener):
    """On assignment, start each partition where the log ends, not where the group committed."""

    def __init__(self, consumer: KafkaConsumer, log: InteractionLog) -> None:
        self.consumer, self.log = consumer, log

    def on_partitions_revoked(self, revoked) -> None:  # nothing uncommitted survives a batch
        pass

    def on_partitions_assigned(self, assigned) -> None:
        logged = self.log.next_offsets()
        for tp in assigned:
            if tp.partition in logged:
                self.consumer.seek(tp, logged[tp.partition])


def ingest_batch(
    kafka: KafkaConfig,
    config: ConsumerConfig,
    log: InteractionLog,
    on_stage: Callable[[str, float], None] | None = None,
) -> IngestResult:
    """Consume one bounded batch into ``log`` and commit it; see the module docstring."""
    started = time.perf_counter()
    require_broker(kafka)
    try:
        consumer = KafkaConsumer(
            group_id=config.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=config.session_timeout_ms,
            heartbeat_interval_ms=config.session_timeout_ms // 3,
            max_poll_records=min(config.max_events, 10_000),
            **kafka.client_options(),
        )
    except KafkaError:
        raise BrokerUnavailable(
            f"no Kafka broker at {kafka.bootstrap}: start one with `stackrec up`"
        ) from None
    try:
        consumer.subscribe([config.topic], listener=_SeekPastLogged(consumer, log))
        records = _poll_batch(consumer, config)
        mark = time.perf_counter()
        result = _log_batch(records, kafka, config, log)
        if on_stage:
            on_stage("consume", mark - started)
            on_stage("log", time.perf_counter() - mark)
        # commit exactly what is durable: also catches up after a crash before a commit
        durable = log.next_offsets()
        result.committed = {
            tp.partition: durable[tp.partition]
            for tp in consumer.assignment()
            if tp.partition in durable
        }
        if result.committed:
            consumer.commit(
                {
                    TopicPartition(config.topic, p): OffsetAndMetadata(o, "", -1)
                    for p, o in result.committed.items()
                }
            )
        result.lag = _lag(consumer, config.topic)
    except KafkaError as error:
        raise BrokerUnavailable(f"Kafka at {kafka.bootstrap} failed mid-batch: {error}") from None
    finally:
        consumer.close(autocommit=False)
    result.seconds = time.perf_counter() - started
    _count(config.topic, result)
    return result


def _poll_batch(consumer: KafkaConsumer, config: ConsumerConfig) -> list:
    """Records of one bounded batch; the max-wait clock starts once the group has assigned us
    partitions (a join takes seconds on Tansu, and must not eat the batch's time)."""
    records: list = []
    join_deadline = time.monotonic() + 3 * config.session_timeout_ms / 1000
    while not consumer.assignment() and time.monotonic() < join_deadline:
        polled = consumer.poll(timeout_ms=100, max_records=config.max_events)
        records.extend(r for batch in polled.values() for r in batch)
    deadline = time.monotonic() + config.max_wait_s
    while len(records) < config.max_events and time.monotonic() < deadline:
        wait_ms = min(config.idle_poll_ms, max(1, int((deadline - time.monotonic()) * 1000)))
        polled = consumer.poll(timeout_ms=wait_ms, max_records=config.max_events - len(records))
        fresh = [r for batch in polled.values() for r in batch]
        if not fresh and records:
            break  # caught up
        records.extend(fresh)
    return records


def _log_batch(records: list, kafka: KafkaConfig, config: ConsumerConfig, log: InteractionLog):
    result = IngestResult(read=len(records))
    logged_next = log.next_offsets()
    fresh = [r for r in records if r.offset >= logged_next.get(r.partition, 0)]
    result.skipped = len(records) - len(fresh)
    if not fresh:
        return result
    valid: list[tuple[Event, int, int]] = []
    rejected: list[tuple[object, Rejection]] = []
    for record in fresh:
        parsed = parse_event(record.value)
        if isinstance(parsed, Rejection):
            rejected.append((record, parsed))
        else:
            valid.append((parsed, record.partition, record.offset))
    if rejected:
        _dead_letter(rejected, kafka, config.topic)
    offsets = _offset_ranges(fresh)
    segment: Segment = log.append(_to_table(valid), offsets)
    result.segment = segment.id
    result.logged = len(valid)
    result.dead_lettered = len(rejected)
    for _, rejection in rejected:
        result.reasons[rejection.reason] = result.reasons.get(rejection.reason, 0) + 1
    result.offsets = {p: [first, last] for p, (first, last) in offsets.items()}
    return result


def _offset_ranges(records: list) -> dict[int, tuple[int, int]]:
    ranges: dict[int, tuple[int, int]] = {}
    for r in records:
        first, last = ranges.get(r.partition, (r.offset, r.offset))
        ranges[r.partition] = (min(first, r.offset), max(last, r.offset))
    return ranges


def _to_table(valid: list[tuple[Event, int, int]]) -> pa.Table:
    columns = {
        "user_id": [e.user_id for e, _, _ in valid],
        "item_id": [e.item_id for e, _, _ in valid],
        "ts": [e.ts for e, _, _ in valid],
        "event_type": [e.event_type for e, _, _ in valid],
        "weight": [e.weight for e, _, _ in valid],
        "partition": [p for _, p, _ in valid],
        "offset": [o for _, _, o in valid],
    }
    return pa.table(columns, schema=LOG_SCHEMA)


def _dead_letter(rejected: list, kafka: KafkaConfig, topic: str) -> None:
    """Send rejects with their original bytes; flush so they are durable before the commit."""
    producer = KafkaProducer(acks="all", **kafka.client_options())
    try:
        for record, rejection in rejected:
            headers = [
                ("reason", rejection.reason.encode()),
                ("detail", rejection.detail.encode("utf-8", "replace")),
                ("source_topic", topic.encode()),
                ("source_partition", str(record.partition).encode()),
                ("source_offset", str(record.offset).encode()),
            ]
            producer.send(
                dead_letter_topic(topic), key=record.key, value=record.value, headers=headers
            )
        producer.flush()
    finally:
        producer.close()


def _lag(consumer: KafkaConsumer, topic: str) -> int:
    """Messages behind the end of the topic; Tansu's end offsets can be short, so clamp at 0."""
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
    if not partitions:
        return 0
    ends = consumer.end_offsets(partitions)
    committed = {tp: consumer.committed(tp) or 0 for tp in partitions}
    return sum(max(0, ends[tp] - committed[tp]) for tp in partitions)


def _count(topic: str, result: IngestResult) -> None:
    metrics.EVENTS_CONSUMED.labels(topic).inc(result.read)
    metrics.EVENTS_LOGGED.labels(topic).inc(result.logged)
    for reason, n in result.reasons.items():
        metrics.EVENTS_DEAD_LETTERED.labels(topic, reason).inc(n)
    metrics.CONSUMER_LAG.labels(topic).set(result.lag)
