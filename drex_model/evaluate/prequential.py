"""Prequential (test-then-train) evaluation over a stream of interactions.

Each interaction is scored before it is learned, in micro-batches, with the call the
worker makes (:meth:`DReXLearner.learn_many`); running baselines get the same pass. At
checkpoints the models rank, before learning on, the known items each known user has not
interacted with (:func:`checkpoints`). :func:`prequential` runs DReX variants and
baselines over seeds and writes ``results.json``, ``results.md`` and ``prequential.png``.

``drex replay --mode prequential`` (streams/replay.py) feeds it the interactions it
rebuilt from the Kafka topics; any list in stream order will do. Nothing here reads Kafka.
See docs/replay.md for the protocol.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

import numpy as np

from drex_model.evaluate.data import LoadReport, describe, filter_min_counts
from drex_model.evaluate.metrics import (
    RELEVANT_RATING,
    beyond_accuracy,
    ranking_metrics,
    rating_metrics,
)
from drex_model.evaluate.next_item import NextItemTracker, StreamingItemKNN, next_item_metrics
from drex_model.evaluate.stream_explanations import DReXStream, explanation_lines
from drex_model.types import Interaction

if TYPE_CHECKING:
    from drex_model.evaluate.runner import EvaluateOptions

# Baselines with a one-pass form (running estimates); ``mf`` needs epochs and a split.
PREQUENTIAL_BASELINES: Final = ("global-mean", "bias", "popularity", "itemknn")
PREQUENTIAL_VARIANTS: Final = ("drex", "drex-paper")  # drex-mlp needs a fixed catalogue
_RUNNING: Final = ("global-mean", "bias", "popularity")  # RunningBaseline's (itemknn: next_item)
DEFAULT_RATING_SCALE: Final = 5  # ratings are 1..5 unless said otherwise (as the loader)


@dataclass(frozen=True)
class PrequentialSettings:
    """The stream side of ``--mode prequential``."""

    batch_size: int = 256  # interactions per learn_many call (a worker's micro-batch)
    window: int = 1000  # interactions per window of the error-over-time curve
    checkpoint_every: int = -1  # interactions between ranking checkpoints (0: none; -1: window)

    def __post_init__(self) -> None:
        if self.checkpoint_every == -1:
            object.__setattr__(self, "checkpoint_every", self.window)
        if self.batch_size < 1 or self.window < 1 or self.checkpoint_every < 0:
            raise ValueError(
                "batch size and window must be >= 1 and checkpoint_every >= 0, got "
                f"{self.batch_size}, {self.window}, {self.checkpoint_every}"
            )


@dataclass
class Checkpoint:
    """A ranking test at stream position ``position`` (before it is learned).

    Users: those seen before it with a relevant item in the horizon. Candidates: the
    items seen before it that the user has not interacted with. Relevant: candidates the
    user rates >= 4 within the next ``checkpoint_every`` interactions.
    """

    position: int
    users: list[str]
    items: list[str]  # the catalogue known at this point, sorted
    candidates: list[np.ndarray]  # per user: column indices into ``items``
    relevant: list[np.ndarray]  # per user: bool per candidate


def checkpoints(stream: Sequence[Interaction], every: int) -> list[Checkpoint]:
    """The ranking checkpoints of ``stream`` at positions every, 2*every, ... (< len)."""
    if every <= 0:
        return []
    out: list[Checkpoint] = []
    items: set[str] = set()
    seen: dict[str, set[str]] = {}
    for p in range(0, len(stream), every):
        if p > 0:
            catalogue = sorted(items)
            column = {item: j for j, item in enumerate(catalogue)}
            relevant: dict[str, set[str]] = {}
            for x in stream[p : p + every]:
                if (
                    x.rating is not None
                    and x.rating >= RELEVANT_RATING
                    and x.user in seen
                    and x.item in column
                    and x.item not in seen[x.user]
                ):
                    relevant.setdefault(x.user, set()).add(x.item)
            users = sorted(relevant)
            cands, rels = [], []
            for u in users:
                keep = np.array([column[i] for i in catalogue if i not in seen[u]], dtype=np.int64)
                cands.append(keep)
                rels.append(np.array([catalogue[j] in relevant[u] for j in keep], dtype=bool))
            out.append(Checkpoint(p, users, catalogue, cands, rels))
        for x in stream[p : p + every]:
            items.add(x.item)
            seen.setdefault(x.user, set()).add(x.item)
    return out


class StreamModel(Protocol):
    """A model evaluated test-then-train: score a batch, then learn it."""

    predicts_ratings: bool

    def learn(self, batch: Sequence[Interaction]) -> np.ndarray:
        """Predicted ratings for ``batch``, each made before it was learned."""
        ...

    def scores(self, users: Sequence[str], items: Sequence[str]) -> np.ndarray:
        """Ranking scores ``(U, I)`` from the current state; learns nothing."""
        ...


class RunningBaseline:
    """``global-mean``, ``bias`` and ``popularity`` as running estimates.

    Each interaction is scored from the ratings before it, then counted. ``bias`` is
    ``mu + b_u + b_i`` from one closed-form sweep of the bias baseline's estimator over
    the ratings so far (items first: b_i = sum(r - mu) / (n_i + 5), then
    b_u = sum(r - mu - b_i) / (n_u + 5)), recomputed for each prediction.
    ``popularity`` ranks by the ratings each item got so far (no rating predictions).
    """

    def __init__(
        self,
        name: str,
        rating_scale: int = DEFAULT_RATING_SCALE,
        reg_user: float = 5.0,
        reg_item: float = 5.0,
    ) -> None:
        if name not in _RUNNING:
            raise ValueError(f"baseline {name!r} is not a running estimate; choose from {_RUNNING}")
        self.name = name
        self.predicts_ratings = name != "popularity"
        self.rating_scale = rating_scale
        self.reg_user, self.reg_item = reg_user, reg_item
        self.n = 0
        self.total = 0.0
        self.item_n: Counter[str] = Counter()
        self.item_sum: dict[str, float] = {}
        self.user_sum: dict[str, float] = {}
        self.user_items: dict[str, list[str]] = {}

    def mean(self) -> float:
        return self.total / self.n if self.n else (1.0 + self.rating_scale) / 2.0

    def item_bias(self, item: str, mu: float) -> float:
        n = self.item_n.get(item, 0)
        return (self.item_sum.get(item, 0.0) - n * mu) / (n + self.reg_item) if n else 0.0

    def user_bias(self, user: str, mu: float) -> float:
        items = self.user_items.get(user)
        if not items:
            return 0.0
        residual = self.user_sum[user] - len(items) * mu
        residual -= sum(self.item_bias(i, mu) for i in items)
        return residual / (len(items) + self.reg_user)

    def predict(self, user: str, item: str) -> float:
        mu = self.mean()
        if self.name != "bias":
            return mu
        value = mu + self.user_bias(user, mu) + self.item_bias(item, mu)
        return min(max(value, 1.0), float(self.rating_scale))

    def learn(self, batch: Sequence[Interaction]) -> np.ndarray:
        out = np.full(len(batch), np.nan)
        for j, x in enumerate(batch):
            if self.predicts_ratings:
                out[j] = self.predict(x.user, x.item)
            if x.rating is None:
                continue
            r = float(x.rating)
            self.n += 1
            self.total += r
            self.item_n[x.item] += 1
            self.item_sum[x.item] = self.item_sum.get(x.item, 0.0) + r
            self.user_sum[x.user] = self.user_sum.get(x.user, 0.0) + r
            self.user_items.setdefault(x.user, []).append(x.item)
        return out

    def scores(self, users: Sequence[str], items: Sequence[str]) -> np.ndarray:
        if self.name == "popularity":
            row = np.array([float(self.item_n.get(i, 0)) for i in items])
            return np.tile(row, (len(users), 1))
        mu = self.mean()
        if self.name == "global-mean":
            return np.full((len(users), len(items)), mu)
        item_part = np.array([self.item_bias(i, mu) for i in items])
        user_part = np.array([self.user_bias(u, mu) for u in users])
        scores: np.ndarray = mu + user_part[:, None] + item_part[None, :]
        return scores  # unclipped: clipping to the scale would make ties


@dataclass
class StreamRun:
    """What one pass of a model over the stream produced."""

    predictions: np.ndarray  # (n,) scored before learning; NaN where not a rating model
    rankings: list[list[tuple[np.ndarray, np.ndarray]]]  # per checkpoint, per user
    seconds: float = 0.0
    tops: list[list[list[str]]] = field(default_factory=list)  # per checkpoint, per user
    next_ranks: list[int] = field(default_factory=list)  # see evaluate/next_item.py


def run_stream(
    model: StreamModel,
    stream: Sequence[Interaction],
    settings: PrequentialSettings,
    tests: Sequence[Checkpoint] = (),
    progress: bool = False,
    desc: str = "learning",
) -> StreamRun:
    """Test-then-train over ``stream`` in micro-batches; rank at each checkpoint first.

    Micro-batches are cut at every ``batch_size`` interactions and at checkpoints, so a
    checkpoint sees exactly the interactions before it.
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    n = len(stream)
    at = {c.position: c for c in tests}
    cuts = sorted({0, n, *range(0, n, settings.batch_size), *at})
    predictions = np.full(n, np.nan)
    rankings: list[list[tuple[np.ndarray, np.ndarray]]] = []
    tops: list[list[list[str]]] = []
    next_item = NextItemTracker()
    with tqdm(total=n, unit="interactions", desc=desc, disable=not progress, leave=False) as bar:
        for a, b in itertools.pairwise(cuts):
            test = at.get(a)
            if test is not None:
                rows: list[tuple[np.ndarray, np.ndarray]] = []
                shown: list[list[str]] = []
                if test.users:
                    scores = model.scores(test.users, test.items)
                    for k, (keep, rel) in enumerate(
                        zip(test.candidates, test.relevant, strict=True)
                    ):
                        rows.append((scores[k, keep], rel))
                        best = keep[np.argsort(-scores[k, keep], kind="stable")[:BEYOND_K]]
                        shown.append([test.items[j] for j in best])
                rankings.append(rows)
                tops.append(shown)
            next_item.rank(model, stream[a:b])  # from the state before the batch
            predictions[a:b] = model.learn(stream[a:b])
            bar.update(b - a)
    if not model.predicts_ratings:
        predictions[:] = np.nan
    seconds = time.perf_counter() - started
    return StreamRun(predictions, rankings, seconds, tops, next_item.ranks)


def summarise(
    run: StreamRun,
    stream: Sequence[Interaction],
    settings: PrequentialSettings,
    tests: Sequence[Checkpoint],
    ks: Sequence[int],
) -> tuple[dict[str, float], dict[str, list[dict[str, float]]]]:
    """Overall metrics (evaluate's keys) and the curves: windows and checkpoints."""
    from drex_model.evaluate.runner import COLD_MAX_RATINGS

    out: dict[str, float] = {}
    rated = np.array([x.rating is not None for x in stream], dtype=bool)
    y = np.array([np.nan if x.rating is None else x.rating for x in stream], dtype=np.float64)
    scored = rated & ~np.isnan(run.predictions)
    windows: list[dict[str, float]] = []
    if scored.any():
        out.update(rating_metrics(y[scored], run.predictions[scored]))
        history: Counter[str] = Counter()
        cold = np.zeros(len(stream), dtype=bool)
        for j, x in enumerate(stream):
            cold[j] = history[x.user] <= COLD_MAX_RATINGS
            if x.rating is not None:
                history[x.user] += 1
        for tag, mask in (("cold", scored & cold), ("warm", scored & ~cold)):
            out[f"n_{tag}"] = float(mask.sum())
            if mask.any():
                m = rating_metrics(y[mask], run.predictions[mask])
                out[f"mae_{tag}"], out[f"rmse_{tag}"] = m["mae"], m["rmse"]
        for start in range(0, len(stream), settings.window):
            end = min(start + settings.window, len(stream))
            mask = scored[start:end]
            if mask.any():
                m = rating_metrics(y[start:end][mask], run.predictions[start:end][mask])
                windows.append({"end": float(end), "n": float(mask.sum()), **m})
    points: list[dict[str, float]] = []
    if tests:
        out.update(ranking_metrics([row for rows in run.rankings for row in rows], ks))
        for test, rows in zip(tests, run.rankings, strict=True):
            m = ranking_metrics(rows, ks)
            points.append(
                {"position": float(test.position), **{k: m[k] for k in _CURVE_KEYS if k in m}}
            )
        out.update(_beyond_accuracy(run, stream, tests))
    out.update(next_item_metrics(run.next_ranks))
    out["seconds"] = run.seconds
    return out, {"windows": windows, "checkpoints": points}


def _beyond_accuracy(
    run: StreamRun, stream: Sequence[Interaction], tests: Sequence[Checkpoint]
) -> dict[str, float]:
    """Coverage, distinct lists and popularity bias of the top-10s at each checkpoint
    (popularity as of that point of the stream), averaged over checkpoints."""
    counts: Counter[str] = Counter()
    seen = 0
    per_checkpoint = []
    for test, shown in zip(tests, run.tops, strict=True):
        counts.update(x.item for x in stream[seen : test.position])
        seen = test.position
        if shown:
            per_checkpoint.append(beyond_accuracy(shown, len(test.items), counts, BEYOND_K))
    if not per_checkpoint:
        return {}
    return {key: float(np.mean([m[key] for m in per_checkpoint])) for key in per_checkpoint[0]}


BEYOND_K: Final = 10

_CURVE_KEYS: Final = ("users", "f1@5", "ndcg@5", "ndcg@10")


def prequential(
    opts: EvaluateOptions,
    data: LoadReport | Sequence[Interaction],
    settings: PrequentialSettings | None = None,
) -> dict[str, Any]:
    """Test-then-train evaluation of DReX variants and running baselines over a stream.

    ``data`` is in stream order. ``opts`` are ``drex evaluate``'s options: seeds,
    variants, baselines, filter, limit, encoder, precision, device, cache, overrides, ks
    and output (epochs, patience and early stopping do not apply). Writes results.json,
    results.md and prequential.png; returns what results.json holds.
    """

    from drex_model.device import resolve_device
    from drex_model.evaluate.runner import (
        aggregate_runs,
        machine_info,
        review_cache,
        say,
        write_results,
    )
    from drex_model.learner import DReXLearner
    from drex_model.model import DReXConfig

    settings = settings or PrequentialSettings()
    started = time.perf_counter()
    out = Path(opts.output)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(opts.device)
    report = data if isinstance(data, LoadReport) else LoadReport(list(data), len(data), {}, 0)
    say(opts, f"{opts.dataset}: {report.summary()}")
    bad = [v for v in opts.variants if v not in PREQUENTIAL_VARIANTS]
    if bad:
        raise ValueError(
            f"variant(s) {bad} cannot run prequentially (drex-mlp needs a fixed catalogue, "
            f"as in the worker); choose from {PREQUENTIAL_VARIANTS}"
        )
    bad = [b for b in opts.baselines if b not in PREQUENTIAL_BASELINES]
    if bad:
        raise ValueError(
            f"baseline(s) {bad} have no prequential form (mf needs epochs on a split); "
            f"choose from {PREQUENTIAL_BASELINES}"
        )
    stream = report.interactions[: opts.limit] if opts.limit else report.interactions
    stream = filter_min_counts(stream, opts.min_user, opts.min_item)
    if not any(x.rating is not None for x in stream):
        raise ValueError(
            f"no rated interactions left (of {len(report.interactions)}) after the limit "
            f"and filter (min_user={opts.min_user}, min_item={opts.min_item})"
        )
    stats = describe(stream)
    say(
        opts,
        f"stream: {stats['users']} users, {stats['items']} items, "
        f"{stats['interactions']} interactions",
    )
    tests = checkpoints(stream, settings.checkpoint_every)
    cache = review_cache(opts, stream, device) if opts.variants else None

    def config(name: str) -> DReXConfig:
        extra = {"encoder_dim": cache.hidden_size} if cache is not None else {}
        return DReXConfig.for_variant(name, **{**extra, **opts.overrides})

    per_seed: dict[str, list[dict[str, float]]] = {}
    curves: dict[str, list[dict[str, Any]]] = {}

    def record(name: str, seed: int | None, run: StreamRun) -> None:
        metrics, curve = summarise(run, stream, settings, tests, opts.ks)
        per_seed.setdefault(name, []).append(metrics)
        curves.setdefault(name, []).append({"seed": seed, **curve})
        say(
            opts,
            f"{'' if seed is None else f'seed {seed} '}{name:12s} "
            f"rmse {metrics.get('rmse', float('nan')):.4f} "
            f"ndcg@10 {metrics.get('ndcg@10', float('nan')):.4f} ({run.seconds:.1f}s)",
        )

    for seed in opts.seeds:
        for name in opts.variants:
            drex = DReXStream(DReXLearner(config(name), cache=cache, seed=seed, device=device))
            run = run_stream(drex, stream, settings, tests, opts.progress, f"{name} seed {seed}")
            record(name, seed, run)
            per_seed[name][-1].update(drex.metrics())  # explanations (stream_explanations)
    for name in opts.baselines:  # deterministic: one run, whatever the seeds
        model = StreamingItemKNN() if name == "itemknn" else RunningBaseline(name)
        run = run_stream(model, stream, settings, tests, opts.progress, name)
        record(name, None, run)

    results: dict[str, Any] = {
        "dataset": os.path.basename(opts.dataset),
        "mode": "prequential",
        "protocol": {
            "order": "stream order; each interaction is scored before it is learned",
            "learner": "DReXLearner.learn_many, one call per micro-batch, one pass",
            "micro_batch": settings.batch_size,
            "window": settings.window,
            "checkpoint_every": settings.checkpoint_every,
            "seeds": list(opts.seeds),
            "filter": {"min_user": opts.min_user, "min_item": opts.min_item},
            "relevance": f"rating >= {RELEVANT_RATING:g}",
            "candidates": "at each checkpoint, for each user seen before it: the items "
            "seen before it that the user has not interacted with; relevant: those the "
            f"user rates >= {RELEVANT_RATING:g} in the next checkpoint_every interactions",
            "ties": "pessimistic: among equal scores, irrelevant items rank first",
            "cold_users": "<= 2 ratings before the interaction",
            "baselines": "running estimates, updated after each interaction is scored: "
            "global-mean (mean so far), bias (one closed-form sweep over the ratings so "
            "far), popularity (ratings so far, ranking only), itemknn (co-occurrence "
            "counts so far, shrunk cosine, ranking only)",
            "next_item": "before each micro-batch: the rank of each interaction's item for "
            "its user among the known items the user has not interacted with; hr@10, "
            "next_ndcg@10 (evaluate/next_item.py)",
            "ranking_blend": "the config's weights (drex_model.scoring.Blend)",
            "ks": list(opts.ks),
        },
        "data": {**stats, "load": report.summary()},
        "config": {v: config(v).to_dict() for v in opts.variants},
        "machine": machine_info(device),
        "seconds": 0.0,
        "models": {name: aggregate_runs(runs) for name, runs in per_seed.items()},
        "curves": curves,
    }
    results["seconds"] = time.perf_counter() - started
    markdown = render_prequential(results)
    write_results(out, results, markdown)
    plot_prequential(curves, out / "prequential.png")
    print(markdown)
    return results


PREQUENTIAL_COLUMNS: Final = ("mae", "rmse", "rmse_cold", "rmse_warm", "f1@5", "ndcg@5", "ndcg@10")


def render_prequential(results: dict[str, Any]) -> str:
    """The prequential results as markdown: overall table, ranking table, windows."""
    models: dict[str, dict[str, float]] = results["models"]
    proto = results["protocol"]
    data = results["data"]
    lines = [
        f"## {results['dataset']} (prequential)",
        "",
        f"{data['users']} users, {data['items']} items, {data['interactions']} interactions; "
        f"seeds {proto['seeds']}; micro-batches of {proto['micro_batch']}; each interaction "
        f"scored before it is learned; ranking every {proto['checkpoint_every']} "
        f"interactions over the known items the user has not interacted with, relevance "
        f"{proto['relevance']}, ties pessimistic.",
        "",
    ]

    def cell(m: dict[str, float], key: str) -> str:
        if key not in m or not np.isfinite(m[key]):
            return "—"
        return f"{m[key]:.4f} ± {m.get(key + '_std', 0.0):.4f}"

    def table(columns: Sequence[str]) -> None:
        lines.append("| model | " + " | ".join(columns) + " |")
        lines.append("|---|" + "---|" * len(columns))
        for name, m in models.items():
            lines.append(f"| {name} | " + " | ".join(cell(m, c) for c in columns) + " |")
        lines.append("")

    table(PREQUENTIAL_COLUMNS)
    lines += ["Ranking at the checkpoints (all users and checkpoints pooled):", ""]
    table([f"{m}@{k}" for m in ("p", "r", "f1", "ndcg") for k in proto["ks"]])
    lines += [
        f"Beyond accuracy, top-{BEYOND_K} at the checkpoints (mean over checkpoints): "
        "catalogue coverage, distinct lists per user, mean log(1 + interactions so far):",
        "",
    ]
    table([f"{m}@{BEYOND_K}" for m in ("coverage", "distinct", "logpop")])
    lines += [
        "Next item, before each micro-batch: the rank of each interaction's item among the "
        "known items its user has not interacted with (interactions ranked, HR@10, NDCG@10):",
        "",
    ]
    table(["next_n", "hr@10", "next_ndcg@10"])
    curves: dict[str, list[dict[str, Any]]] = results["curves"]
    rating_models = [n for n, runs in curves.items() if runs and runs[0]["windows"]]
    if rating_models:
        ends = [int(w["end"]) for w in curves[rating_models[0]][0]["windows"]]
        lines += [f"RMSE per window of {proto['window']} interactions (mean over seeds):", ""]
        lines.append("| up to | " + " | ".join(rating_models) + " |")
        lines.append("|---|" + "---|" * len(rating_models))
        for j, end in enumerate(ends):
            cells = []
            for name in rating_models:
                values = [r["windows"][j]["rmse"] for r in curves[name] if j < len(r["windows"])]
                cells.append(f"{np.mean(values):.4f}" if values else "—")
            lines.append(f"| {end} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += explanation_lines(models)
    lines.append(
        f"Run time {results['seconds']:.0f}s on {results['machine']['platform']} "
        f"({results['machine']['cpus']} CPUs, device {results['machine']['device']})."
    )
    return "\n".join(lines) + "\n"


def plot_prequential(curves: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """RMSE per window, F1@5 and NDCG@10 per checkpoint, over the stream position."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for n, (name, runs) in enumerate(curves.items()):
        c = colours[n % len(colours)]
        for s, run in enumerate(runs):
            label = name if s == 0 else None
            if run["windows"]:
                axes[0].plot(
                    [w["end"] for w in run["windows"]],
                    [w["rmse"] for w in run["windows"]],
                    color=c,
                    alpha=0.7,
                    marker=".",
                    label=label,
                )
            for ax, key in ((axes[1], "f1@5"), (axes[2], "ndcg@10")):
                points = [p for p in run["checkpoints"] if key in p]
                if points:
                    ax.plot(
                        [p["position"] for p in points],
                        [p[key] for p in points],
                        color=c,
                        alpha=0.7,
                        marker=".",
                        label=label,
                    )
    for ax, title in zip(
        axes,
        ("RMSE per window (prequential)", "F1@5 at checkpoints", "NDCG@10 at checkpoints"),
        strict=True,
    ):
        ax.set_title(title)
        ax.set_xlabel("stream position (interactions)")
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
