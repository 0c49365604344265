"""The interaction log: segments, the manifest's offset ranges, and its exactly-once guards."""

from __future__ import annotations

import json
import time

import pyarrow as pa
import pytest

from streaming.events import LOG_SCHEMA
from streaming.log import MANIFEST, InteractionLog, LogError, Manifest

TS = 1_650_000_000_000


def day(segment) -> str:
    """The directory of a segment's ingestion day (UTC)."""
    return time.strftime("date=%Y-%m-%d", time.gmtime(segment.created_s))


def batch(partition: int, offsets: range, users: str = "u") -> pa.Table:
    """One row per offset; item ``i<offset>``, ts increasing with the offset."""
    n = len(offsets)
    return pa.table(
        {
            "user_id": [f"{users}{o % 3}" for o in offsets],
            "item_id": [f"i{o}" for o in offsets],
            "ts": [TS + o for o in offsets],
            "event_type": [None] * n,
            "weight": [None] * n,
            "partition": [partition] * n,
            "offset": list(offsets),
        },
        schema=LOG_SCHEMA,
    )


def test_empty_log_reads_as_an_empty_table_with_the_log_schema(tmp_path):
    log = InteractionLog(tmp_path / "log")
    assert log.manifest() == Manifest()
    assert log.next_offsets() == {}
    table = log.read()
    assert table.num_rows == 0 and table.schema == LOG_SCHEMA
    assert log.read(columns=["user_id", "ts"]).column_names == ["user_id", "ts"]


def test_append_then_read_round_trips_rows_and_records_the_segment(tmp_path):
    log = InteractionLog(tmp_path / "log")
    events = pa.concat_tables([batch(0, range(0, 3)), batch(2, range(10, 12))])
    segment = log.append(events, {0: (0, 2), 2: (10, 11)})
    assert segment.id == 1
    assert segment.file == f"{day(segment)}/seg-00000001.parquet"  # a directory per UTC day
    assert segment.rows == 5
    assert segment.offsets == {"0": [0, 2], "2": [10, 11]}
    assert (segment.min_ts, segment.max_ts) == (TS, TS + 11)
    assert log.read().to_pylist() == events.to_pylist()
    assert log.read(columns=["item_id"]).column("item_id").to_pylist() == [
        "i0",
        "i1",
        "i2",
        "i10",
        "i11",
    ]


def test_next_offsets_is_one_past_the_highest_logged_offset_per_partition(tmp_path):
    log = InteractionLog(tmp_path / "log")
    log.append(batch(0, range(0, 5)), {0: (0, 4)})
    log.append(batch(1, range(0, 2)), {1: (0, 1)})
    log.append(batch(0, range(5, 7)), {0: (5, 6)})
    assert log.next_offsets() == {0: 7, 1: 2}
    manifest = log.manifest()
    assert [s.id for s in manifest.segments] == [1, 2, 3]
    assert [s.offsets for s in manifest.segments] == [
        {"0": [0, 4]},
        {"1": [0, 1]},
        {"0": [5, 6]},
    ]
    assert manifest.ingested_through == 3
    assert manifest.trained_through == 0


def test_offset_ranges_cover_rejected_offsets_too(tmp_path):
    """Offsets 1 and 3 were dead-lettered: the range still covers them, so they are skipped."""
    log = InteractionLog(tmp_path / "log")
    kept = batch(0, range(0, 5)).take([0, 2, 4])
    log.append(kept, {0: (0, 4)})
    assert log.next_offsets() == {0: 5}
    assert log.read().column("offset").to_pylist() == [0, 2, 4]
    with pytest.raises(LogError):
        log.append(batch(0, range(3, 4)), {0: (3, 3)})


@pytest.mark.parametrize("first", [0, 3, 4])
def test_overlapping_append_is_refused_and_leaves_the_log_unchanged(tmp_path, first):
    log = InteractionLog(tmp_path / "log")
    log.append(batch(0, range(0, 5)), {0: (0, 4)})
    before = (tmp_path / "log" / MANIFEST).read_text()
    with pytest.raises(
        LogError,
        match=rf"partition 0 offset {first} is already in the log "
        r"\(next is 5\)",
    ):
        log.append(batch(0, range(first, 8)), {0: (first, 7)})
    assert (tmp_path / "log" / MANIFEST).read_text() == before
    assert sorted(p.name for p in (tmp_path / "log").rglob("seg-*")) == ["seg-00000001.parquet"]
    assert log.read().num_rows == 5


def test_overlap_in_one_partition_refuses_the_whole_batch(tmp_path):
    log = InteractionLog(tmp_path / "log")
    log.append(batch(0, range(0, 2)), {0: (0, 1)})
    fresh_and_stale = pa.concat_tables([batch(1, range(0, 2)), batch(0, range(1, 3))])
    with pytest.raises(LogError):
        log.append(fresh_and_stale, {1: (0, 1), 0: (1, 2)})
    assert log.next_offsets() == {0: 2}


def test_append_after_the_logged_end_and_a_gap_is_accepted(tmp_path):
    """Kafka offsets may have gaps (compaction, transaction markers)."""
    log = InteractionLog(tmp_path / "log")
    log.append(batch(0, range(0, 2)), {0: (0, 1)})
    log.append(batch(0, range(9, 10)), {0: (9, 9)})
    assert log.next_offsets() == {0: 10}


def test_append_without_offsets_is_refused(tmp_path):
    log = InteractionLog(tmp_path / "log")
    with pytest.raises(LogError, match="at least one offset"):
        log.append(batch(0, range(0, 1)), {})
    assert not (tmp_path / "log" / MANIFEST).exists()


def test_all_rejected_batch_records_its_offsets_without_a_file(tmp_path):
    log = InteractionLog(tmp_path / "log")
    log.append(batch(0, range(0, 2)), {0: (0, 1)})
    segment = log.append(LOG_SCHEMA.empty_table(), {0: (2, 6), 3: (0, 0)})
    assert segment.id == 2
    assert segment.file is None
    assert segment.rows == 0
    assert (segment.min_ts, segment.max_ts) == (None, None)
    assert log.next_offsets() == {0: 7, 3: 1}
    assert sorted(p.name for p in (tmp_path / "log").rglob("seg-*")) == ["seg-00000001.parquet"]
    assert log.read().num_rows == 2
    assert log.read(after=1).num_rows == 0


def test_read_window_is_after_exclusive_through_inclusive(tmp_path):
    log = InteractionLog(tmp_path / "log")
    for segment in range(4):  # segment s+1 holds offsets 10s .. 10s+2
        offsets = range(10 * segment, 10 * segment + 3)
        log.append(batch(0, offsets), {0: (offsets[0], offsets[-1])})

    def offsets_read(**window) -> list[int]:
        return log.read(**window).column("offset").to_pylist()

    assert offsets_read() == [0, 1, 2, 10, 11, 12, 20, 21, 22, 30, 31, 32]
    assert offsets_read(after=2) == [20, 21, 22, 30, 31, 32]
    assert offsets_read(through=2) == [0, 1, 2, 10, 11, 12]
    assert offsets_read(after=1, through=3) == [10, 11, 12, 20, 21, 22]
    assert offsets_read(after=3, through=3) == []
    assert offsets_read(after=4) == []


def test_orphans_of_a_crashed_append_are_ignored_and_overwritten(tmp_path):
    """A crash after the segment rename but before the manifest replace leaves files no
    manifest names: readers ignore them and the next append takes the segment id over."""
    root = tmp_path / "log"
    log = InteractionLog(root)
    log.append(batch(0, range(0, 2)), {0: (0, 1)})
    (root / "seg-00000002.parquet").write_bytes(b"half a parquet file")
    (root / ".seg-00000002.parquet.tmp").write_bytes(b"garbage")
    (root / f".{MANIFEST}.tmp").write_text("{not json")
    assert log.read().column("offset").to_pylist() == [0, 1]
    assert log.next_offsets() == {0: 2}

    segment = log.append(batch(0, range(2, 4)), {0: (2, 3)})
    assert segment.file == f"{day(segment)}/seg-00000002.parquet"
    assert log.read().column("offset").to_pylist() == [0, 1, 2, 3]
    assert not (root / ".seg-00000002.parquet.tmp").exists()


def test_manifest_survives_reopening(tmp_path):
    root = tmp_path / "log"
    first = InteractionLog(root)
    first.append(batch(0, range(0, 3)), {0: (0, 2)})
    first.append(LOG_SCHEMA.empty_table(), {1: (0, 4)})
    first.mark_trained(1)

    reopened = InteractionLog(root)
    assert reopened.manifest() == first.manifest()
    assert reopened.next_offsets() == {0: 3, 1: 5}
    assert reopened.manifest().trained_through == 1
    assert reopened.read().to_pylist() == batch(0, range(0, 3)).to_pylist()
    assert reopened.append(batch(0, range(3, 4)), {0: (3, 3)}).id == 3


def test_mark_trained_moves_within_the_ingested_segments(tmp_path):
    log = InteractionLog(tmp_path / "log")
    log.append(batch(0, range(0, 1)), {0: (0, 0)})
    log.append(batch(0, range(1, 2)), {0: (1, 1)})
    log.mark_trained(2)
    assert log.manifest().trained_through == 2
    log.mark_trained(1)  # a rollback moves the cursor back
    assert log.manifest().trained_through == 1
    with pytest.raises(LogError, match="cannot mark segment 3 trained: log ends at 2"):
        log.mark_trained(3)
    assert log.manifest().trained_through == 1


def test_mark_trained_on_an_empty_log_refuses_any_segment(tmp_path):
    log = InteractionLog(tmp_path / "log")
    with pytest.raises(LogError, match="log ends at 0"):
        log.mark_trained(1)


def test_unreadable_manifest_is_a_log_error_naming_the_file(tmp_path):
    root = tmp_path / "log"
    root.mkdir()
    (root / MANIFEST).write_text(json.dumps({"segments": [{"id": 1}], "trained_through": 0}))
    with pytest.raises(LogError, match=r"unreadable log manifest .*manifest\.json"):
        InteractionLog(root).next_offsets()
    (root / MANIFEST).write_text("{")
    with pytest.raises(LogError, match="unreadable log manifest"):
        InteractionLog(root).read()
