"""The demo: the whole product on the local stack, in a few minutes, with a readable summary.

stackrec up -> replay a stream in chunks -> after each chunk, one continual cycle
-> read a recommendation back from Redis -> where the models and metrics are
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from flows.cli import _flow_overrides, _kafka_address, _redis_address, replay_table
from flows.cycle import continual_cycle
from flows.settings import Settings
from monitoring import metrics
from stackrec.datasets import read_interactions
from stackrec.synthetic import StreamConfig, generate
from streaming import stack
from streaming.serving import recommend
from streaming.topics import ensure_topics


def run_demo(
    settings: Settings, dataset: Path | None, fmt: str, n_events: int, cycles: int
) -> dict[str, Any]:
    started = time.perf_counter()
    say = lambda text: tqdm.write(text, file=sys.stderr)  # noqa: E731
    for earlier in (settings.log_dir, settings.models_dir):
        if earlier.exists():  # its offsets name a broker that kept its topics in memory
            shutil.rmtree(earlier)
            say(f"removed an earlier demo's {earlier}")
    say(f"starting the local stack in {settings.run_dir}")
    stack.up(settings.run_dir, _kafka_address(settings), _redis_address(settings))
    ensure_topics(settings.kafka(), settings.topic, settings.partitions)
    table = (
        read_interactions(dataset, fmt) if dataset else generate(StreamConfig(n_events=n_events))
    ).slice(0, n_events)
    chunk = math.ceil(table.num_rows / cycles)
    overrides = _flow_overrides(settings) | {"batch_max_events": chunk, "batch_max_wait_s": 10}
    reports = []
    for index in tqdm(range(cycles), desc="cycles", unit="cycle", file=sys.stderr):
        part = table.slice(index * chunk, chunk)
        replay_table(settings, part, progress=False)
        report = continual_cycle(overrides=overrides)
        reports.append(report)
        q = report["prequential"].get("all", {})
        say(
            f"cycle {index + 1}: {report['events']['logged']} events logged, version "
            f"{report['version']}, prequential NDCG@10 {q.get('ndcg@10', 0):.4f} "
            f"(HR@10 {q.get('hr@10', 0):.4f}) in {report['wall_s']:.1f} s"
        )
    user = str(table.column("user_id")[table.num_rows - 1])
    rec = recommend(settings.redis(), user, 10)
    metrics_file = settings.home / "metrics.prom"
    metrics_file.write_bytes(metrics.exposition())
    summary = {
        "source": str(dataset or "synthetic"),
        "events": table.num_rows,
        "cycles": [_row(r) for r in reports],
        "recommendation": {"user_id": user, "version": rec.version, "items": rec.items},
        "model": settings.model,
        "models": str(settings.models_dir),
        "log": str(settings.log_dir),
        "metrics": str(metrics_file),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    summary["text"] = _text(summary)
    return summary


def _row(report: dict[str, Any]) -> dict[str, Any]:
    q = report["prequential"].get("all", {})
    return {
        "version": report["version"],
        "events": report["events"]["logged"],
        "dead_lettered": report["events"]["dead_lettered"],
        "hr@10": q.get("hr@10"),
        "ndcg@10": q.get("ndcg@10"),
        "mrr@10": q.get("mrr@10"),
        "items": report["model_shape"].get("items"),
        "depth": report["model_shape"].get("depth"),
        "wall_s": report["wall_s"],
    }


def _text(s: dict[str, Any]) -> str:
    lines = [
        f"stackrec demo: {s['events']} events from {s['source']} in {len(s['cycles'])} "
        f"cycles, {s['wall_s']} s",
        "",
        "version  events  items  depth  HR@10   NDCG@10  MRR@10  (prequential: scored "
        "before training on the batch)",
    ]
    for c in s["cycles"]:
        lines.append(
            f"v{c['version']:<7} {c['events']:>6}  {c['items'] or 0:>5}  "
            f"{c['depth'] or 0:>5}  {c['hr@10'] or 0:.4f}  {c['ndcg@10'] or 0:.4f}   "
            f"{c['mrr@10'] or 0:.4f}"
        )
    r = s["recommendation"]
    lines += [
        "",
        f"recommend {r['user_id']} (read from Redis, version {r['version']}): "
        + " ".join(r["items"]),
        f"models:  {s['models']}",
        f"log:     {s['log']}",
        f"metrics: {s['metrics']} (Prometheus text format)",
        f"next:    stackrec --model {s['model']} recommend <user>, stackrec status, stackrec down",
    ]
    return "\n".join(lines)
