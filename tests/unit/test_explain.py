"""Keyword profiles (word -> summed attention, or reviews holding it), with and without decay."""

from __future__ import annotations

import torch

from drex_model.explain import KeywordProfiles, word_weights
from drex_model.text import EncodedReview, TextEncoder


def test_word_weights_sum_word_pieces_of_each_word() -> None:
    review = EncodedReview(
        words=["tone", "unbelievable", "tone"],
        tokens=torch.zeros(4, 3, dtype=torch.float16),
        word_of_token=torch.tensor([0, 1, 1, 2]),
    )
    weights = word_weights(review, torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0]))
    assert weights == {"tone": 0.5, "unbelievable": 0.5} or (
        abs(weights["tone"] - 0.5) < 1e-6 and abs(weights["unbelievable"] - 0.5) < 1e-6
    )


def test_profiles_accumulate_per_review() -> None:
    users = KeywordProfiles()
    users.add("ann", {"tone": 1.0, "price": 0.9})
    users.add("ann", {"tone": 0.5, "strap": 0.2})
    assert users.top("ann", 2) == [("tone", 1.5), ("price", 0.9)]
    assert users.top("nobody") == []


def test_a_decaying_profile_follows_recent_reviews() -> None:
    users = KeywordProfiles(decay=0.5)
    users.add("ann", {"tone": 1.0})
    users.add("ann", {"strap": 0.8})
    assert users.profile("ann") == {"tone": 0.5, "strap": 0.8}
    for _ in range(10):  # a word not seen again fades out of the profile
        users.add("ann", {"strap": 0.8})
    assert "tone" not in users.profile("ann")


def test_without_attention_a_profile_counts_the_reviews_that_hold_each_word(
    tiny_encoder: TextEncoder,
) -> None:
    """``keyword_attention=False`` (the default ``drex``): each review adds 1 per word it
    holds, however often and however attended, to its item's profile (folded or pending)."""
    from collections import Counter

    from drex_model.learner import DReXLearner
    from drex_model.model import DReXConfig
    from drex_model.text import preprocess
    from tests.unit.quotable import reviewed

    config = DReXConfig.for_variant("drex", dim=8, encoder_dim=tiny_encoder.hidden_size)
    assert not config.keyword_attention
    learner = DReXLearner(config, encoder=tiny_encoder, seed=0)
    stream = reviewed(40)
    for start in range(0, 40, 8):
        learner.learn_many(stream[start : start + 8])
    items = sorted({x.item for x in stream})
    want = {i: Counter[str]() for i in items}
    for x in stream:
        if x.text:
            want[x.item].update(set(preprocess(x.text)))
    shown = learner.keyword_profiles("items", items)
    assert [dict(p) for p in shown] == [dict(want[i]) for i in items]
