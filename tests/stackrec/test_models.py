"""The contract every model kind keeps: shapes, causality, padding, serving vectors, growth."""

import pytest
import torch


def test_forward_shapes(build, batch):
    model = build()
    c = model.config
    hidden = model(batch())
    assert hidden.shape == (4, c.max_len, c.dim)
    assert model.score(hidden).shape == (4, c.max_len, c.n_items)
    assert model.item_vectors().shape == (c.n_items, model.vector_dim)
    assert model.user_vectors(batch()).shape == (4, model.vector_dim)


def test_changing_a_future_item_leaves_earlier_outputs_unchanged(build, batch):
    model = build()
    items = batch()
    changed = items.clone()
    changed[:, 8] = (changed[:, 8] % (model.config.n_items - 1)) + 1
    before, after = model(items), model(changed)
    torch.testing.assert_close(before[:, :8], after[:, :8], rtol=0, atol=1e-6)
    assert not torch.allclose(before[:, 8:], after[:, 8:])


def test_outputs_do_not_depend_on_the_amount_of_left_padding(build, batch):
    model = build()
    items = batch(rows=1, length=6)
    padded = torch.cat([torch.zeros(1, 6, dtype=torch.long), items], dim=1)
    torch.testing.assert_close(model(items), model(padded)[:, -6:], rtol=1e-5, atol=1e-6)


def test_score_is_the_serving_dot_product(build, batch):
    model = build()
    items = batch()
    users = model.user_vectors(items)
    assert torch.equal(model.score(users), users @ model.item_vectors().T)
    assert torch.equal(users, model(items)[:, -1])


def test_user_vectors_reject_rows_without_a_latest_item(build, batch):
    items = batch()
    items[2, -1] = 0
    with pytest.raises(ValueError, match="row 2"):
        build().user_vectors(items)


def test_grow_items_keeps_old_rows_and_outputs(build, batch):
    model = build()
    n_items = model.config.n_items
    items = batch()
    before_vectors = model.item_vectors().detach().clone()
    before = model(items)
    model.grow_items(n_items + 5)
    assert model.config.n_items == n_items + 5
    assert model.item_vectors().shape == (n_items + 5, model.vector_dim)
    assert torch.equal(model.item_vectors()[:n_items], before_vectors)
    assert model.item_vectors()[n_items:].abs().sum() > 0  # new rows initialised, not zero
    torch.testing.assert_close(model(items), before, rtol=0, atol=0)
    with pytest.raises(ValueError, match="shrink"):
        model.grow_items(n_items)


def test_same_seed_same_model(build):
    a, b = build(), build()
    a_state, b_state = a.state_dict(), b.state_dict()
    assert all(torch.equal(a_state[name], b_state[name]) for name in a_state)
