"""The online DReX learner: predict, then learn, one t-batch at a time.

Update order (leak-free; the same in ``drex evaluate``, ``drex replay`` and the
streaming worker, which all call :meth:`DReXLearner.learn_many`):

1. Each user and item holds a *memory* (its representation after the interactions
   already folded in, detached) and at most one *pending message*: the review and
   rating of its latest interaction, not yet folded in.
2. A batch of interactions is cut, in event-time order, into *chunks* that end where
   the gradient of ``step_size`` rated interactions is complete; each chunk is cut into
   t-batches in which every user and every item appears at most once (JODIE). Shared
   weights move only between chunks (one optimiser step at the end of a full one) and
   the global mean is read once per chunk, so a t-batch that runs a later interaction
   before an earlier one (they share no entity) cannot carry it into the earlier score.
3. For each interaction (u, i) of a t-batch, the pending messages of u and of i are
   folded into their memories with the GRUs (eqs. 4-7) *with gradient*: this is where
   the review head, rating projection, fusion and GRUs get trained, as in temporal graph
   networks (TGN), whose stored messages update memory at the next batch.
4. The rating of (u, i) is predicted from those representations. This is the score
   that evaluation reports: it depends on interactions before (u, i) only, never on
   the rating or review of (u, i) itself.
5. Loss = MSE + lambda/2 (|u|^2 + |i|^2) (eq. 8) over the rated interactions;
   gathered over the chunk's t-batches; at its end (``step_size`` rated
   interactions) backward -> clip -> step -> zero_grad (Adam for the dense network,
   SparseAdam for per-entity parameters), in :meth:`DReXLearner._step`.
6. The new memories are stored (detached) and (u, i)'s own review and rating become the
   pending message of both u and i; the rating sums, the item co-occurrence counts and
   the review content sums (:mod:`drex_model.affinity`) take (u, i) in.

The paper folds an interaction in and then predicts that same interaction's rating from
the updated embeddings, so its loss can read the label from its input (the
``drex-paper`` variant keeps the paper's architecture and loss in this leak-free order).

Notation: B interactions in a t-batch, D embedding size.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from drex_model.affinity import CoOccurrence, activity_weight, recent, review_vector
from drex_model.entities import EntityTable, LookedUp, carry_sparse_state, t_batches
from drex_model.explain import KeywordProfiles, rebuild, review_words
from drex_model.model import DReX, DReXConfig, PreferenceInit
from drex_model.reasons import ExplainWeights, QuoteBook, Vocabulary
from drex_model.scoring import Blend
from drex_model.text import ReviewCache, TextEncoder, preprocess
from drex_model.types import Interaction
from drex_model.views import SIDES, LearnerViews


class DReXLearner(LearnerViews):
    """DReX as an online learner (River style): ``predict_one``, ``learn_one``,
    ``learn_many``, ``rank``. See the module docstring for the update order.

    >>> from drex_model.types import Interaction
    >>> learner = DReXLearner(DReXConfig.for_variant("drex", use_text=False), seed=0)
    >>> scored = learner.learn_many([Interaction("ann", "amp", 5.0, None, 1.0),
    ...                              Interaction("bob", "amp", 4.0, None, 2.0)])
    >>> len(scored), 1.0 <= learner.predict_one("ann", "amp") <= 5.0
    (2, True)
    """

    def __init__(
        self,
        config: DReXConfig,
        encoder: TextEncoder | None = None,
        cache: ReviewCache | None = None,
        seed: int = 0,
        device: str = "cpu",
        n_items_hint: int = 0,
        n_users_hint: int = 0,
    ) -> None:
        if config.use_text and encoder is None and cache is None:
            config = dataclasses.replace(config, use_text=False)
        self.config = config
        self.device = torch.device(device)
        torch.manual_seed(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.encoder = encoder
        self.cache = (
            cache
            if cache is not None
            else (
                ReviewCache(encoder.hidden_size)
                if encoder is not None
                else ReviewCache(config.encoder_dim)
            )
        )
        self.model = DReX(config).to(self.device)
        self.users = EntityTable(config, self.generator, max(n_users_hint, 64)).to(self.device)
        self.items = EntityTable(config, self.generator, max(n_items_hint, 64)).to(self.device)
        self.user_keywords = KeywordProfiles(config.keyword_decay)
        self.item_keywords = KeywordProfiles()
        self.vocabulary = Vocabulary()  # corpus attention and sentiment per word
        self.quotes = QuoteBook()  # recent sentences of each item's positive reviews
        self.track_keywords = True
        self.blend = Blend.from_config(config.to_dict())  # see ranking_scores
        self.explain_weights = ExplainWeights.from_config(config.to_dict())
        self.cooccurrence = CoOccurrence(config.cooccurrence_window)
        self.step = 0
        self._accumulated = 0  # rated interactions in the gradient not yet stepped
        self._loss: torch.Tensor | None = None  # their loss, not yet back-propagated
        self.pref_nets: nn.ModuleDict | None = None
        self._prefs: dict[str, torch.Tensor] = {}
        self._ratings: dict[tuple[str, str], float] = {}  # drex-mlp's preference vectors
        # user -> items it interacted with, first interaction first (an ordered set)
        self._seen: dict[str, dict[str, None]] = {}
        # ids whose state the last learn_many changed, and those with gradient since the
        # last optimiser step (the step moves their learnable rows)
        self.changed: dict[str, set[str]] = {side: set() for side in SIDES}
        self._since_step: dict[str, set[str]] = {side: set() for side in SIDES}
        if config.preference_init:
            self._catalogue = (n_users_hint, n_items_hint)
            if n_users_hint <= 0 or n_items_hint <= 0:
                raise ValueError("drex-mlp needs the catalogue sizes (n_users_hint, n_items_hint)")
            self.pref_nets = nn.ModuleDict(
                {
                    "user": PreferenceInit(n_items_hint, config.dim),
                    "item": PreferenceInit(n_users_hint, config.dim),
                }
            ).to(self.device)
        dense = list(self.model.parameters())
        if self.pref_nets is not None:
            dense += list(self.pref_nets.parameters())
        self.optimizer = torch.optim.Adam(dense, lr=config.lr)
        self.sparse_optimizer = torch.optim.SparseAdam(self._entity_params(), lr=config.lr)

    # ---- state ------------------------------------------------------------------------

    def register(self, side: str, ids: Sequence[str]) -> torch.Tensor:
        """Rows of ``ids``, adding the unknown ones (their initial representation is
        drawn now, in this order: registering a catalogue up front makes runs repeat)."""
        return self._rows(self.table(side), ids)

    def seen_items(self, user: str) -> set[str]:
        """The items ``user`` interacted with (a copy)."""
        return set(self._seen.get(user, ()))

    def seen_in_order(self, user: str) -> list[str]:
        """The items ``user`` interacted with, first interaction first."""
        return list(self._seen.get(user, ()))

    def set_seen_items(self, user: str, items: Iterable[str]) -> None:
        """Set ``user``'s items (in the order of their first interaction)."""
        self._seen[user] = dict.fromkeys(items)

    def discard_partial_step(self) -> None:
        """Forget the gradient gathered towards the next optimiser step (a restored
        learner starts a fresh one)."""
        self._accumulated = 0
        self._loss = None
        self.optimizer.zero_grad(set_to_none=True)
        self.sparse_optimizer.zero_grad(set_to_none=True)

    def _entity_params(self) -> list[nn.Parameter]:
        return [
            self.users.init,
            self.users.bias,
            self.users.static,
            self.items.init,
            self.items.bias,
            self.items.static,
        ]

    def _rows(self, table: EntityTable, ids: Sequence[str]) -> torch.Tensor:
        rows, swapped = table.lookup(ids)
        carry_sparse_state(self.sparse_optimizer, swapped)
        return rows

    def reset_memory(self) -> None:
        """Start a new pass over the data: every representation back to its initial one,
        and the state gathered over the pass (rating sums, co-occurrence, content) empty."""
        self.users.reset_memory()
        self.items.reset_memory()
        self.cooccurrence.reset()
        self._seen.clear()

    def sweep_reviews(self) -> torch.Tensor:
        """Forget the cached reviews that no pending message refers to (they are never
        read again), so that a learner fed for months holds only what it needs.

        Call it between calls of :meth:`learn_many`. Returns the map from old review ids
        to new ones (``-1``: forgotten) for anything else that holds ids.
        """
        if not len(self.cache):
            return torch.zeros(0, dtype=torch.long)
        used = torch.cat([t.pending_review[: len(t)] for t in (self.users, self.items)])
        used = torch.unique(used[used >= 0]).cpu()
        remap = self.cache.retain(used.tolist())
        with torch.no_grad():
            for table in (self.users, self.items):
                old = table.pending_review
                new = remap.to(old.device)[old.clamp(min=0)]
                old.copy_(torch.where(old >= 0, new, old))
        return remap

    def refresh_preferences(self) -> None:
        """DReX-MLP: rebuild preference vectors from the ratings learned so far.

        Called between passes, never inside one, so a pass never sees its own labels.
        """
        if self.pref_nets is None:
            return
        nu, ni = self._catalogue
        rows, cols, vals = [], [], []
        for (u, i), r in self._ratings.items():
            rows.append(self.users.index[u])
            cols.append(self.items.index[i])
            vals.append(r / self.config.rating_levels)
        idx = torch.tensor([rows, cols], dtype=torch.long).reshape(2, -1)
        val = torch.tensor(vals, dtype=torch.float32)
        mat = torch.sparse_coo_tensor(idx, val, (nu, ni), check_invariants=True)
        mat = mat.coalesce().to(self.device)
        self._prefs = {"users": mat, "items": mat.t().coalesce()}

    # ---- the forward pieces -----------------------------------------------------------

    def _initial(self, side: str, table: EntityTable, rows: torch.Tensor) -> torch.Tensor:
        if self.pref_nets is not None and side in self._prefs:
            prefs = self._prefs[side].index_select(0, rows).to_dense()  # (B, N)
            return self.pref_nets[side[:-1]](prefs)
        return table.row("init", rows)

    def _current(
        self,
        side: str,
        table: EntityTable,
        rows: torch.Tensor,
        keywords: KeywordProfiles | None = None,
        vocabulary: Vocabulary | None = None,
    ) -> torch.Tensor:
        """Representations ``(B, D)`` with each row's pending message folded in; the
        folded reviews' words go into ``keywords`` and ``vocabulary`` when given."""
        prev = torch.where(
            table.has_memory[rows, None], table.memory[rows], self._initial(side, table, rows)
        )  # (B, D)
        pend = table.has_pending[rows].nonzero().squeeze(-1)
        if len(pend) == 0:
            return prev
        prow = rows[pend]
        review_ids = table.pending_review[prow]
        rating = table.pending_rating[prow]
        has_text = review_ids >= 0
        tokens = mask = None
        if self.config.use_text and bool(has_text.any()):  # else the review head is skipped
            tokens, mask = self.cache.batch(review_ids.tolist())
            tokens, mask = tokens.to(self.device), mask.to(self.device)
        x, attn = self.model.interaction(
            tokens, mask, has_text.float(), rating.nan_to_num(0.0), (~rating.isnan()).float()
        )  # (P, D), (P, T) or None
        gru = self.model.memory.user if side == "users" else self.model.memory.item
        folded = gru(x, prev[pend])  # (P, D)
        if keywords is not None and attn is not None:
            ratings = rating.tolist()
            for n, (row, j, a) in enumerate(
                zip(prow.tolist(), review_ids.tolist(), attn.detach(), strict=True)
            ):
                if j >= 0:
                    weights = review_words(self.cache.get(j), a, self.config.keyword_attention)
                    keywords.add(table.ids[row], weights)
                    if vocabulary is not None:
                        vocabulary.add(weights, None if math.isnan(ratings[n]) else ratings[n])
        return prev.index_copy(0, pend, folded)

    def _represent(self, table: EntityTable, rows: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if self.config.static_embeddings:
            return h + table.row("static", rows)
        return h

    def _predict_rows(
        self,
        urows: torch.Tensor,
        irows: torch.Tensor,
        hu: torch.Tensor,
        hi: torch.Tensor,
        mean: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, LookedUp]:
        """Predicted ratings ``(B,)``, the MLP's share of them ``(B,)``, and the learnable
        per-entity rows they used (the loss regularises those same rows)."""
        rows = LookedUp(
            self.users.row("bias", urows).squeeze(-1),
            self.items.row("bias", irows).squeeze(-1),
            self.users.row("static", urows) if self.config.static_embeddings else None,
            self.items.row("static", irows) if self.config.static_embeddings else None,
        )
        u = hu if rows.user_static is None else hu + rows.user_static
        i = hi if rows.item_static is None else hi + rows.item_static
        if self.config.running_bias:
            user = self._deviation(self.users, urows, mean)
            item = self._deviation(self.items, irows, mean)
            deviations = torch.stack([user, item], dim=-1)  # (B, 2)
        else:
            deviations = hu.new_zeros(len(urows), 2)
        pred, mlp = self.model.predict(u, i, rows.user_bias, rows.item_bias, deviations)
        return pred + mean, mlp, rows

    def _mean(self) -> torch.Tensor:
        """Mean of the ratings folded in so far this pass (scale midpoint before any).

        The rating head predicts around it: a global offset from state, not from data the
        prediction should not have seen.
        """
        n = self.users.rating_count.sum()
        midpoint = (1.0 + self.config.rating_levels) / 2
        return torch.where(
            n > 0,
            self.users.rating_sum.sum() / n.clamp(min=1.0),
            torch.tensor(midpoint, device=n.device),
        )

    def _deviation(
        self, table: EntityTable, rows: torch.Tensor, mean: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Shrunk mean rating deviation ``(B,)`` of each row, from state.

        sum(r - mean) / (n + k) over the ratings folded in so far this pass: the classic
        baseline estimator, kept as running sums so that it streams.
        """
        mean = self._mean() if mean is None else mean
        n = table.rating_count[rows]
        return (table.rating_sum[rows] - n * mean) / (n + self.config.shrinkage)

    # ---- learning ---------------------------------------------------------------------

    def learn_many(self, interactions: Sequence[Interaction], progress: bool = False) -> np.ndarray:
        """Score each interaction, then learn from it (see the module docstring).

        Returns the prediction scored for each interaction, in input order, clipped to
        the rating scale: each one was computed before that interaction was used.
        """
        self.changed = {side: set() for side in SIDES}
        if not interactions:
            return np.zeros(0)
        self.changed["users"].update(x.user for x in interactions)
        self.changed["items"].update(x.item for x in interactions)
        review_ids = self._review_ids(interactions, progress)
        urows = self._rows(self.users, [x.user for x in interactions])
        irows = self._rows(self.items, [x.item for x in interactions])
        rating = torch.tensor(
            [math.nan if x.rating is None else x.rating for x in interactions],
            dtype=torch.float32,
            device=self.device,
        )
        out = torch.empty(len(interactions))
        chunks = self._chunks([x.rating is not None for x in interactions])
        if progress:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc="learning", unit="chunk", leave=False)
        self.model.train()
        for lo, hi in chunks:
            mean = self._mean()  # the chunk's: its own ratings are not in it
            for b in t_batches(
                urows[lo:hi].tolist(), irows[lo:hi].tolist(), self.config.t_batch_size
            ):
                bt = torch.tensor(b, dtype=torch.long) + lo
                out[bt] = self._learn_batch(
                    urows[bt],
                    irows[bt],
                    rating[bt],
                    review_ids[bt],
                    [interactions[j] for j in bt.tolist()],
                    mean,
                ).cpu()
            if self._accumulated >= self.config.step_size:
                self._step()
        # the partial step's gradient goes into .grad now: a table that grows in the next
        # call swaps its parameters, which the graph of this call still refers to
        self._backward()
        return out.clamp(1.0, float(self.config.rating_levels)).numpy().astype(np.float64)

    def _chunks(self, rated: Sequence[bool]) -> list[tuple[int, int]]:
        """``[lo, hi)`` spans of consecutive interactions, each ending where the gradient
        being gathered reaches ``step_size`` rated interactions (or at the end)."""
        spans, lo, have = [], 0, self._accumulated
        for n, is_rated in enumerate(rated):
            have += int(is_rated)
            if have >= self.config.step_size:
                spans.append((lo, n + 1))
                lo, have = n + 1, 0
        if lo < len(rated):
            spans.append((lo, len(rated)))
        return spans

    def learn_one(
        self,
        user: str,
        item: str,
        rating: float | None = None,
        text: str | None = None,
        timestamp: float = 0.0,
    ) -> float:
        """Score one interaction, then learn from it; returns the score."""
        return float(self.learn_many([Interaction(user, item, rating, text, timestamp)])[0])

    def _review_ids(self, interactions: Sequence[Interaction], progress: bool) -> torch.Tensor:
        ids = torch.full((len(interactions),), -1, dtype=torch.long)
        if not self.config.use_text:
            return ids
        with_text = [j for j, x in enumerate(interactions) if x.text]
        if not with_text:
            return ids.to(self.device)
        texts = [interactions[j].text or "" for j in with_text]
        if self.encoder is not None:  # encodes only the reviews the cache lacks
            found = self.cache.add(self.encoder, texts, progress)
        else:
            cached = [self.cache.lookup(t) for t in texts]
            if any(c is None for c in cached):
                raise RuntimeError("a review is not in the cache and the learner has no encoder")
            found = [int(c) for c in cached if c is not None]
        ids[with_text] = torch.tensor(found, dtype=torch.long)
        return ids.to(self.device)

    def _learn_batch(
        self,
        urows: torch.Tensor,
        irows: torch.Tensor,
        rating: torch.Tensor,
        review_ids: torch.Tensor,
        batch: Sequence[Interaction],
        mean: torch.Tensor,
    ) -> torch.Tensor:
        self._since_step["users"].update(x.user for x in batch)  # gradient until a step
        self._since_step["items"].update(x.item for x in batch)
        uk = self.user_keywords if self.track_keywords else None
        ik = self.item_keywords if self.track_keywords else None
        hu = self._current("users", self.users, urows, uk)  # (B, D) before this interaction
        vocabulary = self.vocabulary if self.track_keywords else None
        hi = self._current("items", self.items, irows, ik, vocabulary)  # (B, D)
        pred, mlp, looked = self._predict_rows(urows, irows, hu, hi, mean)  # (B,) the scores
        rated = ~rating.isnan()
        if bool(rated.all()):
            self._add_loss(pred, rating, hu, hi, mlp, looked)
        elif bool(rated.any()):
            self._add_loss(
                pred[rated],
                rating[rated],
                hu[rated],
                hi[rated],
                mlp[rated],
                looked.select(rated),
            )
        with torch.no_grad():
            rating_or_0 = rating.nan_to_num(0.0)
            rated_f = rated.float()
            for table, rows, h in ((self.users, urows, hu), (self.items, irows, hi)):
                table.memory[rows] = h.detach()
                table.has_memory[rows] = True
                table.pending_review[rows] = review_ids
                table.pending_rating[rows] = rating
                table.has_pending[rows] = True
                table.count[rows] += 1
                table.rating_sum[rows] += rating_or_0
                table.rating_count[rows] += rated_f
            self._add_content(urows, irows, review_ids)
        index, window = self.items.index, self.cooccurrence.window
        activity = self.config.cooccurrence_activity
        for x, item_row in zip(batch, irows.tolist(), strict=True):
            seen = self._seen.setdefault(x.user, {})
            if x.item not in seen:
                weight = activity_weight(len(seen), activity)
                self.cooccurrence.add([index[j] for j in recent(seen, window)], item_row, weight)
                seen[x.item] = None
            if x.rating is not None and self.pref_nets is not None:
                self._ratings[(x.user, x.item)] = x.rating
            if self.track_keywords:
                self._add_quotes(x)
        return pred.detach()

    def _add_quotes(self, x: Interaction) -> None:
        """The sentences of a positive review (rated at least one star below the top)
        become quote candidates of its item."""
        if x.text and x.rating is not None and x.rating >= self.config.rating_levels - 1:
            self.quotes.add(x.item, x.text, x.rating, preprocess)

    def _add_content(
        self, urows: torch.Tensor, irows: torch.Tensor, review_ids: torch.Tensor
    ) -> None:
        """Add each review's unit vector to its user's and its item's content sum."""
        with_text = (review_ids >= 0).nonzero().squeeze(-1)
        if not self.config.use_text or len(with_text) == 0:
            return
        vectors = np.stack(
            [review_vector(self.cache.get(j).tokens) for j in review_ids[with_text].tolist()]
        )
        v = torch.from_numpy(vectors).to(self.device)
        self.users.content.index_add_(0, urows[with_text], v)
        self.items.content.index_add_(0, irows[with_text], v)

    def _add_loss(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        hu: torch.Tensor,
        hi: torch.Tensor,
        mlp: torch.Tensor,
        looked: LookedUp,
    ) -> None:
        """Eq. 8 over a t-batch's rated interactions, added to the loss of the step being
        gathered (:meth:`learn_many` steps at the end of the chunk that completes it).

        The loss is divided by ``step_size``: gradients are summed over t-batches into one
        Adam step, because the late t-batches of a pass hold only the few most active
        users and items, and one full step for each would let them drag the shared
        network about (seen as end-of-pass swings in validation error).
        """
        cfg = self.config
        per_example = (pred - target).pow(2)
        per_example = per_example + cfg.l2 / 2 * (hu.pow(2).sum(-1) + hi.pow(2).sum(-1))
        if cfg.residual_l2:
            per_example = per_example + cfg.residual_l2 * mlp.pow(2)
        if cfg.bias_terms or cfg.static_embeddings:
            penalty = looked.user_bias.pow(2) + looked.item_bias.pow(2)
            if looked.user_static is not None and looked.item_static is not None:
                penalty = penalty + looked.user_static.pow(2).sum(-1)
                penalty = penalty + looked.item_static.pow(2).sum(-1)
            per_example = per_example + cfg.bias_l2 / 2 * penalty
        loss = per_example.sum() / cfg.step_size
        self._loss = loss if self._loss is None else self._loss + loss
        self._accumulated += len(pred)

    def _backward(self) -> None:
        """Back-propagate the loss gathered so far into the gradients (one call for many
        t-batches: their graphs are independent, as memories are stored detached)."""
        if self._loss is not None:
            self._loss.backward()  # type: ignore[no-untyped-call]
            self._loss = None

    def _step(self) -> None:
        """Backward -> clip -> step -> zero_grad, once per ``step_size`` rated
        interactions (Adam for the dense network, SparseAdam for per-entity rows)."""
        self._backward()
        if self.config.grad_clip > 0:
            nn.utils.clip_grad_norm_(
                self.optimizer.param_groups[0]["params"], self.config.grad_clip
            )
        self.optimizer.step()
        self.sparse_optimizer.step()  # type: ignore[no-untyped-call]
        self.optimizer.zero_grad(set_to_none=True)
        self.sparse_optimizer.zero_grad(set_to_none=True)
        self._accumulated = 0
        self.step += 1
        for side in SIDES:  # their learnable rows moved with this step
            self.changed[side] |= self._since_step[side]
            self._since_step[side] = set()

    # ---- prediction -------------------------------------------------------------------

    def rebuild_keywords(self, interactions: Sequence[Interaction], chunk: int = 256) -> None:
        """Keyword profiles, vocabulary and quotes from scratch, under the current model
        (:func:`drex_model.explain.rebuild`; the paper takes them from the final pass)."""
        rebuild(self, interactions, chunk)

    # ---- state export -----------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Tensors only (dense network, entity tables; drex-mlp's preference vectors and
        nets), for in-memory copies such as early stopping's best pass."""
        state: dict[str, Any] = {
            "model": self.model.state_dict(),
            "users": self.users.state_dict(),
            "items": self.items.state_dict(),
            "prefs": dict(self._prefs),
            "cooccurrence": (
                dict(self.cooccurrence.users),
                {i: dict(row) for i, row in self.cooccurrence.pairs.items()},
            ),
            "seen": {u: dict(items) for u, items in self._seen.items()},
        }
        if self.pref_nets is not None:
            state["pref_nets"] = self.pref_nets.state_dict()
        return state

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take :meth:`state_dict`'s output back (same entities, same config)."""
        self.model.load_state_dict(state["model"])
        self.users.load_state_dict(state["users"])
        self.items.load_state_dict(state["items"])
        self._prefs = dict(state.get("prefs", {}))
        if "cooccurrence" in state:
            users, pairs = state["cooccurrence"]
            self.cooccurrence.reset()
            self.cooccurrence.load((i, n, pairs.get(i, {})) for i, n in users.items())
        if "seen" in state:
            self._seen = {u: dict(items) for u, items in state["seen"].items()}
        if self.pref_nets is not None and "pref_nets" in state:
            self.pref_nets.load_state_dict(state["pref_nets"])
