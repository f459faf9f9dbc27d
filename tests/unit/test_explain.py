"""Keyword profiles (word -> summed attention), with and without decay."""

from __future__ import annotations

import torch

from drex_model.explain import KeywordProfiles, word_weights
from drex_model.text import EncodedReview


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
