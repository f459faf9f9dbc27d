"""Experiment: two more ranking terms for drex, each searched on validation with the blend.

For each seed, on ``drex evaluate``'s split: fit the default ``drex`` as ``drex evaluate``
does, then search ``drex evaluate``'s blend grid (rating x item prior x content x
shrinkage) on validation (NDCG@10) with a variant of the ranking, and report validation and
test NDCG@10 of the blend it chose beside those of the default ranking:

- ``--try neighbours``: each of the user's items adds to the co-occurrence term only its
  ``k`` most similar items (ItemKNN's neighbour cut), ``--values`` the k to try;
- ``--try trend``: an extra term, ``log(1 + sum over the item's known interactions of
  exp(-|t_u - t| / tau))``, ``t_u`` the median time of the user's known interactions:
  items popular around the time the user was active (``--values`` the tau in days; its
  weight is searched with the blend).

The result (docs/results.md) is why drex has neither.

    python benchmarks/ranking_tries.py --dataset FILE --try neighbours [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
from collections.abc import Callable, Sequence

import numpy as np
from explain_sweep import fit_drex  # beside this script

from drex_model.evaluate.data import filter_min_counts, load_interactions
from drex_model.evaluate.drex import (
    CONTENT_GRID,
    EXPOSURE_GRID,
    RATING_GRID,
    SHRINKAGE_GRID,
    _relevant,
    _seen,
)
from drex_model.evaluate.metrics import ranking_metrics
from drex_model.learner import DReXLearner
from drex_model.scoring import Blend, cooccurrence_sparse, lookup_sparse
from drex_model.types import Interaction

TREND_WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0)
DAY = 86_400.0


class Part:
    """One split's ranked users: candidates (items unseen in what came before), relevance
    flags and each user's median time in what came before."""

    def __init__(self, part: Sequence[Interaction], known: Sequence[Interaction], items: list[str]):
        seen = _seen(known)
        self.users, relevant = _relevant(part)
        names = np.asarray(items)
        self.keep = [
            np.array([j for j, i in enumerate(items) if i not in seen.get(u, ())])
            for u in self.users
        ]
        self.flags = [
            np.isin(names[k], list(relevant[u])) for u, k in zip(self.users, self.keep, strict=True)
        ]
        times: dict[str, list[int]] = {}
        for x in known:
            times.setdefault(x.user, []).append(x.timestamp)
        overall = float(np.median([x.timestamp for x in known]))
        self.times = np.array([np.median(times[u]) if u in times else overall for u in self.users])

    def ndcg(self, scores: np.ndarray) -> float:
        per_user = [
            (scores[r, k], f) for r, (k, f) in enumerate(zip(self.keep, self.flags, strict=True))
        ]
        return float(ranking_metrics(per_user, ks=(10,))["ndcg@10"])


def cut_cooccurrence(
    learner: DReXLearner, users: Sequence[str], items: list[str], shrinkage: float, k: int
) -> np.ndarray:
    """The co-occurrence term ``(U, I)`` with each of a user's items adding its ``k`` most
    similar items only (``drex_model.scoring.cooccurrence_sparse`` otherwise)."""
    co, index = learner.cooccurrence, learner.items.index
    n = co.users_array(len(learner.items))
    item_rows = np.array([index[i] for i in items])
    out = np.zeros((len(users), len(items)))
    for u, user in enumerate(users):
        history = []
        for j in learner.seen_in_order(user):
            users_j, idx, counts = co.row_arrays(index[j])
            if len(idx) > k and users_j > 0:
                top = np.argpartition(-counts / (np.sqrt(users_j * n[idx]) + shrinkage), k - 1)[:k]
                idx, counts = idx[top], counts[top]
            history.append((users_j, idx, counts))
        out[u] = lookup_sparse(*cooccurrence_sparse(history, n, shrinkage), item_rows)
    return out


def trend(
    part: Part, known: Sequence[Interaction], items: list[str], tau_days: float
) -> np.ndarray:
    """``log(1 + sum_x exp(-|t_u - t_x| / tau))`` over each item's known interactions x."""
    at = {i: k for k, i in enumerate(items)}
    item = np.array([at[x.item] for x in known])
    t = np.array([x.timestamp for x in known], dtype=np.float64)
    out = np.zeros((len(part.users), len(items)))
    for r, tu in enumerate(part.times):
        weights = np.exp(-np.abs(tu - t) / (tau_days * DAY))
        out[r] = np.bincount(item, weights=weights, minlength=len(items))
    return np.log1p(out)


def search(
    blend: Blend, valid: Part, test: Part, terms: Callable[[Part, float], tuple], extra: tuple
) -> dict[str, float]:
    """Validation's best blend (with the extra term's weight, when there is one), scored on
    both splits."""
    best, best_score = (blend, 0.0), -np.inf
    weights = TREND_WEIGHTS if extra else (0.0,)
    for shrinkage in SHRINKAGE_GRID:
        t = terms(valid, shrinkage)
        for r, e, c, w in itertools.product(RATING_GRID, EXPOSURE_GRID, CONTENT_GRID, weights):
            b = dataclasses.replace(blend, rating=r, exposure=e, content=c, shrinkage=shrinkage)
            score = valid.ndcg(b.rank(*t) + (w * extra[0] if w else 0.0))
            if score > best_score:
                best, best_score = (b, w), score
    b, w = best
    test_scores = b.rank(*terms(test, b.shrinkage)) + (w * extra[1] if w else 0.0)
    return {"valid": float(best_score), "test": test.ndcg(test_scores), "weight": w}


def run_seed(
    dataset: str, data: Sequence[Interaction], items: list[str], seed: int, args: argparse.Namespace
) -> dict:
    """One seed: the default ranking, the blend searched again without a variant (the same
    as the default: a check), and the blend searched with each of the variant's values."""
    split, _, learner = fit_drex(dataset, data, seed)
    blend = learner.blend  # as validation chose it
    known = {"valid": list(split.train), "test": [*split.train, *split.valid]}
    valid = Part(split.valid, known["valid"], items)
    test = Part(split.test, known["test"], items)

    def plain(part: Part, shrinkage: float) -> tuple:
        return learner.ranking_terms(part.users, items, shrinkage)

    row: dict = {"seed": seed}
    row["default"] = {
        "valid": valid.ndcg(blend.rank(*plain(valid, blend.shrinkage))),
        "test": test.ndcg(blend.rank(*plain(test, blend.shrinkage))),
    }
    row["searched"] = search(blend, valid, test, plain, ())
    for value in (float(v) for v in args.values.split(",")):
        if args.try_ == "neighbours":

            def cut(part: Part, shrinkage: float, k: int = int(value)) -> tuple:
                raw, counts, _, content = plain(part, shrinkage)
                return (
                    raw,
                    counts,
                    cut_cooccurrence(learner, part.users, items, shrinkage, k),
                    content,
                )

            row[f"k={int(value)}"] = search(blend, valid, test, cut, ())
        else:
            extra = (
                trend(valid, known["valid"], items, value),
                trend(test, known["test"], items, value),
            )
            row[f"tau={value:g}"] = search(blend, valid, test, plain, extra)
    return row


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--try", dest="try_", choices=("neighbours", "trend"), required=True)
    parser.add_argument("--values", default="", help="k (neighbours) or tau in days (trend)")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args(argv)
    if not args.values:
        args.values = "10,20,50" if args.try_ == "neighbours" else "30,90,365"
    data = filter_min_counts(load_interactions(args.dataset).interactions, 5, 5)
    items = sorted({x.item for x in data})
    for seed in (int(s) for s in args.seeds.split(",")):
        print(json.dumps(run_seed(args.dataset, data, items, seed, args)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
