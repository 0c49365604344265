"""Every growth operator: the grown depth, where blocks come from, and each mode's promise."""

import pytest
import torch

from stackrec.stacking import StackingError, plan_blocks

OPERATORS = [
    ("adjacent", None, [0, 0, 1, 1]),
    ("cross", None, [0, 1, 0, 1]),
    ("copy_top_k", 1, [0, 1, 1]),
    ("copy_top_k", 2, [0, 1, 0, 1]),
]


@pytest.mark.parametrize(("operator", "top_k", "sources"), OPERATORS)
def test_plans(operator, top_k, sources):
    plan = plan_blocks(2, operator, "function_preserving", top_k)
    assert [b.source for b in plan] == sources


def test_embeddings_only_plans():
    assert [b.source for b in plan_blocks(2, "embeddings-only", "faithful")] == [None] * 4
    fp = plan_blocks(2, "embeddings_only", "function_preserving")
    assert [(b.source, b.added) for b in fp] == [(0, False), (1, False), (None, True), (None, True)]


def test_unknown_operator_mode_and_top_k_are_refused():
    with pytest.raises(StackingError, match="'zigzag'"):
        plan_blocks(2, "zigzag", "faithful")
    with pytest.raises(StackingError, match="'exact'"):
        plan_blocks(2, "adjacent", "exact")
    with pytest.raises(StackingError, match="top_k=3"):
        plan_blocks(2, "copy_top_k", "faithful", top_k=3)


def block_weights(model, index):
    """A block's weights other than alpha and LayerNorm (what every mode copies)."""
    return {
        name: value.detach()
        for name, value in model.blocks[index].named_parameters()
        if "alpha" not in name and "norm" not in name
    }


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("operator", "top_k", "sources"), OPERATORS)
def test_function_preserving_growth_keeps_outputs(kind, operator, top_k, sources, build, batch):
    model = build()
    items = batch()
    grown = model.stack(operator, "function_preserving", top_k=top_k).eval()
    assert grown.depth == len(sources)
    for new, old in enumerate(sources):
        assert same_weights(block_weights(grown, new), block_weights(model, old)), new
    torch.testing.assert_close(grown(items), model(items), rtol=1e-5, atol=1e-5)
    event = grown.config.lineage[-1]
    assert (event["operator"], event["from_depth"], event["to_depth"]) == (
        operator,
        2,
        len(sources),
    )


def test_embeddings_only_function_preserving_keeps_outputs(kind, build, batch):
    model = build()
    grown = model.stack("embeddings_only", "function_preserving").eval()
    assert grown.depth == 4
    torch.testing.assert_close(grown(batch()), model(batch()), rtol=1e-5, atol=1e-5)


def test_faithful_growth_copies_weights_and_resets_the_rest(kind, build):
    model = build()
    grown = model.stack("adjacent", "faithful")
    assert grown.depth == 4
    fresh = type(model)(grown.config)
    for name, value in grown.named_parameters():
        if name.split(".")[-1].startswith("alpha"):
            assert float(value.detach().abs().sum()) == 0.0, name
        elif "norm" in name:
            assert torch.equal(value, fresh.state_dict()[name]), name  # LayerNorm reset
        elif name.startswith("output."):
            assert not torch.equal(value, model.state_dict()[name])  # output layer reset
    torch.testing.assert_close(grown.embedding.weight, model.embedding.weight, rtol=0, atol=0)
    assert same_weights(block_weights(grown, 1), block_weights(model, 0))


def test_faithful_embeddings_only_keeps_only_embeddings(kind, build):
    model = build()
    grown = model.stack("embeddings_only", "faithful")
    assert grown.depth == 4
    assert torch.equal(grown.embedding.weight, model.embedding.weight)
    assert not same_weights(block_weights(grown, 0), block_weights(model, 0))


def test_growth_is_recorded_in_lineage_and_repeats(kind, build):
    grown = build().stack("adjacent").stack("cross")
    assert grown.depth == 8
    assert [e["operator"] for e in grown.config.lineage] == ["adjacent", "cross"]


def test_nextitnet_blocks_keep_their_dilations_when_copied():
    from stackrec.nextitnet import NextItNet, NextItNetConfig

    model = NextItNet(NextItNetConfig(n_items=10, dim=8, n_blocks=2))
    assert model.config.dilations == (1, 4)
    assert model.stack("adjacent").config.dilations == (1, 1, 4, 4)
    assert model.stack("cross").config.dilations == (1, 4, 1, 4)
    assert model.stack("embeddings_only", "faithful").config.dilations == (1, 4, 1, 4)
