"""Published top-K: each user's best unseen items and vector, whatever the batching."""

import numpy as np
import torch

from stackrec.recommend import top_k
from stackrec.sequences import Sequences


def test_top_k_matches_one_user_at_a_time_when_batches_mix_lengths(build):
    model = build()
    max_len = model.config.max_len
    rng = np.random.default_rng(0)
    lengths = [3, 20, 1, 7, 12, 2, 5]  # unsorted, some longer than the context
    users = np.repeat(np.arange(len(lengths)), lengths)
    items = rng.integers(1, model.config.n_items, len(users))
    sequences = Sequences.from_arrays(users, items, np.arange(len(users)))
    asked = np.array([4, 0, 6, 1, 5, 3, 2])

    best = top_k(model, sequences, asked, k=5, batch_size=3)

    assert best.users.tolist() == asked.tolist()
    for row, user in enumerate(asked):
        context = sequences.latest(np.array([user]), max_len)
        vector = model.user_vectors(context)[0].detach()
        scores = vector @ model.item_vectors().detach().T
        scores[0] = -torch.inf
        scores[items[users == user]] = -torch.inf  # the user's whole history, not only its context
        torch.testing.assert_close(torch.from_numpy(best.user_vectors[row]), vector)
        assert best.items[row].tolist() == scores.topk(5).indices.tolist()
