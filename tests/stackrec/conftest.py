"""Small models and batches for the contract tests that every model kind must pass.

Helpers are fixtures (not imports) so the tests run under any pytest import mode.
"""

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pytest
import torch

from stackrec.nextitnet import NextItNet, NextItNetConfig
from stackrec.sasrec import SASRec, SASRecConfig
from stackrec.sequences import Sequences
from stackrec.train import Trainer

# The models here are tiny: a second intra-op thread buys nothing, and on a shared two-core
# machine its barrier waits made these tests ten times slower.
torch.set_num_threads(1)

MODELS = {
    "nextitnet": (NextItNet, NextItNetConfig),
    "sasrec": (SASRec, SASRecConfig),
    "sasrec-separate-output": (SASRec, SASRecConfig),
    "sasrec-2-heads": (SASRec, SASRecConfig),
}
VARIANTS = {
    "sasrec-separate-output": {"shared_embeddings": False},
    "sasrec-2-heads": {"n_heads": 2},
}
SMALL = {"n_items": 30, "dim": 16, "n_blocks": 2, "max_len": 12}


def build_model(kind: str, **overrides) -> torch.nn.Module:
    """A small seeded model of ``kind`` whose residual branches are switched on (alpha 0.5)."""
    torch.manual_seed(0)
    settings = {**SMALL, **VARIANTS.get(kind, {}), **overrides}
    model_cls, config_cls = MODELS[kind]
    model = model_cls(config_cls(**settings))
    with torch.no_grad():  # alpha starts at 0 (identity blocks); make every block matter
        for name, param in model.named_parameters():
            if name.split(".")[-1].startswith("alpha"):
                param.fill_(0.5)
    return model.eval()


def make_batch(rows: int = 4, length: int = SMALL["max_len"], seed: int = 1) -> torch.Tensor:
    """Left-padded item sequences of varied lengths (row r has 2r pads), each ending in an item."""
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(1, SMALL["n_items"], (rows, length), generator=g)
    for r in range(rows):
        items[r, : r * 2] = 0
    return items


@pytest.fixture(params=list(MODELS))
def kind(request) -> str:
    return request.param


@pytest.fixture
def build(kind) -> Callable[..., torch.nn.Module]:
    return lambda **overrides: build_model(kind, **overrides)


@pytest.fixture
def batch() -> Callable[..., torch.Tensor]:
    return make_batch


def events_table(rows: list[tuple[str, str, int]]) -> pa.Table:
    users, items, ts = zip(*rows, strict=True)
    return pa.table({"user_id": list(users), "item_id": list(items), "ts": list(ts)})


@pytest.fixture
def events() -> Callable[[list[tuple[str, str, int]]], pa.Table]:
    """An interaction table from ``(user_id, item_id, ts)`` rows."""
    return events_table


def cyclic_windows(n_users: int = 40, length: int = 9, max_len: int = 8) -> torch.Tensor:
    """Histories where item i is always followed by i + 1 (mod 29): a pattern to learn."""
    n_items = SMALL["n_items"]
    starts = np.arange(n_users) % (n_items - 1)
    items = (starts[:, None] + np.arange(length)) % (n_items - 1) + 1
    users = np.repeat(np.arange(n_users), length)
    ts = np.tile(np.arange(length), n_users)
    return Sequences.from_arrays(users, items.ravel(), ts).windows(max_len)


@pytest.fixture
def cyclic() -> Callable[..., torch.Tensor]:
    return cyclic_windows


def losses_of(trainer: Trainer, windows: torch.Tensor, **fit) -> list[float]:
    """The loss of every step of ``trainer.fit(windows, **fit)``."""
    losses: list[float] = []
    trainer.fit(windows, on_step=lambda step, loss: losses.append(loss), **fit)
    return losses


@pytest.fixture
def losses() -> Callable[..., list[float]]:
    return losses_of
