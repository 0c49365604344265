"""Faults on real processes and services: kill -9 at every stage of ingest and publish,
a broker and a Redis that go away mid-work. Afterwards every event is accounted for: each
offset in the log exactly once, each valid event a row, each invalid one in the dead-letter
topic with its reason; and serving shows one whole version, never a mix.

The killed processes run ``tests/streaming/fault_worker.py`` with ``STREAMING_FAULT_AT``
(``streaming/faults.py``). Lanes of kills run in parallel (each its own topic, group and log):
a restarted group member waits out the dead one's session, which is idle time, not CPU.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streaming import services
from streaming.consumer import ConsumerConfig, Ingestor
from streaming.deadletters import read_dead_letters
from streaming.events import Rejection, parse_event
from streaming.faults import ENV
from streaming.kafka_config import KafkaConfig
from streaming.log import InteractionLog, TopicChanged
from streaming.redis_store import (
    PARTS,
    IncompletePublish,
    RedisConfig,
    ServingUnavailable,
    publish,
)
from streaming.serving import current_version, read_vectors, recommend
from streaming.topics import BrokerUnavailable, ensure_topics, topic_id
from tests.streaming.fault_worker import snapshot

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 4
TS = 1_650_000_000_000
INGEST_POINTS = ("mid_poll", "after_dead_letter", "after_segment", "after_manifest", "after_commit")
LANES, KILLS_PER_LANE = 4, 6  # 24 kills in all


def message(rng: random.Random, n: int) -> bytes:
    """A valid event most of the time; one of a few kinds of garbage otherwise."""
    kind = rng.random()
    if kind < 0.85:
        return json.dumps({"user_id": f"u{n % 13}", "item_id": n, "ts": TS + n}).encode()
    return rng.choice(
        [
            b"not json",
            b'{"user_id": "u1", "item_id": "i1"}',
            json.dumps({"user_id": "", "item_id": n, "ts": TS}).encode(),
            json.dumps({"user_id": "u1", "item_id": n, "ts": 5}).encode(),
            b"\xff\xfe",
        ]
    )


@dataclass
class Placed:
    """What a test produced: (partition, offset) -> value."""

    values: dict[tuple[int, int], bytes] = field(default_factory=dict)

    def add(self, kafka: KafkaConfig, topic: str, values: list[bytes]) -> None:
        producer = KafkaProducer(acks="all", **kafka.client_options())
        try:
            futures = [
                producer.send(topic, key=f"k{n % 7}".encode(), value=v)
                for n, v in enumerate(values)
            ]
            producer.flush()
            for future, value in zip(futures, values, strict=True):
                meta = future.get(timeout=10)
                self.values[(meta.partition, meta.offset)] = value
        finally:
            producer.close()


def run_worker(args: list[str], fault: str | None = None, timeout_s: float = 90) -> int:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    env["PYTHONPATH"] = str(REPO)
    if fault:
        env[ENV] = fault
    done = subprocess.run(
        [sys.executable, "-m", "tests.streaming.fault_worker", *args],
        cwd=REPO,
        env=env,
        timeout=timeout_s,
        capture_output=True,
        text=True,
    )
    assert done.returncode in (0, -9), f"worker failed ({done.returncode}): {done.stderr[-2000:]}"
    return done.returncode


def ingest_args(
    bootstrap: str, topic: str, group: str, log: Path, expect: int, client: str = "kafka-python"
) -> list[str]:
    return [
        "ingest",
        *("--bootstrap", bootstrap, "--topic", topic, "--group", group),
        *("--log", str(log), "--expect", str(expect), "--client", client),
    ]


def lane_client(lane: int) -> str:
    """The last lane uses the optional confluent client, where it is installed."""
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return "kafka-python"
    return "confluent" if lane == LANES - 1 else "kafka-python"


def committed(kafka: KafkaConfig, topic: str, group: str) -> dict[int, int]:
    consumer = KafkaConsumer(group_id=group, enable_auto_commit=False, **kafka.client_options())
    try:
        found = {p: consumer.committed(TopicPartition(topic, p)) for p in range(PARTITIONS)}
    finally:
        consumer.close(autocommit=False)
    return {p: o for p, o in found.items() if o is not None}


def account(
    kafka: KafkaConfig,
    topic: str,
    group: str | None,
    log: InteractionLog,
    placed: Placed,
    dead_after: dict[int, int] | None = None,
):
    """Every placed message exactly once: in the log (valid) or the DLQ (invalid); only the
    invalid ones at or after ``dead_after`` (partition -> offset) when given."""
    covered: list[tuple[int, int]] = []
    for segment in log.manifest().segments:
        for partition, (first, last) in segment.offsets.items():
            covered += [(int(partition), o) for o in range(first, last + 1)]
    assert len(covered) == len(set(covered)), "an offset is in the log twice"
    assert set(covered) == set(placed.values), "the log's offsets differ from what was produced"

    table = log.read()
    rows = list(
        zip(
            table.column("partition").to_pylist(),
            table.column("offset").to_pylist(),
            table.column("user_id").to_pylist(),
            table.column("item_id").to_pylist(),
            table.column("ts").to_pylist(),
            strict=True,
        )
    )
    assert len({(p, o) for p, o, *_ in rows}) == len(rows), "a row is in the log twice"
    parsed = {source: parse_event(value) for source, value in placed.values.items()}
    valid = {s: e for s, e in parsed.items() if not isinstance(e, Rejection)}
    assert {(p, o): (u, i, t) for p, o, u, i, t in rows} == {
        s: (e.user_id, e.item_id, e.ts) for s, e in valid.items()
    }

    letters = read_dead_letters(kafka, topic)
    invalid = {s: e.reason for s, e in parsed.items() if isinstance(e, Rejection)}
    if dead_after is not None:
        invalid = {(p, o): r for (p, o), r in invalid.items() if o >= dead_after.get(p, 0)}
    assert {(x.source_partition, x.source_offset): x.reason for x in letters} == invalid
    for letter in letters:
        assert letter.value == placed.values[(letter.source_partition, letter.source_offset)]
    if group is not None:
        assert committed(kafka, topic, group) == log.next_offsets()
    return {"rows": len(rows), "dead": len(invalid), "dead_copies": len(letters)}


def kill_lane(stack, lane: int, root: Path) -> dict:
    """Produce, kill an ingest worker at random points, produce more, ...; then finish."""
    rng = random.Random(1000 + lane)
    topic, group = f"{stack.topic}-lane{lane}", f"g-{stack.topic}-lane{lane}"
    ensure_topics(stack.kafka, topic, PARTITIONS)
    log_dir = root / f"log-{lane}"
    client = lane_client(lane)
    placed = Placed()
    placed.add(stack.kafka, topic, [message(rng, n) for n in range(150)])
    kills: list[str] = []
    rounds = 0
    while len(kills) < KILLS_PER_LANE and rounds < 3 * KILLS_PER_LANE:
        rounds += 1
        fault = f"{rng.choice(INGEST_POINTS)}:{rng.randint(1, 3)}"
        args = ingest_args(stack.bootstrap, topic, group, log_dir, len(placed.values), client)
        if run_worker(args, fault) == -9:
            kills.append(fault)
        start = len(placed.values)
        placed.add(stack.kafka, topic, [message(rng, start + n) for n in range(60)])
    final = ingest_args(stack.bootstrap, topic, group, log_dir, len(placed.values), client)
    assert run_worker(final) == 0
    counts = account(stack.kafka, topic, group, InteractionLog(log_dir), placed)
    return {"kills": kills, "client": client, **counts}


def test_ingest_killed_at_every_stage_loses_and_duplicates_nothing(stack, tmp_path):
    with ThreadPoolExecutor(LANES) as pool:
        lanes = list(pool.map(lambda lane: kill_lane(stack, lane, tmp_path), range(LANES)))
    kills = [k for lane in lanes for k in lane["kills"]]
    assert len(kills) >= 20, lanes
    assert {k.split(":")[0] for k in kills} == set(INGEST_POINTS), kills
    assert sum(lane["rows"] for lane in lanes) > 0 and sum(lane["dead"] for lane in lanes) > 0


def test_a_consumer_joining_and_one_dying_lose_nothing(stack, tmp_path):
    """Three members of one group share a log: one starts, a second joins (rebalance), the
    first is killed mid-batch (rebalance again), a third joins late. Exactly once, still."""
    rng = random.Random(7)
    topic, group = stack.topic, f"g-{stack.topic}"
    ensure_topics(stack.kafka, topic, PARTITIONS)
    log_dir = tmp_path / "log"
    placed = Placed()
    placed.add(stack.kafka, topic, [message(rng, n) for n in range(600)])
    expect = len(placed.values)
    args = [*ingest_args(stack.bootstrap, topic, group, log_dir, expect), "--max-events", "20"]
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(run_worker, args, "after_segment:6")
        time.sleep(1.5)
        second = pool.submit(run_worker, args)
        time.sleep(3.0)
        third = pool.submit(run_worker, args)
        outcomes = [first.result(), second.result(), third.result()]
    assert outcomes[1:] == [0, 0]
    account(stack.kafka, topic, group, InteractionLog(log_dir), placed)


@pytest.fixture
def own_broker(tmp_path):
    """A broker of this test's own, so it can be stopped and restarted."""
    run_dir, host, port = tmp_path / "broker", "127.0.0.1", services.free_port()

    def start() -> None:
        services.start("broker", services.broker_command(host, port), host, port, run_dir)

    start()
    yield KafkaConfig(bootstrap=f"{host}:{port}", request_timeout_ms=2_000), start, run_dir
    services.stop(run_dir, "broker")


def test_broker_restart_mid_batch_fails_cleanly_and_a_replayed_stream_ingests(own_broker, tmp_path):
    """Tansu keeps topics in memory: a restarted broker has lost the topic. The batch in
    flight fails with BrokerUnavailable and the log stays consistent. The recreated topic is
    refused until the operator adopts it; then the same stream produced again (same keys, so
    the same partitions and offsets), and new events, complete the log with nothing twice."""
    kafka, start, run_dir = own_broker
    topic = "restarted"
    rng = random.Random(3)
    values = [message(rng, n) for n in range(400)]
    ensure_topics(kafka, topic, PARTITIONS)
    placed = Placed()
    placed.add(kafka, topic, values)
    log = InteractionLog(tmp_path / "log")
    config = ConsumerConfig(
        topic=topic,
        group_id="g",
        max_events=100,
        max_wait_s=2,
        idle_poll_ms=500,
        session_timeout_ms=1_500,
    )
    with Ingestor(kafka, config, log) as ingestor:
        assert ingestor.batch().read == 100  # and more fetched, waiting in the consumer
        services.stop(run_dir, "broker")
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match=kafka.bootstrap):
            for _ in range(10):  # buffered batches are logged; a commit or poll then fails
                ingestor.batch()
        assert time.monotonic() - started < 15
    before = log.next_offsets()
    assert 100 <= sum(before.values()) <= 400
    table = log.read()
    sources = list(zip(table["partition"].to_pylist(), table["offset"].to_pylist(), strict=True))
    assert len(set(sources)) == table.num_rows
    assert set(sources) <= set(placed.values)

    start()
    ensure_topics(kafka, topic, PARTITIONS)
    again = Placed()
    again.add(kafka, topic, values)
    assert again.values == placed.values  # the same stream lands on the same offsets
    placed.add(kafka, topic, [message(rng, 400 + n) for n in range(200)])
    with Ingestor(kafka, config, log) as ingestor, pytest.raises(TopicChanged):
        ingestor.batch()
    assert log.next_offsets() == before
    log.adopt_topic(topic_id(kafka, topic))
    with Ingestor(kafka, config, log) as ingestor:
        for _ in range(10):
            if sum(log.next_offsets().values()) == 600:
                break
            ingestor.batch()
    # the restarted broker lost the dead letters sent before (memory only): check the rest
    counts = account(kafka, topic, "g", log, placed, dead_after=before)
    assert counts["rows"] == sum(
        not isinstance(parse_event(v), Rejection) for v in placed.values.values()
    )


# --- publishing ---------------------------------------------------------------------------
def assert_serves_whole(config: RedisConfig, version: int, items: int) -> None:
    assert current_version(config) == version
    served, vectors = read_vectors(config, "items")
    assert served == version and len(vectors) == items
    assert all((v == float(version)).all() for v in vectors.values())
    assert recommend(config, "u1").items == [f"i{version}"]


def test_publish_killed_midway_leaves_the_previous_version_serving(stack):
    rng = random.Random(11)
    config = replace(stack.redis, version_ttl_s=600)
    publish(config, snapshot(1, items=2_000))
    client = config.client()
    args = ["publish", "--redis-url", config.url, "--prefix", config.prefix, "--items", "2000"]
    version, kills = 1, 0
    for point in ("mid_publish", "mid_publish", "before_flip", "mid_publish"):
        version += 1
        fault = f"{point}:{rng.randint(1, 4)}" if point == "mid_publish" else point
        assert run_worker([*args, "--version", str(version)], fault) == -9
        kills += 1
        assert_serves_whole(config, version - 1, 2_000)
        for part in PARTS:  # what the dead publish left behind expires
            assert client.ttl(config.key(f"v{version}", part)) in range(-2, 601)
            assert client.ttl(config.key(f"v{version}", part)) != -1
        assert run_worker([*args, "--version", str(version)]) == 0  # the retry
        assert_serves_whole(config, version, 2_000)
    client.close()
    assert kills == 4


@pytest.fixture
def own_redis(tmp_path):
    """A Redis of this test's own with an fsync-always append-only file, restartable."""
    run_dir, host, port = tmp_path / "redis", "127.0.0.1", services.free_port()
    run_dir.mkdir()
    command = services.redis_command(host, port, run_dir)
    command[command.index("--appendonly") + 1] = "yes"
    command += ["--appendfsync", "always"]

    def start() -> None:
        services.start("redis", command, host, port, run_dir)

    def stop() -> None:
        services.stop(run_dir, "redis")

    start()
    yield (
        RedisConfig(url=f"redis://{host}:{port}/0", prefix="faults", version_ttl_s=600),
        start,
        stop,
    )
    stop()


def test_redis_restarted_mid_publish_resumes_and_serves_one_whole_version(own_redis):
    config, start, stop = own_redis
    publish(config, snapshot(1, items=3_000), chunk_fields=1_000)

    def bounce(written: int) -> None:
        if written == 2_000:  # a third of the way: Redis restarts (it keeps its AOF)
            stop()
            start()

    publish(config, snapshot(2, items=3_000), chunk_fields=1_000, on_progress=bounce)
    assert_serves_whole(config, 2, 3_000)


def test_redis_down_mid_publish_fails_and_the_previous_version_stays(own_redis):
    config, start, stop = own_redis
    publish(config, snapshot(1, items=3_000), chunk_fields=1_000)
    restarter = threading.Timer(4.0, start)

    def outage(written: int) -> None:
        if written == 1_000:
            stop()
            restarter.start()

    started = time.monotonic()
    with pytest.raises(ServingUnavailable, match="publish of v2"):
        publish(config, snapshot(2, items=3_000), chunk_fields=1_000, on_progress=outage)
    assert time.monotonic() - started < 4.0  # bounded retries, then a clear failure
    restarter.join()
    assert_serves_whole(config, 1, 3_000)
    client = config.client()
    assert client.hlen(config.key("v2", "items")) <= 1_000  # partial, invisible, expiring
    assert client.ttl(config.key("v2", "items")) > 0
    client.close()
    publish(config, snapshot(2, items=3_000))
    assert_serves_whole(config, 2, 3_000)


def test_a_version_that_lost_writes_is_not_flipped_to(stack):
    """Redis restarted without persistence mid-publish loses the first chunks; the flip's
    completeness check refuses the version, and current stays."""
    config = replace(stack.redis, version_ttl_s=600)
    publish(config, snapshot(1, items=1_000))
    client = config.client()

    def lose_writes(written: int) -> None:
        client.hdel(config.key("v2", "items"), "i3")  # gone again after every chunk

    with pytest.raises(IncompletePublish, match=r"version 2 is incomplete .*current was not moved"):
        publish(config, snapshot(2, items=1_000), chunk_fields=500, on_progress=lose_writes)
    assert_serves_whole(config, 1, 1_000)
    client.close()


def test_publish_of_duplicate_ids_is_refused_before_writing(stack):
    config = stack.redis
    bad = replace(snapshot(1, items=4), item_ids=["a", "b", "a", "c"])
    with pytest.raises(ValueError, match="item_ids repeat 'a'"):
        publish(config, bad)
    assert redis.Redis.from_url(config.url).exists(config.key("v1", "meta")) == 0
