"""The continual cycle, as the data-flow picture draws it:

    consume -> validate -> log -> commit   (streaming.consumer.ingest_batch)
    -> grow vocabulary, build sequences -> prequential evaluation -> maybe stack
       -> imprint new items -> fine-tune -> gate   (stackrec.loop.learn_cycle)
    -> register the candidate -> publish to Redis, flip current -> promote -> metrics

Publishing comes before promotion: if Redis fails, the registry's serving version, Redis
``current`` and the log's trained-through cursor all stay where they were, and the next cycle
redoes the work from the log. Each task calls one library function; retries only on the
network edges, never on bad data.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.pushed import push_metrics, restore_metrics
from flows.settings import Settings
from monitoring import metrics
from stackrec import continual
from stackrec.continual import CycleConfig, CycleData, Learner, Recommendations
from stackrec.gate import GateConfig
from stackrec.loop import CycleOutcome, LoopConfig, learn_cycle
from stackrec.registry import Registry
from streaming.consumer import IngestResult, ingest_batch
from streaming.log import InteractionLog
from streaming.redis_store import ServingUnavailable, Snapshot, publish
from streaming.topics import BrokerUnavailable

_NETWORK = {
    "retries": 2,
    "retry_delay_seconds": [2, 10],
    "cache_policy": NO_CACHE,
    "retry_condition_fn": lambda task, run, state: _is_transient(state),
}
_LOCAL = {"cache_policy": NO_CACHE}


@dataclass
class CycleReport:
    model: str
    outcome: str  # published | rejected | noop
    version: int | None = None
    parent: int | None = None
    events: dict[str, Any] = field(default_factory=dict)
    offsets: dict[str, Any] = field(default_factory=dict)
    prequential: dict[str, dict[str, float]] = field(default_factory=dict)
    growth: dict[str, Any] = field(default_factory=dict)
    training: dict[str, float] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)
    model_shape: dict[str, int] = field(default_factory=dict)
    published: dict[str, Any] = field(default_factory=dict)
    stages_s: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0


@flow(name="continual-cycle")
def continual_cycle(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """One cycle; ``overrides`` are settings (as the CLI flags or deployment parameters)."""
    settings = Settings.load(**(overrides or {}))
    report = CycleReport(model=settings.model, outcome="noop")
    clock = _StageClock(settings.model, report.stages_s)
    started = time.perf_counter()
    restore_metrics(settings)
    try:
        ingested = ingest(settings, clock)
        report.events = _event_counts(ingested)
        report.offsets = {"batch": ingested.offsets, "committed": ingested.committed}
        learner = load_learner(settings)
        report.parent = learner.parent
        history, fresh, through = read_log(settings, learner.trained_through)
        report.events["to_train"] = fresh.num_rows
        if fresh.num_rows:
            _learn(settings, learner, history, fresh, through, report, clock)
        metrics.CYCLES.labels(settings.model, report.outcome).inc()
        metrics.LAST_SUCCESS.labels(settings.model).set_to_current_time()
    except Exception:
        metrics.CYCLES.labels(settings.model, "failed").inc()
        raise
    finally:
        report.wall_s = round(time.perf_counter() - started, 3)
        metrics.CYCLE_DURATION.labels(settings.model).observe(report.wall_s)
        push_metrics(settings)
    return asdict(report)


def _learn(
    settings: Settings,
    learner: Learner,
    history: pa.Table,
    fresh: pa.Table,
    through: int,
    report: CycleReport,
    clock: _StageClock,
) -> None:
    """learn (evaluate -> maybe stack -> fine-tune -> gate) -> register -> publish -> promote."""
    outcome = learn(settings, learner, history, fresh, clock)
    candidate = outcome.candidate
    report.prequential, report.growth = outcome.prequential, outcome.growth
    report.training = _training_figures(outcome) | {"imprinted_items": outcome.imprinted}
    report.gate = {
        **asdict(outcome.verdict),
        "holdout_candidate": outcome.holdout["candidate"],
        "holdout_serving": outcome.holdout["serving"],
    }
    report.model_shape = _shape(candidate)
    _record_decisions(settings.model, outcome)
    with clock("register"):
        version = register(settings, candidate, report, through, fresh)
    report.version = version
    registry = settings.registry()
    if not outcome.promoted:
        registry.reject(version, outcome.verdict.reason)
        report.outcome = "rejected"
        return
    with registry.serving_lock():  # a bootstrap, transfer or rollback waits, or went first
        moved = _serving_moved(registry, learner.parent)
        if moved:
            registry.reject(version, moved)
            report.outcome, report.gate["superseded"] = "superseded", moved
            return
        with clock("publish"):
            report.published = publish_version(settings, candidate, outcome.data, version)
        promote(settings, version, through)
    report.outcome = "published"
    _record_model(settings.model, report, fresh)


def _serving_moved(registry: Registry, started_from: int | None) -> str | None:
    """Why the cycle must not promote (what serves is no longer the model it started from:
    a bootstrap, transfer, promote or rollback went first), or None."""
    serving = registry.current()
    if serving == started_from:
        return None
    return (
        f"superseded: v{serving} started serving during the cycle, which started from "
        f"{'nothing' if started_from is None else f'v{started_from}'}; the next cycle "
        f"continues from v{serving}"
    )


# --- tasks: each calls one library function -------------------------------------------------
@task(**_NETWORK)
def ingest(settings: Settings, clock: _StageClock) -> IngestResult:
    return ingest_batch(
        settings.kafka(),
        settings.consumer(),
        InteractionLog(settings.log_dir),
        on_stage=clock.record,
    )


@task(**_LOCAL)
def load_learner(settings: Settings) -> Learner:
    return continual.resume(settings.registry(), cycle_config(settings))


@task(**_LOCAL)
def read_log(settings: Settings, trained_through: int) -> tuple[pa.Table, pa.Table, int]:
    """Events the learner has trained on, events it has not, and the last segment id."""
    log = InteractionLog(settings.log_dir)
    through = log.manifest().ingested_through
    return log.read(through=trained_through), log.read(after=trained_through), through


@task(**_LOCAL)
def learn(
    settings: Settings, learner: Learner, history: pa.Table, fresh: pa.Table, clock: _StageClock
) -> CycleOutcome:
    """The cycle's learning sequence (``stackrec.loop``); stages timed into the report."""
    return learn_cycle(learner, history, fresh, loop_config(settings), on_stage=clock.record)


@task(**_LOCAL)
def register(
    settings: Settings, learner: Learner, report: CycleReport, through: int, fresh: pa.Table
) -> int:
    meta = {
        "model": settings.model,
        "trained_through": through,
        "offsets": report.offsets.get("batch", {}),
        "events_trained": fresh.num_rows,
        "newest_event_ms": int(pc.max(fresh.column("ts")).as_py()),
        "prequential": report.prequential,
        "training": report.training,
        "depth": learner.model.depth,
        "growth": report.growth,
        "gate": report.gate,
        "stages_s": dict(report.stages_s),  # up to registration; publish follows
    }
    version = continual.save(settings.registry(), learner, meta)
    learner.parent = version
    return version


@task(**_NETWORK)
def publish_version(
    settings: Settings, learner: Learner, data: CycleData, version: int
) -> dict[str, Any]:
    recs = continual.recommendations(learner, data, cycle_config(settings))
    snapshot = snapshot_of(version, recs, {"model": settings.model, "depth": learner.model.depth})
    redis = settings.redis()
    started = time.perf_counter()
    try:
        publish(redis, snapshot)
    except ServingUnavailable:
        metrics.PUBLISH_FAILURES.labels(settings.model).inc()
        raise
    seconds = time.perf_counter() - started
    metrics.PUBLISH_DURATION.labels(settings.model).observe(seconds)
    metrics.PUBLISHED_VECTORS.labels(settings.model, "items").inc(len(recs.item_ids))
    metrics.PUBLISHED_VECTORS.labels(settings.model, "users").inc(len(recs.user_ids))
    return {
        "version": version,
        "prefix": redis.prefix,
        "items": len(recs.item_ids),
        "users": len(recs.user_ids),
        "k": settings.top_k,
        "dim": int(recs.item_vectors.shape[1]),
        "seconds": round(seconds, 3),
    }


def snapshot_of(version: int, recs: Recommendations, meta: dict[str, Any]) -> Snapshot:
    """What ``version`` publishes to Redis: its vectors and top-K lists."""
    return Snapshot(
        version,
        recs.item_ids,
        recs.item_vectors,
        recs.user_ids,
        recs.user_vectors,
        recs.top_k,
        recs.popular,
        meta=meta,
    )


@task(**_LOCAL)
def promote(settings: Settings, version: int, through: int) -> None:
    registry = settings.registry()
    registry.promote(version)
    InteractionLog(settings.log_dir).mark_trained(through)
    metrics.REGISTRY_VERSIONS.labels(settings.model).set(len(registry.versions()))
    metrics.PUBLISHED_VERSION.labels(settings.model).set(version)


# --- helpers ------------------------------------------------------------------------------
class _StageClock:
    """Times stages into the report and the stage-duration histogram."""

    def __init__(self, model: str, into: dict[str, float]) -> None:
        self.model, self.into = model, into

    @contextmanager
    def __call__(self, stage: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.record(stage, time.perf_counter() - started)

    def record(self, stage: str, seconds: float) -> None:
        self.into[stage] = round(self.into.get(stage, 0.0) + seconds, 4)
        metrics.STAGE_DURATION.labels(self.model, stage).observe(seconds)


def loop_config(settings: Settings) -> LoopConfig:
    return LoopConfig(
        cycle=cycle_config(settings),
        growth_policy=settings.growth_policy,
        growth_factor=settings.growth_factor,
        max_depth=settings.max_depth,
        stack_operator=settings.stack_operator,
        stack_mode=settings.stack_mode,
        gate=GateConfig(tolerance=settings.gate_tolerance),
    )


def _record_decisions(model: str, outcome: CycleOutcome) -> None:
    growth = outcome.growth
    metrics.GROWTH_DECISIONS.labels(
        model, growth["policy"], "stack" if growth["grow"] else "keep"
    ).inc()
    if growth["event"]:
        event = growth["event"]
        metrics.STACKING_EVENTS.labels(model, event["operator"], event["mode"]).inc()
    metrics.GATE_DECISIONS.labels(model, "promoted" if outcome.promoted else "rejected").inc()


def cycle_config(settings: Settings) -> CycleConfig:
    return CycleConfig(
        kind=settings.model_kind,
        replay_ratio=settings.replay_ratio,
        holdout_share=settings.holdout_share,
        anneal_share=settings.anneal_share,
        anneal_fresh_share=settings.anneal_fresh_share,
        dim=settings.dim,
        blocks=settings.blocks,
        max_len=settings.max_len,
        train_steps=settings.train_steps,
        train_epochs=settings.train_epochs or None,
        cold_start_epochs=settings.cold_start_epochs,
        imprint=settings.imprint_new_items,
        batch_size=settings.batch_size,
        lr=settings.lr,
        scratch_lr=settings.scratch_lr,
        loss=settings.loss,
        sampled_above=settings.sampled_above,
        n_negatives=settings.negatives,
        top_k=settings.top_k,
        publish_users=settings.publish_users,
        seed=settings.seed,
    )


def _training_figures(outcome: CycleOutcome) -> dict[str, Any]:
    """The cycle's steps, targets and seconds over every training phase (fine-tune, top-up,
    cool-down), the fine-tune's mean loss (the one comparable from cycle to cycle), and each
    phase's own figures."""
    phases = outcome.training
    tuned = phases.get("fine_tune")
    return {
        "steps": sum(r.steps for r in phases.values()),
        "targets": outcome.train_targets,
        "mean_loss": tuned.mean_loss if tuned else 0.0,
        "seconds": outcome.train_seconds,
        "targets_per_s": outcome.train_targets / max(outcome.train_seconds, 1e-9),
        "phases": {phase: asdict(result) for phase, result in phases.items()},
    }


def _event_counts(ingested: IngestResult) -> dict[str, Any]:
    return {
        "read": ingested.read,
        "logged": ingested.logged,
        "dead_lettered": ingested.dead_lettered,
        "skipped_already_logged": ingested.skipped,
        "dead_letter_reasons": ingested.reasons,
        "lag": ingested.lag,
        "segment": ingested.segment,
    }


def _shape(learner: Learner) -> dict[str, int]:
    return {
        "depth": learner.model.depth,
        "dim": learner.model.config.dim,
        "items": len(learner.vocab) - 1,
        "parameters": sum(p.numel() for p in learner.model.parameters()),
    }


def _record_model(model: str, report: CycleReport, fresh: pa.Table) -> None:
    for items, values in report.prequential.items():
        metrics.PREQUENTIAL_HR.labels(model, items).set(values.get("hr@10", 0.0))
        metrics.PREQUENTIAL_NDCG.labels(model, items).set(values.get("ndcg@10", 0.0))
        metrics.PREQUENTIAL_MRR.labels(model, items).set(values.get("mrr@10", 0.0))
    metrics.TRAINING_LOSS.labels(model).set(report.training.get("mean_loss", float("nan")))
    metrics.TRAINING_EXAMPLES.labels(model).inc(report.training.get("targets", 0))
    metrics.MODEL_DEPTH.labels(model).set(report.model_shape["depth"])
    metrics.MODEL_PARAMETERS.labels(model).set(report.model_shape["parameters"])
    metrics.VOCABULARY_ITEMS.labels(model).set(report.model_shape["items"])
    newest_s = pc.max(fresh.column("ts")).as_py() / 1000
    metrics.FRESHNESS.labels(model).set(max(0.0, time.time() - newest_s))


def _is_transient(state) -> bool:
    """Retry only when the broker or Redis was unreachable, never on bad data or bugs."""
    try:
        state.result()
    except (BrokerUnavailable, ServingUnavailable):
        return True
    except Exception:
        return False
    return False
