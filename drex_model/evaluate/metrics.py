"""The paper's accuracy and ranking metrics (eqs. 9-12), plus RMSE.

Relevance: a test item is relevant to a user when its rating is >= ``RELEVANT_RATING``
(4 of 5 stars), the usual rule for explicit-feedback data.

Ranking: each user's candidates are sorted by score, highest first. Ties are broken
pessimistically: among equal scores the irrelevant candidates come first, so a model
earns no credit from ties and a constant scorer gets the worst possible ranking (never
the lucky one that the input order might give it). NaN scores rank last.

P@k, R@k and NDCG@k are averaged over the users with at least one relevant candidate
(the paper's U_t); F1@k is then computed from the two averages, exactly as eq. 10-11
write it, not averaged per user.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Final

import numpy as np

RELEVANT_RATING: Final = 4.0  # ratings >= this are relevant (4 and 5 stars on a 1..5 scale)


def rating_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """MAE (eq. 9) and RMSE over rated test pairs.

    RMSE is reported beside MAE because skewed ratings (most are 5 stars) let a constant
    prediction reach a low MAE; RMSE punishes the large misses such a predictor makes.
    """
    true = np.asarray(y_true, dtype=np.float64).ravel()
    pred = np.asarray(y_pred, dtype=np.float64).ravel()
    if true.shape != pred.shape:
        raise ValueError(f"y_true has {true.size} values but y_pred has {pred.size}")
    if true.size == 0:
        raise ValueError("no ratings to score")
    error = pred - true
    return {"mae": float(np.mean(np.abs(error))), "rmse": float(np.sqrt(np.mean(error**2)))}


def ranking_metrics(
    per_user: Iterable[tuple[np.ndarray, np.ndarray]],
    ks: Sequence[int] = (1, 3, 5, 10),
) -> dict[str, float]:
    """P@k, R@k, F1@k and NDCG@k (eqs. 10-12) over users, each given as (scores, relevant).

    ``scores`` holds one score per candidate item (higher is better) and ``relevant`` the
    matching booleans. Users with no relevant candidate are skipped (they are not in U_t);
    ``"users"`` says how many were evaluated. With fewer than k candidates, P@k still
    divides by k, as eq. 11 does.

    ``"ndcg@k"`` follows eq. 12 literally: its ideal DCG sums over all |rel_u| relevant
    items, not min(k, |rel_u|), so a user with more than k relevant items cannot reach 1.
    ``"ndcg_capped@k"`` uses the usual min(k, |rel_u|) ideal, for comparison with other
    papers. All values are NaN when no user has a relevant candidate.
    """
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    k_max = max(ks)
    k_index = np.asarray(ks) - 1
    discount = 1.0 / np.log2(np.arange(2, k_max + 2))  # position p (1-based) -> 1/log2(p+1)
    ideal = np.cumsum(discount)  # ideal DCG for 1..k_max relevant items, grown on demand

    hits_sum = np.zeros(len(ks))
    recall_sum = np.zeros(len(ks))
    ndcg_sum = np.zeros(len(ks))
    capped_sum = np.zeros(len(ks))
    users = 0
    for scores, relevant in per_user:
        score = np.asarray(scores, dtype=np.float64).ravel()
        rel = np.asarray(relevant, dtype=bool).ravel()
        if score.shape != rel.shape:
            raise ValueError(f"{score.size} scores but {rel.size} relevance flags for a user")
        n_rel = int(np.count_nonzero(rel))
        if n_rel == 0:
            continue
        users += 1
        if n_rel > ideal.size:
            more = 1.0 / np.log2(np.arange(ideal.size + 2, n_rel + 2))
            ideal = np.concatenate([ideal, ideal[-1] + np.cumsum(more)])
        # lexsort's last key is the primary one: score descending, then irrelevant first.
        order = np.lexsort((rel, -score))
        top = np.zeros(k_max)
        top_rel = rel[order[:k_max]]
        top[: top_rel.size] = top_rel
        hits = np.cumsum(top)[k_index]
        dcg = np.cumsum(top * discount)[k_index]
        hits_sum += hits
        recall_sum += hits / n_rel
        ndcg_sum += dcg / ideal[n_rel - 1]
        capped_sum += dcg / ideal[np.minimum(k_index, n_rel - 1)]

    result: dict[str, float] = {"users": float(users)}
    denominator = users if users else float("nan")
    for j, k in enumerate(ks):
        precision = hits_sum[j] / k / denominator
        recall = recall_sum[j] / denominator
        both = precision + recall
        result[f"p@{k}"] = float(precision)
        result[f"r@{k}"] = float(recall)
        result[f"f1@{k}"] = float(2 * precision * recall / both) if both > 0 else 0.0
        result[f"ndcg@{k}"] = float(ndcg_sum[j] / denominator)
        result[f"ndcg_capped@{k}"] = float(capped_sum[j] / denominator)
    if not users:
        result.update({f"f1@{k}": float("nan") for k in ks})
    return result


def beyond_accuracy(
    top_lists: Sequence[Sequence[str]], n_items: int, counts: Mapping[str, float], k: int
) -> dict[str, float]:
    """What a list of top-``k`` recommendations per user shows beyond hits:

    - ``coverage@k``: the share of the catalogue's ``n_items`` in some user's top-k;
    - ``distinct@k``: distinct top-k lists (as sets) per user: 1 when every user's list
      differs, 1/U when everyone gets the same one (as from a popularity ranker);
    - ``logpop@k``: the mean ``log(1 + training interactions)`` of the recommended
      items, the popularity bias (higher: more popular items).

    >>> m = beyond_accuracy([["a", "b"], ["b", "a"], ["a", "c"]], 4, {"a": 9, "b": 1}, 2)
    >>> m["coverage@2"], round(m["distinct@2"], 3), round(m["logpop@2"], 3)
    (0.75, 0.667, 1.382)
    """
    lists = [list(t[:k]) for t in top_lists]
    if not lists or n_items <= 0:
        nan = float("nan")
        return {f"coverage@{k}": nan, f"distinct@{k}": nan, f"logpop@{k}": nan}
    shown = [item for t in lists for item in t]
    return {
        f"coverage@{k}": len(set(shown)) / n_items,
        f"distinct@{k}": len({frozenset(t) for t in lists}) / len(lists),
        f"logpop@{k}": float(np.mean([np.log1p(counts.get(i, 0.0)) for i in shown]))
        if shown
        else float("nan"),
    }
