"""``drex evaluate``: the paper's protocol (section 4) with baselines in the same run.

For each seed: a 70:20:10 random split (train:test:valid); every model is fit on train
(DReX variants with early stopping on valid) and scored on test:

- rating accuracy: MAE (eq. 9) and RMSE over the rated test pairs, overall and split by
  user history (users with <= 2 training ratings are "cold");
- ranking, two candidate sets, relevance = rating >= 4, ties broken pessimistically:
  * ``all`` (the realistic one, unprefixed keys): every catalogue item the user has
    not rated in train or valid; the relevant ones are the user's test items rated >= 4;
  * ``paper`` (``paper_`` keys): the user's own test items only. On 5-core data most
    users have one or two test items, so every model scores near 1 here.
- explanations (``expl_`` keys, DReX variants and the ``expl:`` baseline rows): each test
  pair's explanation against the user's held-out review; and (``rec_`` keys, DReX
  variants) the explanations of each ranked user's recommended top-10
  (:mod:`.explanations`).

Results are the mean and standard deviation over seeds, written as ``results.json``,
``results.md`` and ``learning_curves.png`` under the output directory.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drex_model.device import resolve_device
from drex_model.evaluate.baselines import BASELINES, Recommender
from drex_model.evaluate.collaborative import check_catalogue
from drex_model.evaluate.data import (
    LoadReport,
    describe,
    filter_min_counts,
    load_interactions,
    split_interactions,
)
from drex_model.evaluate.drex import DReXRecommender, EpochLog
from drex_model.evaluate.explanations import (
    EXPLANATION_COLUMNS,
    TrainingWords,
    baseline_explainers,
    explain_pairs,
    explained_pairs,
    recommendation_metrics,
    score_explainer,
    score_reasons,
)
from drex_model.evaluate.metrics import (
    RELEVANT_RATING,
    beyond_accuracy,
    ranking_metrics,
    rating_metrics,
)
from drex_model.model import VARIANTS, DReXConfig
from drex_model.text import ReviewCache, TextEncoder
from drex_model.types import Interaction

DEFAULT_BASELINES = ("global-mean", "bias", "mf", "popularity", "ease", "itemknn")
BEYOND_K = 10  # the list length of coverage, distinct lists and popularity bias
COLD_MAX_RATINGS = 2  # users with at most this many training ratings count as cold


@dataclass
class EvaluateOptions:
    """Settings of one ``drex evaluate`` run (saved in results.json)."""

    dataset: str
    output: str
    seeds: Sequence[int] = (0, 1, 2)
    variants: Sequence[str] = VARIANTS
    baselines: Sequence[str] = DEFAULT_BASELINES
    min_user: int = 5  # the paper filters users < 20; on a 5-core file 5/5 is the default
    min_item: int = 5
    max_epochs: int = 100
    patience: int = 10
    early_stop: str = "rmse"  # or "ranking", the paper's (see docs/evaluation.md)
    ks: Sequence[int] = (1, 3, 5, 10)
    encoder: str | None = None  # local HF model dir; default: bundled all-MiniLM-L6-v2
    precision: str = "auto"
    device: str = "auto"
    cache_dir: str | None = None  # frozen encoder outputs; default ~/.cache/drex/reviews
    overrides: dict[str, Any] = field(default_factory=dict)  # DReXConfig fields, all variants
    limit: int = 0  # keep only the first N interactions (quick runs); 0 = all
    progress: bool = True


def evaluate(
    opts: EvaluateOptions, data: LoadReport | Sequence[Interaction] | None = None
) -> dict[str, Any]:
    """Run the protocol; returns what it writes to ``results.json``.

    ``data``: interactions already loaded, in stream order (``drex replay`` passes those
    it rebuilt from Kafka), used instead of reading ``opts.dataset``, which then only
    names the data in the report.
    """
    check_names(opts.variants, opts.baselines)  # before a dataset is read
    started = time.perf_counter()
    out = Path(opts.output)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(opts.device)
    if data is None:
        report = load_interactions(opts.dataset, progress=opts.progress)
    elif isinstance(data, LoadReport):
        report = data
    else:
        report = LoadReport(list(data), len(data), {}, 0, "given")
    say(opts, f"{opts.dataset}: {report.summary()}")
    data = report.interactions[: opts.limit] if opts.limit else report.interactions
    data = filter_min_counts(data, opts.min_user, opts.min_item)
    if len(data) < 10:
        raise ValueError(
            f"only {len(data)} interactions left after filtering "
            f"(min_user={opts.min_user}, min_item={opts.min_item}); lower --min-user/--min-item"
        )
    stats = describe(data)
    say(
        opts,
        f"after filtering: {stats['users']} users, {stats['items']} items, "
        f"{stats['interactions']} interactions",
    )

    for name in opts.baselines:  # a catalogue too large for a baseline: say so now
        if name in ("ease", "itemknn"):
            check_catalogue(name, int(stats["items"]))
    cache = review_cache(opts, data, device) if opts.variants else None
    per_seed: dict[str, list[dict[str, float]]] = {}
    curves: dict[str, list[list[EpochLog]]] = {}
    for seed in opts.seeds:
        split = split_interactions(data, seed=seed)
        words, pairs = TrainingWords(split.train), explained_pairs(split.test)
        for name, explainer in baseline_explainers(words).items():  # training words only
            figures = score_explainer(explainer, pairs, words.idf, words.default_idf)
            per_seed.setdefault(f"expl:{name}", []).append(figures)
        for name in [*opts.variants, *opts.baselines]:
            t0 = time.perf_counter()
            model = _make(name, opts, cache, seed, device)
            if isinstance(model, DReXRecommender):
                model.fit(split.train, split.valid, catalogue=data)
                curves.setdefault(name, []).append(model.history)
            else:
                model.fit(split.train, split.valid)
            tops: dict[str, list[str]] = {}
            metrics = score(model, split.train, split.valid, split.test, data, opts.ks, tops)
            metrics["seconds"] = time.perf_counter() - t0
            if isinstance(model, DReXRecommender):
                metrics["epochs"] = float(len(model.history))
                metrics["best_epoch"] = float(model.best_epoch)
                metrics["exposure_weight"] = model.blend.exposure
                metrics["rating_weight"] = model.blend.rating
                metrics["content_weight"] = model.blend.content
                metrics["cooccurrence_shrinkage"] = model.blend.shrinkage
                metrics.update(_explanation_scores(model, pairs, words, tops))
            for key, value in getattr(model, "chosen", {}).items():  # tuned on validation
                metrics[key] = float(value)
            per_seed.setdefault(name, []).append(metrics)
            say(
                opts,
                f"seed {seed} {name:12s} rmse {metrics.get('rmse', float('nan')):.4f} "
                f"ndcg@10 {metrics['ndcg@10']:.4f} ({metrics['seconds']:.1f}s)",
            )

    results = {
        "dataset": os.path.basename(opts.dataset),
        "protocol": {
            "split": "random 70:20:10 (train:test:valid) per seed",
            "seeds": list(opts.seeds),
            "filter": {"min_user": opts.min_user, "min_item": opts.min_item},
            "relevance": f"rating >= {RELEVANT_RATING:g}",
            "candidates": {
                "all": "every catalogue item not rated by the user in train or valid",
                "paper": "the user's own test items (paper_ keys)",
            },
            "ties": "pessimistic: among equal scores, irrelevant items rank first",
            "early_stopping": {
                "criterion": opts.early_stop,
                "patience": opts.patience,
                "max_epochs": opts.max_epochs,
            },
            "cold_users": f"<= {COLD_MAX_RATINGS} training ratings",
            "ks": list(opts.ks),
        },
        "data": {**stats, "load": report.summary()},
        "config": {v: DReXConfig.for_variant(v, **opts.overrides).to_dict() for v in opts.variants},
        "machine": machine_info(device),
        "seconds": 0.0,
        "models": {name: aggregate_runs(runs) for name, runs in per_seed.items()},
        # each seed's figures, in the order of protocol.seeds: for paired comparisons
        "per_seed": per_seed,
    }
    results["seconds"] = time.perf_counter() - started
    markdown = render_markdown(results)
    write_results(out, results, markdown)
    if curves:
        plot_curves(curves, out / "learning_curves.png")
    print(markdown)
    return results


def score(
    model: Recommender | DReXRecommender,
    train: Sequence[Interaction],
    valid: Sequence[Interaction],
    test: Sequence[Interaction],
    catalogue: Sequence[Interaction],
    ks: Sequence[int],
    tops: dict[str, list[str]] | None = None,
) -> dict[str, float]:
    """Test metrics of a fitted model (see the module docstring); ``tops``, when given,
    receives each ranked user's top-:data:`BEYOND_K` (the users with a relevant test item)."""
    out: dict[str, float] = {}
    rated = [x for x in test if x.rating is not None]
    y = np.array([x.rating for x in rated], dtype=np.float64)
    if model.predicts_ratings and rated:
        pred = model.predict([x.user for x in rated], [x.item for x in rated])
        out.update(rating_metrics(y, pred))
        history: dict[str, int] = {}
        for x in train:
            if x.rating is not None:
                history[x.user] = history.get(x.user, 0) + 1
        cold = np.array([history.get(x.user, 0) <= COLD_MAX_RATINGS for x in rated])
        for tag, mask in (("cold", cold), ("warm", ~cold)):
            out[f"n_{tag}"] = float(mask.sum())
            if mask.any():
                m = rating_metrics(y[mask], pred[mask])
                out[f"mae_{tag}"], out[f"rmse_{tag}"] = m["mae"], m["rmse"]
    items = sorted({x.item for x in catalogue})
    seen: dict[str, set[str]] = {}
    for x in [*train, *valid]:
        seen.setdefault(x.user, set()).add(x.item)
    tests: dict[str, dict[str, float]] = {}
    for x in rated:
        tests.setdefault(x.user, {})[x.item] = float(x.rating or 0.0)
    users = sorted(u for u, t in tests.items() if max(t.values()) >= RELEVANT_RATING)
    scores = _score_matrix(model, users, items)
    column = {item: j for j, item in enumerate(items)}
    realistic, paper, top_items = [], [], []
    for row, user in enumerate(users):
        keep = np.array([j for j, i in enumerate(items) if i not in seen.get(user, ())])
        relevant = {i for i, r in tests[user].items() if r >= RELEVANT_RATING}
        realistic.append((scores[row, keep], np.array([items[j] in relevant for j in keep])))
        best = np.argsort(-scores[row, keep], kind="stable")[:BEYOND_K]
        top_items.append([items[j] for j in keep[best]])
        own = list(tests[user])
        paper.append(
            (scores[row, [column[i] for i in own]], np.array([i in relevant for i in own]))
        )
    out.update(ranking_metrics(realistic, ks))
    out.update({f"paper_{k}": v for k, v in ranking_metrics(paper, ks).items()})
    counts: dict[str, float] = {}
    for x in train:
        counts[x.item] = counts.get(x.item, 0.0) + 1.0
    out.update(beyond_accuracy(top_items, len(items), counts, BEYOND_K))
    if tops is not None:
        tops.update(zip(users, top_items, strict=True))
    return out


def _explanation_scores(
    model: DReXRecommender,
    pairs: Sequence[Interaction],
    words: TrainingWords,
    tops: dict[str, list[str]],
) -> dict[str, float]:
    """The explanation metrics of a fitted DReX, by the server's rule
    (:meth:`DReXLearner.explain`) from the state after training: on the test pairs with
    text (``expl_``) and on each ranked user's recommended top-k (``rec_``, negative
    words judged at the learner's own mean rating, as :meth:`explain` judges them)."""
    learner = model.learner
    assert learner is not None
    reasons = explain_pairs(learner.explain, [(x.user, x.item) for x in pairs])
    out = score_reasons(reasons, pairs, words.idf, words.default_idf)
    shown = [(user, item) for user, items in tops.items() for item in items]
    reviews = {(x.user, x.item): x.text or "" for x in pairs}
    recommended = [
        (u, i, r) for (u, i), r in zip(shown, explain_pairs(learner.explain, shown), strict=True)
    ]
    negative = functools.partial(learner.vocabulary.negative, mean=learner.mean_rating())
    out.update(recommendation_metrics(recommended, reviews, negative, words.idf, words.default_idf))
    return out


def _score_matrix(
    model: Recommender | DReXRecommender, users: Sequence[str], items: Sequence[str]
) -> np.ndarray:
    if isinstance(model, DReXRecommender) or hasattr(model, "score_matrix"):
        return np.asarray(model.score_matrix(users, items))
    return (
        np.stack([model.score_items(u, items) for u in users])
        if users
        else np.zeros((0, len(items)))
    )


def _make(
    name: str, opts: EvaluateOptions, cache: ReviewCache | None, seed: int, device: str
) -> Recommender | DReXRecommender:
    if name in VARIANTS:
        config = DReXConfig.for_variant(name, **opts.overrides)
        if cache is not None:
            config = DReXConfig.for_variant(
                name, **{"encoder_dim": cache.hidden_size, **opts.overrides}
            )
        return DReXRecommender(
            config,
            cache,
            seed=seed,
            max_epochs=opts.max_epochs,
            patience=opts.patience,
            early_stop=opts.early_stop,
            device=device,
            progress=opts.progress,
        )
    if name not in BASELINES:
        raise ValueError(f"unknown model {name!r}; choose from {[*VARIANTS, *BASELINES]}")
    return BASELINES[name](seed=seed)


def check_names(variants: Sequence[str], baselines: Sequence[str]) -> None:
    """Refuse an unknown variant or baseline (``ValueError`` listing the valid names).

    >>> check_names(["drex"], ["bias", "svd"])
    Traceback (most recent call last):
    ...
    ValueError: unknown baseline 'svd'; choose from global-mean, bias, mf, popularity, ease, itemknn
    """
    for kind, names, valid in (("variant", variants, VARIANTS), ("baseline", baselines, BASELINES)):
        for name in names:
            if name not in valid:
                raise ValueError(f"unknown {kind} {name!r}; choose from {', '.join(valid)}")


def review_cache(opts: EvaluateOptions, data: Sequence[Interaction], device: str) -> ReviewCache:
    """Frozen encoder outputs for every review, loaded from disk when already computed."""
    encoder = TextEncoder(opts.encoder, device=device, precision=opts.precision)
    texts = sorted({x.text for x in data if x.text})
    digest = hashlib.blake2b("\n".join(texts).encode(), digest_size=8).hexdigest()
    root = Path(opts.cache_dir or Path.home() / ".cache" / "drex" / "reviews")
    path = root / f"{encoder.name}-{digest}"
    if (path / "index.json").exists():
        cache = ReviewCache.load(path)
        say(opts, f"review cache: {len(cache)} encoded reviews from {path}")
        return cache
    cache = ReviewCache(encoder.hidden_size)
    t0 = time.perf_counter()
    cache.add(encoder, texts, progress=opts.progress)
    say(
        opts,
        f"encoded {len(texts)} reviews in {time.perf_counter() - t0:.1f}s "
        f"({encoder.name}, {encoder.device}); cached in {path}",
    )
    cache.save(path)
    return cache


def write_results(out: Path, results: dict[str, Any], markdown: str) -> None:
    """``results.json`` and ``results.md`` of a run (``drex evaluate``, ``drex replay``)."""
    (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    (out / "results.md").write_text(markdown, encoding="utf-8")


def aggregate_runs(runs: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key in runs[0]:
        values = np.array([r[key] for r in runs if key in r], dtype=np.float64)
        out[key] = float(np.mean(values))
        out[f"{key}_std"] = float(np.std(values))
    return out


def machine_info(device: str) -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
    }


def say(opts: EvaluateOptions, message: str) -> None:
    if opts.progress:
        from tqdm.auto import tqdm

        tqdm.write(message)


REPORT_COLUMNS = (
    "mae",
    "rmse",
    "rmse_cold",
    "rmse_warm",
    "f1@5",
    "ndcg@5",
    "ndcg@10",
    "paper_ndcg@5",
)


RECOMMENDED_COLUMNS = (
    "rec_expl_coverage",
    "rec_expl_distinct",
    "rec_expl_diversity",
    "rec_expl_negative",
    "rec_quote_coverage",
    "rec_expl_reviewed",
    "rec_expl_precision",
    "rec_expl_hit",
    "rec_expl_idf_precision",
)


def render_markdown(results: dict[str, Any]) -> str:
    """The results table (mean +- std over seeds) and the detail tables."""
    models: dict[str, dict[str, float]] = results["models"]
    proto = results["protocol"]
    lines = [
        f"## {results['dataset']}",
        "",
        f"{results['data']['users']} users, {results['data']['items']} items, "
        f"{results['data']['interactions']} interactions; seeds {proto['seeds']}; "
        f"relevance {proto['relevance']}; ranking over all unrated items unless "
        f"prefixed paper_ (the user's own test items); ties {proto['ties'].split(':')[0]}; "
        f"early stopping on {proto['early_stopping']['criterion']}.",
        "",
    ]

    def table(columns: Sequence[str]) -> None:
        lines.append("| model | " + " | ".join(columns) + " |")
        lines.append("|---|" + "---|" * len(columns))
        for name, m in models.items():
            if not any(c in m for c in columns):  # e.g. an expl: row in a ranking table
                continue
            cells = [
                f"{m[c]:.4f} ± {m[c + '_std']:.4f}" if c in m and np.isfinite(m[c]) else "—"
                for c in columns
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")

    table(REPORT_COLUMNS)
    ks = proto["ks"]
    lines.append("Ranking over all unrated items:")
    lines.append("")
    table([f"{m}@{k}" for m in ("p", "r", "f1", "ndcg") for k in ks])
    lines.append(
        f"Beyond accuracy, top-{BEYOND_K} over all unrated items: catalogue coverage, "
        "distinct lists per user, mean log(1 + training interactions) of the items shown:"
    )
    lines.append("")
    table([f"{m}@{BEYOND_K}" for m in ("coverage", "distinct", "logpop")])
    lines.append("Ranking over each user's test items (the paper's candidate set):")
    lines.append("")
    table([f"paper_{m}@{k}" for m in ("f1", "ndcg") for k in ks])
    if any(c in m for m in models.values() for c in EXPLANATION_COLUMNS):
        lines.append(
            "Explanations of the test pairs with review text (at most 5 words) against "
            "the user's own held-out review: precision, hit and idf-weighted precision "
            "over the non-empty explanations (see docs/evaluation.md):"
        )
        lines.append("")
        table(EXPLANATION_COLUMNS)
    if any(c in m for m in models.values() for c in RECOMMENDED_COLUMNS):
        lines.append(
            f"Explanations of each ranked user's recommended top-{BEYOND_K}: negative words "
            "shown (a count); precision, hit and idf precision over the recommended items "
            "the user reviewed in test (rec_expl_reviewed of them):"
        )
        lines.append("")
        table(RECOMMENDED_COLUMNS)
    lines.append(
        f"Run time {results['seconds']:.0f}s on {results['machine']['platform']} "
        f"({results['machine']['cpus']} CPUs, device {results['machine']['device']})."
    )
    return "\n".join(lines) + "\n"


def plot_curves(curves: dict[str, list[list[EpochLog]]], path: Path) -> None:
    """Validation RMSE and ranking score per epoch, one line per variant and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for n, (name, runs) in enumerate(curves.items()):
        for s, logs in enumerate(runs):
            epochs = [log.epoch for log in logs]
            label = name if s == 0 else None
            c = colours[n % len(colours)]
            axes[0].plot(epochs, [log.train_rmse for log in logs], color=c, alpha=0.7, label=label)
            axes[1].plot(epochs, [log.valid_rmse for log in logs], color=c, alpha=0.7, label=label)
            axes[2].plot(
                epochs, [log.valid_ranking for log in logs], color=c, alpha=0.7, label=label
            )
    for ax, title in zip(
        axes,
        ("train RMSE (prequential)", "validation RMSE", "validation (F1@5 + NDCG@5) / 2"),
        strict=True,
    ):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
