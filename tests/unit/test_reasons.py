"""The explanation rule (drex_model/reasons.py): distinctive, sentiment-aware, always
present for an item with reviews, with a quote that holds its keywords."""

from __future__ import annotations

import math

import pytest

from drex_model.model import DReXConfig
from drex_model.reasons import (
    EXPLAIN_WORDS,
    ExplainWeights,
    Quote,
    QuoteBook,
    Vocabulary,
    explain,
    is_aspect,
    pick_quote,
    valence,
)
from drex_model.text import preprocess


def corpus() -> Vocabulary:
    vocabulary = Vocabulary()
    for _ in range(50):  # generic praise everywhere, in well-rated reviews
        vocabulary.add({"great": 0.5, "love": 0.5}, 5.0)
    for _ in range(5):
        vocabulary.add({"tone": 0.6, "intonation": 0.4}, 5.0)
        vocabulary.add({"flimsy": 0.7, "strap": 0.3}, 1.0)  # a complaint
    return vocabulary


def test_distinctive_words_outrank_generic_ones_of_the_same_weight() -> None:
    item = {"great": 1.0, "intonation": 1.0, "tone": 1.0}
    reason = explain({"intonation": 1.0}, item, corpus(), 4.5)
    assert reason.keywords[0] == "intonation"  # the user's own distinctive word
    pure_lift = ExplainWeights(user_weight=1.0, corpus_weight=2.0)
    assert explain({}, item, corpus(), 4.5, pure_lift).keywords[-1] == "great"


def test_the_user_term_makes_the_explanation_personal() -> None:
    item = {"tone": 1.0, "strap": 1.0, "intonation": 1.0}
    vocabulary = Vocabulary()
    vocabulary.add({"tone": 0.4, "strap": 0.3, "intonation": 0.3}, 5.0)
    first = explain({"strap": 2.0}, item, vocabulary, 4.0).keywords[0]
    second = explain({"tone": 2.0}, item, vocabulary, 4.0).keywords[0]
    assert (first, second) == ("strap", "tone")


def test_no_recommendation_is_explained_by_a_negative_word() -> None:
    """Words of complaints (learned from the ratings of the reviews that hold them, or
    with a negative valence in the lexicon) and negations are never reasons; the item's
    distinctive complaint words come back as cautions."""
    item = {"flimsy": 3.0, "broken": 2.0, "not": 2.0, "strap": 1.0, "tone": 1.0}
    reason = explain({"flimsy": 5.0, "broken": 1.0, "not": 1.0}, item, corpus(), 4.3)
    assert valence("broken") < 0
    assert not {"flimsy", "broken", "not"} & set(reason.keywords)
    assert reason.keywords and "flimsy" in reason.cautions and "broken" in reason.cautions


def test_a_user_without_a_profile_gets_the_item_words() -> None:
    reason = explain({}, {"tone": 1.0, "intonation": 0.5}, corpus(), 4.5)
    assert reason.keywords == ["intonation", "tone"] or reason.keywords == ["tone", "intonation"]
    assert explain({}, {}, corpus(), 4.5).keywords == []


def test_at_most_the_shown_number_of_words_split_into_aspects_and_opinions() -> None:
    item = {f"w{j}": 1.0 for j in range(20)} | {"tone": 2.0, "love": 2.0}
    reason = explain({}, item, corpus(), 4.5)
    assert len(reason.keywords) == EXPLAIN_WORDS
    assert sorted(reason.aspects + reason.opinions) == sorted(reason.keywords)
    assert is_aspect("tone") and not is_aspect("love") and not is_aspect("sturdy")


def test_the_strongest_words_lead_whether_aspects_or_opinions() -> None:
    """Keywords are in score order (no class goes first); aspects and opinions keep it."""
    item = {"recommend": 3.0, "sturdy": 2.5, "tone": 1.0, "pickup": 0.9, "peg": 0.8, "cable": 0.1}
    vocabulary = Vocabulary()
    vocabulary.add(dict.fromkeys(item, 1.0), 5.0)  # every word as common: the item decides
    reason = explain({}, item, vocabulary, 4.5)
    assert reason.keywords == ["recommend", "sturdy", "tone", "pickup", "peg"]
    assert reason.aspects == ["tone", "pickup", "peg"]
    assert reason.opinions == ["recommend", "sturdy"]


def test_the_weights_come_from_the_config() -> None:
    config = DReXConfig(explain_user_weight=0.5, explain_corpus_weight=0.0)
    weights = ExplainWeights.from_config(config.to_dict())
    assert (weights.user_weight, weights.corpus_weight) == (0.5, 0.0)
    assert ExplainWeights.from_config({}) == ExplainWeights()


def test_sentiment_is_the_shrunk_mean_deviation_of_ratings() -> None:
    vocabulary = Vocabulary()
    vocabulary.add({"hum": 1.0}, 1.0)
    vocabulary.add({"hum": 1.0}, None)  # unrated: counts in the mass only
    assert vocabulary.sentiment("hum", 4.0) == pytest.approx(-3.0 / 6.0)
    assert math.isclose(vocabulary.share("hum"), 2.1 / 3.0)
    rows = vocabulary.drain()
    restored = Vocabulary()
    restored.load(rows.items())
    assert restored.words == vocabulary.words and restored.mass == vocabulary.mass
    assert vocabulary.drain() == {}


def test_quotes_are_recent_sentences_and_the_best_one_holds_the_keywords() -> None:
    book = QuoteBook()
    book.add("amp", "Love it. The tone is warm and the strap is sturdy!", 5.0, preprocess)
    book.add("amp", "Works as described, nothing more to say.", 4.0, preprocess)
    quote = pick_quote(book.get("amp"), ["tone", "strap"])
    assert quote is not None and quote.text == "The tone is warm and the strap is sturdy!"
    assert quote.rating == 5.0 and pick_quote(book.get("amp"), ["hum"]) is None
    for n in range(40):
        book.add("amp", f"Sentence number {n} about the tone.", 4.0, preprocess)
    assert len(book.get("amp")) == 16 and book.get("amp")[-1].text.endswith("39 about the tone.")
    assert Quote.from_record(quote.to_record()) == quote
