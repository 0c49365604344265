"""The payload survives ``torch.load(weights_only=True)`` and refuses to load garbage."""

import pytest
import torch

from stackrec.checkpoint import CheckpointError, from_payload, new_model, to_payload
from stackrec.train import TrainConfig, Trainer
from stackrec.vocab import PAD, Vocabulary

N_ITEMS = 30  # n_items of the small models that conftest builds
VOCAB = Vocabulary.from_ids([PAD, *(f"item-{i}" for i in range(1, N_ITEMS))])


def round_trip(payload: dict, tmp_path) -> dict:
    torch.save(payload, tmp_path / "model.pt")
    return torch.load(tmp_path / "model.pt", weights_only=True)


def test_weights_only_round_trip_restores_everything(kind, tmp_path, build, batch):
    model = build().stack("adjacent")
    trainer = Trainer(model, TrainConfig(), device="cpu")
    trainer.fit(batch(rows=4, length=13))
    payload = to_payload(model, VOCAB, trainer.optimizer_state(), extra={"offsets": [1, 2]})
    loaded, vocab, optimizer_state, extra = from_payload(
        round_trip(payload, tmp_path), kind=model.kind
    )
    assert loaded.config == model.config and loaded.depth == 4
    assert vocab.ids == VOCAB.ids
    assert extra == {"offsets": [1, 2]}
    assert optimizer_state["trainer"]["step"] == 1
    model.eval()
    torch.testing.assert_close(loaded.eval()(batch()), model(batch()), rtol=0, atol=0)


def test_another_model_kind_is_refused(build):
    payload = to_payload(build(), VOCAB)
    with pytest.raises(CheckpointError, match="not 'other'"):
        from_payload(payload, kind="other")
    with pytest.raises(CheckpointError, match="unknown model kind 'mystery'"):
        from_payload({**payload, "kind": "mystery"})


def test_tampered_state_is_refused(build):
    payload = to_payload(build(), VOCAB)
    name = next(iter(payload["state_dict"]))
    state = dict(payload["state_dict"])
    state.pop(name)
    with pytest.raises(CheckpointError, match="missing"):
        from_payload({**payload, "state_dict": state})
    state = {**payload["state_dict"], name: torch.zeros(3)}
    with pytest.raises(CheckpointError, match="shape"):
        from_payload({**payload, "state_dict": state})
    poisoned = payload["state_dict"][name].clone()
    poisoned.view(-1)[0] = float("nan")
    with pytest.raises(CheckpointError, match="non-finite"):
        from_payload({**payload, "state_dict": {**payload["state_dict"], name: poisoned}})


def test_a_shrunken_vocabulary_is_refused(build):
    payload = to_payload(build(), VOCAB)
    with pytest.raises(CheckpointError, match=f"{N_ITEMS - 1} ids but the item table has"):
        from_payload({**payload, "vocab": payload["vocab"][:-1]})
    with pytest.raises(CheckpointError, match="ids but the item table"):
        to_payload(build(), Vocabulary())


def test_missing_keys_format_and_config_are_checked(build):
    payload = to_payload(build(), VOCAB)
    with pytest.raises(CheckpointError, match="lacks"):
        from_payload({k: v for k, v in payload.items() if k != "vocab"})
    with pytest.raises(CheckpointError, match="format 99"):
        from_payload({**payload, "format": 99})
    with pytest.raises(CheckpointError, match="unknown keys"):
        from_payload({**payload, "config": {**payload["config"], "n_heads_typo": 2}})
    with pytest.raises(CheckpointError, match="not a dict"):
        from_payload(["not", "a", "payload"])


@pytest.mark.parametrize("kind", ["nextitnet", "sasrec"])
def test_a_new_model_depends_on_its_seed_alone(kind):
    shape = {"n_items": 30, "dim": 16, "n_blocks": 2, "max_len": 12}
    torch.manual_seed(1)
    first = new_model(kind, 7, **shape)
    torch.manual_seed(2)  # whatever the global generator holds
    second = new_model(kind, 7, **shape)
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(new_model(kind, 8, **shape).embedding.weight, first.embedding.weight)


def test_a_new_model_leaves_the_callers_generator_alone():
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    new_model("nextitnet", 7, n_items=30)
    assert torch.equal(torch.rand(3), expected)
