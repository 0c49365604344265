"""Validate a block of message values at once, into Arrow columns of the valid events.

Same contract and same verdicts as ``events.parse_event``, which stays the reference (the
tests compare the two on hostile input); this is only the fast way to apply it to a batch:

1. messages that look like small plain events (ASCII, at most ``FAST_MAX_BYTES``, one JSON
   object from the first byte to the last, no control bytes) are joined into one
   newline-delimited block and parsed by ``pyarrow.json`` against the event schema;
2. vectorised checks accept a row only where the reference would surely accept it with the
   same values: ids of printable ASCII without outer spaces, ts in range, event_type printable
   ASCII, weight finite;
3. every other message, and every row the checks do not accept, goes through ``parse_event``
   one by one, which decides and explains. A block pyarrow refuses is split in halves until
   the parts parse (or are small enough to go one by one).

Why each guard: ``pyarrow.json`` accepts what Python's ``json`` refuses (NaN, raw control
characters, nesting deeper than Python's recursion limit, non-UTF-8 in ignored fields), crashes
on a block that starts with ``null``, and splits two objects on one line into two rows. So it
only ever sees messages that start with ``{`` and end with ``}``, are short enough that no
nesting can reach the limit, hold no byte Python would refuse, and the row count must match.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from operator import itemgetter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from streaming import events
from streaming.events import Event, Rejection, parse_event

EVENT_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("ts", pa.int64()),
        ("event_type", pa.string()),
        ("weight", pa.float64()),
    ]
)
FAST_MAX_BYTES = 512  # nesting in 512 bytes stays far below Python's JSON recursion limit
SMALLEST_SPLIT = 64  # below this many messages, a block pyarrow refuses goes one by one
PARALLEL_BYTES = 256 * 1024  # larger blocks are parsed by several threads, this much each
_PARSE = pa_json.ParseOptions(explicit_schema=EVENT_SCHEMA, unexpected_field_behavior="ignore")
_CONTROL = re.compile(rb"[\x00-\x09\x0b-\x1f]")  # JSON forbids them raw; \n separates lines


@dataclass
class Validated:
    events: pa.Table  # EVENT_SCHEMA, one row per valid message, in block order
    rows: np.ndarray  # int64: the block index of each valid message
    rejected: list[tuple[int, Rejection]]  # block index and why, in block order


def validate_block(
    values: list[bytes | None], now_ms: int | None = None, fast: bool = True
) -> Validated:
    """Split ``values`` into valid events (as columns) and rejections."""
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    tables: list[pa.Table] = []
    rows: list[np.ndarray] = []
    slow = np.arange(len(values)) if not fast else None
    if fast:
        candidates, slow = _candidates(values)
        if len(candidates):
            table, accepted, refused = _parse_fast(values, candidates, now_ms)
            tables.append(table)
            rows.append(accepted)
            slow = np.sort(np.concatenate([slow, refused]))
    table, accepted, rejected = _parse_slow(values, slow, now_ms)
    tables.append(table)
    rows.append(accepted)
    events_table = pa.concat_tables(tables)
    order = np.concatenate(rows)
    if len(tables) > 1 and len(order) and np.any(np.diff(order) < 0):
        sort = np.argsort(order, kind="stable")
        events_table, order = events_table.take(sort), order[sort]
    return Validated(events_table, order.astype(np.int64), rejected)


def _candidates(values: list[bytes | None]) -> tuple[np.ndarray, np.ndarray]:
    """Indices of messages the fast parser may see, and of the others."""
    array = pa.array(values, pa.binary())
    lengths = pc.binary_length(array)
    plain = pc.and_(
        pc.and_(pc.greater_equal(lengths, 2), pc.less_equal(lengths, FAST_MAX_BYTES)),
        pc.and_(pc.starts_with(array, "{"), pc.ends_with(array, "}")),
    )
    mask = pc.fill_null(plain, False).to_numpy(zero_copy_only=False)
    candidates = np.flatnonzero(mask)
    picked = _pick(values, candidates)
    blob = b"\n".join(picked)
    if (
        not blob.isascii()
        or np.count_nonzero(np.frombuffer(blob, np.uint8) < 32) != len(picked) - 1
    ):
        keep = np.fromiter(
            (v.isascii() and b"\n" not in v and not _CONTROL.search(v) for v in picked),
            dtype=bool,
            count=len(picked),
        )
        mask[candidates[~keep]] = False
        candidates = candidates[keep]
    return candidates, np.flatnonzero(~mask)


def _parse_fast(
    values: list[bytes | None], candidates: np.ndarray, now_ms: int
) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """Parse and check ``candidates``: (accepted rows as a table, their indices, the indices
    the reference must decide)."""
    parsed, parsed_at, unparsed = _parse_json(values, candidates)
    if not parsed:
        return EVENT_SCHEMA.empty_table(), np.empty(0, np.int64), candidates
    table = pa.concat_tables(parsed)
    at = np.concatenate(parsed_at)
    ok = pc.fill_null(_acceptable(table, now_ms), False).to_numpy(zero_copy_only=False)
    refused = np.concatenate([at[~ok], *unparsed]) if unparsed or not ok.all() else at[:0]
    return table.filter(pa.array(ok)), at[ok], refused


def _parse_json(values, candidates: np.ndarray):
    """``pyarrow.json`` over the candidates; a refused block is split in halves."""
    parsed, parsed_at, unparsed = [], [], []
    pending = [candidates]
    while pending:
        part = pending.pop()
        blob = b"\n".join(_pick(values, part))
        try:
            threads = len(blob) > PARALLEL_BYTES  # (blocks are parsed in parallel, in order)
            table = pa_json.read_json(
                pa.BufferReader(blob),
                read_options=pa_json.ReadOptions(
                    use_threads=threads, block_size=PARALLEL_BYTES if threads else len(blob) + 1
                ),
                parse_options=_PARSE,
            )
        except (pa.ArrowInvalid, UnicodeDecodeError):
            table = None
        if table is not None and table.num_rows == len(part):
            parsed.append(table)
            parsed_at.append(part)
        elif len(part) <= SMALLEST_SPLIT:
            unparsed.append(part)
        else:
            half = len(part) // 2
            pending += [part[half:], part[:half]]  # the first half is parsed first
    order = np.argsort([p[0] for p in parsed_at], kind="stable")
    return [parsed[i] for i in order], [parsed_at[i] for i in order], unparsed


def _acceptable(table: pa.Table, now_ms: int) -> pa.ChunkedArray:
    """Rows the reference would accept unchanged (limits read from ``events`` at call time)."""
    ts = table.column("ts")
    checks = [
        _plain_ascii(table.column("user_id"), 1, events.MAX_ID_CHARS, outer_spaces=False),
        _plain_ascii(table.column("item_id"), 1, events.MAX_ID_CHARS, outer_spaces=False),
        pc.greater_equal(ts, events.MIN_TS_MS),
        pc.less_equal(ts, now_ms + events.MAX_FUTURE_MS),
        pc.or_kleene(
            pc.is_null(table.column("event_type")),
            _plain_ascii(table.column("event_type"), 0, 64, outer_spaces=True),
        ),
        pc.or_kleene(pc.is_null(table.column("weight")), pc.is_finite(table.column("weight"))),
    ]
    ok = checks[0]
    for check in checks[1:]:
        ok = pc.and_kleene(ok, check)
    return ok


def _plain_ascii(column, shortest: int, longest: int, outer_spaces: bool):
    """Printable ASCII of ``shortest..longest`` characters, without a leading or trailing
    space unless ``outer_spaces``: strings ``str.strip`` and ``str.isprintable`` leave alone."""
    length = pc.binary_length(column)
    ok = pc.and_kleene(
        pc.and_kleene(pc.string_is_ascii(column), pc.utf8_is_printable(column)),
        pc.and_kleene(pc.greater_equal(length, shortest), pc.less_equal(length, longest)),
    )
    if not outer_spaces:
        spaced = pc.or_kleene(pc.starts_with(column, " "), pc.ends_with(column, " "))
        ok = pc.and_kleene(ok, pc.invert(spaced))
    return ok


def _parse_slow(
    values: list[bytes | None], indices: np.ndarray, now_ms: int
) -> tuple[pa.Table, np.ndarray, list[tuple[int, Rejection]]]:
    """The reference, one message at a time."""
    valid: list[Event] = []
    rows: list[int] = []
    rejected: list[tuple[int, Rejection]] = []
    for i in indices.tolist():
        parsed = parse_event(values[i], now_ms)
        if isinstance(parsed, Rejection):
            rejected.append((i, parsed))
        else:
            valid.append(parsed)
            rows.append(i)
    table = pa.table(
        {
            "user_id": [e.user_id for e in valid],
            "item_id": [e.item_id for e in valid],
            "ts": [e.ts for e in valid],
            "event_type": [e.event_type for e in valid],
            "weight": [e.weight for e in valid],
        },
        schema=EVENT_SCHEMA,
    )
    return table, np.array(rows, dtype=np.int64), rejected


def _pick(values: list, indices: np.ndarray) -> list:
    if len(indices) == len(values):
        return values
    if len(indices) == 0:
        return []
    if len(indices) == 1:
        return [values[int(indices[0])]]
    return list(itemgetter(*indices.tolist())(values))
