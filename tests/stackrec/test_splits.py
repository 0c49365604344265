import numpy as np
import pytest

from stackrec.sequences import Sequences
from stackrec.splits import leave_one_out, time_split

# user 1: items 1 2 3 4; user 2: items 5 6 (too short to evaluate); user 3: items 7 8 9
USERS = np.array([1, 1, 1, 1, 2, 2, 3, 3, 3])
ITEMS = np.arange(1, 10)


def test_leave_one_out_holds_out_the_last_two_items():
    split = leave_one_out(Sequences.from_arrays(USERS, ITEMS, np.arange(9)), max_len=3)
    assert split.train.items.tolist() == [1, 2, 5, 6, 7]
    assert split.train.users.tolist() == [1, 2, 3]
    assert split.valid.targets.tolist() == [3, 8]
    assert split.valid.contexts.tolist() == [[0, 1, 2], [0, 0, 7]]
    assert split.test.targets.tolist() == [4, 9]
    assert split.test.contexts.tolist() == [[1, 2, 3], [0, 7, 8]]  # the validation item included
    assert split.test.users.tolist() == [1, 3]


def test_history_is_complete_even_beyond_max_len():
    split = leave_one_out(Sequences.from_arrays(USERS, ITEMS, np.arange(9)), max_len=1)
    assert split.test.contexts.tolist() == [[3], [8]]
    assert split.test.seen.tolist() == [[1, 2, 3], [0, 7, 8]]


def test_time_split_by_timestamps():
    ts = np.array([0, 1, 5, 8, 2, 6, 0, 7, 9])
    split = time_split(USERS, ITEMS, ts, valid_from=5, test_from=8, max_len=2)
    assert split.train.items.tolist() == [1, 2, 5, 7]
    assert split.valid.targets.tolist() == [3, 6, 8]
    assert split.valid.contexts.tolist() == [[1, 2], [0, 5], [0, 7]]
    assert split.test.targets.tolist() == [4, 9]
    assert split.test.seen.tolist() == [[1, 2, 3], [0, 7, 8]]


def test_time_split_skips_held_out_events_without_a_past():
    split = time_split(np.array([1, 2]), np.array([1, 2]), np.array([0, 5]), 5, 9, max_len=2)
    assert len(split.valid) == 0


def test_time_split_refuses_an_empty_training_set():
    with pytest.raises(ValueError, match="nothing to train on"):
        time_split(USERS, ITEMS, np.arange(9) + 10, valid_from=5, test_from=8, max_len=2)
