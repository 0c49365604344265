"""RecentKeys finds exactly the repeats a brute-force scan finds, chunk by chunk and across
batches, including the lookback window forgetting old batches."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.duplicates import RecentKeys

EVENT = st.tuples(st.sampled_from("abc"), st.sampled_from("xyz"), st.integers(0, 6))
BATCH = st.lists(st.lists(EVENT, max_size=12), min_size=1, max_size=3)  # chunks of a batch


def table(events: list[tuple[str, str, int]]) -> pa.Table:
    users, items, ts = zip(*events, strict=True) if events else ((), (), ())
    return pa.table(
        {
            "user_id": pa.array(users, pa.string()),
            "item_id": pa.array(items, pa.string()),
            "ts": pa.array(ts, pa.int64()),
        }
    )


@settings(max_examples=300, deadline=None)
@given(batches=st.lists(BATCH, min_size=1, max_size=5), lookback=st.integers(0, 3))
def test_repeats_match_a_brute_force_scan(batches, lookback):
    recent = RecentKeys(lookback)
    history: list[list[tuple]] = []  # logged batches, oldest first
    for chunks in batches:
        earlier = {e for batch in history[-lookback:] if lookback for e in batch}
        this_batch: list[tuple] = []
        for chunk in chunks:
            events = table(chunk)
            found = recent.repeats(events)
            expected = []
            for row, event in enumerate(chunk):
                if event in earlier or event in this_batch:
                    expected.append(row)
                this_batch.append(event)
            assert found.tolist() == expected
            recent.hold(events)
        recent.settle()
        if this_batch:  # a batch with no events is not one of the recent batches
            history.append(this_batch)
