"""Duplicate events: the same (user, item, ts) seen again, within a batch or shortly after.

A producer retry or a replayed file sends the same interaction twice; whether a second copy
is noise or a real repeat (two plays in the same millisecond) is the product's call, so the
policy is a setting: ``keep`` (log it, count it: the default), ``drop`` (count it, do not log
it) or ``dead-letter`` (send it to the DLQ with reason ``duplicate``). The first copy is always
logged. Detection looks back over a bounded number of recent batches, not the whole log.
"""

from __future__ import annotations

from collections import deque

import pyarrow as pa

POLICIES = ("keep", "drop", "dead-letter")
Key = tuple[str, str, int]


def keys_of(events: pa.Table) -> list[Key]:
    """(user_id, item_id, ts) of each row."""
    return list(
        zip(
            events.column("user_id").to_pylist(),
            events.column("item_id").to_pylist(),
            events.column("ts").to_pylist(),
            strict=True,
        )
    )


class RecentKeys:
    """The keys of the last ``batches`` batches, to find repeats of recent events."""

    def __init__(self, batches: int) -> None:
        self._batches: deque[set[Key]] = deque(maxlen=max(batches, 0) or None)
        self._enabled = batches > 0

    def remember(self, keys: list[Key]) -> None:
        if self._enabled:
            self._batches.append(set(keys))

    def repeats(self, keys: list[Key]) -> list[int]:
        """Indices of keys seen in a recent batch or earlier in ``keys``."""
        seen: set[Key] = set()
        found: list[int] = []
        for i, key in enumerate(keys):
            if key in seen or any(key in batch for batch in self._batches):
                found.append(i)
            seen.add(key)
        return found
