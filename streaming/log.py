"""The interaction log: Parquet segments plus a manifest of the Kafka offsets they cover.

Delivery guarantee: a batch is *durable* once its segment file is written (temporary name,
fsync, rename) and the manifest that lists it has been replaced atomically (same dance).
Only then may the consumer commit its offsets. A crash before the manifest replace leaves an
orphan file that no manifest names (ignored, cleaned up on the next append); a crash after it
but before the commit makes Kafka redeliver offsets the manifest already covers, which
``next_offsets`` lets the consumer skip. So every offset lands in the log exactly once.

One process appends at a time (an exclusive ``flock`` on the log directory enforces it);
readers only ever see whole segments named by a manifest.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from streaming.events import LOG_SCHEMA
from streaming.faults import fault_point

MANIFEST = "manifest.json"


class LogError(RuntimeError):
    """The log on disk is not what the manifest says."""


@dataclass(frozen=True)
class Segment:
    id: int
    file: str | None  # None when every message of the batch was dead-lettered
    rows: int
    offsets: dict[str, list[int]]  # partition -> [first, last] inclusive, valid and invalid alike
    min_ts: int | None
    max_ts: int | None
    created_s: float


@dataclass
class Manifest:
    segments: list[Segment] = field(default_factory=list)
    trained_through: int = 0  # highest segment id a promoted model has trained on

    @property
    def ingested_through(self) -> int:
        return self.segments[-1].id if self.segments else 0


class InteractionLog:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # --- reading ---------------------------------------------------------------------------
    def manifest(self) -> Manifest:
        path = self.root / MANIFEST
        if not path.exists():
            return Manifest()
        try:
            raw = json.loads(path.read_text())
            return Manifest(
                segments=[Segment(**s) for s in raw["segments"]],
                trained_through=raw["trained_through"],
            )
        except (ValueError, KeyError, TypeError) as error:
            raise LogError(f"unreadable log manifest {path}: {error}") from None

    def next_offsets(self) -> dict[int, int]:
        """Per partition, the first offset the log does not hold yet."""
        return _next_offsets(self.manifest())

    def read(self, after: int = 0, through: int | None = None, columns: list[str] | None = None):
        """Events of segments ``after < id <= through`` in log order, as one Arrow table."""
        segments = [
            s
            for s in self.manifest().segments
            if s.id > after and (through is None or s.id <= through) and s.file
        ]
        tables = [pq.read_table(self.root / s.file, columns=columns) for s in segments]
        if not tables:
            schema = (
                LOG_SCHEMA if columns is None else pa.schema([LOG_SCHEMA.field(c) for c in columns])
            )
            return schema.empty_table()
        return pa.concat_tables(tables)

    # --- writing ---------------------------------------------------------------------------
    def append(
        self, events: pa.Table, offsets: dict[int, tuple[int, int]], skip_logged: bool = False
    ) -> Segment | None:
        """Make a batch durable: write its segment, then atomically list it in the manifest.

        Offsets the log already holds are an error, or with ``skip_logged`` are dropped (rows
        and ranges) under the log's lock: what a consumer does, since another group member may
        have logged them since it looked. Returns None when nothing new was left.
        """
        if not offsets:
            raise LogError("a segment must cover at least one offset")
        with self._exclusive():
            manifest = self.manifest()
            if skip_logged:
                events, offsets = _without_logged(events, offsets, _next_offsets(manifest))
                if not offsets:
                    return None
            self._check_no_overlap(manifest, offsets)
            segment_id = manifest.ingested_through + 1
            file = f"seg-{segment_id:08d}.parquet" if events.num_rows else None
            if file:
                _write_durably(self.root / file, lambda tmp: pq.write_table(events, tmp))
                fault_point("after_segment")
            ts = events.column("ts") if events.num_rows else None
            segment = Segment(
                id=segment_id,
                file=file,
                rows=events.num_rows,
                offsets={str(p): [first, last] for p, (first, last) in sorted(offsets.items())},
                min_ts=pc.min(ts).as_py() if ts is not None else None,
                max_ts=pc.max(ts).as_py() if ts is not None else None,
                created_s=time.time(),
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

    def _write_manifest(self, manifest: Manifest) -> None:
        body = {
            "segments": [asdict(s) for s in manifest.segments],
            "trained_through": manifest.trained_through,
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


def _next_offsets(manifest: Manifest) -> dict[int, int]:
    nexts: dict[int, int] = {}
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


def _write_durably(path: Path, write) -> None:
    """Write via a temporary name, fsync, rename over ``path``, fsync the directory."""
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
