"""Item-item collaborative baselines that a personal recommender must beat.

Both learn an item-item weight matrix ``W`` (I x I) from who interacted with what in
training (binary; a review without a rating counts), and score a user's items as
``x_u W``, the sum of the weights from the items the user has:

- ``EASE`` ("ease"; Steck, 2019): the closed form of a linear autoencoder with a zero
  diagonal, ``P = (X^T X + lambda I)^-1``, ``W = -P / diag(P)`` column by column.
- ``ItemKNN`` ("itemknn"): cosine similarity of the items' user sets, shrunk
  (``co / (|i| |j| + shrink)``), each item keeping its ``neighbours`` most similar items.

Their hyperparameters (lambda; shrink and neighbours) are chosen on the validation split
by NDCG@10 over every item the user has not interacted with in training, the same
metric and candidates the test reports: each gets the care drex gets. They rank, they do
not predict ratings (``predicts_ratings`` is False; ``predict`` answers the training mean
only so that callers never fail).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from drex_model.evaluate.metrics import RELEVANT_RATING, ranking_metrics
from drex_model.types import Interaction

EASE_LAMBDAS: Final = (
    1.0,
    10.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1000.0,
    2500.0,
    5000.0,
    10_000.0,
    25_000.0,
)
KNN_SHRINKS: Final = (0.0, 10.0, 50.0, 200.0, 500.0, 1000.0)
KNN_NEIGHBOURS: Final = (10, 50, 100, 400, 1000)
TUNING_K: Final = 10
# Both hold dense items x items matrices (float64, a few at a time while tuning): 20,000
# items take ~3.2 GB each, about what a 24 GB machine can afford.
MAX_ITEMS: Final = 20_000

FloatMatrix = npt.NDArray[np.float64]


class _ItemItem:
    """Shared plumbing: the interaction matrix, tuning on validation, scoring."""

    name = "item-item"
    predicts_ratings = False

    def __init__(self, rating_scale: int = 5, seed: int = 0) -> None:
        self.rating_scale = rating_scale
        self.seed = seed
        self.user_index: dict[str, int] = {}
        self.item_index: dict[str, int] = {}
        self.x = sp.csr_matrix((0, 0))
        self.weights: FloatMatrix = np.zeros((0, 0))
        self.mean = (1.0 + rating_scale) / 2
        self.chosen: dict[str, float] = {}  # the hyperparameters validation chose

    def fit(self, train: Sequence[Interaction], valid: Sequence[Interaction]) -> None:
        """Index the training interactions, then keep the weights best on ``valid``."""
        self.user_index, self.item_index = {}, {}
        for x in train:
            self.user_index.setdefault(x.user, len(self.user_index))
            self.item_index.setdefault(x.item, len(self.item_index))
        rows = [self.user_index[x.user] for x in train]
        cols = [self.item_index[x.item] for x in train]
        shape = (len(self.user_index), len(self.item_index))
        check_catalogue(self.name, shape[1])
        x = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=shape)
        x.data[:] = 1.0  # repeats count once
        self.x = x
        ratings = [x.rating for x in train if x.rating is not None]
        self.mean = float(np.mean(ratings)) if ratings else self.mean
        gram = (x.T @ x).toarray()  # (I, I) co-occurrence counts
        best = -np.inf
        for params in self.grid():
            weights = self.weights_for(gram, **params)
            score = self._validation_ndcg(weights, valid)
            if score > best or not self.chosen:
                best, self.weights, self.chosen = score, weights, dict(params)
        self.chosen["valid_ndcg@10"] = float(best)

    def grid(self) -> Iterable[dict[str, Any]]:
        raise NotImplementedError

    def weights_for(self, gram: FloatMatrix, **params: Any) -> FloatMatrix:
        raise NotImplementedError

    def _validation_ndcg(self, weights: FloatMatrix, valid: Sequence[Interaction]) -> float:
        relevant: dict[int, set[int]] = {}
        for v in valid:
            u, i = self.user_index.get(v.user), self.item_index.get(v.item)
            if u is not None and i is not None and (v.rating or 0.0) >= RELEVANT_RATING:
                relevant.setdefault(u, set()).add(i)
        users = sorted(relevant)
        if not users:
            return float("nan")
        history = self.x[users]
        scores = np.asarray(history @ weights)  # (U, I)
        per_user = []
        for row, u in enumerate(users):
            keep = np.flatnonzero(history[row].toarray().ravel() == 0)
            flags = np.isin(keep, list(relevant[u]))
            per_user.append((scores[row, keep], flags))
        return float(ranking_metrics(per_user, ks=(TUNING_K,))[f"ndcg@{TUNING_K}"])

    def predict(self, users: Sequence[str], items: Sequence[str]) -> np.ndarray:
        """Not a rating model: the training mean, so that callers never fail."""
        self._fitted()
        if len(users) != len(items):
            raise ValueError(f"{len(users)} users but {len(items)} items")
        return np.full(len(users), float(np.clip(self.mean, 1.0, self.rating_scale)))

    def score_items(self, user: str, items: Sequence[str]) -> np.ndarray:
        return self.score_matrix([user], items)[0]

    def _fitted(self) -> None:
        if not self.chosen:
            raise RuntimeError(f"{self.name}: call fit() before predicting or ranking")

    def score_matrix(self, users: Sequence[str], items: Sequence[str]) -> np.ndarray:
        """``x_u W`` for every pair ``(U, I)``; unknown users and items score 0."""
        self._fitted()
        u_rows = np.array([self.user_index.get(u, -1) for u in users], dtype=np.int64)
        i_rows = np.array([self.item_index.get(i, -1) for i in items], dtype=np.int64)
        out = np.zeros((len(users), len(items)))
        known_u, known_i = np.flatnonzero(u_rows >= 0), np.flatnonzero(i_rows >= 0)
        if len(known_u) and len(known_i):
            scores = np.asarray(self.x[u_rows[known_u]] @ self.weights[:, i_rows[known_i]])
            out[np.ix_(known_u, known_i)] = scores
        return out


class EASE(_ItemItem):
    """Steck (2019): ``W = -P / diag(P)``, ``P = (X^T X + lambda I)^-1``, zero diagonal."""

    name = "ease"

    def grid(self) -> Iterable[dict[str, Any]]:
        return ({"lam": lam} for lam in EASE_LAMBDAS)

    def weights_for(self, gram: FloatMatrix, **params: Any) -> FloatMatrix:
        g = gram.copy()
        g[np.diag_indices_from(g)] += float(params["lam"])
        p = np.linalg.inv(g)
        weights: FloatMatrix = -p / np.diag(p)[None, :]
        np.fill_diagonal(weights, 0.0)
        return weights


class ItemKNN(_ItemItem):
    """Cosine of the items' user sets with shrinkage, ``neighbours`` kept per item."""

    name = "itemknn"

    def grid(self) -> Iterable[dict[str, Any]]:
        return ({"shrink": s, "neighbours": k} for s in KNN_SHRINKS for k in KNN_NEIGHBOURS)

    def weights_for(self, gram: FloatMatrix, **params: Any) -> FloatMatrix:
        norms = np.sqrt(np.diag(gram))
        sim = gram / (norms[:, None] * norms[None, :] + float(params["shrink"]) + 1e-12)
        np.fill_diagonal(sim, 0.0)
        k = int(params["neighbours"])
        if k < sim.shape[0]:  # keep each target item's k strongest sources (per column)
            cut = np.partition(sim, -k, axis=0)[-k]
            sim = np.where(sim >= cut[None, :], sim, 0.0)
        return sim


def check_catalogue(name: str, n_items: int) -> None:
    """Refuse, before any work, a catalogue too large for the dense item-item matrices."""
    if n_items > MAX_ITEMS:
        gb = 8 * n_items**2 / 1e9
        raise ValueError(
            f"{name} needs a dense {n_items:,} x {n_items:,} item matrix ({gb:.1f} GB each, "
            f"several while tuning); it runs up to {MAX_ITEMS:,} items: leave it out of "
            "--baselines for this dataset"
        )
