"""The read side of the Redis layout, as a serving service would use it.

Every read resolves ``<prefix>:current`` once and then reads only keys of that version, so a
response never mixes two models. If the version's keys expired between the two reads (a flip
and a grace period passed), the read starts over from ``current``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import redis

from streaming.redis_store import NotPublished, RedisConfig, unavailable


@dataclass(frozen=True)
class Recommendation:
    version: int
    user_id: str
    items: list[str]
    source: str  # "personal" (published top-K) or "popular" (user unknown to this version)


def current_version(config: RedisConfig) -> int:
    client = config.client()
    try:
        return _current(client, config)
    except redis.RedisError as error:
        raise unavailable(config, error, "Redis at") from None
    finally:
        client.close()


def recommend(config: RedisConfig, user_id: str, k: int = 10) -> Recommendation:
    """The top ``k`` items for ``user_id`` from the serving version."""
    client = config.client()
    try:
        for _ in range(3):
            version = _current(client, config)
            v = f"v{version}"
            pipe = client.pipeline(transaction=False)
            pipe.exists(config.key(v, "meta"))
            pipe.hget(config.key(v, "recs"), user_id)
            pipe.get(config.key(v, "popular"))
            exists, personal, popular = pipe.execute()
            if not exists:
                continue  # expired under us: resolve current again
            if personal is not None:
                return Recommendation(version, user_id, json.loads(personal)[:k], "personal")
            return Recommendation(version, user_id, json.loads(popular or "[]")[:k], "popular")
        raise NotPublished(f"version keys under {config.prefix} keep disappearing")
    except redis.RedisError as error:
        raise unavailable(config, error, "Redis at") from None
    finally:
        client.close()


def read_vectors(config: RedisConfig, kind: str = "items") -> tuple[int, dict[str, np.ndarray]]:
    """All vectors of one kind ("items" or "users") of the serving version, with the version."""
    client = config.client()
    try:
        for _ in range(3):
            version = _current(client, config)
            pipe = client.pipeline(transaction=False)
            pipe.hget(config.key(f"v{version}", "meta"), "dim")
            pipe.hgetall(config.key(f"v{version}", kind))
            dim, raw = pipe.execute()
            if dim is None:
                continue  # expired under us: resolve current again
            vectors = {
                k.decode(): np.frombuffer(b, dtype="<f4", count=int(dim)) for k, b in raw.items()
            }
            return version, vectors
        raise NotPublished(f"version keys under {config.prefix} keep disappearing")
    except redis.RedisError as error:
        raise unavailable(config, error, "Redis at") from None
    finally:
        client.close()


def _current(client: redis.Redis, config: RedisConfig) -> int:
    value = client.get(config.key("current"))
    if value is None:
        raise NotPublished(f"nothing published under {config.prefix} yet: run `stackrec cycle`")
    return int(value)
