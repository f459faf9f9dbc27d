"""Keyword profiles and explanations (paper section 3.6).

A profile maps each word of an entity's reviews to the attention weight it received,
summed over every occurrence the learner processed. The explanation for recommending
item i to user u is the overlap of their top-k keywords (the rule is
:func:`drex_model.scoring.shared_keywords`, which the server calls too).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import torch

from drex_model.scoring import shared_keywords, top_keywords
from drex_model.text import EncodedReview


def word_weights(review: EncodedReview, attn: torch.Tensor) -> dict[str, float]:
    """Attention per word: the sum over the word's word-piece tokens.

    ``attn`` is the review's ``(T,)`` token attention (padding beyond T is ignored).
    """
    n = review.tokens.shape[0]
    if n == 0 or not review.words:
        return {}
    per_word = torch.zeros(len(review.words))
    per_word.index_add_(0, review.word_of_token, attn[:n].float().cpu())
    out: dict[str, float] = defaultdict(float)
    for word, w in zip(review.words, per_word.tolist(), strict=True):
        out[word] += w
    return out


class KeywordProfiles:
    """entity id -> {word: summed attention}; one instance per side (users or items)."""

    def __init__(self) -> None:
        self._profiles: dict[str, dict[str, float]] = {}

    def __len__(self) -> int:
        return len(self._profiles)

    def __contains__(self, entity: object) -> bool:
        return entity in self._profiles

    def add(self, entity: str, weights: dict[str, float]) -> None:
        profile = self._profiles.setdefault(entity, {})
        for word, w in weights.items():
            profile[word] = profile.get(word, 0.0) + w

    def profile(self, entity: str) -> dict[str, float]:
        return dict(self._profiles.get(entity, {}))

    def top(self, entity: str, k: int = 10) -> list[tuple[str, float]]:
        """The k heaviest keywords, heaviest first (ties by word, for stable output)."""
        return top_keywords(self._profiles.get(entity, {}), k)

    def entities(self) -> Iterable[str]:
        return self._profiles.keys()

    def clear(self) -> None:
        self._profiles.clear()


def explain(
    users: KeywordProfiles, items: KeywordProfiles, user: str, item: str, k: int = 10
) -> list[str]:
    """Keywords in both the user's and the item's top-k, ordered by their summed rank.

    >>> u, i = KeywordProfiles(), KeywordProfiles()
    >>> u.add("ann", {"tone": 2.0, "price": 1.0, "cheap": 0.5})
    >>> i.add("amp", {"tone": 3.0, "loud": 2.0, "cheap": 1.0})
    >>> explain(u, i, "ann", "amp", k=3)
    ['tone', 'cheap']
    """
    return shared_keywords(users.top(user, k), items.top(item, k), k)
