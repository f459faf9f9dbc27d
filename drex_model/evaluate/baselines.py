"""Simple reference recommenders that every DReX result is reported beside.

On skewed review data (two thirds of the ratings are 5 stars) a model can look good
while learning little, so each run compares against what a mean, per-user/per-item
offsets, a plain matrix factorisation and raw popularity already achieve:

- ``GlobalMean`` ("global-mean"): one number, the training mean.
- ``UserItemBias`` ("bias"): mu + b_u + b_i, Koren's baseline estimator.
- ``BiasedMF`` ("mf"): mu + b_u + b_i + p_u . q_i, trained by mini-batch SGD.
- ``ItemPopularity`` ("popularity"): ranks by training count; not a rating model.
- ``EASE`` ("ease") and ``ItemKNN`` ("itemknn"): item-item collaborative rankers, tuned
  on validation (``drex_model/evaluate/collaborative.py``); not rating models.

Rating models rank by their unclipped predictions.

All of them are plain numpy, fit on the rated training interactions only, are seeded,
and answer for unseen users or items with whatever part of the model is known (the
global mean plus a known bias), so evaluation never fails on cold ids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from drex_model.evaluate.collaborative import EASE, ItemKNN
from drex_model.types import Interaction


@runtime_checkable
class Recommender(Protocol):
    """What the evaluation runner needs from a model: fit once, then predict and rank."""

    @property
    def name(self) -> str:
        """Registry name, used in reports."""
        ...

    @property
    def predicts_ratings(self) -> bool:
        """False when predict() is only a fallback and MAE/RMSE should not be reported."""
        ...

    def fit(self, train: Sequence[Interaction], valid: Sequence[Interaction]) -> None:
        """Learn from the rated training interactions; valid may drive early stopping."""
        ...

    def predict(self, users: Sequence[str], items: Sequence[str]) -> np.ndarray:
        """Predicted ratings for aligned (user, item) pairs, clipped to [1, rating_scale]."""
        ...

    def score_items(self, user: str, items: Sequence[str]) -> np.ndarray:
        """Ranking scores of candidate items for one user; higher ranks first."""
        ...


class _Baseline:
    """Shared plumbing: id indexing, cold-id lookup, clipping and ranking by prediction."""

    name = "baseline"
    predicts_ratings = True

    def __init__(self, rating_scale: int = 5, seed: int = 0) -> None:
        if rating_scale < 1:
            raise ValueError(f"rating_scale must be >= 1, got {rating_scale}")
        self.rating_scale = rating_scale
        self.seed = seed
        self.mu = float("nan")  # global training mean, NaN until fit
        self.user_index: dict[str, int] = {}
        self.item_index: dict[str, int] = {}

    def _index_ratings(
        self, data: Sequence[Interaction], grow: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Map rated interactions to (user row, item row, rating) arrays.

        With grow=True unseen ids get new rows (training data); otherwise they map to -1
        (validation data, where a cold id can only use the known parts of the model).
        """
        rated = [x for x in data if x.rating is not None]
        if grow:
            for x in rated:
                self.user_index.setdefault(x.user, len(self.user_index))
                self.item_index.setdefault(x.item, len(self.item_index))
        users = self._rows([x.user for x in rated], self.user_index)
        items = self._rows([x.item for x in rated], self.item_index)
        ratings = np.fromiter((float(x.rating or 0.0) for x in rated), np.float64, len(rated))
        return users, items, ratings

    def _reset(self, train: Sequence[Interaction]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Forget any earlier fit, index the training ratings and set the global mean."""
        self.user_index, self.item_index = {}, {}
        users, items, ratings = self._index_ratings(train, grow=True)
        # With nothing rated the scale's midpoint is the least wrong constant.
        self.mu = float(ratings.mean()) if ratings.size else (1.0 + self.rating_scale) / 2.0
        return users, items, ratings

    @staticmethod
    def _rows(ids: Sequence[str], index: dict[str, int]) -> np.ndarray:
        """Row of each id, -1 for ids never seen in training."""
        return np.fromiter((index.get(i, -1) for i in ids), np.int64, len(ids))

    def predict(self, users: Sequence[str], items: Sequence[str]) -> np.ndarray:
        """Predicted ratings for aligned (user, item) pairs, clipped to [1, rating_scale]."""
        if len(users) != len(items):
            raise ValueError(f"{len(users)} users but {len(items)} items")
        if np.isnan(self.mu):
            raise RuntimeError(f"{self.name}: call fit() before predict()")
        raw = self._raw(self._rows(users, self.user_index), self._rows(items, self.item_index))
        clipped: np.ndarray = np.clip(raw, 1.0, float(self.rating_scale))
        return clipped

    def score_items(self, user: str, items: Sequence[str]) -> np.ndarray:
        """Rank by the unclipped predicted rating: clipped to the scale, every item
        predicted above it would tie (and pessimistic ties would rank them last)."""
        if np.isnan(self.mu):
            raise RuntimeError(f"{self.name}: call fit() before score_items()")
        users = self._rows([user] * len(items), self.user_index)
        raw: np.ndarray = self._raw(users, self._rows(items, self.item_index))
        return raw

    def _raw(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Unclipped predictions for row indices (-1 = unseen id)."""
        raise NotImplementedError


class GlobalMean(_Baseline):
    """Predict the training mean for everyone: the floor any model must clear."""

    name = "global-mean"

    def fit(self, train: Sequence[Interaction], valid: Sequence[Interaction]) -> None:
        """Take the mean training rating; validation data is not needed."""
        self._reset(train)

    def _raw(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return np.full(users.shape, self.mu)


class UserItemBias(_Baseline):
    """mu + b_u + b_i by alternating regularised least squares (Koren's baseline estimator).

    Each sweep solves the item biases given the user biases, then the reverse, each in
    closed form: b_i = sum(r - mu - b_u) / (reg_item + n_i). The regularisers shrink the
    biases of sparsely rated users and items towards 0, i.e. their prediction towards the
    global mean, which is what makes this strong on 5-core review data.
    """

    name = "bias"

    def __init__(
        self,
        rating_scale: int = 5,
        seed: int = 0,
        reg_user: float = 5.0,
        reg_item: float = 5.0,
        sweeps: int = 10,
    ) -> None:
        super().__init__(rating_scale, seed)
        self.reg_user = reg_user  # shrinkage of user biases, in pseudo-ratings
        self.reg_item = reg_item  # shrinkage of item biases, in pseudo-ratings
        self.sweeps = sweeps  # alternations; converges in a handful
        self.user_bias = np.zeros(0)
        self.item_bias = np.zeros(0)

    def fit(self, train: Sequence[Interaction], valid: Sequence[Interaction]) -> None:
        """Fit the biases on the training ratings; validation data is not needed."""
        users, items, ratings = self._reset(train)
        self.user_bias, self.item_bias = _fit_biases(
            users,
            items,
            ratings - self.mu,
            len(self.user_index),
            len(self.item_index),
            self.reg_user,
            self.reg_item,
            self.sweeps,
        )

    def _raw(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return _gather(self.user_bias, users) + _gather(self.item_bias, items) + self.mu


class BiasedMF(_Baseline):
    """mu + b_u + b_i + p_u . q_i (Koren's biased matrix factorisation) by mini-batch SGD.

    Biases start at 0 and factors at small seeded noise; each epoch is one shuffled pass
    in mini-batches with the classic per-rating L2 penalty (Funk/Koren SGD). Training
    stops when validation RMSE has not improved for ``patience`` epochs and keeps the
    best epoch's parameters, so the validation split, not a fixed epoch count, decides
    how far the factors may fit. Without validation ratings it runs all ``max_epochs``.
    """

    name = "mf"

    def __init__(
        self,
        rating_scale: int = 5,
        seed: int = 0,
        dim: int = 32,
        lr: float = 0.01,
        reg: float = 0.05,
        bias_reg: float = 0.05,
        init_std: float = 0.05,
        batch_size: int = 32,
        max_epochs: int = 100,
        patience: int = 5,
    ) -> None:
        super().__init__(rating_scale, seed)
        self.dim = dim  # latent factors per user and item
        self.lr = lr  # SGD step size
        self.reg = reg  # L2 penalty on factors, per rating
        self.bias_reg = bias_reg  # L2 penalty on biases, per rating
        self.init_std = init_std  # std of the initial factors
        self.batch_size = batch_size  # ratings per SGD step
        self.max_epochs = max_epochs  # upper bound on passes over the training data
        self.patience = patience  # epochs without validation improvement before stopping
        self.user_bias = np.zeros(0)
        self.item_bias = np.zeros(0)
        self.user_factors = np.zeros((0, dim))
        self.item_factors = np.zeros((0, dim))
        self.epochs_run = 0  # epochs actually trained in the last fit
        self.best_epoch = 0  # epoch whose parameters were kept (0 = the initial ones)

    def fit(self, train: Sequence[Interaction], valid: Sequence[Interaction]) -> None:
        """Train with early stopping on validation RMSE, keeping the best epoch."""
        users, items, ratings = self._reset(train)
        v_users, v_items, v_ratings = self._index_ratings(valid, grow=False)
        n_users, n_items = len(self.user_index), len(self.item_index)
        rng = np.random.default_rng(self.seed)
        self.user_bias, self.item_bias = np.zeros(n_users), np.zeros(n_items)
        self.user_factors = rng.normal(0.0, self.init_std, (n_users, self.dim))
        self.item_factors = rng.normal(0.0, self.init_std, (n_items, self.dim))

        best_rmse, best = self._valid_rmse(v_users, v_items, v_ratings), self._state()
        self.best_epoch = self.epochs_run = stale = 0
        for epoch in range(1, self.max_epochs + 1):
            self._epoch(users, items, ratings, rng)
            self.epochs_run = epoch
            if not v_ratings.size:
                continue
            rmse = self._valid_rmse(v_users, v_items, v_ratings)
            if rmse < best_rmse:
                best_rmse, best, self.best_epoch, stale = rmse, self._state(), epoch, 0
            else:
                stale += 1
                if stale >= self.patience:
                    break
        if v_ratings.size:
            self.user_bias, self.item_bias, self.user_factors, self.item_factors = best

    def _epoch(
        self, users: np.ndarray, items: np.ndarray, ratings: np.ndarray, rng: np.random.Generator
    ) -> None:
        """One shuffled pass of mini-batch SGD on the squared error plus L2 penalties."""
        order = rng.permutation(ratings.size)
        bu, bi, p, q = self.user_bias, self.item_bias, self.user_factors, self.item_factors
        for start in range(0, order.size, self.batch_size):
            batch = order[start : start + self.batch_size]
            u, i, r = users[batch], items[batch], ratings[batch]
            pu, qi = p[u], q[i]  # (B, D)
            err = r - (self.mu + bu[u] + bi[i] + np.einsum("bd,bd->b", pu, qi))  # (B,)
            # np.add.at sums the steps of a user or item that occurs twice in a batch.
            np.add.at(bu, u, self.lr * (err - self.bias_reg * bu[u]))
            np.add.at(bi, i, self.lr * (err - self.bias_reg * bi[i]))
            np.add.at(p, u, self.lr * (err[:, None] * qi - self.reg * pu))
            np.add.at(q, i, self.lr * (err[:, None] * pu - self.reg * qi))

    def _valid_rmse(self, users: np.ndarray, items: np.ndarray, ratings: np.ndarray) -> float:
        if not ratings.size:
            return float("inf")
        pred = np.clip(self._raw(users, items), 1.0, float(self.rating_scale))
        return float(np.sqrt(np.mean((pred - ratings) ** 2)))

    def _state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return (
            self.user_bias.copy(),
            self.item_bias.copy(),
            self.user_factors.copy(),
            self.item_factors.copy(),
        )

    def _raw(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        # A cold user or item has no factors: its interaction term is 0.
        interaction: npt.NDArray[np.float64] = np.einsum(
            "bd,bd->b", _gather(self.user_factors, users), _gather(self.item_factors, items)
        )
        biases = _gather(self.user_bias, users) + _gather(self.item_bias, items)
        return biases + interaction + self.mu


class ItemPopularity(_Baseline):
    """Rank items by how often they were rated in training, the same list for every user.

    Not a rating model (``predicts_ratings`` is False): ``predict`` returns the item's mean
    rating shrunk towards the global mean only so that callers never fail on it.
    """

    name = "popularity"
    predicts_ratings = False

    def __init__(self, rating_scale: int = 5, seed: int = 0, shrinkage: float = 5.0) -> None:
        super().__init__(rating_scale, seed)
        self.shrinkage = shrinkage  # pseudo-ratings at the global mean added to each item
        self.counts = np.zeros(0)
        self.item_mean = np.zeros(0)

    def fit(self, train: Sequence[Interaction], valid: Sequence[Interaction]) -> None:
        """Count the training ratings per item and their shrunk mean."""
        _, items, ratings = self._reset(train)
        n_items = len(self.item_index)
        self.counts = np.bincount(items, minlength=n_items).astype(np.float64)
        sums = np.bincount(items, weights=ratings, minlength=n_items)
        self.item_mean = (sums + self.shrinkage * self.mu) / (self.counts + self.shrinkage)

    def score_items(self, user: str, items: Sequence[str]) -> np.ndarray:
        """Training count of each item (0 for unseen ones); the user does not matter."""
        if np.isnan(self.mu):
            raise RuntimeError(f"{self.name}: call fit() before score_items()")
        return _gather(self.counts, self._rows(items, self.item_index))

    def _raw(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        shrunk: np.ndarray = np.where(items >= 0, _gather(self.item_mean, items), self.mu)
        return shrunk


def _fit_biases(
    users: np.ndarray,
    items: np.ndarray,
    residuals: np.ndarray,
    n_users: int,
    n_items: int,
    reg_user: float,
    reg_item: float,
    sweeps: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Alternating regularised least squares for r - mu = b_u + b_i; returns (b_u, b_i).

    Items first, as in Koren's estimator, because items usually have more ratings and so
    steadier biases to build the user biases on.
    """
    n_per_user = np.bincount(users, minlength=n_users)
    n_per_item = np.bincount(items, minlength=n_items)
    user_bias = np.zeros(n_users)
    item_bias = np.zeros(n_items)
    for _ in range(sweeps):
        item_sum = np.bincount(items, weights=residuals - user_bias[users], minlength=n_items)
        item_bias = item_sum / (reg_item + n_per_item)
        user_sum = np.bincount(users, weights=residuals - item_bias[items], minlength=n_users)
        user_bias = user_sum / (reg_user + n_per_user)
    return user_bias, item_bias


def _gather(table: np.ndarray, rows: np.ndarray) -> npt.NDArray[np.float64]:
    """Rows of a parameter table, zeros for unseen ids (-1): a cold id adds nothing."""
    known = rows >= 0
    values = (
        table[np.where(known, rows, 0)]
        if table.shape[0]
        else np.zeros((rows.size, *table.shape[1:]))
    )
    mask = known.reshape(known.shape + (1,) * (values.ndim - 1))
    gathered: npt.NDArray[np.float64] = np.where(mask, values, 0.0)
    return gathered


BASELINES: dict[str, Callable[..., Recommender]] = {
    GlobalMean.name: GlobalMean,
    UserItemBias.name: UserItemBias,
    BiasedMF.name: BiasedMF,
    ItemPopularity.name: ItemPopularity,
    EASE.name: EASE,
    ItemKNN.name: ItemKNN,
}
