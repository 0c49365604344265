"""prefect.yaml declares runnable deployments, and the nightly full evaluation does its job.

The deployments are checked the way `prefect deploy` reads them: each entrypoint loads as a
Prefect flow, its parameters fit the flow's signature, and the pool, schedule and concurrency
are what operations rely on. The full-evaluation flow runs for real on a small registry and log.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml

from stackrec import continual
from stackrec.continual import CycleConfig
from stackrec.registry import Registry
from stackrec.synthetic import StreamConfig, generate
from streaming.events import LOG_SCHEMA
from streaming.log import InteractionLog

ROOT = Path(__file__).resolve().parents[2]
PREFECT_YAML = ROOT / "prefect.yaml"


def deployments() -> dict[str, dict]:
    return {d["name"]: d for d in yaml.safe_load(PREFECT_YAML.read_text())["deployments"]}


def load_flow(entrypoint: str):
    from prefect.flows import load_flow_from_entrypoint

    path, _, name = entrypoint.partition(":")
    return load_flow_from_entrypoint(f"{ROOT / path}:{name}")


# --- prefect.yaml -------------------------------------------------------------------------------
def test_every_deployment_runs_a_flow_with_the_parameters_it_is_given():
    found = deployments()
    assert {"continual-cycle", "full-evaluation", "log-upkeep", "bootstrap", "transfer"} <= set(
        found
    )
    for name, deployment in found.items():
        flow = load_flow(deployment["entrypoint"])
        signature = inspect.signature(flow.fn).parameters
        assert set(deployment["parameters"]) <= set(signature), name
        assert deployment["work_pool"] == {"name": "stackrec", "work_queue_name": "default"}
        if "on-demand" in deployment["tags"]:  # triggered by hand, with what is required
            assert "schedules" not in deployment, name
        else:  # scheduled: every required parameter has a value
            assert deployment["schedules"] and all(s["active"] for s in deployment["schedules"])
            required = {k for k, p in signature.items() if p.default is inspect.Parameter.empty}
            assert required <= set(deployment["parameters"]), name


def test_the_scenarios_run_on_demand_with_stackrecs_depth_schedule():
    found = deployments()
    assert found["bootstrap"]["parameters"]["schedule"] == "2,4,8"
    assert found["transfer"]["parameters"]["mapping"] == "titles"
    assert "source" not in found["transfer"]["parameters"]  # required when triggered
    assert load_flow(found["transfer"]["entrypoint"]).name == "transfer"


def test_the_cycle_runs_every_ten_minutes_one_at_a_time():
    cycle = deployments()["continual-cycle"]
    assert load_flow(cycle["entrypoint"]).name == "continual-cycle"
    assert cycle["schedules"] == [{"interval": 600, "active": True}]
    assert cycle["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}


def test_the_full_evaluation_runs_nightly():
    nightly = deployments()["full-evaluation"]
    assert nightly["schedules"] == [{"cron": "30 2 * * *", "timezone": "UTC", "active": True}]
    assert nightly["concurrency_limit"] == 1


def test_no_pull_step_names_an_environment_variable():
    """A STACKREC_* variable in the worker's environment that Settings does not know is an
    error in every flow run, so the working directory must not come from one."""
    text = PREFECT_YAML.read_text()
    assert "{{ $STACKREC_" not in text
    assert "pull" not in yaml.safe_load(text)


# --- the full evaluation, for real ---------------------------------------------------------------
def write_log(log: InteractionLog, table: pa.Table, partition_offset: int) -> int:
    n = table.num_rows
    events = pa.table(
        {
            "user_id": table.column("user_id").cast(pa.string()),
            "item_id": table.column("item_id").cast(pa.string()),
            "ts": table.column("ts"),
            "event_type": pa.nulls(n, pa.string()),
            "weight": pa.nulls(n, pa.float64()),
            "partition": pa.array(np.zeros(n, np.int32)),
            "offset": pa.array(np.arange(partition_offset, partition_offset + n)),
        },
        schema=LOG_SCHEMA,
    )
    return log.append(events, {0: (partition_offset, partition_offset + n - 1)}).id


def serve_a_model(home: Path, model: str, table: pa.Table) -> int:
    """What one continual cycle leaves behind: a log, a promoted version, the cursor moved."""
    log = InteractionLog(home / "log" / "interactions")
    through = write_log(log, table, 0)
    registry = Registry(home / "models" / model)
    config = CycleConfig(dim=16, blocks=2, max_len=20, train_steps=10, batch_size=64)
    learner = continual.resume(registry, config)
    data = continual.prepare(learner, log.read(through=0), log.read(after=0))
    windows, counted = continual.training_windows(data, config, learner.model.config.max_len)
    continual.fine_tune(learner, windows, config, counted)
    version = continual.save(registry, learner, {"trained_through": through})
    registry.promote(version)
    log.mark_trained(through)
    return version


@pytest.fixture
def home(tmp_path, monkeypatch):
    for key in [k for k in os.environ if k.startswith("STACKREC_")]:
        monkeypatch.delenv(key)
    return tmp_path / "home"


def test_full_evaluation_scores_the_serving_version_on_what_it_trained_on(home, prefect_harness):
    from flows.maintenance import full_evaluation

    table = generate(StreamConfig(n_events=1500, n_users=40, n_items=300, seed=2))
    version = serve_a_model(home, "nightly", table)
    # a later batch the serving version has not trained on, with an item it does not know
    later = pa.table({"user_id": ["u-new"] * 3, "item_id": ["never-seen"] * 3, "ts": [1, 2, 3]})
    write_log(InteractionLog(home / "log" / "interactions"), later, 1500)

    result = full_evaluation(overrides={"home": str(home), "model": "nightly"})

    per_user = table.group_by("user_id").aggregate([("item_id", "count")])
    evaluated = int(pc.sum(pc.greater_equal(per_user.column("item_id_count"), 3)).as_py())
    assert result["outcome"] == "evaluated"
    assert (result["version"], result["events"], result["trained_through"]) == (version, 1500, 1)
    assert result["users_evaluated"] == evaluated == result["test"]["full"]["n"]
    full, sampled = result["test"]["full"], result["test"]["sampled100"]
    assert full["protocol"] == "full" and full["history_masked"] is True
    assert sampled["protocol"] == "sampled100" and sampled["n"] == evaluated
    for metrics in (full, sampled):
        assert 0 <= metrics["hr@5"] <= metrics["hr@10"] <= metrics["hr@20"] <= 1
        assert metrics["mrr@10"] <= metrics["ndcg@10"] <= metrics["hr@10"]
    # 100 negatives are a smaller haystack than 300 items
    assert sampled["hr@10"] >= full["hr@10"]
    saved = Path(result["file"])
    assert saved.parent == home / "evaluations" / "nightly"
    assert json.loads(saved.read_text()) == {k: v for k, v in result.items() if k != "file"}


def test_full_evaluation_before_any_version_is_a_noop(home, prefect_harness):
    from flows.maintenance import full_evaluation

    result = full_evaluation(overrides={"home": str(home), "model": "empty"})
    assert result == {"model": "empty", "outcome": "noop", "reason": "no serving version yet"}
    assert not (home / "evaluations").exists()


def test_log_upkeep_compacts_trained_segments_and_keeps_untrained_ones(tmp_path, monkeypatch):
    from flows.maintenance import log_upkeep
    from flows.settings import Settings
    from streaming.events import LOG_SCHEMA
    from streaming.log import InteractionLog

    monkeypatch.setenv("STACKREC_HOME", str(tmp_path))
    log = InteractionLog(Settings.load().log_dir)
    for offset in range(5):
        row = {
            "user_id": ["u"],
            "item_id": [f"i{offset}"],
            "ts": [1_700_000_000_000 + offset],
            "event_type": [None],
            "weight": [None],
            "partition": [0],
            "offset": [offset],
        }
        log.append(pa.table(row, schema=LOG_SCHEMA), {0: (offset, offset)})
    log.mark_trained(4)
    result = log_upkeep.fn(None, target_rows=100)
    assert result["compaction"]["segments_before"] == 5
    assert result["compaction"]["segments_after"] == 2  # four trained merged, one untrained kept
    assert log.read().column("item_id").to_pylist() == [f"i{o}" for o in range(5)]
    assert log.next_offsets() == {0: 5}
    assert "log-upkeep" in deployments()
