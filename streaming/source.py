"""What ingest needs from a Kafka consumer, whichever client library provides it.

Two clients sit behind this interface: kafka-python (the default, pure Python) and
confluent-kafka (librdkafka, several times faster), chosen by ``ConsumerConfig.client``. Both
join a consumer group, hand out messages as columns (a ``Block``), let the caller choose where
each newly assigned partition starts (the interaction log's next offset: the log, not the
group, is the source of truth), and commit offsets synchronously.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

CLIENTS = ("kafka-python", "confluent")

# called with newly assigned partitions; returns the offset each should start from
OnAssign = Callable[[list[int]], dict[int, int]]


class CommitRejected(RuntimeError):
    """The group rebalanced under us, so this commit was refused; the log is unaffected and
    the next batch commits again."""


@dataclass
class Block:
    """Messages as parallel columns (cheaper than one object per message)."""

    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    keys: list[bytes | None] = field(default_factory=list)
    values: list[bytes | None] = field(default_factory=list)
    headers: list[list[tuple[str, bytes]] | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.offsets)

    def extend(self, other: Block) -> None:
        self.partitions += other.partitions
        self.offsets += other.offsets
        self.keys += other.keys
        self.values += other.values
        self.headers += other.headers

    def take(self, rows: list[int]) -> Block:
        return Block(
            [self.partitions[i] for i in rows],
            [self.offsets[i] for i in rows],
            [self.keys[i] for i in rows],
            [self.values[i] for i in rows],
            [self.headers[i] for i in rows],
        )


class Source(Protocol):
    """A consumer-group member of one topic; not thread-safe (one batch at a time)."""

    def poll(self, max_records: int, timeout_s: float) -> Block: ...

    def assigned(self) -> set[int]: ...

    def commit(self, offsets: dict[int, int]) -> None: ...

    def lag(self) -> int: ...

    def close(self) -> None: ...
