"""What the learner answers without learning: predictions, rankings and views of its
state, as a base class of :class:`drex_model.learner.DReXLearner`.

Nothing here changes state. A prediction for an id the learner has not seen is made
from the expected initial state (zero representation, zero bias, no ratings) and does
not register the id; a view of an unknown id raises ``KeyError``. Pairs are scored,
ranked and explained by :mod:`drex_model.scoring`, the same code the server runs.

Notation: B ids, U users, I items, D embedding size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch

from drex_model.affinity import CoOccurrence
from drex_model.entities import EntityTable
from drex_model.explain import KeywordProfiles
from drex_model.formats import shown_profile
from drex_model.model import DReX, DReXConfig
from drex_model.reasons import ExplainWeights, QuoteBook, Reason, Vocabulary, explain
from drex_model.scoring import HEAD_PARAMETERS, Blend, Head, content_term, lookup_sparse

SIDES = ("users", "items")


class Ranked(NamedTuple):
    """One recommendation: the item, its predicted rating and why."""

    item: str
    rating: float
    reason: Reason


class Snapshot(NamedTuple):
    """What a reader of the learner's state needs of some entities, as of now."""

    vectors: np.ndarray  # (B, D) float32 representations (memory + pending + static)
    learned: list[dict[str, float]]  # keyword profile as learned
    pending: list[dict[str, float]]  # words of the pending review under the current model


class LearnerViews:
    """Predictions and views over the state the learner keeps (see the module doc)."""

    config: DReXConfig
    model: DReX
    device: torch.device
    blend: Blend  # the ranking's weights; drex evaluate may choose them
    explain_weights: ExplainWeights  # the explanation rule's, from the config
    cooccurrence: CoOccurrence
    users: EntityTable
    items: EntityTable
    user_keywords: KeywordProfiles
    item_keywords: KeywordProfiles
    vocabulary: Vocabulary
    quotes: QuoteBook
    _seen: dict[str, dict[str, None]]

    # The learner computes these (drex_model/learner.py): the representation of rows
    # with their pending messages folded in, plus the static embedding, and the mean.
    _current: Callable[..., torch.Tensor]
    _represent: Callable[[EntityTable, torch.Tensor, torch.Tensor], torch.Tensor]
    _mean: Callable[[], torch.Tensor]

    def table(self, side: str) -> EntityTable:
        """The users' or the items' :class:`EntityTable` (``side``: "users" or "items")."""
        if side not in SIDES:
            raise ValueError(f"side must be 'users' or 'items', not {side!r}")
        return self.users if side == "users" else self.items

    def keywords(self, side: str) -> KeywordProfiles:
        """The keyword profiles of a side, as learned (pending reviews not included)."""
        return self.user_keywords if side == "users" else self.item_keywords

    # Predictions answer from the current state and change none of it: an unknown id is
    # scored from the expected initial state (zero representation, zero bias, no ratings)
    # and is not registered. The score itself is drex_model.scoring's, as in serving.

    def predict_many(self, users: Sequence[str], items: Sequence[str]) -> np.ndarray:
        """Predicted ratings (clipped to 1..S) of the pairs ``(users[n], items[n])``."""
        head = self.scoring_head()
        mean = float(self._mean())
        uniq_u, at_u = _unique(users)
        uniq_i, at_i = _unique(items)
        hu, cu, _ = self._projected(head, "users", uniq_u, mean)
        hi, ci, _ = self._projected(head, "items", uniq_i, mean)
        return head.clip(head.score(hu[at_u], cu[at_u], hi[at_i], ci[at_i]))

    def predict_one(self, user: str, item: str) -> float:
        return float(self.predict_many([user], [item])[0])

    def score_matrix(self, users: Sequence[str], items: Sequence[str]) -> np.ndarray:
        """Unclipped predicted ratings ``(U, I)`` of every pair (clipping would tie)."""
        return self._score_matrix(users, items)[0]

    def ranking_scores(self, users: Sequence[str], items: Sequence[str]) -> np.ndarray:
        """Scores ``(U, I)`` that order recommendations: :class:`drex_model.scoring.Blend`
        of the unclipped predicted rating, the item's rating count, the co-occurrence
        with the user's items and the content cosine, weighted by ``blend``."""
        return self.blend.rank(*self.ranking_terms(users, items))

    def ranking_terms(
        self, users: Sequence[str], items: Sequence[str], shrinkage: float | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """The terms :meth:`Blend.rank` weighs: unclipped ratings ``(U, I)``, the items'
        rating counts ``(I,)``, co-occurrence ``(U, I)`` and content cosine ``(U, I)``
        (None where the blend does not use them, unless ``shrinkage`` asks for the
        co-occurrence with that shrinkage: drex evaluate compares blends)."""
        raw, item_ratings = self._score_matrix(users, items)
        cooc = content = None
        if self.blend.cooccurrence or shrinkage is not None:
            k = self.blend.shrinkage if shrinkage is None else shrinkage
            cooc = self._cooccurrence(users, items, k)
        if (self.blend.content or shrinkage is not None) and self.config.use_text:
            content = content_term(self._content("users", users), self._content("items", items))
        return raw, item_ratings, cooc, content

    def _cooccurrence(
        self, users: Sequence[str], items: Sequence[str], shrinkage: float
    ) -> np.ndarray:
        """The co-occurrence term ``(U, I)`` (:meth:`CoOccurrence.scores`; 0 for unknown
        ids)."""
        co, index = self.cooccurrence, self.items.index
        rows, known_items = self.items.find(items)
        cols = np.flatnonzero(known_items.cpu().numpy())
        item_rows = rows.cpu().numpy()[cols]
        out = np.zeros((len(users), len(items)))
        for u, user in enumerate(users):
            seen = self._seen.get(user)
            if seen:
                scored = co.scores([index[j] for j in seen], len(self.items), shrinkage)
                out[u, cols] = lookup_sparse(*scored, item_rows)
        return out

    def _content(self, side: str, ids: Sequence[str]) -> np.ndarray:
        """Content sums ``(B, H)`` of ``ids`` (zeros for unknown ids)."""
        table = self.table(side)
        rows, known = table.find(ids)
        content = table.content[rows] * known[:, None].to(table.content.dtype)
        return content.double().cpu().numpy()

    def rank(
        self, user: str, items: Sequence[str] | None = None, k: int = 10, exclude_seen: bool = True
    ) -> list[Ranked]:
        """Top-k (item, predicted rating, explanation) for ``user``: the list a server of
        this state answers (``tests/functional/test_serving.py`` pins it).

        Explanations (:func:`drex_model.reasons.explain`) draw on the profiles as shown
        (:meth:`keyword_profiles`: the pending review's words included), as the server's
        do."""
        candidates = list(items) if items is not None else list(self.items.ids)
        if exclude_seen:
            seen = self._seen.get(user, {})
            candidates = [i for i in candidates if i not in seen]
        if not candidates:
            return []
        terms = self.ranking_terms([user], candidates)
        raw, ranking = terms[0], self.blend.rank(*terms)[0]
        order = np.argsort(-ranking, kind="stable")[:k].tolist()
        lo, hi = 1.0, float(self.config.rating_levels)
        chosen = [candidates[j] for j in order]
        reasons = self.explain(user, chosen)
        return [
            Ranked(item, float(np.clip(raw[0, j], lo, hi)), reason)
            for item, j, reason in zip(chosen, order, reasons, strict=True)
        ]

    def mean_rating(self) -> float:
        """The global mean rating that scores and explanations read now."""
        return float(self._mean())

    def explain(self, user: str, items: Sequence[str]) -> list[Reason]:
        """Why each of ``items`` would be recommended to ``user`` (the server's rule)."""
        user_profile = self._shown_profiles("users", [user])[0]
        mean = self.mean_rating()
        return [
            explain(
                user_profile,
                profile,
                self.vocabulary,
                mean,
                self.explain_weights,
                self.quotes.get(item),
            )
            for item, profile in zip(items, self._shown_profiles("items", items), strict=True)
        ]

    def _shown_profiles(self, side: str, ids: Sequence[str]) -> list[dict[str, float]]:
        """:meth:`keyword_profiles` of ``ids``, empty for an id the learner does not know."""
        table = self.table(side)
        known = [k for k in ids if k in table.index]
        found = dict(zip(known, self.keyword_profiles(side, known), strict=True))
        return [found.get(k, {}) for k in ids]

    def scoring_head(self) -> Head:
        """The rating head and global terms as :class:`drex_model.scoring.Head` (numpy)."""
        state = self.model.state_dict()
        params = {name: state[name].detach().float().cpu().numpy() for name in HEAD_PARAMETERS}
        return dataclasses.replace(
            Head.from_parameters(params, self.config.to_dict()), blend=self.blend
        )

    def _score_matrix(
        self, users: Sequence[str], items: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        head = self.scoring_head()
        mean = float(self._mean())
        hu, cu, _ = self._projected(head, "users", users, mean)
        hi, ci, item_ratings = self._projected(head, "items", items, mean)
        return head.score_matrix(hu, cu, hi, ci), item_ratings

    def _projected(
        self, head: Head, side: str, ids: Sequence[str], mean: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(first-layer projection ``(B, D)``, score constant ``(B,)``, rating count)."""
        vectors, bias, rating_sum, rating_count = self._terms(side, ids)
        const = head.constants(side, mean, bias, rating_sum, rating_count)
        return head.project(side, vectors), const, rating_count

    @torch.inference_mode()
    def _terms(
        self, side: str, ids: Sequence[str], chunk: int = 512
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Representation ``(B, D)`` float32, bias, rating sum and count of ``ids`` as a
        prediction sees them now (zeros for unknown ids); registers nothing."""
        self.model.eval()
        table = self.table(side)
        rows, known = table.find(ids)
        vectors = np.zeros((len(ids), self.config.dim), dtype=np.float32)
        known_rows = rows[known]
        parts = [
            self._represent(table, r, self._current(side, table, r)).float().cpu().numpy()
            for r in torch.split(known_rows, chunk)
            if len(r)
        ]
        if parts:
            vectors[known.cpu().numpy()] = np.concatenate(parts)
        k = known.to(table.rating_sum.dtype)
        bias = table.bias[rows].squeeze(-1) * k
        return (
            vectors,
            bias.double().cpu().numpy(),
            (table.rating_sum[rows] * k).double().cpu().numpy(),
            (table.rating_count[rows] * k).double().cpu().numpy(),
        )

    # The views below read the state as a prediction would and change none of it.

    def embeddings(self, side: str, ids: Sequence[str]) -> np.ndarray:
        """Representations ``(B, D)`` float32 of known ``ids`` as a prediction sees them
        now: memory with the pending message folded in, plus the static embedding.
        Unknown ids raise ``KeyError``."""
        return self._view(side, ids, with_keywords=False).vectors

    def keyword_profiles(self, side: str, ids: Sequence[str]) -> list[dict[str, float]]:
        """Keyword profile of each known id as shown to people: the learned profile plus
        the pending review's words under the current model (a profile grows when a
        pending message is folded in, at the entity's next interaction; this way an
        entity with a single review has one already). Unknown ids raise ``KeyError``."""
        view = self._view(side, ids, with_keywords=True)
        decay = self.keywords(side).decay
        return [shown_profile(a, b, decay) for a, b in zip(view.learned, view.pending, strict=True)]

    def snapshot(self, side: str, ids: Sequence[str]) -> Snapshot:
        """Representations, learned profiles and pending words of known ``ids`` in one
        pass (what the worker stores after a micro-batch)."""
        return self._view(side, ids, with_keywords=True)

    def load_keywords(self, side: str, profiles: Mapping[str, Mapping[str, float]]) -> None:
        """Restore learned profiles (as :meth:`snapshot` gave them) of a side."""
        stored = self.keywords(side)
        for key, profile in profiles.items():
            stored.set(key, profile)

    @torch.inference_mode()
    def _view(self, side: str, ids: Sequence[str], with_keywords: bool) -> Snapshot:
        table = self.table(side)
        if not ids:
            return Snapshot(np.zeros((0, self.config.dim), dtype=np.float32), [], [])
        unique, order = _unique(ids)  # a pending review counts once per entity
        missing = [k for k in unique if k not in table.index]
        if missing:
            raise KeyError(f"unknown ids: {missing[:5]}")
        rows = torch.tensor([table.index[k] for k in unique], dtype=torch.long)
        rows = rows.to(self.device)
        self.model.eval()
        pending = KeywordProfiles() if with_keywords else None
        h = self._current(side, table, rows, pending)  # (U, D); collects the pending words
        vectors = self._represent(table, rows, h).float().cpu().numpy()
        learned: list[dict[str, float]] = []
        words: list[dict[str, float]] = []
        if pending is not None:
            stored = self.keywords(side)
            learned = [stored.profile(key) for key in unique]
            words = [pending.profile(key) for key in unique]
        if len(unique) == len(ids):
            return Snapshot(vectors, learned, words)
        return Snapshot(
            vectors[order],
            [dict(learned[n]) for n in order.tolist()] if learned else [],
            [dict(words[n]) for n in order.tolist()] if words else [],
        )


def _unique(ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The distinct ids in first-seen order, and each input's position among them."""
    at: dict[str, int] = {}
    pos = np.fromiter((at.setdefault(k, len(at)) for k in ids), dtype=np.int64, count=len(ids))
    return list(at), pos
