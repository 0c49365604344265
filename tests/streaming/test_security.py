"""Security settings pass through: Redis AUTH and TLS against real servers, Kafka SASL/SSL into
both clients' options, and secrets never in a repr."""

from __future__ import annotations

import subprocess
import time
from dataclasses import replace

import pytest

from streaming import services
from streaming.kafka_config import KafkaConfig
from streaming.redis_store import RedisConfig, ServingUnavailable, publish
from streaming.serving import current_version, recommend
from tests.streaming.fault_worker import snapshot

pytestmark = pytest.mark.integration
HOST = "127.0.0.1"


@pytest.fixture
def locked_redis(tmp_path):
    """A Redis that requires the password ``s3cret``."""
    port = services.free_port()
    command = [*services.redis_command(HOST, port, tmp_path), "--requirepass", "s3cret"]
    services.start("redis", command, HOST, port, tmp_path)
    yield f"redis://{HOST}:{port}/0"
    services.stop(tmp_path, "redis")


def test_redis_auth_with_the_password_works(locked_redis):
    config = RedisConfig(url=locked_redis, password="s3cret", prefix="auth")
    publish(config, snapshot(1, items=10))
    assert current_version(config) == 1
    assert recommend(config, "u1").items == ["i1"]
    in_url = RedisConfig(url=locked_redis.replace("redis://", "redis://:s3cret@"), prefix="auth")
    assert current_version(in_url) == 1


@pytest.mark.parametrize("password", [None, "wrong"])
def test_redis_auth_without_the_right_password_fails_at_once_and_says_what_to_set(
    locked_redis, password
):
    config = RedisConfig(url=locked_redis, password=password, prefix="auth")
    for call in (lambda: publish(config, snapshot(1, items=10)), lambda: current_version(config)):
        started = time.monotonic()
        with pytest.raises(
            ServingUnavailable, match=r"refused the credentials.*STACKREC_REDIS_PASS"
        ):
            call()
        assert time.monotonic() - started < 0.5  # no retries: waiting cannot fix a password
    assert "s3cret" not in repr(replace(config, password="s3cret"))


@pytest.fixture
def tls_redis(tmp_path):
    """A Redis speaking only TLS, with a self-signed certificate for 127.0.0.1."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={HOST}",
            "-addext", f"subjectAltName=IP:{HOST}",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    port = services.free_port()
    command = [
        services.redis_binary(),
        *("--bind", HOST, "--port", "0", "--tls-port", str(port)),
        *("--tls-cert-file", str(cert), "--tls-key-file", str(key)),
        *("--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"),
        *("--save", "", "--appendonly", "no", "--dir", str(tmp_path)),
    ]
    try:
        services.start("redis", command, HOST, port, tmp_path, timeout_s=5)
    except services.ServiceError as error:
        pytest.skip(f"this redis-server has no TLS: {error}")
    yield f"rediss://{HOST}:{port}/0", cert
    services.stop(tmp_path, "redis")


def test_redis_tls_settings_pass_through_the_url(tls_redis):
    url, cert = tls_redis
    config = RedisConfig(url=f"{url}?ssl_ca_certs={cert}", prefix="tls")
    publish(config, snapshot(3, items=10))
    assert current_version(config) == 3
    untrusted = RedisConfig(url=url, prefix="tls", retries=0)
    with pytest.raises(ServingUnavailable, match="certificate verify failed"):
        current_version(untrusted)


def test_kafka_security_settings_reach_both_clients():
    kafka = KafkaConfig(
        bootstrap="b1:9093,b2:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password="hunter2",
        ssl_cafile="/etc/ca.pem",
        request_timeout_ms=7_000,
    )
    assert kafka.client_options() == {
        "bootstrap_servers": ["b1:9093", "b2:9093"],
        "security_protocol": "SASL_SSL",
        "request_timeout_ms": 7_000,
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "svc",
        "sasl_plain_password": "hunter2",
        "ssl_cafile": "/etc/ca.pem",
    }
    assert kafka.confluent_options() == {
        "bootstrap.servers": "b1:9093,b2:9093",
        "security.protocol": "SASL_SSL",
        "socket.timeout.ms": 7_000,
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "svc",
        "sasl.password": "hunter2",
        "ssl.ca.location": "/etc/ca.pem",
    }
    producer = kafka.producer_options()
    assert (producer["acks"], producer["max_block_ms"], producer["delivery_timeout_ms"]) == (
        "all",
        7_000,
        8_000,
    )
    assert producer["sasl_plain_password"] == "hunter2"
    assert "hunter2" not in repr(kafka)
    plain = KafkaConfig()
    assert set(plain.client_options()) == {
        "bootstrap_servers",
        "security_protocol",
        "request_timeout_ms",
    }
