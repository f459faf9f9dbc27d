"""The paper's metrics on hand-computed examples, plus the pessimistic tie rule."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from drex_model.evaluate.metrics import RELEVANT_RATING, ranking_metrics, rating_metrics


def arr(*values: float) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def flags(*values: int) -> np.ndarray:
    return np.asarray(values, dtype=bool)


def disc(position: int) -> float:
    """The eq. 12 discount of a 1-based rank position."""
    return 1.0 / math.log2(position + 1)


# --- MAE / RMSE --------------------------------------------------------------------------


def test_rating_metrics_by_hand() -> None:
    result = rating_metrics(arr(1, 2, 3), arr(2, 2, 5))
    assert result["mae"] == pytest.approx(1.0)
    assert result["rmse"] == pytest.approx(math.sqrt(5 / 3))


def test_rating_metrics_rejects_mismatch_and_empty() -> None:
    with pytest.raises(ValueError):
        rating_metrics(arr(1, 2), arr(1))
    with pytest.raises(ValueError):
        rating_metrics(arr(), arr())


def test_relevance_threshold_is_four_stars() -> None:
    assert RELEVANT_RATING == 4.0


# --- P / R / F1 / NDCG -------------------------------------------------------------------


@pytest.fixture
def two_users() -> list[tuple[np.ndarray, np.ndarray]]:
    return [
        # ranking: rel, irr, rel, irr
        (arr(0.9, 0.8, 0.7, 0.6), flags(1, 0, 1, 0)),
        # ranking: idx1 (irr), idx2 (irr), idx0 (rel)
        (arr(0.1, 0.5, 0.3), flags(1, 0, 0)),
        # no relevant candidate: not in U_t, must not count
        (arr(0.3, 0.2), flags(0, 0)),
    ]


def test_precision_recall_by_hand(two_users: list[tuple[np.ndarray, np.ndarray]]) -> None:
    result = ranking_metrics(two_users, ks=(1, 3))
    assert result["users"] == 2
    assert result["p@1"] == pytest.approx((1 + 0) / 2)
    assert result["r@1"] == pytest.approx((0.5 + 0) / 2)
    assert result["p@3"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert result["r@3"] == pytest.approx((1 + 1) / 2)


def test_f1_comes_from_the_mean_precision_and_recall(
    two_users: list[tuple[np.ndarray, np.ndarray]],
) -> None:
    result = ranking_metrics(two_users, ks=(1, 3))
    assert result["f1@1"] == pytest.approx(2 * 0.5 * 0.25 / 0.75)
    # Eq. 10-11: 2PR/(P+R) of the means (2/3), not the mean of per-user F1s (0.65).
    assert result["f1@3"] == pytest.approx(2 / 3)
    per_user_mean = (2 * (2 / 3) * 1 / (2 / 3 + 1) + 2 * (1 / 3) * 1 / (1 / 3 + 1)) / 2
    assert per_user_mean == pytest.approx(0.65)


def test_ndcg_by_hand(two_users: list[tuple[np.ndarray, np.ndarray]]) -> None:
    result = ranking_metrics(two_users, ks=(1, 3))
    ideal_two = disc(1) + disc(2)
    user1_at3 = (disc(1) + disc(3)) / ideal_two
    user2_at3 = disc(3) / disc(1)
    assert result["ndcg@3"] == pytest.approx((user1_at3 + user2_at3) / 2)
    # At k=1 user 1 has 2 relevant items: eq. 12's ideal still sums both of them.
    assert result["ndcg@1"] == pytest.approx((disc(1) / ideal_two + 0) / 2)
    assert result["ndcg_capped@1"] == pytest.approx((1 + 0) / 2)
    assert result["ndcg_capped@3"] == pytest.approx(result["ndcg@3"])


def test_literal_ideal_cannot_reach_one_with_more_relevant_than_k() -> None:
    result = ranking_metrics([(arr(3, 2, 1), flags(1, 1, 1))], ks=(1,))
    assert result["ndcg@1"] == pytest.approx(1 / (disc(1) + disc(2) + disc(3)))
    assert result["ndcg_capped@1"] == pytest.approx(1.0)


def test_constant_scores_rank_relevant_items_last() -> None:
    for relevant in (flags(1, 0, 0, 0), flags(0, 0, 0, 1)):
        result = ranking_metrics([(arr(1, 1, 1, 1), relevant)], ks=(3, 4))
        assert result["p@3"] == 0.0
        assert result["r@3"] == 0.0
        assert result["ndcg@3"] == 0.0
        assert result["ndcg@4"] == pytest.approx(disc(4))


def test_partial_ties_are_pessimistic_only_within_the_tie() -> None:
    result = ranking_metrics([(arr(2, 1, 1), flags(0, 1, 0))], ks=(2, 3))
    assert result["p@2"] == 0.0  # order: idx0, idx2 (irrelevant tie first), idx1
    assert result["ndcg@3"] == pytest.approx(disc(3))


def test_nan_scores_rank_last() -> None:
    result = ranking_metrics([(arr(np.nan, 0.1), flags(0, 1))], ks=(1,))
    assert result["p@1"] == 1.0


def test_k_beyond_the_candidates_still_divides_by_k() -> None:
    result = ranking_metrics([(arr(0.9, 0.1), flags(1, 0))], ks=(5,))
    assert result["p@5"] == pytest.approx(1 / 5)
    assert result["r@5"] == 1.0
    assert result["ndcg@5"] == 1.0


def test_no_user_with_a_relevant_item_gives_nan() -> None:
    result = ranking_metrics([(arr(1, 2), flags(0, 0))], ks=(1,))
    assert result["users"] == 0
    assert all(math.isnan(v) for key, v in result.items() if key != "users")


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError):
        ranking_metrics([(arr(1, 2), flags(1))])
    with pytest.raises(ValueError):
        ranking_metrics([(arr(1), flags(1))], ks=(0,))


def reference(
    per_user: list[tuple[np.ndarray, np.ndarray]], k: int
) -> tuple[float, float, float, float]:
    """Slow, obvious P@k, R@k, F1@k, NDCG@k with Python's sort and the same tie rule."""
    p = r = ndcg = 0.0
    users = 0
    for scores, relevant in per_user:
        n_rel = int(relevant.sum())
        if not n_rel:
            continue
        users += 1
        ranked = sorted(range(len(scores)), key=lambda j: (-scores[j], bool(relevant[j])))
        top = [bool(relevant[j]) for j in ranked[:k]]
        p += sum(top) / k
        r += sum(top) / n_rel
        dcg = sum(disc(pos + 1) for pos, hit in enumerate(top) if hit)
        ndcg += dcg / sum(disc(pos) for pos in range(1, n_rel + 1))
    p, r, ndcg = p / users, r / users, ndcg / users
    return p, r, 2 * p * r / (p + r) if p + r else 0.0, ndcg


def test_matches_a_slow_reference_on_random_tied_scores() -> None:
    rng = np.random.default_rng(0)
    per_user = [
        (rng.integers(0, 4, size=n).astype(float), rng.random(n) < 0.3)
        for n in rng.integers(1, 30, size=200)
    ]
    result = ranking_metrics(per_user, ks=(1, 5, 10))
    for k in (1, 5, 10):
        p, r, f1, ndcg = reference(per_user, k)
        assert result[f"p@{k}"] == pytest.approx(p)
        assert result[f"r@{k}"] == pytest.approx(r)
        assert result[f"f1@{k}"] == pytest.approx(f1)
        assert result[f"ndcg@{k}"] == pytest.approx(ndcg)


def test_thousands_of_users_take_well_under_a_second() -> None:
    rng = np.random.default_rng(1)
    per_user = [(rng.random(1000), rng.random(1000) < 0.01) for _ in range(3000)]
    start = time.perf_counter()
    result = ranking_metrics(per_user, ks=(1, 3, 5, 10))
    elapsed = time.perf_counter() - start
    assert result["users"] > 2900
    assert elapsed < 1.0, f"ranking_metrics took {elapsed:.2f} s for 3000 x 1000"


def test_beyond_accuracy_tells_a_popularity_list_from_personal_ones() -> None:
    from drex_model.evaluate.metrics import beyond_accuracy

    counts = {"hit": 100.0, "b": 3.0, "c": 0.0}
    same = beyond_accuracy([["hit", "b"]] * 4, n_items=10, counts=counts, k=2)
    assert same["coverage@2"] == pytest.approx(0.2)
    assert same["distinct@2"] == pytest.approx(0.25)  # one list for four users
    assert same["logpop@2"] == pytest.approx((np.log(101.0) + np.log(4.0)) / 2)
    personal = beyond_accuracy([["hit", "b"], ["c", "d"], ["b", "hit"]], 10, counts, 2)
    assert personal["distinct@2"] == pytest.approx(2 / 3)  # the same set, reordered, counts once
    assert personal["coverage@2"] == pytest.approx(0.4)
    assert personal["logpop@2"] < same["logpop@2"]
    assert np.isnan(beyond_accuracy([], 10, counts, 2)["coverage@2"])
