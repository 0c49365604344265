"""Growth policies: when has the data grown enough to pay for a deeper model?

Two policies, both pure functions of the model's history (one ``Observation`` per cycle):

- ``DataVolumePolicy``: stack when the events seen since the last growth exceed ``factor``
  times the events the current depth had seen when it was reached (StackRec's continual
  scenario: data doubles, depth doubles).
- ``FittedPolicy``: fit the prequential loss against data D and block parameters N over past
  cycles, scaling-law style, ``L = E + A * N**-alpha + B * D**-beta`` with fixed exponents (so
  the fit is linear least squares in E, A, B), and stack when the compute-optimal model size
  for the compute spent so far, ``N_opt(C)`` with ``C = 6 N D``, is closer to the doubled depth
  than to the current one. Until two depths have been observed, A is not identifiable; the
  policy then stacks when the loss curve at this depth has flattened (doubling the data is
  predicted to gain less than ``min_gain`` of the loss): more data alone no longer pays.

Every decision carries its reason and inputs, for the log and the metrics.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(frozen=True)
class Observation:
    events_seen: int  # D: events the model has trained on in total
    block_parameters: int  # N: parameters in residual blocks (embeddings excluded)
    depth: int
    loss: float  # prequential cross-entropy on the cycle's new events, before training


@dataclass(frozen=True)
class Decision:
    grow: bool
    policy: str
    reason: str
    inputs: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DataVolumePolicy:
    factor: float = 2.0  # stack when data seen since the last growth reaches factor x
    max_depth: int = 16
    min_events: int = 1_000  # never grow a model that has seen less than this

    def decide(self, history: list[Observation]) -> Decision:
        now = history[-1]
        if now.depth * 2 > self.max_depth:
            return Decision(False, "data_volume", f"depth {now.depth} at max {self.max_depth}")
        at_depth = [o for o in history if o.depth == now.depth]
        reached_with = at_depth[0].events_seen
        inputs = {
            "events_seen": now.events_seen,
            "events_at_this_depth": reached_with,
            "factor": self.factor,
        }
        if now.events_seen < self.min_events:
            return Decision(False, "data_volume", f"only {now.events_seen} events seen", inputs)
        if now.events_seen >= self.factor * max(reached_with, 1):
            ratio = now.events_seen / max(reached_with, 1)
            return Decision(
                True,
                "data_volume",
                f"data grew {ratio:.1f}x since depth {now.depth} was reached (>= {self.factor}x)",
                inputs,
            )
        return Decision(
            False,
            "data_volume",
            f"data grew {now.events_seen / max(reached_with, 1):.2f}x (< {self.factor}x)",
            inputs,
        )


@dataclass(frozen=True)
class FittedPolicy:
    alpha: float = 0.34  # parameter exponent (Chinchilla's fit; configurable)
    beta: float = 0.28  # data exponent
    min_gain: float = 0.01  # flattening rule: relative loss gain of doubling D at this depth
    min_observations: int = 3
    max_depth: int = 16

    def decide(self, history: list[Observation]) -> Decision:
        now = history[-1]
        usable = [o for o in history if math.isfinite(o.loss) and o.events_seen > 0]
        if now.depth * 2 > self.max_depth:
            return Decision(False, "fitted", f"depth {now.depth} at max {self.max_depth}")
        if len(usable) < self.min_observations:
            return Decision(
                False,
                "fitted",
                f"{len(usable)} observations < {self.min_observations} needed for a fit",
            )
        if len({o.block_parameters for o in usable}) >= 2:
            return self._compute_optimal(usable, now)
        return self._flattening(usable, now)

    def _compute_optimal(self, usable: list[Observation], now: Observation) -> Decision:
        n = np.array([o.block_parameters for o in usable], dtype=float)
        d = np.array([o.events_seen for o in usable], dtype=float)
        loss = np.array([o.loss for o in usable])
        design = np.stack([np.ones_like(n), n**-self.alpha, d**-self.beta], axis=1)
        e, a, b = np.linalg.lstsq(design, loss, rcond=None)[0]
        inputs = {
            "E": float(e),
            "A": float(a),
            "B": float(b),
            "observations": len(usable),
            "N": now.block_parameters,
            "D": now.events_seen,
        }
        if a <= 0 or b <= 0:
            return Decision(
                False,
                "fitted",
                f"fit gives no benefit from size or data (A={a:.3g}, B={b:.3g})",
                inputs,
            )
        # minimise E + A N^-alpha + B D^-beta subject to 6 N D = C
        compute = 6.0 * now.block_parameters * now.events_seen
        g = (self.alpha * a / (self.beta * b)) ** (1 / (self.alpha + self.beta))
        n_opt = g * (compute / 6.0) ** (self.beta / (self.alpha + self.beta))
        inputs |= {"compute": compute, "N_opt": float(n_opt)}
        grow = n_opt > math.sqrt(2.0) * now.block_parameters  # nearer 2N than N in log scale
        verdict = "deeper model is compute-optimal" if grow else "current size is compute-optimal"
        return Decision(
            bool(grow),
            "fitted",
            f"{verdict}: N_opt {n_opt:.3g} vs N {now.block_parameters}",
            inputs,
        )

    def _flattening(self, usable: list[Observation], now: Observation) -> Decision:
        d = np.array([o.events_seen for o in usable], dtype=float)
        loss = np.array([o.loss for o in usable])
        design = np.stack([np.ones_like(d), d**-self.beta], axis=1)
        e, b = np.linalg.lstsq(design, loss, rcond=None)[0]
        gain = b * now.events_seen**-self.beta * (1 - 2**-self.beta)
        current = e + b * now.events_seen**-self.beta
        relative = gain / max(abs(current), 1e-9)
        inputs = {
            "E": float(e),
            "B": float(b),
            "predicted_gain_of_2x_data": float(gain),
            "relative_gain": float(relative),
            "observations": len(usable),
        }
        if b <= 0:  # a rising curve is drift, not a plateau: it says nothing about capacity
            return Decision(
                False,
                "fitted",
                f"loss does not fall with data at depth {now.depth} (B={b:.3g}): no plateau",
                inputs,
            )
        if relative < self.min_gain:
            return Decision(
                True,
                "fitted",
                f"loss curve flat at depth {now.depth}: 2x data "
                f"gains {relative:.2%} < {self.min_gain:.0%}",
                inputs,
            )
        return Decision(
            False,
            "fitted",
            f"data still pays at depth {now.depth}: 2x data gains {relative:.2%}",
            inputs,
        )


POLICIES = {"data_volume": DataVolumePolicy, "fitted": FittedPolicy}


def make_policy(name: str, max_depth: int, **options: float) -> DataVolumePolicy | FittedPolicy:
    """A policy by name; ``none`` is handled by the caller (never grow)."""
    if name not in POLICIES:
        raise ValueError(f"unknown growth policy {name!r}; expected one of {sorted(POLICIES)}")
    return POLICIES[name](max_depth=max_depth, **options)
