"""Progressive stacking within one training run: shallow first, deeper on a schedule.

StackRec's training-from-scratch scenario: a shallow model learns fast, then is doubled (its
blocks copied by a stacking operator) and trained on, so the deep model starts from a good
point instead of a random one. A schedule of depths, e.g. ``(2, 4, 8)``, gives the depth of
each stage; every stage trains ``epochs_per_stage`` epochs and is scored on validation, and the
final model is the last stage's (the scheduled depth), not the best of all stages, because the
caller asked for that depth. Transfer uses the same loop on the target domain.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from torch import nn

from stackrec.stacking import StackingError
from stackrec.train import TrainConfig, Trainer


class ScheduleError(ValueError):
    """A depth schedule that stacking cannot follow (not increasing, or not reachable)."""


@dataclass(frozen=True)
class ProgressiveConfig:
    schedule: tuple[int, ...] = (2, 4, 8)  # depth of each stage, each reached by stacking
    epochs_per_stage: float = 2.0  # passes over the windows per stage
    operator: str = "adjacent"
    mode: str = "function_preserving"

    def __post_init__(self) -> None:
        depths = self.schedule
        if not depths or any(d < 1 for d in depths):
            raise ScheduleError(f"schedule {depths}: depths must be positive and non-empty")
        if any(b <= a for a, b in itertools.pairwise(depths)):
            raise ScheduleError(f"schedule {depths}: depths must increase")
        if self.epochs_per_stage <= 0:
            raise ScheduleError(f"epochs_per_stage={self.epochs_per_stage} must be positive")


@dataclass
class StageRecord:
    stage: int  # 1-based
    depth: int
    loss: float  # mean training loss of the stage
    valid: dict[str, float]  # validation metrics after the stage
    seconds: float  # training only
    steps: int
    targets: int


@dataclass
class ProgressiveResult:
    model: nn.Module  # on the CPU, at the schedule's last depth
    optimizer_state: dict
    stages: list[StageRecord]

    @property
    def train_seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    @property
    def targets(self) -> int:
        return sum(s.targets for s in self.stages)

    def as_dicts(self) -> list[dict]:
        return [asdict(s) for s in self.stages]


def parse_schedule(text: str) -> tuple[int, ...]:
    """``"2,4,8"`` -> ``(2, 4, 8)``; ``ScheduleError`` naming the text otherwise."""
    try:
        depths = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ScheduleError(f"schedule {text!r}: expected depths like '2,4,8'") from None
    return ProgressiveConfig(schedule=depths).schedule


def grow_to(model: nn.Module, depth: int, operator: str, mode: str) -> nn.Module:
    """Stack ``model`` until it has ``depth`` blocks; ``ScheduleError`` if stacking skips it."""
    while model.depth < depth:
        model = model.stack(operator=operator, mode=mode)
    if model.depth != depth:
        raise ScheduleError(
            f"stacking with {operator!r} reaches depth {model.depth}, not {depth}: "
            "each depth of the schedule must be reachable by doubling"
        )
    return model


def train_progressively(
    model: nn.Module,
    windows,
    train: TrainConfig,
    config: ProgressiveConfig,
    validate: Callable[[nn.Module], dict[str, float]],
    optimizer_state: dict | None = None,
    device: str | None = None,
    on_step: Callable[[int, float], None] | None = None,
    on_stage: Callable[[StageRecord], None] | None = None,
) -> ProgressiveResult:
    """Train ``model`` stage by stage, growing it to each depth of the schedule first.

    ``model`` must not be deeper than the first stage. The optimizer state carries across
    function-preserving growth (each copied block inherits its source's moments) and restarts
    after faithful growth, as the reference recipe does.
    """
    if model.depth > config.schedule[0]:
        raise ScheduleError(
            f"model has depth {model.depth}, deeper than the schedule's start {config.schedule[0]}"
        )
    stages: list[StageRecord] = []
    state = optimizer_state
    for stage, depth in enumerate(config.schedule, start=1):
        try:
            model = grow_to(model, depth, config.operator, config.mode)
        except StackingError as error:
            raise ScheduleError(str(error)) from None
        trainer = Trainer(model, train, optimizer_state=state, device=device)
        began = time.perf_counter()
        result = trainer.fit(windows, epochs=config.epochs_per_stage, on_step=on_step)
        seconds = time.perf_counter() - began
        model, state = trainer.model, trainer.optimizer_state()
        record = StageRecord(
            stage, depth, result.mean_loss, validate(model), seconds, result.steps, result.targets
        )
        stages.append(record)
        if on_stage is not None:
            on_stage(record)
    return ProgressiveResult(model.cpu(), state, stages)
