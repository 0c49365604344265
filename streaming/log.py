"""The interaction log: Parquet segments plus a manifest of the Kafka offsets they cover.

Delivery guarantee: a batch is *durable* once its segment file is written (temporary name,
fsync, rename) and the manifest that lists it has been replaced atomically (same dance).
Only then may the consumer commit its offsets. A crash before the manifest replace leaves an
orphan file that no manifest names (ignored by readers, removed by the next writer); a crash
after it but before the commit makes Kafka redeliver offsets the manifest already covers,
which ``next_offsets`` lets the consumer skip. So every offset lands in the log exactly once.

Layout: one segment per batch, under a directory per UTC day (or hour) of ingestion, Hive
style (``date=2026-11-25/seg-00000042.parquet``), so old data is easy to find and ship.
Segments are numbered; two cursors name them: ``ingested_through`` (the last one) and
``trained_through`` (moved by the cycle once a model trained on them is promoted).

Upkeep, both under the writers' lock and both only ever touching segments training has
read (ids up to ``trained_through``):

- ``compact`` merges runs of small segments into one file (``seg-<first>-<last>.parquet``,
  rows keeping their segment id), lists it in place of its parts with one manifest replace,
  then deletes the parts; reads by segment window still return exactly the same rows.
- ``retain`` deletes the oldest segments past an age; the manifest keeps the offsets they
  covered, so their events are never ingested again.

One process writes at a time (an exclusive ``flock`` on the log directory); readers take no
lock: they read the files one manifest names, and start over if upkeep removed one meanwhile.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from streaming.events import LOG_SCHEMA
from streaming.faults import fault_point

MANIFEST = "manifest.json"
LAYOUTS = {"day": "date=%Y-%m-%d", "hour": "date=%Y-%m-%d/hour=%H", "flat": ""}


class LogError(RuntimeError):
    """The log on disk is not what the manifest says."""


class TopicChanged(LogError):
    """The topic now has another id than the one the log was filled from: it was deleted and
    recreated, or the broker lost its data, and its offsets start over. Reading on would skip
    every event below the log's offsets as already logged."""


@dataclass(frozen=True)
class Segment:
    id: int
    file: str | None  # relative to the log root; None when every message was dead-lettered
    rows: int
    offsets: dict[str, list[int]]  # partition -> [first, last] inclusive, valid and invalid alike
    min_ts: int | None
    max_ts: int | None
    created_s: float
    first_id: int | None = None  # set when compaction merged segments first_id..id into this

    @property
    def first(self) -> int:
        return self.id if self.first_id is None else self.first_id


@dataclass
class Manifest:
    segments: list[Segment] = field(default_factory=list)
    trained_through: int = 0  # highest segment id a promoted model has trained on
    deleted_through: int = 0  # retention removed every segment up to this id
    deleted_offsets: dict[str, int] = field(default_factory=dict)  # and their next offsets
    topic_id: str | None = None  # the broker's id of the topic the offsets belong to

    @property
    def ingested_through(self) -> int:
        return self.segments[-1].id if self.segments else self.deleted_through


@dataclass(frozen=True)
class Upkeep:
    """What ``compact`` or ``retain`` did."""

    segments_before: int
    segments_after: int
    rows_removed: int = 0  # retention only
    kept_untrained: int = 0  # segments old enough to delete but not trained on yet


class InteractionLog:
    def __init__(self, root: Path, layout: str = "day") -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"log layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
        self.root = Path(root)
        self.layout = layout
        self._cached: tuple[bytes, Manifest] | None = None  # (manifest bytes, parsed)

    # --- reading ---------------------------------------------------------------------------
    def manifest(self) -> Manifest:
        """The manifest as on disk now (parsed again only when its bytes changed)."""
        path = self.root / MANIFEST
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return Manifest()
        if self._cached is None or self._cached[0] != raw:
            self._cached = (raw, _parse_manifest(path, raw))
        manifest = self._cached[1]
        return replace(manifest, segments=list(manifest.segments))

    def next_offsets(self) -> dict[int, int]:
        """Per partition, the first offset the log does not hold yet."""
        return _next_offsets(self.manifest())

    def read(
        self, after: int = 0, through: int | None = None, columns: list[str] | None = None
    ) -> pa.Table:
        """Events of segments ``after < id <= through`` in log order, as one Arrow table."""

        def pick(manifest: Manifest) -> list[tuple[Segment, list]]:
            chosen = []
            for s in manifest.segments:
                if not s.file or s.id <= after or (through is not None and s.first > through):
                    continue
                whole = s.first > after and (through is None or s.id <= through)
                high = s.id if through is None else through
                chosen.append(
                    (s, [] if whole else [("segment", ">", after), ("segment", "<=", high)])
                )
            return chosen

        return self._read(pick, columns)

    def read_window(
        self,
        start_ms: int | None = None,
        end_ms: int | None = None,
        columns: list[str] | None = None,
    ) -> pa.Table:
        """Events with ``start_ms <= ts < end_ms`` (event time), in log order."""
        bounds = []
        if start_ms is not None:
            bounds.append(("ts", ">=", start_ms))
        if end_ms is not None:
            bounds.append(("ts", "<", end_ms))

        def pick(manifest: Manifest) -> list[tuple[Segment, list]]:
            return [
                (s, bounds)
                for s in manifest.segments
                if s.file
                and (start_ms is None or s.max_ts >= start_ms)
                and (end_ms is None or s.min_ts < end_ms)
            ]

        return self._read(pick, columns)

    def read_offsets(
        self, partition: int, first: int, last: int, columns: list[str] | None = None
    ) -> pa.Table:
        """Events of Kafka ``partition`` with ``first <= offset <= last``, in log order."""
        bounds = [("partition", "=", partition), ("offset", ">=", first), ("offset", "<=", last)]

        def pick(manifest: Manifest) -> list[tuple[Segment, list]]:
            chosen = []
            for s in manifest.segments:
                span = s.offsets.get(str(partition))
                if s.file and span and span[0] <= last and span[1] >= first:
                    chosen.append((s, bounds))
            return chosen

        return self._read(pick, columns)

    def _read(
        self, pick: Callable[[Manifest], list[tuple[Segment, list]]], columns: list[str] | None
    ) -> pa.Table:
        """Read the segments ``pick`` chooses from the manifest, each with row filters; start
        over if upkeep replaced a file between reading the manifest and the file."""
        names = list(columns) if columns is not None else LOG_SCHEMA.names
        for _ in range(5):
            try:
                tables = [
                    pq.read_table(self.root / s.file, columns=names, filters=bounds or None)
                    for s, bounds in pick(self.manifest())
                ]
            except FileNotFoundError:
                continue
            if not tables:
                return pa.schema([LOG_SCHEMA.field(c) for c in names]).empty_table()
            return pa.concat_tables(tables)
        raise LogError(f"segments of {self.root} keep disappearing while read")

    # --- writing ---------------------------------------------------------------------------
    def append(
        self,
        events: pa.Table,
        offsets: dict[int, tuple[int, int]],
        skip_logged: bool = False,
        topic_id: str | None = None,
    ) -> Segment | None:
        """Make a batch durable: write its segment, then atomically list it in the manifest.

        Offsets the log already holds are an error, or with ``skip_logged`` are dropped (rows
        and ranges) under the log's lock: what a consumer does, since another group member may
        have logged them since it looked. Returns None when nothing new was left. The first
        ``topic_id`` given is kept; another one later is refused (``TopicChanged``).
        """
        if not offsets:
            raise LogError("a segment must cover at least one offset")
        with self._exclusive():
            manifest = self.manifest()
            self._check_topic(manifest, topic_id)
            manifest.topic_id = manifest.topic_id or topic_id
            if skip_logged:
                events, offsets = _without_logged(events, offsets, _next_offsets(manifest))
                if not offsets:
                    return None
            self._check_no_overlap(manifest, offsets)
            self._remove_orphans(manifest)
            segment_id = manifest.ingested_through + 1
            now = time.time()
            file = (
                self._file_name(f"seg-{segment_id:08d}.parquet", now) if events.num_rows else None
            )
            if file:
                _write_durably(self.root / file, lambda tmp: _write_parquet(events, tmp))
                fault_point("after_segment")
            ts = events.column("ts") if events.num_rows else None
            segment = Segment(
                id=segment_id,
                file=file,
                rows=events.num_rows,
                offsets={str(p): [first, last] for p, (first, last) in sorted(offsets.items())},
                min_ts=pc.min(ts).as_py() if ts is not None else None,
                max_ts=pc.max(ts).as_py() if ts is not None else None,
                created_s=now,
            )
            manifest.segments.append(segment)
            self._write_manifest(manifest)
            return segment

    def mark_trained(self, through: int) -> None:
        """Move the trained-through cursor (after a model that saw those segments is promoted)."""
        with self._exclusive():
            manifest = self.manifest()
            if through > manifest.ingested_through:
                raise LogError(
                    f"cannot mark segment {through} trained: log ends at "
                    f"{manifest.ingested_through}"
                )
            manifest.trained_through = through
            self._write_manifest(manifest)

    # --- upkeep ----------------------------------------------------------------------------
    def compact(self, target_rows: int = 200_000) -> Upkeep:
        """Merge runs of trained segments smaller than ``target_rows`` into files of about
        that size (never across the trained-through cursor)."""
        with self._exclusive():
            manifest = self.manifest()
            before = len(manifest.segments)
            merged: list[Segment] = []
            for run in _runs(manifest, target_rows):
                merged.append(self._merge(run) if len(run) > 1 else run[0])
            merged += [s for s in manifest.segments if s.id > manifest.trained_through]
            manifest.segments = merged
            self._write_manifest(manifest)
            self._remove_orphans(manifest)  # the merged parts, now that no manifest names them
            return Upkeep(before, len(merged))

    def retain(self, max_age_s: float, now_s: float | None = None) -> Upkeep:
        """Delete the oldest segments ingested more than ``max_age_s`` ago, but only those
        training has read; their offsets stay covered, so they are never ingested again."""
        cutoff = (time.time() if now_s is None else now_s) - max_age_s
        with self._exclusive():
            manifest = self.manifest()
            before = len(manifest.segments)
            expired = []
            for s in manifest.segments:
                if s.created_s >= cutoff or s.id > manifest.trained_through:
                    break
                expired.append(s)
            kept_untrained = sum(
                1
                for s in manifest.segments[len(expired) :]
                if s.created_s < cutoff and s.id > manifest.trained_through
            )
            if expired:
                nexts = _next_offsets(Manifest(expired, deleted_offsets=manifest.deleted_offsets))
                manifest.segments = manifest.segments[len(expired) :]
                manifest.deleted_through = expired[-1].id
                manifest.deleted_offsets = {str(p): o for p, o in sorted(nexts.items())}
                self._write_manifest(manifest)
                self._remove_orphans(manifest)
            return Upkeep(
                before,
                len(manifest.segments),
                rows_removed=sum(s.rows for s in expired),
                kept_untrained=kept_untrained,
            )

    # --- internals -------------------------------------------------------------------------
    def _merge(self, run: list[Segment]) -> Segment:
        """One file holding the rows of ``run`` (with their segment ids), as one segment."""
        tables = [
            pq.read_table(self.root / s.file, columns=LOG_SCHEMA.names).append_column(
                "segment", pa.array([s.id] * s.rows, pa.int64())
            )
            for s in run
            if s.file
        ]
        last = run[-1]
        file = None
        if tables:
            file = self._file_name(f"seg-{run[0].first:08d}-{last.id:08d}.parquet", last.created_s)
            table = pa.concat_tables(tables)
            _write_durably(self.root / file, lambda tmp: _write_parquet(table, tmp))
        spans: dict[str, list[int]] = {}
        for s in run:
            for p, (first, end) in s.offsets.items():
                low, high = spans.get(p, [first, end])
                spans[p] = [min(low, first), max(high, end)]
        times = [t for s in run for t in (s.min_ts, s.max_ts) if t is not None]
        return Segment(
            id=last.id,
            file=file,
            rows=sum(s.rows for s in run),
            offsets=dict(sorted(spans.items(), key=lambda kv: int(kv[0]))),
            min_ts=min(times) if times else None,
            max_ts=max(times) if times else None,
            created_s=last.created_s,
            first_id=run[0].first,
        )

    def _file_name(self, name: str, created_s: float) -> str:
        folder = time.strftime(LAYOUTS[self.layout], time.gmtime(created_s))
        return f"{folder}/{name}" if folder else name

    def _remove_orphans(self, manifest: Manifest) -> None:
        """Delete segment and temporary files no manifest names (a crashed write, merged or
        expired segments), then empty time directories. Called with the lock held."""
        named = {s.file for s in manifest.segments if s.file}
        for path in self.root.rglob("*"):
            name = path.name
            orphan = name.startswith("seg-") and name.endswith(".parquet")
            if path.is_file() and (
                (orphan and str(path.relative_to(self.root)) not in named)
                or (name.startswith(".") and name.endswith(".tmp"))
            ):
                path.unlink()
        for folder in sorted(self.root.rglob("date=*"), key=lambda p: -len(p.parts)):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()

    def adopt_topic(self, topic_id: str) -> None:
        """Follow a recreated topic from here on. Only right when the same stream was produced
        onto it again (same keys in the same order, so the same offsets): the log then reads
        on where it ended; otherwise offsets below its end would be skipped."""
        with self._exclusive():
            manifest = self.manifest()
            manifest.topic_id = topic_id
            self._write_manifest(manifest)

    def check_topic(self, topic_id: str | None) -> None:
        """Refuse (``TopicChanged``) a topic whose id differs from the one the log holds."""
        self._check_topic(self.manifest(), topic_id)

    def _check_topic(self, manifest: Manifest, topic_id: str | None) -> None:
        if topic_id and manifest.topic_id and topic_id != manifest.topic_id:
            raise TopicChanged(
                f"the topic's id is now {topic_id}, but the log in {self.root} was filled from "
                f"id {manifest.topic_id}: the topic was recreated or the broker lost its data "
                "(an embedded broker keeps topics in memory), so its offsets started over; "
                "nothing was read. Start over with a new STACKREC_HOME, or, if the same stream "
                "was produced onto the new topic again, continue with `stackrec adopt-topic`"
            )

    def _write_manifest(self, manifest: Manifest) -> None:
        body = {
            "segments": [_segment_json(s) for s in manifest.segments],
            "trained_through": manifest.trained_through,
            "deleted_through": manifest.deleted_through,
            "deleted_offsets": manifest.deleted_offsets,
            "topic_id": manifest.topic_id,
        }
        _write_durably(self.root / MANIFEST, lambda tmp: Path(tmp).write_text(json.dumps(body)))

    @staticmethod
    def _check_no_overlap(manifest: Manifest, offsets: dict[int, tuple[int, int]]) -> None:
        nexts = _next_offsets(manifest)
        for partition, (first, _) in offsets.items():
            if first < nexts.get(partition, 0):
                raise LogError(
                    f"partition {partition} offset {first} is already in the log "
                    f"(next is {nexts[partition]}): refusing to log it twice"
                )

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _parse_manifest(path: Path, data: bytes) -> Manifest:
    try:
        raw = json.loads(data)
        return Manifest(
            segments=[Segment(**s) for s in raw["segments"]],
            trained_through=raw["trained_through"],
            deleted_through=raw.get("deleted_through", 0),
            deleted_offsets=raw.get("deleted_offsets", {}),
            topic_id=raw.get("topic_id"),
        )
    except (ValueError, KeyError, TypeError) as error:
        raise LogError(f"unreadable log manifest {path}: {error}") from None


def _segment_json(segment: Segment) -> dict:
    body = asdict(segment)
    if body["first_id"] is None:
        del body["first_id"]
    return body


def _runs(manifest: Manifest, target_rows: int) -> Iterator[list[Segment]]:
    """Consecutive trained segments, grouped greedily up to ``target_rows`` rows each."""
    run: list[Segment] = []
    rows = 0
    for s in manifest.segments:
        if s.id > manifest.trained_through:
            break
        if run and rows + s.rows > target_rows:
            yield run
            run, rows = [], 0
        run.append(s)
        rows += s.rows
    if run:
        yield run


def _next_offsets(manifest: Manifest) -> dict[int, int]:
    nexts = {int(p): o for p, o in manifest.deleted_offsets.items()}
    for segment in manifest.segments:
        for partition, (_, last) in segment.offsets.items():
            nexts[int(partition)] = max(nexts.get(int(partition), 0), last + 1)
    return nexts


def _without_logged(
    events: pa.Table, offsets: dict[int, tuple[int, int]], nexts: dict[int, int]
) -> tuple[pa.Table, dict[int, tuple[int, int]]]:
    """The rows and offset ranges at or after each partition's next offset."""
    ranges = {
        p: (max(first, nexts.get(p, 0)), last)
        for p, (first, last) in offsets.items()
        if last >= nexts.get(p, 0)
    }
    if ranges == offsets:
        return events, offsets
    keep = pc.is_in(events.column("partition"), pa.array(list(ranges), pa.int32()))
    for partition, (first, _) in ranges.items():
        in_partition = pc.equal(events.column("partition"), partition)
        stale = pc.and_(in_partition, pc.less(events.column("offset"), first))
        keep = pc.and_(keep, pc.invert(stale))
    return events.filter(keep), ranges


def _write_parquet(table: pa.Table, path: str) -> None:
    """Snappy without dictionaries: ids are mostly distinct per segment, and dictionary
    encoding them doubles the write time for a larger file."""
    pq.write_table(table, path, use_dictionary=False)


def _write_durably(path: Path, write) -> None:
    """Write via a temporary name, fsync, rename over ``path``, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    write(str(tmp))
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
