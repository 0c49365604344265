"""The promotion gate: a candidate serves only if it is not worse than the serving model.

Both models are scored on the same fixed slice: the most recent events of the cycle's batch,
which the candidate has not trained on (a forward-in-time holdout). The candidate is rejected
when its training loss or weights are not finite or its loss exploded (a diverged run), or
when its NDCG@10 on the slice falls more than ``tolerance`` (relative) below the serving
model's. A first model has nothing to be compared with and passes if it is finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GateConfig:
    metric: str = "ndcg@10"
    tolerance: float = 0.05  # relative drop allowed, e.g. 0.05 = 5 % worse still passes
    min_events: int = 50  # below this the slice is too small to judge: pass if finite
    max_loss_ratio: float = 2.0  # training loss above this x the serving model's loss: diverged
    z: float = 2.0  # also allow this many standard errors of the difference (0: none)


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reason: str
    candidate: float | None = None
    serving: float | None = None


def judge(
    candidate: torch.nn.Module,
    training_loss: float,
    candidate_metrics: dict[str, float],
    serving_metrics: dict[str, float] | None,
    config: GateConfig = GateConfig(),
    serving_loss: float | None = None,
) -> Verdict:
    """Whether the candidate may replace the serving model, and why.

    ``serving_loss`` is the serving model's prequential cross-entropy on the same batch: a
    candidate whose training loss is far above it has diverged, even if its ranking survived.
    """
    if not math.isfinite(training_loss):
        return Verdict(False, f"training loss is {training_loss}: the run diverged")
    if (
        serving_loss is not None
        and math.isfinite(serving_loss)
        and training_loss > config.max_loss_ratio * serving_loss
    ):
        return Verdict(
            False,
            f"training loss {training_loss:.4g} > {config.max_loss_ratio}x "
            f"the serving model's {serving_loss:.4g}: the run diverged",
        )
    if not all(torch.isfinite(p).all() for p in candidate.parameters()):
        return Verdict(False, "candidate has non-finite weights")
    score = candidate_metrics.get(config.metric, 0.0)
    if serving_metrics is None:
        return Verdict(True, "first model: nothing to compare with", score)
    baseline = serving_metrics.get(config.metric, 0.0)
    n = int(candidate_metrics.get("n", 0))
    if n < config.min_events:
        return Verdict(
            True,
            f"holdout has {n} events < {config.min_events}: passed on finiteness",
            score,
            baseline,
        )
    floor = baseline * (1 - config.tolerance) - config.z * _standard_error(baseline, n)
    rule = f"serving {baseline:.4f} - {config.tolerance:.0%} - {config.z:g} s.e., n={n}"
    if score < floor:
        return Verdict(
            False, f"{config.metric} {score:.4f} < {floor:.4f} ({rule})", score, baseline
        )
    return Verdict(True, f"{config.metric} {score:.4f} >= {floor:.4f} ({rule})", score, baseline)


def _standard_error(mean: float, n: int) -> float:
    """Standard error of the difference of two means of per-event scores in [0, 1].

    A [0, 1] variable with mean m has variance at most m(1 - m); two estimates on n events
    each. Small holdouts are noisy: without this margin the gate rejects candidates on chance.
    """
    return math.sqrt(2 * mean * (1 - mean) / max(n, 1))
