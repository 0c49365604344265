"""The cool-down branch: the cycle serves an annealed copy and keeps training the trunk."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pyarrow as pa
import pytest
import torch

from stackrec import continual
from stackrec.checkpoint import CheckpointError, new_model, to_payload, trunk_from_payload
from stackrec.continual import CycleConfig
from stackrec.loop import LoopConfig, learn_cycle
from stackrec.registry import Registry
from stackrec.synthetic import StreamConfig, generate
from stackrec.vocab import Vocabulary

CYCLE = CycleConfig(dim=16, max_len=20, train_steps=12, holdout_share=0.2, anneal_share=0.5)


@pytest.fixture(scope="module")
def table():
    return generate(
        StreamConfig(n_events=3_000, n_users=90, n_items=240, initial_items=0.5, seed=11)
    )


def first_cycle(tmp_path, table, cycle=CYCLE, **loop):
    learner = continual.resume(Registry(tmp_path), cycle)
    config = LoopConfig(cycle=cycle, **loop)
    return learn_cycle(learner, table.schema.empty_table(), table[:1_000], config), config


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_a_promoted_cycle_serves_an_annealed_branch_of_the_topped_up_trunk(tmp_path, table):
    outcome, _ = first_cycle(tmp_path, table)
    learner = outcome.candidate
    assert outcome.promoted and learner.trunk is not None
    assert not same_weights(learner.model, learner.trunk)
    assert list(outcome.training) == ["fine_tune", "top_up", "cool_down"]
    tuned, topped, cooled = outcome.training.values()
    assert cooled.steps == math.ceil(0.5 * tuned.steps)  # anneal_share of the fine-tune
    assert outcome.train_targets == tuned.targets + topped.targets + cooled.targets
    assert "cool_down" in outcome.stages_s


def test_a_rejected_cycle_cools_nothing_down(tmp_path, table):
    first, config = first_cycle(tmp_path, table)
    sabotaged = replace(config, cycle=replace(CYCLE, lr=1e4))
    bad = learn_cycle(first.learner, table[:1_000], table[1_000:2_000], sabotaged)
    assert not bad.promoted and list(bad.training) == ["fine_tune"]
    assert "cool_down" not in bad.stages_s


def test_without_a_cool_down_the_model_is_the_trunk(tmp_path, table):
    outcome, _ = first_cycle(tmp_path, table, cycle=replace(CYCLE, anneal_share=0.0))
    assert outcome.candidate.trunk is None and list(outcome.training) == ["fine_tune", "top_up"]


def test_a_diverging_cool_down_rejects_the_cycle(tmp_path, table, monkeypatch):
    cool_down = continual.cool_down

    def exploding(learner, data, cycle, steps):  # only the branch's rate is sabotaged
        return cool_down(learner, data, replace(cycle, lr=1e12), steps)

    monkeypatch.setattr(continual, "cool_down", exploding)
    outcome, _ = first_cycle(tmp_path, table)
    assert not outcome.promoted and "cool-down" in outcome.verdict.reason
    assert outcome.learner is outcome.serving


def test_the_next_cycle_scores_the_branch_and_trains_the_trunk(tmp_path, table, monkeypatch):
    first, config = first_cycle(tmp_path, table, growth_policy="none")  # the trunk, not stacked
    served, trunk = first.learner.model, first.learner.trunk
    trained_from = []
    fine_tune = continual.fine_tune

    def spy(learner, windows, cycle, counted=None):
        trained_from.append(copy.deepcopy(learner.model))
        return fine_tune(learner, windows, cycle, counted)

    monkeypatch.setattr(continual, "fine_tune", spy)
    second = learn_cycle(first.learner, table[:1_000], table[1_000:2_000], config)
    n_old = trunk.config.n_items  # rows the trunk had; the batch's new items were added
    start = trained_from[0].state_dict()
    for name, value in trunk.state_dict().items():
        assert torch.equal(start[name][:n_old] if "embedding" in name or "output" in name
                           else start[name], value), name  # fmt: skip
    branch = copy.deepcopy(first.learner)
    data = continual.prepare(branch, table[:1_000], table[1_000:2_000], CYCLE.holdout_share)
    assert continual.prequential(branch, data) == second.prequential  # the branch was scored
    assert same_weights(first.learner.model, served)  # the caller's learner is untouched


def test_new_items_get_the_same_rows_in_the_branch_and_the_trunk(tmp_path, table):
    first, _ = first_cycle(tmp_path, table)
    learner = copy.deepcopy(first.learner)
    data = continual.prepare(learner, table[:1_000], table[1_000:2_000])
    assert data.n_new_items > 0
    n = len(learner.vocab)
    assert learner.model.config.n_items == learner.trunk.config.n_items == n
    new = slice(n - data.n_new_items, n)
    assert torch.equal(learner.model.output.weight[new], learner.trunk.output.weight[new])


def test_stacking_deepens_the_trunk_and_the_served_branch(tmp_path, table):
    first, config = first_cycle(tmp_path, table, growth_policy="data_volume")
    second = learn_cycle(first.learner, table[:1_000], table[1_000:2_000], config)
    assert second.growth["grow"]
    assert second.candidate.model.depth == second.candidate.trunk.depth == 4


def test_the_trunk_survives_the_registry(tmp_path, table):
    outcome, _ = first_cycle(tmp_path, table)
    registry = Registry(tmp_path / "registry")
    version = continual.save(registry, outcome.candidate, {})
    loaded = continual.resume_version(registry, version)
    assert same_weights(loaded.model, outcome.candidate.model)
    assert same_weights(loaded.trunk, outcome.candidate.trunk)


def test_a_tampered_or_mismatched_trunk_is_refused():
    model = new_model("nextitnet", 0, n_items=5, dim=8, n_blocks=2, max_len=6)
    vocab = Vocabulary()
    vocab.add(["a", "b", "c", "d"])
    payload = to_payload(model, vocab, trunk=copy.deepcopy(model))
    assert same_weights(trunk_from_payload(payload, model), model)
    payload["trunk_state_dict"]["embedding.weight"][1, 0] = float("nan")
    with pytest.raises(CheckpointError, match="non-finite"):
        trunk_from_payload(payload, model)
    deeper = new_model("nextitnet", 0, n_items=5, dim=8, n_blocks=4, max_len=6)
    with pytest.raises(CheckpointError, match="trunk's config"):
        to_payload(model, vocab, trunk=deeper)


def cool_down_data(tmp_path, history, fresh):
    learner = continual.resume(Registry(tmp_path), CYCLE)
    continual.prepare(learner, history.schema.empty_table(), history)  # the history's items
    return continual.prepare(learner, history, fresh, CYCLE.holdout_share)


def rows(windows: torch.Tensor) -> list[tuple[int, ...]]:
    return [tuple(w) for w in windows.tolist()]


@pytest.mark.parametrize("share", [0.0, 0.25, 1.0])
def test_cool_down_windows_mix_the_batch_into_a_uniform_draw_of_the_log(tmp_path, table, share):
    data = cool_down_data(tmp_path, table[:1_000], table[1_000:2_000])
    every = rows(data.sequences.windows(CYCLE.max_len))
    flags = data.sequences.window_flags(CYCLE.max_len, data.is_new, data.batch_users).any(1)
    batch = set(rows(data.sequences.windows(CYCLE.max_len, users=data.batch_users)[flags]))
    config = replace(CYCLE, anneal_fresh_share=share, batch_size=8)
    drawn = rows(continual.cool_down_windows(data, config, CYCLE.max_len, steps=10))
    n_fresh = round(share * 80)
    assert len(drawn) == 80 and set(drawn) <= set(every)
    uniform, fresh = drawn[: 80 - n_fresh], drawn[80 - n_fresh :]
    assert len(set(uniform)) == len(uniform)  # without replacement
    assert set(fresh) <= batch
    if share == 0.0:  # a uniform draw holds windows of users outside the batch too
        assert not set(drawn) <= batch


def test_cool_down_windows_cover_a_small_log_once_and_survive_a_batch_without_windows(
    tmp_path, table
):
    newcomer = table[1_000:1_001]  # a first event: the batch has no window to train on
    column = newcomer.schema.get_field_index("user_id")
    newcomer = newcomer.set_column(column, "user_id", pa.array(["newcomer"]))
    data = cool_down_data(tmp_path, table[:1_000], newcomer)
    windows = continual.cool_down_windows(data, CYCLE, CYCLE.max_len, steps=10_000)
    assert sorted(rows(windows)) == sorted(rows(data.sequences.windows(CYCLE.max_len)))
