"""A cold start: the first cycle, with no version serving, trains a fresh model from scratch."""

from __future__ import annotations

from dataclasses import replace

import pytest

from stackrec import continual
from stackrec.continual import CycleConfig
from stackrec.loop import LoopConfig, learn_cycle
from stackrec.registry import Registry
from stackrec.synthetic import StreamConfig, generate

CYCLE = CycleConfig(
    dim=16, max_len=20, train_steps=400, train_epochs=1.0, cold_start_epochs=3.0, anneal_share=0.0
)


@pytest.fixture(scope="module")
def table():
    return generate(StreamConfig(n_events=2_000, n_users=60, n_items=160, seed=5))


def test_the_first_cycle_trains_from_scratch_and_the_next_fine_tunes(tmp_path, table, monkeypatch):
    seen: list[CycleConfig] = []
    fine_tune = continual.fine_tune

    def recorded(learner, windows, config, counted=None):
        seen.append(config)
        return fine_tune(learner, windows, config, counted)

    monkeypatch.setattr(continual, "fine_tune", recorded)
    loop = LoopConfig(cycle=CYCLE, growth_policy="none")
    fresh = continual.resume(Registry(tmp_path), CYCLE)
    first = learn_cycle(fresh, table.schema.empty_table(), table[:1_000], loop)
    cold, seen[:] = list(seen), []
    second = learn_cycle(first.learner, table[:1_000], table[1_000:], loop)
    assert first.promoted and second.promoted

    # fine-tuning, then the top-up on the holdout: both at the cold start's settings
    assert [(c.train_epochs, c.lr) for c in cold] == [(3.0, CYCLE.scratch_lr)] * 2
    assert [(c.train_epochs, c.lr) for c in seen] == [(1.0, CYCLE.lr)] * 2


def test_the_cold_start_keeps_every_other_setting():
    cold = CYCLE.cold_start()
    assert cold == replace(CYCLE, train_epochs=3.0, lr=CYCLE.scratch_lr)
