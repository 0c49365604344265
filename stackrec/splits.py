"""Held-out targets for offline evaluation: leave-one-out by time, and a time-window split.

Each held-out target comes with two views of the past: ``contexts``, the last ``max_len`` items
the model sees, and ``seen``, every earlier item of that user, which full-ranking protocols
remove from the candidates ("history masking") and sampled protocols never draw as negatives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from stackrec.sequences import Sequences


@dataclass(frozen=True)
class HeldOut:
    contexts: torch.Tensor  # [N, max_len] left-padded items before each target
    targets: torch.Tensor  # [N] item indices
    seen: torch.Tensor  # [N, H] every item the user had before the target, padded with 0
    users: np.ndarray  # [N] the user of each target

    def __len__(self) -> int:
        return len(self.targets)


@dataclass(frozen=True)
class Split:
    train: Sequences  # what a model may learn from
    valid: HeldOut  # for early stopping and model choice
    test: HeldOut  # reported once


def held_out_at(sequences: Sequences, positions: np.ndarray, max_len: int) -> HeldOut:
    """Targets at flat ``positions`` of ``sequences``, each with its context and history."""
    row = np.searchsorted(sequences.offsets, positions, side="right") - 1
    return HeldOut(
        contexts=sequences.before(positions, max_len),
        targets=torch.from_numpy(sequences.items[positions]),
        seen=sequences.before(positions),
        users=sequences.users[row],
    )


def leave_one_out(sequences: Sequences, max_len: int) -> Split:
    """Per user: last item test, second-to-last validation, the rest training.

    Users with fewer than 3 items keep their whole history in training and have no held-out
    target, as in SASRec's and BERT4Rec's protocol. The test context includes the validation item.
    """
    ends = sequences.offsets[1:]
    evaluated = sequences.lengths >= 3
    return Split(
        train=sequences.head(np.where(evaluated, 2, 0)),
        valid=held_out_at(sequences, ends[evaluated] - 2, max_len),
        test=held_out_at(sequences, ends[evaluated] - 1, max_len),
    )


def time_split(
    users: np.ndarray,
    items: np.ndarray,
    ts: np.ndarray,
    valid_from: int,
    test_from: int,
    max_len: int,
) -> Split:
    """Train on events before ``valid_from``; validate on ``[valid_from, test_from)``; test after.

    Every held-out event is predicted from everything its user did before it (earlier held-out
    events included), as a deployed model would; events with no earlier item are skipped.
    """
    if not valid_from <= test_from:
        raise ValueError(f"valid_from={valid_from} must not be after test_from={test_from}")
    users, items, ts = (np.asarray(a, dtype=np.int64) for a in (users, items, ts))
    early = ts < valid_from
    if not early.any():
        raise ValueError(f"no event before valid_from={valid_from}: nothing to train on")
    everything = Sequences.from_arrays(users, items, ts)
    sorted_ts = ts[everything.order]
    starts = np.repeat(everything.offsets[:-1], everything.lengths)
    has_past = np.arange(len(sorted_ts)) > starts

    def held_out(low: int, high: float) -> HeldOut:
        positions = np.flatnonzero((sorted_ts >= low) & (sorted_ts < high) & has_past)
        return held_out_at(everything, positions, max_len)

    return Split(
        train=Sequences.from_arrays(users[early], items[early], ts[early]),
        valid=held_out(valid_from, test_from),
        test=held_out(test_from, np.inf),
    )
