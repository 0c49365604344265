import math

import numpy as np
import pytest

from stackrec.ranking import next_item_metrics


def test_metrics_against_hand_computed_values():
    m = next_item_metrics(np.array([1, 3, 11, 2]), ks=(1, 3, 10))
    assert m["n"] == 4
    assert m["hr@1"] == pytest.approx(0.25)
    assert m["ndcg@1"] == pytest.approx(0.25)
    assert m["mrr@1"] == pytest.approx(0.25)
    assert m["hr@3"] == pytest.approx(0.75)
    assert m["ndcg@3"] == pytest.approx((1 + 1 / math.log2(3) + 0.5) / 4)
    assert m["mrr@3"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 4)
    assert m["hr@10"] == pytest.approx(0.75)


def test_empty_ranks_give_zeros_and_n():
    assert next_item_metrics(np.array([], dtype=np.int64), ks=(5,)) == {
        "n": 0,
        "hr@5": 0.0,
        "ndcg@5": 0.0,
        "mrr@5": 0.0,
    }


def test_rank_zero_is_refused():
    with pytest.raises(ValueError, match="1-based"):
        next_item_metrics(np.array([0, 2]))
