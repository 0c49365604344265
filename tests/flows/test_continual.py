"""The continual loop on real services: a sabotaged candidate is rejected, nothing moves,
the next cycle redoes the work, new items reach Redis, and rollback moves both pointers."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from flows.cli import app, replay_table
from flows.settings import Settings
from monitoring import metrics
from stackrec.synthetic import StreamConfig, generate
from streaming.log import InteractionLog
from streaming.serving import current_version, read_vectors

pytestmark = pytest.mark.integration
SMALL = {
    "batch_max_events": 100_000,
    "batch_max_wait_s": 8,
    "train_steps": 20,
    "dim": 16,
    "holdout_share": 0.2,
    "gate_tolerance": 0.5,  # tiny models are noisy; sabotage is caught by divergence
}


def test_gate_rejects_sabotage_then_loop_recovers_and_rolls_back(stack, prefect_harness):
    from flows.cycle import continual_cycle

    settings = Settings.load()
    table = generate(
        StreamConfig(n_events=6_000, n_users=200, n_items=600, initial_items=0.3, seed=5)
    )
    replay_table(settings, table.slice(0, 2_000), progress=False)
    first = continual_cycle(overrides=SMALL)
    assert (first["outcome"], first["version"]) == ("published", 1)
    log = InteractionLog(settings.log_dir)
    trained_after_first = log.manifest().trained_through

    replay_table(settings, table.slice(2_000, 2_000), progress=False)
    sabotaged = continual_cycle(overrides=SMALL | {"lr": 1e4})
    assert sabotaged["outcome"] == "rejected"
    assert not sabotaged["gate"]["promote"] and "diverged" in sabotaged["gate"]["reason"]
    registry = settings.registry()
    assert registry.meta(2)["status"] == "rejected"
    assert registry.meta(2)["reason"] == sabotaged["gate"]["reason"]
    assert registry.current() == 1 and current_version(stack.redis) == 1
    assert log.manifest().trained_through == trained_after_first  # cursor unmoved

    replay_table(settings, table.slice(4_000, 2_000), progress=False)
    examples = metrics.TRAINING_EXAMPLES.labels(settings.model)._value.get()
    third = continual_cycle(overrides=SMALL | {"anneal_share": 0.5})  # serves a cooled branch
    assert third["outcome"] == "published" and third["parent"] == 1
    phases = third["training"]["phases"]
    assert list(phases) == ["fine_tune", "top_up", "cool_down"]
    assert third["training"]["targets"] == sum(p["targets"] for p in phases.values())
    assert metrics.TRAINING_EXAMPLES.labels(settings.model)._value.get() == (
        examples + third["training"]["targets"]
    )
    assert third["events"]["to_train"] == 4_000  # redoes the rejected cycle's events too
    version, items = read_vectors(stack.redis, "items")
    assert version == 3
    assert set(items) == set(table.column("item_id").to_pylist())  # every new item is served
    assert third["prequential"]["new"]["n"] > 0  # items first seen in this batch were scored

    result = CliRunner().invoke(app, ["models", "rollback"])
    assert result.exit_code == 0, result.output
    assert registry.current() == 1 and current_version(stack.redis) == 1
    # on-call sees the rollback on the dashboard's published-version panel
    assert metrics.PUBLISHED_VERSION.labels(settings.model)._value.get() == 1


def test_data_volume_growth_stacks_function_preserving_in_the_loop(stack, prefect_harness):
    from flows.cycle import continual_cycle

    settings = Settings.load()
    table = generate(StreamConfig(n_events=3_000, n_users=150, n_items=400, seed=9))
    data_volume = {"growth_policy": "data_volume", "growth_factor": 2.0}
    reports = []
    for start in (0, 1_000, 2_000):
        replay_table(settings, table.slice(start, 1_000), progress=False)
        reports.append(continual_cycle(overrides=SMALL | data_volume))
    depths = [r["model_shape"]["depth"] for r in reports]
    assert depths == [2, 4, 4]  # 2,000 events >= 2 x 1,000 seen when depth 2 was reached
    assert reports[1]["growth"]["grow"] and reports[1]["growth"]["event"]["mode"] == (
        "function_preserving"
    )
    assert not reports[2]["growth"]["grow"]
    assert settings.registry().meta(2)["growth"]["reason"].startswith("data grew 2.0x")


def test_a_cycle_does_not_promote_over_a_version_promoted_while_it_trained(
    stack, prefect_harness, monkeypatch
):
    """A bootstrap (or transfer, or a person) promotes while a cycle trains: the cycle's
    candidate is kept but rejected as superseded; Redis, the registry and the log cursor keep
    what the other run set, and the next cycle continues from it."""
    from flows import cycle

    settings = Settings.load()
    table = generate(
        StreamConfig(n_events=4_000, n_users=200, n_items=600, initial_items=0.3, seed=7)
    )
    replay_table(settings, table.slice(0, 2_000), progress=False)
    assert cycle.continual_cycle(overrides=SMALL)["version"] == 1
    trained = InteractionLog(settings.log_dir).manifest().trained_through
    registry = settings.registry()
    learn = cycle.learn

    def learn_while_another_version_is_promoted(*args, **kwargs):
        outcome = learn(*args, **kwargs)
        registry.promote(registry.save(registry.load(1), {"parent": None}))  # v2, elsewhere
        return outcome

    monkeypatch.setattr(cycle, "learn", learn_while_another_version_is_promoted)
    replay_table(settings, table.slice(2_000, 2_000), progress=False)
    result = cycle.continual_cycle(overrides=SMALL)

    assert (result["outcome"], result["version"]) == ("superseded", 3)
    assert "v2 started serving during the cycle" in result["gate"]["superseded"]
    assert registry.current() == 2
    assert registry.meta(3)["status"] == "rejected" and "superseded" in registry.meta(3)["reason"]
    assert current_version(stack.redis) == 1  # the superseded candidate was never published
    assert InteractionLog(settings.log_dir).manifest().trained_through == trained
