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
    """Messages as parallel columns (cheaper than one object per message). Keys and headers,
    needed only for dead letters, are read from the client's message objects on demand."""

    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    values: list[bytes | None] = field(default_factory=list)
    messages: list = field(default_factory=list)  # the client's objects, for key and headers
    key_of: Callable[[object], bytes | None] = lambda m: None
    headers_of: Callable[[object], list[tuple[str, bytes]] | None] = lambda m: None

    def __len__(self) -> int:
        return len(self.offsets)

    def key(self, row: int) -> bytes | None:
        return self.key_of(self.messages[row])

    def headers(self, row: int) -> list[tuple[str, bytes]] | None:
        return self.headers_of(self.messages[row])

    def extend(self, other: Block) -> None:
        self.partitions += other.partitions
        self.offsets += other.offsets
        self.values += other.values
        self.messages += other.messages
        if other.messages:
            self.key_of, self.headers_of = other.key_of, other.headers_of

    def take(self, rows: list[int]) -> Block:
        return Block(
            [self.partitions[i] for i in rows],
            [self.offsets[i] for i in rows],
            [self.values[i] for i in rows],
            [self.messages[i] for i in rows],
            self.key_of,
            self.headers_of,
        )


class Source(Protocol):
    """A consumer-group member of one topic; not thread-safe (one batch at a time)."""

    def poll(self, max_records: int, timeout_s: float) -> Block: ...

    def assigned(self) -> set[int]: ...

    def topic_id(self) -> str | None:
        """The broker's id of the topic (None if it has none): a recreated topic gets a new
        one while its offsets start over."""
        ...

    def commit(self, offsets: dict[int, int]) -> None: ...

    def lag(self, logged: dict[int, int]) -> int:
        """Messages of the assigned partitions past ``logged`` (partition -> next offset)."""
        ...

    def caught_up(self, positions: dict[int, int]) -> bool:
        """Whether ``positions`` (partition -> next offset) reach the end of every assigned
        partition as the last fetches reported it. No request: a partition not fetched yet
        is not caught up."""
        ...

    def close(self) -> None: ...
