"""Explanation metrics and baseline explainers on tiny hand-made data."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from drex_model.evaluate.explanations import (
    TrainingWords,
    baseline_explainers,
    explain_pairs,
    explained_pairs,
    explanation_metrics,
    idf_weights,
    recommendation_metrics,
    score_explainer,
    score_reasons,
    shared_keywords,
    unseen_idf,
)
from drex_model.reasons import Quote, Reason
from drex_model.types import Interaction


def test_idf_is_smoothed_log_document_frequency() -> None:
    idf = idf_weights([{"great", "tone"}, {"great"}, {"great", "intonation"}])
    assert idf["great"] == pytest.approx(1.0)  # in every document
    assert idf["tone"] == pytest.approx(math.log(4 / 2) + 1.0)
    assert unseen_idf(3) == pytest.approx(math.log(4) + 1.0)


def test_precision_and_hit_average_over_non_empty_explanations_only() -> None:
    m = explanation_metrics(
        [["tone", "price"], ["cheap"], []],
        [{"tone", "loud"}, {"tone"}, {"tone"}],
        idf={},
        default_idf=1.0,
    )
    assert m["expl_pairs"] == 3.0
    assert m["expl_coverage"] == pytest.approx(2 / 3)
    assert m["expl_precision"] == pytest.approx((1 / 2 + 0) / 2)  # the empty one is out
    assert m["expl_hit"] == pytest.approx(1 / 2)
    assert m["expl_idf_precision"] == pytest.approx(1 / 4)  # equal weights: plain precision
    assert m["expl_hit_all"] == pytest.approx(1 / 3)  # over all pairs: the empty one missed
    assert m["expl_distinct"] == pytest.approx(1.0)
    assert m["expl_diversity"] == pytest.approx(1.0)  # {tone, price} and {cheap} share none


def test_idf_weighting_makes_a_rare_word_count_more() -> None:
    idf = {"great": 1.0, "intonation": 3.0}
    rare = explanation_metrics([["great", "intonation"]], [{"intonation"}], idf, 1.0)
    common = explanation_metrics([["great", "intonation"]], [{"great"}], idf, 1.0)
    assert rare["expl_precision"] == common["expl_precision"] == pytest.approx(0.5)
    assert rare["expl_idf_precision"] == pytest.approx(3 / 4)
    assert common["expl_idf_precision"] == pytest.approx(1 / 4)


def test_no_explanation_at_all_scores_zero_with_zero_coverage() -> None:
    m = explanation_metrics([[], []], [{"a"}, {"b"}], {}, 1.0)
    assert m["expl_coverage"] == 0.0
    assert m["expl_precision"] == m["expl_hit"] == m["expl_idf_precision"] == 0.0
    assert m["expl_hit_all"] == 0.0
    assert m["expl_distinct"] == pytest.approx(1 / 2)
    assert explanation_metrics([], [], {}, 1.0)["expl_coverage"] == 0.0
    assert m["expl_diversity"] == 0.0


def test_diversity_is_mean_pairwise_jaccard_distance() -> None:
    same = explanation_metrics([["tone"], ["tone"]], [set(), set()], {}, 1.0)
    assert same["expl_diversity"] == 0.0 and same["expl_distinct"] == pytest.approx(1 / 2)
    half = explanation_metrics([["tone", "loud"], ["tone"]], [set(), set()], {}, 1.0)
    assert half["expl_diversity"] == pytest.approx(1 / 2)


def _x(user: str, item: str, text: str | None) -> Interaction:
    return Interaction(user=user, item=item, rating=5.0, text=text)


TRAIN = [
    _x("ann", "amp", "tone tone loud"),
    _x("ann", "pick", "tone cheap cheap"),
    _x("bob", "amp", "loud hum"),
    _x("bob", "pick", None),
]


def test_baselines_read_training_words_only() -> None:
    words = TrainingWords(TRAIN)
    explain = baseline_explainers(words)
    # ann: tone 3, cheap 2, loud 1; amp: loud 2, tone 2, hum 1
    assert explain["raw-count-overlap"]("ann", "amp") == ["tone", "loud"]
    assert explain["item-top-words"]("bob", "amp") == ["loud", "tone", "hum"]
    # idf over the 3 reviews with text: tone in 2, hum in 1
    assert words.idf["hum"] == pytest.approx(math.log(4 / 2) + 1.0)
    assert words.idf["tone"] == pytest.approx(math.log(4 / 3) + 1.0)
    assert explain["item-tfidf"]("ann", "amp") == ["loud", "tone", "hum"]
    assert explain["corpus-top-words"]("x", "y") == ["tone", "cheap", "loud", "hum"]  # ties by word
    assert explain["raw-count-overlap"]("nobody", "amp") == []


def test_score_explainer_compares_with_the_held_out_review() -> None:
    words = TrainingWords(TRAIN)
    test = [_x("ann", "amp", "The tones were great"), _x("bob", "pick", None)]
    pairs = explained_pairs(test)
    assert len(pairs) == 1
    m = score_explainer(
        baseline_explainers(words)["raw-count-overlap"], pairs, words.idf, words.default_idf
    )
    assert m["expl_precision"] == pytest.approx(1 / 2)  # "tone" is in, "loud" is not
    assert m["expl_hit"] == 1.0


def _reason(*keywords: str, quote: bool = False) -> Reason:
    said = Quote("Warm tone, no hum.", 5.0, keywords) if quote else None
    return Reason(list(keywords), [], list(keywords), [], said)


def test_explain_pairs_asks_once_per_user_and_keeps_the_pairs_order() -> None:
    calls: list[tuple[str, list[str]]] = []

    def explain(user: str, items: Sequence[str]) -> list[Reason]:
        calls.append((user, list(items)))
        return [_reason(user, item) for item in items]

    reasons = explain_pairs(explain, [("ann", "amp"), ("bob", "amp"), ("ann", "pick")])
    assert [r.keywords for r in reasons] == [["ann", "amp"], ["bob", "amp"], ["ann", "pick"]]
    assert calls == [("ann", ["amp", "pick"]), ("bob", ["amp"])]


def test_score_reasons_shows_five_keywords_and_counts_quotes() -> None:
    many = _reason("bass", "crisp", "hum", "loud", "mellow", "tone", quote=True)
    pairs = [_x("u", "i", "bass crisp hum loud mellow"), _x("u", "j", "nothing here")]
    m = score_reasons([many, _reason()], pairs, {}, 1.0)
    assert m["expl_precision"] == 1.0  # "tone", the sixth, is not shown
    assert m["expl_coverage"] == pytest.approx(1 / 2)
    assert m["expl_quote_coverage"] == pytest.approx(1 / 2)
    assert m["expl_mean_idf"] == 1.0


def test_recommendation_metrics_count_negatives_and_score_only_reviewed_items() -> None:
    rows = [
        ("ann", "amp", _reason("tone", "warm", quote=True)),
        ("ann", "pick", _reason("tone", "warm")),  # the same words: not distinct
        ("bob", "amp", _reason("hum", "tone")),  # "hum" is negative here
        ("bob", "cable", _reason("not", "short")),  # a negation
        ("cat", "amp", _reason()),
    ]
    reviews = {("ann", "pick"): "Warm and bright", ("cat", "amp"): "loud"}
    m = recommendation_metrics(rows, reviews, lambda w: w == "hum", {"warm": 3.0}, 1.0)
    assert m["rec_expl_count"] == 5.0
    assert m["rec_expl_coverage"] == pytest.approx(4 / 5)
    assert m["rec_expl_distinct"] == pytest.approx(4 / 5)  # the empty one counts once
    assert m["rec_expl_negative"] == 2.0
    assert m["rec_quote_coverage"] == pytest.approx(1 / 5)
    assert m["rec_expl_reviewed"] == 2.0
    # over the reviewed and explained: ("ann", "pick") only, "warm" in, "tone" out
    assert m["rec_expl_precision"] == pytest.approx(1 / 2)
    assert m["rec_expl_hit"] == 1.0
    assert m["rec_expl_idf_precision"] == pytest.approx(3 / 4)


def test_recommendation_metrics_of_nothing_are_zero() -> None:
    m = recommendation_metrics([], {}, lambda w: False, {}, 1.0)
    assert m["rec_expl_count"] == m["rec_expl_coverage"] == m["rec_quote_coverage"] == 0.0
    assert m["rec_expl_hit"] == 0.0 and m["rec_expl_reviewed"] == 0.0


def test_shared_keywords_are_in_both_top_k_by_summed_rank() -> None:
    user = [("tone", 3.0), ("cheap", 2.0), ("loud", 1.0)]
    item = [("loud", 3.0), ("tone", 2.0), ("hum", 1.0)]
    assert shared_keywords(user, item) == ["tone", "loud"]  # ranks 0+1, then 2+0
    assert shared_keywords(user, item, k=2) == ["tone"]
