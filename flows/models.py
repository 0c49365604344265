"""`stackrec models list|show|promote|rollback`: the registry as on-call engineers use it.

Promote and rollback move the registry pointer and Redis ``current`` together. When the target
version's keys are still in Redis (within the grace period) that is one pointer flip; when they
have expired, its vectors and recommendations are recomputed from the log and republished first.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer

from flows.cycle import snapshot_of
from flows.errors import user_errors
from flows.pushed import pushed_metrics
from flows.settings import Settings
from monitoring import metrics
from stackrec import continual
from stackrec.registry import Registry
from streaming.log import InteractionLog
from streaming.redis_store import NotPublished, Snapshot, publish, set_current

app = typer.Typer(no_args_is_help=True, help="Inspect, promote and roll back model versions.")


def _settings() -> Settings:
    from flows.cli import settings

    return settings()


def _print(payload: Any, as_json: bool, text: str) -> None:
    typer.echo(json.dumps(payload, indent=2, default=str) if as_json else text)


@app.command("list")
@user_errors
def list_versions(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every version with its status, depth and prequential NDCG@10."""
    registry = _settings().registry()
    current = registry.current()
    rows = [_summary(registry.meta(v), current) for v in registry.versions()]
    lines = [f"{'':2}{'version':>8} {'status':<12} {'depth':>5} {'events':>8} {'NDCG@10':>8}"]
    lines += [
        f"{'*' if r['serving'] else ' ':2}{r['version']:>8} {r['status']:<12} "
        f"{r['depth']:>5} {r['events_trained']:>8} {r['ndcg@10']:>8.4f}"
        for r in rows
    ]
    _print(rows, as_json, "\n".join(lines) if rows else "no versions yet: run `stackrec cycle`")


@app.command()
@user_errors
def show(version: int, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """A version's lineage, metrics, growth and gate decisions."""
    meta = _settings().registry().meta(version)
    _print(meta, as_json, json.dumps(meta, indent=2, default=str))


@app.command()
@user_errors
def promote(version: int) -> None:
    """Serve ``version`` (any stored version, also a rejected one, by a human decision)."""
    s = _settings()
    with pushed_metrics(s):
        seconds = serve_version(s, version)
    typer.echo(f"version {version} serves now (pointer moved in {seconds * 1000:.0f} ms)")


@app.command()
@user_errors
def rollback() -> None:
    """Serve the version promoted before the current one (Redis first: if it fails, the
    registry still names the version readers get)."""
    s = _settings()
    registry = s.registry()
    with pushed_metrics(s), registry.serving_lock():
        target = registry.rollback_target()
        seconds = _point_redis(s, registry, target)
        registry.rollback()
    typer.echo(f"rolled back to version {target} (Redis current moved in {seconds * 1000:.0f} ms)")


def serve_version(s: Settings, version: int) -> float:
    registry = s.registry()
    registry.meta(version)  # raises if missing
    with registry.serving_lock():
        seconds = _point_redis(s, registry, version)
        registry.promote(version)
    return seconds


def _point_redis(s: Settings, registry: Registry, version: int) -> float:
    """Flip Redis ``current`` to ``version``, republishing it first if its keys expired."""
    started = time.perf_counter()
    try:
        set_current(s.redis(), version)
    except NotPublished:
        publish(s.redis(), _snapshot(s, registry, version))
    seconds = time.perf_counter() - started
    metrics.PUBLISHED_VERSION.labels(s.model).set(version)
    return seconds


def _snapshot(s: Settings, registry: Registry, version: int) -> Snapshot:
    """Vectors and top-K of ``version``, recomputed from the log it was trained on."""
    learner = continual.resume_version(registry, version)
    history = InteractionLog(s.log_dir).read(through=learner.trained_through)
    data = continual.prepare(learner, history, history.schema.empty_table(), holdout_share=0.0)
    config = continual.CycleConfig(top_k=s.top_k, publish_users=s.publish_users)
    recs = continual.recommendations(learner, data, config)
    return snapshot_of(version, recs, {"model": s.model, "republished": 1})


def _summary(meta: dict[str, Any], current: int | None) -> dict[str, Any]:
    return {
        "version": meta["version"],
        "serving": meta["version"] == current,
        "status": meta.get("status", "?"),
        "depth": meta.get("depth", 0),
        "events_trained": meta.get("events_trained", 0),
        "ndcg@10": (meta.get("prequential") or {}).get("all", {}).get("ndcg@10", 0.0),
        "parent": meta.get("parent"),
        "reason": meta.get("reason"),
    }
