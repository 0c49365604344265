"""The ``stackrec`` command line: the local stack, events in, cycles, recommendations, demo.

Thin: every command builds ``Settings`` once and calls a flow or a library function. A user
mistake (bad flag, missing file, service down) prints one ``error:`` line and exits 1;
tracebacks are for bugs. Prefect is imported only by the commands that run flows, so
``stackrec status`` and friends stay fast.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlparse

import typer

from flows.errors import user_errors
from flows.settings import SECRETS, Settings, SettingsError
from stackrec.datasets import read_interactions
from stackrec.synthetic import StreamConfig, generate
from streaming.events import Event
from streaming.producer import EventProducer, send_events
from streaming.serving import recommend as read_recommendation
from streaming.topics import ensure_topics

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Continual learning for sequential recommenders on event streams.",
)

_OVERRIDES: dict[str, Any] = {}


def settings(**overrides: Any) -> Settings:
    return Settings.load(**{**_OVERRIDES, **overrides})


def emit(payload: Any, as_json: bool, human: Callable[[Any], str]) -> None:
    typer.echo(json.dumps(payload, indent=2, default=str) if as_json else human(payload))


@app.callback()
def main(
    home: Annotated[Path | None, typer.Option(help="run directory [STACKREC_HOME]")] = None,
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap servers")] = None,
    topic: Annotated[str | None, typer.Option(help="interactions topic")] = None,
    redis_url: Annotated[str | None, typer.Option(help="redis:// or rediss:// URL")] = None,
    model: Annotated[
        str | None, typer.Option(help="model name (registry and Redis prefix)")
    ] = None,
) -> None:
    if home is not None:  # before Prefect is imported, so its state follows the run directory
        os.environ["STACKREC_HOME"] = str(home)
        os.environ["PREFECT_HOME"] = str(home.absolute() / "prefect")
    _OVERRIDES.update(
        home=home, kafka_bootstrap=bootstrap, topic=topic, redis_url=redis_url, model=model
    )


# --- the local stack ------------------------------------------------------------------------
@app.command()
@user_errors
def up(
    with_monitoring: Annotated[
        bool, typer.Option(help="also Prometheus (:9090) and the Pushgateway (:9091)")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Start the local broker and Redis (the demo's and tests' stack) and create the topics."""
    from streaming import stack

    s = settings()
    report = stack.up(s.run_dir, _kafka_address(s), _redis_address(s))
    ensure_topics(s.kafka(), s.topic, s.partitions)
    if with_monitoring:
        prometheus_port = s.prometheus_port
        config = stack.MonitoringConfig.of(
            s.pushgateway, s.metrics_host, s.metrics_port, prometheus_port
        )
        report |= stack.up_monitoring(s.run_dir, config)
        if not s.pushgateway:
            typer.echo("flow runs push metrics once STACKREC_PUSHGATEWAY=127.0.0.1:9091", err=True)
    emit(
        report,
        as_json,
        lambda r: "\n".join(f"{n}: {v['address']} (pid {v['pid']}) up" for n, v in r.items()),
    )


@app.command()
@user_errors
def down() -> None:
    """Stop exactly the local services `stackrec up` started."""
    from streaming import stack

    for name, was_running in stack.down(settings().run_dir).items():
        typer.echo(f"{name}: {'stopped' if was_running else 'was not running'}")


@app.command()
@user_errors
def status(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Health of the broker and Redis this configuration points at."""
    from streaming import stack

    s = settings()
    report = stack.health(s.run_dir, s.kafka(), s.redis())
    emit(
        report,
        as_json,
        lambda r: "\n".join(
            f"{n}: {v['address']} {'healthy' if v['healthy'] else 'DOWN'}"
            f"{' (started by stackrec, pid ' + str(v['pid']) + ')' if v.get('pid') else ''}"
            for n, v in r.items()
        ),
    )
    if not all(v["healthy"] for v in report.values()):
        raise typer.Exit(1)


# --- events in --------------------------------------------------------------------------------
@app.command()
@user_errors
def replay(
    data: Annotated[
        Path | None, typer.Argument(help="interaction file; omit for synthetic")
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="auto|movielens|inter|csv|parquet|lines")
    ] = "auto",
    limit: Annotated[int | None, typer.Option(min=1, help="send at most this many")] = None,
    rate: Annotated[float | None, typer.Option(min=1, help="events per second")] = None,
    synthetic_events: Annotated[int, typer.Option(min=1, help="synthetic stream length")] = 20_000,
    seed: Annotated[int, typer.Option(help="synthetic stream seed")] = 0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Send interaction events to the topic, keyed by user, from a file or a synthetic stream."""
    table = (
        read_interactions(data, fmt)
        if data is not None
        else generate(StreamConfig(n_events=synthetic_events, seed=seed))
    )
    if limit is not None:
        table = table.slice(0, limit)
    s = settings()
    sent = replay_table(s, table, rate)
    emit(
        {"sent": sent, "topic": s.topic, "source": str(data or "synthetic")},
        as_json,
        lambda r: f"sent {r['sent']} events from {r['source']} to {r['topic']}",
    )


def replay_table(s: Settings, table, rate: float | None = None, progress: bool = True) -> int:
    """Send a table of interactions (user_id, item_id, ts) in order; returns the count."""
    from tqdm import tqdm

    ensure_topics(s.kafka(), s.topic, s.partitions)
    events = (
        Event(u, i, t)
        for u, i, t in zip(
            table.column("user_id").to_pylist(),
            table.column("item_id").to_pylist(),
            table.column("ts").to_pylist(),
            strict=True,
        )
    )
    with (
        tqdm(
            total=table.num_rows, unit="ev", desc="replay", disable=not progress, file=sys.stderr
        ) as bar,
        EventProducer(s.kafka(), s.topic) as producer,
    ):
        return send_events(producer, events, rate, on_sent=bar.update)


# --- the cycle and serving ------------------------------------------------------------------
@app.command()
@user_errors
def cycle(
    max_events: Annotated[int | None, typer.Option(min=1, help="batch size bound")] = None,
    steps: Annotated[int | None, typer.Option(min=0, help="fine-tuning steps")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Run one continual cycle (a Prefect flow run): ingest, evaluate, fine-tune, publish."""
    from flows.cycle import continual_cycle

    s = settings(batch_max_events=max_events, train_steps=steps)
    report = continual_cycle(overrides=_flow_overrides(s))
    emit(report, as_json, describe_cycle)


@app.command()
@user_errors
def recommend(
    user_id: Annotated[str, typer.Argument(help="the user to recommend for")],
    k: Annotated[int, typer.Option("-k", min=1, help="how many items")] = 10,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Read a user's recommendations from Redis, as a serving service would."""
    rec = read_recommendation(settings().redis(), user_id, k)
    emit(
        {"user_id": rec.user_id, "version": rec.version, "source": rec.source, "items": rec.items},
        as_json,
        lambda r: (
            f"user {r['user_id']} (version {r['version']}, {r['source']}): " + " ".join(r["items"])
        ),
    )


@app.command()
@user_errors
def demo(
    dataset: Annotated[Path | None, typer.Option(help="a real interaction file to replay")] = None,
    fmt: Annotated[str, typer.Option("--format")] = "auto",
    events: Annotated[int, typer.Option(min=100, help="events to replay")] = 20_000,
    cycles: Annotated[int, typer.Option(min=1, help="continual cycles")] = 4,
    steps: Annotated[int, typer.Option(min=0, help="fine-tuning steps per cycle")] = 100,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Bring the stack up, stream events in, run cycles, read a recommendation back.

    It runs as model "demo" on topic "demo" (unless --model or --topic say otherwise) and
    starts each run from an empty log and registry for them."""
    from flows.demo import run_demo

    names = {"model": _OVERRIDES.get("model") or "demo", "topic": _OVERRIDES.get("topic") or "demo"}
    summary = run_demo(settings(train_steps=steps, **names), dataset, fmt, events, cycles)
    emit(summary, as_json, lambda s: s["text"])


@app.command("adopt-topic")
@user_errors
def adopt_topic() -> None:
    """Continue the log on a recreated topic onto which the same stream was produced again
    (same keys in the same order, so the same offsets); ingest refuses a new topic until then."""
    from streaming.log import InteractionLog, LogError
    from streaming.topics import topic_id

    s = settings()
    found = topic_id(s.kafka(), s.topic)
    if found is None:
        raise LogError(f"topic {s.topic!r} does not exist at {s.kafka_bootstrap}")
    InteractionLog(s.log_dir).adopt_topic(found)
    typer.echo(f"the log in {s.log_dir} follows topic {s.topic!r} (id {found}) from now on")


def describe_cycle(r: dict[str, Any]) -> str:
    e = r["events"]
    head = (
        f"cycle {r['outcome']}: read {e.get('read', 0)}, logged {e.get('logged', 0)}, "
        f"dead-lettered {e.get('dead_lettered', 0)}, trained on {e.get('to_train', 0)}"
    )
    if r["outcome"] == "superseded":
        return f"{head}\n{r['gate']['superseded']}"
    if r["outcome"] != "published":
        return head
    q = r["prequential"]["all"]
    return (
        f"{head}\nversion {r['version']} (parent {r['parent']}), depth "
        f"{r['model_shape']['depth']}, {r['model_shape']['items']} items\n"
        f"prequential on {q['n']} events: HR@10 {q['hr@10']:.4f}  NDCG@10 "
        f"{q['ndcg@10']:.4f}  MRR@10 {q['mrr@10']:.4f}\n"
        f"published {r['published']['items']} item and {r['published']['users']} user "
        f"vectors under {r['published']['prefix']}:v{r['version']} in {r['wall_s']:.1f} s"
    )


def _flow_overrides(s: Settings) -> dict[str, Any]:
    """The settings a flow run needs, as JSON-able parameters; secrets stay in the environment
    (Prefect records parameters)."""
    return {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in s.model_dump(exclude_defaults=True, exclude=SECRETS).items()
    }


def _kafka_address(s: Settings) -> tuple[str, int]:
    host, _, port = s.kafka_bootstrap.split(",")[0].rpartition(":")
    if not port.isdigit():
        raise SettingsError(f"STACKREC_KAFKA_BOOTSTRAP={s.kafka_bootstrap!r}: expected host:port")
    return host or "127.0.0.1", int(port)


def _redis_address(s: Settings) -> tuple[str, int]:
    url = urlparse(s.redis_url)
    return url.hostname or "127.0.0.1", url.port or 6379


# --- commands that live in their own modules (they read settings through this module) ------
from flows import models, offline, report, serve  # noqa: E402

app.command(name="train")(user_errors(offline.train))
app.command(name="evaluate")(user_errors(offline.evaluate))
app.command(name="serve")(user_errors(serve.serve))
app.command(name="report")(user_errors(report.report))
app.add_typer(models.app, name="models")
from flows import bootstrap, ingest, transfer  # noqa: E402  (flows: import Prefect)

app.command(name="ingest")(user_errors(ingest.ingest_command))
app.command(name="bootstrap")(user_errors(bootstrap.bootstrap_command))
app.command(name="transfer")(user_errors(transfer.transfer_command))
from flows import dlq  # noqa: E402

app.add_typer(dlq.app, name="dlq", help="Inspect and replay dead-lettered messages.")
