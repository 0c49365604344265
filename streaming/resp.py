"""RESP, the Redis wire format, for the bulk commands a publish sends, and a way to send them.

redis-py packs every argument through a general-purpose encoder; for a publish of hundreds of
thousands of vector fields that packing, not Redis, is the bottleneck (about 6x slower than
building the same bytes with one format per field). Only the publishing hot path uses this:
every other command goes through redis-py as usual.
"""

from __future__ import annotations

import redis
from redis.retry import Retry


def pack(*args: bytes | str | int) -> bytes:
    """One command, e.g. ``pack("EXPIRE", key, 600)``."""
    encoded = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    return b"*%d\r\n" % len(encoded) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in encoded)


def pack_hset(key: str, fields: list[str], values: list[bytes]) -> bytes:
    """``HSET key field value [field value ...]``; fields as UTF-8, values as given."""
    name = key.encode()
    parts = [b"*%d\r\n$4\r\nHSET\r\n$%d\r\n%b\r\n" % (2 + 2 * len(fields), len(name), name)]
    for field, value in zip(fields, values, strict=True):
        raw = field.encode()
        parts.append(b"$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(raw), raw, len(value), value))
    return b"".join(parts)


def execute(client: redis.Redis, retry: Retry, commands: list[bytes]) -> None:
    """Send packed ``commands`` in one round trip and read every reply; on a lost connection
    reconnect and send them again (they must be idempotent), as ``retry`` allows. A reply
    that is an error raises it."""
    pool = client.connection_pool
    connection = pool.get_connection()
    try:

        def attempt() -> None:
            connection.send_packed_command(commands, check_health=False)
            for _ in commands:
                connection.read_response()

        retry.call_with_retry(attempt, lambda error: connection.disconnect())
    finally:
        pool.release(connection)
