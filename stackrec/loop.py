"""One continual cycle's learning sequence, in process: the order ``flows/cycle.py`` runs.

    prepare -> prequential (serving model) -> observe, decide, maybe stack
    -> imprint new items -> fine-tune (loss on the batch's events, plus replay)
    -> gate (candidate vs serving on the holdout) -> top up on the holdout if promoted
    -> cool down a branch to serve (if configured; the next cycle continues the trunk)

The flow runs ``learn_cycle`` as one task between its edges (Kafka, registry, Redis); a
benchmark or a notebook calls it directly. The serving learner is never changed: the candidate
is a deep copy, so a rejected cycle leaves the caller with the model it had.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import pyarrow as pa

from stackrec import continual
from stackrec.continual import CycleConfig, CycleData, Learner
from stackrec.gate import GateConfig, Verdict, judge
from stackrec.growth import Decision, make_policy
from stackrec.train import TrainResult


@dataclass(frozen=True)
class LoopConfig:
    cycle: CycleConfig = field(default_factory=CycleConfig)
    # data_volume | fitted | none. At the cycle's defaults data_volume beat no growth on all of
    # ML-1M in every seed and tied on Beauty; fitted kept ML-1M at depth 2 and scored 2-3%
    # lower there (README: which growth policy).
    growth_policy: str = "data_volume"
    growth_factor: float = 2.0  # data_volume: stack when the data grew this many times
    max_depth: int = 16
    stack_operator: str = "adjacent"
    stack_mode: str = "function_preserving"
    gate: GateConfig = field(default_factory=GateConfig)

    def __post_init__(self) -> None:
        if self.growth_policy not in ("data_volume", "fitted", "none"):
            raise ValueError(f"growth_policy={self.growth_policy!r}: data_volume|fitted|none")


@dataclass
class CycleOutcome:
    candidate: Learner  # trained this cycle; kept in the registry whatever the verdict
    serving: Learner  # what the caller had, unchanged
    data: CycleData
    prequential: dict[str, dict[str, float]]
    growth: dict
    verdict: Verdict
    holdout: dict[str, dict[str, float]]  # the gate's inputs: "candidate" and "serving"
    imprinted: int = 0  # new items whose vectors started from their contexts
    # each training phase that ran, in order: fine_tune, top_up, cool_down
    training: dict[str, TrainResult] = field(default_factory=dict)
    stages_s: dict[str, float] = field(default_factory=dict)

    @property
    def promoted(self) -> bool:
        return self.verdict.promote

    @property
    def learner(self) -> Learner:
        """The model to serve after this cycle: the candidate if promoted."""
        return self.candidate if self.promoted else self.serving

    @property
    def train_seconds(self) -> float:
        return sum(r.seconds for r in self.training.values())

    @property
    def train_targets(self) -> int:
        return sum(r.targets for r in self.training.values())


def decide(learner: Learner, config: LoopConfig) -> Decision:
    """The growth policy's decision on the learner's history (observed this cycle)."""
    if config.growth_policy == "none":
        return Decision(False, "none", "growth disabled")
    options = {"factor": config.growth_factor} if config.growth_policy == "data_volume" else {}
    return make_policy(config.growth_policy, config.max_depth, **options).decide(
        learner.observations
    )


def learn_cycle(
    serving: Learner,
    history: pa.Table,
    fresh: pa.Table,
    config: LoopConfig = LoopConfig(),
    on_stage: Callable[[str, float], None] | None = None,
) -> CycleOutcome:
    """Evaluate ``serving`` on ``fresh``, train a candidate on it, and judge the candidate."""
    stages: dict[str, float] = {}
    clock = _clock(stages, on_stage)
    learner = copy.deepcopy(serving)
    first = serving.parent is None and not serving.observations
    if first:  # a cold start: a fresh model, not one to fine-tune
        config = replace(config, cycle=config.cycle.cold_start())
    with clock("sequences"):
        data = continual.prepare(learner, history, fresh, config.cycle.holdout_share)
    with clock("evaluate"):
        quality = continual.prequential(learner, data)
        serving_holdout = quality["holdout"]  # the same model on the same events
    with clock("stack"):
        continual.continue_trunk(learner)
        continual.observe(learner, data, quality)
        decision = decide(learner, config)
        event = continual.grow(learner, decision, config.stack_operator, config.stack_mode)
    with clock("train"):
        imprinted = continual.imprint_new_items(learner, data) if config.cycle.imprint else 0
        max_len = learner.model.config.max_len
        windows, counted = continual.training_windows(data, config.cycle, max_len)
        tuned = continual.fine_tune(learner, windows, config.cycle, counted)
    with clock("gate"):
        candidate = continual.holdout_metrics(learner.model, data)
        verdict = judge(
            learner.model,
            tuned.mean_loss if tuned else 0.0,
            candidate,
            None if first else serving_holdout,
            config.gate,
            serving_loss=None if first else quality["all"]["loss"],
        )
        topped = continual.top_up(learner, data, config.cycle) if verdict.promote else None
        if topped is not None and not math.isfinite(topped.mean_loss):
            verdict = Verdict(False, f"top-up on the holdout diverged: {topped.mean_loss}")
    cooled = None
    if verdict.promote and config.cycle.anneal_share > 0:
        with clock("cool_down"):
            cooled = continual.cool_down(learner, data, config.cycle, tuned.steps if tuned else 0)
        if cooled is not None and not math.isfinite(cooled.mean_loss):  # the gate judged the trunk
            verdict = Verdict(False, f"cool-down of the candidate diverged: {cooled.mean_loss}")
    return CycleOutcome(
        candidate=learner,
        serving=serving,
        data=data,
        prequential=quality,
        growth={**decision.as_dict(), "event": event},
        verdict=verdict,
        holdout={"candidate": candidate, "serving": serving_holdout},
        imprinted=imprinted,
        training={
            phase: result
            for phase, result in (("fine_tune", tuned), ("top_up", topped), ("cool_down", cooled))
            if result is not None
        },
        stages_s=stages,
    )


def with_steps(config: LoopConfig, steps: int) -> LoopConfig:
    """The same loop with another per-cycle step budget."""
    return replace(config, cycle=replace(config.cycle, train_steps=steps))


def _clock(into: dict[str, float], on_stage: Callable[[str, float], None] | None):
    @contextmanager
    def stage(name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - started
            into[name] = round(into.get(name, 0.0) + seconds, 4)
            if on_stage is not None:
                on_stage(name, seconds)

    return stage
