"""The bootstrap and transfer scenarios end to end: log -> progressive stacking -> registry ->
Redis -> `stackrec recommend`, and the one-line errors of a user with nothing to train on."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.csv
import pytest
import torch
from typer.testing import CliRunner

from flows.cli import app
from flows.settings import Settings
from stackrec import continual
from stackrec.checkpoint import from_payload
from stackrec.continual import CycleConfig
from stackrec.loop import LoopConfig, learn_cycle
from stackrec.registry import Registry
from stackrec.synthetic import StreamConfig, generate
from streaming.events import LOG_SCHEMA
from streaming.log import InteractionLog
from streaming.serving import current_version, read_vectors

pytestmark = pytest.mark.integration
SMALL = {"dim": 16, "max_len": 20, "batch_size": 64}


def fill_log(settings: Settings, table: pa.Table) -> None:
    """Events straight into the log, as the consumer would have written them."""
    n = table.num_rows
    rows = {
        "user_id": table.column("user_id"),
        "item_id": table.column("item_id"),
        "ts": table.column("ts"),
        "event_type": pa.nulls(n, pa.string()),
        "weight": pa.nulls(n, pa.float64()),
        "partition": pa.array(np.zeros(n, np.int32)),
        "offset": pa.array(np.arange(n, dtype=np.int64)),
    }
    InteractionLog(settings.log_dir).append(pa.table(rows, schema=LOG_SCHEMA), {0: (0, n - 1)})


def test_bootstrap_stacks_on_schedule_publishes_and_serves(stack, prefect_harness, monkeypatch):
    for key, value in SMALL.items():
        monkeypatch.setenv(f"STACKREC_{key.upper()}", str(value))
    settings = Settings.load()
    table = generate(StreamConfig(n_events=1_500, n_users=60, n_items=150, seed=3))
    fill_log(settings, table)

    result = CliRunner().invoke(
        app, ["bootstrap", "--schedule", "1,2,4", "--epochs-per-stage", "1", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{") :])
    assert [s["depth"] for s in report["stages"]] == [1, 2, 4]
    assert report["version"] == 1 and report["depth"] == 4

    registry = settings.registry()
    assert registry.current() == 1
    meta = registry.meta(1)
    assert meta["trained_through"] == 1 and meta["events_trained"] == 1_500
    assert [(e["from_depth"], e["to_depth"]) for e in meta["stacking"]] == [(1, 2), (2, 4)]
    model, _, _, extra = from_payload(registry.load(1))
    assert model.depth == 4 and len(model.config.lineage) == 2  # in the checkpoint too
    assert extra["observations"][0]["events_seen"] == 1_500
    assert InteractionLog(settings.log_dir).manifest().trained_through == 1

    assert current_version(stack.redis) == 1
    _, items = read_vectors(stack.redis, "items")
    assert set(items) == set(table.column("item_id").to_pylist())
    user = table.column("user_id")[0].as_py()
    served = CliRunner().invoke(app, ["recommend", user, "-k", "5", "--json"])
    assert served.exit_code == 0, served.output
    answer = json.loads(served.stdout)
    assert answer["version"] == 1 and answer["source"] == "personal" and len(answer["items"]) == 5


def test_transfer_by_ids_maps_shared_items_and_serves_the_target(
    stack, prefect_harness, tmp_path, monkeypatch
):
    for key, value in SMALL.items():
        monkeypatch.setenv(f"STACKREC_{key.upper()}", str(value))
    source = generate(StreamConfig(n_events=1_200, n_users=50, n_items=100, seed=1))
    target = generate(StreamConfig(n_events=800, n_users=40, n_items=100, seed=2))
    # target items i0..i49 keep their ids (shared with the source); the rest get new ones
    renamed = [i if int(i[1:]) < 50 else f"t{i}" for i in target.column("item_id").to_pylist()]
    target = target.set_column(1, "item_id", pa.array(renamed))
    source_path, target_path = tmp_path / "source.csv", tmp_path / "target.csv"
    pyarrow.csv.write_csv(source, source_path)
    pyarrow.csv.write_csv(target, target_path)
    target_items = set(renamed)
    shared = {i for i in target_items if i in set(source.column("item_id").to_pylist())}

    result = CliRunner().invoke(
        app,
        ["transfer", "--source", str(source_path), "--target", str(target_path), "--map", "ids",
         "--schedule", "1,2", "--epochs-per-stage", "1", "--source-epochs", "1", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{") :])
    assert report["mapping"]["mapped"] == len(shared) > 0
    assert report["mapping"]["target_items"] == len(target_items)
    assert report["mapping"]["coverage"] == pytest.approx(len(shared) / len(target_items), 1e-3)
    assert report["source"]["depth"] == 1 and report["depth"] == 2
    assert report["stacking"][-1]["to_depth"] == 2
    assert Settings.load().registry().current() == report["version"]
    _, items = read_vectors(stack.redis, "items")
    assert set(items) == target_items  # the target's catalogue is served, new items included
    # the log was not the target: its cursor stays where it was
    assert InteractionLog(Settings.load().log_dir).manifest().trained_through == 0


def test_events_on_the_topic_reach_a_bootstrap_through_ingest(stack, prefect_harness, monkeypatch):
    """The from-scratch scenario as a user runs it: replay -> ingest (no training) -> bootstrap."""
    for key, value in SMALL.items():
        monkeypatch.setenv(f"STACKREC_{key.upper()}", str(value))
    cli = CliRunner()
    sent = cli.invoke(app, ["replay", "--synthetic-events", "900", "--json"])
    assert sent.exit_code == 0, sent.output

    ingested = cli.invoke(app, ["ingest", "--max-events", "400", "--json"])
    assert ingested.exit_code == 0, ingested.output
    report = json.loads(ingested.stdout)
    assert report["batches"] >= 3 and report["logged"] == 900 and report["lag"] == 0
    assert report["log_events"] == 900
    assert Settings.load().registry().current() is None  # nothing trained

    again = json.loads(cli.invoke(app, ["ingest", "--json"]).stdout)
    assert again["logged"] == 0 and again["log_events"] == 900

    result = cli.invoke(
        app, ["bootstrap", "--schedule", "1,2", "--epochs-per-stage", "1", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert Settings.load().registry().meta(1)["events_trained"] == 900


def test_ingest_with_the_broker_down_is_a_one_line_error(stack, monkeypatch):
    monkeypatch.setenv("STACKREC_KAFKA_BOOTSTRAP", "127.0.0.1:9")
    result = CliRunner().invoke(app, ["ingest"])
    assert result.exit_code == 1
    assert result.output.startswith("error: no Kafka broker at 127.0.0.1:9: start one")
    assert len(result.output.strip().splitlines()) == 1


def test_bootstrap_on_an_empty_log_is_a_one_line_error(stack):
    result = CliRunner().invoke(app, ["bootstrap"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the interaction log")
    assert Settings.load().registry().current() is None


def test_bootstrap_rejects_a_schedule_stacking_cannot_follow(stack):
    result = CliRunner().invoke(app, ["bootstrap", "--schedule", "4,2"])
    assert result.exit_code == 1
    assert result.output.strip() == "error: schedule (4, 2): depths must increase"


def test_learn_cycle_leaves_the_serving_learner_alone_when_the_gate_rejects(tmp_path):
    """The benchmark's in-process loop keeps the flow's promise: a rejected candidate changes
    nothing the caller holds (weights, vocabulary), and the next cycle redoes the events."""
    table = generate(StreamConfig(n_events=2_000, n_users=80, n_items=200, seed=4))
    cycle = CycleConfig(dim=16, max_len=20, train_steps=10, holdout_share=0.2)
    config = LoopConfig(cycle=cycle)
    empty = table.schema.empty_table()
    first = learn_cycle(continual.resume(Registry(tmp_path), cycle), empty, table[:1_000], config)
    assert first.promoted and first.verdict.reason.startswith("first model")
    serving = first.learner
    weights = {k: v.clone() for k, v in serving.model.state_dict().items()}
    items = len(serving.vocab)

    sabotaged = replace(config, cycle=replace(cycle, lr=1e4))
    bad = learn_cycle(serving, table[:1_000], table[1_000:], sabotaged)
    assert not bad.promoted and "diverged" in bad.verdict.reason
    assert bad.learner is serving and len(serving.vocab) == items
    assert all(torch.equal(v, serving.model.state_dict()[k]) for k, v in weights.items())

    good = learn_cycle(serving, table[:1_000], table[1_000:], config)
    assert good.promoted and good.learner is not serving
    assert len(good.learner.vocab) == items + good.data.n_new_items > items
    assert good.train_targets > 0 and set(good.stages_s) == {
        "sequences", "evaluate", "stack", "train", "gate", "cool_down",
    }  # fmt: skip


SOURCE_MOVIES = [
    "Matrix, The (1999)", "Toy Story (1995)", "Heat (1995)", "Amélie (2001)",
    "Godfather, The (1972)", "Alien (1979)", "Fargo (1996)", "Brazil (1985)",
]  # fmt: skip
TARGET_MOVIES = [  # RecBole's ml-100k.item: title and year in separate columns
    ("The Matrix", 1999), ("Toy Story", 1995), ("Heat", 1995), ("Amelie", 2001),
    ("The Godfather", 1972), ("Heat", 1986), ("Clerks", 1994), ("Kids", 1995),
]  # fmt: skip


def test_transfer_by_titles_from_movielens_files(stack, prefect_harness, tmp_path, monkeypatch):
    for key, value in SMALL.items():
        monkeypatch.setenv(f"STACKREC_{key.upper()}", str(value))
    rng = np.random.default_rng(0)
    source_dir, target_dir = tmp_path / "ml-1m", tmp_path / "ml-100k"
    source_dir.mkdir()
    target_dir.mkdir()
    (source_dir / "movies.dat").write_bytes(
        "".join(f"{i}::{t}::Drama\n" for i, t in enumerate(SOURCE_MOVIES, 1)).encode("latin-1")
    )
    ratings = [f"{u}::{rng.integers(1, 9)}::4::{978300000 + 60 * n}" for n, u in
               enumerate(rng.integers(1, 30, 600))]  # fmt: skip
    (source_dir / "ratings.dat").write_text("\n".join(ratings) + "\n")
    (target_dir / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        + "".join(f"{10 + i}\t{t}\t{y}\tDrama\n" for i, (t, y) in enumerate(TARGET_MOVIES, 1))
    )
    events = [f"{u}\t{rng.integers(11, 19)}\t3\t{880000000 + 60 * n}" for n, u in
              enumerate(rng.integers(1, 25, 400))]  # fmt: skip
    (target_dir / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "\n".join(events) + "\n"
    )

    result = CliRunner().invoke(
        app,
        ["transfer", "--source", str(source_dir / "ratings.dat"),
         "--target", str(target_dir / "ml-100k.inter"), "--schedule", "1,2",
         "--epochs-per-stage", "1", "--source-epochs", "1", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{") :])
    # 11..15 match source titles 1..5 (article, accents, year column); Heat (1986) does not
    # match Heat (1995); Clerks and Kids are not in the source
    assert report["mapping"] == {"how": "titles", "mapped": 5, "target_items": 8, "coverage": 0.625}
    registry = Settings.load().registry()
    model, vocab, _, _ = from_payload(registry.load(report["version"]))
    assert model.depth == 2 and sorted(vocab.ids[1:]) == [str(i) for i in range(11, 19)]
