"""A test hook: kill this process with SIGKILL at a named point of ingest or publish.

The fault tests (``tests/streaming/test_faults.py``) run the real ingest and publish code in a
subprocess with ``STREAMING_FAULT_AT=<point>`` or ``<point>:<n>`` (the n-th time the point is
reached, default 1) and check that a restart loses and duplicates nothing. Unset (always, in
production) it costs one dictionary lookup per call. Points, in the order a batch reaches them:

- ``mid_poll``: records polled, nothing durable yet;
- ``after_dead_letter``: rejects flushed to the dead-letter topic, segment not written;
- ``after_segment``: Parquet segment renamed into place, manifest not replaced;
- ``after_manifest``: manifest replaced (the batch is durable), offsets not committed;
- ``after_commit``: offsets committed, consumer not closed;
- ``mid_publish``: part of a version written to Redis, ``current`` not flipped;
- ``before_flip``: the whole version written, ``current`` not flipped.

Not a ``STACKREC_*`` variable on purpose: settings refuse unknown ``STACKREC_*`` names.
"""

from __future__ import annotations

import os
import signal

ENV = "STREAMING_FAULT_AT"
POINTS = (
    "mid_poll",
    "after_dead_letter",
    "after_segment",
    "after_manifest",
    "after_commit",
    "mid_publish",
    "before_flip",
)
_hits: dict[str, int] = {}


def fault_point(name: str) -> None:
    """SIGKILL this process if ``STREAMING_FAULT_AT`` names this point (and hit count)."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    point, _, nth = wanted.partition(":")
    if point != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
