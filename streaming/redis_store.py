"""Versioned serving state in Redis: write a whole version, then flip ``current``.

Layout (prefix default ``stackrec:<model>``)::

    <prefix>:current          the serving version V (a string)
    <prefix>:versions         sorted set of published versions (score = publish time)
    <prefix>:v<V>:meta        hash: dim, dtype (float32le), n_items, n_users, k, created_s, ...
    <prefix>:v<V>:items       hash: item id -> little-endian float32 vector
    <prefix>:v<V>:users       hash: user id -> little-endian float32 vector
    <prefix>:v<V>:recs        hash: user id -> JSON list of the top-K item ids
    <prefix>:v<V>:popular     JSON list of the most popular items (for users without recs)

Guarantee: readers never see half a version. Everything of V is written (pipelined, 1,000
fields per HSET) before ``current`` moves, and a reader resolves ``current`` once and reads only
that version's keys. Superseded versions expire after a grace period, so a reader that resolved
an old V just before a flip still finds its keys. If Redis fails mid-publish, ``current`` still
names the previous version; the partial keys of the failed one carry a TTL and disappear.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from streaming import resp
from streaming.faults import fault_point

FIELDS_PER_HSET = 1_000
PARTS = ("items", "users", "recs", "popular", "meta")  # the keys of one version


class ServingUnavailable(ConnectionError):
    """Redis could not be reached (after retries)."""


class NotPublished(LookupError):
    """Nothing has been published under this prefix yet."""


class _Retry(Retry):
    """Retries lost connections, never refused credentials (retrying cannot fix those)."""

    def call_with_retry(self, do, fail, is_retryable=None, with_failure_count=False):
        def retryable(error: Exception) -> bool:
            refused = isinstance(error, redis.AuthenticationError)
            return not refused and (is_retryable is None or is_retryable(error))

        return super().call_with_retry(do, fail, retryable, with_failure_count)


def unavailable(config: RedisConfig, error: redis.RedisError, doing: str) -> ServingUnavailable:
    """The one-line error for a failed Redis call: refused credentials say what to set."""
    if isinstance(error, redis.AuthenticationError):
        return ServingUnavailable(
            f"{doing} {config.url} failed: Redis refused the credentials ({error}); set "
            "STACKREC_REDIS_PASSWORD (or put it in the URL, redis://:PASSWORD@host:port/0)"
        )
    return ServingUnavailable(f"{doing} {config.url} failed: {error}")


@dataclass(frozen=True)
class RedisConfig:
    url: str = "redis://127.0.0.1:6379/0"  # rediss:// for TLS
    password: str | None = field(default=None, repr=False)
    prefix: str = "stackrec:default"
    version_ttl_s: int = 3600  # how long a superseded version stays readable
    retries: int = 3

    def retry(self) -> Retry:
        """Bounded retries with exponential backoff (0.2 s, 0.4 s, 0.8 s, ... at most 2 s)."""
        return _Retry(ExponentialBackoff(cap=2.0, base=0.1), self.retries)

    def client(self) -> redis.Redis:
        kwargs = {"password": self.password} if self.password else {}
        return redis.Redis.from_url(
            self.url,
            retry=self.retry(),
            socket_timeout=10,
            socket_connect_timeout=3,
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
            **kwargs,
        )

    def key(self, *parts: object) -> str:
        return ":".join([self.prefix, *map(str, parts)])


@dataclass(frozen=True)
class Snapshot:
    """What one version serves: ids with float32 vectors, top-K per user, popular fallback."""

    version: int
    item_ids: list[str]
    item_vectors: np.ndarray  # [n_items, dim]
    user_ids: list[str]
    user_vectors: np.ndarray  # [n_users, dim]
    recommendations: list[list[str]]  # aligned with user_ids
    popular: list[str]
    meta: dict[str, str | int | float]


class IncompletePublish(ServingUnavailable):
    """A version's keys are not all there at flip time (Redis lost writes, e.g. a restart
    without persistence mid-publish); ``current`` was left alone. Publishing again fixes it."""


def publish(
    config: RedisConfig,
    snapshot: Snapshot,
    chunk_fields: int = 50_000,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Write ``snapshot`` under its version, then flip ``current``; returns fields written.

    Written in pipelined round trips of about ``chunk_fields`` hash fields (``on_progress``
    gets the running count after each), every key with a TTL from its first write, so a
    publish that dies half way leaves only keys that expire. The flip checks that every key
    of the version is complete (see ``_flip``) before ``current`` moves.
    """
    for name, ids in (("item_ids", snapshot.item_ids), ("user_ids", snapshot.user_ids)):
        if len(set(ids)) != len(ids):
            repeated = next(i for i, n in Counter(ids).items() if n > 1)
            raise ValueError(f"snapshot {name} repeat {repeated!r}: ids must be unique")
    client = config.client()
    v = f"v{snapshot.version}"
    keys = [config.key(v, name) for name in PARTS]
    items, users, recs, popular, meta_key = keys
    ttl = config.version_ttl_s
    try:
        client.delete(*keys)  # a retried publish of the same version starts clean
        hashes = (
            (items, snapshot.item_ids, snapshot.item_vectors),
            (users, snapshot.user_ids, snapshot.user_vectors),
            (recs, snapshot.user_ids, snapshot.recommendations),
        )
        _send(client, config.retry(), _round_trips(hashes, chunk_fields, ttl), on_progress)
        meta = {
            **snapshot.meta,
            "dim": int(snapshot.item_vectors.shape[1]),
            "dtype": "float32le",
            "n_items": len(snapshot.item_ids),
            "n_users": len(snapshot.user_ids),
            "published_s": time.time(),
        }
        pipe = client.pipeline(transaction=False)
        pipe.set(popular, json.dumps(snapshot.popular), ex=ttl)
        pipe.hset(meta_key, mapping={k: str(val) for k, val in meta.items()})
        pipe.expire(meta_key, ttl)
        pipe.execute()
        fault_point("before_flip")
        _flip(client, config, snapshot.version)
    except redis.RedisError as error:
        raise unavailable(config, error, f"publish of {v} to") from None
    finally:
        client.close()
    return len(snapshot.item_ids) + 2 * len(snapshot.user_ids)


def _flip(client: redis.Redis, config: RedisConfig, version: int) -> None:
    """Check version ``version`` is whole, then in one transaction persist its keys, point
    ``current`` at it and let the previous version expire.

    Whole means: meta present, hashes holding exactly ``n_items``/``n_users`` fields, popular
    present. The check runs under WATCH of those keys, so a write or a Redis restart between
    the check and the flip aborts the transaction instead of flipping to a changed version.
    """
    keys = [config.key(f"v{version}", name) for name in PARTS]
    items, users, recs, popular, meta = keys
    current = config.key("current")

    def flip(pipe: redis.client.Pipeline) -> None:
        n_items, n_users = pipe.hmget(meta, "n_items", "n_users")
        if n_items is None or n_users is None:
            raise NotPublished(f"version {version} is not in Redis (expired or never published)")
        found = (pipe.hlen(items), pipe.hlen(users), pipe.hlen(recs), pipe.exists(popular))
        wanted = (int(n_items), int(n_users), int(n_users), 1)
        if found != wanted:
            raise IncompletePublish(
                f"version {version} is incomplete in Redis at {config.url} (items, users, "
                f"recs, popular: {found}, expected {wanted}); current was not moved"
            )
        previous = pipe.get(current)
        pipe.multi()
        for key in keys:
            pipe.persist(key)
        pipe.set(current, version)
        pipe.zadd(config.key("versions"), {str(version): time.time()})
        if previous is not None and int(previous) != version:
            for name in PARTS:
                pipe.expire(config.key(f"v{int(previous)}", name), config.version_ttl_s)

    client.transaction(flip, *keys, current)


def set_current(config: RedisConfig, version: int) -> None:
    """Point serving at an already-published version (rollback); fails if it has expired."""
    client = config.client()
    try:
        _flip(client, config, version)
    except redis.RedisError as error:
        raise unavailable(config, error, "Redis at") from None
    finally:
        client.close()


def _send(
    client: redis.Redis,
    retry: Retry,
    round_trips: Iterator[tuple[list[resp.Packed], int]],
    on_progress: Callable[[int], None] | None,
) -> None:
    """Send each round trip from a sender thread while this one packs the next, so Redis
    (another process, another core) is never idle waiting for packing. Each round trip is
    acknowledged before the next is sent: a failure stops the publish at a boundary."""
    written = 0
    with ThreadPoolExecutor(1, thread_name_prefix="publish") as sender:
        in_flight: tuple[Future, int] | None = None
        for commands, fields in round_trips:  # packs the next one while in_flight is sent
            if in_flight is not None:
                written = _acknowledged(in_flight, written, on_progress)
            in_flight = sender.submit(resp.execute, client, retry, commands), fields
        if in_flight is not None:
            _acknowledged(in_flight, written, on_progress)


def _acknowledged(
    in_flight: tuple[Future, int], written: int, on_progress: Callable[[int], None] | None
) -> int:
    future, fields = in_flight
    future.result()
    written += fields
    if on_progress:
        on_progress(written)
    fault_point("mid_publish")
    return written


def _round_trips(hashes, chunk_fields: int, ttl: int) -> Iterator[tuple[list[resp.Packed], int]]:
    """Each hash's fields in packed round trips of ``chunk_fields``, HSETs of
    ``FIELDS_PER_HSET`` fields each, ending with an EXPIRE of the key (so whatever a failed
    publish leaves behind expires). Packed lazily, one round trip at a time."""
    for key, ids, values in hashes:
        for start in range(0, len(ids), chunk_fields):
            span = slice(start, start + chunk_fields)
            yield (
                [*_hsets(key, ids[span], values[span]), resp.pack("EXPIRE", key, ttl)],
                len(ids[span]),
            )


def _hsets(key: str, ids: list[str], values: np.ndarray | list[list[str]]) -> list[resp.Packed]:
    """Vectors as little-endian float32 bytes, lists of ids as JSON."""
    if isinstance(values, np.ndarray):
        rows = np.ascontiguousarray(values, dtype="<f4")
        as_bytes = rows.view(np.uint8).reshape(len(rows), rows.shape[1] * 4)
        return resp.pack_hset_rows(key, ids, as_bytes, FIELDS_PER_HSET)
    encoded = [json_list(r) for r in values]
    return [
        resp.pack_hset(key, ids[s : s + FIELDS_PER_HSET], encoded[s : s + FIELDS_PER_HSET])
        for s in range(0, len(ids), FIELDS_PER_HSET)
    ]


def json_list(ids: list[str]) -> bytes:
    """``json.dumps(ids).encode()``, six times faster for the usual ids (printable ASCII
    without quotes or backslashes: nothing to escape, so joining is encoding)."""
    inner = '", "'.join(ids)
    plain = inner.isascii() and inner.isprintable() and "\\" not in inner
    if plain and inner.count('"') == 2 * (len(ids) - 1):  # no id has a quote of its own
        return b'["%s"]' % inner.encode()
    return json.dumps(ids).encode()
