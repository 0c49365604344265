"""Nightly maintenance flows that prefect.yaml schedules beside the continual cycle.

``full_evaluation``: the serving version scored leave-one-out by time over everything in the
log it has trained on, with full ranking (history masked) and with 100 popularity-sampled
negatives, so its numbers line up with offline runs and published tables. Prequential
metrics say how each batch was predicted before training on it; this says how the model that
serves now ranks every user's latest item, night after night, on one growing yardstick. The
targets are events the model has trained on, so it is a regression check of the serving
model, not an unbiased estimate of future quality (prequential is that).

``log_upkeep``: compacts small segments the serving model has trained on into larger files
and, when ``max_age_days`` is given, deletes trained segments older than that (never one that
training has not read; their offsets stay covered, so nothing is ingested twice).

Files only (registry and log): no network edge, so no retries; a failure is a bug or bad data.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from torch import nn

from flows.settings import Settings
from stackrec.checkpoint import from_payload
from stackrec.evaluate import Protocol, evaluate_held_out
from stackrec.sequences import Sequences
from stackrec.splits import Split, leave_one_out
from stackrec.vocab import Vocabulary
from streaming.log import InteractionLog

KS = (5, 10, 20)
_LOCAL = {"cache_policy": NO_CACHE}


@flow(name="full-evaluation")
def full_evaluation(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate the serving version on the log; writes ``<home>/evaluations/<model>/*.json``."""
    settings = Settings.load(**(overrides or {}))
    started = time.perf_counter()
    version = settings.registry().current()
    if version is None:
        return {"model": settings.model, "outcome": "noop", "reason": "no serving version yet"}
    model, vocab, trained_through = load_serving(settings, version)
    events = read_trained(settings, trained_through)
    split, item_counts = split_log(events, vocab, model.config.max_len)
    result = {
        "model": settings.model,
        "outcome": "evaluated",
        "version": version,
        "depth": model.depth,
        "trained_through": trained_through,
        "events": events.num_rows,
        "users_evaluated": len(split.test),
        "test": {"full": evaluate(model, split, Protocol("full", mask_history=True), None)},
        "evaluated_s": time.time(),
    }
    sampled = Protocol("sampled100")
    if len(vocab) - 1 > sampled.n_negatives:
        result["test"]["sampled100"] = evaluate(model, split, sampled, item_counts)
    else:  # fewer items than negatives to draw: the protocol is undefined
        result["test"]["sampled100"] = {"skipped": f"{len(vocab) - 1} items, need > 100"}
    result["wall_s"] = round(time.perf_counter() - started, 3)
    result["file"] = str(save_result(settings, result))
    return result


@task(**_LOCAL)
def load_serving(settings: Settings, version: int) -> tuple[nn.Module, Vocabulary, int]:
    registry = settings.registry()
    model, vocab, _, _ = from_payload(registry.load(version))
    return model, vocab, int(registry.meta(version).get("trained_through", 0))


@task(**_LOCAL)
def read_trained(settings: Settings, trained_through: int) -> pa.Table:
    """The events the serving version has seen: every item in them is in its vocabulary."""
    log = InteractionLog(settings.log_dir)
    return log.read(through=trained_through, columns=["user_id", "item_id", "ts"])


@task(**_LOCAL)
def split_log(events: pa.Table, vocab: Vocabulary, max_len: int) -> tuple[Split, np.ndarray]:
    """Leave-one-out by time per user, and interactions per item (for popularity sampling)."""
    users = pc.dictionary_encode(events.column("user_id")).combine_chunks().indices.to_numpy()
    items = vocab.lookup(np.asarray(events.column("item_id").to_pylist(), dtype=object))
    sequences = Sequences.from_arrays(users, items, events.column("ts").to_numpy())
    split = leave_one_out(sequences, max_len)
    # the popularity a sampled protocol draws from: training events only, as offline
    return split, np.bincount(split.train.items, minlength=len(vocab))


@task(**_LOCAL)
def evaluate(
    model: nn.Module, split: Split, protocol: Protocol, item_counts: np.ndarray | None
) -> dict[str, Any]:
    return evaluate_held_out(model, split.test, protocol, item_counts, KS)


@task(**_LOCAL)
def save_result(settings: Settings, result: dict[str, Any]) -> Path:
    out = settings.home / "evaluations" / settings.model
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"v{result['version']:06d}-{int(result['evaluated_s'])}.json"
    path.write_text(json.dumps(result, indent=2))
    return path


@flow(name="log-upkeep")
def log_upkeep(
    overrides: dict[str, Any] | None = None,
    target_rows: int = 200_000,
    max_age_days: float | None = None,
) -> dict[str, Any]:
    """Compact the interaction log, then apply retention if asked; returns what changed."""
    settings = Settings.load(**(overrides or {}))
    log = InteractionLog(settings.log_dir)
    result = {"compaction": dataclasses.asdict(log.compact(target_rows=target_rows))}
    if max_age_days is not None:
        result["retention"] = dataclasses.asdict(log.retain(max_age_days * 86_400))
    return result
