"""Explanation metrics: an explanation's words against the user's held-out review.

For each test pair with review text, the explanation (at most :data:`EXPLAIN_WORDS`
words) is compared with the words of that user's own test review of the item, both
after :func:`drex_model.text.preprocess`:

- ``expl_coverage``: share of pairs with a non-empty explanation;
- ``expl_precision``: share of an explanation's words found in the review, averaged over
  the non-empty explanations (an empty one counts in coverage only);
- ``expl_hit``: share of non-empty explanations with at least one word in the review;
- ``expl_hit_all``: share of all pairs whose explanation has a word in the review (an
  empty explanation is a miss: ``expl_hit`` x ``expl_coverage``), so that an explainer
  that stays silent when unsure is compared on the same pairs as one that always speaks;
- ``expl_idf_precision``: precision with each word weighted by its idf over the
  training reviews' word sets (a rare, specific word earns more than "great"), again
  over the non-empty explanations;
- ``expl_distinct``: distinct explanations (the empty one included) per pair;
- ``expl_diversity``: mean pairwise Jaccard distance of the non-empty explanations (the
  first :data:`DIVERSITY_SAMPLE`), PETER/METER's feature diversity turned round so that
  higher is more diverse;
- ``expl_mean_idf``: the mean idf of the words shown (how specific they are, whether
  or not the review holds them).

DReX's explanations are :meth:`DReXLearner.explain`'s (:func:`drex_model.reasons.explain`,
the rule the server calls), read by :func:`explain_pairs` from the state after training.
Baseline explainers (:func:`baseline_explainers`) read the training reviews only, so
none of them sees the test review.

The explanations of a **recommended top-k** (:func:`recommendation_metrics`, ``rec_``
keys) are scored on what a user is shown: coverage, distinct explanations, negative
words shown, quotes; and, for a recommended item that the user reviewed in test, the
same precision, hit and idf precision against that review.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from drex_model.reasons import EXPLAIN_WORDS, NEGATIONS, Reason
from drex_model.scoring import top_keywords
from drex_model.text import preprocess
from drex_model.types import Interaction

EXPLAIN_TOP = 10  # profile words the raw-count-overlap baseline draws from
# the metrics' columns in results.md, drex evaluate's and drex replay's
EXPLANATION_COLUMNS = (
    "expl_coverage",
    "expl_precision",
    "expl_hit",
    "expl_hit_all",
    "expl_idf_precision",
    "expl_distinct",
    "expl_diversity",
    "expl_mean_idf",
    "expl_quote_coverage",
)
DIVERSITY_SAMPLE = 500  # explanations the pairwise diversity compares (quadratic cost)
Explainer = Callable[[str, str], list[str]]
# DReXLearner.explain: a user and items -> one Reason per item
Explains = Callable[[str, Sequence[str]], Sequence[Reason]]


def idf_weights(documents: Sequence[set[str]]) -> dict[str, float]:
    """Smoothed idf of each word over word sets: ``log((1 + N) / (1 + df)) + 1``.

    >>> idf_weights([{"great"}, {"great", "tone"}])["great"]
    1.0
    """
    df: Counter[str] = Counter(w for doc in documents for w in doc)
    n = len(documents)
    return {w: math.log((1 + n) / (1 + c)) + 1.0 for w, c in df.items()}


def unseen_idf(n_documents: int) -> float:
    """The idf of a word no training review holds (df = 0)."""
    return math.log(1 + n_documents) + 1.0


def explanation_metrics(
    explanations: Sequence[Sequence[str]],
    references: Sequence[set[str]],
    idf: Mapping[str, float],
    default_idf: float,
) -> dict[str, float]:
    """The module docstring's metrics. With no non-empty explanation at all, precision,
    hit and idf precision are 0 (coverage says why), keeping results.json free of NaN."""
    if len(explanations) != len(references):
        raise ValueError("one reference word set per explanation")
    shown = [(e, r) for e, r in zip(explanations, references, strict=True) if e]
    precision, hit, weighted = [], [], []
    for words, review in shown:
        matched = [w for w in words if w in review]
        weight = [idf.get(w, default_idf) for w in words]
        precision.append(len(matched) / len(words))
        hit.append(float(bool(matched)))
        weighted.append(sum(idf.get(w, default_idf) for w in matched) / sum(weight))
    n = len(explanations)
    shown_idf = [idf.get(w, default_idf) for words, _ in shown for w in words]
    return {
        "expl_pairs": float(n),
        "expl_coverage": len(shown) / n if n else 0.0,
        "expl_precision": _mean(precision),
        "expl_hit": _mean(hit),
        "expl_hit_all": sum(hit) / n if n else 0.0,
        "expl_idf_precision": _mean(weighted),
        "expl_distinct": len({tuple(e) for e in explanations}) / n if n else 0.0,
        "expl_diversity": diversity([set(e) for e, _ in shown[:DIVERSITY_SAMPLE]]),
        "expl_mean_idf": _mean(shown_idf),
    }


def diversity(explanations: Sequence[set[str]]) -> float:
    """Mean Jaccard distance over all pairs of word sets; 0 for fewer than two.

    >>> diversity([{"tone", "loud"}, {"tone"}, {"hum"}])
    0.8333333333333334
    """
    distances = [
        1.0 - len(a & b) / len(a | b)
        for n, a in enumerate(explanations)
        for b in explanations[n + 1 :]
    ]
    return _mean(distances)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def explained_pairs(test: Sequence[Interaction]) -> list[Interaction]:
    """The test interactions with review text: the pairs explanations are scored on."""
    return [x for x in test if x.text]


def score_explainer(
    explain: Explainer,
    pairs: Sequence[Interaction],
    idf: Mapping[str, float],
    default_idf: float,
) -> dict[str, float]:
    """Metrics of ``explain`` on ``pairs`` (each with text), at most EXPLAIN_WORDS words."""
    explanations = [explain(x.user, x.item)[:EXPLAIN_WORDS] for x in pairs]
    references = [set(preprocess(x.text or "")) for x in pairs]
    return explanation_metrics(explanations, references, idf, default_idf)


def explain_pairs(explain: Explains, pairs: Sequence[tuple[str, str]]) -> list[Reason]:
    """The :class:`Reason` of each (user, item) pair, one ``explain`` call per user."""
    by_user: dict[str, list[int]] = {}
    for n, (user, _) in enumerate(pairs):
        by_user.setdefault(user, []).append(n)
    out: dict[int, Reason] = {}
    for user, rows in by_user.items():
        reasons = explain(user, [pairs[n][1] for n in rows])
        out.update(zip(rows, reasons, strict=True))
    return [out[n] for n in range(len(pairs))]


def score_reasons(
    reasons: Sequence[Reason],
    pairs: Sequence[Interaction],
    idf: Mapping[str, float],
    default_idf: float,
) -> dict[str, float]:
    """:func:`explanation_metrics` of the reasons' keywords (at most EXPLAIN_WORDS) on
    ``pairs`` (each with text), plus ``expl_quote_coverage``: the share with a quote."""
    references = [set(preprocess(x.text or "")) for x in pairs]
    out = explanation_metrics(
        [r.keywords[:EXPLAIN_WORDS] for r in reasons], references, idf, default_idf
    )
    out["expl_quote_coverage"] = _mean([float(r.quote is not None) for r in reasons])
    return out


def recommendation_metrics(
    recommended: Sequence[tuple[str, str, Reason]],
    reviews: Mapping[tuple[str, str], str],
    negative: Callable[[str], bool],
    idf: Mapping[str, float],
    default_idf: float,
) -> dict[str, float]:
    """``rec_`` metrics of the explanations of recommended (user, item, reason) rows.

    ``reviews``: the held-out review text of a (user, item) pair, where there is one;
    ``negative``: whether a word is negative (``Vocabulary.negative`` at the mean rating).

    - ``rec_expl_count``: recommendations explained;
    - ``rec_expl_coverage``: share with a non-empty explanation (the goal is 1);
    - ``rec_expl_distinct``: distinct explanations per recommendation;
    - ``rec_expl_diversity``: as ``expl_diversity``, over the recommendations;
    - ``rec_expl_negative``: recommendations whose keywords hold a negative word or a
      negation (the rule never shows one: the goal is 0; a count, not a share);
    - ``rec_quote_coverage``: share with a quote;
    - ``rec_expl_reviewed``: recommendations the user reviewed in test, and over those
      ``rec_expl_precision``, ``rec_expl_hit``, ``rec_expl_idf_precision`` against the
      review (0 with none).
    """
    keywords = [r.keywords[:EXPLAIN_WORDS] for _, _, r in recommended]
    every = explanation_metrics(keywords, [set() for _ in keywords], idf, default_idf)
    reviewed = [
        (k, reviews[(u, i)])
        for k, (u, i, _) in zip(keywords, recommended, strict=True)
        if (u, i) in reviews
    ]
    against = explanation_metrics(
        [k for k, _ in reviewed], [set(preprocess(t)) for _, t in reviewed], idf, default_idf
    )
    n = len(recommended)
    return {
        "rec_expl_count": float(n),
        "rec_expl_coverage": every["expl_coverage"],
        "rec_expl_distinct": every["expl_distinct"],
        "rec_expl_diversity": every["expl_diversity"],
        "rec_expl_negative": float(
            sum(any(w in NEGATIONS or negative(w) for w in k) for k in keywords)
        ),
        "rec_quote_coverage": _mean([float(r.quote is not None) for _, _, r in recommended]),
        "rec_expl_reviewed": float(len(reviewed)),
        "rec_expl_precision": against["expl_precision"],
        "rec_expl_hit": against["expl_hit"],
        "rec_expl_idf_precision": against["expl_idf_precision"],
    }


class TrainingWords:
    """Word counts of the training reviews, per user, per item and overall."""

    def __init__(self, train: Sequence[Interaction]) -> None:
        self.users: dict[str, Counter[str]] = {}
        self.items: dict[str, Counter[str]] = {}
        self.corpus: Counter[str] = Counter()
        self.documents: list[set[str]] = []
        for x in train:
            if not x.text:
                continue
            words = preprocess(x.text)
            self.users.setdefault(x.user, Counter()).update(words)
            self.items.setdefault(x.item, Counter()).update(words)
            self.corpus.update(words)
            self.documents.append(set(words))
        self.idf = idf_weights(self.documents)
        self.default_idf = unseen_idf(len(self.documents))


def baseline_explainers(words: TrainingWords) -> dict[str, Explainer]:
    """Explainers built from training words only (model names in the results):

    - ``raw-count-overlap``: the words in both the user's and the item's top-10 by raw
      count (:func:`shared_keywords`; DReX's rule before :mod:`drex_model.reasons`);
    - ``item-top-words``: the item's most frequent words;
    - ``item-tfidf``: the item's words by count x idf;
    - ``corpus-top-words``: the corpus's most frequent words, the same for every pair.
    """
    empty: Counter[str] = Counter()
    corpus = [w for w, _ in top_keywords(words.corpus, EXPLAIN_WORDS)]

    def overlap(user: str, item: str) -> list[str]:
        user_top = top_keywords(words.users.get(user, empty), EXPLAIN_TOP)
        item_top = top_keywords(words.items.get(item, empty), EXPLAIN_TOP)
        return shared_keywords(user_top, item_top)

    def item_top(user: str, item: str) -> list[str]:
        return [w for w, _ in top_keywords(words.items.get(item, empty), EXPLAIN_WORDS)]

    def item_tfidf(user: str, item: str) -> list[str]:
        counts = words.items.get(item, empty)
        scored = {w: c * words.idf.get(w, words.default_idf) for w, c in counts.items()}
        return [w for w, _ in top_keywords(scored, EXPLAIN_WORDS)]

    return {
        "raw-count-overlap": overlap,
        "item-top-words": item_top,
        "item-tfidf": item_tfidf,
        "corpus-top-words": lambda user, item: list(corpus),
    }


def shared_keywords(
    user_top: Sequence[tuple[str, float]],
    item_top: Sequence[tuple[str, float]],
    k: int = EXPLAIN_TOP,
) -> list[str]:
    """Keywords in both the user's and the item's top-``k`` (each heaviest first),
    ordered by their summed rank, then alphabetically.

    >>> shared_keywords([("tone", 2.0), ("price", 1.0), ("cheap", 0.5)],
    ...                 [("tone", 3.0), ("loud", 2.0), ("cheap", 1.0)], k=3)
    ['tone', 'cheap']
    """
    user_rank = {w: r for r, (w, _) in enumerate(user_top[:k])}
    shared = [(user_rank[w] + r, w) for r, (w, _) in enumerate(item_top[:k]) if w in user_rank]
    return [w for _, w in sorted(shared)]
