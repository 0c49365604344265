import numpy as np
import pytest
import torch

from stackrec.sequences import Sequences, UnknownUserError, by_length, without_leading_padding
from stackrec.train import target_mask

# user 7: items 1, 2, 3, 4, 5 (in time order, given shuffled); user 3: items 9, 8
USERS = np.array([7, 3, 7, 7, 3, 7, 7])
ITEMS = np.array([3, 8, 1, 2, 9, 5, 4])
TS = np.array([30, 20, 10, 20, 10, 50, 40])


def make() -> Sequences:
    return Sequences.from_arrays(USERS, ITEMS, TS)


def test_from_arrays_groups_by_user_and_orders_by_time():
    seqs = make()
    np.testing.assert_array_equal(seqs.users, [3, 7])
    np.testing.assert_array_equal(seqs.offsets, [0, 2, 7])
    np.testing.assert_array_equal(seqs.items, [9, 8, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(ITEMS[seqs.order], seqs.items)


def test_ties_keep_input_order():
    seqs = Sequences.from_arrays(np.array([1, 1, 1]), np.array([5, 6, 7]), np.array([0, 0, 0]))
    np.testing.assert_array_equal(seqs.items, [5, 6, 7])


def test_windows_cover_every_target_once():
    w = make().windows(max_len=2)
    assert w.dtype == torch.int64
    assert w.tolist() == [[0, 9, 8], [3, 4, 5], [1, 2, 3]]
    targets = w[:, 1:][(w[:, :-1] != 0) & (w[:, 1:] != 0)]
    assert sorted(targets.tolist()) == [2, 3, 4, 5, 8]  # every item but each user's first


def test_overlapping_windows_keep_context_and_count_every_target_once():
    # user 7: 1, 2, 3, 4, 5; max_len 3, stride 1: each counted target sees >= 2 items before it
    w, counted = make().overlapping_windows(max_len=3, stride=1)
    assert w.tolist() == [[0, 0, 9, 8], [2, 3, 4, 5], [1, 2, 3, 4]]
    assert counted.tolist() == [[False, False, True], [False, False, True], [True, True, True]]
    assert sorted(w[:, 1:][counted].tolist()) == [2, 3, 4, 5, 8]  # 4 is context only in row 1


def test_overlapping_windows_count_the_same_targets_as_disjoint_ones():
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(6), [1, 2, 5, 11, 23, 40])
    seqs = Sequences.from_arrays(users, rng.integers(1, 50, len(users)), np.arange(len(users)))
    disjoint = seqs.windows(5)
    disjoint_targets = disjoint[:, 1:][target_mask(disjoint)]
    for stride in range(1, 6):
        w, counted = seqs.overlapping_windows(5, stride)
        mask = counted & (w[:, :-1] != 0)
        # each (user, position) once: the targets' event indices match the disjoint windows'
        assert int(mask.sum()) == len(disjoint_targets)
        assert sorted(w[:, 1:][mask].tolist()) == sorted(disjoint_targets.tolist())
        # only a history's own first targets see fewer than 5 - stride + 1 items before them
        seen = (w[:, :-1] != 0).cumsum(1)[mask]
        first_targets = np.minimum(seqs.lengths - 1, 5 - stride).clip(0).sum()
        assert int((seen < 5 - stride + 1).sum()) == first_targets and int(seen.min()) >= 1
    with pytest.raises(ValueError, match="stride=6"):
        seqs.overlapping_windows(5, 6)


def test_window_flags_follow_the_events_into_the_targets():
    seqs = make()
    flagged = TS >= 40  # user 7's two latest events (items 4 and 5), given in input order
    flags = seqs.window_flags(2, flagged)
    w = seqs.windows(max_len=2)
    assert flags.dtype == torch.bool and flags.shape == (3, 2)
    assert sorted(w[:, 1:][flags].tolist()) == [4, 5]
    assert seqs.window_flags(2, flagged, users=np.array([3])).tolist() == [[False, False]]
    both = seqs.windows_with_flags(2, flagged, users=np.array([7]))
    assert both[0].tolist() == seqs.windows(2, users=np.array([7])).tolist()
    assert both[1].tolist() == seqs.window_flags(2, flagged, users=np.array([7])).tolist()


def test_windows_for_selected_users_and_short_histories():
    seqs = Sequences.from_arrays(np.array([1, 2, 2]), np.array([4, 5, 6]), np.array([0, 0, 1]))
    assert seqs.windows(3).tolist() == [[0, 0, 5, 6]]  # user 1 has one item: no window
    assert seqs.windows(3, users=np.array([2])).tolist() == [[0, 0, 5, 6]]
    assert seqs.windows(3, users=np.array([1])).shape == (0, 4)
    with pytest.raises(UnknownUserError, match="99"):
        seqs.windows(3, users=np.array([99]))


def test_sample_windows_draws_distinct_windows_in_order_without_building_the_rest():
    # user 1: one item (no window), user 2: 7 items (3 windows of 2), user 3: 3 items (1)
    users = np.array([1] + [2] * 7 + [3] * 3)
    seqs = Sequences.from_arrays(users, np.arange(1, 12), np.arange(11))
    every = seqs.windows(2)
    assert len(every) == 4
    drawn = seqs.sample_windows(2, 3, np.random.default_rng(5))
    rows = [every.tolist().index(w) for w in drawn.tolist()]
    assert len(set(rows)) == 3 and rows == sorted(rows)
    expected = np.sort(np.random.default_rng(5).choice(4, 3, replace=False))
    assert rows == expected.tolist()  # the same draw as picking from windows(): no bias
    assert seqs.sample_windows(2, 10, np.random.default_rng(0)).tolist() == every.tolist()
    empty = Sequences.from_arrays(*(np.array([], dtype=np.int64),) * 3)
    assert empty.sample_windows(2, 3, np.random.default_rng(0)).shape == (0, 3)


def test_latest_is_left_padded_tail():
    assert make().latest(np.array([7, 3]), 3).tolist() == [[3, 4, 5], [0, 9, 8]]


def test_contexts_for_flagged_events():
    is_new = np.zeros(len(USERS), bool)
    is_new[[2, 5, 1]] = True  # user 7's first item (no context), its last, user 3's last
    contexts, targets, kept = make().contexts_for(is_new, max_len=3)
    np.testing.assert_array_equal(kept, [1, 5])
    assert targets.tolist() == [8, 5]
    assert contexts.tolist() == [[0, 0, 9], [2, 3, 4]]


def test_rejects_padding_items_and_mismatched_shapes():
    with pytest.raises(ValueError, match="padding"):
        Sequences.from_arrays(np.array([1]), np.array([0]), np.array([0]))
    with pytest.raises(ValueError, match="shapes"):
        Sequences.from_arrays(np.array([1, 2]), np.array([1]), np.array([0]))


def test_without_leading_padding_drops_only_columns_padded_in_every_row():
    items = torch.tensor([[0, 0, 0, 5, 6], [0, 0, 7, 8, 9]])
    assert without_leading_padding(items).tolist() == [[0, 5, 6], [7, 8, 9]]
    full = torch.tensor([[1, 2], [0, 3]])
    assert torch.equal(without_leading_padding(full), full)


def test_by_length_puts_short_histories_first_and_keeps_ties_in_order():
    contexts = torch.tensor([[1, 2, 3], [0, 0, 4], [0, 5, 6], [0, 0, 7]])
    assert by_length(contexts).tolist() == [1, 3, 2, 0]
