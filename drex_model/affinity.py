"""Ranking state beside the DReX representations, learned online, torch-free.

A rating model says how much a user would like an item, not which items they would pick;
on real data a ranking by predicted rating alone is close to a popularity list. Two kinds
of state make the ranking personal (measured in docs/results.md):

* :class:`CoOccurrence`, who-also-picked: for each pair of items, how many users picked
  both (within each user's ``window`` most recent distinct items), and how many users
  picked each item. This is the state of item-based collaborative filtering (ItemKNN,
  cosine similarity with shrinkage), kept as running counts so that it streams: a new
  (user, item) pair adds one to the pairs it forms with the user's recent items, or
  less the more items the user had picked before it (:func:`activity_weight`).
* content vectors (:func:`review_vector`), what the reviews say: each user's and item's
  sum of the unit, mean-pooled frozen-encoder vectors of the reviews they wrote or
  received. Kept by :class:`drex_model.entities.EntityTable` (``content``), scored as the
  cosine of a user's sum with an item's.

Both are updated per interaction in :meth:`drex_model.learner.DReXLearner.learn_many`,
after that interaction is scored, and restart with each training pass like the rating
sums. :mod:`drex_model.scoring` turns them into ranking terms.

Notation: I items, H encoder hidden size.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Reversible, Sequence
from typing import Final, TypeVar

import numpy as np
import numpy.typing as npt

from drex_model.scoring import cooccurrence_sparse

T = TypeVar("T")
DEFAULT_WINDOW: Final = 200  # a user's most recent distinct items a new one pairs with


class CoOccurrence:
    """Item-item co-occurrence counts over users, as running sums (see the module doc).

    Items are the learner's item rows (ints); ``pairs[i][j]`` is the number of users
    who picked both i and j, each counted with the weight given to :meth:`add` (1
    unless the learner weighs users by their activity), ``users[i]`` the number who
    picked i. Symmetric.

    >>> co = CoOccurrence()
    >>> co.add([], 0); co.add([0], 1)  # a first user picks 0, then 1
    >>> co.add([], 1); co.add([1], 0)  # a second user picks 1, then 0
    >>> co.pairs[0], co.users
    ({1: 2.0}, {0: 2.0, 1: 2.0})
    """

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self.pairs: dict[int, dict[int, float]] = {}
        self.users: dict[int, float] = {}
        self.changed: set[int] = set()  # items whose counts changed since the last take
        self._arrays: dict[int, tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]] = {}
        self._users_array: npt.NDArray[np.float64] | None = None  # until a count changes

    def __len__(self) -> int:
        return len(self.users)

    def add(self, history: Sequence[int], item: int, weight: float = 1.0) -> None:
        """A user whose earlier distinct items are ``history`` (oldest first) picked
        ``item`` for the first time: one more user for it, and ``weight`` more for each
        pair it forms with the last ``window`` of them (see :func:`activity_weight`)."""
        self.users[item] = self.users.get(item, 0.0) + 1.0
        self.changed.add(item)
        self._arrays.pop(item, None)
        self._users_array = None
        row = self.pairs.setdefault(item, {})
        for j in history[-self.window :]:
            if j == item:
                continue
            row[j] = row.get(j, 0.0) + weight
            other = self.pairs.setdefault(j, {})
            other[item] = other.get(item, 0.0) + weight
            self.changed.add(j)
            self._arrays.pop(j, None)

    def take_changed(self) -> set[int]:
        """The items whose counts changed since the last call (and forget them)."""
        out, self.changed = self.changed, set()
        return out

    def reset(self) -> None:
        """Forget every count (the start of a training pass)."""
        self.pairs.clear()
        self.users.clear()
        self.changed.clear()
        self._arrays.clear()
        self._users_array = None

    def row(self, item: int) -> tuple[float, dict[int, float]]:
        """(users who picked ``item``, its co-occurrence counts by item)."""
        return self.users.get(item, 0.0), self.pairs.get(item, {})

    def row_arrays(self, item: int) -> tuple[float, npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """:meth:`row` as arrays (users, item rows, counts), cached until the row changes:
        what :func:`drex_model.scoring.cooccurrence_sparse` reads per query."""
        cached = self._arrays.get(item)
        if cached is None:
            pairs = self.pairs.get(item, {})
            cached = (
                np.fromiter(pairs.keys(), dtype=np.int64, count=len(pairs)),
                np.fromiter(pairs.values(), dtype=np.float64, count=len(pairs)),
            )
            self._arrays[item] = cached
        return self.users.get(item, 0.0), cached[0], cached[1]

    def users_array(self, n: int) -> npt.NDArray[np.float64]:
        """Users who picked each of the item rows ``0..n-1``, as an array ``(n,)``; kept
        until a count changes (read only: callers share it)."""
        cached = self._users_array
        if cached is not None and len(cached) == n:
            return cached
        out = np.zeros(n)
        if self.users:
            rows = np.fromiter(self.users.keys(), dtype=np.int64, count=len(self.users))
            users = np.fromiter(self.users.values(), dtype=np.float64, count=len(self.users))
            keep = rows < n
            out[rows[keep]] = users[keep]
        self._users_array = out
        return out

    def scores(
        self, items: Iterable[int], n: int, shrinkage: float
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """The co-occurrence term of a user who picked ``items``, over item rows
        ``0..n-1``, sparse: :func:`drex_model.scoring.cooccurrence_sparse`."""
        history = [self.row_arrays(i) for i in items]
        return cooccurrence_sparse(history, self.users_array(n), shrinkage)

    def load(self, rows: Iterable[tuple[int, float, Mapping[int, float]]]) -> None:
        """Take counts back: (item, users, {neighbour: count}) per item."""
        for item, users, pairs in rows:
            self.users[item] = float(users)
            self.pairs[item] = {int(j): float(c) for j, c in pairs.items()}
            self._arrays.pop(item, None)
        self._users_array = None


def recent(items: Reversible[T], window: int) -> list[T]:
    """The last ``window`` of ``items`` (an ordered set, such as a dict), newest first,
    without walking the older ones: what a new pick pairs with.

    >>> recent(dict.fromkeys("abcd"), 2)
    ['d', 'c']
    """
    return list(itertools.islice(reversed(items), window))


def activity_weight(earlier: int, exponent: float) -> float:
    """What each pair a user's new item forms counts: ``(earlier + 1) ** -exponent``,
    ``earlier`` being how many distinct items the user had picked before it.

    A pair from a user with few items says more about the two items than one from a user
    who picked hundreds (inverse user frequency, as in RP3beta). The weight is known when
    the pair is added, so it streams. Exponent 0 counts every pair as 1 (ItemKNN).

    >>> activity_weight(0, 0.5), activity_weight(3, 0.5), activity_weight(3, 0.0)
    (1.0, 0.5, 1.0)
    """
    return float((earlier + 1) ** -exponent)


def review_vector(tokens: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """The unit mean-pooled vector ``(H,)`` of a review's frozen-encoder tokens ``(T, H)``
    (sentence encoders such as all-MiniLM-L6-v2 are trained to be read this way)."""
    t = np.asarray(tokens, dtype=np.float32)
    if t.size == 0:
        return np.zeros(t.shape[-1], dtype=np.float32)
    v = t.mean(axis=0)
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v
