"""Redis publish vectors/s: ``streaming.redis_store.publish`` against raw redis-py loops.

    python benchmarks/publish.py [--items 200000] [--users 20000] [--dim 64] [--k 20]
                                 [--repeat 2] [--redis-url redis://HOST:PORT/0]

Starts a Redis on a free port (unless ``--redis-url``), then per repeat, each on a flushed
database:

- ``raw_set``: one pipelined ``SET key vector`` per vector (10,000 per round trip);
- ``raw_hset``: one ``HSET`` of 1,000 vectors each, pipelined (20 per round trip);
- ``publish``: a whole version (item and user vectors, top-``k`` lists per user, popular
  items, meta, TTLs, the completeness check and the flip of ``current``).

Vectors/s counts item and user vectors (the top-K lists ride along in ``publish``). Prints
JSON with the medians and the ratio publish / raw_hset (the issue's goal: 400k vectors/s).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def vectors(n: int, dim: int, seed: int) -> list[bytes]:
    rows = np.random.default_rng(seed).standard_normal((n, dim)).astype("<f4")
    return [row.tobytes() for row in rows]


def raw_set(client, ids: list[str], values: list[bytes]) -> None:
    pipe = client.pipeline(transaction=False)
    for n, (i, v) in enumerate(zip(ids, values, strict=True), 1):
        pipe.set(f"raw:v:{i}", v)
        if n % 10_000 == 0:
            pipe.execute()
    pipe.execute()


def raw_hset(client, ids: list[str], values: list[bytes]) -> None:
    pipe = client.pipeline(transaction=False)
    for n, start in enumerate(range(0, len(ids), 1_000), 1):
        pipe.hset(
            "raw:h",
            mapping=dict(
                zip(ids[start : start + 1_000], values[start : start + 1_000], strict=True)
            ),
        )
        if n % 20 == 0:
            pipe.execute()
    pipe.execute()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--redis-url", help="an existing Redis (default: start one)")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from streaming import services
    from streaming.redis_store import RedisConfig, Snapshot, publish

    run_dir = Path(tempfile.mkdtemp(prefix="stackrec-publish-bench-"))
    url = args.redis_url
    if url is None:
        host, port = "127.0.0.1", services.free_port()
        services.start("redis", services.redis_command(host, port, run_dir), host, port, run_dir)
        url = f"redis://{host}:{port}/0"
    config = RedisConfig(url=url, prefix="bench", version_ttl_s=600)
    rng = np.random.default_rng(0)
    item_ids = [f"i{n}" for n in range(args.items)]
    user_ids = [f"u{n}" for n in range(args.users)]
    snapshot = Snapshot(
        version=1,
        item_ids=item_ids,
        item_vectors=rng.standard_normal((args.items, args.dim)).astype("<f4"),
        user_ids=user_ids,
        user_vectors=rng.standard_normal((args.users, args.dim)).astype("<f4"),
        recommendations=[
            [item_ids[j] for j in rng.integers(0, args.items, args.k)] for _ in user_ids
        ],
        popular=item_ids[:100],
        meta={"model": "bench"},
    )
    n_vectors = args.items + args.users
    all_ids = item_ids + user_ids
    all_values = vectors(args.items, args.dim, 1) + vectors(args.users, args.dim, 2)
    runs: list[dict] = []
    client = config.client()
    try:
        for repeat in range(args.repeat):
            for path in ("raw_set", "raw_hset", "publish"):
                client.flushdb()
                began = time.perf_counter()
                if path == "raw_set":
                    raw_set(client, all_ids, all_values)
                elif path == "raw_hset":
                    raw_hset(client, all_ids, all_values)
                else:
                    publish(config, Snapshot(**{**snapshot.__dict__, "version": repeat + 1}))
                seconds = time.perf_counter() - began
                runs.append(
                    {
                        "path": path,
                        "seconds": round(seconds, 3),
                        "vectors_per_s": round(n_vectors / seconds),
                    }
                )
                print(json.dumps(runs[-1]), file=sys.stderr)
        medians = {
            path: statistics.median(r["vectors_per_s"] for r in runs if r["path"] == path)
            for path in ("raw_set", "raw_hset", "publish")
        }
        print(
            json.dumps(
                {
                    "benchmark": "publish",
                    "items": args.items,
                    "users": args.users,
                    "dim": args.dim,
                    "k": args.k,
                    "machine": {"python": platform.python_version()},
                    "summary": {
                        **{f"{p}_vectors_per_s": round(v) for p, v in medians.items()},
                        "publish_over_raw_hset": round(medians["publish"] / medians["raw_hset"], 3),
                        "publish_over_raw_set": round(medians["publish"] / medians["raw_set"], 3),
                    },
                    "runs": runs,
                },
                indent=2,
            )
        )
    finally:
        client.close()
        if args.redis_url is None:
            services.stop(run_dir, "redis")


if __name__ == "__main__":
    main()
