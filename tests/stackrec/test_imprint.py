"""Weight imprinting: an item first seen in a batch starts from the contexts it followed, so
it ranks high for them before any gradient step; the holdout and known items stay untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stackrec import continual
from stackrec.continual import CycleConfig
from stackrec.registry import Registry


@pytest.fixture
def learner(tmp_path, events):
    torch.manual_seed(0)
    config = CycleConfig(kind="nextitnet", dim=16, blocks=2, max_len=8)
    learner = continual.resume(Registry(tmp_path), config)
    history = events(
        [(f"u{u}", f"i{(u + k) % 40}", 10 * u + k) for u in range(30) for k in range(6)]
    )
    continual.prepare(learner, history.schema.empty_table(), history, holdout_share=0.0)
    return learner, history


@pytest.mark.parametrize("kind", ["nextitnet", "sasrec"])
def test_a_new_item_ranks_first_after_the_context_it_followed(tmp_path, kind, events):
    torch.manual_seed(0)
    learner = continual.resume(Registry(tmp_path / kind), CycleConfig(kind=kind, dim=16, max_len=8))
    history = events(
        [(f"u{u}", f"i{(u + k) % 40}", 10 * u + k) for u in range(30) for k in range(6)]
    )
    continual.prepare(learner, history.schema.empty_table(), history, holdout_share=0.0)
    fresh = events([("u1", "i5", 1_000), ("u1", "i9", 1_001), ("u1", "brand-new", 1_002)])
    data = continual.prepare(learner, history, fresh, holdout_share=0.0)
    known = learner.model.item_vectors()[1:-1].detach().clone()

    assert continual.imprint_new_items(learner, data) == 1

    new = learner.vocab.lookup(["brand-new"])[0]
    before_new = [f"i{(1 + k) % 40}" for k in range(6)] + ["i5", "i9"]  # u1's items so far
    context = torch.from_numpy(learner.vocab.lookup(before_new)[-8:])[None]
    learner.model.eval()
    with torch.no_grad():
        hidden = learner.model(context)[:, -1]  # the state that led to "brand-new"
        scores = learner.model.score(hidden)[0, 1:]
    assert int(scores.argmax()) + 1 == new
    assert torch.equal(learner.model.item_vectors()[1:-1], known)  # known items untouched


def test_nothing_to_imprint_without_new_items_or_from_the_holdout_only(learner, events):
    model, history = learner
    again = events([("u1", "i5", 2_000), ("u1", "i6", 2_001)])
    assert continual.imprint_new_items(model, continual.prepare(model, history, again, 0.0)) == 0
    late = events([("u2", "i1", 3_000), ("u2", "late-new", 3_001)])  # the latest: held out
    data = continual.prepare(model, history, late, holdout_share=0.5)
    before = model.model.item_vectors().detach().clone()
    assert continual.imprint_new_items(model, data) == 0
    assert torch.equal(model.model.item_vectors(), before)


def test_new_item_rows_do_not_depend_on_the_global_generator(tmp_path, events):
    def grown(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        learner = continual.resume(Registry(tmp_path / str(seed)), CycleConfig(dim=16, max_len=8))
        batch = events([("u1", "i1", 1), ("u1", "i2", 2), ("u2", "i3", 3)])
        continual.prepare(learner, batch.schema.empty_table(), batch, holdout_share=0.0)
        return learner.model.item_vectors().detach()

    assert torch.equal(grown(1), grown(2))


def test_a_batch_prepares_the_same_data_however_its_partitions_interleaved(tmp_path, events):
    rows = [("u1", "i9", 1), ("u2", "i3", 1), ("u1", "i2", 2), ("u3", "i7", 3), ("u2", "i5", 4)]

    def prepared(order: list[int]) -> tuple[list[str], torch.Tensor, continual.CycleData]:
        learner = continual.resume(Registry(tmp_path / "".join(map(str, order))), CycleConfig())
        batch = events([rows[i] for i in order])
        data = continual.prepare(learner, batch.schema.empty_table(), batch, holdout_share=0.4)
        return learner.vocab.ids, learner.model.item_vectors().detach(), data

    ids, vectors, data = prepared([0, 1, 2, 3, 4])
    other_ids, other_vectors, other = prepared([3, 1, 4, 0, 2])  # users' events interleaved
    assert ids == other_ids == ["<pad>", "i9", "i3", "i2", "i7", "i5"]  # by time, user, item
    assert torch.equal(vectors, other_vectors)
    assert data.user_ids.tolist() == other.user_ids.tolist() == ["u1", "u2", "u3"]
    assert np.array_equal(data.sequences.items, other.sequences.items)
    assert np.array_equal(data.is_holdout, other.is_holdout)
