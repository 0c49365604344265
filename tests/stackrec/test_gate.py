"""The gate keeps a worse or broken candidate away from users."""

from __future__ import annotations

import torch

from stackrec.gate import GateConfig, judge
from stackrec.nextitnet import NextItNet, NextItNetConfig


def model() -> NextItNet:
    torch.manual_seed(0)
    return NextItNet(NextItNetConfig(n_items=20, dim=8, n_blocks=2, max_len=5))


def test_first_model_passes_when_finite():
    verdict = judge(model(), 3.2, {"ndcg@10": 0.1, "n": 500}, None)
    assert verdict.promote and "first model" in verdict.reason


def test_a_candidate_within_tolerance_passes_and_a_worse_one_is_rejected():
    config = GateConfig(tolerance=0.05, z=0.0)
    serving = {"ndcg@10": 0.40, "n": 500}
    assert judge(model(), 3.0, {"ndcg@10": 0.381, "n": 500}, serving, config).promote
    verdict = judge(model(), 3.0, {"ndcg@10": 0.379, "n": 500}, serving, config)
    assert not verdict.promote
    assert (verdict.candidate, verdict.serving) == (0.379, 0.40)
    assert "0.3790 < 0.3800" in verdict.reason


def test_diverged_runs_are_rejected():
    assert "diverged" in judge(model(), float("nan"), {"ndcg@10": 1.0}, None).reason
    sabotaged = model()
    with torch.no_grad():
        sabotaged.blocks[0].alpha.fill_(float("inf"))
    verdict = judge(sabotaged, 1.0, {"ndcg@10": 1.0, "n": 500}, {"ndcg@10": 0.1, "n": 500})
    assert not verdict.promote and "non-finite weights" in verdict.reason


def test_a_tiny_holdout_is_judged_on_finiteness_only():
    verdict = judge(model(), 1.0, {"ndcg@10": 0.0, "n": 10}, {"ndcg@10": 0.5, "n": 10})
    assert verdict.promote and "too small" not in verdict.reason and "< 50" in verdict.reason


def test_an_exploded_training_loss_is_rejected_even_if_ranking_survived():
    verdict = judge(
        model(), 5e12, {"ndcg@10": 0.9, "n": 500}, {"ndcg@10": 0.1, "n": 500}, serving_loss=5.2
    )
    assert not verdict.promote and "diverged" in verdict.reason
    assert judge(
        model(), 9.0, {"ndcg@10": 0.9, "n": 500}, {"ndcg@10": 0.1, "n": 500}, serving_loss=5.2
    ).promote


def test_the_noise_margin_shrinks_with_the_holdout():
    serving = {"ndcg@10": 0.40}
    # 2 s.e. of the difference at n=200 is about 0.098: a 0.05 drop is within noise
    assert judge(model(), 3.0, {"ndcg@10": 0.33, "n": 200}, serving | {"n": 200}).promote
    # at n=100,000 the margin is about 0.004: the same drop is a real regression
    verdict = judge(model(), 3.0, {"ndcg@10": 0.33, "n": 100_000}, serving | {"n": 100_000})
    assert not verdict.promote and "2 s.e., n=100000" in verdict.reason
