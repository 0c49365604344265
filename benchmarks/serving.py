"""Serving-side forward passes: length-batched and padding-trimmed against ``max_len``-wide batches.

    python benchmarks/serving.py [--datasets beauty ml-1m] [--model nextitnet] [--blocks 8]
                                 [--dim 64] [--events 10000] [--repeat 3] [--threads 1]

A cycle scores every new event before training (prequential evaluation, the gate's holdout)
and publishes top-K for every user after it. Both run the model over left-padded 50-item
contexts; Beauty's users have about 9 items, so most of that compute is padding. Per data set,
on all of its events, with an untrained model of the cycle's shape:

- ``top_k``: top-50 for every user, ``stackrec.recommend.top_k`` (shortest histories batched
  together, leading padding skipped) against the same computation on batches in user order at
  full width (what it did before);
- ``rank``: rank and loss of the last ``--events`` events' targets,
  ``stackrec.continual.rank_and_loss`` against the same at full width in event order.

Prints JSON with the median seconds of each, the speedups (baseline / ours, measured in the
same run) and whether the two paths agree (same top-K lists and ranks, vectors to 1e-5).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.continual import DATA, DATASETS  # noqa: E402
from stackrec.checkpoint import new_model  # noqa: E402
from stackrec.continual import rank_and_loss  # noqa: E402
from stackrec.datasets import read_interactions  # noqa: E402
from stackrec.evaluate import rank_rows  # noqa: E402
from stackrec.recommend import _history, top_k  # noqa: E402
from stackrec.sequences import Sequences  # noqa: E402
from stackrec.vocab import Vocabulary  # noqa: E402

MAX_LEN, K, BATCH = 50, 50, 512


@torch.no_grad()
def full_width_top_k(model, sequences: Sequences, users: np.ndarray) -> np.ndarray:
    """The previous ``top_k``: batches in user order, every context ``MAX_LEN`` wide."""
    items = model.item_vectors()
    best = []
    for start in range(0, len(users), BATCH):
        chunk = users[start : start + BATCH]
        scores = model(sequences.latest(chunk, MAX_LEN))[:, -1] @ items.T
        scores[:, 0] = -torch.inf
        rows, cols = _history(sequences, chunk)
        scores[torch.from_numpy(rows), torch.from_numpy(cols)] = -torch.inf
        best.append(scores.topk(K, dim=1).indices.numpy())
    return np.concatenate(best)


@torch.no_grad()
def full_width_rank(model, contexts: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """The previous ``rank_and_loss``: batches in event order, every context full width."""
    items, ranks = model.item_vectors(), []
    for start in range(0, len(targets), BATCH):
        scores = model(contexts[start : start + BATCH])[:, -1] @ items.T
        target = targets[start : start + BATCH]
        ranks.append(rank_rows(scores, target))
        scores[:, 0] = -torch.inf
        F.cross_entropy(scores, target, reduction="none")
    return torch.cat(ranks).numpy()


def timed(run: Callable[[], object], repeat: int) -> tuple[float, object]:
    seconds, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result


def measure(name: str, args: argparse.Namespace) -> dict:
    path, fmt = DATASETS[name]
    table = read_interactions(path, fmt)
    users, items = Vocabulary(), Vocabulary()
    user_ids, item_ids = table["user_id"].to_numpy(), table["item_id"].to_numpy()
    users.add(user_ids)
    items.add(item_ids)
    sequences = Sequences.from_arrays(
        users.lookup(user_ids), items.lookup(item_ids), table["ts"].to_numpy()
    )
    model = new_model(
        args.model, 0, n_items=len(items), dim=args.dim, n_blocks=args.blocks, max_len=MAX_LEN
    ).eval()
    for name_, param in model.named_parameters():  # untrained alphas are 0: switch blocks on
        if name_.split(".")[-1].startswith("alpha"):
            param.data.fill_(0.5)
    everyone = sequences.users
    ours_s, ours = timed(lambda: top_k(model, sequences, everyone, K), args.repeat)
    base_s, base = timed(lambda: full_width_top_k(model, sequences, everyone), args.repeat)

    is_last = np.zeros(table.num_rows, dtype=bool)
    is_last[-args.events :] = True
    contexts, targets, _ = sequences.contexts_for(is_last, MAX_LEN)
    rank_s, (ranks, _) = timed(lambda: rank_and_loss(model, contexts, targets), args.repeat)
    base_rank_s, base_ranks = timed(lambda: full_width_rank(model, contexts, targets), args.repeat)
    return {
        "events": table.num_rows,
        "users": len(everyone),
        "items": len(items) - 1,
        "mean_history": round(float(sequences.lengths.mean()), 1),
        "top_k_s": {"ours": round(ours_s, 3), "full_width": round(base_s, 3)},
        "top_k_speedup": round(base_s / ours_s, 2),
        "top_k_same_lists": float((ours.items == base).all(1).mean()),
        "rank_events": len(targets),
        "rank_s": {"ours": round(rank_s, 3), "full_width": round(base_rank_s, 3)},
        "rank_speedup": round(base_rank_s / rank_s, 2),
        "rank_same": bool((ranks == base_ranks).all()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--model", default="nextitnet", choices=["nextitnet", "sasrec"])
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--events", type=int, default=10_000, help="events ranked, the latest")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    missing = [n for n in args.datasets if not DATASETS[n][0].exists()]
    if missing:
        sys.exit(f"error: {', '.join(missing)} not found under {DATA}")
    torch.set_num_threads(args.threads)
    results = {}
    for name in args.datasets:
        print(f"{name}: timing top-K and ranking ({args.repeat} repeats each)", file=sys.stderr)
        results[name] = measure(name, args)
    print(
        json.dumps(
            {
                "command": " ".join(["benchmarks/serving.py", *sys.argv[1:]]),
                "model": {"kind": args.model, "blocks": args.blocks, "dim": args.dim},
                "threads": args.threads,
                "torch": torch.__version__,
                "cpu": platform.processor() or platform.machine(),
                "datasets": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
