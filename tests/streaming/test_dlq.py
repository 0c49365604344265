"""Dead letters on the real broker: `stackrec dlq inspect` shows them by reason with their
source, `stackrec dlq replay` re-drives them after a fix exactly once, duplicates follow their
policy, and a message too large for the DLQ is kept truncated instead of blocking ingest."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from kafka import KafkaProducer
from typer.testing import CliRunner

import streaming.events
from flows.cli import app
from streaming.consumer import ConsumerConfig, Ingestor
from streaming.deadletters import KEEP_BYTES, read_dead_letters
from streaming.log import InteractionLog
from streaming.topics import ensure_topics

pytestmark = pytest.mark.integration
TS = 1_650_000_000_000


def event(user: str, item: str, ts: int = TS) -> bytes:
    return json.dumps({"user_id": user, "item_id": item, "ts": ts}).encode()


def produce(stack, values: list[bytes], **options) -> list[tuple[int, int]]:
    producer = KafkaProducer(**stack.kafka.producer_options(), **options)
    futures = [producer.send(stack.topic, key=b"k", value=v) for v in values]
    producer.flush()
    placed = [(m.partition, m.offset) for m in (f.get(timeout=10) for f in futures)]
    producer.close()
    return placed


@pytest.fixture
def config(stack) -> ConsumerConfig:
    ensure_topics(stack.kafka, stack.topic, 2)
    return ConsumerConfig(
        topic=stack.topic,
        group_id="stackrec",
        max_wait_s=6,
        idle_poll_ms=500,
        session_timeout_ms=1_500,
    )


def ingest(stack, config: ConsumerConfig, log: InteractionLog, expect: int) -> None:
    """Batches until the log covers ``expect`` offsets in all."""
    with Ingestor(stack.kafka, config, log) as ingestor:
        for _ in range(6):
            if sum(log.next_offsets().values()) >= expect:
                return
            ingestor.batch()
    assert sum(log.next_offsets().values()) >= expect


def cli(*args: str) -> dict:
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_inspect_counts_reasons_and_shows_where_each_came_from(stack, config, tmp_path):
    values = [event("u1", "i1"), b"nope", b"[1]", b"{bad", event("", "i2"), event("u2", "i2")]
    placed = produce(stack, values)
    ingest(stack, config, InteractionLog(tmp_path / "log"), len(values))

    summary = cli("dlq", "inspect", "--limit", "1")
    assert summary["topic"] == f"{stack.topic}.dlq"
    assert (summary["letters"], summary["messages"]) == (4, 4)
    counts = {reason: group["count"] for reason, group in summary["reasons"].items()}
    assert counts == {"not_json": 2, "not_object": 1, "empty_id": 1}
    assert next(iter(counts)) == "not_json"  # most frequent first
    latest = summary["reasons"]["not_json"]["samples"]
    assert len(latest) == 1 and latest[0]["value"] == "{bad"  # the latest of the two
    p, o = placed[3]
    assert (latest[0]["source_partition"], latest[0]["source_offset"]) == (p, o)
    assert latest[0]["source"] == f"{stack.topic}/{p}@{o}"
    assert latest[0]["detail"].startswith("Expecting property name")
    only = cli("dlq", "inspect", "--reason", "empty_id")
    assert list(only["reasons"]) == ["empty_id"]
    assert only["reasons"]["empty_id"]["samples"][0]["value"] == values[4].decode()

    text = CliRunner().invoke(app, ["dlq", "inspect"])
    assert text.exit_code == 0
    assert f"{stack.topic}.dlq: 4 messages (4 letters)" in text.output
    assert "not_json: 2" in text.output


def test_replay_after_a_fix_logs_the_fixed_once_and_the_rest_come_back(
    stack, config, tmp_path, monkeypatch
):
    """A too-strict id limit (the bug) dead-letters 20-character ids; after the fix a replay
    re-drives them, the next ingest logs them, and the truly over-long ids come back marked, so
    replaying again re-drives nothing."""
    fixable = [event("u" * 20, f"i{n}", TS + n) for n in range(5)]
    hopeless = [event("u" * 300, f"x{n}", TS + n) for n in range(3)]
    values = [event("u1", "i1"), *fixable, b"not json", *hopeless]
    produce(stack, values)
    log = InteractionLog(tmp_path / "log")
    with monkeypatch.context() as bug:
        bug.setattr(streaming.events, "MAX_ID_CHARS", 8)
        ingest(stack, config, log, len(values))
    assert log.read().num_rows == 1

    first = cli("dlq", "replay", "--reason", "id_too_long")
    assert (first["replayed"], first["by_reason"], first["already"]) == (8, {"id_too_long": 8}, 0)
    ingest(stack, config, log, len(values) + 8)
    logged = log.read()
    assert sorted(logged.column("item_id").to_pylist()) == sorted(
        ["i1", *(f"i{n}" for n in range(5))]
    )
    back = [x for x in read_dead_letters(stack.kafka, stack.topic) if x.replays]
    assert sorted(x.value for x in back) == sorted(hopeless)
    assert {x.reason for x in back} == {"id_too_long"}

    everything = cli("dlq", "replay")  # each reason has its own progress: not_json goes,
    assert (everything["replayed"], everything["already"]) == (1 + 3, 8)  # and the 3 returns
    again = cli("dlq", "replay")
    assert (again["replayed"], again["already"]) == (0, 12)  # nothing twice
    ingest(stack, config, log, len(values) + 8 + 4)
    capped = cli("dlq", "replay", "--max-replays", "2")
    assert (capped["replayed"], capped["given_up"]) == (1, 3)  # not_json: first return
    assert log.read().num_rows == 6  # nothing was logged twice along the way


@pytest.mark.parametrize(
    ("policy", "logged", "dead"),
    [("keep", 5, 0), ("drop", 3, 0), ("dead-letter", 3, 2)],
)
def test_duplicates_follow_the_policy_within_and_across_batches(
    stack, config, tmp_path, policy, logged, dead
):
    config = replace(config, duplicates=policy)
    log = InteractionLog(tmp_path / "log")
    produce(stack, [event("u1", "a"), event("u1", "b"), event("u1", "a")])  # repeat in batch
    ingest(stack, config, log, 3)
    produce(stack, [event("u1", "b"), event("u1", "c", TS + 1)])  # repeat of an earlier batch
    ingest(stack, config, log, 5)

    assert sum(log.next_offsets().values()) == 5  # every offset accounted for
    items = sorted(log.read().column("item_id").to_pylist())
    assert items == {5: ["a", "a", "b", "b", "c"], 3: ["a", "b", "c"]}[logged]
    letters = read_dead_letters(stack.kafka, stack.topic)
    assert [(x.reason, x.value) for x in letters] == [
        ("duplicate", event("u1", "a")),
        ("duplicate", event("u1", "b")),
    ][:dead]


def test_a_message_too_large_for_the_dlq_is_kept_truncated(stack, config, tmp_path):
    huge = b'{"user_id": "u", "pad": "' + b"p" * 1_200_000 + b'"}'
    placed = produce(stack, [huge, event("u1", "i1")], max_request_size=4 << 20)
    log = InteractionLog(tmp_path / "log")
    ingest(stack, config, log, 2)
    assert log.read().column("item_id").to_pylist() == ["i1"]
    [letter] = read_dead_letters(stack.kafka, stack.topic)
    assert letter.reason == "too_large"
    assert (letter.source_partition, letter.source_offset) == placed[0]
    assert letter.truncated_from == len(huge)
    assert letter.value == huge[:KEEP_BYTES]
