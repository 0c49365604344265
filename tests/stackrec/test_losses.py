import pytest
import torch
import torch.nn.functional as F

import stackrec.losses as losses
from stackrec.losses import TiledCrossEntropy, full_cross_entropy, sampled_softmax


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles that do not divide the sizes, so ragged edges are exercised."""
    monkeypatch.setattr(losses, "ROWS_PER_TILE", 7)
    monkeypatch.setattr(losses, "ITEMS_PER_TILE", 5)
    monkeypatch.setattr(losses, "TILED_ABOVE", 0)


def inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    vectors = torch.randn(23, 8, generator=g, dtype=dtype, requires_grad=True)
    hidden = torch.randn(17, 8, generator=g, dtype=dtype, requires_grad=True)
    return hidden, vectors, torch.randint(1, 23, (17,), generator=g)


def test_tiled_loss_and_gradients_equal_plain_cross_entropy(small_tiles):
    hidden, vectors, targets = inputs()
    expected = F.cross_entropy(hidden @ vectors[1:].T, targets - 1)
    grads = torch.autograd.grad(expected, (hidden, vectors))
    tiled = full_cross_entropy(hidden, vectors, targets)
    torch.testing.assert_close(tiled, expected)
    for got, want in zip(torch.autograd.grad(tiled, (hidden, vectors)), grads, strict=True):
        torch.testing.assert_close(got, want)


def test_tiled_gradients_pass_gradcheck(small_tiles):
    hidden, vectors, targets = inputs(torch.float64)
    assert torch.autograd.gradcheck(
        lambda h, w: TiledCrossEntropy.apply(h, w, targets), (hidden, vectors)
    )


def test_padding_row_gets_no_gradient(small_tiles):
    hidden, vectors, targets = inputs()
    full_cross_entropy(hidden, vectors, targets).backward()
    assert float(vectors.grad[0].abs().sum()) == 0.0


def test_sampling_every_item_once_uniformly_is_the_full_softmax():
    hidden, vectors, targets = inputs()
    everything = torch.arange(1, 23)
    log_q = torch.zeros(23)  # log(S * q) with S = 22 items, q = 1/22
    sampled = sampled_softmax(hidden, vectors, targets, everything, log_q)
    torch.testing.assert_close(sampled, F.cross_entropy(hidden @ vectors[1:].T, targets - 1))


def test_log_q_correction_removes_the_proposal_bias():
    hidden, vectors, targets = inputs()
    # a sample that holds every item twice: counts 2 = S * q, so log_q = log 2 everywhere
    twice = torch.arange(1, 23).repeat(2)
    corrected = sampled_softmax(hidden, vectors, targets, twice, torch.full((23,), 2.0).log())
    logits = hidden @ vectors[1:].T
    # each negative appears twice at logit - log 2: the same mass as once at its logit;
    # the positive appears at its logit - log 2, i.e. with half its mass
    positive = logits.gather(1, (targets - 1)[:, None]).squeeze(1) - torch.tensor(2.0).log()
    rest = logits.scatter(1, (targets - 1)[:, None], float("-inf"))
    expected = (torch.logaddexp(positive, torch.logsumexp(rest, 1)) - positive).mean()
    torch.testing.assert_close(corrected, expected)
