"""Top-K recommendations and the vectors a serving system needs to reproduce them.

Scores are plain dot products of a user vector (the model's hidden state after the user's
latest items) and item vectors, exactly what a serving service computes from Redis, so the
published top-K and an online nearest-neighbour lookup agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from stackrec.evaluate import score_rows
from stackrec.sequences import Sequences


@dataclass(frozen=True)
class TopK:
    users: np.ndarray  # [U] user indices, as in the Sequences
    user_vectors: np.ndarray  # [U, D] float32
    items: np.ndarray  # [U, k] item indices, best first


@torch.no_grad()
def top_k(
    model: torch.nn.Module,
    sequences: Sequences,
    users: np.ndarray,
    k: int,
    exclude_history: bool = True,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
) -> TopK:
    """The ``k`` best items per user; items the user already interacted with are left out.

    Users are batched shortest history first, so each batch skips most of its padding; the
    results come back in the order of ``users``. ``batch_size``: ``score_rows``.
    """
    model.eval()
    item_vectors = model.item_vectors().to(device)  # [V, D]
    n_items = item_vectors.shape[0]
    k = min(k, n_items - 1)
    batch_size = batch_size or score_rows(n_items, device)
    users = np.asarray(users)
    order = np.argsort(sequences.lengths_of(users), kind="stable")
    vectors, best = [], []
    for start in range(0, len(users), batch_size):
        chunk = users[order[start : start + batch_size]]
        contexts = sequences.latest(chunk, model.config.max_len).to(device)
        user_vectors = model.user_vectors(contexts)  # [B, D]
        scores = user_vectors @ item_vectors.T  # [B, V]
        scores[:, 0] = -torch.inf  # padding
        if exclude_history:
            rows, cols = _history(sequences, chunk)
            scores[torch.from_numpy(rows), torch.from_numpy(cols)] = -torch.inf
        best.append(scores.topk(k, dim=1).indices.cpu().numpy())
        vectors.append(user_vectors.float().cpu().numpy())
    dim = item_vectors.shape[1]
    unsort = np.argsort(order)
    return TopK(
        users=users,
        user_vectors=np.concatenate(vectors)[unsort] if vectors else np.zeros((0, dim), np.float32),
        items=np.concatenate(best)[unsort] if best else np.zeros((0, k), np.int64),
    )


def _history(sequences: Sequences, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row in ``users``, item) pairs for every item in each user's whole history."""
    rows = np.searchsorted(sequences.users, users)
    starts, ends = sequences.offsets[rows], sequences.offsets[rows + 1]
    lengths = ends - starts
    row_of = np.repeat(np.arange(len(users)), lengths)
    flat = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return row_of, sequences.items[np.repeat(starts, lengths) + flat]
