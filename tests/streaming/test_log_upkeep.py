"""The log over time: time-partitioned segments, reads by event-time window and by offset
range, compaction of small segments and retention, neither touching what training has not
read nor changing what any read returns."""

from __future__ import annotations

import time

import pyarrow as pa
import pytest

from streaming.events import LOG_SCHEMA
from streaming.log import InteractionLog, LogError
from tests.streaming.test_log import TS, batch


def offsets_of(table: pa.Table) -> list[tuple[int, int]]:
    return list(zip(table["partition"].to_pylist(), table["offset"].to_pylist(), strict=True))


def files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.parquet"))


@pytest.fixture
def log(tmp_path) -> InteractionLog:
    """Six segments: segment s (1..6) holds partition 0 offsets 10(s-1) .. 10(s-1)+4, plus
    segment 4 holds nothing but dead-lettered offsets of partition 1."""
    log = InteractionLog(tmp_path / "log")
    for s in range(1, 7):
        if s == 4:
            log.append(LOG_SCHEMA.empty_table(), {1: (0, 2)})
            continue
        first = 10 * (s - 1)
        log.append(batch(0, range(first, first + 5)), {0: (first, first + 4)})
    return log


WINDOWS = [{}, {"after": 2}, {"through": 3}, {"after": 1, "through": 5}, {"after": 3, "through": 4}]


def test_layouts_put_segments_under_their_ingestion_day_or_hour(tmp_path):
    now = time.gmtime()
    hourly = InteractionLog(tmp_path / "h", layout="hour")
    segment = hourly.append(batch(0, range(2)), {0: (0, 1)})
    assert segment.file.startswith(time.strftime("date=%Y-%m-%d/hour=", now))
    assert (tmp_path / "h" / segment.file).exists()
    flat = InteractionLog(tmp_path / "f", layout="flat")
    assert flat.append(batch(0, range(2)), {0: (0, 1)}).file == "seg-00000001.parquet"
    with pytest.raises(ValueError, match="log layout 'weekly'"):
        InteractionLog(tmp_path / "w", layout="weekly")


def test_read_window_by_event_time_is_start_inclusive_end_exclusive(log):
    # event ts is TS + offset; segment 2 holds offsets 10..14, segment 3 holds 20..24
    got = log.read_window(TS + 12, TS + 21)
    assert offsets_of(got) == [(0, 12), (0, 13), (0, 14), (0, 20)]
    assert log.read_window(TS + 50).num_rows == 5
    assert log.read_window(end_ms=TS + 2, columns=["item_id"]).to_pylist() == [
        {"item_id": "i0"},
        {"item_id": "i1"},
    ]
    assert log.read_window(TS + 1_000, TS + 2_000).schema == LOG_SCHEMA


def test_read_offsets_returns_one_partitions_range(log):
    assert offsets_of(log.read_offsets(0, 13, 21)) == [(0, 13), (0, 14), (0, 20), (0, 21)]
    assert log.read_offsets(1, 0, 100).num_rows == 0  # dead-lettered: covered, no rows
    assert log.read_offsets(0, 5, 9).num_rows == 0  # a gap between segments


def test_compaction_merges_trained_segments_and_every_read_is_unchanged(log):
    log.mark_trained(5)
    before = {str(w): offsets_of(log.read(**w)) for w in WINDOWS}
    nexts = log.next_offsets()
    report = log.compact(target_rows=12)
    # segments 1-2 (10 rows) and 3-5 (10 rows, 4 has none) merge; 6 is untrained: untouched
    manifest = log.manifest()
    assert [(s.first, s.id, s.rows) for s in manifest.segments] == [
        (1, 2, 10),
        (3, 5, 10),
        (6, 6, 5),
    ]
    assert (report.segments_before, report.segments_after) == (6, 3)
    assert manifest.segments[1].offsets == {"0": [20, 44], "1": [0, 2]}
    assert (manifest.segments[1].min_ts, manifest.segments[1].max_ts) == (TS + 20, TS + 44)
    assert [f.split("/")[-1] for f in files(log.root)] == [
        "seg-00000001-00000002.parquet",
        "seg-00000003-00000005.parquet",
        "seg-00000006.parquet",
    ]
    assert {str(w): offsets_of(log.read(**w)) for w in WINDOWS} == before
    assert log.read(after=1, through=3).schema == LOG_SCHEMA
    assert log.next_offsets() == nexts
    assert log.manifest().ingested_through == 6
    assert log.append(batch(0, range(60, 61)), {0: (60, 60)}).id == 7


def test_compaction_never_crosses_the_trained_cursor(log):
    log.mark_trained(1)
    log.compact(target_rows=1_000)
    assert [s.first for s in log.manifest().segments] == [1, 2, 3, 4, 5, 6]
    log.mark_trained(6)
    log.compact(target_rows=1_000)
    [merged] = log.manifest().segments
    assert (merged.first, merged.id, merged.rows) == (1, 6, 25)
    log.mark_trained(2)  # a rollback into the merged segment: windows still read exactly
    assert offsets_of(log.read(after=2))[:2] == [(0, 20), (0, 21)]
    assert len(offsets_of(log.read(through=2))) == 10


def test_files_left_by_a_crashed_compaction_are_removed_by_the_next_writer(log):
    log.mark_trained(3)
    part = log.root / log.manifest().segments[0].file
    kept = part.read_bytes()
    log.compact(target_rows=100)
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(kept)  # as if the process died after the manifest, before deleting
    (part.parent / ".seg-00000009-00000010.parquet.tmp").write_bytes(b"half")
    assert offsets_of(log.read(through=1))[0] == (0, 0)  # readers ignore what no manifest names
    log.append(batch(0, range(60, 61)), {0: (60, 60)})
    assert part.name not in [f.split("/")[-1] for f in files(log.root)]
    assert not (part.parent / ".seg-00000009-00000010.parquet.tmp").exists()


def test_a_reader_that_raced_upkeep_starts_over(log, monkeypatch):
    stale = log.manifest()
    log.mark_trained(6)
    log.compact()
    fresh = InteractionLog.manifest
    calls = []

    def first_stale(self):
        calls.append(1)
        return stale if len(calls) == 1 else fresh(self)

    monkeypatch.setattr(InteractionLog, "manifest", first_stale)
    assert log.read().num_rows == 25
    assert len(calls) == 2


def test_retention_deletes_old_trained_segments_and_keeps_their_offsets(log):
    created = [s.created_s for s in log.manifest().segments]
    nexts = log.next_offsets()
    later = created[-1] + 3_600
    log.mark_trained(3)
    report = log.retain(max_age_s=60, now_s=later)
    assert (report.segments_before, report.segments_after) == (6, 3)
    assert (report.rows_removed, report.kept_untrained) == (15, 3)
    manifest = log.manifest()
    assert [s.id for s in manifest.segments] == [4, 5, 6]
    assert manifest.deleted_through == 3
    assert log.next_offsets() == nexts  # deleted offsets are still known: never re-ingested
    assert offsets_of(log.read())[0] == (0, 40)
    assert len(files(log.root)) == 2
    with pytest.raises(LogError, match="offset 12 is already in the log"):
        log.append(batch(0, range(12, 13)), {0: (12, 12)})
    assert log.append(batch(0, range(10, 13)), {0: (10, 12)}, skip_logged=True) is None


def test_retention_keeps_young_segments_and_everything_untrained(log):
    now = log.manifest().segments[-1].created_s
    log.mark_trained(6)
    assert log.retain(max_age_s=3_600, now_s=now).segments_after == 6  # all young
    log.mark_trained(0)
    report = log.retain(max_age_s=0, now_s=now + 10)
    assert (report.segments_after, report.kept_untrained) == (6, 6)


def test_a_log_emptied_by_retention_keeps_counting(log):
    nexts = log.next_offsets()
    log.mark_trained(6)
    log.retain(max_age_s=0, now_s=time.time() + 10)
    assert log.manifest().segments == []
    assert log.manifest().ingested_through == 6
    assert log.next_offsets() == nexts
    assert log.read().num_rows == 0
    assert log.append(batch(0, range(55, 57)), {0: (55, 56)}).id == 7
