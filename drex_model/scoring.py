"""How a (user, item) pair is scored, ranked and explained: one home, numpy only.

The learner ranks with it (:meth:`drex_model.learner.DReXLearner.score_matrix`) and the
server answers with it (``serving/replica.py``), so a term of the score is written once.
Training computes the same rating in torch (``drex_model.model.DReX.predict``), because it
needs gradients; ``tests/unit/test_scoring.py`` pins that both agree.

The score of user u and item i, from their representations (the GRU state plus the static
embedding) and the per-entity scalars the learner keeps:

    rating(u, i) = relu(W_u u + b + W_i i) . w + b_out     the rating head's MLP
                 + mean                                     ratings folded in so far
                 + bias_u + bias_i                          (bias_terms)
                 + c_u dev_u + c_i dev_i                    (running_bias)
    dev = (sum of ratings - n * mean) / (n + shrinkage)     shrunk mean deviation
    rank(u, i)   = rating(u, i) + exposure_weight * log(1 + ratings of i)

The first layer is linear, so ``W_u u + b`` and ``W_i i`` are computed once per row
(:meth:`Head.project`) and every additive term folds into one constant per row
(:meth:`Head.constants`): a pair then costs D multiply-adds.

The explanation of (u, i) is :func:`shared_keywords`: the words in both top-10 keyword
profiles, by summed rank.

Notation: U users, I items, D embedding size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.floating[Any]]
EXPLAIN_TOP: Final = 10  # profile words an explanation draws from
# The dense network's parameters the score reads, by their state_dict names.
HEAD_PARAMETERS: Final = (
    "head.hidden.weight",
    "head.hidden.bias",
    "head.out.weight",
    "head.out.bias",
    "deviation_weight",
)
_PAIRS_PER_CHUNK: Final = 1 << 22  # user-item-dim products per chunk of score_matrix


@dataclass(frozen=True)
class Head:
    """The rating head and the global terms of the score."""

    w_user: npt.NDArray[np.float32]  # (D, D) first layer, user half, transposed
    w_item: npt.NDArray[np.float32]  # (D, D) first layer, item half, transposed
    b_hidden: npt.NDArray[np.float32]  # (D,)
    w_out: npt.NDArray[np.float32]  # (D,)
    b_out: float
    deviation_weight: npt.NDArray[np.float32]  # (2,) user, item
    bias_terms: bool
    running_bias: bool
    shrinkage: float
    rating_levels: int
    exposure_weight: float  # the config's; >= 0

    @classmethod
    def from_parameters(
        cls, parameters: Mapping[str, npt.ArrayLike], config: Mapping[str, Any]
    ) -> Head:
        """From the network's parameters (:data:`HEAD_PARAMETERS`) and its config (as
        ``DReXConfig.to_dict()`` gives it)."""
        hidden = np.asarray(parameters["head.hidden.weight"], dtype=np.float32)  # (D, 2D)
        d = hidden.shape[0]
        return cls(
            w_user=np.ascontiguousarray(hidden[:, :d].T),
            w_item=np.ascontiguousarray(hidden[:, d:].T),
            b_hidden=np.asarray(parameters["head.hidden.bias"], dtype=np.float32),
            w_out=np.asarray(parameters["head.out.weight"], dtype=np.float32).reshape(-1),
            b_out=float(np.asarray(parameters["head.out.bias"]).reshape(-1)[0]),
            deviation_weight=np.asarray(parameters["deviation_weight"], dtype=np.float32),
            bias_terms=bool(config["bias_terms"]),
            running_bias=bool(config["running_bias"]),
            shrinkage=float(config["shrinkage"]),
            rating_levels=int(config["rating_levels"]),
            exposure_weight=max(float(config["exposure_weight"]), 0.0),
        )

    @property
    def dim(self) -> int:
        return int(self.w_out.shape[0])

    def midpoint(self) -> float:
        return (1.0 + self.rating_levels) / 2

    def mean(self, rating_sum: float, rating_count: float) -> float:
        """The global term: mean of the ratings folded in (the scale's midpoint before)."""
        return rating_sum / rating_count if rating_count > 0 else self.midpoint()

    def project(self, side: str, vectors: FloatArray) -> npt.NDArray[np.float32]:
        """The first layer's share of each row ``(N, D)``: ``W_u u + b`` for users,
        ``W_i i`` for items."""
        v = np.asarray(vectors, dtype=np.float32)
        if side == "users":
            return v @ self.w_user + self.b_hidden
        return v @ self.w_item

    def constants(
        self,
        side: str,
        mean: float,
        bias: npt.ArrayLike,
        rating_sum: npt.ArrayLike,
        rating_count: npt.ArrayLike,
    ) -> npt.NDArray[np.float64]:
        """Every additive term of the score for each row ``(N,)``: the learnable bias, the
        weighted shrunk deviation, and (users) the global mean and ``b_out``."""
        count = np.asarray(rating_count, dtype=np.float64)
        const = np.zeros(count.shape)
        if self.bias_terms:
            const += np.asarray(bias, dtype=np.float64)
        if self.running_bias:
            dev = (np.asarray(rating_sum, dtype=np.float64) - count * mean) / (
                count + self.shrinkage
            )
            const += float(self.deviation_weight[0 if side == "users" else 1]) * dev
        if side == "users":
            const += mean + self.b_out
        return const

    def score(
        self,
        user_hidden: FloatArray,  # (D,) one user's projection
        user_const: float,
        item_hidden: FloatArray,  # (I, D)
        item_const: npt.ArrayLike,  # (I,)
    ) -> npt.NDArray[np.float64]:
        """Unclipped ratings ``(I,)`` of one user with each item."""
        hidden = np.maximum(user_hidden + item_hidden, 0.0)  # (I, D)
        out = (hidden @ self.w_out).astype(np.float64)
        return out + user_const + np.asarray(item_const, dtype=np.float64)

    def score_matrix(
        self,
        user_hidden: FloatArray,  # (U, D)
        user_const: npt.ArrayLike,  # (U,)
        item_hidden: FloatArray,  # (I, D)
        item_const: npt.ArrayLike,  # (I,)
    ) -> npt.NDArray[np.float64]:
        """Unclipped ratings ``(U, I)`` of every pair, in chunks of users."""
        u_const = np.asarray(user_const, dtype=np.float64)
        i_const = np.asarray(item_const, dtype=np.float64)
        out = np.empty((len(user_hidden), len(item_hidden)))
        step = max(1, _PAIRS_PER_CHUNK // max(1, len(item_hidden) * self.dim))
        for s in range(0, len(user_hidden), step):
            hidden = np.maximum(user_hidden[s : s + step, None, :] + item_hidden[None], 0.0)
            out[s : s + step] = hidden @ self.w_out  # (u, I)
        return out + u_const[:, None] + i_const[None, :]

    def clip(self, ratings: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Ratings on the scale 1..S (ranking uses the unclipped values: clips tie)."""
        return np.clip(np.asarray(ratings, dtype=np.float64), 1.0, float(self.rating_levels))


def exposure_prior(item_rating_count: npt.ArrayLike, weight: float) -> npt.NDArray[np.float64]:
    """``weight * log(1 + ratings of the item so far)``, the ranking's item prior ``(I,)``.

    A rating model says how much a user would like an item, not whether they would ever
    pick it; the item's rating count (state, not future data) is the simplest prior for
    the latter. Weight 0 ranks by rating alone.
    """
    count = np.asarray(item_rating_count, dtype=np.float64)
    if not weight:
        return np.zeros(count.shape)
    return weight * np.log1p(count)


def shared_keywords(
    user_top: Sequence[tuple[str, float]],
    item_top: Sequence[tuple[str, float]],
    k: int = EXPLAIN_TOP,
) -> list[str]:
    """The explanation of a pair: keywords in both the user's and the item's top-``k``
    (each heaviest first), ordered by their summed rank, then alphabetically.

    >>> shared_keywords([("tone", 2.0), ("price", 1.0), ("cheap", 0.5)],
    ...                 [("tone", 3.0), ("loud", 2.0), ("cheap", 1.0)], k=3)
    ['tone', 'cheap']
    """
    user_rank = {w: r for r, (w, _) in enumerate(user_top[:k])}
    shared = [(user_rank[w] + r, w) for r, (w, _) in enumerate(item_top[:k]) if w in user_rank]
    return [w for _, w in sorted(shared)]


def top_keywords(profile: Mapping[str, float], k: int) -> list[tuple[str, float]]:
    """The ``k`` heaviest words of a profile, heaviest first (ties by word)."""
    return sorted(profile.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
