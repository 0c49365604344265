"""Events into the log without training, as a flow and as ``stackrec ingest``:

    Kafka -> bounded batches, exactly once, until caught up -> the interaction log

What a bootstrap (training from scratch) or a transfer needs first when the events are on the
topic but no cycle has consumed them. The batches are the cycle's (same consumer group, same
guarantees, dead letters and metrics); nothing is trained, registered or published.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any

import typer
from prefect import flow
from tqdm import tqdm

from flows.pushed import pushed_metrics
from flows.settings import Settings
from streaming.consumer import IngestResult, ingest_pending
from streaming.log import InteractionLog
from streaming.topics import require_broker

COUNTS = ("read", "logged", "skipped", "dead_lettered", "duplicates")


@flow(name="ingest")
def ingest(overrides: dict[str, Any] | None = None, progress: bool = False) -> dict[str, Any]:
    """Every event pending on the topic into the log; a summary of the batches."""
    settings = Settings.load(**(overrides or {}))
    log = InteractionLog(settings.log_dir)
    started = time.perf_counter()
    bar = tqdm(unit="event", desc="ingest", file=sys.stderr, disable=not progress)

    def on_batch(result: IngestResult) -> None:
        bar.total = bar.n + result.read + result.lag
        bar.update(result.read)

    try:
        with pushed_metrics(settings):
            results = ingest_pending(settings.kafka(), settings.consumer(), log, on_batch)
    finally:
        bar.close()
    manifest = log.manifest()
    return {
        "topic": settings.topic,
        "batches": len(results),
        **{key: sum(getattr(r, key) for r in results) for key in COUNTS},
        "lag": results[-1].lag,
        "log_events": sum(segment.rows for segment in manifest.segments),
        "log_through": manifest.ingested_through,
        "wall_s": round(time.perf_counter() - started, 3),
    }


def describe(report: dict[str, Any]) -> str:
    return (
        f"ingested {report['batches']} batch(es) from {report['topic']}: read {report['read']}, "
        f"logged {report['logged']}, dead-lettered {report['dead_lettered']}, already logged "
        f"{report['skipped']}; the log holds {report['log_events']} events, lag "
        f"{report['lag']} ({report['wall_s']:.1f} s)"
    )


def ingest_command(
    max_events: Annotated[int | None, typer.Option(min=1, help="bound of one batch")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Consume the events pending on the topic into the log, without training (before a
    bootstrap or transfer)."""
    from flows.cli import _flow_overrides, settings

    s = settings(batch_max_events=max_events)
    require_broker(s.kafka())  # a user's mistake fails in one line, before Prefect starts
    report = ingest(overrides=_flow_overrides(s), progress=not as_json)
    typer.echo(json.dumps(report, indent=2) if as_json else describe(report))
