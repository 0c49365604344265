"""Both Kafka clients behind the ingest interface keep the same promises on the real broker:
every offset in the log once, rejects dead-lettered with their headers, commits where the log
ends, a restart resuming where the log ends, and the lag measured against the log."""

from __future__ import annotations

import json

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streaming import services
from streaming.consumer import ConsumerConfig, Ingestor
from streaming.deadletters import read_dead_letters
from streaming.kafka_config import KafkaConfig
from streaming.log import InteractionLog, TopicChanged
from streaming.topics import ensure_topics

pytestmark = pytest.mark.integration
TS = 1_650_000_000_000


def confluent_installed() -> bool:
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(params=["kafka-python", "confluent"])
def client(request) -> str:
    if request.param == "confluent" and not confluent_installed():
        pytest.skip("confluent-kafka is not installed (the optional extra)")
    return request.param


def produce(stack, values: list[bytes]) -> list[tuple[int, int]]:
    producer = KafkaProducer(**stack.kafka.producer_options())
    futures = [
        producer.send(stack.topic, key=f"u{n % 5}".encode(), value=v, headers=[("h", b"1")])
        for n, v in enumerate(values)
    ]
    producer.flush()
    placed = [(m.partition, m.offset) for m in (f.get(timeout=10) for f in futures)]
    producer.close()
    return placed


def committed(stack, group: str) -> dict[int, int]:
    consumer = KafkaConsumer(
        group_id=group, enable_auto_commit=False, **stack.kafka.client_options()
    )
    try:
        found = {p: consumer.committed(TopicPartition(stack.topic, p)) for p in range(3)}
    finally:
        consumer.close(autocommit=False)
    return {p: o for p, o in found.items() if o is not None}


def test_each_client_logs_once_dead_letters_and_commits(stack, tmp_path, client):
    ensure_topics(stack.kafka, stack.topic, 3)
    good = [
        json.dumps({"user_id": f"u{n}", "item_id": n, "ts": TS + n}).encode() for n in range(30)
    ]
    values = [*good[:10], b"junk", *good[10:20], b'{"user_id": "x"}', *good[20:]]
    placed = produce(stack, values)
    log = InteractionLog(tmp_path / "log")
    config = ConsumerConfig(
        topic=stack.topic,
        group_id=f"g-{client}",
        client=client,
        max_events=12,
        max_wait_s=5,
        idle_poll_ms=500,
        session_timeout_ms=1_500,
    )
    with Ingestor(stack.kafka, config, log) as ingestor:
        assert ingestor.join() == {0, 1, 2}
        results = []
        while sum(log.next_offsets().values()) < len(values) and len(results) < 10:
            results.append(ingestor.batch())
    assert all(r.read <= 12 for r in results)  # bounded batches
    assert sum(r.logged for r in results) == 30
    assert results[-1].lag == 0
    table = log.read()
    assert sorted(table.column("item_id").to_pylist(), key=int) == [str(n) for n in range(30)]
    sources = list(zip(table["partition"].to_pylist(), table["offset"].to_pylist(), strict=True))
    assert len(set(sources)) == 30
    junk = {placed[10], placed[21]}
    assert set(sources) | junk == set(placed)
    letters = read_dead_letters(stack.kafka, stack.topic)
    assert {(x.source_partition, x.source_offset): x.reason for x in letters} == {
        placed[10]: "not_json",
        placed[21]: "missing_field",
    }
    assert {x.key for x in letters} == {b"u0", b"u1"}  # the original keys, read on demand
    assert committed(stack, config.group_id) == log.next_offsets()

    more = produce(stack, [json.dumps({"user_id": "z", "item_id": "late", "ts": TS}).encode()])
    with Ingestor(stack.kafka, config, log) as restarted:  # resumes where the log ends
        result = restarted.batch()
    assert (result.read, result.logged, result.skipped) == (1, 1, 0)
    assert log.read().num_rows == 31
    assert committed(stack, config.group_id) == log.next_offsets()
    assert more[0][1] + 1 == log.next_offsets()[more[0][0]]


def test_a_batch_that_reached_the_partitions_ends_stops_without_an_idle_poll(
    stack, tmp_path, client
):
    """Caught up is read from the ends the fetches reported, so the batch does not wait out
    ``idle_poll_ms`` (here far longer than the whole test) to learn that nothing more came."""
    ensure_topics(stack.kafka, stack.topic, 3)
    values = [
        json.dumps({"user_id": f"u{n}", "item_id": n, "ts": TS + n}).encode() for n in range(40)
    ]
    produce(stack, values)
    config = ConsumerConfig(
        topic=stack.topic,
        group_id=f"caught-up-{client}",
        client=client,
        max_wait_s=60,
        idle_poll_ms=60_000,
        session_timeout_ms=1_500,
    )
    log = InteractionLog(tmp_path / "log")
    with Ingestor(stack.kafka, config, log) as ingestor:
        ingestor.join()
        result = ingestor.batch()
        assert (result.logged, result.lag) == (40, 0)
        assert result.seconds < 30  # an idle poll would have taken 60 s


def test_a_topic_recreated_under_the_log_is_refused_not_skipped(stack, tmp_path, client):
    """The embedded broker keeps topics in memory: after a restart the topic is new, its
    offsets start at 0 again, and reading on would skip them all as already logged."""
    ensure_topics(stack.kafka, stack.topic, 3)
    events = [
        json.dumps({"user_id": f"u{n}", "item_id": n, "ts": TS + n}).encode() for n in range(9)
    ]
    produce(stack, events)
    log = InteractionLog(tmp_path / "log")
    config = ConsumerConfig(topic=stack.topic, group_id=f"g-{client}", client=client,
                            max_wait_s=5, idle_poll_ms=500, session_timeout_ms=1_500)  # fmt: skip
    with Ingestor(stack.kafka, config, log) as ingestor:
        assert ingestor.batch().logged == 9
    first = log.manifest()
    assert first.topic_id

    host, port, run_dir = "127.0.0.1", services.free_port(), tmp_path / "restarted"
    services.start("broker", services.broker_command(host, port), host, port, run_dir)
    try:
        restarted = KafkaConfig(bootstrap=f"{host}:{port}")
        ensure_topics(restarted, stack.topic, 3)
        producer = KafkaProducer(**restarted.producer_options())
        for value in events[:4]:
            producer.send(stack.topic, value=value)
        producer.close()
        with Ingestor(restarted, config, log) as ingestor, pytest.raises(TopicChanged):
            ingestor.batch()
        assert log.manifest() == first  # nothing logged, nothing skipped into it
    finally:
        services.stop(run_dir, "broker")
