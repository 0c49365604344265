"""Training from scratch with progressive stacking, as a flow and as ``stackrec bootstrap``:

    read the whole log -> vocabulary, sequences, leave-one-out split
    -> train shallow, stack, train, ... (the depth schedule, e.g. 2 -> 4 -> 8)
    -> register a version -> publish to Redis (the cycle's snapshot) -> promote

The model trains on every user's history but the last two items (validation, test), which
score each stage. The version records the log position it trained through, so the continual
cycle carries on from the next segment; its lineage holds every stacking event.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict
from typing import Annotated, Any

import pyarrow as pa
import pyarrow.compute as pc
import typer
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from tqdm import tqdm

from flows.cycle import cycle_config, promote, publish_version
from flows.pushed import pushed_metrics
from flows.settings import Settings
from stackrec import continual
from stackrec.checkpoint import new_model
from stackrec.continual import CycleData, Learner
from stackrec.evaluate import Protocol, evaluate_held_out
from stackrec.growth import Observation
from stackrec.progressive import (
    ProgressiveConfig,
    ProgressiveResult,
    ScheduleError,
    StageRecord,
    parse_schedule,
    train_progressively,
)
from stackrec.splits import Split, leave_one_out
from stackrec.train import NoTargetsError
from stackrec.transfer import TransferError
from stackrec.vocab import Vocabulary
from streaming.log import InteractionLog

_LOCAL = {"cache_policy": NO_CACHE}
KS = (10,)
FLOW_ERRORS = (ScheduleError, TransferError, NoTargetsError)


class EmptyLogError(ValueError):
    """The interaction log holds no events: nothing to train on."""


@flow(name="bootstrap")
def bootstrap(
    overrides: dict[str, Any] | None = None,
    schedule: str = "2,4,8",
    epochs_per_stage: float = 2.0,
    progress: bool = False,
) -> dict[str, Any]:
    """A new model from the whole log, stacked on ``schedule``; registered, published, served."""
    settings = Settings.load(**(overrides or {}))
    with pushed_metrics(settings):
        started = time.perf_counter()
        config = stage_config(settings, schedule, epochs_per_stage)
        table, through = read_whole_log(settings)
        learner = fresh_learner(settings, config.schedule[0])
        data = prepare(learner, table)
        split = leave_one_out(data.train_sequences, settings.max_len)
        result = train(settings, learner, split, config, progress)
        report = summarise(settings, learner, split, result, "bootstrap", table)
        version = register(settings, learner, report, through)
        with settings.registry().serving_lock():  # not halfway through a cycle's promotion
            report["published"] = publish_version(settings, learner, data, version)
            promote(settings, version, through)
        report |= {"version": version, "outcome": "published"}
        report["wall_s"] = round(time.perf_counter() - started, 3)
    return report


def stage_config(settings: Settings, schedule: str, epochs_per_stage: float) -> ProgressiveConfig:
    return ProgressiveConfig(
        parse_schedule(schedule), epochs_per_stage, settings.stack_operator, settings.stack_mode
    )


# --- tasks: each calls one library function -------------------------------------------------
@task(**_LOCAL)
def read_whole_log(settings: Settings) -> tuple[pa.Table, int]:
    """Every event in the log, and the last segment id (the version's trained-through)."""
    log = InteractionLog(settings.log_dir)
    through = log.manifest().ingested_through
    table = log.read(through=through)
    if table.num_rows == 0:
        raise EmptyLogError(
            f"the interaction log {settings.log_dir} is empty: send events (`stackrec "
            "replay`) and consume them into it (`stackrec ingest`) first"
        )
    return table, through


def fresh_learner(settings: Settings, depth: int) -> Learner:
    """An untrained model of the settings' kind and width, ``depth`` blocks deep."""
    shape = dict(n_items=2, dim=settings.dim, n_blocks=depth, max_len=settings.max_len)
    return Learner(new_model(settings.model_kind, settings.seed, **shape), Vocabulary())


@task(**_LOCAL)
def prepare(learner: Learner, events: pa.Table) -> CycleData:
    """Vocabulary and sequences of ``events`` (all new to the learner, none held out)."""
    return continual.prepare(learner, events.schema.empty_table(), events, holdout_share=0.0)


@task(**_LOCAL)
def train(
    settings: Settings,
    learner: Learner,
    split: Split,
    config: ProgressiveConfig,
    progress: bool = False,
) -> ProgressiveResult:
    """Progressive stacking on the split's training part; each stage scored on validation."""
    windows = split.train.windows(settings.max_len)
    batches = math.ceil(len(windows) / settings.batch_size)
    total = len(config.schedule) * math.ceil(config.epochs_per_stage * batches)
    bar = tqdm(total=total, unit="step", desc="train", file=sys.stderr, disable=not progress)

    def on_step(step: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    def on_stage(record: StageRecord) -> None:
        if progress:
            bar.write(
                f"stage {record.stage}: depth {record.depth}, loss {record.loss:.4f}, "
                f"valid ndcg@10 {record.valid['ndcg@10']:.4f}, {record.seconds:.1f} s",
                file=sys.stderr,
            )

    try:
        result = train_progressively(
            learner.model,
            windows,
            cycle_config(settings).scratch_train_config(),
            config,
            lambda model: validation_metrics(model, split),
            optimizer_state=learner.optimizer_state,
            on_step=on_step,
            on_stage=on_stage,
        )
    finally:
        bar.close()
    learner.model, learner.optimizer_state = result.model, result.optimizer_state
    return result


@task(**_LOCAL)
def register(settings: Settings, learner: Learner, report: dict[str, Any], through: int) -> int:
    """A new version, its meta shaped like the cycle's (so `models list/show` read it)."""
    version = continual.save(settings.registry(), learner, {**report, "trained_through": through})
    learner.parent = version
    return version


# --- pieces -----------------------------------------------------------------------------------
def validation_metrics(model, split: Split) -> dict[str, float]:
    full = Protocol("full", mask_history=True)
    return evaluate_held_out(model, split.valid, full, ks=KS)


def summarise(
    settings: Settings,
    learner: Learner,
    split: Split,
    result: ProgressiveResult,
    scenario: str,
    events: pa.Table,
) -> dict[str, Any]:
    """The version's meta: stages, test metrics, stacking events; and the learner's history,
    so the continual cycle's growth policy knows at which data size this depth was reached."""
    model = learner.model
    full = Protocol("full", mask_history=True)
    test = evaluate_held_out(model, split.test, full, ks=KS) if len(split.test) else {}
    loss = continual.mean_cross_entropy(model, split.valid.contexts, split.valid.targets)
    observation = Observation(
        events_seen=events.num_rows,
        block_parameters=sum(p.numel() for p in model.blocks.parameters()),
        depth=model.depth,
        loss=loss,
    )
    learner.lineage = {"scenario": scenario, "observations": [asdict(observation)]}
    valid = result.stages[-1].valid if result.stages else {}
    return {
        "model": settings.model,
        "scenario": scenario,
        "events_trained": events.num_rows,
        "newest_event_ms": int(pc.max(events.column("ts")).as_py()),
        "depth": model.depth,
        "stages": result.as_dicts(),
        "stacking": [dict(event) for event in model.config.lineage],
        # the cycle's field names, so `stackrec models list` shows the validation NDCG@10
        "prequential": {"all": valid},
        "valid": valid,
        "test": test,
        "training": {
            "seconds": round(result.train_seconds, 3),
            "targets": result.targets,
            "steps": sum(s.steps for s in result.stages),
        },
        "model_shape": {
            "depth": model.depth,
            "dim": model.config.dim,
            "items": len(learner.vocab) - 1,
            "parameters": sum(p.numel() for p in model.parameters()),
        },
    }


def describe(report: dict[str, Any]) -> str:
    stages = " -> ".join(
        f"{s['depth']} (ndcg@10 {s['valid'].get('ndcg@10', 0.0):.4f})" for s in report["stages"]
    )
    test = report.get("test") or {}
    return (
        f"{report['scenario']}: version {report['version']}, depth {report['depth']}, "
        f"{report['model_shape']['items']} items\nstages: {stages}\n"
        f"test ndcg@10 {test.get('ndcg@10', 0.0):.4f}, hr@10 {test.get('hr@10', 0.0):.4f} on "
        f"{test.get('n', 0)} users; published {report['published']['items']} items, "
        f"{report['published']['users']} users in {report['wall_s']:.1f} s"
    )


def run_command(run, as_json: bool) -> None:
    """Run a flow for a CLI command: its report as JSON or text, a user error as one line."""
    try:
        report = run()
    except (EmptyLogError, *FLOW_ERRORS) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(report, indent=2, default=str) if as_json else describe(report))


def bootstrap_command(
    schedule: Annotated[str, typer.Option(help="depth of each stage, e.g. 2,4,8")] = "2,4,8",
    epochs_per_stage: Annotated[
        float, typer.Option(min=0.01, help="passes over the log per stage")
    ] = 2.0,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Train a new model on the whole log, shallow first, stacking on a schedule; serve it."""
    from flows.cli import _flow_overrides, settings

    def run() -> dict[str, Any]:
        s = settings()
        stage_config(s, schedule, epochs_per_stage)  # a bad schedule fails first
        read_whole_log.fn(s)  # so does an empty log, before Prefect starts
        return bootstrap(
            overrides=_flow_overrides(s),
            schedule=schedule,
            epochs_per_stage=epochs_per_stage,
            progress=True,
        )

    run_command(run, as_json)
