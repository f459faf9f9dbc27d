"""The ranking state beside the representations: streamed co-occurrence is batch ItemKNN's,
review content sums are the reviews' unit vectors, and both are learned after the score."""

from __future__ import annotations

import numpy as np
import pytest

from drex_model.affinity import CoOccurrence, review_vector
from drex_model.evaluate.collaborative import ItemKNN
from drex_model.learner import DReXLearner
from drex_model.model import DReXConfig
from drex_model.scoring import Blend, cooccurrence_term
from drex_model.text import TextEncoder
from drex_model.types import Interaction


def picks(n: int = 300, users: int = 30, items: int = 20, seed: int = 0) -> list[Interaction]:
    rng = np.random.default_rng(seed)
    return [
        Interaction(f"u{rng.integers(users)}", f"i{rng.integers(items)}", 4.0, None, float(t))
        for t in range(n)
    ]


def test_streamed_cooccurrence_is_the_batch_gram_matrix() -> None:
    data = picks()
    config = DReXConfig.for_variant("drex", use_text=False, dim=8, cooccurrence_activity=0.0)
    learner = DReXLearner(config, seed=0)
    for s in range(0, len(data), 7):  # micro-batches of any size give the same counts
        learner.learn_many(data[s : s + 7])
    users = sorted({x.user for x in data})
    items = list(learner.items.ids)
    x = np.zeros((len(users), len(items)))
    for p in data:
        x[users.index(p.user), items.index(p.item)] = 1.0
    gram = x.T @ x
    co = learner.cooccurrence
    streamed = np.zeros_like(gram)
    for i in range(len(items)):
        users_i, row = co.row(i)
        streamed[i, i] = users_i
        for j, c in row.items():
            streamed[i, j] = c
    np.testing.assert_array_equal(streamed, gram)


def test_the_cooccurrence_term_ranks_as_itemknn_without_a_neighbour_cut() -> None:
    data = picks(seed=1)
    config = DReXConfig.for_variant("drex", use_text=False, dim=8, cooccurrence_activity=0.0)
    learner = DReXLearner(config, seed=0)
    learner.learn_many(data)
    knn = ItemKNN()
    knn.fit(data, data)
    users, items = sorted({x.user for x in data}), sorted({x.item for x in data})
    knn.weights = knn.weights_for((knn.x.T @ knn.x).toarray(), shrink=10.0, neighbours=len(items))
    expected = knn.score_matrix(users, items)
    expected = expected / expected.max(axis=1, keepdims=True)
    got = learner.ranking_terms(users, items, shrinkage=10.0)[2]
    assert got is not None
    np.testing.assert_allclose(got, expected, atol=1e-9)


def test_a_pair_counts_less_the_more_items_its_user_picked_before() -> None:
    data = picks(seed=2)
    config = DReXConfig.for_variant("drex", use_text=False, dim=8, cooccurrence_activity=0.5)
    learner = DReXLearner(config, seed=0)
    for s in range(0, len(data), 7):
        learner.learn_many(data[s : s + 7])
    expected: dict[tuple[str, str], float] = {}
    history: dict[str, list[str]] = {}
    for x in data:  # a user's new item pairs with each earlier one at (earlier + 1)^-0.5
        earlier = history.setdefault(x.user, [])
        if x.item in earlier:
            continue
        for j in earlier:
            for key in ((x.item, j), (j, x.item)):
                expected[key] = expected.get(key, 0.0) + (len(earlier) + 1) ** -0.5
        earlier.append(x.item)
    ids, co = learner.items.ids, learner.cooccurrence
    got = {(ids[i], ids[j]): c for i, row in co.pairs.items() for j, c in row.items()}
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12)
    users = {x.user for x in data}
    assert sum(co.users.values()) == sum(len(history[u]) for u in users)  # a user counts 1


def test_the_window_bounds_the_pairs_a_pick_forms() -> None:
    co = CoOccurrence(window=2)
    history: list[int] = []
    for item in range(5):
        co.add(history, item)
        history.append(item)
    assert co.pairs[4] == {2: 1.0, 3: 1.0}  # not 0 and 1: out of the window
    assert co.take_changed() == {0, 1, 2, 3, 4} and co.take_changed() == set()
    users, rows, counts = co.row_arrays(4)  # cached, and dropped when the row changes
    assert users == 1.0 and sorted(rows.tolist()) == [2, 3] and counts.tolist() == [1.0, 1.0]
    co.add([4], 5)
    assert sorted(co.row_arrays(4)[1].tolist()) == [2, 3, 5]
    with pytest.raises(ValueError, match="window"):
        CoOccurrence(window=0)


def test_cooccurrence_term_is_zero_without_history_and_at_most_one() -> None:
    assert cooccurrence_term([], np.ones(3), 10.0).tolist() == [0.0, 0.0, 0.0]
    history = [
        (3.0, np.array([0, 2]), np.array([1.0, 3.0])),
        (1.0, np.array([2]), np.array([1.0])),
    ]
    term = cooccurrence_term(history, [2.0, 1.0, 3.0], 1.0)
    assert term.max() == 1.0 and term[1] == 0.0 and 0.0 < term[0] < 1.0


def test_content_sums_are_the_reviews_unit_vectors_and_scores_ignore_them(
    tiny_encoder: TextEncoder,
) -> None:
    config = DReXConfig.for_variant("drex", dim=8, encoder_dim=tiny_encoder.hidden_size)
    data = [
        Interaction("ann", "amp", 5.0, "warm tone", 1.0),
        Interaction("ann", "cab", 4.0, "loud cab", 2.0),
        Interaction("bob", "amp", 2.0, None, 3.0),
    ]
    with_text = DReXLearner(config, encoder=tiny_encoder, seed=0)
    with_text.learn_many(data)
    vectors = [
        review_vector(with_text.cache.reviews[with_text.cache.lookup(t)].tokens)
        for t in ("warm tone", "loud cab")
    ]
    ann = with_text.users.content[with_text.users.index["ann"]].numpy()
    np.testing.assert_allclose(ann, vectors[0] + vectors[1], rtol=1e-6)
    bob = with_text.users.content[with_text.users.index["bob"]].numpy()
    assert not bob.any()
    # the ranking terms never feed the rating: a learner that ranks by rating alone
    # scores the same stream identically
    plain = DReXLearner(
        DReXConfig.for_variant(
            "drex",
            dim=8,
            encoder_dim=tiny_encoder.hidden_size,
            cooccurrence_weight=0.0,
            content_weight=0.0,
        ),
        encoder=tiny_encoder,
        seed=0,
    )
    np.testing.assert_array_equal(
        plain.learn_many(data), DReXLearner(config, encoder=tiny_encoder, seed=0).learn_many(data)
    )


def test_the_blend_weighs_each_term() -> None:
    blend = Blend(rating=0.5, exposure=1.0, cooccurrence=2.0, content=4.0)
    rank = blend.rank(
        np.array([[2.0, 4.0]]),
        np.array([0.0, np.e - 1]),
        np.array([[1.0, 0.0]]),
        np.array([[0.0, 0.25]]),
    )
    np.testing.assert_allclose(rank, [[1.0 + 2.0, 2.0 + 1.0 + 1.0]])
