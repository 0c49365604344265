"""Ingest: bounded batches from Kafka into the interaction log, exactly once.

Order of operations, which is the whole guarantee:

1. poll a bounded batch (max events or max wait) as a member of a consumer group, and refuse
   it (``TopicChanged``) if the topic's id is not the one the log was filled from: a recreated
   topic's offsets start over, and step 2 would otherwise skip them all;
2. drop records whose offsets the log already holds (a crash after step 4, before step 5);
3. validate; send rejects to ``<topic>.dlq`` with original bytes and a reason header, flush;
4. append valid events to the log: segment, then manifest, atomically, under the log's lock,
   dropping offsets another group member logged meanwhile (a rebalance mid-batch);
5. commit, per assigned partition, the log's next offset to the group.

A crash anywhere before 4 redoes the batch (the DLQ may then hold a reject twice: dead letters
are at least once); a crash between 4 and 5 is absorbed by step 2, and step 5 of the next batch
catches the group up. On assignment each partition starts at the log's next offset, not the
group's: the log is the source of truth, the group's offsets are for monitoring and for the
partitions the log has never seen. A failed batch closes the consumer, so the next batch
rejoins and restarts from the log, as a restarted process would. One ``Ingestor``, one consumer,
one thread (neither client is thread-safe).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType

import numpy as np
import pyarrow as pa

from monitoring import metrics
from streaming.deadletters import DeadLetterSender
from streaming.duplicates import POLICIES, RecentKeys
from streaming.events import Rejection
from streaming.faults import fault_point
from streaming.kafka_config import KafkaConfig
from streaming.log import InteractionLog
from streaming.source import CLIENTS, Block, CommitRejected, Source
from streaming.topics import require_broker
from streaming.validation import Validated, validate_block

POLL_SLICE_S = 0.1  # one poll's wait: confluent's consume() waits all of it for a full batch
DUPLICATE = Rejection("duplicate", "same user_id, item_id and ts as an event logged recently")


@dataclass(frozen=True)
class ConsumerConfig:
    topic: str = "interactions"
    group_id: str = "stackrec"
    max_events: int = 50_000  # upper bound of one batch
    max_wait_s: float = 5.0  # upper bound of time spent polling one batch (after the join)
    idle_poll_ms: int = 1_000  # this long with nothing new ends a non-empty batch (not caught up)
    session_timeout_ms: int = 6_000  # Tansu needs this low, or each group join waits ~23 s
    max_poll_interval_ms: int = 300_000  # also the rebalance timeout
    client: str = "kafka-python"  # or "confluent" (optional extra, several times faster)
    duplicates: str = "keep"  # keep | drop | dead-letter: see streaming.duplicates
    duplicate_lookback_batches: int = 2  # recent batches a duplicate is looked for in
    fast_validation: bool = True  # pyarrow.json over plain messages (same verdicts, faster)

    def __post_init__(self) -> None:
        if self.client not in CLIENTS:
            raise ValueError(f"client {self.client!r}: expected one of {', '.join(CLIENTS)}")
        if self.duplicates not in POLICIES:
            raise ValueError(
                f"duplicates policy {self.duplicates!r}: expected one of {', '.join(POLICIES)}"
            )
        if self.max_events < 1:
            raise ValueError(f"max_events {self.max_events}: must be at least 1")


@dataclass
class IngestResult:
    read: int = 0  # messages polled from Kafka
    skipped: int = 0  # already in the log (redelivered after a crash, or logged by a peer)
    logged: int = 0
    dead_lettered: int = 0
    duplicates: int = 0  # repeats of (user, item, ts), handled per the duplicates policy
    reasons: dict[str, int] = field(default_factory=dict)
    offsets: dict[int, list[int]] = field(default_factory=dict)  # partition -> [first, last]
    committed: dict[int, int] = field(default_factory=dict)  # partition -> next offset, durable
    segment: int | None = None
    lag: int = 0
    seconds: float = 0.0


class Ingestor:
    """A long-lived consumer-group member feeding ``log``, one bounded batch per ``batch()``."""

    def __init__(
        self,
        kafka: KafkaConfig,
        config: ConsumerConfig,
        log: InteractionLog,
        on_stage: Callable[[str, float], None] | None = None,
    ) -> None:
        self.kafka, self.config, self.log, self.on_stage = kafka, config, log, on_stage
        self._source: Source | None = None
        self._dead_letters = DeadLetterSender(kafka, config.topic)
        self._recent = RecentKeys(config.duplicate_lookback_batches)
        self._carry = Block()  # polled while joining, not handled yet
        self._pool: ThreadPoolExecutor | None = None  # validates chunks while the next is polled

    def join(self, timeout_s: float = 30.0) -> set[int]:
        """Join the group and wait (at most ``timeout_s``) for partitions; returns them.

        A service's readiness check, and a benchmark's clean start. Messages polled while
        waiting are kept for the next batch."""
        try:
            source = self._open()
            deadline = time.monotonic() + timeout_s
            while not source.assigned() and time.monotonic() < deadline:
                room = self.config.max_events - len(self._carry)
                if room <= 0:
                    break
                self._carry.extend(source.poll(room, 0.1))
            return source.assigned()
        except BaseException:
            self.close()
            raise

    def batch(self) -> IngestResult:
        """Consume one bounded batch into the log and commit it; see the module docstring."""
        started = time.perf_counter()
        try:
            source = self._open()
            batch = self._poll(source)
            polled = time.perf_counter()
            topic_id = source.topic_id()
            self.log.check_topic(topic_id)  # before anything is skipped as already logged
            result = self._log(batch, topic_id)
            logged = time.perf_counter()
            result.committed = self._commit(source)
            fault_point("after_commit")
            result.lag = source.lag(self.log.next_offsets())
        except BaseException:
            self.close()  # the next batch rejoins and restarts from the log
            raise
        if self.on_stage:
            self.on_stage("consume", polled - started)
            self.on_stage("log", logged - polled)
        result.seconds = time.perf_counter() - started
        _count(self.config.topic, result)
        return result

    def close(self) -> None:
        try:
            if self._source is not None:
                self._source.close()
        finally:
            self._source = None
            self._carry = Block()
            self._dead_letters.close()
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def __enter__(self) -> Ingestor:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- steps -------------------------------------------------------------------------------
    def _open(self) -> Source:
        if self._source is None:
            require_broker(self.kafka)
            self._recent = RecentKeys(self.config.duplicate_lookback_batches)
            for recent in self._recent_in_log():
                self._recent.remember(recent)
            self._source = open_source(self.kafka, self.config, self._starts)
        return self._source

    def _recent_in_log(self) -> list[pa.Table]:
        """The last segments' keys, so duplicate detection survives a restart."""
        lookback = self.config.duplicate_lookback_batches
        segments = (
            [s for s in self.log.manifest().segments if s.file][-lookback:] if lookback else []
        )
        columns = ["user_id", "item_id", "ts"]
        return [self.log.read(s.id - 1, s.id, columns) for s in segments]

    def _starts(self, partitions: list[int]) -> dict[int, int]:
        """Where newly assigned partitions start: where the log ends."""
        logged = self.log.next_offsets()
        return {p: logged[p] for p in partitions if p in logged}

    def _poll(self, source: Source) -> _Polled:
        """One bounded batch; the max-wait clock starts once the group has assigned us
        partitions (a join takes seconds on Tansu, and must not eat the batch's time). Each
        polled chunk is validated on a worker thread while the next one is polled."""
        config = self.config
        polled = _Polled(self.log.next_offsets())
        polled.take(self._carry, self._validate)
        self._carry = Block()
        join_deadline = time.monotonic() + 3 * config.session_timeout_ms / 1000
        while not source.assigned() and time.monotonic() < join_deadline:
            polled.take(source.poll(config.max_events, 0.1), self._validate)
        deadline = time.monotonic() + config.max_wait_s
        idle_since = time.monotonic()
        while polled.read < config.max_events and time.monotonic() < deadline:
            if polled.read and source.caught_up(polled.positions):
                break  # at the ends the fetches reported: no idle poll to find that out
            wait_s = min(POLL_SLICE_S, max(0.001, deadline - time.monotonic()))
            fresh = source.poll(config.max_events - polled.read, wait_s)
            if fresh:
                idle_since = time.monotonic()
            elif polled.read and time.monotonic() - idle_since >= config.idle_poll_ms / 1000:
                break  # nothing new for idle_poll_ms
            polled.take(fresh, self._validate)
            if polled.read:
                fault_point("mid_poll")
        return polled

    def _validate(self, values: list[bytes | None]) -> Future:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="stackrec-validate")
        return self._pool.submit(self._check, values)

    def _check(self, values: list[bytes | None]) -> _Checked:
        """On the one worker thread, chunk after chunk in order (so each sees the earlier
        ones): validate, then find repeats of recent events."""
        valid = validate_block(values, None, self.config.fast_validation)
        repeats = self._recent.repeats(valid.events)
        self._recent.hold(valid.events)
        return _Checked(valid, repeats)

    def _log(self, polled: _Polled, topic_id: str | None) -> IngestResult:
        block = polled.block
        result = IngestResult(read=polled.read, skipped=polled.read - len(block))
        if not block:
            return result
        checked = polled.validated()
        rejected, repeats = checked.valid.rejected, checked.repeats
        events, rows = checked.valid.events, checked.valid.rows
        partitions = np.asarray(block.partitions, dtype=np.int64)
        offsets = np.asarray(block.offsets, dtype=np.int64)
        result.duplicates = len(repeats)
        if len(repeats) and self.config.duplicates != "keep":
            kept = np.ones(len(rows), dtype=bool)
            kept[repeats] = False
            if self.config.duplicates == "dead-letter":
                rejected = sorted(
                    [*rejected, *((int(rows[i]), DUPLICATE) for i in repeats)],
                    key=lambda pair: pair[0],
                )
            events, rows = events.filter(kept), rows[kept]
        self._dead_letter(block, rejected)
        ranges = {
            int(p): (int(offsets[partitions == p].min()), int(offsets[partitions == p].max()))
            for p in np.unique(partitions)
        }
        table = events.append_column(
            "partition", pa.array(partitions[rows], pa.int32())
        ).append_column("offset", pa.array(offsets[rows], pa.int64()))
        segment = self.log.append(table, ranges, skip_logged=True, topic_id=topic_id)
        fault_point("after_manifest")
        self._recent.settle()
        result.logged = segment.rows if segment else 0
        result.skipped += table.num_rows - result.logged
        result.segment = segment.id if segment else None
        result.dead_lettered = len(rejected)
        for _, rejection in rejected:
            result.reasons[rejection.reason] = result.reasons.get(rejection.reason, 0) + 1
        result.offsets = {p: [first, last] for p, (first, last) in ranges.items()}
        return result

    def _dead_letter(self, block: Block, rejected: list[tuple[int, Rejection]]) -> None:
        """Send rejects with their original bytes; flush so they are durable before the log."""
        if not rejected:
            return
        for row, rejection in rejected:
            self._dead_letters.send(
                block.key(row),
                block.values[row],
                block.partitions[row],
                block.offsets[row],
                rejection,
                block.headers(row),
            )
        self._dead_letters.flush()
        fault_point("after_dead_letter")

    def _commit(self, source: Source) -> dict[int, int]:
        """Commit exactly what is durable: also catches up after a crash before a commit."""
        durable = self.log.next_offsets()
        offsets = {p: durable[p] for p in source.assigned() if p in durable}
        if not offsets:
            return {}
        try:
            source.commit(offsets)
        except CommitRejected:  # a rebalance: the log holds the batch; the next one commits
            metrics.COMMITS_REJECTED.labels(self.config.topic).inc()
            return {}
        return offsets


class _Polled:
    """A batch as polled: the fresh messages (offsets the log does not hold) and, per chunk,
    the pending validation of its values."""

    def __init__(self, logged_next: dict[int, int]) -> None:
        self.logged_next = logged_next
        self.positions = dict(logged_next)  # partition -> next offset to read, polled included
        self.block = Block()
        self.read = 0
        self.checks: list[tuple[int, Future]] = []  # (row of the chunk's first message, result)

    def take(self, chunk: Block, validate: Callable[[list], Future]) -> None:
        self.read += len(chunk)
        if not chunk:
            return
        partitions = np.asarray(chunk.partitions, dtype=np.int64)
        offsets = np.asarray(chunk.offsets, dtype=np.int64)
        for partition in np.unique(partitions).tolist():
            last = int(offsets[partitions == partition].max())
            self.positions[partition] = max(self.positions.get(partition, 0), last + 1)
        stale = np.zeros(len(chunk), dtype=bool)
        for partition, next_offset in self.logged_next.items():
            stale |= (partitions == partition) & (offsets < next_offset)
        if stale.any():
            chunk = chunk.take(np.flatnonzero(~stale).tolist())
            if not chunk:
                return
        self.checks.append((len(self.block), validate(chunk.values)))
        self.block.extend(chunk)

    def validated(self) -> _Checked:
        """The chunks' verdicts as one, rows numbered across the whole batch."""
        tables, rows, rejected, repeats, valid_before = [], [], [], [], 0
        for base, check in self.checks:
            part: _Checked = check.result()
            tables.append(part.valid.events)
            rows.append(part.valid.rows + base)
            rejected += [(row + base, why) for row, why in part.valid.rejected]
            repeats.append(part.repeats + valid_before)
            valid_before += part.valid.events.num_rows
        valid = Validated(pa.concat_tables(tables), np.concatenate(rows), rejected)
        return _Checked(valid, np.concatenate(repeats))


@dataclass
class _Checked:
    valid: Validated
    repeats: np.ndarray  # indices into valid.events of repeats of earlier events


def ingest_batch(
    kafka: KafkaConfig,
    config: ConsumerConfig,
    log: InteractionLog,
    on_stage: Callable[[str, float], None] | None = None,
) -> IngestResult:
    """Join the group, consume one bounded batch into ``log``, commit it, leave."""
    with Ingestor(kafka, config, log, on_stage) as ingestor:
        return ingestor.batch()


def ingest_pending(
    kafka: KafkaConfig,
    config: ConsumerConfig,
    log: InteractionLog,
    on_batch: Callable[[IngestResult], None] | None = None,
) -> list[IngestResult]:
    """Consume batches into ``log`` until the group has caught up (no lag left, or a batch that
    found nothing): a backfill without training.

    A stream that outpaces ingest would never leave it caught up, so it also stops once it has
    read twice what was pending after its first batch; the rest waits for the next cycle."""
    results: list[IngestResult] = []
    read = 0
    with Ingestor(kafka, config, log) as ingestor:
        while True:
            result = ingestor.batch()
            results.append(result)
            read += result.read
            if on_batch:
                on_batch(result)
            pending = results[0].read + results[0].lag
            if result.lag == 0 or result.read == 0 or read >= 2 * pending:
                return results


def open_source(
    kafka: KafkaConfig, config: ConsumerConfig, on_assign: Callable[[list[int]], dict[int, int]]
) -> Source:
    """A consumer of ``config.topic`` with the client ``config.client`` names."""
    if config.client == "confluent":
        from streaming.confluent_source import ConfluentSource as chosen
    else:
        from streaming.kafka_source import KafkaPythonSource as chosen
    return chosen(
        kafka,
        config.topic,
        config.group_id,
        on_assign,
        session_timeout_ms=config.session_timeout_ms,
        max_poll_interval_ms=config.max_poll_interval_ms,
        max_poll_records=min(config.max_events, 10_000),
    )


def _count(topic: str, result: IngestResult) -> None:
    metrics.EVENTS_CONSUMED.labels(topic).inc(result.read)
    metrics.EVENTS_LOGGED.labels(topic).inc(result.logged)
    for reason, n in result.reasons.items():
        metrics.EVENTS_DEAD_LETTERED.labels(topic, reason).inc(n)
    if result.duplicates:
        metrics.EVENTS_DUPLICATE.labels(topic).inc(result.duplicates)
    metrics.CONSUMER_LAG.labels(topic).set(result.lag)
