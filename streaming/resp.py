"""RESP, the Redis wire format, for the bulk commands a publish sends, and a way to send them.

redis-py packs every argument through a general-purpose encoder; for a publish of hundreds of
thousands of vector fields that packing, not Redis, is the bottleneck (about 6x slower than
building the same bytes with one format per field). Only the publishing hot path uses this:
every other command goes through redis-py as usual.

A packed command is ``bytes`` or a sequence of buffers sent back to back (so a block of
vectors goes to the socket straight from the numpy array that holds it, without a copy).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import redis
from redis.retry import Retry

Packed = bytes | Sequence[bytes | memoryview]


def pack(*args: bytes | str | int) -> bytes:
    """One command, e.g. ``pack("EXPIRE", key, 600)``."""
    encoded = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    return b"*%d\r\n" % len(encoded) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in encoded)


def _hset_head(key: str, n_fields: int) -> bytes:
    name = key.encode()
    return b"*%d\r\n$4\r\nHSET\r\n$%d\r\n%b\r\n" % (2 + 2 * n_fields, len(name), name)


def pack_hset(key: str, fields: list[str], values: list[bytes]) -> bytes:
    """``HSET key field value [field value ...]``; fields as UTF-8, values as given."""
    parts = [_hset_head(key, len(fields))]
    for field, value in zip(fields, values, strict=True):
        raw = field.encode()
        parts.append(b"$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(raw), raw, len(value), value))
    return b"".join(parts)


def pack_hset_rows(key: str, fields: list[str], rows: np.ndarray, per_command: int) -> list[Packed]:
    """HSETs of ``per_command`` fields each whose values are the rows of ``rows`` (2-D
    uint8: one fixed-width value per field, e.g. a float32 vector's bytes), packed by numpy.

    A hash does not care in which order its fields arrive, so fields are grouped by the byte
    length of their name: within a group every ``$n\\r\\nfield\\r\\n$w\\r\\nvalue\\r\\n``
    record has the same width, and one 2-D block of the output holds them all."""
    raw = [field.encode() for field in fields]
    n, width = rows.shape
    lengths = np.fromiter(map(len, raw), np.int64, count=n)
    order = np.argsort(lengths, kind="stable")
    name_lengths, group = np.unique(lengths[order], return_inverse=True)
    record_widths = np.array([_record_width(n, width) for n in name_lengths.tolist()], np.int64)
    offsets = np.concatenate([[0], np.cumsum(record_widths[group])])
    records = np.empty(int(offsets[-1]), np.uint8)
    for g in range(len(name_lengths)):
        which = np.flatnonzero(group == g)  # consecutive: the order is sorted by length
        block = records[offsets[which[0]] : offsets[which[-1] + 1]].reshape(len(which), -1)
        _fill(block, [raw[i] for i in order[which].tolist()], rows[order[which]])
    view = memoryview(records)
    return [
        (
            _hset_head(key, min(per_command, n - start)),
            view[offsets[start] : offsets[min(start + per_command, n)]],
        )
        for start in range(0, n, per_command)
    ]


def _record_width(name_length: int, width: int) -> int:
    return len(b"$%d\r\n\r\n$%d\r\n\r\n" % (name_length, width)) + name_length + width


def _fill(out: np.ndarray, names: list[bytes], values: np.ndarray) -> None:
    """Write ``$n\\r\\nname\\r\\n$w\\r\\nvalue\\r\\n`` into each row of ``out``: names
    all ``n`` bytes long, values the rows of a 2-D uint8 array ``w`` bytes wide."""
    length, width = len(names[0]), values.shape[1]
    field_head, value_head = b"$%d\r\n" % length, b"\r\n$%d\r\n" % width
    a = len(field_head)
    b = a + length
    c = b + len(value_head)
    out[:, :a] = np.frombuffer(field_head, np.uint8)
    out[:, a:b] = np.frombuffer(b"".join(names), np.uint8).reshape(len(names), length)
    out[:, b:c] = np.frombuffer(value_head, np.uint8)
    out[:, c : c + width] = values
    out[:, c + width :] = np.frombuffer(b"\r\n", np.uint8)


def execute(client: redis.Redis, retry: Retry, commands: list[Packed]) -> None:
    """Send packed ``commands`` in one round trip and read every reply; on a lost connection
    reconnect and send them again (they must be idempotent), as ``retry`` allows. A reply
    that is an error raises it."""
    parts = [p for c in commands for p in ((c,) if isinstance(c, bytes) else c)]
    pool = client.connection_pool
    connection = pool.get_connection()
    try:

        def attempt() -> None:
            connection.send_packed_command(parts, check_health=False)
            for _ in commands:
                connection.read_response()

        retry.call_with_retry(attempt, lambda error: connection.disconnect())
    finally:
        pool.release(connection)
