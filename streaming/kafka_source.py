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
        block = Block()
        for tp, records in polled.items():
            block.partitions += [tp.partition] * len(records)
            block.offsets += [r.offset for r in records]
            block.keys += [r.key for r in records]
            block.values += [r.value for r in records]
            block.headers += [r.headers for r in records]
        return block

    def assigned(self) -> set[int]:
        return {tp.partition for tp in self._consumer.assignment()}

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

    def lag(self) -> int:
        """Messages behind the end of the topic; Tansu's end offsets can be short: clamp at 0."""
        try:
            ids = self._consumer.partitions_for_topic(self.topic) or ()
            partitions = [TopicPartition(self.topic, p) for p in ids]
            if not partitions:
                return 0
            ends = self._consumer.end_offsets(partitions, timeout_ms=self._timeout_ms)
            committed = {
                tp: self._consumer.committed(tp, timeout_ms=self._timeout_ms) or 0
                for tp in partitions
            }
        except KafkaError as error:
            raise self._failed(error) from None
        return sum(max(0, ends[tp] - committed[tp]) for tp in partitions)

    def close(self) -> None:
        self._consumer.close(autocommit=False, timeout_ms=self._timeout_ms)

    def _failed(self, error: Exception) -> BrokerUnavailable:
        return BrokerUnavailable(f"Kafka at {self.bootstrap} failed mid-batch: {error}")
