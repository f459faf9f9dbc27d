"""Baselines on planted structure: each must find what it can model, and never crash."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from drex_model.evaluate.baselines import (
    BASELINES,
    BiasedMF,
    GlobalMean,
    ItemPopularity,
    Recommender,
    UserItemBias,
)
from drex_model.evaluate.collaborative import EASE, ItemKNN
from drex_model.evaluate.data import filter_min_counts, load_interactions, split_interactions
from drex_model.evaluate.metrics import rating_metrics
from drex_model.types import Interaction

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def synthetic(
    rank: int, factor_std: float, seed: int = 0, n_users: int = 120, n_items: int = 80
) -> list[Interaction]:
    """Ratings = 3 + b_u + b_i + p_u . q_i + noise on half the matrix, clipped to 1..5."""
    rng = np.random.default_rng(seed)
    user_bias = rng.normal(0.0, 0.5, n_users)
    item_bias = rng.normal(0.0, 0.5, n_items)
    p = rng.normal(0.0, factor_std, (n_users, rank))
    q = rng.normal(0.0, factor_std, (n_items, rank))
    data: list[Interaction] = []
    for u, i in zip(*np.nonzero(rng.random((n_users, n_items)) < 0.5), strict=True):
        rating = 3.0 + user_bias[u] + item_bias[i] + p[u] @ q[i] + rng.normal(0.0, 0.2)
        data.append(Interaction(f"u{u}", f"i{i}", float(np.clip(rating, 1, 5)), None, len(data)))
    return data


def rmse_on(model: Recommender, test: Sequence[Interaction]) -> float:
    truth = np.array([x.rating for x in test], dtype=float)
    predicted = model.predict([x.user for x in test], [x.item for x in test])
    return rating_metrics(truth, predicted)["rmse"]


def fitted(name: str, data: list[Interaction], **kwargs: object) -> tuple[Recommender, float]:
    split = split_interactions(data, seed=0)
    model = BASELINES[name](**kwargs)
    model.fit(split.train, split.valid)
    return model, rmse_on(model, split.test)


def test_bias_beats_global_mean_when_biases_are_real() -> None:
    data = synthetic(rank=1, factor_std=0.0)
    _, mean_rmse = fitted("global-mean", data)
    _, bias_rmse = fitted("bias", data)
    assert bias_rmse < 0.6 * mean_rmse


def test_mf_finds_planted_low_rank_structure_that_bias_cannot() -> None:
    data = synthetic(rank=3, factor_std=0.6)
    _, bias_rmse = fitted("bias", data)
    _, mf_rmse = fitted("mf", data)
    assert mf_rmse < 0.7 * bias_rmse


def test_mf_stops_early_on_noise_and_keeps_its_best_epoch() -> None:
    rng = np.random.default_rng(0)
    data = [
        Interaction(f"u{n % 60}", f"i{n % 47}", float(rng.integers(1, 6)), None, float(n))
        for n in range(2000)
    ]
    split = split_interactions(data, seed=0)
    model = BiasedMF(seed=0)
    model.fit(split.train, split.valid)
    assert model.epochs_run < model.max_epochs
    assert model.epochs_run - model.best_epoch == model.patience


def test_mf_is_deterministic_per_seed() -> None:
    data = synthetic(rank=2, factor_std=0.5, n_users=40, n_items=30)
    users, items = [x.user for x in data], [x.item for x in data]
    first, _ = fitted("mf", data, seed=7)
    again, _ = fitted("mf", data, seed=7)
    other, _ = fitted("mf", data, seed=8)
    assert np.array_equal(first.predict(users, items), again.predict(users, items))
    assert not np.array_equal(first.predict(users, items), other.predict(users, items))


def test_popularity_ranks_by_training_count() -> None:
    counts = {"a": 5, "b": 1, "c": 3}
    data = [
        Interaction(f"u{n}", item, 1.0 if item == "a" else 5.0, None, 0.0)
        for item, count in counts.items()
        for n in range(count)
    ]
    model = ItemPopularity()
    model.fit(data, [])
    assert model.predicts_ratings is False
    scores = model.score_items("anyone", ["b", "a", "new", "c"])
    assert scores.tolist() == [1.0, 5.0, 0.0, 3.0]
    # predict() is only a fallback: the item mean shrunk to the global mean, within 1..5.
    predicted = model.predict(["u0", "u0"], ["a", "new"])
    assert 1.0 < predicted[0] < model.mu
    assert predicted[1] == pytest.approx(model.mu)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_every_baseline_meets_the_contract(name: str) -> None:
    data = synthetic(rank=2, factor_std=0.5, n_users=30, n_items=20)
    text_only = [Interaction("texter", "text-item", None, "words", 0.0)]
    split = split_interactions(data, seed=0)
    model = BASELINES[name](seed=0)
    assert isinstance(model, Recommender)
    assert model.name == name
    with pytest.raises(RuntimeError):
        model.predict(["u0"], ["i0"])
    model.fit([*split.train, *text_only], split.valid)

    # Unknown users and items fall back to the known parts; nothing is NaN or off-scale.
    users = ["u0", "stranger", "u0", "stranger", "texter"]
    items = ["i0", "i0", "new-item", "new-item", "text-item"]
    predicted = model.predict(users, items)
    assert predicted.shape == (5,)
    assert np.all(np.isfinite(predicted))
    assert np.all((predicted >= 1.0) & (predicted <= 5.0))
    scores = model.score_items("u0", ["i0", "i1", "new-item"])
    assert scores.shape == (3,) and np.all(np.isfinite(scores))
    if model.predicts_ratings:  # ranked by the unclipped prediction
        clipped = np.clip(scores, 1.0, 5.0)
        assert np.allclose(clipped, model.predict(["u0"] * 3, ["i0", "i1", "new-item"]))
    with pytest.raises(ValueError):
        model.predict(["u0"], [])


def test_cold_ids_use_the_known_bias() -> None:
    data = [
        Interaction("u1", "good", 5.0, None, 0.0),
        Interaction("u2", "good", 5.0, None, 1.0),
        Interaction("u1", "bad", 1.0, None, 2.0),
        Interaction("u2", "bad", 1.0, None, 3.0),
    ]
    model = UserItemBias(reg_user=0.0, reg_item=0.0)
    model.fit(data, [])
    mean = GlobalMean()
    mean.fit(data, [])
    assert mean.predict(["x"], ["y"])[0] == pytest.approx(3.0)
    cold_user = model.predict(["stranger", "stranger"], ["good", "bad"])
    assert cold_user.tolist() == pytest.approx([5.0, 1.0])
    assert model.predict(["u1"], ["new"])[0] == pytest.approx(3.0)


def test_refit_forgets_the_previous_data() -> None:
    model = UserItemBias()
    model.fit([Interaction("a", "x", 5.0, None, 0.0)], [])
    model.fit([Interaction("b", "y", 1.0, None, 0.0)], [])
    assert "a" not in model.user_index
    assert model.mu == 1.0


@pytest.mark.data
def test_bias_and_mf_beat_the_mean_on_musical_instruments() -> None:
    path = SHARED_DATA / "amazon14_musical_instruments_5.json.gz"
    if not path.exists():
        pytest.skip("shared data folder absent: ../shared/data")
    data = filter_min_counts(load_interactions(path).interactions, 5, 5)
    _, mean_rmse = fitted("global-mean", data)
    _, bias_rmse = fitted("bias", data)
    _, mf_rmse = fitted("mf", data)
    assert bias_rmse < mean_rmse - 0.01
    assert mf_rmse < mean_rmse - 0.01
    assert 0.80 < bias_rmse < 0.90 and 0.80 < mf_rmse < 0.90


def baskets(seed: int = 0, n_users: int = 200) -> list[Interaction]:
    """Two tastes: users take items from group A (a0-a9) or group B (b0-b9), each item
    rated 5; a few cross over. Item-item models must recommend a user's own group."""
    rng = np.random.default_rng(seed)
    data = []
    for u in range(n_users):
        group = "a" if u % 2 else "b"
        for j in rng.choice(10, size=5, replace=False):
            data.append(Interaction(f"u{u}", f"{group}{j}", 5.0, None, float(len(data))))
        if rng.random() < 0.1:
            other = "b" if group == "a" else "a"
            data.append(Interaction(f"u{u}", f"{other}{rng.integers(10)}", 5.0, None, 0.0))
    return data


@pytest.mark.parametrize("model_class", [EASE, ItemKNN])
def test_item_item_models_recommend_the_users_own_taste(model_class: type) -> None:
    split = split_interactions(baskets(), seed=0)
    model = model_class()
    model.fit(split.train, split.valid)
    assert model.chosen["valid_ndcg@10"] > 0.3
    items = [f"{g}{j}" for g in "ab" for j in range(10)]
    for user, group in (("u1", "a"), ("u2", "b")):
        seen = {x.item for x in split.train if x.user == user}
        candidates = [i for i in items if i not in seen]
        scores = model.score_items(user, candidates)
        best = candidates[int(np.argmax(scores))]
        assert best.startswith(group), (user, best)
    assert model.score_matrix(["stranger"], ["a0", "new"]).tolist() == [[0.0, 0.0]]


def test_ease_weights_are_the_closed_form_for_the_chosen_lambda() -> None:
    split = split_interactions(baskets(seed=1), seed=0)
    model = EASE()
    model.fit(split.train, split.valid)
    x = model.x.toarray()
    p = np.linalg.inv(x.T @ x + model.chosen["lam"] * np.eye(x.shape[1]))
    want = -p / np.diag(p)[None, :]
    np.fill_diagonal(want, 0.0)
    np.testing.assert_allclose(model.weights, want, atol=1e-9)
    # the chosen lambda is the best on validation among the grid
    scores = {
        lam: model._validation_ndcg(model.weights_for(x.T @ x, lam=lam), split.valid)
        for lam in (1.0, 100.0, 5000.0)
    }
    assert model.chosen["valid_ndcg@10"] >= max(scores.values()) - 1e-12


def test_itemknn_is_shrunk_cosine_with_k_neighbours_per_item() -> None:
    model = ItemKNN()
    gram = np.array([[4.0, 2.0, 0.0], [2.0, 2.0, 1.0], [0.0, 1.0, 1.0]])
    sim = model.weights_for(gram, shrink=0.0, neighbours=10)
    assert sim[0, 1] == pytest.approx(2.0 / np.sqrt(8.0)) and sim[0, 0] == 0.0
    shrunk = model.weights_for(gram, shrink=2.0, neighbours=10)
    assert shrunk[0, 1] == pytest.approx(2.0 / (np.sqrt(8.0) + 2.0))
    one = model.weights_for(gram, shrink=0.0, neighbours=1)
    assert (np.count_nonzero(one, axis=0) <= 1).all()  # each target keeps its strongest


def test_rating_models_rank_by_their_unclipped_prediction() -> None:
    """Items predicted above the scale must not tie at 5 (pessimistic ties would then
    rank the relevant ones last)."""
    data = [Interaction(f"u{n}", "great", 5.0, None, n) for n in range(20)]
    data += [Interaction(f"u{n}", "good", 5.0 if n % 4 else 4.0, None, n) for n in range(20)]
    data += [Interaction("fan", "bad", 5.0, None, 99.0), Interaction("u0", "bad", 1.0, None, 0.0)]
    model = UserItemBias(reg_user=0.0, reg_item=0.0)
    model.fit(data, [])
    assert model.predict(["fan", "fan"], ["great", "good"]).tolist() == [5.0, 5.0]
    great, good = model.score_items("fan", ["great", "good"])
    assert great > good > 5.0


def test_a_catalogue_too_large_for_the_item_matrix_is_refused_clearly() -> None:
    from drex_model.evaluate.collaborative import MAX_ITEMS, check_catalogue

    check_catalogue("ease", MAX_ITEMS)
    with pytest.raises(ValueError, match="leave it out of --baselines"):
        check_catalogue("ease", MAX_ITEMS + 1)
