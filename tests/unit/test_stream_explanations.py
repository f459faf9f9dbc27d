"""Explanations in prequential replay come from the state before each micro-batch."""

from __future__ import annotations

from drex_model.evaluate.prequential import PrequentialSettings, run_stream
from drex_model.evaluate.stream_explanations import DReXStream, explanation_lines
from drex_model.learner import DReXLearner
from drex_model.model import DReXConfig
from drex_model.text import TextEncoder
from drex_model.types import Interaction

WORDS = ["tone", "cheap", "sturdy", "strap", "warm", "value", "tune", "great"]


def _stream() -> list[Interaction]:
    out = []
    for t in range(40):
        text = f"The {WORDS[t % 8]} and {WORDS[(3 * t) % 8]} here" if t % 3 else None
        out.append(Interaction(f"u{t % 5}", f"i{(t * 7) % 4}", float(1 + t % 5), text, float(t)))
    return out


def _learner(encoder: TextEncoder) -> DReXLearner:
    config = DReXConfig.for_variant("drex", dim=8, encoder_dim=encoder.hidden_size, step_size=4)
    return DReXLearner(config, encoder=encoder, seed=0)


def test_each_review_is_explained_from_the_state_before_its_batch(
    tiny_encoder: TextEncoder,
) -> None:
    data = _stream()
    drex = DReXStream(_learner(tiny_encoder))
    run_stream(drex, data, PrequentialSettings(batch_size=10, checkpoint_every=0))
    assert [(x.user, x.item) for x in drex.reviewed] == [(x.user, x.item) for x in data if x.text]
    assert drex.reasons[0].keywords == []  # nothing learned yet: no profile, no words
    # a twin that learned the first three batches only (never the fourth's reviews)
    # explains the fourth batch's pairs the same way
    twin = _learner(tiny_encoder)
    for start in range(0, 30, 10):
        twin.learn_many(data[start : start + 10])
    fourth = [x for x in data[30:] if x.text]
    expected = [twin.explain(x.user, [x.item])[0] for x in fourth]
    assert drex.reasons[-len(fourth) :] == expected
    assert any(r.keywords for r in expected)


def test_metrics_score_the_explanations_against_the_reviews(tiny_encoder: TextEncoder) -> None:
    drex = DReXStream(_learner(tiny_encoder))
    assert drex.metrics() == {}
    run_stream(drex, _stream(), PrequentialSettings(batch_size=10, checkpoint_every=0))
    m = drex.metrics()
    assert m["expl_pairs"] == len(drex.reviewed)
    assert 0 < m["expl_coverage"] < 1  # the first reviews have nothing to draw on
    assert 0 <= m["expl_hit"] <= 1 and 0 <= m["expl_quote_coverage"] <= 1
    lines = explanation_lines({"drex": m, "popularity": {"ndcg@10": 0.1}})
    assert lines[2].startswith("| model | expl_coverage |")
    assert [line.split(" |")[0] for line in lines[4:-1]] == ["| drex"]
    assert explanation_lines({"popularity": {"ndcg@10": 0.1}}) == []
