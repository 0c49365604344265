"""A synthetic interaction stream with the shapes real streams have, for demos and tests.

- popularity skew: within a topic, items are drawn Zipf-like;
- repeat users: user activity is Zipf-like too, so some users come back often;
- new items over time: the catalogue grows linearly, and fresh items get a popularity boost;
- drifting tastes: each user has a topic that changes with a small probability per event;
- sequential signal: with probability ``p_next`` a user's next item is the successor of their
  previous one in its topic (what a sequential model can learn and a popularity model cannot).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

START_MS = 1_700_000_000_000


@dataclass(frozen=True)
class StreamConfig:
    n_events: int = 20_000
    n_users: int = 1_000
    n_items: int = 2_000  # catalogue size at the end of the stream
    n_topics: int = 20
    initial_items: float = 0.5  # share of the catalogue available at the start
    p_next: float = 0.6  # chance the next item follows the previous one in its topic
    p_drift: float = 0.02  # chance a user's topic changes at an event
    zipf: float = 1.1
    seconds_between_events: float = 1.0
    seed: int = 0


def generate(config: StreamConfig = StreamConfig()) -> pa.Table:
    """The whole stream as a table ``user_id``, ``item_id``, ``ts`` (ms), in time order."""
    rng = np.random.default_rng(config.seed)
    n = config.n_events
    users = rng.choice(config.n_users, size=n, p=_zipf_weights(config.n_users, config.zipf, rng))
    topic_of_user = rng.integers(config.n_topics, size=config.n_users)
    # items arrive over time: item i exists from event arrival[i] on; topics interleave
    arrival = np.sort(rng.uniform(0, 1, config.n_items)) * n
    arrival[: int(config.n_items * config.initial_items)] = 0
    last_item = np.full(config.n_users, -1)
    items = np.empty(n, dtype=np.int64)
    drifts = rng.random(n) < config.p_drift
    follows = rng.random(n) < config.p_next
    for t in range(n):  # sequential by nature: each event depends on the user's previous one
        u = users[t]
        if drifts[t]:
            topic_of_user[u] = rng.integers(config.n_topics)
        available = int(np.searchsorted(arrival, t, side="right"))
        prev = last_item[u]
        successor = prev + config.n_topics  # the next item of the same topic
        if follows[t] and prev >= 0 and successor < available:
            items[t] = successor
        else:
            items[t] = _draw_from_topic(rng, topic_of_user[u], available, config)
        last_item[u] = items[t]
    ts = START_MS + (np.arange(n) * config.seconds_between_events * 1000).astype(np.int64)
    return pa.table(
        {
            "user_id": pa.array([f"u{u}" for u in users]),
            "item_id": pa.array([f"i{i}" for i in items]),
            "ts": pa.array(ts, pa.int64()),
        }
    )


def _draw_from_topic(
    rng: np.random.Generator, topic: int, available: int, config: StreamConfig
) -> int:
    candidates = np.arange(topic, max(available, topic + 1), config.n_topics)
    candidates = candidates[candidates < config.n_items]
    ranks = np.arange(1, len(candidates) + 1, dtype=np.float64)
    weights = ranks**-config.zipf
    weights[-max(1, len(weights) // 10) :] *= 3.0  # the newest items get a novelty boost
    return int(rng.choice(candidates, p=weights / weights.sum()))


def _zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    weights = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    rng.shuffle(weights)
    return weights / weights.sum()
