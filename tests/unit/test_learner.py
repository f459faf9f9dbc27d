"""The learner contract, checked for every variant, and the leak-free update order."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from drex_model.learner import DReXLearner, t_batches
from drex_model.model import VARIANTS, DReXConfig
from drex_model.text import EncodedReview, TextEncoder, preprocess
from drex_model.types import Interaction

WORDS = ["tone", "cheap", "sturdy", "strap", "noise", "great", "broke", "tune", "warm", "value"]


def stream(n: int = 60, users: int = 8, items: int = 6, seed: int = 0) -> list[Interaction]:
    rng = np.random.default_rng(seed)
    out = []
    for t in range(n):
        words = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 7))))
        out.append(
            Interaction(
                f"u{rng.integers(users)}",
                f"i{rng.integers(items)}",
                float(rng.integers(1, 6)),
                f"the {words}",
                float(t),
            )
        )
    return out


def make(variant: str, encoder: TextEncoder, seed: int = 0, **overrides: object) -> DReXLearner:
    options: dict[str, Any] = {"step_size": 4, **overrides}
    config = DReXConfig.for_variant(variant, dim=8, encoder_dim=encoder.hidden_size, **options)
    return DReXLearner(config, encoder=encoder, seed=seed, n_users_hint=8, n_items_hint=6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_changing_interaction_n_leaves_its_own_score_unchanged(
    variant: str, tiny_encoder: TextEncoder
) -> None:
    """The pin of the update order: the score for n never sees n's rating or review."""
    data = stream()
    n = 37
    changed = list(data)
    x = data[n]
    changed[n] = dataclasses.replace(
        x, rating=6.0 - (x.rating or 3.0), text="utterly different words"
    )
    a = make(variant, tiny_encoder).learn_many(data)
    b = make(variant, tiny_encoder).learn_many(changed)
    assert np.array_equal(a[: n + 1], b[: n + 1])
    assert not np.array_equal(a[n + 1 :], b[n + 1 :])  # later scores do learn from it


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("micro_batch", [300, 16])
def test_a_score_never_sees_a_later_interaction(variant: str, micro_batch: int) -> None:
    """Test-then-train sees only the past: flipping every rating from index 150 on moves
    no score before it, whether the 300 interactions come in one call or in micro-batches
    (t-batches run later interactions before earlier ones; weights and the global mean
    move only between chunks)."""
    data = [dataclasses.replace(x, text=None) for x in stream(300, users=20, items=15, seed=3)]
    flipped = [
        dataclasses.replace(x, rating=6.0 - (x.rating or 3.0)) if n >= 150 else x
        for n, x in enumerate(data)
    ]

    def scores(interactions: list[Interaction]) -> np.ndarray:
        config = DReXConfig.for_variant(variant, dim=8, use_text=False, step_size=32)
        learner = DReXLearner(config, seed=0, n_users_hint=20, n_items_hint=15)
        return np.concatenate(
            [
                learner.learn_many(interactions[s : s + micro_batch])
                for s in range(0, len(interactions), micro_batch)
            ]
        )

    a, b = scores(data), scores(flipped)
    assert np.array_equal(a[:151], b[:151])
    assert not np.array_equal(a[151:], b[151:])


def test_the_micro_batch_size_does_not_change_what_a_rating_stream_learns() -> None:
    """The worker's micro-batch (DREX_BATCH_SIZE) is a persistence unit, not a model
    setting: optimiser steps come every ``step_size`` ratings whatever the calls, so
    micro-batches of 64 and of 256 (multiples of the step) give the same scores and the
    same state, to the last bit."""
    data = [dataclasses.replace(x, text=None) for x in stream(600, users=40, items=25, seed=5)]

    def run(micro_batch: int) -> tuple[np.ndarray, np.ndarray]:
        config = DReXConfig.for_variant("drex", dim=8, use_text=False, step_size=32)
        learner = DReXLearner(config, seed=0, n_users_hint=40, n_items_hint=25)
        scores = np.concatenate(
            [
                learner.learn_many(data[s : s + micro_batch])
                for s in range(0, len(data), micro_batch)
            ]
        )
        users = sorted({x.user for x in data})
        items = sorted({x.item for x in data})
        return scores, learner.score_matrix(users, items)

    small, large = run(64), run(256)
    assert np.array_equal(small[0], large[0])
    assert np.array_equal(small[1], large[1])
    assert np.array_equal(small[0], run(600)[0])  # one call: the same chunks too
    # micro-batches that cut a step in two read the global mean mid-step: not the same
    assert not np.array_equal(small[0], run(50)[0])


@pytest.mark.parametrize("variant", VARIANTS)
def test_learner_contract(variant: str, tiny_encoder: TextEncoder) -> None:
    learner = make(variant, tiny_encoder)
    data = stream()
    scores = learner.learn_many(data)
    assert scores.shape == (len(data),) and np.all((scores >= 1) & (scores <= 5))
    one = learner.predict_one("u1", "i2")
    assert one == learner.predict_one("u1", "i2")  # prediction learns nothing
    assert 1.0 <= learner.learn_one("u1", "i2", 4.0, "great tone") <= 5.0
    assert 1.0 <= learner.learn_one("u1", "i3", None, "review only, no rating") <= 5.0
    assert 1.0 <= learner.learn_one("u1", "i4", 2.0, None) <= 5.0
    ranked = learner.rank("u1", k=3)
    seen = {x.item for x in data if x.user == "u1"} | {"i2", "i4"}
    assert len(ranked) <= 3 and not seen & {item for item, _, _ in ranked}
    assert all(isinstance(r.reason.keywords, list) for r in ranked)


def test_same_seed_same_scores(tiny_encoder: TextEncoder) -> None:
    data = stream()
    assert np.array_equal(
        make("drex", tiny_encoder).learn_many(data), make("drex", tiny_encoder).learn_many(data)
    )


def test_training_moves_the_review_head_fusion_and_grus(tiny_encoder: TextEncoder) -> None:
    learner = make("drex-paper", tiny_encoder)
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    learner.learn_many(stream())
    after = learner.model.state_dict()
    for name in (
        "review.proj.weight",
        "review.v.weight",
        "rating.proj.weight",
        "fusion.proj.weight",
        "memory.user_gru.weight_ih",
        "memory.item_gru.weight_hh",
        "head.hidden.weight",
    ):
        assert not torch.equal(before[name], after[name]), name


def test_tables_grow_past_their_capacity_and_keep_learning(tiny_encoder: TextEncoder) -> None:
    learner = make("drex", tiny_encoder)
    data = stream(n=400, users=150, items=90)
    learner.learn_many(data)
    assert len(learner.users) == len({x.user for x in data}) > 64
    assert learner.users.init.shape[0] >= len(learner.users)
    assert int(learner.users.count.sum()) == len(data)


@pytest.mark.parametrize("attention", [True, False], ids=["attention", "reviews"])
def test_keyword_profiles_collect_review_words(tiny_encoder: TextEncoder, attention: bool) -> None:
    learner = make("drex", tiny_encoder, keyword_attention=attention)
    data = stream()
    learner.learn_many(data)
    learner.rebuild_keywords(data)
    top = dict(learner.user_keywords.top("u1", k=20))
    assert top and set(top) <= set(WORDS)
    total = sum(learner.user_keywords.profile("u1").values())
    reviews = [set(preprocess(x.text or "")) for x in data if x.user == "u1"]
    if attention:  # attention sums to 1 over each review's words
        assert total == pytest.approx(len(reviews), rel=1e-4)
    else:  # 1 per word a review holds
        assert total == sum(len(words) for words in reviews)


def test_rating_only_learner_needs_no_encoder() -> None:
    learner = DReXLearner(DReXConfig.for_variant("drex", dim=8), seed=0)
    assert not learner.config.use_text
    scores = learner.learn_many([Interaction("a", "b", 5.0, "ignored text", 0.0)])
    assert scores.shape == (1,)


def test_t_batches_hold_each_entity_once_and_keep_its_order() -> None:
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 10, 300).tolist(), rng.integers(0, 7, 300).tolist()
    batches = t_batches(users, items, max_size=5)
    assert sorted(j for b in batches for j in b) == list(range(300))
    position = {j: k for k, b in enumerate(batches) for j in b}
    for b in batches:
        assert len(b) <= 5
        assert len({users[j] for j in b}) == len(b) == len({items[j] for j in b})
    for entity in (users, items):
        for e in set(entity):
            steps = [position[j] for j in range(300) if entity[j] == e]
            assert steps == sorted(steps) and len(set(steps)) == len(steps)


def test_missing_encoder_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextEncoder(str(tmp_path / "nope"))


def test_a_partial_steps_gradient_survives_the_tables_growing(
    tiny_encoder: TextEncoder,
) -> None:
    """Gradients gather over calls until ``step_size`` rated interactions; new ids that
    grow a table in between must not drop what the earlier calls gathered."""
    learner = make("drex", tiny_encoder, step_size=1000)
    learner.learn_many(stream(n=20))
    before = learner.users.init.grad
    assert before is not None and learner.step == 0
    rows = before.coalesce().indices()[0].unique()
    capacity = learner.users.init.shape[0]
    fresh = [Interaction(f"new{n}", "i0", 3.0, None, 100.0 + n) for n in range(capacity)]
    learner.learn_many(fresh)  # registers more users than the table holds: it grows
    after = learner.users.init.grad
    assert learner.users.init.shape[0] > capacity and after is not None
    assert torch.equal(after.to_dense()[rows], before.to_dense()[rows])


def test_steps_without_reviews_leave_the_review_head_alone(tiny_encoder: TextEncoder) -> None:
    """A step whose interactions fold in no review gives the review head no gradient, so
    Adam's momentum from earlier reviews does not keep moving it; the rest learns on."""
    learner = make("drex", tiny_encoder)
    learner.learn_many(stream(n=40))  # with text: the review head learns
    ratings = [
        dataclasses.replace(x, text=None, timestamp=100.0 + n)
        for n, x in enumerate(stream(n=40, seed=1))
    ]
    learner.learn_many(ratings)  # folds in the reviews still pending, then ratings only
    assert learner.users.pending_review.max() < 0 and learner.items.pending_review.max() < 0
    head = [p.detach().clone() for p in learner.model.review.parameters()]
    fusion = learner.model.fusion.proj.weight.detach().clone()
    step = learner.step
    learner.learn_many(ratings)
    assert learner.step > step
    for now, then in zip(learner.model.review.parameters(), head, strict=True):
        assert torch.equal(now, then)
    assert not torch.equal(learner.model.fusion.proj.weight, fusion)


def test_sweeping_reviews_keeps_only_the_pending_ones_and_changes_nothing(
    tiny_encoder: TextEncoder,
) -> None:
    """A long-running learner forgets the reviews no pending message needs; each pending
    message keeps its review, and views and later learning are those of a learner that
    kept every review."""
    data = stream(n=80)
    kept, swept = make("drex", tiny_encoder), make("drex", tiny_encoder)

    def learn(learner: DReXLearner, rows: list[Interaction]) -> np.ndarray:
        torch.manual_seed(1)  # the same dropout draws for both learners
        return learner.learn_many(rows)

    learn(kept, data[:50])
    learn(swept, data[:50])
    before = len(swept.cache)
    swept.sweep_reviews()

    def pending(learner: DReXLearner) -> list[torch.Tensor | None]:
        return [
            None if j < 0 else learner.cache.reviews[j].tokens
            for table in (learner.users, learner.items)
            for j in table.pending_review[: len(table)].tolist()
        ]

    want, got = pending(kept), pending(swept)
    distinct = {id(t) for t in want if t is not None}
    assert len(swept.cache) == len(distinct) < before
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
    users, items = sorted(kept.users.ids), sorted(kept.items.ids)
    assert swept.keyword_profiles("users", users) == kept.keyword_profiles("users", users)
    assert np.array_equal(swept.embeddings("items", items), kept.embeddings("items", items))
    assert np.array_equal(learn(swept, data[50:]), learn(kept, data[50:]))


def test_unloaded_reviews_come_back_from_the_loader_and_change_nothing(
    tiny_encoder: TextEncoder,
) -> None:
    """Past its memory budget the worker's cache drops the oldest pending reviews and
    reads them back from the store when an entity interacts again: learning, views and
    profiles are those of a learner that kept every review in memory."""
    data = stream(n=90)
    kept, bounded = make("drex", tiny_encoder), make("drex", tiny_encoder)
    stored: dict[str, EncodedReview] = {}
    reads: list[str] = []

    def loader(key: str) -> EncodedReview | None:
        reads.append(key)
        return stored.get(key)

    bounded.cache.loader = loader

    def learn(learner: DReXLearner, rows: list[Interaction]) -> np.ndarray:
        torch.manual_seed(1)  # the same dropout draws for both learners
        return learner.learn_many(rows)

    for part in (data[:30], data[30:60], data[60:]):
        want, got = learn(kept, part), learn(bounded, part)
        assert np.array_equal(got, want)
        bounded.sweep_reviews()
        for j in range(len(bounded.cache)):  # the store has every pending review
            stored[bounded.cache.key(j)] = bounded.cache.get(j)
        assert bounded.cache.unload(0) > 0 and bounded.cache.loaded_bytes == 0
    assert reads  # later steps folded reviews read back through the loader
    users, items = sorted(kept.users.ids), sorted(kept.items.ids)
    assert bounded.keyword_profiles("users", users) == kept.keyword_profiles("users", users)
    assert np.array_equal(bounded.embeddings("items", items), kept.embeddings("items", items))


def test_predictions_change_no_state_and_learning_goes_on(tiny_encoder: TextEncoder) -> None:
    """Predicting for unknown ids once registered them under inference mode, so the next
    learn_many failed ('Inplace update to inference tensor outside InferenceMode')."""
    learner = make("drex", tiny_encoder)
    learner.learn_many([Interaction("u0", "i0", 4.0, "the warm tone", 1.0)])
    state = {k: v.clone() for k, v in learner.users.state_dict().items()}
    strangers = [f"new{n}" for n in range(100)]
    scores = learner.predict_many(strangers, ["i0"] * 100)
    assert np.allclose(scores, scores[0])  # every unknown user: the same initial state
    learner.score_matrix(strangers[:3], ["i0", "nope"])
    learner.ranking_scores(["nobody"], ["i0", "nope"])
    assert [item for item, _, _ in learner.rank("nobody", k=3)] == ["i0"]
    assert len(learner.users) == 1 and len(learner.items) == 1
    after = learner.users.state_dict()
    assert all(torch.equal(state[k].nan_to_num(), after[k].nan_to_num()) for k in state)
    learner.learn_many(stream(n=20))  # raised before
    assert len(learner.users) > 1


def test_a_prediction_is_the_score_learning_reports(tiny_encoder: TextEncoder) -> None:
    """The numpy score (drex_model.scoring, which serving uses too) equals the torch score
    that learn_many reports for the same state (no dropout: train and eval agree)."""
    learner = make("drex", tiny_encoder, dropout=0.0, step_size=8)
    learner.learn_many(stream(n=60))
    learner.discard_partial_step()  # no optimiser step inside the batch below
    batch = [Interaction(f"u{n}", f"i{n}", 4.0, "the warm tone", 100.0 + n) for n in range(6)]
    predicted = learner.predict_many([x.user for x in batch], [x.item for x in batch])
    reported = learner.learn_many(batch)  # one t-batch: each user and item once
    np.testing.assert_allclose(predicted, reported, atol=1e-5)
    users, items = ["u0", "u3"], ["i1", "i2", "i5"]
    grid = learner.score_matrix(users, items)
    pairs = learner.predict_many([u for u in users for _ in items], items * len(users))
    np.testing.assert_allclose(np.clip(grid, 1, 5).reshape(-1), pairs, atol=1e-6)


def test_changed_names_the_entities_a_call_or_its_steps_moved(tiny_encoder: TextEncoder) -> None:
    learner = make("drex", tiny_encoder, step_size=1000)
    first = [Interaction("ann", "amp", 5.0, None, 1.0), Interaction("bob", "cab", 4.0, None, 2.0)]
    learner.learn_many(first)
    assert learner.changed == {"users": {"ann", "bob"}, "items": {"amp", "cab"}}
    learner.learn_many([Interaction("cy", "amp", 3.0, None, 3.0)])
    assert learner.changed == {"users": {"cy"}, "items": {"amp"}}  # no step yet
    learner.config = dataclasses.replace(learner.config, step_size=1)
    learner.learn_many([Interaction("dee", "dub", 2.0, None, 4.0)])
    # the step moved the learnable rows of everything with gradient since the last one
    assert learner.changed == {"users": {"ann", "bob", "cy", "dee"}, "items": {"amp", "cab", "dub"}}
