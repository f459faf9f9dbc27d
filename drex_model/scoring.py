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
    rank(u, i)   = rating_weight * rating(u, i)               (:class:`Blend`)
                 + exposure_weight * log(1 + ratings of i)
                 + cooccurrence_weight * cooc(u, i) / max_i' cooc(u, i')
                 + content_weight * cos(content_u, content_i)
    cooc(u, i)   = sum over u's items j of co(i, j) / (sqrt(n_i n_j) + shrinkage)

``co(i, j)`` counts the users who picked both items (each weighted by how few items
they had picked, ``DReXConfig.cooccurrence_activity``), ``n_i`` those who picked i
(:class:`drex_model.affinity.CoOccurrence`: item-based collaborative filtering as running
counts); ``content`` sums the unit mean-pooled encoder vectors of an entity's reviews
(:func:`drex_model.affinity.review_vector`). The co-occurrence term is divided by the
user's largest so that its scale does not grow with the user's history.

The first layer is linear, so ``W_u u + b`` and ``W_i i`` are computed once per row
(:meth:`Head.project`) and every additive term folds into one constant per row
(:meth:`Head.constants`): a pair then costs D multiply-adds.

Notation: U users, I items, D embedding size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.floating[Any]]
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
    blend: Blend  # the ranking's weights (the config's)

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
            blend=Blend.from_config(config),
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


@dataclass(frozen=True)
class Blend:
    """The weights of the ranking's terms (see the module docstring); ``DReXConfig``'s
    ``rating_weight``, ``exposure_weight``, ``cooccurrence_weight``,
    ``cooccurrence_shrinkage`` and ``content_weight``. ``drex evaluate`` chooses them
    on the validation split; the worker and the server take the config's."""

    rating: float = 1.0
    exposure: float = 0.0
    cooccurrence: float = 0.0
    shrinkage: float = 50.0
    content: float = 0.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Blend:
        return cls(
            rating=float(config.get("rating_weight", cls.rating)),
            exposure=max(float(config.get("exposure_weight", cls.exposure)), 0.0),  # -1: unset
            cooccurrence=float(config.get("cooccurrence_weight", cls.cooccurrence)),
            shrinkage=float(config.get("cooccurrence_shrinkage", cls.shrinkage)),
            content=float(config.get("content_weight", cls.content)),
        )

    def rank(
        self,
        rating: npt.ArrayLike,  # (U, I) or (I,) unclipped predicted ratings
        item_rating_count: npt.ArrayLike,  # (I,)
        cooccurrence: npt.ArrayLike | None = None,  # like rating: cooccurrence_term rows
        content: npt.ArrayLike | None = None,  # like rating: content_term
    ) -> npt.NDArray[np.float64]:
        """The ranking scores: every term weighted and summed (absent terms are 0)."""
        out = self.rating * np.asarray(rating, dtype=np.float64)
        out = out + exposure_prior(item_rating_count, self.exposure)
        if self.cooccurrence and cooccurrence is not None:
            out = out + self.cooccurrence * np.asarray(cooccurrence, dtype=np.float64)
        if self.content and content is not None:
            out = out + self.content * np.asarray(content, dtype=np.float64)
        return out


CoRow = tuple[float, npt.NDArray[np.int64], npt.NDArray[np.float64]]  # users, rows, counts


def cooccurrence_term(
    history: Sequence[CoRow],
    item_users: npt.ArrayLike,
    shrinkage: float,
) -> npt.NDArray[np.float64]:
    """One user's co-occurrence scores over every item row ``(I,)``, divided by their
    largest (so in [0, 1]): :func:`cooccurrence_sparse`, spread out.

    >>> row = (2.0, np.array([1, 2]), np.array([2.0, 1.0]))
    >>> cooccurrence_term([row], [2.0, 2.0, 1.0], 0.0).round(3).tolist()
    [0.0, 1.0, 0.707]
    """
    n = np.asarray(item_users, dtype=np.float64)
    out = np.zeros(len(n))
    rows, values = cooccurrence_sparse(history, n, shrinkage)
    out[rows] = values
    return out


def cooccurrence_sparse(
    history: Sequence[CoRow],
    item_users: npt.ArrayLike,
    shrinkage: float,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """The item rows with a non-zero co-occurrence score for one user (sorted) and their
    scores, divided by the largest: the only rows the term touches, so a server with a
    large catalogue never scans it.

    ``history``: for each item the user picked, (users who picked it, the item rows it
    co-occurs with, the counts: ``CoOccurrence.row_arrays``); ``item_users`` ``(I,)``:
    users who picked each item row.
    """
    n = np.asarray(item_users, dtype=np.float64)
    rows, values = [], []
    for users_j, idx, co in history:
        if not len(idx) or users_j <= 0:
            continue
        keep = idx < len(n)
        idx, co = idx[keep], co[keep]
        rows.append(idx)
        values.append(co / (np.sqrt(users_j * n[idx]) + shrinkage))
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    unique, at = np.unique(np.concatenate(rows), return_inverse=True)
    summed = np.bincount(at, weights=np.concatenate(values), minlength=len(unique))
    scores: npt.NDArray[np.float64] = summed.astype(np.float64)
    top = float(scores.max(initial=0.0))
    if top > 0:
        scores = scores / top
    return unique.astype(np.int64), scores


def lookup_sparse(
    rows: npt.NDArray[np.int64], values: npt.NDArray[np.float64], wanted: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """The values at ``wanted`` rows of a sparse vector (sorted ``rows``), 0 elsewhere."""
    w = np.asarray(wanted, dtype=np.int64)
    if not len(rows):
        return np.zeros(len(w))
    at = np.minimum(np.searchsorted(rows, w), len(rows) - 1)
    return np.where(rows[at] == w, values[at], 0.0)


def content_term(
    user_content: npt.ArrayLike, item_content: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """Cosine ``(U, I)`` of users' and items' content sums ``(U, H)``, ``(I, H)`` (0 for an
    entity without a review)."""
    return _unit(user_content) @ _unit(item_content).T


def _unit(rows: npt.ArrayLike) -> npt.NDArray[np.float64]:
    r = np.asarray(rows, dtype=np.float64)
    norm = np.linalg.norm(r, axis=-1, keepdims=True)
    return r / np.where(norm > 0, norm, 1.0)


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


def top_keywords(profile: Mapping[str, float], k: int) -> list[tuple[str, float]]:
    """The ``k`` heaviest words of a profile, heaviest first (ties by word)."""
    return sorted(profile.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
