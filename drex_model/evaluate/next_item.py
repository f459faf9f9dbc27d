"""Next-item ranking in a stream, and a streaming ItemKNN to compare drex with.

``drex replay --mode prequential`` asks, before each micro-batch is learned: where does
each interaction's item rank, for its user, among the items known so far that the user
has not interacted with? HR@10 is the share of interactions whose item is in the top 10,
NDCG@10 their mean ``1 / log2(rank + 2)`` (0 below 10). Scores come from the state before
the micro-batch, so nothing of the batch (or after it) is seen; ties rank pessimistically;
an interaction whose user or item is new, or whose item the user had already, is not
ranked (nothing could have predicted it).

:class:`StreamingItemKNN` ranks by item co-occurrence kept as running counts
(:class:`drex_model.affinity.CoOccurrence`, the state drex's ranking keeps too), with
the shrunk-cosine score of :func:`drex_model.scoring.cooccurrence_sparse`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Protocol

import numpy as np

from drex_model.affinity import CoOccurrence, recent
from drex_model.scoring import lookup_sparse
from drex_model.types import Interaction

NEXT_K: Final = 10


class StreamingItemKNN:
    """``itemknn`` in a stream: users who picked both items, counted as they arrive
    (no rating predictions)."""

    predicts_ratings = False

    def __init__(self, shrinkage: float = 50.0) -> None:
        self.shrinkage = shrinkage
        self.co = CoOccurrence()
        self.items: dict[str, int] = {}
        self.seen: dict[str, dict[str, None]] = {}

    def learn(self, batch: Sequence[Interaction]) -> np.ndarray:
        for x in batch:
            row = self.items.setdefault(x.item, len(self.items))
            seen = self.seen.setdefault(x.user, {})
            if x.item not in seen:
                self.co.add([self.items[j] for j in recent(seen, self.co.window)], row)
                seen[x.item] = None
        return np.full(len(batch), np.nan)

    def scores(self, users: Sequence[str], items: Sequence[str]) -> np.ndarray:
        rows = np.array([self.items.get(i, -1) for i in items], dtype=np.int64)
        known = rows >= 0
        out = np.zeros((len(users), len(items)))
        for u, user in enumerate(users):
            seen = self.seen.get(user)
            if seen:
                scored = self.co.scores(
                    [self.items[j] for j in seen], len(self.items), self.shrinkage
                )
                out[u, known] = lookup_sparse(*scored, rows[known])
        return out


class Scorer(Protocol):
    def scores(self, users: Sequence[str], items: Sequence[str]) -> np.ndarray: ...


class NextItemTracker:
    """The catalogue and histories before each micro-batch, and the ranks it scores."""

    def __init__(self) -> None:
        self.items: dict[str, int] = {}  # known item -> column
        self.seen: dict[str, set[str]] = {}
        self.ranks: list[int] = []  # 0-based rank of each ranked interaction's item

    def rank(self, scorer: Scorer, batch: Sequence[Interaction]) -> None:
        """Rank each of ``batch``'s items for its user with ``scorer.scores`` (state
        before the batch), then take the batch into the catalogue and histories."""
        ranked = [
            x
            for x in batch
            if x.user in self.seen and x.item in self.items and x.item not in self.seen[x.user]
        ]
        if ranked:
            users = sorted({x.user for x in ranked})
            catalogue = list(self.items)
            scores = np.asarray(scorer.scores(users, catalogue))
            row = {u: n for n, u in enumerate(users)}
            for x in ranked:
                s = scores[row[x.user]]
                mask = np.ones(len(catalogue), dtype=bool)
                mask[[self.items[i] for i in self.seen[x.user]]] = False
                target = s[self.items[x.item]]
                others = s[mask]
                # pessimistic: every other candidate scoring the same ranks first
                self.ranks.append(int(np.count_nonzero(others >= target)) - 1)
        for x in batch:
            self.items.setdefault(x.item, len(self.items))
            self.seen.setdefault(x.user, set()).add(x.item)


def next_item_metrics(ranks: Sequence[int], k: int = NEXT_K) -> dict[str, float]:
    """HR@k and NDCG@k over the ranked interactions, and how many there were.

    >>> next_item_metrics([0, 1, 20])["hr@10"]
    0.6666666666666666
    """
    r = np.asarray(ranks, dtype=np.float64)
    if r.size == 0:
        return {"next_n": 0.0}
    hit = r < k
    gain = np.where(hit, 1.0 / np.log2(r + 2.0), 0.0)
    return {
        "next_n": float(r.size),
        f"hr@{k}": float(hit.mean()),
        f"next_ndcg@{k}": float(gain.mean()),
    }
