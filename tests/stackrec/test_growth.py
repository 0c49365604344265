"""Growth policies decide from the model's own history, and say why."""

from __future__ import annotations

import math

from stackrec.growth import DataVolumePolicy, FittedPolicy, Observation


def history(*rows: tuple[int, int, int, float]) -> list[Observation]:
    return [
        Observation(events_seen=d, block_parameters=n, depth=k, loss=loss) for d, n, k, loss in rows
    ]


def test_data_volume_stacks_when_data_doubled_since_the_depth_was_reached():
    policy = DataVolumePolicy(factor=2.0, min_events=100)
    seen = history((5_000, 10, 2, 6.0), (9_999, 10, 2, 5.0))
    assert not policy.decide(seen).grow
    decision = policy.decide([*seen, Observation(10_000, 10, 2, 4.9)])
    assert decision.grow and "2.0x" in decision.reason
    assert decision.inputs == {"events_seen": 10_000, "events_at_this_depth": 5_000, "factor": 2.0}


def test_data_volume_counts_from_when_the_new_depth_was_reached():
    policy = DataVolumePolicy(factor=2.0, min_events=100)
    seen = history((5_000, 10, 2, 6.0), (10_000, 10, 2, 5.0), (15_000, 20, 4, 4.5))
    assert not policy.decide(seen).grow  # 15k / 15k at depth 4
    assert policy.decide([*seen, Observation(30_000, 20, 4, 4.0)]).grow


def test_data_volume_respects_max_depth_and_min_events():
    assert not DataVolumePolicy(max_depth=4).decide(history((1, 1, 4, 1.0), (9e9, 1, 4, 1))).grow
    decision = DataVolumePolicy(min_events=1_000).decide(history((10, 1, 2, 5.0), (500, 1, 2, 5)))
    assert not decision.grow and "only 500 events" in decision.reason


def test_fitted_policy_waits_for_enough_observations():
    decision = FittedPolicy().decide(history((1_000, 10, 2, 6.0), (2_000, 10, 2, 5.0)))
    assert not decision.grow and "needed for a fit" in decision.reason


def test_fitted_policy_stacks_when_the_loss_curve_has_flattened():
    beta = 0.28

    def curve(d: int, e: float, b: float) -> float:
        return e + b * d**-beta

    flat = history(*[(d, 10, 2, curve(d, 4.0, 0.01)) for d in (1_000, 2_000, 4_000, 8_000)])
    steep = history(*[(d, 10, 2, curve(d, 1.0, 50.0)) for d in (1_000, 2_000, 4_000, 8_000)])
    assert FittedPolicy(beta=beta, min_gain=0.01).decide(flat).grow
    assert not FittedPolicy(beta=beta, min_gain=0.01).decide(steep).grow


def test_fitted_policy_does_not_read_a_rising_loss_as_a_plateau():
    # the stream drifts: each cycle's new events are harder than the last's, so the loss
    # rises with data (Beauty's prequential loss does); that is no case for more capacity
    rising = history(*[(d, 10, 2, 5.0 + d / 4_000) for d in (1_000, 2_000, 4_000, 8_000)])
    decision = FittedPolicy().decide(rising)
    assert not decision.grow and "does not fall with data" in decision.reason
    assert decision.inputs["B"] < 0


def test_fitted_policy_uses_compute_optimal_size_once_two_sizes_were_seen():
    alpha, beta = 0.34, 0.28

    def loss(n: int, d: int, a: float, b: float) -> float:
        return 2.0 + a * n**-alpha + b * d**-beta

    sizes_and_data = [(1_000, 10_000), (1_000, 20_000), (2_000, 40_000), (2_000, 80_000)]
    # parameters matter a lot (large A): the optimum for this compute is much larger
    big_a = history(*[(d, n, 2, loss(n, d, 500.0, 1.0)) for n, d in sizes_and_data])
    decision = FittedPolicy(alpha=alpha, beta=beta).decide(big_a)
    assert decision.grow and decision.inputs["N_opt"] > math.sqrt(2) * 2_000
    # data matters a lot (large B): stay at this size
    big_b = history(*[(d, n, 2, loss(n, d, 0.01, 500.0)) for n, d in sizes_and_data])
    assert not FittedPolicy(alpha=alpha, beta=beta).decide(big_b).grow


def test_fitted_policy_ignores_non_finite_losses():
    rows = history((1_000, 10, 2, float("nan")), (2_000, 10, 2, 5.0), (4_000, 10, 2, 4.9))
    assert "2 observations" in FittedPolicy().decide(rows).reason
