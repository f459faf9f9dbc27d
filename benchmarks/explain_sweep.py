"""Experiment: the explanation rule's weights (drex_model.reasons), chosen on validation.

For each dataset and seed, on ``drex evaluate``'s split: fit the default ``drex`` once as
``drex evaluate`` does, then, for each user keyword decay, rebuild the keyword profiles
from the training pass (:meth:`DReXLearner.rebuild_keywords`) and explain the validation
pairs with review text under each (user weight, corpus weight). Each setting's
``expl_hit``, ``expl_idf_precision``, ``expl_distinct`` and mean idf of the words shown
(:mod:`drex_model.evaluate.explanations`, idf over the training reviews) are printed;
the chosen setting maximises hit + idf precision among those with distinct >= 0.8 (the
most distinct setting when none reaches it). The test pairs' figures of the chosen
setting and of the defaults are printed beside it, and the medians of the choices last.

    python benchmarks/explain_sweep.py --datasets FILE[,FILE...] [--seeds 0,1,2]
        [--user-weights 0.25,0.5,1] [--corpus-weights 0,0.25,0.5,1,1.5] [--decays 1,0.9,0.7]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

from drex_model.evaluate import runner
from drex_model.evaluate.data import (
    Split,
    filter_min_counts,
    load_interactions,
    split_interactions,
)
from drex_model.evaluate.drex import DReXRecommender
from drex_model.evaluate.explanations import TrainingWords, explained_pairs, score_reasons
from drex_model.explain import KeywordProfiles
from drex_model.learner import DReXLearner
from drex_model.model import DReXConfig
from drex_model.reasons import ExplainWeights, Reason, explain
from drex_model.types import Interaction

USER_WEIGHTS = (0.25, 0.5, 1.0)
CORPUS_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 1.5)
DECAYS = (1.0, 0.9, 0.7)
MIN_DISTINCT = 0.8
KEYS = ("expl_hit", "expl_idf_precision", "expl_distinct", "expl_mean_idf")
Setting = tuple[float, float, float]  # user weight, corpus weight, user keyword decay


def reasons_of(
    learner: DReXLearner, pairs: Sequence[Interaction], weights: ExplainWeights
) -> list[Reason]:
    """:meth:`DReXLearner.explain`'s reasons with other weights: the same rule on the same
    profiles, vocabulary, mean and quotes (checked against it at the defaults)."""
    users = sorted({x.user for x in pairs})
    items = sorted({x.item for x in pairs})
    user_profile = dict(zip(users, learner.keyword_profiles("users", users), strict=True))
    item_profile = dict(zip(items, learner.keyword_profiles("items", items), strict=True))
    mean = learner.mean_rating()
    return [
        explain(
            user_profile[x.user],
            item_profile[x.item],
            learner.vocabulary,
            mean,
            weights,
            learner.quotes.get(x.item),
        )
        for x in pairs
    ]


def fit_drex(
    dataset: str, data: Sequence[Interaction], seed: int, max_epochs: int = 100
) -> tuple[Split, DReXConfig, DReXLearner]:
    """The default ``drex`` fitted on ``drex evaluate``'s split of ``data`` for ``seed``,
    as ``drex evaluate`` fits it: the split, the config and the learner."""
    split = split_interactions(data, seed=seed)
    opts = runner.EvaluateOptions(dataset=dataset, output="", seeds=(seed,), progress=False)
    cache = runner.review_cache(opts, data, "cpu")
    config = DReXConfig.for_variant("drex", encoder_dim=cache.hidden_size)
    drex = DReXRecommender(config, cache, seed=seed, max_epochs=max_epochs)
    drex.fit(split.train, split.valid, catalogue=data)
    assert drex.learner is not None
    return split, config, drex.learner


def default_setting() -> Setting:
    """The defaults of ``drex``: (user weight, corpus weight, user keyword decay)."""
    config = DReXConfig.for_variant("drex")
    default = ExplainWeights.from_config(config.to_dict())
    return (default.user_weight, default.corpus_weight, config.keyword_decay)


def choose(valid: dict[Setting, dict[str, float]]) -> Setting:
    ok = [s for s, m in valid.items() if m["expl_distinct"] >= MIN_DISTINCT]
    if not ok:
        return max(valid, key=lambda s: valid[s]["expl_distinct"])
    return max(ok, key=lambda s: valid[s]["expl_hit"] + valid[s]["expl_idf_precision"])


def run_seed(
    dataset: str,
    data: Sequence[Interaction],
    seed: int,
    max_epochs: int = 100,
    grid: tuple[Sequence[float], Sequence[float], Sequence[float]] = (
        USER_WEIGHTS,
        CORPUS_WEIGHTS,
        DECAYS,
    ),
) -> dict[str, Any]:
    t0 = time.perf_counter()
    split, config, learner = fit_drex(dataset, data, seed, max_epochs)
    fitted = time.perf_counter() - t0
    words = TrainingWords(split.train)
    valid_pairs, test_pairs = explained_pairs(split.valid), explained_pairs(split.test)
    default = ExplainWeights.from_config(config.to_dict())
    check = test_pairs[:20]
    by_learner = [learner.explain(x.user, [x.item])[0] for x in check]
    assert by_learner == reasons_of(learner, check, default), "not the learner's rule"
    valid: dict[Setting, dict[str, float]] = {}
    test: dict[Setting, dict[str, float]] = {}
    user_weights, corpus_weights, decays = grid
    for decay in decays:
        learner.user_keywords = KeywordProfiles(decay)
        learner.rebuild_keywords(split.train)
        for uw, cw in itertools.product(user_weights, corpus_weights):
            w = ExplainWeights(uw, cw, default.smoothing)
            for part, pairs in ((valid, valid_pairs), (test, test_pairs)):
                reasons = reasons_of(learner, pairs, w)
                part[(uw, cw, decay)] = score_reasons(reasons, pairs, words.idf, words.default_idf)
    chosen = choose(valid)
    base = default_setting()
    name = os.path.basename(dataset).split(".")[0]
    print(f"\n## {name} seed {seed}: fit {fitted:.0f}s, {len(valid_pairs)} validation pairs")
    print("| user_w | corpus_w | decay | " + " | ".join(KEYS) + " |")
    print("|---" * (3 + len(KEYS)) + "|")
    for s, m in valid.items():
        mark = " **chosen**" if s == chosen else (" (default)" if s == base else "")
        cells = " | ".join(f"{m[k]:.4f}" for k in KEYS)
        print(f"| {s[0]:g} | {s[1]:g} | {s[2]:g} | {cells} |{mark}")
    row = {
        "dataset": name,
        "seed": seed,
        "chosen": dict(zip(("user_weight", "corpus_weight", "keyword_decay"), chosen, strict=True)),
        "valid_chosen": {k: valid[chosen][k] for k in KEYS},
        "valid_default": {k: valid[base][k] for k in KEYS},
        "test_chosen": {k: test[chosen][k] for k in KEYS},
        "test_default": {k: test[base][k] for k in KEYS},
        "seconds": time.perf_counter() - t0,
    }
    print("RESULT " + json.dumps(row), flush=True)
    return row


def floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", required=True, help="comma-separated files")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--max-epochs", type=int, default=100, help="as drex evaluate's")
    parser.add_argument("--user-weights", type=floats, default=USER_WEIGHTS)
    parser.add_argument("--corpus-weights", type=floats, default=CORPUS_WEIGHTS)
    parser.add_argument("--decays", type=floats, default=DECAYS)
    args = parser.parse_args(argv)
    grid = (args.user_weights, args.corpus_weights, args.decays)
    base = default_setting()
    if not (base[0] in grid[0] and base[1] in grid[1] and base[2] in grid[2]):
        parser.error(f"the grid must hold the defaults {base} (user, corpus, decay)")
    rows = []
    for dataset in args.datasets.split(","):
        data = filter_min_counts(load_interactions(dataset).interactions, 5, 5)
        for seed in (int(s) for s in args.seeds.split(",")):
            rows.append(run_seed(dataset, data, seed, args.max_epochs, grid))
    print("\n## choices (user_weight, corpus_weight, keyword_decay) and their medians")
    groups = {
        name: [r for r in rows if r["dataset"] == name]
        for name in dict.fromkeys(r["dataset"] for r in rows)
    }
    groups["all"] = rows
    for name, group in groups.items():
        picks = [tuple(r["chosen"].values()) for r in group]
        medians = [statistics.median(p[n] for p in picks) for n in range(3)]
        print(f"{name}: {picks} -> median {tuple(medians)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
