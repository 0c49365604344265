"""Ranking held-out next items against the whole catalogue.

Full ranking scores every real item (padding excluded) with the same dot product serving uses,
``user_vectors @ item_vectors().T``. Ties count against the target (the rank is the number of
items scoring at least as high), so a model that scores everything equally ranks last, not first.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from stackrec.ranking import next_item_metrics
from stackrec.sequences import by_length
from stackrec.splits import HeldOut

__all__ = [
    "Protocol",
    "evaluate_held_out",
    "next_item_metrics",
    "rank_targets",
    "score_rows",
    "scored_batches",
]

# A CPU batch's float32 scores, [rows, n_items], are kept about this small so that ranking and
# selecting top-K read them from the last-level cache instead of memory.
SCORE_BYTES = 16 * 2**20


def score_rows(n_items: int, device: str | torch.device = "cpu") -> int:
    """Rows per scoring batch: 512 on a GPU; on a CPU, as many as fit ``SCORE_BYTES`` (16 to
    512: 76 on Beauty's 54,543 items). On one core, against Beauty's catalogue, 64 rows per
    batch ranked (with the loss) 2.4x and 128 picked top-50 1.5x faster than 512 rows did."""
    if torch.device(device).type != "cpu":
        return 512
    return int(np.clip(SCORE_BYTES // (4 * n_items), 16, 512))


@torch.no_grad()
def rank_targets(
    model: nn.Module,
    contexts: torch.Tensor,
    targets: torch.Tensor,
    exclude_history: bool = False,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    exclude: torch.Tensor | None = None,
) -> np.ndarray:
    """1-based rank of each target among all real items, given its left-padded context.

    With ``exclude_history`` the items in a row's context are removed from the ranking (the
    published full-ranking protocols do this), except the target itself if it repeats one;
    ``exclude`` (``[N, H]``, 0-padded) removes other items per row, e.g. a longer history.
    ``device`` defaults to where the model is; otherwise the model is moved there.
    """
    if len(contexts) != len(targets):
        raise ValueError(f"{len(contexts)} contexts but {len(targets)} targets")
    n_items = model.config.n_items
    if len(targets) and not (int(targets.min()) >= 1 and int(targets.max()) < n_items):
        raise ValueError(f"targets must be item indices in [1, {n_items}), got {targets.min()}..")
    ranks = torch.zeros(len(targets), dtype=torch.long)
    for rows, scores, target in scored_batches(model, contexts, targets, batch_size, device):
        masked = contexts[rows].to(scores.device) if exclude_history else None
        if exclude is not None:
            extra = exclude[rows].to(scores.device)
            masked = extra if masked is None else torch.cat([masked, extra], dim=1)
        ranks[rows] = rank_rows(scores, target, masked).cpu()
    return ranks.numpy()


def scored_batches(
    model: nn.Module,
    contexts: torch.Tensor,
    targets: torch.Tensor,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(rows [B], scores [B, n_items], targets [B])`` per batch of contexts: the same dot
    product serving uses, the model in eval mode (restored after) on ``device`` (default: where
    it is). ``rows`` index ``contexts``: batches hold histories of similar length, so each
    skips most of its padding (``without_leading_padding``). ``batch_size``: ``score_rows``."""
    if device is None:
        device = next(model.parameters()).device
    batch_size = batch_size or score_rows(model.config.n_items, device)
    model.to(device)
    was_training = model.training
    model.eval()
    try:
        items = model.item_vectors().to(device)
        order = by_length(contexts).cpu()  # index CPU results, whichever device holds contexts
        for start in range(0, len(targets), batch_size):
            rows = order[start : start + batch_size]
            scores = model.user_vectors(contexts[rows].to(device)) @ items.T
            yield rows, scores, targets[rows].to(device)
    finally:
        model.train(was_training)


def rank_rows(
    scores: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor | None = None
) -> torch.Tensor:
    """Rank of ``targets[i]`` in ``scores[i]`` (``[B, n_items]``), column 0 and ``exclude`` out."""
    scores = torch.nan_to_num(scores.float(), nan=float("-inf"))  # a NaN score ranks last
    scores[:, 0] = float("-inf")
    target_scores = scores.gather(1, targets[:, None])  # [B, 1]
    if exclude is not None:
        scores.scatter_(1, exclude, float("-inf"))
        scores.scatter_(1, targets[:, None], target_scores)
    return (scores[:, 1:] >= target_scores).sum(1)  # padding never counts, even as a tie


@dataclass(frozen=True)
class Protocol:
    """How held-out targets are ranked; ``describe()`` goes into every result."""

    name: str = "full"  # "full": against every item; "sampled100": against sampled negatives
    mask_history: bool = True  # full: drop the user's earlier items from the candidates
    sampling: str = "popularity"  # sampled: negatives by "popularity" (BERT4Rec) or "uniform"
    n_negatives: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in PROTOCOLS:
            raise ValueError(f"protocol {self.name!r}; expected one of {PROTOCOLS}")
        if self.sampling not in ("popularity", "uniform"):
            raise ValueError(f"sampling={self.sampling!r}; expected 'popularity' or 'uniform'")

    def describe(self) -> dict:
        if self.name == "full":
            return {"protocol": "full", "history_masked": self.mask_history}
        return {
            "protocol": self.name,
            "negatives": self.n_negatives,
            "negative_sampling": self.sampling,
            "negatives_exclude_history": True,
        }


PROTOCOLS = ("full", "sampled100")


@torch.no_grad()
def evaluate_held_out(
    model: nn.Module,
    held: HeldOut,
    protocol: Protocol = Protocol(),
    item_counts: np.ndarray | None = None,
    ks: Sequence[int] = (5, 10, 20),
    batch_size: int | None = None,
    device: str | torch.device | None = None,
) -> dict:
    """Metrics of ``model`` on ``held`` under ``protocol``, with the protocol spelled out.

    ``item_counts`` (``[n_items]``, training interactions per item) weight popularity sampling.
    """
    if protocol.name == "full":
        exclude = held.seen if protocol.mask_history else None
        ranks = rank_targets(model, held.contexts, held.targets, False, batch_size, device, exclude)
    else:
        ranks = _rank_sampled(model, held, protocol, item_counts, batch_size, device)
    return {**next_item_metrics(ranks, ks), **protocol.describe()}


def _rank_sampled(model, held, protocol, item_counts, batch_size, device) -> np.ndarray:
    """Rank each target among ``n_negatives`` items drawn without replacement from the items
    the user has not seen (Gumbel top-k over ``log weight``, seeded)."""
    n_items = model.config.n_items
    if protocol.sampling == "uniform":
        weights = torch.ones(n_items)
    elif item_counts is None or len(item_counts) != n_items:
        raise ValueError(f"popularity sampling needs item_counts of length n_items={n_items}")
    else:
        weights = torch.as_tensor(np.asarray(item_counts), dtype=torch.float32)
    log_w = weights.clamp(min=0).log()
    log_w[0] = float("-inf")
    generator = torch.Generator().manual_seed(protocol.seed)
    batch_size = batch_size or score_rows(n_items, device or next(model.parameters()).device)
    ranks = []
    for start in range(0, len(held), batch_size):
        rows = slice(start, start + batch_size)
        targets = held.targets[rows]
        uniform = torch.rand(len(targets), n_items, generator=generator).clamp(min=1e-20)
        keys = log_w - torch.log(-torch.log(uniform))
        keys.scatter_(1, held.seen[rows], float("-inf"))
        keys.scatter_(1, targets[:, None], float("-inf"))
        short = (keys > float("-inf")).sum(1) < protocol.n_negatives
        if bool(short.any()):
            row = start + int(short.nonzero()[0, 0])
            raise ValueError(
                f"target {row} has fewer than {protocol.n_negatives} unseen items to sample "
                f"as negatives (the catalogue has {n_items - 1} items)"
            )
        negatives = keys.topk(protocol.n_negatives, dim=1).indices  # [B, n_negatives]
        candidates = torch.cat([targets[:, None], negatives], dim=1)
        scores = _full_scores(model, held.contexts[rows], device).cpu()
        chosen = scores.gather(1, candidates)
        ranks.append((chosen[:, 1:] >= chosen[:, :1]).sum(1) + 1)
    return torch.cat(ranks).numpy() if ranks else np.zeros(0, dtype=np.int64)


def _full_scores(model: nn.Module, contexts: torch.Tensor, device) -> torch.Tensor:
    device = next(model.parameters()).device if device is None else torch.device(device)
    model.to(device).eval()
    return model.score(model.user_vectors(contexts.to(device))).float()
