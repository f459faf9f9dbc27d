"""Experiment: what the keyword profiles count, and whether aspects go first.

For each dataset and seed, on ``drex evaluate``'s split: fit the default ``drex`` once
as ``drex evaluate`` does, then rebuild the keyword profiles, vocabulary and quotes from
the training pass (:meth:`DReXLearner.rebuild_keywords`) two ways, summed attention (the
paper, ``keyword_attention=true``) and the reviews that hold each word (the default),
and explain the validation and test pairs with review text two ways: the rule's five
strongest words (:func:`drex_model.reasons.explain`) and, as drex did before, its three
best aspects first, then the strongest of the rest. Hit, idf precision and distinct
explanations per pair (:mod:`drex_model.evaluate.explanations`) are printed per setting,
with the baselines' beside them; the last table is the mean over seeds.

    python benchmarks/explain_profiles.py --datasets FILE[,FILE...] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
from collections.abc import Sequence
from unittest import mock

from explain_sweep import fit_drex

from drex_model import reasons
from drex_model.evaluate.data import filter_min_counts, load_interactions
from drex_model.evaluate.explanations import (
    Explainer,
    TrainingWords,
    baseline_explainers,
    explained_pairs,
    score_explainer,
)
from drex_model.learner import DReXLearner
from drex_model.reasons import EXPLAIN_WORDS, is_aspect
from drex_model.types import Interaction

ASPECTS_FIRST = 3  # the rule before: the three best aspects, then the strongest others
KEYS = ("expl_hit", "expl_idf_precision", "expl_distinct")


def explainer(learner: DReXLearner, aspects_first: bool) -> Explainer:
    """(user, item) -> keywords: :meth:`DReXLearner.explain` (the server's rule), or the
    same ranking with its best aspects moved first."""
    if not aspects_first:
        return lambda user, item: learner.explain(user, [item])[0].keywords

    def words(user: str, item: str) -> list[str]:
        with mock.patch.object(reasons, "EXPLAIN_WORDS", 64):  # the whole ranking
            ranked = learner.explain(user, [item])[0].keywords
        first = [w for w in ranked if is_aspect(w)][:ASPECTS_FIRST]
        return (first + [w for w in ranked if w not in first])[:EXPLAIN_WORDS]

    return words


def run_seed(dataset: str, data: Sequence[Interaction], seed: int) -> dict[str, dict[str, float]]:
    split, config, learner = fit_drex(dataset, data, seed)
    words = TrainingWords(split.train)
    parts = {"valid": explained_pairs(split.valid), "test": explained_pairs(split.test)}
    out: dict[str, dict[str, float]] = {}
    for part, pairs in parts.items():
        for name, f in baseline_explainers(words).items():
            out[f"{part} {name}"] = score_explainer(f, pairs, words.idf, words.default_idf)
    for attention in (True, False):
        learner.config = dataclasses.replace(config, keyword_attention=attention)
        learner.rebuild_keywords(split.train)
        for aspects_first in (True, False):
            f = explainer(learner, aspects_first)
            order = "aspects first" if aspects_first else "strongest first"
            name = f"{'attention' if attention else 'reviews'}, {order}"
            for part, pairs in parts.items():
                out[f"{part} drex: {name}"] = score_explainer(
                    f, pairs, words.idf, words.default_idf
                )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", required=True, help="comma-separated files")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args(argv)
    for dataset in args.datasets.split(","):
        name = os.path.basename(dataset).split(".")[0]
        data = filter_min_counts(load_interactions(dataset).interactions, 5, 5)
        runs = {}
        for seed in (int(s) for s in args.seeds.split(",")):
            runs[seed] = run_seed(dataset, data, seed)
            print(f"\n## {name} seed {seed}")
            print("| setting | " + " | ".join(KEYS) + " |\n|---|---|---|---|")
            for setting, m in runs[seed].items():
                print(f"| {setting} | " + " | ".join(f"{m[k]:.3f}" for k in KEYS) + " |")
        print(f"\n## {name}, mean over seeds {sorted(runs)}")
        print("| setting | " + " | ".join(KEYS) + " |\n|---|---|---|---|")
        for setting in next(iter(runs.values())):
            means = [statistics.mean(r[setting][k] for r in runs.values()) for k in KEYS]
            print(f"| {setting} | " + " | ".join(f"{x:.3f}" for x in means) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
