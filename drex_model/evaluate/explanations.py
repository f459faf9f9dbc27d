"""Explanation metrics: an explanation's words against the user's held-out review.

For each test pair with review text, the explanation (at most :data:`EXPLAIN_WORDS`
words) is compared with the words of that user's own test review of the item, both
after :func:`drex_model.text.preprocess`:

- ``expl_coverage``: share of pairs with a non-empty explanation;
- ``expl_precision``: share of an explanation's words found in the review, averaged over
  the non-empty explanations (an empty one counts in coverage only);
- ``expl_hit``: share of non-empty explanations with at least one word in the review;
- ``expl_idf_precision``: precision with each word weighted by its idf over the
  training reviews' word sets (a rare, specific word earns more than "great"), again
  over the non-empty explanations;
- ``expl_distinct``: distinct explanations (the empty one included) per pair;
- ``expl_diversity``: mean pairwise Jaccard distance of the non-empty explanations (the
  first :data:`DIVERSITY_SAMPLE`), PETER/METER's feature diversity turned round so that
  higher is more diverse.

Baseline explainers (:func:`baseline_explainers`) read the training reviews only, so
none of them sees the test review.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from drex_model.scoring import EXPLAIN_TOP, shared_keywords, top_keywords
from drex_model.text import preprocess
from drex_model.types import Interaction

EXPLAIN_WORDS = 5  # words an explanation may show
DIVERSITY_SAMPLE = 500  # explanations the pairwise diversity compares (quadratic cost)
Explainer = Callable[[str, str], list[str]]


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
    return {
        "expl_pairs": float(n),
        "expl_coverage": len(shown) / n if n else 0.0,
        "expl_precision": _mean(precision),
        "expl_hit": _mean(hit),
        "expl_idf_precision": _mean(weighted),
        "expl_distinct": len({tuple(e) for e in explanations}) / n if n else 0.0,
        "expl_diversity": diversity([set(e) for e, _ in shown[:DIVERSITY_SAMPLE]]),
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


def profile_explainer(
    users: Mapping[str, Mapping[str, float]], items: Mapping[str, Mapping[str, float]]
) -> Explainer:
    """DReX's rule (:func:`drex_model.scoring.shared_keywords`) over keyword profiles."""
    user_top = {k: top_keywords(p, EXPLAIN_TOP) for k, p in users.items()}
    item_top = {k: top_keywords(p, EXPLAIN_TOP) for k, p in items.items()}
    return lambda user, item: shared_keywords(user_top.get(user, []), item_top.get(item, []))


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

    - ``raw-count-overlap``: DReX's overlap rule on raw word counts instead of attention;
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
