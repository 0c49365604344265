"""Duplicate events: the same (user, item, ts) seen again, within a batch or shortly after.

A producer retry or a replayed file sends the same interaction twice; whether a second copy
is noise or a real repeat (two plays in the same millisecond) is the product's call, so the
policy is a setting: ``keep`` (log it, count it: the default), ``drop`` (count it, do not log
it) or ``dead-letter`` (send it to the DLQ with reason ``duplicate``). The first copy is always
logged. Detection looks back over a bounded number of recent batches (seeded from the log's
last segments on start), not the whole log. Keys are joined with U+001F, which no valid id
holds (ids are printable), so two different events never share a key.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

POLICIES = ("keep", "drop", "dead-letter")


def keys_of(events: pa.Table) -> pa.Array:
    """One string per row identifying (user_id, item_id, ts)."""
    joined = pc.binary_join_element_wise(
        events.column("user_id"),
        events.column("item_id"),
        pc.cast(events.column("ts"), pa.string()),
        "\x1f",
    )
    return joined.combine_chunks() if isinstance(joined, pa.ChunkedArray) else joined


class RecentKeys:
    """The keys of the last ``batches`` batches, to find repeats of recent events.

    A batch arrives in chunks: each chunk is checked against the recent batches and the
    batch's earlier chunks (``hold``), and the batch joins the recent ones once it is logged
    (``settle``). A repeat has the same timestamp as what it repeats, so the strings are only
    compared for rows whose ``ts`` occurs twice (found on sorted integers, which is cheap);
    in a live stream that is few rows, and string hashing stays off the hot path.
    """

    def __init__(self, batches: int) -> None:
        self._batches: deque[_Seen] = deque(maxlen=max(batches, 1))
        self._pending: list[_Seen] = []  # this batch's chunks so far
        self._enabled = batches > 0

    def remember(self, events: pa.Table) -> None:
        """A whole batch at once (as read back from the log on a restart)."""
        self.hold(events)
        self.settle()

    def hold(self, events: pa.Table) -> None:
        if events.num_rows:
            self._pending.append(_Seen(events))

    def settle(self) -> None:
        """The held chunks become one recent batch."""
        if self._enabled and self._pending:
            self._batches.append(_Seen(pa.concat_tables([s.events for s in self._pending])))
        self._pending = []

    def repeats(self, events: pa.Table) -> np.ndarray:
        """Rows of ``events`` seen in a recent batch, a held chunk, or earlier in ``events``."""
        ts = _int64(events.column("ts"))
        repeated = np.zeros(len(ts), dtype=bool)
        _, inverse, counts = np.unique(ts, return_inverse=True, return_counts=True)
        shared = np.flatnonzero(counts[inverse] > 1)
        if len(shared):
            codes = pc.dictionary_encode(keys_of(events.take(pa.array(shared)))).indices
            _, firsts = np.unique(codes.to_numpy(zero_copy_only=False), return_index=True)
            later = np.ones(len(shared), dtype=bool)
            later[firsts] = False
            repeated[shared[later]] = True
        for seen in [*self._batches, *self._pending] if self._enabled else self._pending:
            rows = np.flatnonzero(seen.has_ts(ts))
            if len(rows):
                earlier = seen.events.filter(pa.array(np.isin(seen.ts, ts[rows])))
                found = pc.is_in(keys_of(events.take(pa.array(rows))), value_set=keys_of(earlier))
                repeated[rows] |= found.to_numpy(zero_copy_only=False)
        return np.flatnonzero(repeated)


class _Seen:
    """Earlier events (user, item, ts), their timestamps sorted once for membership tests."""

    def __init__(self, events: pa.Table) -> None:
        self.events = events.select(["user_id", "item_id", "ts"])
        self.ts = _int64(self.events.column("ts"))
        self._sorted = np.sort(self.ts)

    def has_ts(self, ts: np.ndarray) -> np.ndarray:
        at = np.minimum(np.searchsorted(self._sorted, ts), len(self._sorted) - 1)
        return self._sorted[at] == ts


def _int64(ts: pa.ChunkedArray | pa.Array | np.ndarray) -> np.ndarray:
    if isinstance(ts, np.ndarray):
        return ts.astype(np.int64, copy=False)
    return np.asarray(ts.to_numpy(zero_copy_only=False), dtype=np.int64)
