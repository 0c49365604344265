"""Versioned serving state in the real Redis: publish, flip, expire, roll back, fail cleanly."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streaming import services
from streaming.redis_store import (
    NotPublished,
    RedisConfig,
    ServingUnavailable,
    Snapshot,
    json_list,
    publish,
    set_current,
)
from streaming.serving import Recommendation, current_version, read_vectors, recommend

PARTS = ("items", "users", "recs", "popular", "meta")


def snapshot(version: int, dim: int) -> Snapshot:
    """Every component of every vector equals ``version``, so a mixed read is visible."""
    items = [f"i{n}" for n in range(6)]
    users = ["alice", "bob"]
    return Snapshot(
        version=version,
        item_ids=items,
        item_vectors=np.full((len(items), dim), float(version)),
        user_ids=users,
        user_vectors=np.full((len(users), dim), float(version)) + np.arange(dim) / 8,
        recommendations=[[f"i{(n + version) % 6}" for n in range(5)], ["i0"]],
        popular=["i5", "i4", "i3"],
        meta={"model": "test", "depth": 2 * version},
    )


@pytest.fixture
def config(stack) -> RedisConfig:
    return replace(stack.redis, version_ttl_s=600)


@pytest.fixture
def client(config):
    client = config.client()
    yield client
    client.close()


def ttls(client, config: RedisConfig, version: int) -> dict[str, int]:
    return {part: client.ttl(config.key(f"v{version}", part)) for part in PARTS}


def test_nothing_published_is_not_published(config):
    with pytest.raises(NotPublished, match=f"nothing published under {config.prefix}"):
        current_version(config)
    with pytest.raises(NotPublished):
        recommend(config, "alice")


def test_published_version_serves_recommendations_and_vectors(config, client):
    written = publish(config, snapshot(1, dim=4))
    assert written == 6 + 2 * 2
    assert current_version(config) == 1
    assert recommend(config, "alice", k=3) == Recommendation(
        1, "alice", ["i1", "i2", "i3"], "personal"
    )
    assert recommend(config, "bob") == Recommendation(1, "bob", ["i0"], "personal")
    assert recommend(config, "stranger", k=2) == Recommendation(
        1, "stranger", ["i5", "i4"], "popular"
    )
    version, users = read_vectors(config, "users")
    assert version == 1
    np.testing.assert_array_equal(users["bob"], np.array([1.0, 1.125, 1.25, 1.375], "<f4"))
    # the wire format: little-endian float32 bytes, dim and dtype in the meta
    raw = client.hget(config.key("v1", "items"), "i3")
    assert raw == np.ones(4, dtype="<f4").tobytes()
    meta = client.hgetall(config.key("v1", "meta"))
    assert (meta[b"dim"], meta[b"dtype"], meta[b"n_items"], meta[b"n_users"]) == (
        b"4",
        b"float32le",
        b"6",
        b"2",
    )
    assert meta[b"depth"] == b"2"
    assert set(ttls(client, config, 1).values()) == {-1}  # the serving version never expires


def test_every_vector_and_list_arrives_whatever_its_id(config, client):
    """The packer groups ids by byte length and builds each group with numpy: ids of every
    length (empty, non-ASCII, quote characters) over several HSETs and round trips all land
    under their own id with their own vector, and the top-K lists read back as written."""
    rng = np.random.default_rng(7)
    odd = ["", "é", "ü" * 3, 'say "hi"', "tab\there", "🙂", "x" * 300]
    items = odd + [f"i{n}" for n in range(2_500)]
    users = [f"user-{n}" for n in range(1_200)] + odd
    recommendations = [list(rng.choice(items, 3)) for _ in users]
    vectors = rng.standard_normal((len(items), 5)).astype("<f4")
    shot = replace(
        snapshot(1, dim=5),
        item_ids=items,
        item_vectors=vectors,
        user_ids=users,
        user_vectors=rng.standard_normal((len(users), 5)),
        recommendations=recommendations,
    )
    publish(config, shot, chunk_fields=1_100)
    stored = client.hgetall(config.key("v1", "items"))
    assert {k.decode(): v for k, v in stored.items()} == {
        i: v.tobytes() for i, v in zip(items, vectors, strict=True)
    }
    for n in [*range(20), *range(-len(odd), 0)]:  # the odd ids, and a few ordinary ones
        assert recommend(config, users[n], k=3).items == recommendations[n]


def test_a_new_version_flips_current_and_the_old_one_expires(config, client):
    publish(config, snapshot(1, dim=4))
    publish(config, snapshot(2, dim=8))
    assert current_version(config) == 2
    assert recommend(config, "alice", k=1) == Recommendation(2, "alice", ["i2"], "personal")
    version, items = read_vectors(config, "items")
    assert version == 2
    assert {v.shape for v in items.values()} == {(8,)}
    assert all((v == 2.0).all() for v in items.values())
    old = ttls(client, config, 1)
    assert all(0 < ttl <= 600 for ttl in old.values()), old
    assert set(ttls(client, config, 2).values()) == {-1}
    assert [int(v) for v in client.zrange(config.key("versions"), 0, -1)] == [1, 2]


def test_rollback_serves_the_old_version_again(config, client):
    publish(config, snapshot(1, dim=4))
    publish(config, snapshot(2, dim=8))
    set_current(config, 1)
    assert current_version(config) == 1
    version, items = read_vectors(config, "items")
    assert (version, items["i0"].shape) == (1, (4,))
    assert set(ttls(client, config, 1).values()) == {-1}
    assert all(0 < ttl <= 600 for ttl in ttls(client, config, 2).values())


def test_set_current_to_a_missing_or_expired_version_is_refused(config, client):
    publish(config, snapshot(1, dim=4))
    publish(config, snapshot(2, dim=4))
    with pytest.raises(NotPublished, match="version 7 is not in Redis"):
        set_current(config, 7)
    for part in PARTS:  # v1's grace period runs out
        client.pexpire(config.key("v1", part), 1)
    time.sleep(0.05)
    with pytest.raises(NotPublished, match="version 1 is not in Redis"):
        set_current(config, 1)
    assert current_version(config) == 2


def test_republishing_the_serving_version_replaces_it_whole(config):
    publish(config, snapshot(1, dim=4))
    smaller = replace(snapshot(1, dim=2), item_ids=["only"], item_vectors=np.zeros((1, 2)))
    publish(config, smaller)
    version, items = read_vectors(config, "items")
    assert version == 1
    assert list(items) == ["only"]
    np.testing.assert_array_equal(items["only"], [0.0, 0.0])


def test_readers_never_mix_versions_while_serving_flips(config):
    """Flip between v1 (dim 4, all 1.0) and v2 (dim 8, all 2.0) while a reader reads."""
    publish(config, snapshot(1, dim=4))
    publish(config, snapshot(2, dim=8))
    stop = threading.Event()
    flips = 0

    def flipper() -> None:
        nonlocal flips
        while not stop.is_set():
            set_current(config, 1 + flips % 2)
            flips += 1

    thread = threading.Thread(target=flipper)
    thread.start()
    seen: dict[int, int] = {}
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            version, items = read_vectors(config, "items")
            assert {v.shape for v in items.values()} == {(4 * version,)}
            assert all((v == float(version)).all() for v in items.values())
            rec = recommend(config, "alice", k=1)
            assert rec.items == [f"i{rec.version}"]
            seen[version] = seen.get(version, 0) + 1
    finally:
        stop.set()
        thread.join()
    assert flips > 10
    assert set(seen) == {1, 2}, f"the reader saw only {seen} in {flips} flips"


def test_read_vectors_of_a_vanished_version_is_not_a_key_error(config, client):
    publish(config, snapshot(1, dim=4))
    for part in PARTS:  # what a reader sees if v1 expires right after it resolved current
        client.delete(config.key("v1", part))
    with pytest.raises(NotPublished):
        read_vectors(config, "items")


def test_recommend_of_a_vanished_version_is_not_published(config, client):
    publish(config, snapshot(1, dim=4))
    client.delete(config.key("v1", "meta"))
    with pytest.raises(NotPublished, match="keep disappearing"):
        recommend(config, "alice")


def test_redis_down_is_serving_unavailable_quickly_and_changes_nothing(config):
    publish(config, snapshot(1, dim=4))
    down = replace(config, url=f"redis://127.0.0.1:{services.free_port()}/0")
    started = time.monotonic()
    with pytest.raises(ServingUnavailable, match=f"publish of v2 to {down.url} failed"):
        publish(down, snapshot(2, dim=4))
    assert time.monotonic() - started < 5
    fast = replace(down, retries=0)
    for read in (
        lambda: current_version(fast),
        lambda: recommend(fast, "alice"),
        lambda: read_vectors(fast),
        lambda: set_current(fast, 1),
    ):
        started = time.monotonic()
        with pytest.raises(ServingUnavailable, match=f"Redis at {down.url} failed"):
            read()
        assert time.monotonic() - started < 2
    assert current_version(config) == 1
    assert recommend(config, "alice").version == 1


ASCII_IDS = st.from_regex(r"[ -~]*", fullmatch=True)  # printable ASCII, quotes included


@given(st.lists(st.one_of(ASCII_IDS, st.text())))
def test_top_k_lists_are_written_exactly_as_json_dumps_writes_them(ids):
    assert json_list(ids) == json.dumps(ids).encode()
