"""The model library on a CUDA device: what CPU-only CI cannot check.

Skipped where no GPU is visible. On a GPU machine: ``python -m pytest tests/stackrec/test_cuda.py``.
"""

import io

import numpy as np
import pytest
import torch

from stackrec.checkpoint import from_payload, to_payload
from stackrec.evaluate import next_item_metrics, rank_targets
from stackrec.train import TrainConfig, Trainer
from stackrec.vocab import Vocabulary

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

N_ITEMS = 30  # n_items of the small models that conftest builds
VOCAB = Vocabulary.from_ids(["<pad>", *map(str, range(1, N_ITEMS))])


@pytest.mark.parametrize("loss", ["full", "sampled"])
def test_training_on_cuda_learns_with_bf16_autocast(loss, build, cyclic):
    model = build(dropout=0.0)
    windows = cyclic()
    config = TrainConfig(lr=1e-2, batch_size=16, loss=loss, n_negatives=8, amp=True)
    Trainer(model, config, device="cuda").fit(windows, epochs=15)
    assert next(model.parameters()).device.type == "cuda"
    ranks = rank_targets(model, windows[:, :-1], windows[:, -1])
    assert next_item_metrics(ranks, ks=(1,))["hr@1"] > 0.5  # chance: 1/29


def test_function_preserving_growth_keeps_outputs_on_cuda(kind, build, batch):
    model = build().cuda()
    items = batch().cuda()
    grown = model.stack("adjacent", "function_preserving").eval()
    assert next(grown.parameters()).device.type == "cuda"
    torch.testing.assert_close(grown(items), model(items), rtol=1e-5, atol=1e-5)


def test_checkpoint_written_on_cuda_loads_on_cpu(kind, build, batch, cyclic):
    trainer = Trainer(build(), TrainConfig(batch_size=16), device="cuda")
    trainer.fit(cyclic())
    buffer = io.BytesIO()
    torch.save(to_payload(trainer.model, VOCAB, trainer.optimizer_state()), buffer)
    buffer.seek(0)
    loaded, _, _, _ = from_payload(torch.load(buffer, weights_only=True, map_location="cpu"))
    expected = trainer.model.eval()(batch().cuda()).cpu()
    torch.testing.assert_close(loaded.eval()(batch()), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("loss", ["full", "sampled"])
def test_resume_on_cuda_continues_the_same_loss_curve(loss, build, cyclic, losses):
    config = TrainConfig(batch_size=16, loss=loss, n_negatives=8, amp=False)
    windows = cyclic()
    straight = losses(Trainer(build(dropout=0.2), config, device="cuda"), windows, epochs=2)
    first = Trainer(build(dropout=0.2), config, device="cuda")
    head = losses(first, windows, epochs=2, max_steps=4)
    buffer = io.BytesIO()
    torch.save(to_payload(first.model, VOCAB, first.optimizer_state()), buffer)
    buffer.seek(0)
    model, _, optimizer_state, _ = from_payload(torch.load(buffer, weights_only=True))
    tail = losses(Trainer(model, config, optimizer_state, device="cuda"), windows, epochs=2)
    assert len(straight) == 6
    # same dropout masks and negatives after resume; CUDA's atomic adds leave float noise only
    np.testing.assert_allclose(head + tail, straight, rtol=1e-4)
