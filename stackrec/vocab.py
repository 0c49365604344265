"""A growable mapping between external string ids and the integer rows of an embedding table.

Index 0 is reserved for padding, so a left-padded batch of item indices can use 0 for "no item".
Ids only ever get appended: an id keeps its row for the life of a model, which is what lets the
vocabulary grow with the stream without retraining the rows already learned.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

PAD = "<pad>"  # the id at index 0; never a real item or user


class UnknownIdError(KeyError):
    """An id that the vocabulary has never seen (or the padding token used as an id)."""

    def __init__(self, unknown: str, n_unknown: int = 1) -> None:
        more = f" (and {n_unknown - 1} more)" if n_unknown > 1 else ""
        super().__init__(f"unknown id {unknown!r}{more}")
        self.unknown = unknown
        self.n_unknown = n_unknown


class Vocabulary:
    """String ids <-> int64 indices, append-only, with index 0 for padding."""

    def __init__(self) -> None:
        self._ids: list[str] = [PAD]
        self._index: dict[str, int] = {PAD: 0}

    @classmethod
    def from_ids(cls, ids: Sequence[str]) -> Vocabulary:
        """Rebuild a vocabulary saved as ``vocab.ids`` (``ids[0]`` must be the pad token)."""
        if len(ids) == 0 or ids[0] != PAD:
            first = ids[0] if len(ids) else None
            raise ValueError(f"ids[0] must be the pad token {PAD!r}, got {first!r}")
        vocab = cls()
        vocab._ids = [str(i) for i in ids]
        vocab._index = {id_: i for i, id_ in enumerate(vocab._ids)}
        if len(vocab._index) != len(vocab._ids):
            raise ValueError(f"duplicate ids in a vocabulary of {len(vocab._ids)} ids")
        return vocab

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, id_: object) -> bool:
        return id_ != PAD and id_ in self._index

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} ids incl. padding)"

    @property
    def ids(self) -> list[str]:
        """All ids by index, padding first (a copy: the vocabulary only grows through ``add``)."""
        return list(self._ids)

    def id_of(self, index: int) -> str:
        """The external id stored at ``index``."""
        if not 0 <= index < len(self._ids):
            raise IndexError(f"index {index} outside a vocabulary of {len(self._ids)}")
        return self._ids[index]

    def add(self, ids: Iterable[str]) -> int:
        """Append the ids not yet known, in first-seen order; return how many were new."""
        values = np.asarray(list(ids), dtype=object).astype(str)
        unique, first = np.unique(values, return_index=True)
        if PAD in unique:
            raise ValueError(f"{PAD!r} is the padding token and cannot be used as an id")
        new = [
            str(u) for u in unique[np.argsort(first, kind="stable")] if str(u) not in self._index
        ]
        for id_ in new:
            self._index[id_] = len(self._ids)
            self._ids.append(id_)
        return len(new)

    def lookup(self, ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Indices of ``ids`` (int64); raise ``UnknownIdError`` naming the first unknown id.

        Each distinct id is looked up once, so a column of a million events costs a dictionary
        lookup per distinct id plus one vectorised gather.
        """
        values = np.asarray(ids, dtype=object).astype(str)
        if values.size == 0:
            return np.zeros(values.shape, dtype=np.int64)
        unique, inverse = np.unique(values, return_inverse=True)
        found = np.fromiter((self._index.get(u, 0) for u in unique), np.int64, len(unique))
        missing = unique[found == 0]
        if missing.size:
            raise UnknownIdError(str(missing[0]), int(missing.size))
        return found[inverse].reshape(values.shape)
