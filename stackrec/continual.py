"""One continual-learning cycle as library functions: the flow calls them in order.

    resume -> prepare (grow vocabulary, build sequences) -> prequential -> fine_tune -> snapshot

Everything here is tensors, Arrow tables and files; the flow records the figures it returns as
metrics and moves data between the edges. Prequential evaluation is test-then-train: the model
that serves is scored on the new events *before* it learns from them, which is the only honest
online quality estimate.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from torch import nn

from stackrec.checkpoint import from_payload, new_model, to_payload, trunk_from_payload
from stackrec.evaluate import rank_rows, scored_batches
from stackrec.growth import Decision, Observation
from stackrec.ranking import next_item_metrics
from stackrec.recommend import top_k
from stackrec.registry import Registry
from stackrec.sequences import Sequences
from stackrec.train import TrainConfig, Trainer, TrainResult, target_mask
from stackrec.vocab import Vocabulary


@dataclass(frozen=True)
class CycleConfig:
    kind: str = "nextitnet"  # model created from scratch: nextitnet | sasrec
    dim: int = 64  # width of a model created from scratch
    blocks: int = 2  # depth of a model created from scratch
    max_len: int = 50  # context length
    # The defaults are the best measured on real data (benchmarks/continual.md: on all of
    # ML-1M, 98.6% of a retrain's NDCG@10 at a fifth of its compute): few passes over much
    # replay, served through an annealed branch, the trunk at a rate hotter than a retrain's.
    train_steps: int = 1_000  # at most this many fine-tuning steps per cycle (bounds its time)
    train_epochs: float | None = 2.0  # passes over the cycle's windows; None: train_steps
    # A cold start (no version serves yet) trains a fresh model: more passes, at the rate of
    # training from scratch, since it has everything to learn and nothing to replay.
    cold_start_epochs: float = 8.0
    imprint: bool = True  # new items start from the contexts they followed (imprint_new_items)
    batch_size: int = 128
    # A cycle's fine-tuning rate. With the cool-down branch the trunk can run hotter than a
    # retrain, since what is served is annealed: on ML-1M 3e-2 beat 1e-2 and 1.5e-2.
    lr: float = 3e-2
    # Training from scratch (bootstrap, transfer, a cold start): 1e-2 was a retrain's best on
    # ML-1M (6e-3 about the same, 3e-3 far lower).
    scratch_lr: float = 1e-2
    # "cosine" anneals to lr * 0.1 over each cycle's steps. It pays for a retrain from scratch
    # (ML-1M, last windows: 0.1386 against 0.1295 constant), not for a cycle (0.1182 against
    # 0.1202; benchmarks/continual.py, one seed each): the cool-down branch anneals instead.
    lr_schedule: str = "constant"
    loss: str = "auto"  # full | sampled | auto: on a CPU, sampled past sampled_above items
    sampled_above: int = 20_000
    # Sampled softmax's popularity-sampled negatives per step. Beauty (25,682 items, 2 cores):
    # 1,024 / 2,048 / 4,096 gave a 10k-event cycle of 20 / 23 / 30 s and NDCG@10 on the
    # continual benchmark's last windows of 0.0085 / 0.0107 / 0.0094 (full softmax: 0.0116).
    n_negatives: int = 2048
    replay_ratio: float = 5.0  # replayed windows per new window, against forgetting
    replay_half_life: float = 0.25  # recency weighting: weight halves per this share of users
    holdout_share: float = 0.1  # latest share of the batch held out for the gate
    # A cool-down branch (cool_down): steps as a share of the cycle's fine-tuning steps, on
    # windows drawn from the whole log, the rate falling from lr to 0. The branch is served;
    # the next cycle continues the constant-rate trunk. 0: off.
    anneal_share: float = 0.6
    # Share of the cool-down's windows drawn from the batch's windows (those with its events)
    # rather than uniformly from the log, so the batch's rare new items are not annealed away:
    # a fifth, 0.15 and a tenth scored a little higher but lost a window's new items in some
    # seed (benchmarks/continual.md).
    anneal_fresh_share: float = 0.25
    top_k: int = 50  # recommendations published per user
    publish_users: int = 100_000  # top-K for the most recently active users (_recent_users)
    popular_k: int = 100  # fallback list for users the version does not know
    seed: int = 0

    def train_config(self) -> TrainConfig:
        """The trainer's settings for a cycle's fine-tuning."""
        return TrainConfig(
            lr=self.lr,
            lr_schedule=self.lr_schedule,
            batch_size=self.batch_size,
            seed=self.seed,
            loss=self.loss,
            sampled_above=self.sampled_above,
            n_negatives=self.n_negatives,
        )

    def scratch_train_config(self) -> TrainConfig:
        """The trainer's settings for a model trained from scratch (bootstrap, transfer)."""
        return replace(self.train_config(), lr=self.scratch_lr)

    def cold_start(self) -> CycleConfig:
        """The first cycle's settings, when no version serves: it trains a fresh model."""
        return replace(self, train_epochs=self.cold_start_epochs, lr=self.scratch_lr)


@dataclass
class Learner:
    """The model a cycle continues from, with what it has seen."""

    model: nn.Module
    vocab: Vocabulary
    optimizer_state: dict | None = None
    parent: int | None = None  # registry version it was loaded from
    trained_through: int = 0  # last log segment it has trained on
    lineage: dict[str, Any] = field(default_factory=dict)  # observations, growth decisions
    # The weights training continues from when ``model`` is a cooled-down branch of them
    # (cool_down); ``optimizer_state`` is then the trunk's. None: training continues ``model``.
    trunk: nn.Module | None = None

    @property
    def observations(self) -> list[Observation]:
        return [Observation(**o) for o in self.lineage.get("observations", [])]


@dataclass(frozen=True)
class CycleData:
    sequences: Sequences  # every event, old and new
    train_sequences: Sequences  # every event but the gate's holdout
    user_ids: np.ndarray  # [U] str, user index -> id
    is_new: np.ndarray  # [E] bool over all events: in this cycle's batch
    is_holdout: np.ndarray  # [E] bool: the batch's latest events, kept from training for the gate
    first_seen: np.ndarray  # [E] bool: the event's item entered the vocabulary this cycle
    batch_users: np.ndarray  # user indices with training events in this cycle's batch
    holdout_users: np.ndarray  # user indices with events in the holdout slice
    last_active: np.ndarray  # [U] row of each user's latest event (recency for replay)
    n_events: int  # events in the log through this batch: the data the model will have seen
    n_new_items: int


def resume(registry: Registry, config: CycleConfig) -> Learner:
    """The serving version, or a fresh model when the registry has none."""
    version = registry.current()
    if version is None:
        shape = dict(n_items=2, dim=config.dim, n_blocks=config.blocks, max_len=config.max_len)
        return Learner(new_model(config.kind, config.seed, **shape), Vocabulary())
    return resume_version(registry, version)


def resume_version(registry: Registry, version: int) -> Learner:
    """A stored version as a learner, with the log position it has trained through."""
    payload = registry.load(version)
    model, vocab, optimizer_state, extra = from_payload(payload)
    meta = registry.meta(version)
    return Learner(
        model,
        vocab,
        optimizer_state,
        parent=version,
        trained_through=int(meta.get("trained_through", 0)),
        lineage=dict(extra or {}),
        trunk=trunk_from_payload(payload, model),
    )


def prepare(
    learner: Learner, history: pa.Table, fresh: pa.Table, holdout_share: float = 0.1
) -> CycleData:
    """Grow the vocabulary for new items and build every user's sequence, old then new."""
    before = len(learner.vocab)
    columns = ["user_id", "item_id", "ts"]
    history, fresh = _in_time_order(history.select(columns)), _in_time_order(fresh.select(columns))
    learner.vocab.add(fresh.column("item_id").to_pylist())
    for model in (learner.model, learner.trunk):  # the trunk gets the same new rows
        if model is not None and len(learner.vocab) > model.config.n_items:
            with torch.random.fork_rng(devices=[]):  # new rows depend on the log, not the process
                torch.manual_seed(model.config.n_items)
                model.grow_items(len(learner.vocab))
    events = pa.concat_tables([history, fresh])
    encoded = pc.dictionary_encode(events.column("user_id")).combine_chunks()
    items = learner.vocab.lookup(np.asarray(events.column("item_id").to_pylist(), dtype=object))
    users = encoded.indices.to_numpy().astype(np.int64)
    ts = events.column("ts").to_numpy()
    is_new = np.zeros(events.num_rows, dtype=bool)
    is_new[history.num_rows :] = True
    is_holdout = _latest(is_new, ts, holdout_share)
    trainable = ~is_holdout
    last_active = np.zeros(len(encoded.dictionary), dtype=np.int64)
    np.maximum.at(last_active, users, np.arange(len(users)))
    return CycleData(
        sequences=Sequences.from_arrays(users, items, ts),
        train_sequences=Sequences.from_arrays(users[trainable], items[trainable], ts[trainable]),
        user_ids=np.asarray(encoded.dictionary.to_pylist(), dtype=object),
        is_new=is_new,
        is_holdout=is_holdout,
        first_seen=is_new & (items >= before),
        batch_users=np.unique(users[is_new & trainable]),
        holdout_users=np.unique(users[is_holdout]),
        last_active=last_active,
        n_events=events.num_rows,
        n_new_items=len(learner.vocab) - before,
    )


def _in_time_order(events: pa.Table) -> pa.Table:
    """Events by time, ties by user and item: one order however the consumer interleaved the
    partitions, so the same log grows the same vocabulary, user index and training batches."""
    return events.sort_by([("ts", "ascending"), ("user_id", "ascending"), ("item_id", "ascending")])


def _latest(is_new: np.ndarray, ts: np.ndarray, share: float) -> np.ndarray:
    """The latest ``share`` of the flagged events by time (ties in prepare's order)."""
    flagged = np.flatnonzero(is_new)
    n = int(len(flagged) * share)
    chosen = np.zeros_like(is_new)
    if n:
        order = flagged[np.argsort(ts[flagged], kind="stable")]
        chosen[order[-n:]] = True
    return chosen


def prequential(learner: Learner, data: CycleData) -> dict[str, dict[str, float]]:
    """HR/NDCG/MRR@10 and mean cross-entropy (``loss``, what the fitted growth policy models)
    of the serving model on the batch, before training: all events, new items, known items,
    and the ``holdout`` (the latest events, on which the gate compares the candidate).

    Full ranking over every item, history not masked (users may come back to an item). One
    forward pass scores every event; the groups are slices of it.
    """
    contexts, targets, kept = data.sequences.contexts_for(data.is_new, learner.model.config.max_len)
    ranks, losses = rank_and_loss(learner.model, contexts, targets)
    groups = {
        "all": np.ones(len(kept), dtype=bool),
        "new": data.first_seen[kept],
        "known": ~data.first_seen[kept],
        "holdout": data.is_holdout[kept],
    }
    return {name: _metrics(ranks[rows], losses[rows]) for name, rows in groups.items()}


def holdout_metrics(model: nn.Module, data: CycleData) -> dict[str, float]:
    """HR/NDCG/MRR@10 and loss on the gate's holdout slice (the batch's latest events)."""
    contexts, targets, _ = data.sequences.contexts_for(data.is_holdout, model.config.max_len)
    return _metrics(*rank_and_loss(model, contexts, targets))


def _metrics(ranks: np.ndarray, losses: np.ndarray) -> dict[str, float]:
    loss = float(losses.mean()) if len(losses) else float("nan")
    return next_item_metrics(ranks) | {"loss": loss}


@torch.no_grad()
def rank_and_loss(
    model: nn.Module, contexts: torch.Tensor, targets: torch.Tensor, batch_size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Each target's 1-based rank among all items (see ``rank_rows``) and its next-item
    cross-entropy, from one forward pass."""
    ranks, losses = torch.zeros(len(targets), dtype=torch.long), torch.zeros(len(targets))
    for rows, scores, target in scored_batches(model, contexts, targets, batch_size):
        ranks[rows] = rank_rows(scores, target).cpu()
        scores[:, 0] = -torch.inf
        losses[rows] = F.cross_entropy(scores.float(), target, reduction="none").cpu()
    return ranks.numpy(), losses.numpy()


def mean_cross_entropy(model: nn.Module, contexts: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean next-item cross-entropy over all items (nan when there is nothing to score)."""
    return _metrics(*rank_and_loss(model, contexts, targets))["loss"]


def observe(learner: Learner, data: CycleData, quality: dict[str, dict[str, float]]) -> None:
    """Add this cycle to the learner's history (what the growth policies fit)."""
    observation = Observation(
        events_seen=data.n_events,
        block_parameters=sum(p.numel() for p in learner.model.blocks.parameters()),
        depth=learner.model.depth,
        loss=float(quality["all"].get("loss", float("nan"))),
    )
    learner.lineage.setdefault("observations", []).append(asdict(observation))


def grow(learner: Learner, decision: Decision, operator: str, mode: str) -> dict | None:
    """Stack the model if the policy said so; returns the growth event (None: unchanged)."""
    learner.lineage.setdefault("decisions", []).append(decision.as_dict())
    if not decision.grow:
        return None
    learner.model = learner.model.stack(operator=operator, mode=mode)
    if mode == "faithful":  # the reference recipe restarts the optimizer after growth
        learner.optimizer_state = None
    return learner.model.config.lineage[-1]


@torch.no_grad()
def imprint_new_items(learner: Learner, data: CycleData, norm_quantile: float = 0.9) -> int:
    """Start each item first seen in this batch from the contexts it followed; returns how many.

    Weight imprinting (Qi et al., CVPR 2018): a new item's output vector becomes the mean
    hidden state of the training positions where it is the target, at the norm of the
    ``norm_quantile`` of known items' vectors. A freshly initialised vector would need many
    steps to outscore popular items; an imprinted one ranks high right away for users whose
    state resembles the contexts that led to it, so it can be recommended after the cycle
    that first sees it. Uses training positions only (never the gate's holdout), after the
    prequential evaluation (which must not see the batch's targets).
    """
    n_items = len(learner.vocab)
    first_new = n_items - data.n_new_items
    if data.n_new_items == 0 or first_new < 2:
        return 0
    model = learner.model
    windows = data.train_sequences.windows(model.config.max_len, users=data.batch_users)
    inputs, targets = windows[:, :-1], windows[:, 1:]
    at = (inputs != 0) & (targets >= first_new)
    keep = at.any(1)
    if not bool(keep.any()):
        return 0
    training = model.training
    model.eval()
    device = next(model.parameters()).device
    hidden = model(inputs[keep].to(device))[at[keep].to(device)]  # [T, D]
    model.train(training)
    items = targets[keep][at[keep]].to(device) - first_new
    sums = hidden.new_zeros(data.n_new_items, hidden.shape[1]).index_add_(0, items, hidden)
    seen = torch.bincount(items, minlength=data.n_new_items) > 0
    vectors = model.item_vectors()
    scale = torch.quantile(vectors[1:first_new].norm(dim=1), norm_quantile)
    rows = torch.arange(first_new, n_items, device=device)[seen]
    vectors[rows] = F.normalize(sums[seen], dim=1) * scale
    return int(seen.sum())


def training_windows(
    data: CycleData, config: CycleConfig, max_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch users' windows, whose loss counts only the batch's events (the history before
    them is context: it was learnt in earlier cycles), plus a recency-weighted replay sample of
    everyone else's windows with every target counted, against forgetting. Returns the windows
    and the ``[N, max_len]`` mask of counted targets."""
    trainable = ~data.is_holdout
    new, fresh = data.train_sequences.windows_with_flags(
        max_len, data.is_new[trainable], data.batch_users
    )
    keep = fresh.any(1)
    new, fresh = new[keep], fresh[keep]
    others = np.setdiff1d(data.train_sequences.users, data.batch_users)
    n_replay = int(len(new) * config.replay_ratio)
    if n_replay == 0 or len(others) == 0:
        return new, fresh
    rng = np.random.default_rng(config.seed + data.n_events)
    recency = np.argsort(np.argsort(-data.last_active[others]))  # 0 = most recent user
    weights = 0.5 ** (recency / max(1.0, config.replay_half_life * len(others)))
    picked = rng.choice(
        others, size=min(n_replay, len(others)), replace=False, p=weights / weights.sum()
    )
    replay = data.train_sequences.windows(max_len, users=np.sort(picked))
    replay = replay[torch.from_numpy(rng.permutation(len(replay))[:n_replay])]
    every = torch.ones(len(replay), max_len, dtype=torch.bool)
    return torch.cat([new, replay]), torch.cat([fresh, every])


def fine_tune(
    learner: Learner,
    windows: torch.Tensor,
    config: CycleConfig,
    counted: torch.Tensor | None = None,
) -> TrainResult | None:
    """``train_epochs`` passes over ``windows`` (at most ``train_steps`` steps), the optimizer
    state kept warm. Steps follow the batch, so a small batch is not trained on a hundred
    times over and a 10,000-event cycle stays well inside its interval."""
    useful = target_mask(windows, counted).any(1)
    windows, counted = windows[useful], None if counted is None else counted[useful]
    n_batches = math.ceil(len(windows) / config.batch_size)
    steps = config.train_steps
    if config.train_epochs is not None:
        steps = min(steps, math.ceil(config.train_epochs * n_batches))
    if len(windows) == 0 or steps == 0:
        return None
    trainer = Trainer(learner.model, config.train_config(), optimizer_state=learner.optimizer_state)
    result = fit_steps(trainer, windows, steps, counted)
    learner.optimizer_state = trainer.optimizer_state()
    learner.model = trainer.model.cpu()
    return result


def fit_steps(
    trainer: Trainer, windows: torch.Tensor, steps: int, counted: torch.Tensor | None = None
) -> TrainResult:
    """Exactly ``steps`` optimizer steps over ``windows`` (passes as needed): the epochs are
    chosen so that ceil(epochs * batches) == steps, so the rate's schedule completes."""
    n_batches = math.ceil(len(windows) / trainer.config.batch_size)
    return trainer.fit(windows, epochs=(steps - 0.5) / n_batches, counted=counted)


def continue_trunk(learner: Learner) -> None:
    """Make the trunk the model a cycle trains (after the served branch was evaluated)."""
    if learner.trunk is not None:
        learner.model, learner.trunk = learner.trunk, None


def cool_down(
    learner: Learner, data: CycleData, config: CycleConfig, tuned_steps: int
) -> TrainResult | None:
    """Branch off the trained model and anneal the branch, which becomes ``learner.model``
    (served); the un-annealed weights become ``learner.trunk``, which the next cycle continues
    at the constant rate (warmup-stable-decay: Hägele et al. 2024).

    A constant rate learns each batch quickly but leaves the weights noisy, and a rate annealed
    within every cycle restarts from a settled model each time. Annealing a copy gets both.
    ``anneal_share`` of the cycle's ``tuned_steps``, the rate cosine from ``lr`` to 0, on
    ``cool_down_windows``. Runs after the gate and the top-up: the gate judged the trunk, whose
    divergence it exists to catch; the branch learns nothing the trunk has not.
    """
    if config.anneal_share <= 0 or tuned_steps == 0:
        return None
    steps = math.ceil(config.anneal_share * tuned_steps)
    windows = cool_down_windows(data, config, learner.model.config.max_len, steps)
    settle = replace(config.train_config(), lr_schedule="cosine", lr_floor=0.0)
    trainer = Trainer(copy.deepcopy(learner.model), settle, copy.deepcopy(learner.optimizer_state))
    result = fit_steps(trainer, windows, steps)
    learner.trunk, learner.model = learner.model, trainer.model.cpu()
    return result


def cool_down_windows(
    data: CycleData, config: CycleConfig, max_len: int, steps: int
) -> torch.Tensor:
    """A batch for each of ``steps`` steps (every window once if the log has fewer): drawn
    uniformly from the whole log, since the settled model should fit all of it, except
    ``anneal_fresh_share`` of them from the batch's windows: uniform draws alone see a new
    item's few events rarely and can anneal it out of every top-K (README: the cool-down)."""
    fresh, flags = data.sequences.windows_with_flags(max_len, data.is_new, data.batch_users)
    fresh = fresh[flags.any(1)]
    n = min(data.sequences.n_windows(max_len), steps * config.batch_size)
    n_fresh = round(config.anneal_fresh_share * n) if len(fresh) else 0
    rng = np.random.default_rng(config.seed + data.n_events + 1)
    windows = data.sequences.sample_windows(max_len, n - n_fresh, rng)
    picked = rng.choice(len(fresh), n_fresh, replace=n_fresh > len(fresh))
    return torch.cat([windows, fresh[torch.from_numpy(picked)]])


def top_up(learner: Learner, data: CycleData, config: CycleConfig) -> TrainResult | None:
    """After the gate: a proportional number of steps on the held-out users' latest windows,
    so the holdout slice is trained on too before the version is registered."""
    if len(data.holdout_users) == 0:
        return None
    steps = max(1, math.ceil(config.train_steps * config.holdout_share))
    max_len = learner.model.config.max_len
    windows, counted = data.sequences.windows_with_flags(
        max_len, data.is_holdout, data.holdout_users
    )
    return fine_tune(learner, windows, replace(config, train_steps=steps), counted)


def save(registry: Registry, learner: Learner, meta: dict[str, Any]) -> int:
    """Store the learner as a new candidate version; the caller promotes it."""
    payload = to_payload(
        learner.model,
        learner.vocab,
        learner.optimizer_state,
        extra=learner.lineage,
        trunk=learner.trunk,
    )
    return registry.save(payload, {"parent": learner.parent, **meta})


@dataclass(frozen=True)
class Recommendations:
    item_ids: list[str]
    item_vectors: np.ndarray
    user_ids: list[str]
    user_vectors: np.ndarray
    top_k: list[list[str]]
    popular: list[str]


def recommendations(learner: Learner, data: CycleData, config: CycleConfig) -> Recommendations:
    """Vectors for every item and for the most recently active users, and their top-K."""
    recent = _recent_users(data, config.publish_users)
    best = top_k(learner.model, data.sequences, recent, config.top_k)
    ids = np.asarray(learner.vocab.ids, dtype=object)
    counts = np.bincount(data.sequences.items, minlength=len(ids))
    counts[0] = -1
    popular = np.argsort(-counts, kind="stable")[: config.popular_k]
    return Recommendations(
        item_ids=list(ids[1:]),
        item_vectors=learner.model.item_vectors()[1:].detach().float().numpy(),
        user_ids=list(data.user_ids[recent]),
        user_vectors=best.user_vectors,
        top_k=[list(ids[row]) for row in best.items],
        popular=list(ids[popular[counts[popular] > 0]]),
    )


def _recent_users(data: CycleData, limit: int) -> np.ndarray:
    """Every user while there are at most ``limit``; beyond that, the ``limit`` most recently
    active (this batch's first). The rest get the version's popular list until they return:
    top-K for every user costs a full-catalogue ranking each, every cycle."""
    users = data.sequences.users
    if len(users) <= limit:
        return users
    latest_first = np.argsort(-data.last_active[users], kind="stable")
    return np.sort(users[latest_first[:limit]])
