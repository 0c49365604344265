"""Prequential scoring: one forward pass gives every group's figures, and they agree with
scoring each group on its own (the gate reuses the serving model's holdout figures from it)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stackrec import continual
from stackrec.continual import CycleConfig
from stackrec.evaluate import rank_targets
from stackrec.ranking import next_item_metrics
from stackrec.registry import Registry


@pytest.fixture
def cycle(tmp_path, events):
    torch.manual_seed(0)
    learner = continual.resume(Registry(tmp_path), CycleConfig(dim=16, blocks=2, max_len=8))
    rng = np.random.default_rng(0)
    history = events(
        [(f"u{u}", f"i{rng.integers(40)}", 10 * u + k) for u in range(30) for k in range(6)]
    )
    fresh = events(
        [(f"u{rng.integers(40)}", f"i{rng.integers(60)}", 1_000 + n) for n in range(200)]
    )
    continual.prepare(learner, history.schema.empty_table(), history, holdout_share=0.0)
    return learner, continual.prepare(learner, history, fresh, holdout_share=0.25)


def test_groups_are_slices_of_one_scoring_and_match_scoring_alone(cycle):
    learner, data = cycle
    quality = continual.prequential(learner, data)

    contexts, targets, kept = data.sequences.contexts_for(data.is_new, learner.model.config.max_len)
    ranks = rank_targets(learner.model, contexts, targets)
    assert quality["all"] | {"loss": 0} == next_item_metrics(ranks) | {"loss": 0}
    new = data.first_seen[kept]
    assert quality["new"]["n"] == new.sum() > 0
    assert quality["new"]["hr@10"] == next_item_metrics(ranks[new])["hr@10"]
    assert quality["known"]["n"] + quality["new"]["n"] == quality["all"]["n"]
    assert quality["holdout"] == pytest.approx(continual.holdout_metrics(learner.model, data))
    assert math.isclose(
        quality["all"]["loss"],
        continual.mean_cross_entropy(learner.model, contexts, targets),
        rel_tol=1e-6,
    )


def test_the_loss_is_the_mean_cross_entropy_over_all_real_items(cycle):
    learner, data = cycle
    contexts, targets, _ = data.sequences.contexts_for(data.is_new, learner.model.config.max_len)
    learner.model.eval()
    with torch.no_grad():
        scores = learner.model.user_vectors(contexts) @ learner.model.item_vectors().T
    log_p = torch.log_softmax(scores[:, 1:], dim=1)  # padding is not an item
    expected = -log_p.gather(1, (targets - 1)[:, None]).mean()
    _, losses = continual.rank_and_loss(learner.model, contexts, targets, batch_size=7)
    assert float(losses.mean()) == pytest.approx(float(expected), rel=1e-5)


def test_nothing_to_score_gives_nan_loss_and_zero_counts(cycle):
    learner, _ = cycle
    ranks, losses = continual.rank_and_loss(
        learner.model, torch.zeros(0, 8, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    )
    assert len(ranks) == len(losses) == 0
    assert math.isnan(
        continual.mean_cross_entropy(
            learner.model, torch.zeros(0, 8, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        )
    )
