"""The model library on a CUDA device: what CPU-only CI cannot check.

Skipped where no GPU is visible. On a GPU machine: ``python -m pytest tests/stackrec/test_cuda.py``.
"""

import io

import numpy as np
import pytest
import torch

from stackrec.checkpoint import from_payload, to_payload
from stackrec.evaluate import next_item_metrics, rank_targets
from stackrec.sequences import Sequences
from stackrec.train import TrainConfig, Trainer
from stackrec.vocab import Vocabulary

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

N_ITEMS = 30  # n_items of the small models that conftest builds
VOCAB = Vocabulary.from_ids(["<pad>", *map(str, range(1, N_ITEMS))])


def cyclic_windows(n_users: int = 40, length: int = 9, max_len: int = 8) -> torch.Tensor:
    """Histories where item i is always followed by i + 1 (mod 29): a pattern to learn."""
    starts = np.arange(n_users) % (N_ITEMS - 1)
    items = (starts[:, None] + np.arange(length)) % (N_ITEMS - 1) + 1
    users = np.repeat(np.arange(n_users), length)
    ts = np.tile(np.arange(length), n_users)
    return Sequences.from_arrays(users, items.ravel(), ts).windows(max_len)


def losses_of(trainer: Trainer, windows: torch.Tensor, **fit) -> list[float]:
    losses: list[float] = []
    trainer.fit(windows, on_step=lambda step, loss: losses.append(loss), **fit)
    return losses


@pytest.mark.parametrize("loss", ["full", "sampled"])
def test_training_on_cuda_learns_with_bf16_autocast(loss, build):
    model = build(dropout=0.0)
    windows = cyclic_windows()
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


def test_checkpoint_written_on_cuda_loads_on_cpu(kind, build, batch):
    trainer = Trainer(build(), TrainConfig(batch_size=16), device="cuda")
    trainer.fit(cyclic_windows())
    buffer = io.BytesIO()
    torch.save(to_payload(trainer.model, VOCAB, trainer.optimizer_state()), buffer)
    buffer.seek(0)
    loaded, _, _, _ = from_payload(torch.load(buffer, weights_only=True, map_location="cpu"))
    expected = trainer.model.eval()(batch().cuda()).cpu()
    torch.testing.assert_close(loaded.eval()(batch()), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("loss", ["full", "sampled"])
def test_resume_on_cuda_continues_the_same_loss_curve(loss, build):
    config = TrainConfig(batch_size=16, loss=loss, n_negatives=8, amp=False)
    windows = cyclic_windows()
    straight = losses_of(Trainer(build(dropout=0.2), config, device="cuda"), windows, epochs=2)
    first = Trainer(build(dropout=0.2), config, device="cuda")
    head = losses_of(first, windows, epochs=2, max_steps=4)
    buffer = io.BytesIO()
    torch.save(to_payload(first.model, VOCAB, first.optimizer_state()), buffer)
    buffer.seek(0)
    model, _, optimizer_state, _ = from_payload(torch.load(buffer, weights_only=True))
    tail = losses_of(Trainer(model, config, optimizer_state, device="cuda"), windows, epochs=2)
    assert len(straight) == 6
    # same dropout masks and negatives after resume; CUDA's atomic adds leave float noise only
    np.testing.assert_allclose(head + tail, straight, rtol=1e-4)
