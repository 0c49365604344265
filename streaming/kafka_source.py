"""The kafka-python consumer behind the ``Source`` interface (the design's default client)."""

from __future__ import annotations

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    KafkaError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)
from kafka.structs import OffsetAndMetadata

from streaming.kafka_config import KafkaConfig
from streaming.source import Block, CommitRejected, OnAssign
from streaming.topics import BrokerUnavailable

_REBALANCED = (
    CommitFailedError,
    IllegalGenerationError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)


class _StartWhereTold(ConsumerRebalanceListener):
    def __init__(self, consumer: KafkaConsumer, topic: str, on_assign: OnAssign) -> None:
        self.consumer, self.topic, self.on_assign = consumer, topic, on_assign

    def on_partitions_revoked(self, revoked) -> None:  # nothing uncommitted outlives a batch
        pass

    def on_partitions_assigned(self, assigned) -> None:
        starts = self.on_assign([tp.partition for tp in assigned])
        for tp in assigned:
            if tp.partition in starts:
                self.consumer.seek(tp, starts[tp.partition])


class KafkaPythonSource:
    """A consumer-group member of ``topic`` reading with kafka-python."""

    def __init__(
        self,
        kafka: KafkaConfig,
        topic: str,
        group_id: str,
        on_assign: OnAssign,
        session_timeout_ms: int,
        max_poll_interval_ms: int,
        max_poll_records: int,
    ) -> None:
        self.topic, self.bootstrap = topic, kafka.bootstrap
        self._timeout_ms = kafka.request_timeout_ms  # no call may block longer than this
        try:
            self._consumer = KafkaConsumer(
                group_id=group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=session_timeout_ms,
                heartbeat_interval_ms=max(100, session_timeout_ms // 3),
                max_poll_interval_ms=max_poll_interval_ms,
                max_poll_records=max_poll_records,
                **kafka.client_options(),
            )
        except KafkaError:
            raise BrokerUnavailable(
                f"no Kafka broker at {kafka.bootstrap}: start one with `stackrec up`"
            ) from None
        self._consumer.subscribe(
            [topic], listener=_StartWhereTold(self._consumer, topic, on_assign)
        )

    def poll(self, max_records: int, timeout_s: float) -> Block:
        try:
            polled = self._consumer.poll(
                timeout_ms=max(1, int(timeout_s * 1000)), max_records=max_records
            )
        except KafkaError as error:
            raise self._failed(error) from None
        block = Block(key_of=_key, headers_of=_headers)
        for tp, records in polled.items():
            block.partitions += [tp.partition] * len(records)
            block.offsets += [r.offset for r in records]
            block.values += [r.value for r in records]
            block.messages += records
        return block

    def assigned(self) -> set[int]:
        return {tp.partition for tp in self._consumer.assignment()}

    def topic_id(self) -> str | None:
        """From the metadata the consumer already fetched (kafka-python 3.0 keeps topic ids in
        its cluster metadata and has no public accessor for them)."""
        found = self._consumer._client.cluster.topic_id(self.topic)
        return str(found) if found else None

    def commit(self, offsets: dict[int, int]) -> None:
        try:
            self._consumer.commit(
                {
                    TopicPartition(self.topic, p): OffsetAndMetadata(o, "", -1)
                    for p, o in offsets.items()
                },
                timeout_ms=self._timeout_ms,
            )
        except _REBALANCED as error:
            raise CommitRejected(f"commit refused during a rebalance: {error}") from None
        except KafkaError as error:
            raise self._failed(error) from None

    def lag(self, logged: dict[int, int]) -> int:
        """From the high watermarks the fetches brought (no request), else end offsets; Tansu's
        can be short by the last batch, so each partition's lag is clamped at 0."""
        try:
            assigned = list(self._consumer.assignment())
            ends = {tp: self._consumer.highwater(tp) for tp in assigned}
            unknown = [tp for tp, end in ends.items() if end is None]
            if unknown:
                ends.update(self._consumer.end_offsets(unknown, timeout_ms=self._timeout_ms))
        except KafkaError as error:
            raise self._failed(error) from None
        return sum(max(0, ends[tp] - logged.get(tp.partition, 0)) for tp in assigned)

    def caught_up(self, positions: dict[int, int]) -> bool:
        ends = [(tp.partition, self._consumer.highwater(tp)) for tp in self._consumer.assignment()]
        return bool(ends) and all(end is not None and positions.get(p, 0) >= end for p, end in ends)

    def close(self) -> None:
        self._consumer.close(autocommit=False, timeout_ms=self._timeout_ms)

    def _failed(self, error: Exception) -> BrokerUnavailable:
        return BrokerUnavailable(f"Kafka at {self.bootstrap} failed mid-batch: {error}")


def _key(record) -> bytes | None:
    return record.key


def _headers(record) -> list[tuple[str, bytes]] | None:
    return record.headers
