"""Per-user, time-ordered item histories in CSR form, and the tensors training and serving need.

Everything is built with numpy sorts and gathers, never a Python loop over events or users, so
building the training windows of a few million events takes well under a second and the
training loop only ever slices ready-made tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def without_leading_padding(items: torch.Tensor) -> torch.Tensor:
    """``items`` (``[B, L]``, left padded) less the columns that are padding in every row.

    Both models' outputs at real positions ignore the padding before them, so this changes no
    result; it saves the compute a batch of short histories would spend on padding (Beauty's
    users have about 9 items of a 50-item context). Batch rows of similar length together
    (``by_length``) to make it pay.
    """
    real = (items != 0).any(0).nonzero()
    return items[:, int(real[0, 0]) :] if len(real) else items


def by_length(contexts: torch.Tensor) -> torch.Tensor:
    """Row indices of ``contexts`` (left padded), shortest history first, ties in row order."""
    return torch.argsort((contexts != 0).sum(1), stable=True)


class UnknownUserError(KeyError):
    """A user with no history in these sequences."""


@dataclass(frozen=True)
class Sequences:
    users: np.ndarray  # [U] distinct user indices, ascending
    offsets: np.ndarray  # [U + 1] user u's items are items[offsets[u]:offsets[u + 1]]
    items: np.ndarray  # [E] item indices, by user then time
    order: np.ndarray  # [E] position of each of those events in the arrays given to from_arrays

    @classmethod
    def from_arrays(cls, users: np.ndarray, items: np.ndarray, ts: np.ndarray) -> Sequences:
        """Group events by user and order them by time; ties keep their input order."""
        users, items, ts = (np.asarray(a, dtype=np.int64) for a in (users, items, ts))
        if not users.shape == items.shape == ts.shape or users.ndim != 1:
            raise ValueError(
                f"shapes differ: users {users.shape}, items {items.shape}, ts {ts.shape}"
            )
        if items.size and items.min() < 1:
            raise ValueError(f"item index {items.min()} < 1: index 0 is padding")
        order = np.argsort(ts, kind="stable")
        order = order[np.argsort(users[order], kind="stable")]
        sorted_users = users[order]
        boundary = np.r_[True, sorted_users[1:] != sorted_users[:-1]] if users.size else []
        starts = np.flatnonzero(boundary)
        offsets = np.r_[starts, users.size].astype(np.int64)
        return cls(sorted_users[starts], offsets, items[order], order)

    @property
    def lengths(self) -> np.ndarray:  # [U]
        return np.diff(self.offsets)

    def lengths_of(self, users: np.ndarray) -> np.ndarray:
        """History length of each of ``users``; ``UnknownUserError`` for users without one."""
        return self.lengths[self._rows(users)]

    def __len__(self) -> int:
        return len(self.users)

    def _rows(self, users: np.ndarray) -> np.ndarray:
        """Row of each user in ``self.users``; ``UnknownUserError`` for users without history."""
        users = np.asarray(users, dtype=np.int64)
        rows = np.searchsorted(self.users, users)
        rows = np.minimum(rows, max(len(self.users) - 1, 0))
        known = (self.users[rows] == users) if len(self.users) else np.zeros(users.shape, bool)
        if not known.all():
            raise UnknownUserError(f"user {users[~known][0]} has no history")
        return rows

    def windows(self, max_len: int, users: np.ndarray | None = None) -> torch.Tensor:
        """Training windows ``[N, max_len + 1]``: inputs ``w[:, :-1]``, targets ``w[:, 1:]``.

        Each history is cut from its end into windows whose targets do not overlap, so every
        item after a user's first is the target of exactly one window. Earlier windows are left
        padded with 0; a target counts only where its input is a real item.
        """
        return self._items_at(self._window_events(max_len, users))

    def window_flags(
        self, max_len: int, flags: np.ndarray, users: np.ndarray | None = None
    ) -> torch.Tensor:
        """``[N, max_len]`` bool, aligned with ``windows``' targets: ``flags`` (one per event,
        in the order given to ``from_arrays``) of each target position; False on padding."""
        return self._flags_at(self._window_events(max_len, users)[:, 1:], flags)

    def windows_with_flags(
        self, max_len: int, flags: np.ndarray, users: np.ndarray | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``windows`` and ``window_flags`` together, from one index computation."""
        at = self._window_events(max_len, users)
        return self._items_at(at), self._flags_at(at[:, 1:], flags)

    def overlapping_windows(self, max_len: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows that overlap so every target keeps at least ``max_len - stride`` items of
        context, and ``counted`` (``[N, max_len]`` bool) marking each target in one window only.

        ``windows`` cuts a long history into disjoint pieces, so the first targets of each
        piece see one or two items although the user did far more before them; on ML-100K
        (106 items per user, ``max_len`` 50) that is most windows. Here window ``j`` ends
        ``j * stride`` items before the history's end and counts only its last ``stride``
        targets; the earliest starts at the history's start and counts what is left. With
        ``stride = max_len`` the windows hold the same targets as ``windows``.
        """
        if not 1 <= stride <= max_len:
            raise ValueError(f"stride={stride} must be between 1 and max_len={max_len}")
        lengths, starts = self.lengths, self.offsets[:-1]
        targets = np.maximum(lengths - 1, 0)
        per_user = np.where(
            targets > max_len, -(-(targets - max_len) // stride) + 1, (targets > 0).astype(int)
        )
        user, j = self._number_windows(per_user)
        n, length = per_user[user], lengths[user]
        earliest = j == n - 1
        end = np.where(earliest, np.minimum(length, max_len + 1), length - j * stride)
        local = end[:, None] - (max_len + 1) + np.arange(max_len + 1)
        at = np.where(local >= 0, local + starts[user][:, None], -1)
        low = np.where(earliest, 1, end - stride)
        high = np.where(earliest & (n > 1), length - (n - 1) * stride, end)
        target = local[:, 1:]
        counted = (target >= low[:, None]) & (target < high[:, None])
        return self._items_at(at), torch.from_numpy(counted)

    def training_windows(
        self, max_len: int, stride: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``windows`` with no ``counted`` mask (``stride`` None), else ``overlapping_windows``."""
        if stride is None:
            return self.windows(max_len), None
        return self.overlapping_windows(max_len, stride)

    def _flags_at(self, at: np.ndarray, flags: np.ndarray) -> torch.Tensor:
        """The flag of the event at each index of ``at``, False where it is -1."""
        by_position = np.asarray(flags, dtype=bool)[self.order]
        return torch.from_numpy(np.where(at >= 0, by_position[np.maximum(at, 0)], False))

    def sample_windows(self, max_len: int, n: int, rng: np.random.Generator) -> torch.Tensor:
        """``n`` of ``windows(max_len)``, drawn uniformly without replacement, in their order;
        only the drawn windows are built, so a sample of a long log costs what the sample does."""
        total = self.n_windows(max_len)
        picked = np.sort(rng.choice(total, min(n, total), replace=False))
        return self._items_at(self._window_events(max_len, None, picked))

    def _items_at(self, at: np.ndarray) -> torch.Tensor:
        """The item at each index of ``at``, 0 (padding) where it is -1."""
        return torch.from_numpy(np.where(at >= 0, self.items[np.maximum(at, 0)], 0))

    def n_windows(self, max_len: int) -> int:
        """How many rows ``windows(max_len)`` has, without building them."""
        return int(self._windows_per_user(max_len, self.lengths).sum())

    @staticmethod
    def _windows_per_user(max_len: int, lengths: np.ndarray) -> np.ndarray:
        return np.where(lengths >= 2, (lengths - 2) // max_len + 1, 0)

    @staticmethod
    def _number_windows(
        per_user: np.ndarray, picked: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Windows numbered user after user (all, or those ``picked``): each one's user (its
        row in ``per_user``) and its place ``j`` among that user's, 0 being the most recent."""
        ends = np.cumsum(per_user)
        window = np.arange(ends[-1] if len(ends) else 0) if picked is None else picked
        user = np.searchsorted(ends, window, side="right")
        return user, window - (ends - per_user)[user]

    def _window_events(
        self, max_len: int, users: np.ndarray | None, picked: np.ndarray | None = None
    ) -> np.ndarray:
        """``[N, max_len + 1]`` index into ``items`` of each window position, -1 for padding:
        every window of ``users`` (None: everyone), or those numbered ``picked`` among them."""
        rows = np.arange(len(self.users)) if users is None else self._rows(users)
        starts, lengths = self.offsets[rows], self.lengths[rows]
        per_user = self._windows_per_user(max_len, lengths)
        user_of, j = self._number_windows(per_user, picked)
        end = lengths[user_of] - j * max_len  # one past the window's last item, user-local
        local = end[:, None] - (max_len + 1) + np.arange(max_len + 1)
        return np.where(local >= 0, local + starts[user_of][:, None], -1)

    def latest(self, users: np.ndarray, max_len: int) -> torch.Tensor:
        """Each user's last ``max_len`` items, left padded: the context for the next item."""
        rows = self._rows(users)
        return self._contexts(self.offsets[rows], self.offsets[rows + 1], max_len)

    def contexts_for(
        self, is_new: np.ndarray, max_len: int
    ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """Contexts and targets for prequential evaluation of the flagged events.

        ``is_new`` flags events in the order given to ``from_arrays``. Each flagged event's
        context is everything its user did before it (earlier new events included). Returns
        ``(contexts [N, max_len], targets [N], kept)``, ``kept`` being the original indices of
        the flagged events that have at least one item of context, ascending.
        """
        is_new = np.asarray(is_new, dtype=bool)
        if is_new.shape != self.order.shape:
            raise ValueError(f"is_new has shape {is_new.shape}, expected {self.order.shape}")
        position = np.empty_like(self.order)
        position[self.order] = np.arange(len(self.order))
        flagged = np.flatnonzero(is_new)
        pos = position[flagged]
        row = np.searchsorted(self.offsets, pos, side="right") - 1
        has_context = pos > self.offsets[row]
        pos, row = pos[has_context], row[has_context]
        contexts = self._contexts(self.offsets[row], pos, max_len)
        return contexts, torch.from_numpy(self.items[pos]), flagged[has_context]

    def head(self, drop_last: int | np.ndarray) -> Sequences:
        """The histories without each user's last ``drop_last`` items (per user if an array);
        users left with nothing are dropped."""
        local = np.arange(len(self.items)) - np.repeat(self.offsets[:-1], self.lengths)
        keep = local < np.repeat(self.lengths - drop_last, self.lengths)
        lengths = np.maximum(self.lengths - drop_last, 0)
        kept_users = lengths > 0
        offsets = np.r_[0, np.cumsum(lengths[kept_users])].astype(np.int64)
        return Sequences(self.users[kept_users], offsets, self.items[keep], self.order[keep])

    def before(self, positions: np.ndarray, max_len: int | None = None) -> torch.Tensor:
        """What each user did before flat position ``p``: the last ``max_len`` items, left
        padded (``None``: everything, padded to the longest)."""
        positions = np.asarray(positions, dtype=np.int64)
        starts = self.offsets[np.searchsorted(self.offsets, positions, side="right") - 1]
        if max_len is None:
            max_len = int((positions - starts).max(initial=1))
        return self._contexts(starts, positions, max(max_len, 1))

    def _contexts(self, starts: np.ndarray, ends: np.ndarray, max_len: int) -> torch.Tensor:
        """Items ``[start, end)`` of the flat array, the last ``max_len`` of them, left padded."""
        index = ends[:, None] - max_len + np.arange(max_len)
        valid = index >= starts[:, None]
        gathered = (
            self.items[np.clip(index, 0, max(len(self.items) - 1, 0))] if len(self.items) else 0
        )
        return torch.from_numpy(np.where(valid, gathered, 0).astype(np.int64))
