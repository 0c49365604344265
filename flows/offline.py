"""``stackrec train`` and ``stackrec evaluate``: offline training and evaluation on a file.

Plain functions with Typer-style ``Annotated`` parameters; ``flows/cli.py`` registers them.
Both split the data leave-one-out by time (or by time windows), so ``evaluate`` on the same
file scores exactly the test targets that ``train`` held out. Progress goes to stderr, the
result to stdout (JSON with ``--json``). A user mistake prints one ``error:`` line, exit 1.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import numpy as np
import pyarrow as pa
import torch
import typer
from tqdm import tqdm

from stackrec.checkpoint import MODELS, CheckpointError, from_payload, to_payload
from stackrec.datasets import DatasetError, read_interactions
from stackrec.evaluate import Protocol, evaluate_held_out
from stackrec.sequences import Sequences
from stackrec.splits import Split, leave_one_out, time_split
from stackrec.stacking import StackingError
from stackrec.train import (
    EpochRecord,
    NoTargetsError,
    Schedule,
    TrainConfig,
    default_device,
    train_with_validation,
)
from stackrec.vocab import UnknownIdError, Vocabulary

CHECKPOINT = "model.pt"
RESULT = "result.json"
KS = (5, 10, 20)
VALIDATION_METRIC = "ndcg@10"
_USER_ERRORS = (
    CheckpointError, DatasetError, StackingError, NoTargetsError, UnknownIdError, ValueError,
    FileNotFoundError,
)  # fmt: skip


class ModelKind(StrEnum):
    nextitnet = "nextitnet"
    sasrec = "sasrec"


class RateSchedule(StrEnum):
    constant = "constant"
    cosine = "cosine"  # from lr down to lr / 10 over all the epochs


class SplitKind(StrEnum):
    loo = "loo"  # leave-one-out by time per user
    time = "time"  # by time: the last 20% of the time span held out (10% valid, 10% test)


class ProtocolName(StrEnum):
    full = "full"
    sampled100 = "sampled100"


def train(
    data: Annotated[Path, typer.Option(help="interactions file")],
    out: Annotated[Path, typer.Option(help="directory for model.pt and result.json")],
    fmt: Annotated[
        str, typer.Option("--format", help="auto|movielens|inter|csv|parquet|lines")
    ] = "auto",
    model: Annotated[ModelKind, typer.Option(help="model architecture")] = ModelKind.nextitnet,
    blocks: Annotated[int, typer.Option(min=1, help="residual blocks at the start")] = 2,
    dim: Annotated[int, typer.Option(min=1, help="embedding width")] = 64,
    max_len: Annotated[int, typer.Option(min=1, help="context length")] = 50,
    epochs: Annotated[int, typer.Option(min=1, help="most epochs")] = 20,
    stack_at: Annotated[str, typer.Option(help="grow after these epochs, e.g. '5,10'")] = "",
    stack_operator: Annotated[
        str, typer.Option(help="adjacent|cross|copy_top_k|embeddings_only")
    ] = "adjacent",
    stack_mode: Annotated[
        str, typer.Option(help="function_preserving|faithful")
    ] = "function_preserving",
    patience: Annotated[
        int, typer.Option(min=0, help="early stop after N epochs without gain; 0: off")
    ] = 5,
    lr: Annotated[float, typer.Option(min=0.0, help="AdamW learning rate")] = 1e-3,
    lr_schedule: Annotated[
        RateSchedule, typer.Option(help="constant, or cosine down to lr/10 over --epochs")
    ] = RateSchedule.constant,
    batch_size: Annotated[int, typer.Option(min=1, help="windows per step")] = 128,
    stride: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="overlap the windows, this many targets apart, so each target "
            "keeps max_len - stride items of context (default: disjoint windows)",
        ),
    ] = None,
    dropout: Annotated[float, typer.Option(min=0.0, max=0.99)] = 0.2,
    heads: Annotated[int, typer.Option(min=1, help="SASRec attention heads")] = 1,
    loss: Annotated[str, typer.Option(help="full|sampled|auto")] = "full",
    negatives: Annotated[int, typer.Option(min=1, help="sampled softmax negatives")] = 1024,
    split: Annotated[SplitKind, typer.Option(help="loo|time")] = SplitKind.loo,
    seed: Annotated[int, typer.Option(help="seeds init, shuffling, dropout")] = 0,
    device: Annotated[str | None, typer.Option(help="cpu|cuda (default: cuda if present)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Train a model on DATA, validate every epoch, keep the best, test it once."""
    device = device or default_device()
    try:
        began = time.perf_counter()
        table = read_interactions(data, fmt)
        items = Vocabulary()
        items.add(_column(table, "item_id"))
        splits = _split(_indexed(table, items), split, max_len)
        windows, counted = splits.train.training_windows(max_len, stride)
        torch.manual_seed(seed)
        net = _build(model, items, blocks, dim, max_len, dropout, heads)
        config = TrainConfig(lr=lr, lr_schedule=lr_schedule.value, batch_size=batch_size,
                             seed=seed, loss=loss, n_negatives=negatives)  # fmt: skip
        schedule = Schedule(epochs, patience or None, _epochs(stack_at), stack_operator, stack_mode)
        full = Protocol("full", mask_history=True)

        def validate(candidate: torch.nn.Module) -> float:
            metrics = evaluate_held_out(candidate, splits.valid, full, ks=(10,), device=device)
            return metrics[VALIDATION_METRIC]

        progress = _progress(windows, batch_size)
        result = train_with_validation(
            net, windows, config, schedule, validate, device, counted=counted, **progress
        )
        test = evaluate_held_out(result.model, splits.test, full, ks=KS, device=device)
    except _USER_ERRORS as error:
        _fail(error)
    summary = _train_summary(
        result, test, windows, splits, config, began, model.value, split.value, device
    )
    out.mkdir(parents=True, exist_ok=True)
    torch.save(
        to_payload(result.model, items, result.optimizer_state, extra=summary), out / CHECKPOINT
    )
    (out / RESULT).write_text(json.dumps(summary, indent=2))
    _emit(summary, as_json)


def evaluate(
    model: Annotated[Path, typer.Option(help="directory written by `stackrec train`")],
    data: Annotated[Path, typer.Option(help="interactions file (the one trained on)")],
    fmt: Annotated[
        str, typer.Option("--format", help="auto|movielens|inter|csv|parquet|lines")
    ] = "auto",
    protocol: Annotated[ProtocolName, typer.Option(help="full|sampled100")] = ProtocolName.full,
    sampling: Annotated[
        str, typer.Option(help="sampled100 negatives: popularity|uniform")
    ] = "popularity",
    mask_history: Annotated[
        bool, typer.Option(help="full: drop seen items from the ranking")
    ] = True,
    split: Annotated[SplitKind | None, typer.Option(help="default: the one trained with")] = None,
    seed: Annotated[int, typer.Option(help="seeds negative sampling")] = 0,
    device: Annotated[str | None, typer.Option(help="cpu|cuda (default: cuda if present)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Score a trained model on the held-out test targets of DATA."""
    try:
        began = time.perf_counter()
        path = model / CHECKPOINT if model.is_dir() else model
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint at {path}")
        net, items, _, extra = from_payload(torch.load(path, weights_only=True, map_location="cpu"))
        table = read_interactions(data, fmt)
        events = _indexed(table, items)
        chosen = split or SplitKind(extra.get("split", "loo"))
        splits = _split(events, chosen, net.config.max_len)
        rules = Protocol(protocol.value, mask_history, sampling, seed=seed)
        counts = np.bincount(events[1], minlength=net.config.n_items)
        device = device or default_device()
        metrics = evaluate_held_out(net, splits.test, rules, counts, KS, device=device)
    except _USER_ERRORS as error:
        _fail(error)
    summary = {
        "model": net.kind,
        "depth": net.depth,
        "split": chosen.value,
        "test": metrics,
        "popularity": "interactions per item over all of DATA"
        if protocol.value != "full"
        else None,
        "wall_s": round(time.perf_counter() - began, 3),
        "peak_memory_mb": _peak_memory_mb(device),
    }
    _emit(summary, as_json)


# -- pieces -----------------------------------------------------------------------------------
def _column(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False)


def _indexed(table: pa.Table, items: Vocabulary) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(users, items, ts)`` as int64 arrays in file order; unknown items raise."""
    users = Vocabulary()
    users.add(_column(table, "user_id"))
    user_ids, item_ids = _column(table, "user_id"), _column(table, "item_id")
    return users.lookup(user_ids), items.lookup(item_ids), _column(table, "ts")


def _split(events: tuple[np.ndarray, ...], kind: SplitKind, max_len: int) -> Split:
    if kind is SplitKind.loo:
        return leave_one_out(Sequences.from_arrays(*events), max_len)
    ts = events[2]
    low, span = int(ts.min()), int(ts.max()) - int(ts.min())
    return time_split(*events, low + span * 8 // 10, low + span * 9 // 10, max_len)


def _build(
    kind: ModelKind,
    items: Vocabulary,
    blocks: int,
    dim: int,
    max_len: int,
    dropout: float,
    heads: int,
) -> torch.nn.Module:
    model_cls, config_cls = MODELS[kind.value]
    settings = {
        "n_items": len(items),
        "dim": dim,
        "n_blocks": blocks,
        "max_len": max_len,
        "dropout": dropout,
    }
    if kind is ModelKind.sasrec:
        settings["n_heads"] = heads
    return model_cls(config_cls(**settings))


def _epochs(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise typer.BadParameter(f"--stack-at {text!r}: expected epochs like '5,10'") from None


def _progress(windows: torch.Tensor, batch_size: int) -> dict:
    """A tqdm bar per epoch on stderr and one summary line when the epoch ends."""
    n_batches = -(-len(windows) // batch_size)
    state = {"bar": None}

    def on_step(step: int, loss: float) -> None:
        if state["bar"] is None:
            state["bar"] = tqdm(total=n_batches, file=sys.stderr, leave=False, mininterval=1.0)
        state["bar"].update(1)
        state["bar"].set_postfix(loss=f"{loss:.3f}", refresh=False)

    def on_epoch(record: EpochRecord) -> None:
        if state["bar"] is not None:
            state["bar"].close()
            state["bar"] = None
        print(f"epoch {record.epoch}: depth {record.depth}, loss {record.loss:.4f}, "
              f"valid {VALIDATION_METRIC} {record.score:.4f}, {record.seconds:.1f} s",
              file=sys.stderr)  # fmt: skip

    return {"on_step": on_step, "on_epoch": on_epoch}


def _train_summary(result, test, windows, splits, config, began, kind, split, device) -> dict:
    train_s = result.train_seconds
    epochs_run = len(result.history)
    return {
        "model": kind,
        "depth": result.model.depth,
        "config": dataclasses.asdict(result.model.config),
        "training": dataclasses.asdict(config),
        "split": split,
        "best_epoch": result.best_epoch,
        "epochs": epochs_run,
        "valid": {VALIDATION_METRIC: max(r.score for r in result.history)},
        "test": test,
        "history": [dataclasses.asdict(r) for r in result.history],
        "wall_s": round(time.perf_counter() - began, 3),
        "train_s": round(train_s, 3),
        "s_per_epoch": round(train_s / epochs_run, 3),
        "sequences_per_s": round(len(windows) * epochs_run / train_s, 1),
        "targets_per_s": round(result.targets / train_s, 1),
        "train_windows": len(windows),
        "valid_targets": len(splits.valid),
        "peak_memory_mb": _peak_memory_mb(device),
    }


def _peak_memory_mb(device: str | None) -> dict:
    """Peak resident memory of this process and, on CUDA, peak tensor memory."""
    peak = {"rss": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if torch.device(device or default_device()).type == "cuda":
        peak["cuda"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peak


def _emit(summary: dict, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    test = summary["test"]
    figures = ", ".join(f"{k} {test[k]:.4f}" for k in ("hr@10", "ndcg@10", "mrr@10"))
    typer.echo(
        f"{summary['model']} (depth {summary['depth']}): test {figures} "
        f"on {test['n']} targets; {summary['wall_s']:.1f} s"
    )


def _fail(error: Exception) -> NoReturn:
    message = error.args[0] if isinstance(error, KeyError) and error.args else error
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)
