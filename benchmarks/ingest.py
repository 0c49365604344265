"""Ingest events/s: our full path against a raw consume-only loop of the same client.

    python benchmarks/ingest.py [--events 300000] [--partitions 4] [--repeat 2]
                                [--clients kafka-python,confluent] [--bootstrap HOST:PORT]

Starts a broker on a free port (unless ``--bootstrap``), produces ``--events`` valid events
keyed by user into one topic, then, per client and per repeat, on that same topic with a fresh
consumer group each time:

- ``raw``: a hand-written loop that only consumes (poll until every event is in hand), with
  the client's default settings;
- ``raw_tuned`` (confluent): the same loop with the one setting ours changes,
  ``fetch.queue.backoff.ms`` 10 instead of 1,000 (librdkafka otherwise pauses a partition's
  fetches for a second whenever its local queue is full, which caps both loops);
- ``ours``: ``streaming.consumer.Ingestor`` batches (consume, validate, duplicates, Parquet
  segment + manifest, commit, lag) into a fresh interaction log until it covers every event.

Both clocks start once the group has assigned partitions (a join takes seconds on Tansu and
is the same for both); events that arrived while joining are not counted. One untimed warm-up
pass of each path comes first: the first pass in a process pays one-off costs (lazy imports,
first calls into pyarrow's kernels) of about a second, which a long-running consumer pays
once. Prints JSON: events/s of each run, and per client the ratios of the medians, ours / each
raw loop (the issue's goal: at least 0.8 of the raw loop).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import uuid
from functools import partial
from pathlib import Path

TS = 1_650_000_000_000


def produce(bootstrap: str, topic: str, events: int, partitions: int) -> float:
    """Send ``events`` valid events keyed by user (confluent's producer when present: the
    fast one, so setting up does not dominate); returns seconds taken."""
    from streaming.kafka_config import KafkaConfig
    from streaming.topics import ensure_topics

    ensure_topics(KafkaConfig(bootstrap=bootstrap), topic, partitions)
    values = [
        b'{"user_id":"u%d","item_id":"i%d","ts":%d}' % (n % 20_000, n % 50_000, TS + n)
        for n in range(events)
    ]
    keys = [b"u%d" % (n % 20_000) for n in range(events)]
    began = time.perf_counter()
    try:
        from confluent_kafka import Producer
    except ImportError:
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=1 << 20)
        for key, value in zip(keys, values, strict=True):
            producer.send(topic, key=key, value=value)
        producer.flush()
        producer.close()
        return time.perf_counter() - began
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all"})
    for key, value in zip(keys, values, strict=True):
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush()
    return time.perf_counter() - began


def raw_kafka_python(bootstrap: str, topic: str, events: int) -> tuple[int, float]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=f"raw-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=6_000,
        max_poll_records=10_000,
    )
    consumer.subscribe([topic])
    seen = 0
    while not consumer.assignment():
        seen += sum(len(b) for b in consumer.poll(timeout_ms=100, max_records=10_000).values())
    began, before = time.perf_counter(), seen
    while seen < events:
        seen += sum(len(b) for b in consumer.poll(timeout_ms=1_000, max_records=10_000).values())
    seconds = time.perf_counter() - began
    consumer.close(autocommit=False)
    return seen - before, seconds


def raw_confluent(
    bootstrap: str, topic: str, events: int, tuned: bool = False
) -> tuple[int, float]:
    """``tuned``: with our fetch-queue backoff (``raw_tuned``); else librdkafka's defaults,
    the loop the issue's reference figures come from."""
    from confluent_kafka import Consumer

    from streaming.confluent_source import FETCH_QUEUE_BACKOFF_MS

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"raw-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6_000,
            **({"fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS} if tuned else {}),
        }
    )
    consumer.subscribe([topic])
    seen = 0
    while not consumer.assignment():
        seen += len(consumer.consume(10_000, timeout=0.1))
    began, before = time.perf_counter(), seen
    while seen < events:
        seen += len(consumer.consume(10_000, timeout=1.0))
    seconds = time.perf_counter() - began
    consumer.close()
    return seen - before, seconds


def ours(bootstrap: str, topic: str, events: int, client: str, root: Path) -> tuple[int, float]:
    from streaming.consumer import ConsumerConfig, Ingestor
    from streaming.kafka_config import KafkaConfig
    from streaming.log import InteractionLog

    log = InteractionLog(root / f"log-{uuid.uuid4().hex[:8]}")
    config = ConsumerConfig(
        topic=topic, group_id=f"ours-{uuid.uuid4().hex[:8]}", client=client, idle_poll_ms=1_000
    )
    with Ingestor(KafkaConfig(bootstrap=bootstrap), config, log) as ingestor:
        ingestor.join()
        began, before = time.perf_counter(), sum(log.next_offsets().values())
        while sum(log.next_offsets().values()) < events:
            ingestor.batch()
        seconds = time.perf_counter() - began
    assert log.read(columns=["offset"]).num_rows == events
    return events - before, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--clients", default="kafka-python,confluent")
    parser.add_argument("--bootstrap", help="an existing broker (default: start one)")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from streaming import services

    run_dir = Path(tempfile.mkdtemp(prefix="stackrec-ingest-bench-"))
    bootstrap = args.bootstrap
    if bootstrap is None:
        host, port = "127.0.0.1", services.free_port()
        services.start("broker", services.broker_command(host, port), host, port, run_dir)
        bootstrap = f"{host}:{port}"
    try:
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        produce_s = produce(bootstrap, topic, args.events, args.partitions)
        paths = {
            "kafka-python": {
                "raw": raw_kafka_python,
                "ours": partial(ours, client="kafka-python", root=run_dir),
            },
            "confluent": {
                "raw": raw_confluent,
                "raw_tuned": partial(raw_confluent, tuned=True),
                "ours": partial(ours, client="confluent", root=run_dir),
            },
        }
        clients = args.clients.split(",")
        runs: list[dict] = []
        for client in clients:  # the untimed warm-up pass
            for run in paths[client].values():
                run(bootstrap, topic, args.events)
        for _ in range(args.repeat):
            for client in clients:
                for path, run in paths[client].items():
                    timed, seconds = run(bootstrap, topic, args.events)
                    if timed == 0:
                        raise SystemExit(
                            f"ingest.py: {path} had all {args.events} events before its clock "
                            "started (they arrived while the group joined): use more --events"
                        )
                    runs.append(
                        {
                            "client": client,
                            "path": path,
                            "events_timed": timed,
                            "seconds": round(seconds, 3),
                            "events_per_s": round(timed / seconds),
                        }
                    )
                    print(json.dumps(runs[-1]), file=sys.stderr)
        summary = {}
        for client in clients:
            median = {
                path: statistics.median(
                    r["events_per_s"] for r in runs if r["client"] == client and r["path"] == path
                )
                for path in paths[client]
            }
            summary[client] = {f"{path}_events_per_s": round(v) for path, v in median.items()}
            summary[client] |= {
                f"ours_over_{path}": round(median["ours"] / v, 3)
                for path, v in median.items()
                if path != "ours"
            }
        print(
            json.dumps(
                {
                    "benchmark": "ingest",
                    "events": args.events,
                    "partitions": args.partitions,
                    "produce_s": round(produce_s, 2),
                    "machine": {"python": platform.python_version(), "cpus": _cpus()},
                    "summary": summary,
                    "runs": runs,
                },
                indent=2,
            )
        )
    finally:
        if args.bootstrap is None:
            services.stop(run_dir, "broker")


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
