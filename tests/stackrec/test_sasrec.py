"""What SASRec adds to the shared model contract: shared tables, positions, heads."""

import pytest
import torch

from stackrec.sasrec import SASRec, SASRecConfig


def test_shared_embeddings_score_with_the_input_table():
    shared = SASRec(SASRecConfig(n_items=10, dim=8))
    assert shared.item_vectors() is shared.embedding.weight
    separate = SASRec(SASRecConfig(n_items=10, dim=8, shared_embeddings=False))
    assert separate.item_vectors() is separate.output.weight


def test_growing_shared_embeddings_keeps_one_table():
    model = SASRec(SASRecConfig(n_items=10, dim=8))
    model.grow_items(12)
    assert model.item_vectors() is model.embedding.weight
    assert model.item_vectors().shape == (12, 8)


def test_longer_than_max_len_is_refused():
    with pytest.raises(ValueError, match="exceeds max_len=4"):
        SASRec(SASRecConfig(n_items=10, dim=8, max_len=4))(torch.ones(1, 5, dtype=torch.long))


def test_heads_must_divide_the_width():
    with pytest.raises(ValueError, match="n_heads=3"):
        SASRecConfig(n_items=10, dim=8, n_heads=3)
