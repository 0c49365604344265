"""Next-item losses over the output item vectors.

Both take only the positions that carry a target (``[T, D]`` hidden states, ``[T]`` targets):
gathering them first means the output layer, which dominates the cost, is never computed for
padding. Row 0 of the item vectors is padding and is never a class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def full_cross_entropy(
    hidden: torch.Tensor, item_vectors: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Softmax cross-entropy over every real item (exact, cost ``T * n_items * D``)."""
    logits = hidden @ item_vectors[1:].T  # [T, n_items - 1]
    return F.cross_entropy(logits.float(), targets - 1)


def sampled_softmax(
    hidden: torch.Tensor,
    item_vectors: torch.Tensor,
    targets: torch.Tensor,
    negatives: torch.Tensor,
    log_q: torch.Tensor,
) -> torch.Tensor:
    """Sampled softmax with log-Q correction (Bengio & Senecal 2008; Yi et al. 2019).

    ``negatives`` ``[S]`` are shared by the whole batch, drawn with replacement from a proposal
    ``q`` over items; ``log_q`` ``[n_items]`` is ``log(S * q)``, the expected count of each item
    in the sample. Subtracting it from every logit makes the sampled loss's gradient an unbiased
    estimate of the full softmax's as ``S`` grows. A negative equal to a row's target is removed
    from that row (an "accidental hit").
    """
    positive = (hidden * item_vectors[targets]).sum(-1, keepdim=True) - log_q[targets, None]
    negative = hidden @ item_vectors[negatives].T - log_q[negatives]  # [T, S]
    negative = negative.masked_fill(targets[:, None] == negatives[None, :], float("-inf"))
    logits = torch.cat([positive, negative], dim=1).float()
    return F.cross_entropy(logits, torch.zeros_like(targets))
