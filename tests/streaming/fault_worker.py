"""The processes the fault tests kill: a real ingest loop and a real publish.

Run as ``python -m tests.streaming.fault_worker ingest ...`` or ``... publish ...`` with
``STREAMING_FAULT_AT`` naming where to SIGKILL itself (see ``streaming.faults``). Exit status
0: finished; 3: gave up (no progress within the deadline); -9 (killed) is the test's point.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from streaming.consumer import ConsumerConfig, Ingestor
from streaming.kafka_config import KafkaConfig
from streaming.log import InteractionLog
from streaming.redis_store import RedisConfig, Snapshot, publish

# short group timeouts: a killed member is evicted in ~1.5 s, so each restart is quick
SESSION_TIMEOUT_MS = 1_500


def ingest(args: argparse.Namespace) -> int:
    """Ingest batches until the log covers ``--expect`` offsets (all partitions from 0)."""
    log = InteractionLog(Path(args.log))
    config = ConsumerConfig(
        topic=args.topic,
        group_id=args.group,
        max_events=args.max_events,
        max_wait_s=1.0,
        idle_poll_ms=300,
        session_timeout_ms=SESSION_TIMEOUT_MS,
        max_poll_interval_ms=10_000,
        client=args.client,
        duplicates=args.duplicates,
    )
    deadline = time.monotonic() + args.deadline_s
    with Ingestor(KafkaConfig(bootstrap=args.bootstrap), config, log) as ingestor:
        while sum(log.next_offsets().values()) < args.expect:
            if time.monotonic() > deadline:
                return 3
            ingestor.batch()
    return 0


def snapshot(version: int, items: int, dim: int = 8) -> Snapshot:
    """Every component of every vector of version V equals V, so a mix is visible."""
    item_ids = [f"i{n}" for n in range(items)]
    user_ids = [f"u{n}" for n in range(items // 2)]
    return Snapshot(
        version=version,
        item_ids=item_ids,
        item_vectors=np.full((items, dim), float(version)),
        user_ids=user_ids,
        user_vectors=np.full((len(user_ids), dim), float(version)),
        recommendations=[[f"i{version}"] for _ in user_ids],
        popular=[f"i{version}"],
        meta={"model": "fault-test"},
    )


def publish_version(args: argparse.Namespace) -> int:
    config = RedisConfig(url=args.redis_url, prefix=args.prefix, version_ttl_s=600)
    publish(config, snapshot(args.version, args.items), chunk_fields=args.chunk_fields)
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("ingest")
    run.add_argument("--bootstrap", required=True)
    run.add_argument("--topic", required=True)
    run.add_argument("--group", required=True)
    run.add_argument("--log", required=True)
    run.add_argument("--expect", type=int, required=True)
    run.add_argument("--max-events", type=int, default=40)
    run.add_argument("--client", default="kafka-python")
    run.add_argument("--duplicates", default="keep")
    run.add_argument("--deadline-s", type=float, default=60.0)
    pub = commands.add_parser("publish")
    pub.add_argument("--redis-url", required=True)
    pub.add_argument("--prefix", required=True)
    pub.add_argument("--version", type=int, required=True)
    pub.add_argument("--items", type=int, default=2_000)
    pub.add_argument("--chunk-fields", type=int, default=500)
    args = parser.parse_args(argv)
    return ingest(args) if args.command == "ingest" else publish_version(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
