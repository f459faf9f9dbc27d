"""Experiment: would an EASE term in drex's ranking blend beat EASE alone?

For each seed, on ``drex evaluate``'s split: fit the default ``drex`` and ``ease`` as
``drex evaluate`` does, then search on validation (NDCG@10) a blend of drex's terms
(rating, item prior, co-occurrence, content) and EASE's scores (divided by each user's
largest, like the co-occurrence term), and report test NDCG@10 for drex, EASE and the
blend validation chose. The result (docs/results.md) is why drex has no EASE term.

    python benchmarks/blend_with_ease.py --dataset FILE [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
from collections.abc import Sequence

import numpy as np

from drex_model.evaluate import runner
from drex_model.evaluate.collaborative import EASE
from drex_model.evaluate.data import filter_min_counts, load_interactions, split_interactions
from drex_model.evaluate.drex import DReXRecommender, _relevant, _seen
from drex_model.evaluate.metrics import ranking_metrics
from drex_model.model import DReXConfig
from drex_model.types import Interaction

GRID = {  # EASE weight, co-occurrence weight, rating, item prior, content
    "ease": (0.0, 0.5, 1.0, 2.0, 4.0),
    "cooccurrence": (0.0, 0.5, 1.0),
    "rating": (0.0, 0.05, 0.1, 0.2, 0.5),
    "exposure": (0.0, 0.02, 0.05, 0.1, 0.2),
    "content": (0.0, 0.5, 1.0, 2.0, 4.0),
}


def by_max(m: np.ndarray) -> np.ndarray:
    top = np.abs(m).max(axis=1, keepdims=True)
    return m / np.where(top == 0, 1.0, top)


def run_seed(dataset: str, data: Sequence[Interaction], items: list[str], seed: int) -> dict:
    """One seed's test NDCG@10 of drex, EASE and the blend chosen on validation."""
    split = split_interactions(data, seed=seed)
    opts = runner.EvaluateOptions(dataset=dataset, output="", seeds=(seed,))
    drex = DReXRecommender(
        DReXConfig.for_variant("drex"), runner.review_cache(opts, data, "cpu"), seed=seed
    )
    drex.fit(split.train, split.valid, catalogue=data)
    ease = EASE()
    ease.fit(split.train, split.valid)
    learner, b = drex.learner, drex.blend
    assert learner is not None

    def terms(part: Sequence[Interaction], seen: dict[str, set[str]]) -> tuple:
        users, relevant = _relevant(part)
        keep = [
            np.array([j for j, i in enumerate(items) if i not in seen.get(u, ())]) for u in users
        ]
        flags = [
            np.isin(np.asarray(items)[k], list(relevant[u]))
            for u, k in zip(users, keep, strict=True)
        ]
        return (
            keep,
            flags,
            *learner.ranking_terms(users, items, b.shrinkage),
            by_max(ease.score_matrix(users, items)),
        )

    def ndcg(t: tuple, w: Sequence[float]) -> float:
        keep, flags, raw, counts, cooc, content, e = t
        blend = dataclasses.replace(b, cooccurrence=w[1], rating=w[2], exposure=w[3], content=w[4])
        s = blend.rank(raw, counts, cooc, content) + w[0] * e
        per_user = [(s[r, k], f) for r, (k, f) in enumerate(zip(keep, flags, strict=True))]
        return float(ranking_metrics(per_user, ks=(10,))["ndcg@10"])

    valid = terms(split.valid, _seen(split.train))
    test = terms(split.test, _seen([*split.train, *split.valid]))
    chosen = max(
        (w for w in itertools.product(*GRID.values()) if w[0] or w[1]),
        key=lambda w: ndcg(valid, w),
    )
    return {
        "seed": seed,
        "drex": ndcg(test, (0.0, b.cooccurrence, b.rating, b.exposure, b.content)),
        "ease": ndcg(test, (1.0, 0.0, 0.0, 0.0, 0.0)),
        "blend": ndcg(test, chosen),
        "chosen": dict(zip(GRID, chosen, strict=True)),
        "ease_lambda": ease.chosen["lam"],
    }  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args(argv)
    data = filter_min_counts(load_interactions(args.dataset).interactions, 5, 5)
    items = sorted({x.item for x in data})
    for seed in (int(s) for s in args.seeds.split(",")):
        print(json.dumps(run_seed(args.dataset, data, items, seed)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
