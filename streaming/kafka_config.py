"""Connection settings shared by every Kafka client, with security passed straight through."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap: str = "127.0.0.1:9092"
    security_protocol: str = "PLAINTEXT"  # or SSL, SASL_PLAINTEXT, SASL_SSL
    sasl_mechanism: str | None = None  # PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    request_timeout_ms: int = 15_000

    def reachable(self, timeout_s: float = 2.0) -> bool:
        """Whether any bootstrap address accepts a TCP connection.

        kafka-python takes ~30 s to give up on an absent broker; this answers in seconds, so
        a broker that is down is a quick, clear error instead of a long hang.
        """
        for address in self.bootstrap.split(","):
            host, _, port = address.strip().rpartition(":")
            try:
                with socket.create_connection((host or "127.0.0.1", int(port)), timeout_s):
                    return True
            except (OSError, ValueError):
                continue
        return False

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments common to kafka-python's producer, consumer and admin client."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap.split(","),
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
        }
        optional = {
            "sasl_mechanism": self.sasl_mechanism,
            "sasl_plain_username": self.sasl_username,
            "sasl_plain_password": self.sasl_password,
            "ssl_cafile": self.ssl_cafile,
        }
        options.update({k: v for k, v in optional.items() if v is not None})
        return options

    def producer_options(self) -> dict[str, Any]:
        """``client_options`` plus bounds on how long a send may wait for a broker (the
        defaults are 60 s to block and 120 s to deliver), so a dead broker is a prompt error."""
        return {
            **self.client_options(),
            "acks": "all",
            "max_block_ms": self.request_timeout_ms,
            "delivery_timeout_ms": self.request_timeout_ms + 1_000,
        }

    def confluent_options(self) -> dict[str, Any]:
        """The same settings in librdkafka's names, for the optional confluent-kafka client."""
        options: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "security.protocol": self.security_protocol,
            "socket.timeout.ms": self.request_timeout_ms,
        }
        optional = {
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password,
            "ssl.ca.location": self.ssl_cafile,
        }
        options.update({k: v for k, v in optional.items() if v is not None})
        return options
