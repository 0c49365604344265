"""The whole loop on real services: Kafka -> Prefect flow -> log, registry, Redis, metrics.

Replays a stream (the synthetic generator, and ML-100K when ../shared is present), runs two
cycles as real Prefect flow runs, and checks the contracts a user relies on.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from kafka import KafkaConsumer, TopicPartition
from typer.testing import CliRunner

from flows.cli import app, replay_table
from flows.settings import Settings
from monitoring import metrics
from stackrec.datasets import read_interactions
from stackrec.synthetic import StreamConfig, generate
from streaming.log import InteractionLog
from streaming.serving import read_vectors
from tests.shared_data import dataset

pytestmark = pytest.mark.integration
N_EVENTS = 5_000


def run_two_cycles(stack, table: pa.Table) -> list[dict]:
    from flows.cycle import continual_cycle

    settings = Settings.load()
    bad = [b"not json", b'{"user_id": "", "item_id": "x", "ts": 1700000000000}']
    replay_table(settings, table.slice(0, N_EVENTS // 2), progress=False)
    _send_raw(stack, bad)
    overrides = {
        "batch_max_events": 100_000,
        "batch_max_wait_s": 8,
        "train_steps": 20,
        "dim": 32,
        "gate_tolerance": 1.0,  # contracts here; the gate has its own tests
    }
    first = continual_cycle(overrides=overrides)
    replay_table(settings, table.slice(N_EVENTS // 2, N_EVENTS - N_EVENTS // 2), progress=False)
    second = continual_cycle(overrides=overrides)
    return [first, second]


def _send_raw(stack, values: list[bytes]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=stack.bootstrap)
    for value in values:
        producer.send(stack.topic, key=b"x", value=value)
    producer.flush()
    producer.close()


def check_contracts(stack, table: pa.Table, reports: list[dict]) -> None:
    settings = Settings.load()
    log = InteractionLog(settings.log_dir)
    logged = log.read()
    # every consumed offset is in the log exactly once (valid rows + dead-lettered ones)
    pairs = list(
        zip(
            logged.column("partition").to_pylist(), logged.column("offset").to_pylist(), strict=True
        )
    )
    assert len(pairs) == len(set(pairs)) == N_EVENTS
    assert sum(r["events"]["dead_lettered"] for r in reports) == 2
    covered = sum(
        last - first + 1 for s in log.manifest().segments for first, last in s.offsets.values()
    )
    assert covered == N_EVENTS + 2
    # committed offsets equal the log's
    consumer = KafkaConsumer(
        bootstrap_servers=stack.bootstrap, group_id=settings.group_id, enable_auto_commit=False
    )
    committed = {p: consumer.committed(TopicPartition(stack.topic, p)) for p in log.next_offsets()}
    consumer.close()
    assert committed == log.next_offsets()
    # Redis serves the second version, covering every item seen, at the model's dimension
    assert [r["version"] for r in reports] == [1, 2]
    version, items = read_vectors(stack.redis, "items")
    assert version == 2
    assert set(items) == set(table.slice(0, N_EVENTS).column("item_id").to_pylist())
    assert {v.shape for v in items.values()} == {(reports[1]["published"]["dim"],)}
    # stackrec recommend returns k known items the user has not interacted with
    user = table.column("user_id")[N_EVENTS - 1].as_py()
    result = CliRunner().invoke(app, ["recommend", user, "-k", "10", "--json"])
    assert result.exit_code == 0, result.output
    rec = json.loads(result.output)
    seen = {
        i
        for u, i in zip(
            logged.column("user_id").to_pylist(), logged.column("item_id").to_pylist(), strict=True
        )
        if u == user
    }
    assert rec["version"] == 2 and rec["source"] == "personal"
    assert (
        len(rec["items"]) == 10 and set(rec["items"]) <= set(items) and not set(rec["items"]) & seen
    )
    # the metrics exposition carries the stage metrics
    text = metrics.exposition().decode()
    for stage in ("consume", "log", "evaluate", "train", "publish"):
        assert f'stage="{stage}"' in text
    assert f'stackrec_published_version{{model="{stack.model}"}} 2.0' in text
    assert "stackrec_events_dead_lettered_total" in text


def test_synthetic_stream_end_to_end(stack, prefect_harness):
    table = generate(StreamConfig(n_events=N_EVENTS, n_users=300, n_items=800, seed=3))
    reports = run_two_cycles(stack, table)
    check_contracts(stack, table, reports)
    assert reports[1]["prequential"]["all"]["n"] > 0


def test_movielens_100k_end_to_end(stack, prefect_harness):
    table = read_interactions(dataset("ml-100k/ml-100k.inter"))
    reports = run_two_cycles(stack, table)
    check_contracts(stack, table, reports)
