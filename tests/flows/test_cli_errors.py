"""The CLI's promise for user mistakes: one ``error:`` line on stderr, exit 1, no traceback."""

from __future__ import annotations

import json
import time

import pytest
from kafka import KafkaConsumer, TopicPartition
from typer.testing import CliRunner

from flows.cli import app
from streaming import services

PARTITIONS = 4  # Settings.partitions default: what `stackrec replay` creates the topic with


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, list(args), env=env)


def assert_user_error(result, message: str) -> str:
    """Exit 1 with exactly one line, ``error: <message>...``, and no traceback anywhere."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(f"error: {message}"), errors[0]
    assert result.stdout == ""
    return errors[0]


def count_messages(bootstrap: str, topic: str, expected: int, timeout_s: float = 10.0) -> int:
    consumer = KafkaConsumer(bootstrap_servers=[bootstrap], enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        seen = 0
        deadline = time.monotonic() + timeout_s
        while seen < expected and time.monotonic() < deadline:
            seen += sum(len(b) for b in consumer.poll(timeout_ms=300).values())
        seen += sum(len(b) for b in consumer.poll(timeout_ms=300).values())  # nothing extra
        return seen
    finally:
        consumer.close(autocommit=False)


def test_missing_file(stack, tmp_path):
    missing = tmp_path / "nowhere" / "ratings.dat"
    assert_user_error(run("replay", str(missing)), f"no such file: {missing}")


def test_unknown_format(stack, tmp_path):
    data = tmp_path / "events.csv"
    data.write_text("user,item,timestamp\n1,2,1650000000\n")
    line = assert_user_error(
        run("replay", str(data), "--format", "xml"), "unknown format 'xml'; choose one of"
    )
    assert "movielens" in line


def test_file_of_unknown_kind(stack, tmp_path):
    data = tmp_path / "events.bin"
    data.write_bytes(b"\x00\x01")
    assert_user_error(run("replay", str(data)), "cannot tell the format of events.bin")


def test_broker_down(stack):
    address = f"127.0.0.1:{services.free_port()}"
    started = time.monotonic()
    result = run(
        "replay",
        "--limit",
        "5",
        "--synthetic-events",
        "100",
        env={"STACKREC_KAFKA_BOOTSTRAP": address},
    )
    assert_user_error(result, f"no Kafka broker at {address}")
    assert time.monotonic() - started < 10


def test_status_with_broker_down_says_down_and_exits_1(stack):
    address = f"127.0.0.1:{services.free_port()}"
    result = run("status", "--json", env={"STACKREC_KAFKA_BOOTSTRAP": address})
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["broker"] == {"address": address, "healthy": False}
    assert report["redis"] == {"address": stack.redis_url, "healthy": True}


def test_unknown_stackrec_variable(stack):
    result = run("status", env={"STACKREC_TOPIK": "typo"})
    assert_user_error(result, "unknown setting STACKREC_TOPIK (known: ")


def test_bad_setting_value(stack):
    result = run("status", env={"STACKREC_PARTITIONS": "many"})
    assert_user_error(result, "STACKREC_PARTITIONS: Input should be a valid integer")


def test_recommend_before_anything_is_published(stack):
    result = run("recommend", "alice")
    assert_user_error(
        result, f"nothing published under stackrec:{stack.model} yet: run `stackrec cycle`"
    )


def test_recommend_with_redis_down(stack):
    url = f"redis://127.0.0.1:{services.free_port()}/0"
    assert_user_error(
        run("recommend", "alice", env={"STACKREC_REDIS_URL": url}), f"Redis at {url} failed"
    )


def test_replaying_an_invalid_event_names_its_reason(stack, tmp_path):
    data = tmp_path / "events.csv"  # second row: 5 s after the epoch, before 1990
    data.write_text("user,item,timestamp\n1,2,1650000000\n3,4,5\n")
    assert_user_error(run("replay", str(data)), "ts_out_of_range: ts 5000 outside")


def test_replay_synthetic_then_status_is_healthy(stack):
    result = run("replay", "--limit", "50", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"sent": 50, "topic": stack.topic, "source": "synthetic"}
    assert count_messages(stack.bootstrap, stack.topic, 50) == 50

    status = run("status", "--json")
    assert status.exit_code == 0, status.output
    report = json.loads(status.stdout)
    assert report == {
        "broker": {"address": stack.bootstrap, "healthy": True},
        "redis": {"address": stack.redis_url, "healthy": True},
    }


@pytest.mark.parametrize("args", [["replay", "--limit", "0"], ["recommend"]])
def test_usage_mistakes_exit_2_without_a_traceback(stack, args):
    result = run(*args)
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_up_on_a_port_someone_else_uses_is_refused(stack):
    result = run("up")  # the session's broker listens there, but this run directory has no record
    assert_user_error(result, f"broker: port {stack.bootstrap} is busy")
    assert not (stack.home / "run" / "broker.json").exists()
    assert not (stack.home / "run" / "redis.json").exists()


def test_up_with_a_bootstrap_without_port(stack):
    result = run("up", env={"STACKREC_KAFKA_BOOTSTRAP": "kafka.internal"})
    assert_user_error(result, "STACKREC_KAFKA_BOOTSTRAP='kafka.internal': expected host:port")


def test_down_with_nothing_started_says_so(stack):
    result = run("down")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == ["broker: was not running", "redis: was not running"]


def test_adopting_a_topic_that_does_not_exist(stack):
    assert_user_error(run("adopt-topic"), f"topic '{stack.topic}' does not exist")


def test_adopt_topic_makes_the_log_follow_the_topic_it_names(stack):
    from streaming.log import InteractionLog
    from streaming.topics import ensure_topics, topic_id

    ensure_topics(stack.kafka, stack.topic, PARTITIONS)
    result = run("adopt-topic")
    assert result.exit_code == 0, result.output
    found = topic_id(stack.kafka, stack.topic)
    assert found and found in result.stdout
    assert InteractionLog(stack.home / "log" / stack.topic).manifest().topic_id == found
