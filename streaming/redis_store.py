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
from dataclasses import dataclass, field

import numpy as np
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

FIELDS_PER_HSET = 1_000


class ServingUnavailable(ConnectionError):
    """Redis could not be reached (after retries)."""


class NotPublished(LookupError):
    """Nothing has been published under this prefix yet."""


@dataclass(frozen=True)
class RedisConfig:
    url: str = "redis://127.0.0.1:6379/0"  # rediss:// for TLS
    password: str | None = field(default=None, repr=False)
    prefix: str = "stackrec:default"
    version_ttl_s: int = 3600  # how long a superseded version stays readable
    retries: int = 3

    def client(self) -> redis.Redis:
        retry = Retry(ExponentialBackoff(cap=2.0, base=0.1), self.retries)
        kwargs = {"password": self.password} if self.password else {}
        return redis.Redis.from_url(
            self.url,
            retry=retry,
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


def publish(config: RedisConfig, snapshot: Snapshot) -> int:
    """Write ``snapshot`` under its version, then flip ``current``; returns fields written."""
    client = config.client()
    v = f"v{snapshot.version}"
    dim = int(snapshot.item_vectors.shape[1])
    try:
        pipe = client.pipeline(transaction=False)
        keys = [config.key(v, name) for name in ("items", "users", "recs", "popular", "meta")]
        pipe.delete(*keys)  # a retried publish of the same version starts clean
        _hset_chunks(pipe, keys[0], snapshot.item_ids, _as_bytes(snapshot.item_vectors))
        _hset_chunks(pipe, keys[1], snapshot.user_ids, _as_bytes(snapshot.user_vectors))
        recs = [json.dumps(r) for r in snapshot.recommendations]
        _hset_chunks(pipe, keys[2], snapshot.user_ids, recs)
        pipe.set(keys[3], json.dumps(snapshot.popular))
        meta = {
            **snapshot.meta,
            "dim": dim,
            "dtype": "float32le",
            "n_items": len(snapshot.item_ids),
            "n_users": len(snapshot.user_ids),
            "published_s": time.time(),
        }
        pipe.hset(keys[4], mapping={k: str(val) for k, val in meta.items()})
        for key in keys:  # a version is written with a TTL and made permanent when it serves
            pipe.expire(key, config.version_ttl_s)
        pipe.execute()
        _flip(client, config, snapshot.version, keys)
    except redis.RedisError as error:
        raise ServingUnavailable(f"publish of {v} to {config.url} failed: {error}") from None
    finally:
        client.close()
    return len(snapshot.item_ids) + 2 * len(snapshot.user_ids)


def _flip(client: redis.Redis, config: RedisConfig, version: int, keys: list[str]) -> None:
    """Persist the new version's keys, point ``current`` at it, let the old one expire."""
    previous = client.get(config.key("current"))
    pipe = client.pipeline(transaction=True)
    for key in keys:
        pipe.persist(key)
    pipe.set(config.key("current"), version)
    pipe.zadd(config.key("versions"), {str(version): time.time()})
    if previous is not None and int(previous) != version:
        for name in ("items", "users", "recs", "popular", "meta"):
            pipe.expire(config.key(f"v{int(previous)}", name), config.version_ttl_s)
    pipe.execute()


def set_current(config: RedisConfig, version: int) -> None:
    """Point serving at an already-published version (rollback); fails if it has expired."""
    client = config.client()
    try:
        if not client.exists(config.key(f"v{version}", "meta")):
            raise NotPublished(f"version {version} is not in Redis (expired or never published)")
        keys = [config.key(f"v{version}", n) for n in ("items", "users", "recs", "popular", "meta")]
        _flip(client, config, version, keys)
    except redis.RedisError as error:
        raise ServingUnavailable(f"Redis at {config.url} failed: {error}") from None
    finally:
        client.close()


def _hset_chunks(pipe, key: str, fields: list[str], values: list) -> None:
    for start in range(0, len(fields), FIELDS_PER_HSET):
        chunk = dict(
            zip(
                fields[start : start + FIELDS_PER_HSET],
                values[start : start + FIELDS_PER_HSET],
                strict=True,
            )
        )
        pipe.hset(key, mapping=chunk)


def _as_bytes(vectors: np.ndarray) -> list[bytes]:
    rows = np.ascontiguousarray(vectors, dtype="<f4")
    return [row.tobytes() for row in rows]
