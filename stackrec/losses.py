"""Next-item losses over the output item vectors.

Both take only the positions that carry a target (``[T, D]`` hidden states, ``[T]`` targets):
gathering them first means the output layer, which dominates the cost, is never computed for
padding. Row 0 of the item vectors is padding and is never a class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# CPU tiles of the logit matrix: a 512 x 2048 tile (4 MiB) stays in cache between its matmul and
# its exp, where whole [T, n_items] logits go to memory several times and fault in fresh pages
# each step. benchmarks/loss.py on 1 and 2 AVX2 cores: 1.3-2.0x faster than materialised logits
# at the benchmarks' batch shapes, from 6,400 targets x 1,683 items (ML-100K) to 368 x 54,542
# (Beauty); at about a million logits the two break even.
ROWS_PER_TILE = 512
ITEMS_PER_TILE = 2048
TILED_ABOVE = 2**21  # logits (targets x items) beyond which the CPU path tiles


def full_cross_entropy(
    hidden: torch.Tensor, item_vectors: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Softmax cross-entropy over every real item (exact, cost ``T * n_items * D``).

    A GPU, and a CPU with small logits, materialise the ``[T, n_items]`` logits as usual. On a
    CPU anything larger goes through ``TiledCrossEntropy``, which computes the same value and
    gradients tile by tile in cache: faster, and memory stays at one tile (6,400 targets over
    55k items would otherwise write and read 1.4 GB several times per step).
    """
    big = len(hidden) * (len(item_vectors) - 1) > TILED_ABOVE
    if hidden.device.type != "cpu" or not big or not torch.is_grad_enabled():
        return F.cross_entropy((hidden @ item_vectors[1:].T).float(), targets - 1)
    return TiledCrossEntropy.apply(hidden, item_vectors, targets)


class TiledCrossEntropy(torch.autograd.Function):
    """Mean of ``logsumexp(h @ W[1:].T) - h . W[target]`` without materialising the logits.

    Forward keeps one log-sum-exp per row; backward recomputes each tile of probabilities
    ``exp(h W_t^T - lse)`` once and feeds both gradient matrix multiplies from it, so memory
    stays at one tile however large the batch.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, vectors: torch.Tensor, targets: torch.Tensor):
        parts = [
            torch.cat([_logsumexp_(rows @ tile.T) for rows in _chunks(hidden)])
            for tile in _chunks(vectors, start=1, size=ITEMS_PER_TILE)
        ]
        lse = torch.logsumexp(torch.stack(parts, dim=1), dim=1)  # [T]
        ctx.save_for_backward(hidden, vectors, targets, lse)
        return (lse - (hidden * vectors[targets]).sum(1)).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        hidden, vectors, targets, lse = ctx.saved_tensors
        scale = grad / len(hidden)
        grad_hidden, grad_vectors = torch.zeros_like(hidden), torch.zeros_like(vectors)
        # [h, -lse] . [w, 1] = h . w - lse: the log-probabilities come out of one matmul
        hidden_lse = torch.cat([hidden, -lse[:, None]], dim=1)
        vectors_one = torch.cat([vectors, torch.ones_like(vectors[:, :1])], dim=1)
        for start in range(1, len(vectors), ITEMS_PER_TILE):
            tile = vectors[start : start + ITEMS_PER_TILE]
            tile_one = vectors_one[start : start + ITEMS_PER_TILE]
            grad_tile = grad_vectors[start : start + ITEMS_PER_TILE]
            for row in range(0, len(hidden), ROWS_PER_TILE):
                rows = slice(row, row + ROWS_PER_TILE)
                probs = (hidden_lse[rows] @ tile_one.T).exp_()
                grad_hidden[rows].addmm_(probs, tile)
                grad_tile.addmm_(probs.T, hidden[rows])
        grad_hidden.sub_(vectors[targets]).mul_(scale)
        grad_vectors.index_add_(0, targets, hidden, alpha=-1.0).mul_(scale)
        return grad_hidden, grad_vectors, None


def _logsumexp_(logits: torch.Tensor) -> torch.Tensor:
    """Row-wise log-sum-exp that overwrites ``logits``: twice as fast as ``torch.logsumexp``
    on a CPU, which allocates a temporary per step."""
    peak = logits.amax(dim=1, keepdim=True)
    return logits.sub_(peak).exp_().sum(dim=1).log_().add_(peak.squeeze(1))


def _chunks(x: torch.Tensor, start: int = 0, size: int | None = None) -> list[torch.Tensor]:
    size = size or ROWS_PER_TILE  # read at call time, so a test can shrink the tiles
    return [x[i : i + size] for i in range(start, len(x), size)]


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
