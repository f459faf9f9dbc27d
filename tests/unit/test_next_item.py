"""Next-item ranking in the stream: what is ranked, against what, from which state."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from drex_model.evaluate.next_item import NextItemTracker, StreamingItemKNN, next_item_metrics
from drex_model.evaluate.prequential import (
    DReXStream,
    PrequentialSettings,
    RunningBaseline,
    run_stream,
    summarise,
)
from drex_model.learner import DReXLearner
from drex_model.model import DReXConfig
from drex_model.types import Interaction


class Fixed:
    """Scores items by a fixed table, whoever asks."""

    def __init__(self, table: dict[str, float]) -> None:
        self.table = table

    def scores(self, users: Sequence[str], items: Sequence[str]) -> np.ndarray:
        return np.tile([self.table[i] for i in items], (len(users), 1))


def x(user: str, item: str, t: float) -> Interaction:
    return Interaction(user, item, 5.0, None, t)


def test_ranks_count_the_unseen_known_items_above_and_tied_with_the_pick() -> None:
    tracker = NextItemTracker()
    scorer = Fixed({"a": 3.0, "b": 2.0, "c": 2.0, "d": 1.0})
    tracker.rank(scorer, [x("ann", "a", 0), x("bob", "b", 1), x("bob", "c", 2), x("cy", "d", 3)])
    assert tracker.ranks == []  # every user or item was new: nothing could be ranked
    # ann (has a): c ties with b -> pessimistic rank 1; bob (has b, c): a is first;
    # ann again with a: a repeat is not ranked; eve is new
    tracker.rank(scorer, [x("ann", "c", 4), x("bob", "a", 5), x("ann", "a", 6), x("eve", "a", 7)])
    assert tracker.ranks == [1, 0]
    m = next_item_metrics(tracker.ranks)
    assert m["next_n"] == 2 and m["hr@10"] == 1.0
    assert m["next_ndcg@10"] == pytest.approx((1 / np.log2(3) + 1.0) / 2)


def test_streaming_itemknn_ranks_what_was_picked_together() -> None:
    knn = StreamingItemKNN(shrinkage=0.0)
    knn.learn([x("u1", "amp", 0), x("u1", "cab", 1), x("u2", "amp", 2), x("u2", "cab", 3)])
    knn.learn([x("u3", "pick", 4), x("u4", "amp", 5)])
    scores = knn.scores(["u4", "nobody"], ["cab", "pick", "new"])
    assert scores[0, 0] == 1.0 and scores[0, 1] == 0.0 and not scores[1].any()


def test_next_item_ranks_come_from_the_state_before_the_batch() -> None:
    rng = np.random.default_rng(0)
    stream = [
        Interaction(
            f"u{rng.integers(15)}", f"i{rng.integers(12)}", float(rng.integers(1, 6)), None, t
        )
        for t in range(240)
    ]
    later = [
        Interaction(
            s.user, f"i{(int(s.item[1:]) + 5) % 12}", 6.0 - (s.rating or 3.0), None, s.timestamp
        )
        if n >= 160
        else s
        for n, s in enumerate(stream)
    ]
    settings = PrequentialSettings(batch_size=40, checkpoint_every=0)

    def ranks(data: list[Interaction]) -> list[int]:
        config = DReXConfig.for_variant("drex", dim=8, use_text=False, step_size=16)
        return run_stream(DReXStream(DReXLearner(config, seed=0)), data, settings).next_ranks

    a, b = ranks(stream), ranks(later)
    counter = NextItemTracker()  # how many interactions of the first 160 are ranked
    for start in range(0, 160, 40):
        counter.rank(Fixed({f"i{j}": 0.0 for j in range(12)}), stream[start : start + 40])
    first = len(counter.ranks)
    assert 0 < first < len(a)
    assert a[:first] == b[:first]  # the changed interactions come in later batches
    assert a[first:] != b[first:]
    for model in (RunningBaseline("popularity"), StreamingItemKNN()):
        metrics, _ = summarise(run_stream(model, stream, settings), stream, settings, [], (10,))
        assert metrics["next_n"] > 0 and 0.0 <= metrics["hr@10"] <= 1.0
