import numpy as np
import pytest
import torch

from stackrec.evaluate import Protocol, evaluate_held_out, rank_rows, rank_targets, score_rows
from stackrec.splits import HeldOut

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


def held_out(batch, rows: int = 6) -> HeldOut:
    contexts = batch(rows=rows)
    return HeldOut(contexts, torch.arange(1, rows + 1), contexts, np.arange(rows))


def test_full_protocol_says_whether_history_is_masked(build, batch):
    model, held = build(), held_out(batch)
    masked = evaluate_held_out(model, held, Protocol("full"), ks=(10,))
    unmasked = evaluate_held_out(model, held, Protocol("full", mask_history=False), ks=(10,))
    assert masked["history_masked"] is True and unmasked["history_masked"] is False
    assert masked["mrr@10"] >= unmasked["mrr@10"] and masked["n"] == 6


def test_sampling_every_unseen_item_equals_full_ranking_with_history_masked(build, batch):
    model, held = build(), held_out(batch, rows=1)
    n_unseen = model.config.n_items - 1 - len(set(held.seen[0].tolist()) - {0, 1}) - 1
    full = rank_targets(model, held.contexts, held.targets, exclude=held.seen)
    protocol = Protocol("sampled100", sampling="uniform", n_negatives=n_unseen)
    sampled = evaluate_held_out(model, held, protocol, ks=(30,))
    assert sampled["mrr@30"] == pytest.approx(1 / full[0])
    assert sampled["negatives_exclude_history"] is True


def test_popularity_sampling_never_draws_items_without_counts(build, batch):
    model, held = build(), held_out(batch, rows=1)
    seen = set(held.seen[0].tolist())
    counts = np.zeros(model.config.n_items)
    allowed = [i for i in range(2, model.config.n_items) if i not in seen][:5]
    counts[allowed] = [5, 1, 1, 1, 1]
    protocol = Protocol("sampled100", sampling="popularity", n_negatives=5)
    ranks = evaluate_held_out(model, held, protocol, item_counts=counts, ks=(6,))
    scores = model.score(model.user_vectors(held.contexts))[0].detach()
    expected = 1 + int((scores[allowed] >= scores[1]).sum())
    assert ranks["mrr@6"] == pytest.approx(1 / expected)


def test_unknown_protocol_is_refused():
    with pytest.raises(ValueError, match="'sampled50'"):
        Protocol("sampled50")


def test_nan_scores_rank_last():
    scores = torch.tensor([[0.0, float("nan"), 1.0, float("nan")]])
    assert rank_rows(scores, torch.tensor([1])).tolist() == [3]
    assert rank_rows(scores, torch.tensor([2])).tolist() == [1]


def test_score_rows_keep_a_cpu_batch_of_scores_near_16_mib():
    assert score_rows(54_543) == 76  # Beauty: 76 x 54,543 float32 scores = 15.8 MiB
    assert score_rows(3_617) == 512  # ML-1M: capped
    assert score_rows(10_000_000) == 16  # at least a few rows per batch
    assert score_rows(54_543, "cuda") == 512


def test_ranks_do_not_depend_on_the_batch_size(build, batch):
    model = build()
    contexts, targets = batch(rows=6), torch.arange(1, 7)
    expected = rank_targets(model, contexts, targets, batch_size=6)
    for size in (None, 1, 4):
        np.testing.assert_array_equal(
            rank_targets(model, contexts, targets, batch_size=size), expected
        )
