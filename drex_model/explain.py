"""Keyword profiles and explanations (paper section 3.6).

A profile maps each word of an entity's reviews to a weight summed over the reviews the
learner processed: the attention the word received (the paper), or, with
``DReXConfig.keyword_attention`` off (the default ``drex``), 1 per review that holds it
(:func:`review_words`). A profile with a decay below 1 (the users',
``DReXConfig.keyword_decay``) multiplies its weights by it before each review is added,
so that it follows recent interests. The explanation of a recommendation is
:func:`drex_model.reasons.explain`, which the server calls too.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from drex_model.formats import fold_words
from drex_model.scoring import top_keywords
from drex_model.text import EncodedReview
from drex_model.types import Interaction


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


def review_words(
    review: EncodedReview, attn: torch.Tensor | None, attention: bool
) -> dict[str, float]:
    """What one review adds to its user's and its item's profiles and to the vocabulary:
    :func:`word_weights` (``attention``), else 1 for each word it holds (all its words,
    also those past the encoder's token limit).

    >>> review = EncodedReview(["tone", "warm", "tone"], torch.zeros(0, 2), torch.zeros(0))
    >>> review_words(review, torch.zeros(0), attention=False)
    {'tone': 1.0, 'warm': 1.0}
    """
    if not attention:
        return dict.fromkeys(review.words, 1.0)
    if attn is None:
        raise ValueError("attention profiles need the review's attention")
    return word_weights(review, attn)


class KeywordProfiles:
    """entity id -> {word: summed weight}; one instance per side (users or items)."""

    def __init__(self, decay: float = 1.0) -> None:
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"keyword decay must be in (0, 1], not {decay}")
        self.decay = decay
        self._profiles: dict[str, dict[str, float]] = {}

    def __len__(self) -> int:
        return len(self._profiles)

    def __contains__(self, entity: object) -> bool:
        return entity in self._profiles

    def add(self, entity: str, weights: Mapping[str, float]) -> None:
        """One review's words: the profile decays, then takes them in."""
        if self.decay < 1.0:
            self._profiles[entity] = fold_words(self._profiles.get(entity, {}), weights, self.decay)
            return
        profile = self._profiles.setdefault(entity, {})  # in place: items' can be large
        for word, w in weights.items():
            profile[word] = profile.get(word, 0.0) + w

    def set(self, entity: str, profile: Mapping[str, float]) -> None:
        """Replace an entity's profile (a stored one being restored)."""
        self._profiles[entity] = dict(profile)

    def profile(self, entity: str) -> dict[str, float]:
        return dict(self._profiles.get(entity, {}))

    def top(self, entity: str, k: int = 10) -> list[tuple[str, float]]:
        """The k heaviest keywords, heaviest first (ties by word, for stable output)."""
        return top_keywords(self._profiles.get(entity, {}), k)

    def entities(self) -> Iterable[str]:
        return self._profiles.keys()

    def clear(self) -> None:
        self._profiles.clear()


@torch.inference_mode()
def rebuild(learner: Any, interactions: Sequence[Interaction], chunk: int = 256) -> None:
    """A ``DReXLearner``'s keyword profiles, vocabulary and quotes from scratch (typed
    ``Any``: the learner imports this module): each review's words (:func:`review_words`:
    their attention under the current model, or 1 each), summed into its user's and its
    item's profile and into the vocabulary, in stream order (so users' profiles decay as
    they do online)."""
    for kept in (learner.user_keywords, learner.item_keywords, learner.vocabulary, learner.quotes):
        kept.clear()
    for x in interactions:
        learner._add_quotes(x)
    if not learner.config.use_text:
        return
    learner.model.eval()
    attention = learner.config.keyword_attention
    review_ids = learner._review_ids(interactions, progress=False).tolist()
    for s in range(0, len(interactions), chunk):
        ids = review_ids[s : s + chunk]
        attn: Sequence[torch.Tensor | None] = [None] * len(ids)
        if attention:  # counted reviews need no forward pass
            tokens, mask = learner.cache.batch(ids)
            _, attn = learner.model.review(tokens.to(learner.device), mask.to(learner.device))
        for x, j, a in zip(interactions[s : s + chunk], ids, attn, strict=True):
            if j >= 0:
                weights = review_words(learner.cache.get(j), a, attention)
                learner.user_keywords.add(x.user, weights)
                learner.item_keywords.add(x.item, weights)
                learner.vocabulary.add(weights, x.rating)
