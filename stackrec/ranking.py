"""Ranking metrics from the 1-based rank of each held-out item.

Working from ranks keeps the metrics independent of how they were obtained (full ranking or
sampled negatives) and makes them easy to check by hand: a target at rank ``r <= k`` scores
HR 1, NDCG ``1 / log2(r + 1)`` and MRR ``1 / r``; beyond ``k`` it scores 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

METRICS = ("hr", "ndcg", "mrr")


def next_item_metrics(ranks: np.ndarray, ks: Sequence[int] = (10,)) -> dict[str, float]:
    """``{"hr@k", "ndcg@k", "mrr@k"}`` for each k, averaged over targets, plus the count ``"n"``."""
    ranks = np.asarray(ranks, dtype=np.int64)
    if ranks.size == 0:
        return {"n": 0, **{f"{m}@{k}": 0.0 for k in ks for m in METRICS}}
    if ranks.min() < 1:
        raise ValueError(f"ranks are 1-based; got {ranks.min()}")
    metrics: dict[str, float] = {"n": int(ranks.size)}
    for k in ks:
        hit = ranks <= k
        metrics[f"hr@{k}"] = float(hit.mean())
        metrics[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0).mean())
        metrics[f"mrr@{k}"] = float(np.where(hit, 1.0 / ranks, 0.0).mean())
    return metrics
