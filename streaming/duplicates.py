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
    (``settle``). Only rows no newer than the newest event remembered can repeat one, so the
    lookup in recent keys is limited to them (in a live stream, few)."""

    def __init__(self, batches: int) -> None:
        self._batches: deque[tuple[pa.Array, int]] = deque(maxlen=max(batches, 1))
        self._pending: list[tuple[pa.Array, int]] = []  # this batch's chunks so far
        self._enabled = batches > 0

    def remember(self, keys: pa.Array, ts: pa.ChunkedArray | pa.Array) -> None:
        """A whole batch at once (as read back from the log on a restart)."""
        self.hold(keys, ts)
        self.settle()

    def hold(self, keys: pa.Array, ts: pa.ChunkedArray | pa.Array) -> None:
        if len(keys):
            self._pending.append((keys, pc.max(ts).as_py()))

    def settle(self) -> None:
        """The held chunks become one recent batch."""
        if self._enabled and self._pending:
            keys = pa.concat_arrays([k for k, _ in self._pending])
            self._batches.append((keys, max(latest for _, latest in self._pending)))
        self._pending = []

    def repeats(self, keys: pa.Array, ts: pa.ChunkedArray | pa.Array) -> np.ndarray:
        """Indices of keys seen in a recent batch, in a held chunk, or earlier in ``keys``."""
        n = len(keys)
        if n == 0:
            return np.empty(0, np.int64)
        codes = pc.dictionary_encode(keys).indices.to_numpy(zero_copy_only=False)
        _, firsts = np.unique(codes, return_index=True)
        repeated = np.ones(n, dtype=bool)
        repeated[firsts] = False
        earlier = [*self._batches, *self._pending] if self._enabled else self._pending
        if earlier:
            newest = max(latest for _, latest in earlier)
            old_enough = pc.less_equal(ts, newest).to_numpy(zero_copy_only=False)
            if old_enough.any():
                rows = np.flatnonzero(old_enough)
                recent = pa.concat_arrays([k for k, _ in earlier])
                seen = pc.is_in(keys.take(pa.array(rows)), value_set=recent)
                repeated[rows] |= seen.to_numpy(zero_copy_only=False)
        return np.flatnonzero(repeated)
