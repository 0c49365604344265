"""Training a sequential model on pre-built windows: AdamW, clipping, AMP, exact resume.

The loop only slices a tensor of windows (see ``Sequences.windows``), gathers the positions that
carry a target and runs the loss; there is no per-sample Python. All the state needed to carry
on exactly where a run stopped (optimizer moments, step counters, RNG streams) travels in
``optimizer_state()``; it also carries over vocabulary growth (new rows start with zero moments)
and function-preserving stacking (each copied block inherits its source block's moments).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from stackrec.losses import full_cross_entropy, sampled_softmax
from stackrec.stacking import source_name

LOSSES = ("full", "sampled", "auto")
LR_SCHEDULES = ("constant", "cosine")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 1e-3
    # "cosine": each fit() anneals from lr down to lr * lr_floor over its steps, so a bounded
    # fine-tuning cycle ends at a settled model rather than wherever a high constant rate left it
    lr_schedule: str = "constant"
    lr_floor: float = 0.1
    weight_decay: float = 0.0  # AdamW's decoupled decay, on every parameter
    batch_size: int = 128  # windows per step
    max_grad_norm: float | None = 5.0  # None: no clipping
    seed: int = 0  # shuffling, dropout and negative sampling
    loss: str = "full"  # "full" cross-entropy, "sampled" softmax with log-Q correction, "auto"
    sampled_above: int = 20_000  # auto: sampled softmax on a CPU for catalogues larger than this
    n_negatives: int = 1024  # sampled softmax: negatives shared by a batch
    sampling: str = "popularity"  # sampled softmax proposal: "popularity" or "uniform"
    amp: bool = True  # bfloat16 autocast where the device supports it (CUDA)

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r}; expected one of {LOSSES}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule={self.lr_schedule!r}; expected one of {LR_SCHEDULES}")
        if not 0.0 <= self.lr_floor <= 1.0:
            raise ValueError(f"lr_floor={self.lr_floor} must lie in [0, 1]")
        if self.sampling not in ("popularity", "uniform"):
            raise ValueError(f"sampling={self.sampling!r}; expected 'popularity' or 'uniform'")
        if self.batch_size < 1 or self.n_negatives < 1 or self.lr <= 0:
            raise ValueError(f"batch_size, n_negatives and lr must be positive: {self}")

    def loss_for(self, n_items: int, device: str = "cpu") -> str:
        """Full cross-entropy costs ``n_items`` dot products per target. On a CPU a 25k-item
        catalogue makes it most of a cycle's time (Beauty's 10k-event cycle on 2 cores: 78 s
        full, 23 s with 2,048 sampled negatives, at a cost in NDCG@10), so there "auto"
        samples past ``sampled_above`` items; a GPU does the full softmax at that size."""
        if self.loss != "auto":
            return self.loss
        return "sampled" if device == "cpu" and n_items > self.sampled_above else "full"


@dataclass
class TrainResult:
    mean_loss: float  # over targets, not batches
    steps: int
    targets: int  # next-item predictions that carried a loss
    seconds: float


class NoTargetsError(ValueError):
    """Windows without a single next-item target: every history is empty or one item long."""


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig = TrainConfig(),
        optimizer_state: dict | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        self.config = config
        self.device = torch.device(device or default_device())
        self.model = model.to(self.device)
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.step = 0  # optimizer steps ever taken
        self.position = 0  # steps into the current fit() schedule; 0 when it completed
        self.schedule = 0  # fit() schedules completed, so each gets fresh shuffles
        self.sampler = torch.Generator(device=self.device)
        if optimizer_state is None:
            torch.manual_seed(config.seed)
            self.sampler.manual_seed(config.seed)
        else:
            self._restore(optimizer_state)

    # -- training -------------------------------------------------------------------------
    def fit(
        self,
        windows: torch.Tensor,
        max_steps: int | None = None,
        epochs: float = 1.0,
        on_step: Callable[[int, float], None] | None = None,
        counted: torch.Tensor | None = None,
    ) -> TrainResult:
        """Train on ``windows`` ``[N, L + 1]`` for ``epochs`` passes, reshuffled each pass.

        ``counted`` (``[N, L]`` bool) limits the loss to those target positions; the others
        are context only (a continual cycle learns the batch's new events, not history again).
        With ``max_steps`` the run may stop early; the next ``fit`` on the same windows (also
        after a round trip through ``optimizer_state()``) continues the same schedule, so the
        loss curve equals an uninterrupted run.
        """
        n_targets_all = int(target_mask(windows, counted).sum())
        if n_targets_all == 0:
            raise NoTargetsError(f"{len(windows)} windows hold no next-item target")
        n_batches = math.ceil(len(windows) / self.config.batch_size)
        total = math.ceil(epochs * n_batches)
        stop = total if max_steps is None else min(total, self.position + max_steps)
        sampled = self.config.loss_for(self.model.config.n_items, self.device.type) == "sampled"
        log_q = self._log_q(windows) if sampled else None
        self.model.train()
        loss_sum, n_targets, steps, began = 0.0, 0, 0, time.perf_counter()
        permutation, perm_epoch = None, -1
        for position in range(self.position, stop):
            epoch, batch_index = divmod(position, n_batches)
            if epoch != perm_epoch:
                permutation, perm_epoch = self._permutation(len(windows), epoch), epoch
            rows = permutation[batch_index * self.config.batch_size :][: self.config.batch_size]
            batch = windows[rows]
            mask = target_mask(batch, None if counted is None else counted[rows])
            count = int(mask.sum())
            self._set_rate(position, total)
            loss = self._learn(batch.to(self.device), mask.to(self.device), log_q) if count else 0.0
            loss_sum, n_targets, steps = loss_sum + loss * count, n_targets + count, steps + 1
            self.position = position + 1
            if on_step is not None:
                on_step(self.step, loss)
        if self.position >= total:
            self.position, self.schedule = 0, self.schedule + 1
        seconds = time.perf_counter() - began
        return TrainResult(loss_sum / max(n_targets, 1), steps, n_targets, seconds)

    def _learn(self, batch: torch.Tensor, mask: torch.Tensor, log_q: torch.Tensor | None) -> float:
        inputs, targets = batch[:, :-1], batch[:, 1:]
        with self._autocast():
            hidden = self.model(inputs)[mask]  # [T, D]: only positions that carry a target
            loss = self._loss(hidden, targets[mask], log_q)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.max_grad_norm:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.step += 1
        return float(loss.detach())

    def _set_rate(self, position: int, total: int) -> None:
        """The learning rate at step ``position`` of a ``total``-step fit() schedule: a function
        of the position alone, so a resumed schedule follows the uninterrupted one."""
        rate = self.config.lr
        if self.config.lr_schedule == "cosine" and total > 1:
            floor = rate * self.config.lr_floor
            rate = floor + (rate - floor) * 0.5 * (1.0 + math.cos(math.pi * position / (total - 1)))
        for group in self.optimizer.param_groups:
            group["lr"] = rate

    def _loss(self, hidden: torch.Tensor, targets: torch.Tensor, log_q: torch.Tensor | None):
        vectors = self.model.item_vectors()
        if log_q is None:
            return full_cross_entropy(hidden, vectors, targets)
        negatives = torch.multinomial(
            log_q.exp(), self.config.n_negatives, replacement=True, generator=self.sampler
        )
        return sampled_softmax(hidden, vectors, targets, negatives, log_q)

    def _log_q(self, windows: torch.Tensor) -> torch.Tensor:
        """``log(S * q)`` per item, ``q`` uniform or proportional to target counts (+1)."""
        n_items = self.model.config.n_items
        if self.config.sampling == "uniform":
            q = torch.ones(n_items, dtype=torch.float64)
        else:
            targets = windows[:, 1:][target_mask(windows)]
            q = torch.bincount(targets, minlength=n_items).double() + 1.0
        q[0] = 0.0
        q = q / q.sum()
        return torch.log(q * self.config.n_negatives).float().to(self.device)

    def _permutation(self, n: int, epoch: int) -> torch.Tensor:
        seed = np.random.SeedSequence([self.config.seed, self.schedule, epoch]).generate_state(1)
        return torch.randperm(n, generator=torch.Generator().manual_seed(int(seed[0])))

    def _autocast(self):
        if self.config.amp and self.device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    # -- state ----------------------------------------------------------------------------
    def optimizer_state(self) -> dict:
        """Everything needed to resume: AdamW moments by parameter name, counters, RNG streams."""
        cuda_rng = torch.cuda.get_rng_state() if self.device.type == "cuda" else None
        return {
            "optimizer": self.optimizer.state_dict(),
            "param_names": [name for name, _ in self.model.named_parameters()],
            "lineage_len": len(self.model.config.lineage),
            "trainer": {
                "step": self.step,
                "position": self.position,
                "schedule": self.schedule,
                "cpu_rng": torch.get_rng_state(),
                "cuda_rng": cuda_rng,
                "sampler_rng": self.sampler.get_state(),
                "sampler_device": self.device.type,
            },
        }

    def _restore(self, state: dict) -> None:
        trainer = state["trainer"]
        self.step, self.position = int(trainer["step"]), int(trainer["position"])
        self.schedule = int(trainer["schedule"])
        torch.set_rng_state(trainer["cpu_rng"])
        if trainer["cuda_rng"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(trainer["cuda_rng"])
        if trainer["sampler_device"] == self.device.type:
            self.sampler.set_state(trainer["sampler_rng"])
        sources = self._parameter_sources(state)
        if sources:
            self.optimizer.load_state_dict(
                carry_adamw_state(state, sources, self.model, self.optimizer)
            )

    def _parameter_sources(self, state: dict) -> dict[str, str]:
        """New parameter name -> saved name, following growth that happened since the save."""
        names = [name for name, _ in self.model.named_parameters()]
        growth = self.model.config.lineage[int(state.get("lineage_len", 0)) :]
        if not growth:
            return {name: name for name in names}
        if len(growth) > 1 or growth[0]["mode"] == "faithful":
            return {}  # the reference recipe resets the optimizer after growth
        return {n: s for n in names if (s := source_name(n, growth[0]["sources"])) is not None}


def target_mask(windows: torch.Tensor, counted: torch.Tensor | None = None) -> torch.Tensor:
    """``[N, L]`` True where a window's input and target are both real items (and, with
    ``counted``, the position is one of those)."""
    mask = (windows[:, :-1] != 0) & (windows[:, 1:] != 0)
    return mask if counted is None else mask & counted


def carry_adamw_state(
    saved: dict, sources: dict[str, str], model: nn.Module, optimizer: torch.optim.Optimizer
) -> dict:
    """An AdamW state dict for ``model`` built from ``saved``'s moments, matched by name.

    Moments whose shape matches are copied; an item table that grew gets its old rows' moments
    and zeros for the new rows; anything else starts fresh. Hyperparameters come from
    ``optimizer`` (the current config), not from the save.
    """
    saved_index = {name: i for i, name in enumerate(saved["param_names"])}
    saved_state = saved["optimizer"]["state"]
    state = {}
    for index, (name, param) in enumerate(model.named_parameters()):
        old = saved_state.get(saved_index.get(sources.get(name, ""), -1))
        if old is None:
            continue
        moved = {key: _fit_rows(value, param) for key, value in old.items()}
        if all(value is not None for value in moved.values()):
            state[index] = moved
    return {"state": state, "param_groups": optimizer.state_dict()["param_groups"]}


def _fit_rows(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor | None:
    """``value`` reshaped to ``param`` by appending zero rows, or None if that cannot work."""
    if value.dim() == 0 or value.shape == param.shape:
        return value.clone()
    if value.shape[1:] != param.shape[1:] or value.shape[0] > param.shape[0]:
        return None
    grown = value.new_zeros(param.shape)
    grown[: value.shape[0]] = value
    return grown


@dataclass(frozen=True)
class Schedule:
    """Epochs with validation after each: early stopping and StackRec's progressive growth."""

    epochs: int = 20  # at most
    patience: int | None = 5  # stop after this many epochs without a better validation score
    stack_at: tuple[int, ...] = ()  # grow (double the depth) after these epochs, 1-based
    stack_operator: str = "adjacent"
    stack_mode: str = "function_preserving"
    max_seconds: float | None = None  # stop after the epoch in which training time passes this

    def __post_init__(self) -> None:
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ValueError(f"max_seconds={self.max_seconds} must be positive")
        if self.epochs < 1:
            raise ValueError(f"epochs={self.epochs} must be at least 1")
        late = [e for e in self.stack_at if not 1 <= e < self.epochs]
        if late:
            raise ValueError(f"stack_at epochs {late} must lie in [1, epochs={self.epochs})")


@dataclass
class EpochRecord:
    epoch: int
    depth: int
    loss: float
    score: float  # validation score, higher is better
    seconds: float  # training only, without validation
    steps: int
    targets: int


@dataclass
class ScheduleResult:
    model: nn.Module  # the best model by validation score (on the CPU)
    best_epoch: int
    history: list[EpochRecord]
    optimizer_state: dict  # the trainer's state when the best model was taken, to go on

    @property
    def train_seconds(self) -> float:
        return sum(r.seconds for r in self.history)

    @property
    def targets(self) -> int:
        return sum(r.targets for r in self.history)


def train_with_validation(
    model: nn.Module,
    windows: torch.Tensor,
    config: TrainConfig,
    schedule: Schedule,
    validate: Callable[[nn.Module], float],
    device: str | torch.device | None = None,
    on_step: Callable[[int, float], None] | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    counted: torch.Tensor | None = None,
) -> ScheduleResult:
    """Train epoch by epoch, score with ``validate`` after each, keep the best model.

    Growth resets the patience counter (a deeper model needs a few epochs to pay off) and, in
    function-preserving mode, carries the optimizer state into the grown model. The learning
    rate follows ``config.lr_schedule`` over all ``schedule.epochs``, growth or not.
    ``counted`` limits the loss to those targets, as in ``Trainer.fit`` (overlapping windows).
    """
    trainer = Trainer(model, config, device=device)
    n_batches = math.ceil(len(windows) / config.batch_size)
    history: list[EpochRecord] = []
    best, best_state, best_epoch, best_score, waited = None, {}, 0, -math.inf, 0
    for epoch in range(1, schedule.epochs + 1):
        # one epoch of a single ``schedule.epochs``-long fit, so a cosine rate spans the run
        result = trainer.fit(
            windows, epochs=schedule.epochs, max_steps=n_batches, on_step=on_step, counted=counted
        )
        score = float(validate(trainer.model))
        depth = trainer.model.depth
        record = EpochRecord(epoch, depth, result.mean_loss, score, result.seconds, result.steps,
                             result.targets)  # fmt: skip
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        waited += 1
        if score > best_score:
            best = copy.deepcopy(trainer.model).cpu()
            best_state = _as_finished(trainer.optimizer_state())
            best_epoch, best_score, waited = epoch, score, 0
        if epoch in schedule.stack_at:
            grown = trainer.model.stack(schedule.stack_operator, schedule.stack_mode)
            trainer, waited = Trainer(grown, config, trainer.optimizer_state(), device), 0
        elif schedule.patience is not None and waited >= schedule.patience:
            break
        spent = sum(r.seconds for r in history)
        if schedule.max_seconds is not None and spent >= schedule.max_seconds:
            break
    return ScheduleResult(best, best_epoch, history, best_state)


def _as_finished(state: dict) -> dict:
    """A copy of a mid-run trainer state (moments change in place) marked as having finished
    its schedule, so whoever goes on from the best epoch starts a fit of their own."""
    state = copy.deepcopy(state)
    state["trainer"]["position"] = 0
    state["trainer"]["schedule"] += 1
    return state
