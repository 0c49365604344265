import numpy as np
import pytest
import torch

from stackrec.evaluate import rank_rows, rank_targets

SCORES = torch.tensor([[100.0, 5.0, 3.0, 3.0, 1.0]])  # column 0 is padding


def test_rank_counts_ties_against_the_target_and_skips_padding():
    assert rank_rows(SCORES, torch.tensor([2])).tolist() == [3]
    assert rank_rows(SCORES, torch.tensor([4])).tolist() == [4]
    assert rank_rows(SCORES, torch.tensor([1])).tolist() == [1]


def test_excluded_items_drop_out_but_the_target_stays():
    assert rank_rows(SCORES, torch.tensor([2]), torch.tensor([[1, 0]])).tolist() == [2]
    assert rank_rows(SCORES, torch.tensor([2]), torch.tensor([[2, 3]])).tolist() == [2]
    assert rank_rows(SCORES, torch.tensor([2]), torch.tensor([[1, 3]])).tolist() == [1]


def test_rank_targets_matches_a_full_sort(build, batch):
    model = build()
    contexts = batch(rows=6)
    targets = torch.arange(1, 7)
    ranks = rank_targets(model, contexts, targets, batch_size=4)
    scores = model.score(model.user_vectors(contexts)).detach()[:, 1:]
    order = torch.argsort(scores, dim=1, descending=True) + 1
    expected = (order == targets[:, None]).float().argmax(1) + 1
    np.testing.assert_array_equal(ranks, expected.numpy())
    assert ranks.max() <= model.config.n_items - 1


def test_history_exclusion_never_worsens_a_rank(build, batch):
    model = build()
    contexts, targets = batch(rows=6), torch.arange(1, 7)
    full = rank_targets(model, contexts, targets)
    masked = rank_targets(model, contexts, targets, exclude_history=True)
    assert (masked <= full).all() and (masked < full).any()


def test_bad_targets_are_refused(build, batch):
    with pytest.raises(ValueError, match="item indices"):
        rank_targets(build(), batch(rows=2), torch.tensor([0, 1]))
