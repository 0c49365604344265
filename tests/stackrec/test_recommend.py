"""Published top-K: each user's best unseen items and vector, whatever the batching."""

import numpy as np
import torch

from stackrec import continual
from stackrec.continual import CycleConfig
from stackrec.recommend import top_k
from stackrec.registry import Registry
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


def test_past_the_limit_the_most_recently_active_users_get_top_k(tmp_path, events):
    learner = continual.resume(Registry(tmp_path), CycleConfig(dim=16, blocks=2, max_len=8))
    history = events([(f"u{u}", f"i{u % 7}", 10 * u + k) for u in range(30) for k in range(3)])
    fresh = events([("u3", "i1", 1_000), ("u8", "i2", 1_001), ("u3", "i4", 1_002)])
    continual.prepare(learner, history.schema.empty_table(), history)
    data = continual.prepare(learner, history, fresh, holdout_share=0.0)

    recs = continual.recommendations(learner, data, CycleConfig(top_k=3, publish_users=4))

    assert sorted(recs.user_ids) == ["u28", "u29", "u3", "u8"]  # the batch's, then the latest
    everyone = continual.recommendations(learner, data, CycleConfig(top_k=3))
    assert len(everyone.user_ids) == 30
