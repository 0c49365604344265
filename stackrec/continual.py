"""One continual-learning cycle as library functions: the flow calls them in order.

    resume -> prepare (grow vocabulary, build sequences) -> prequential -> fine_tune -> snapshot

Everything here is tensors, Arrow tables and files; the flow records the figures it returns as
metrics and moves data between the edges. Prequential evaluation is test-then-train: the model
that serves is scored on the new events *before* it learns from them, which is the only honest
online quality estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stackrec.checkpoint import from_payload, to_payload
from stackrec.evaluate import rank_targets
from stackrec.nextitnet import NextItNet, NextItNetConfig
from stackrec.ranking import next_item_metrics
from stackrec.recommend import top_k
from stackrec.registry import Registry
from stackrec.sequences import Sequences
from stackrec.train import TrainConfig, Trainer, TrainResult
from stackrec.vocab import Vocabulary


@dataclass(frozen=True)
class CycleConfig:
    dim: int = 64  # width of a model created from scratch
    blocks: int = 2  # depth of a model created from scratch
    max_len: int = 50  # context length
    train_steps: int = 200  # fine-tuning steps per cycle (bound on cycle time)
    batch_size: int = 128
    lr: float = 1e-3
    top_k: int = 50  # recommendations published per user
    publish_users: int = 100_000  # the most recently active users get published top-K
    popular_k: int = 100  # fallback list for users the version does not know
    seed: int = 0


@dataclass
class Learner:
    """The model a cycle continues from, with what it has seen."""

    model: NextItNet
    vocab: Vocabulary
    optimizer_state: dict | None = None
    parent: int | None = None  # registry version it was loaded from
    trained_through: int = 0  # last log segment it has trained on
    lineage: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CycleData:
    sequences: Sequences
    user_ids: np.ndarray  # [U] str, user index -> id
    is_new: np.ndarray  # [E] bool over all events: in this cycle's batch
    first_seen: np.ndarray  # [E] bool: the event's item entered the vocabulary this cycle
    batch_users: np.ndarray  # user indices active in this cycle's batch
    n_new_items: int


def resume(registry: Registry, config: CycleConfig) -> Learner:
    """The serving version, or a fresh model when the registry has none."""
    version = registry.current()
    if version is None:
        vocab = Vocabulary()
        model = NextItNet(
            NextItNetConfig(
                n_items=max(len(vocab), 2),
                dim=config.dim,
                n_blocks=config.blocks,
                max_len=config.max_len,
            )
        )
        return Learner(model, vocab)
    model, vocab, optimizer_state, extra = from_payload(registry.load(version))
    meta = registry.meta(version)
    return Learner(
        model,
        vocab,
        optimizer_state,
        parent=version,
        trained_through=int(meta.get("trained_through", 0)),
        lineage=dict(extra or {}),
    )


def prepare(learner: Learner, history: pa.Table, fresh: pa.Table) -> CycleData:
    """Grow the vocabulary for new items and build every user's sequence, old then new."""
    before = len(learner.vocab)
    learner.vocab.add(fresh.column("item_id").to_pylist())
    if len(learner.vocab) > learner.model.config.n_items:
        learner.model.grow_items(len(learner.vocab))
    events = pa.concat_tables(
        [history.select(["user_id", "item_id", "ts"]), fresh.select(["user_id", "item_id", "ts"])]
    )
    encoded = pc.dictionary_encode(events.column("user_id")).combine_chunks()
    items = learner.vocab.lookup(np.asarray(events.column("item_id").to_pylist(), dtype=object))
    users = encoded.indices.to_numpy().astype(np.int64)
    sequences = Sequences.from_arrays(users, items, events.column("ts").to_numpy())
    is_new = np.zeros(events.num_rows, dtype=bool)
    is_new[history.num_rows :] = True
    return CycleData(
        sequences=sequences,
        user_ids=np.asarray(encoded.dictionary.to_pylist(), dtype=object),
        is_new=is_new,
        first_seen=is_new & (items >= before),
        batch_users=np.unique(users[history.num_rows :]),
        n_new_items=len(learner.vocab) - before,
    )


def prequential(learner: Learner, data: CycleData) -> dict[str, dict[str, float]]:
    """HR/NDCG/MRR@10 of the current model on the batch, before training; all/new/known items.

    Full ranking over every item, history not masked (users may come back to an item).
    """
    contexts, targets, kept = data.sequences.contexts_for(data.is_new, learner.model.config.max_len)
    ranks = rank_targets(learner.model, contexts, targets)
    new_item = data.first_seen[kept]
    return {
        "all": next_item_metrics(ranks),
        "new": next_item_metrics(ranks[new_item]),
        "known": next_item_metrics(ranks[~new_item]),
    }


def fine_tune(learner: Learner, data: CycleData, config: CycleConfig) -> TrainResult | None:
    """Bounded fine-tuning on the batch users' latest windows, optimizer state kept warm."""
    windows = data.sequences.windows(learner.model.config.max_len, users=data.batch_users)
    windows = windows[(windows[:, 1:] > 0).sum(1) > 0]
    if len(windows) == 0 or config.train_steps == 0:
        return None
    trainer = Trainer(
        learner.model,
        TrainConfig(lr=config.lr, batch_size=config.batch_size, seed=config.seed),
        optimizer_state=learner.optimizer_state,
    )
    n_batches = math.ceil(len(windows) / config.batch_size)
    # exactly train_steps steps: ceil(epochs * n_batches) == train_steps, schedule completes
    result = trainer.fit(windows, epochs=(config.train_steps - 0.5) / n_batches)
    learner.optimizer_state = trainer.optimizer_state()
    learner.model = trainer.model.cpu()
    return result


def save(registry: Registry, learner: Learner, meta: dict[str, Any]) -> int:
    """Store the learner as a new candidate version; the caller promotes it."""
    payload = to_payload(
        learner.model, learner.vocab, learner.optimizer_state, extra=learner.lineage
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
    """Every user while there are at most ``limit``; beyond that, this batch's users."""
    if len(data.sequences.users) <= limit:
        return data.sequences.users
    return data.batch_users[:limit]
