"""Why an item is recommended to a user: the explanation rule, one home, torch-free.

The learner (:meth:`drex_model.views.LearnerViews.rank`) and the server
(``serving/replica.py``) both call :func:`explain`, so an explanation is written once.

**State it reads**, all updated online by the worker, per micro-batch:

- the keyword profiles of the user and the item (``drex_model.explain``): per word, the
  number of the entity's reviews that hold it (the default ``drex``), or its summed
  token attention (the paper's, ``keyword_attention``; attention sums to 1 over a
  review's words). Either way ``profile[w] / total`` is the share of the entity's
  weight that went to ``w``. A user's profile decays by ``keyword_decay`` at each new
  review, so it follows the user's recent interests;
- a :class:`Vocabulary`: per word, the same weight summed over all reviews (the corpus
  share ``p(w)``), and the ratings of the reviews that hold it (its sentiment);
- a :class:`QuoteBook`: per item, recent sentences of its positive reviews.

**The rule.** Over the item's words (its :data:`PROFILE_WORDS` heaviest), a word's score
is the log-probability that this user writes it about this item, under a naive model in
which the item says what is talked about and the user how they talk::

    score(w) = log p_i(w) + user_weight * log p_u(w) - corpus_weight * log p(w)
    p_e(w)   = (profile_e[w] + smoothing * p(w)) / (total_e + smoothing)

``p_u / p`` is how distinctive the word is for the user, ``p_i / p`` for the item; with
``corpus_weight`` < 1 + ``user_weight`` a word must also be frequent for the item, not
only rare. The explanation is the :data:`EXPLAIN_WORDS` best words, strongest first
(putting the best aspects first instead cost hit, idf precision and distinct
explanations on Gift Cards and changed little elsewhere: docs/results.md). A user with
no profile gets the item's own distinctive words (the fallback: every item with reviews
has an explanation).
Words that are **negative** (a negative valence in the VADER lexicon, or reviews holding
the word rated below the mean by more than :data:`NEGATIVE_BELOW` stars, shrunk) never
explain a recommendation; the item's distinctive negative words are returned apart, as
``cautions``. Negations ("not") are never keywords. Each keyword is an *aspect*
(:func:`is_aspect`: "tone", "peg", "pickup") or an *opinion* (the rest: "love",
"sturdy", "recommend").

**Evidence.** :func:`pick_quote` returns the item's sentence that holds the strongest
keywords (then the best rated, then the most recent), or none when no sentence holds one.
"""

from __future__ import annotations

import functools
import heapq
import importlib.resources
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

PROFILE_WORDS: Final = 64  # heaviest profile words the rule reads (the server keeps these)
EXPLAIN_WORDS: Final = 5  # keywords an explanation shows
CAUTION_WORDS: Final = 3  # negative words returned apart
NEGATIVE_BELOW: Final = -0.3  # stars: shrunk mean deviation of a word's reviews' ratings
SENTIMENT_SHRINKAGE: Final = 5.0  # pseudo-count of that mean
QUOTES_KEPT: Final = 16  # sentences kept per item
QUOTE_CHARS: Final = (15, 200)  # a quote's length, in characters
NEGATIONS: Final = frozenset({"no", "nor", "not", "never"})
_SENTENCE = re.compile(r"[^.!?\n]+[.!?]*")


@dataclass(frozen=True)
class ExplainWeights:
    """The rule's weights (DReXConfig's ``explain_*`` fields)."""

    user_weight: float = 1.0
    corpus_weight: float = 0.25
    smoothing: float = 2.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ExplainWeights:
        return cls(
            float(config.get("explain_user_weight", cls.user_weight)),
            float(config.get("explain_corpus_weight", cls.corpus_weight)),
            float(config.get("explain_smoothing", cls.smoothing)),
        )


@dataclass(frozen=True)
class Quote:
    """A sentence of a real review, with the review's rating and its preprocessed words."""

    text: str
    rating: float
    words: tuple[str, ...]

    def to_record(self) -> list[Any]:
        return [self.text, self.rating, list(self.words)]

    @classmethod
    def from_record(cls, record: Sequence[Any]) -> Quote:
        text, rating, words = record
        return cls(str(text), float(rating), tuple(str(w) for w in words))


@dataclass(frozen=True)
class Reason:
    """An explanation: keywords strongest first, split into aspects and opinions, the
    item's cautions, and a quote that holds keywords (None when no sentence does)."""

    keywords: list[str]
    aspects: list[str]
    opinions: list[str]
    cautions: list[str]
    quote: Quote | None = None


# --- word classes ----------------------------------------------------------------------------


@functools.cache
def _valences() -> dict[str, float]:
    """VADER's lexicon: word -> mean valence (-4..4), read from the package's data file."""
    text = importlib.resources.files("vaderSentiment").joinpath("vader_lexicon.txt")
    out: dict[str, float] = {}
    for line in text.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            out[parts[0]] = float(parts[1])
    return out


def valence(word: str) -> float:
    """VADER's valence of a word, 0 for a word it does not list."""
    return _valences().get(word, 0.0)


@functools.cache
def is_aspect(word: str) -> bool:
    """A word the lexicon knows as a noun, with no valence and no comparative form
    ("pickup" can modify a noun; "flimsy" has "flimsier", so it is an opinion).

    >>> is_aspect("tone"), is_aspect("pickup"), is_aspect("love"), is_aspect("flimsy")
    (True, True, False, False)
    """
    if valence(word):
        return False
    import lemminflect

    kinds = lemminflect.getAllLemmas(word)
    if "NOUN" not in kinds and "PROPN" not in kinds:
        return False
    return "JJR" not in lemminflect.getAllInflections(word, upos="ADJ")


# --- the vocabulary -------------------------------------------------------------------------


@dataclass
class Vocabulary:
    """Per word ``[mass, rated reviews, rating sum]``, and the total mass (the profiles'
    weight: reviews holding the word, or its attention).

    Updated once per review (when the review is folded into its item's profile); the
    worker stores the rows of :attr:`changed` after each micro-batch."""

    words: dict[str, list[float]] = field(default_factory=dict)
    mass: float = 0.0
    changed: set[str] = field(default_factory=set)

    def add(self, weights: Mapping[str, float], rating: float | None) -> None:
        """One review's weight per word, and its rating (None: not rated)."""
        for word, weight in weights.items():
            row = self.words.setdefault(word, [0.0, 0.0, 0.0])
            row[0] += weight
            if rating is not None:
                row[1] += 1.0
                row[2] += rating
            self.mass += weight
            self.changed.add(word)

    def load(self, rows: Iterable[tuple[str, Sequence[float]]], mass: float | None = None) -> None:
        """Rows as :meth:`drain` gave them (restores a stored vocabulary; replaces), and
        the total ``mass`` as stored with them (None: adjusted by the rows' change; the
        learner's own running sum may differ from that in the last bits)."""
        for word, row in rows:
            old = self.words.get(word)
            self.mass += float(row[0]) - (old[0] if old else 0.0)
            self.words[word] = [float(v) for v in row]
        if mass is not None:
            self.mass = mass

    def drain(self) -> dict[str, list[float]]:
        """The rows changed since the last drain."""
        out = {w: list(self.words[w]) for w in sorted(self.changed)}
        self.changed.clear()
        return out

    def clear(self) -> None:
        self.words.clear()
        self.changed.clear()
        self.mass = 0.0

    def share(self, word: str) -> float:
        """``p(w)``: the word's share of all attention (never 0: unseen words are rare)."""
        row = self.words.get(word)
        return ((row[0] if row else 0.0) + 0.1) / (self.mass + 1.0)

    def sentiment(self, word: str, mean: float) -> float:
        """Shrunk mean deviation, in stars, of the ratings of the reviews holding ``word``."""
        row = self.words.get(word)
        if row is None:
            return 0.0
        return (row[2] - row[1] * mean) / (row[1] + SENTIMENT_SHRINKAGE)

    def negative(self, word: str, mean: float) -> bool:
        """A word that never explains a recommendation (see the module doc)."""
        return valence(word) < 0 or self.sentiment(word, mean) < NEGATIVE_BELOW


# --- quotes ---------------------------------------------------------------------------------


def sentences(text: str) -> list[str]:
    """The review's sentences that fit a quote, in order.

    >>> sentences("Great tone. The tuning pegs hold well! ok")
    ['The tuning pegs hold well!']
    """
    lo, hi = QUOTE_CHARS
    found = (" ".join(s.split()) for s in _SENTENCE.findall(text))
    return [s for s in found if lo <= len(s) <= hi]


class QuoteBook:
    """item id -> its :data:`QUOTES_KEPT` most recent quotable sentences of positive reviews."""

    def __init__(self) -> None:
        self._quotes: dict[str, list[Quote]] = {}
        self.changed: set[str] = set()

    def add(self, item: str, text: str, rating: float, words: Callable[[str], list[str]]) -> None:
        """The sentences of one review of ``item`` (the caller keeps positive ones)."""
        new = [Quote(s, rating, tuple(dict.fromkeys(words(s)))) for s in sentences(text)]
        new = [q for q in new if q.words]
        if not new:
            return
        kept = self._quotes.setdefault(item, [])
        kept.extend(new)
        del kept[:-QUOTES_KEPT]
        self.changed.add(item)

    def get(self, item: str) -> list[Quote]:
        return list(self._quotes.get(item, []))

    def load(self, item: str, quotes: Sequence[Quote]) -> None:
        self._quotes[item] = list(quotes)[-QUOTES_KEPT:]

    def items(self) -> Iterable[str]:
        return self._quotes.keys()

    def clear(self) -> None:
        self._quotes.clear()
        self.changed.clear()


def pick_quote(quotes: Sequence[Quote], keywords: Sequence[str]) -> Quote | None:
    """The sentence whose keywords weigh most (the first keyword ``len(keywords)``, the
    last 1: the strongest lead), then the best rated, then the most recent.

    >>> qs = [Quote("Warm tone.", 5.0, ("warm", "tone")), Quote("Love it.", 5.0, ("love",))]
    >>> pick_quote(qs, ["tone", "love"]).text
    'Warm tone.'
    """
    weight = {w: len(keywords) - n for n, w in enumerate(keywords)}
    best, key = None, (0, 0.0, -1)
    for n, quote in enumerate(quotes):
        candidate = (sum(weight.get(w, 0) for w in quote.words), quote.rating, n)
        if candidate[0] and candidate > key:
            best, key = quote, candidate
    return best


# --- the rule -------------------------------------------------------------------------------


def explain(
    user: Mapping[str, float],
    item: Mapping[str, float],
    vocabulary: Vocabulary,
    mean: float,
    weights: ExplainWeights = ExplainWeights(),
    quotes: Sequence[Quote] = (),
) -> Reason:
    """The explanation of recommending the item of profile ``item`` to the user of
    profile ``user`` (see the module doc); ``mean`` is the global mean rating."""
    user_top = _heaviest(user)
    item_top = _heaviest(item)
    n_user = sum(user_top.values())
    n_item = sum(item_top.values())
    a = weights.smoothing
    rows, total, valences = vocabulary.words, vocabulary.mass + 1.0, _valences()
    scored: list[tuple[float, str]] = []
    cautions: list[tuple[float, str]] = []
    for word, weight in item_top.items():  # Vocabulary.share and .negative, inlined
        if word in NEGATIONS:
            continue
        row = rows.get(word)
        p = ((row[0] if row else 0.0) + 0.1) / total
        p_item = (weight + a * p) / (n_item + a)
        sentiment = (row[2] - row[1] * mean) / (row[1] + SENTIMENT_SHRINKAGE) if row else 0.0
        if valences.get(word, 0.0) < 0 or sentiment < NEGATIVE_BELOW:
            if p_item > p:  # distinctive for the item
                cautions.append((-math.log(p_item / p), word))
            continue
        p_user = (user_top.get(word, 0.0) + a * p) / (n_user + a)
        score = (
            math.log(p_item)
            + weights.user_weight * math.log(p_user)
            - weights.corpus_weight * math.log(p)
        )
        scored.append((-score, word))
    keywords = [w for _, w in sorted(scored)[:EXPLAIN_WORDS]]
    return Reason(
        keywords=keywords,
        aspects=[w for w in keywords if is_aspect(w)],
        opinions=[w for w in keywords if not is_aspect(w)],
        cautions=[w for _, w in sorted(cautions)[:CAUTION_WORDS]],
        quote=pick_quote(quotes, keywords),
    )


def _heaviest(profile: Mapping[str, float]) -> Mapping[str, float]:
    """The :data:`PROFILE_WORDS` heaviest words of a profile (ties by word)."""
    if len(profile) <= PROFILE_WORDS:
        return profile
    return dict(heapq.nsmallest(PROFILE_WORDS, profile.items(), key=lambda kv: (-kv[1], kv[0])))
