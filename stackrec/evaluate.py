"""Ranking held-out next items against the whole catalogue.

Full ranking scores every real item (padding excluded) with the same dot product serving uses,
``user_vectors @ item_vectors().T``. Ties count against the target (the rank is the number of
items scoring at least as high), so a model that scores everything equally ranks last, not first.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from stackrec.ranking import next_item_metrics

__all__ = ["next_item_metrics", "rank_targets"]


@torch.no_grad()
def rank_targets(
    model: nn.Module,
    contexts: torch.Tensor,
    targets: torch.Tensor,
    exclude_history: bool = False,
    batch_size: int = 512,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """1-based rank of each target among all real items, given its left-padded context.

    With ``exclude_history`` the items in a row's context are removed from the ranking (the
    published full-ranking protocols do this), except the target itself if it repeats one.
    ``device`` defaults to where the model is; otherwise the model is moved there.
    """
    if len(contexts) != len(targets):
        raise ValueError(f"{len(contexts)} contexts but {len(targets)} targets")
    n_items = model.config.n_items
    if len(targets) and not (int(targets.min()) >= 1 and int(targets.max()) < n_items):
        raise ValueError(f"targets must be item indices in [1, {n_items}), got {targets.min()}..")
    if device is None:
        device = next(model.parameters()).device
    model.to(device)
    was_training = model.training
    model.eval()
    ranks = []
    try:
        items = model.item_vectors().to(device)
        for start in range(0, len(targets), batch_size):
            context = contexts[start : start + batch_size].to(device)
            target = targets[start : start + batch_size].to(device)
            scores = model.user_vectors(context) @ items.T  # [B, n_items]
            ranks.append(rank_rows(scores, target, context if exclude_history else None).cpu())
    finally:
        model.train(was_training)
    return torch.cat(ranks).numpy() if ranks else np.zeros(0, dtype=np.int64)


def rank_rows(
    scores: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor | None = None
) -> torch.Tensor:
    """Rank of ``targets[i]`` in ``scores[i]`` (``[B, n_items]``), column 0 and ``exclude`` out."""
    scores = scores.float().clone()
    scores[:, 0] = float("-inf")
    target_scores = scores.gather(1, targets[:, None])  # [B, 1]
    if exclude is not None:
        scores.scatter_(1, exclude, float("-inf"))
        scores.scatter_(1, targets[:, None], target_scores)
    return (scores >= target_scores).sum(1)
