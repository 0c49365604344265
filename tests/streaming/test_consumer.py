"""Ingest against the real broker: every offset lands in the log exactly once, rejects go to
the dead-letter topic with their bytes and reason, and commits follow the log."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pyarrow as pa
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from streaming import consumer, services
from streaming.consumer import ConsumerConfig, IngestResult, ingest_batch
from streaming.events import LOG_SCHEMA, parse_event
from streaming.kafka_config import KafkaConfig
from streaming.log import InteractionLog
from streaming.topics import BrokerUnavailable, dead_letter_topic, ensure_topics

PARTITIONS = 4
TS = 1_650_000_000_000
MALFORMED = {  # value -> the reason it must be dead-lettered with
    b"not json at all": "not_json",
    b'{"user_id": "u1", "item_id": "i1"}': "missing_field",
    b"[1, 2, 3]": "not_object",
    b'{"user_id": "u2", "item_id": "i2", "ts": 1650000000}': "ts_out_of_range",
    b'{"user_id": true, "item_id": "i3", "ts": 1650000000000}': "bad_type",
    b"\xff\xfe\xfd": "not_utf8",
}


def valid_value(n: int) -> bytes:
    return json.dumps({"user_id": f"u{n % 8}", "item_id": n, "ts": TS + n}).encode()


def produce(kafka: KafkaConfig, topic: str, values: list[bytes]) -> list[tuple[int, int, bytes]]:
    """Send ``values`` keyed by a user; returns (partition, offset, value) for each."""
    producer = KafkaProducer(acks="all", **kafka.client_options())
    try:
        futures = [
            producer.send(topic, key=f"u{n % 8}".encode(), value=value)
            for n, value in enumerate(values)
        ]
        producer.flush()
        placed = [f.get(timeout=10) for f in futures]
    finally:
        producer.close()
    return [(m.partition, m.offset, v) for m, v in zip(placed, values, strict=True)]


def ingest_all(
    kafka: KafkaConfig, config: ConsumerConfig, log: InteractionLog, expected: int
) -> list[IngestResult]:
    """Ingest batches until ``expected`` new messages were handled (at most 5 batches)."""
    results: list[IngestResult] = []
    while sum(r.logged + r.dead_lettered for r in results) < expected and len(results) < 5:
        results.append(ingest_batch(kafka, config, log))
    return results


def committed(kafka: KafkaConfig, topic: str, group: str) -> dict[int, int | None]:
    consumer = KafkaConsumer(group_id=group, enable_auto_commit=False, **kafka.client_options())
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) for p in range(PARTITIONS)}
    finally:
        consumer.close(autocommit=False)


def read_topic(kafka: KafkaConfig, topic: str, count: int, timeout_s: float = 10.0) -> list:
    """The first ``count`` records of ``topic`` (all partitions), without a consumer group."""
    consumer = KafkaConsumer(enable_auto_commit=False, **kafka.client_options())
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records: list = []
        deadline = time.monotonic() + timeout_s
        while len(records) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close(autocommit=False)


def logged_ranges(log: InteractionLog) -> dict[int, list[int]]:
    """Per partition, every offset the manifest covers, in manifest order (duplicates kept)."""
    covered: dict[int, list[int]] = {}
    for segment in log.manifest().segments:
        for partition, (first, last) in segment.offsets.items():
            covered.setdefault(int(partition), []).extend(range(first, last + 1))
    return covered


@pytest.fixture
def topic(stack):
    ensure_topics(stack.kafka, stack.topic, PARTITIONS)
    return stack.topic


def empty_run(config: ConsumerConfig) -> ConsumerConfig:
    """For a batch expected to find nothing: its wait, which starts after the group join
    (~3 s on Tansu), is all it costs."""
    return replace(config, max_wait_s=1.0)


@pytest.fixture
def config(topic, stack) -> ConsumerConfig:
    """A batch that finds messages ends at the first idle poll, so a long wait costs nothing."""
    return ConsumerConfig(
        topic=topic, group_id=f"g-{stack.model}", max_wait_s=8.0, idle_poll_ms=500
    )


def test_every_offset_is_logged_once_and_rejects_are_dead_lettered(stack, config, tmp_path):
    values = [valid_value(n) for n in range(40)]
    values[5:5] = list(MALFORMED)  # malformed ones in the middle, spread over partitions
    placed = produce(stack.kafka, config.topic, values)
    log = InteractionLog(tmp_path / "log")

    results = ingest_all(stack.kafka, config, log, expected=len(values))
    assert sum(r.logged for r in results) == 40
    assert sum(r.dead_lettered for r in results) == len(MALFORMED)
    reasons: dict[str, int] = {}
    for r in results:
        for reason, n in r.reasons.items():
            reasons[reason] = reasons.get(reason, 0) + n
    assert reasons == {reason: 1 for reason in MALFORMED.values()}

    # every offset of every partition is covered exactly once by the manifest ...
    ends = {p: 1 + max(o for q, o, _ in placed if q == p) for p, _, _ in placed}
    assert {p: sorted(o) for p, o in logged_ranges(log).items()} == {
        p: list(range(end)) for p, end in ends.items()
    }
    assert log.next_offsets() == ends
    # ... and the valid ones are rows, with their own partition and offset
    table = log.read()
    assert table.schema == LOG_SCHEMA
    rows = {(r["partition"], r["offset"]): r for r in table.to_pylist()}
    assert len(rows) == table.num_rows == 40
    for partition, offset, value in placed:
        if value in MALFORMED:
            assert (partition, offset) not in rows
            continue
        event = parse_event(value)
        row = rows[(partition, offset)]
        assert (row["user_id"], row["item_id"], row["ts"]) == (
            event.user_id,
            event.item_id,
            event.ts,
        )

    # the group committed exactly where the log ends
    assert committed(stack.kafka, config.topic, config.group_id) == {
        p: ends.get(p) for p in range(PARTITIONS)
    }
    assert results[-1].committed.items() <= ends.items()

    # the dead-letter topic holds exactly the malformed messages, bytes and reason intact
    dead = read_topic(stack.kafka, dead_letter_topic(config.topic), len(MALFORMED))
    assert sorted(r.value for r in dead) == sorted(MALFORMED)
    source = {v: (p, o) for p, o, v in placed}
    for record in dead:
        headers = {k: v.decode() for k, v in record.headers}
        assert headers["reason"] == MALFORMED[record.value]
        assert headers["source_topic"] == config.topic
        assert (int(headers["source_partition"]), int(headers["source_offset"])) == source[
            record.value
        ]
        assert headers["detail"]
        assert record.key.startswith(b"u")

    # a re-run finds nothing new
    manifest = log.manifest()
    again = ingest_batch(stack.kafka, empty_run(config), log)
    assert (again.logged, again.dead_lettered, again.segment) == (0, 0, None)
    assert log.manifest() == manifest

    # the next batch holds only what arrived since
    more = produce(stack.kafka, config.topic, [valid_value(n) for n in range(40, 48)])
    results = ingest_all(stack.kafka, config, log, expected=8)
    assert sum(r.logged for r in results) == 8
    assert sorted(log.read().column("item_id").to_pylist(), key=int) == [str(n) for n in range(48)]
    ends = {p: 1 + max(o for q, o, _ in placed + more if q == p) for p, _, _ in placed + more}
    assert log.next_offsets() == ends
    assert committed(stack.kafka, config.topic, config.group_id) == {
        p: ends.get(p) for p in range(PARTITIONS)
    }


def test_offsets_the_log_already_holds_are_not_logged_again(stack, config, tmp_path):
    """A crash after the manifest write and before the commit: the log holds a batch the
    group never committed. The next ingest must log only what follows it."""
    placed = produce(stack.kafka, config.topic, [valid_value(n) for n in range(24)])
    log = InteractionLog(tmp_path / "log")
    # what the crashed ingest made durable: the first half of each partition, uncommitted
    by_partition: dict[int, list[tuple[int, bytes]]] = {}
    for partition, offset, value in placed:
        by_partition.setdefault(partition, []).append((offset, value))
    crashed_rows, crashed_offsets = [], {}
    for partition, records in by_partition.items():
        half = records[: len(records) // 2]
        if not half:
            continue
        crashed_offsets[partition] = (half[0][0], half[-1][0])
        for offset, value in half:
            event = parse_event(value)
            crashed_rows.append(
                {
                    "user_id": event.user_id,
                    "item_id": event.item_id,
                    "ts": event.ts,
                    "event_type": None,
                    "weight": None,
                    "partition": partition,
                    "offset": offset,
                }
            )
    log.append(pa.Table.from_pylist(crashed_rows, schema=LOG_SCHEMA), crashed_offsets)

    results = ingest_all(stack.kafka, config, log, expected=24 - len(crashed_rows))
    assert sum(r.logged for r in results) == 24 - len(crashed_rows)
    keys = [
        (p, o)
        for p, o in zip(
            log.read().column("partition").to_pylist(),
            log.read().column("offset").to_pylist(),
            strict=True,
        )
    ]
    assert sorted(keys) == sorted((p, o) for p, o, _ in placed)  # each exactly once
    ends = {p: 1 + max(o for o, _ in records) for p, records in by_partition.items()}
    assert committed(stack.kafka, config.topic, config.group_id) == {
        p: ends.get(p) for p in range(PARTITIONS)
    }


def ingest_then_fail_to_commit(stack, config: ConsumerConfig, log: InteractionLog) -> None:
    """One ingest whose commit fails, as if the process died right after the manifest write."""

    def broken_commit(self, offsets=None, **options):
        raise KafkaError("injected: the process died before committing")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(KafkaConsumer, "commit", broken_commit)
        with pytest.raises(BrokerUnavailable, match=r"failed mid-batch: .*injected"):
            ingest_batch(stack.kafka, config, log)


def test_failed_commit_does_not_duplicate_the_batch(stack, config, tmp_path):
    placed = produce(stack.kafka, config.topic, [valid_value(n) for n in range(10)])
    log = InteractionLog(tmp_path / "log")
    ingest_then_fail_to_commit(stack, config, log)
    assert log.read().num_rows == 10  # durable before the commit
    assert committed(stack.kafka, config.topic, config.group_id) == dict.fromkeys(range(PARTITIONS))

    more = produce(stack.kafka, config.topic, [valid_value(n) for n in range(10, 30)])
    results = ingest_all(stack.kafka, config, log, expected=20)
    assert sum(r.logged for r in results) == 20
    table = log.read()
    offsets = zip(
        table.column("partition").to_pylist(), table.column("offset").to_pylist(), strict=True
    )
    assert sorted(offsets) == sorted((p, o) for p, o, _ in placed + more)


def test_commit_catches_up_with_the_log_after_a_failed_commit(stack, config, tmp_path):
    placed = produce(stack.kafka, config.topic, [valid_value(n) for n in range(10)])
    log = InteractionLog(tmp_path / "log")
    ingest_then_fail_to_commit(stack, config, log)

    again = ingest_batch(stack.kafka, empty_run(config), log)  # a restart, with no new messages
    assert again.logged == 0
    ends = {p: 1 + max(o for q, o, _ in placed if q == p) for p, _, _ in placed}
    assert committed(stack.kafka, config.topic, config.group_id) == {
        p: ends.get(p) for p in range(PARTITIONS)
    }


def test_a_short_max_wait_still_reads_waiting_messages(stack, config, tmp_path):
    produce(stack.kafka, config.topic, [valid_value(n) for n in range(5)])
    short = replace(config, max_wait_s=2.0)
    result = ingest_batch(stack.kafka, short, InteractionLog(tmp_path / "log"))
    assert result.logged == 5


def test_broker_down_fails_fast_with_the_address(tmp_path):
    address = f"127.0.0.1:{services.free_port()}"
    log = InteractionLog(tmp_path / "log")
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match=f"no Kafka broker at {address}"):
        ingest_batch(KafkaConfig(bootstrap=address), ConsumerConfig(max_wait_s=1.0), log)
    assert time.monotonic() - started < 5
    assert log.manifest().segments == []


def test_ingest_pending_stops_when_the_stream_outpaces_it(monkeypatch, tmp_path):
    """A topic that never drains (lag stays 100) ends after twice what was pending at first."""

    class Outpaced:
        def __init__(self, *args) -> None:
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

        def batch(self) -> IngestResult:
            return IngestResult(read=100, logged=100, lag=100)

    monkeypatch.setattr(consumer, "Ingestor", Outpaced)
    log = InteractionLog(tmp_path / "log")
    results = consumer.ingest_pending(KafkaConfig(), ConsumerConfig(), log)
    assert len(results) == 4  # 2 x (100 read + 100 lag) after the first batch
