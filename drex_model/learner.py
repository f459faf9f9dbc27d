"""The online DReX learner: predict, then learn, one t-batch at a time.

Update order (leak-free; the same in ``drex evaluate``, ``drex replay`` and the
streaming worker, which all call :meth:`DReXLearner.learn_many`):

1. Each user and item holds a *memory* (its representation after the interactions
   already folded in, detached) and at most one *pending message*: the review and
   rating of its latest interaction, not yet folded in.
2. A batch of interactions is cut into t-batches in which every user and every item
   appears at most once (JODIE), kept in event-time order.
3. For each interaction (u, i) of a t-batch, the pending messages of u and of i are
   folded into their memories with the GRUs (eqs. 4-7) *with gradient*: this is where
   the review head, rating projection, fusion and GRUs get trained, as in temporal graph
   networks (TGN), whose stored messages update memory at the next batch.
4. The rating of (u, i) is predicted from those representations. This is the score
   that evaluation reports: it depends on interactions before (u, i) only, never on
   the rating or review of (u, i) itself.
5. Loss = MSE + lambda/2 (|u|^2 + |i|^2) (eq. 8) over the rated interactions;
   gathered over t-batches until ``step_size`` rated interactions, then backward ->
   clip -> step -> zero_grad (Adam for the dense network, SparseAdam for per-entity
   parameters), in :meth:`DReXLearner._step`.
6. The new memories are stored (detached) and (u, i)'s own review and rating become the
   pending message of both u and i.

The paper folds an interaction in and then predicts that same interaction's rating from
the updated embeddings, so its loss can read the label from its input (the
``drex-paper`` variant keeps the paper's architecture and loss in this leak-free order).

Notation: B interactions in a t-batch, D embedding size.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from drex_model.explain import KeywordProfiles, explain, word_weights
from drex_model.model import DReX, DReXConfig, PreferenceInit
from drex_model.text import ReviewCache, TextEncoder
from drex_model.types import Interaction


class _Rows(NamedTuple):
    """The learnable per-entity rows one t-batch looked up (static: None when unused)."""

    user_bias: torch.Tensor  # (B,)
    item_bias: torch.Tensor  # (B,)
    user_static: torch.Tensor | None  # (B, D)
    item_static: torch.Tensor | None  # (B, D)

    def select(self, keep: torch.Tensor) -> _Rows:
        """The rows where ``keep`` (a (B,) bool mask) is true."""
        us, is_ = self.user_static, self.item_static
        return _Rows(
            self.user_bias[keep],
            self.item_bias[keep],
            None if us is None else us[keep],
            None if is_ is None else is_[keep],
        )


class EntityTable(nn.Module):
    """Per-entity state of one side (users or items), growing as new ids arrive.

    Learnable (sparse gradients): initial representation, bias, static embedding.
    Not learnable: memory, whether it is set, the pending message, interaction count.
    """

    memory: torch.Tensor  # (N, D) representation after the folded interactions
    has_memory: torch.Tensor  # (N,) bool: False -> the initial representation
    pending_review: torch.Tensor  # (N,) review id of the pending message, -1 none
    pending_rating: torch.Tensor  # (N,) rating of the pending message, nan none
    has_pending: torch.Tensor  # (N,) bool
    count: torch.Tensor  # (N,) interactions applied, all passes
    rating_sum: torch.Tensor  # (N,) ratings folded this pass
    rating_count: torch.Tensor  # (N,)

    def __init__(self, config: DReXConfig, generator: torch.Generator, capacity: int = 64) -> None:
        super().__init__()
        self.config = config
        self.generator = generator
        self.index: dict[str, int] = {}
        self.ids: list[str] = []
        d = config.dim
        self.init = nn.Parameter(torch.zeros(0, d))
        self.bias = nn.Parameter(torch.zeros(0, 1))
        self.static = nn.Parameter(torch.zeros(0, d))
        self.register_buffer("memory", torch.zeros(0, d))
        self.register_buffer("has_memory", torch.zeros(0, dtype=torch.bool))
        self.register_buffer("pending_review", torch.zeros(0, dtype=torch.long))  # -1: none
        self.register_buffer("pending_rating", torch.zeros(0))  # nan: none
        self.register_buffer("has_pending", torch.zeros(0, dtype=torch.bool))
        self.register_buffer("count", torch.zeros(0, dtype=torch.long))
        self.register_buffer("rating_sum", torch.zeros(0))  # ratings of this pass
        self.register_buffer("rating_count", torch.zeros(0))
        self._grow(capacity)

    def __len__(self) -> int:
        return len(self.ids)

    def _grow(self, capacity: int) -> dict[str, tuple[nn.Parameter, nn.Parameter]]:
        """Enlarge every row tensor to ``capacity``; returns {name: (old, new)} params."""
        old_n = self.init.shape[0]
        extra = capacity - old_n
        d = self.config.dim
        fresh = torch.randn(extra, d, generator=self.generator) * self.config.init_std
        swapped = {}
        for name, tail in (
            ("init", fresh),
            ("bias", torch.zeros(extra, 1)),
            ("static", torch.zeros(extra, d)),
        ):
            old = getattr(self, name)
            new = nn.Parameter(torch.cat([old.detach(), tail.to(old.device)]))
            setattr(self, name, new)
            swapped[name] = (old, new)
        for name, fill in (
            ("memory", 0.0),
            ("has_memory", False),
            ("pending_review", -1),
            ("pending_rating", math.nan),
            ("has_pending", False),
            ("count", 0),
            ("rating_sum", 0.0),
            ("rating_count", 0.0),
        ):
            buf = getattr(self, name)
            tail = torch.full((extra, *buf.shape[1:]), fill, dtype=buf.dtype, device=buf.device)
            setattr(self, name, torch.cat([buf, tail]))
        return swapped

    def lookup(self, ids: Sequence[str]) -> tuple[torch.Tensor, dict[str, tuple[Any, Any]]]:
        """Row indices for ``ids``, registering unseen ones (may grow the table)."""
        for key in ids:
            if key not in self.index:
                self.index[key] = len(self.ids)
                self.ids.append(key)
        swapped: dict[str, tuple[Any, Any]] = {}
        if len(self.ids) > self.init.shape[0]:
            swapped = self._grow(max(len(self.ids), 2 * self.init.shape[0]))
        rows = torch.tensor([self.index[k] for k in ids], dtype=torch.long)
        return rows.to(self.memory.device), swapped

    def row(self, name: str, rows: torch.Tensor) -> torch.Tensor:
        """Rows of a learnable per-entity parameter, with a sparse gradient (SparseAdam)."""
        weight = getattr(self, name)
        return nn.functional.embedding(rows, weight, sparse=True)

    def reset_memory(self) -> None:
        """Back to the initial representations (the start of a training pass)."""
        self.has_memory.zero_()
        self.has_pending.zero_()
        self.pending_review.fill_(-1)
        self.pending_rating.fill_(math.nan)
        self.rating_sum.zero_()
        self.rating_count.zero_()


class DReXLearner:
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
        self.user_keywords = KeywordProfiles()
        self.item_keywords = KeywordProfiles()
        self.track_keywords = True
        self.exposure_weight = max(config.exposure_weight, 0.0)  # see ranking_scores
        self.step = 0
        self._accumulated = 0  # rated interactions in the gradient not yet stepped
        self._loss: torch.Tensor | None = None  # their loss, not yet back-propagated
        self.pref_nets: nn.ModuleDict | None = None
        self._prefs: dict[str, torch.Tensor] = {}
        self._ratings: dict[tuple[str, str], float] = {}  # drex-mlp's preference vectors
        self._seen: dict[str, set[str]] = {}  # user -> items it interacted with
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
        for old, new in swapped.values():  # carry the gradient of a partial step and
            # SparseAdam's moments over to the grown rows
            if old.grad is not None:
                grad = old.grad.coalesce()
                new.grad = torch.sparse_coo_tensor(
                    grad.indices(), grad.values(), new.shape, check_invariants=True
                )
            state = self.sparse_optimizer.state.pop(old, None)
            for group in self.sparse_optimizer.param_groups:
                group["params"] = [new if p is old else p for p in group["params"]]
            if state:
                for key, val in state.items():
                    if torch.is_tensor(val) and val.shape[:1] == old.shape[:1]:
                        pad = torch.zeros(
                            (new.shape[0] - old.shape[0], *val.shape[1:]),
                            dtype=val.dtype,
                            device=val.device,
                        )
                        state[key] = torch.cat([val, pad])
                self.sparse_optimizer.state[new] = state
        return rows

    def reset_memory(self) -> None:
        """Start a new pass over the data: every representation back to its initial one."""
        self.users.reset_memory()
        self.items.reset_memory()

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
    ) -> torch.Tensor:
        """Representations ``(B, D)`` with each row's pending message folded in."""
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
            for row, j, a in zip(prow.tolist(), review_ids.tolist(), attn.detach(), strict=True):
                if j >= 0:
                    keywords.add(table.ids[row], word_weights(self.cache.reviews[j], a))
        return prev.index_copy(0, pend, folded)

    def _represent(self, table: EntityTable, rows: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if self.config.static_embeddings:
            return h + table.row("static", rows)
        return h

    def _predict_rows(
        self, urows: torch.Tensor, irows: torch.Tensor, hu: torch.Tensor, hi: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, _Rows]:
        """Predicted ratings ``(B,)``, the MLP's share of them ``(B,)``, and the learnable
        per-entity rows they used (the loss regularises those same rows)."""
        rows = _Rows(
            self.users.row("bias", urows).squeeze(-1),
            self.items.row("bias", irows).squeeze(-1),
            self.users.row("static", urows) if self.config.static_embeddings else None,
            self.items.row("static", irows) if self.config.static_embeddings else None,
        )
        u = hu if rows.user_static is None else hu + rows.user_static
        i = hi if rows.item_static is None else hi + rows.item_static
        mean = self._mean()
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
        if not interactions:
            return np.zeros(0)
        review_ids = self._review_ids(interactions, progress)
        urows = self._rows(self.users, [x.user for x in interactions])
        irows = self._rows(self.items, [x.item for x in interactions])
        rating = torch.tensor(
            [math.nan if x.rating is None else x.rating for x in interactions],
            dtype=torch.float32,
            device=self.device,
        )
        out = torch.empty(len(interactions))
        batches = t_batches(urows.tolist(), irows.tolist(), self.config.batch_size)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="learning", unit="t-batch", leave=False)
        self.model.train()
        for b in batches:
            bt = torch.tensor(b, dtype=torch.long)
            out[bt] = self._learn_batch(
                urows[bt], irows[bt], rating[bt], review_ids[bt], [interactions[j] for j in b]
            ).cpu()
        # the partial step's gradient goes into .grad now: a table that grows in the next
        # call swaps its parameters, which the graph of this call still refers to
        self._backward()
        lo, hi = 1.0, float(self.config.rating_levels)
        return out.clamp(lo, hi).numpy().astype(np.float64)

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
    ) -> torch.Tensor:
        uk = self.user_keywords if self.track_keywords else None
        ik = self.item_keywords if self.track_keywords else None
        hu = self._current("users", self.users, urows, uk)  # (B, D) before this interaction
        hi = self._current("items", self.items, irows, ik)  # (B, D)
        pred, mlp, looked = self._predict_rows(urows, irows, hu, hi)  # (B,) the scores
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
        for x in batch:
            self._seen.setdefault(x.user, set()).add(x.item)
            if x.rating is not None and self.pref_nets is not None:
                self._ratings[(x.user, x.item)] = x.rating
        return pred.detach()

    def _add_loss(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        hu: torch.Tensor,
        hi: torch.Tensor,
        mlp: torch.Tensor,
        looked: _Rows,
    ) -> None:
        """Eq. 8 over a t-batch's rated interactions, added to the loss of the step being
        gathered; at ``step_size`` rated interactions, :meth:`_step`.

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
        if self._accumulated >= cfg.step_size:
            self._step()

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

    # ---- prediction -------------------------------------------------------------------

    @torch.inference_mode()
    def predict_many(self, users: Sequence[str], items: Sequence[str]) -> np.ndarray:
        """Predicted ratings (clipped to 1..S) from the current state; learns nothing.

        Unknown users or items get their initial representation and zero bias.
        """
        self.model.eval()
        urows = self._rows(self.users, users)
        irows = self._rows(self.items, items)
        hu = self._current("users", self.users, urows)
        hi = self._current("items", self.items, irows)
        pred, _, _ = self._predict_rows(urows, irows, hu, hi)
        return pred.clamp(1.0, float(self.config.rating_levels)).cpu().numpy().astype(np.float64)

    def predict_one(self, user: str, item: str) -> float:
        return float(self.predict_many([user], [item])[0])

    @torch.inference_mode()
    def score_matrix(self, users: Sequence[str], items: Sequence[str]) -> np.ndarray:
        """Unclipped scores ``(U, I)`` for every pair, for ranking (clipping would tie)."""
        self.model.eval()
        urows = self._rows(self.users, users)
        irows = self._rows(self.items, items)
        out = []
        mean = self._mean()
        i = self._represent(self.items, irows, self._current("items", self.items, irows))
        if self.config.running_bias:
            w = self.model.deviation_weight
            item_deviation = w[1] * self._deviation(self.items, irows, mean)[None, :]  # (1, I)
        for s in range(0, len(urows), 512):
            ur = urows[s : s + 512]
            u = self._represent(self.users, ur, self._current("users", self.users, ur))
            scores = self.model.head.score_all(u, i) + mean  # (U, I)
            if self.config.bias_terms:
                scores = scores + self.users.bias[ur] + self.items.bias[irows].T
            if self.config.running_bias:
                scores = scores + w[0] * self._deviation(self.users, ur, mean)[:, None]
                scores = scores + item_deviation
            out.append(scores)
        return torch.cat(out).cpu().numpy().astype(np.float64)

    def ranking_scores(self, users: Sequence[str], items: Sequence[str]) -> np.ndarray:
        """Scores ``(U, I)`` that order recommendations: predicted rating plus
        ``exposure_weight * log(1 + ratings of the item so far)``.

        A rating model says how much a user would like an item, not whether they would
        ever pick it; the item's interaction count (state, not future data) is the
        simplest prior for the latter. ``exposure_weight`` 0 ranks by rating alone.
        """
        scores = self.score_matrix(users, items)
        if self.exposure_weight:
            with torch.inference_mode():
                counts = self.items.rating_count[self._rows(self.items, items)]
            scores = scores + self.exposure_weight * np.log1p(counts.cpu().numpy())[None, :]
        return scores

    def rank(
        self, user: str, items: Sequence[str] | None = None, k: int = 10, exclude_seen: bool = True
    ) -> list[tuple[str, float, list[str]]]:
        """Top-k (item, predicted rating, keyword explanation) for ``user``."""
        candidates = list(items) if items is not None else list(self.items.ids)
        if exclude_seen:
            seen = self._seen.get(user, set())
            candidates = [i for i in candidates if i not in seen]
        if not candidates:
            return []
        order = np.argsort(-self.ranking_scores([user], candidates)[0], kind="stable")[:k]
        scores = self.score_matrix([user], [candidates[j] for j in order])[0]
        lo, hi = 1.0, float(self.config.rating_levels)
        return [
            (
                candidates[j],
                float(np.clip(scores[n], lo, hi)),
                explain(self.user_keywords, self.item_keywords, user, candidates[j]),
            )
            for n, j in enumerate(order)
        ]

    @torch.inference_mode()
    def rebuild_keywords(self, interactions: Sequence[Interaction], chunk: int = 256) -> None:
        """Keyword profiles from scratch: each review's attention under the current model,
        summed per word into its user's and its item's profile (the paper takes them from
        the final pass of training)."""
        self.user_keywords.clear()
        self.item_keywords.clear()
        if not self.config.use_text:
            return
        self.model.eval()
        review_ids = self._review_ids(interactions, progress=False).tolist()
        for s in range(0, len(interactions), chunk):
            ids = review_ids[s : s + chunk]
            tokens, mask = self.cache.batch(ids)
            _, attn = self.model.review(tokens.to(self.device), mask.to(self.device))
            for x, j, a in zip(interactions[s : s + chunk], ids, attn, strict=True):
                if j >= 0:
                    weights = word_weights(self.cache.reviews[j], a)
                    self.user_keywords.add(x.user, weights)
                    self.item_keywords.add(x.item, weights)

    # ---- introspection ----------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Tensors only (dense network, entity tables, optimisers), for safe checkpoints."""
        return {
            "model": self.model.state_dict(),
            "users": self.users.state_dict(),
            "items": self.items.state_dict(),
        }

    # ---- read-only views for the streaming worker (streams/) ----------------------------
    # Added for serving embeddings and keyword profiles from a live learner; they change
    # no state except the model's train/eval mode (as predict_many does).

    def embeddings(self, side: str, ids: Sequence[str]) -> np.ndarray:
        """Representations ``(B, D)`` float32 of known ``ids`` as a prediction would see
        them now: memory with the pending message folded in, plus the static embedding.

        ``side`` is "users" or "items". Unknown ids raise ``KeyError`` (nothing is
        registered, unlike :meth:`predict_many`).
        """
        return self._view(side, ids, with_keywords=False)[0]

    def keyword_profiles(self, side: str, ids: Sequence[str]) -> list[dict[str, float]]:
        """Keyword profile of each known id, including its pending review's words.

        The stored profiles grow when a pending message is folded in, i.e. at the entity's
        next interaction; this view adds the pending review under the current model, so an
        entity with a single review already has a profile. Unknown ids raise ``KeyError``.
        """
        return self._view(side, ids, with_keywords=True)[1]

    def snapshot(self, side: str, ids: Sequence[str]) -> tuple[np.ndarray, list[dict[str, float]]]:
        """:meth:`embeddings` and :meth:`keyword_profiles` of ``ids`` from one pass that
        folds each pending review in once (what the worker stores after a micro-batch)."""
        return self._view(side, ids, with_keywords=True)

    @torch.inference_mode()
    def restore_keywords(
        self, side: str, profiles: Mapping[str, Mapping[str, float]], chunk: int = 512
    ) -> None:
        """Take in profiles as :meth:`keyword_profiles` gave them (pending reviews
        included, as the worker's store keeps them for serving): each pending review's
        words are taken out again, because they are added when that message is folded
        in. Call it once the rows and the dense state are restored (the same model
        computes the same weights); a word left with ~0 weight came from the pending
        review alone and is dropped."""
        table = self._side(side)
        stored = self.user_keywords if side == "users" else self.item_keywords
        ids = [k for k in profiles if k in table.index]
        pending = KeywordProfiles()
        self.model.eval()
        for s in range(0, len(ids), chunk):
            self._current(side, table, self._known_rows(table, ids[s : s + chunk]), pending)
        for key, profile in profiles.items():
            minus = pending.profile(key)
            rest = {w: v - minus.get(w, 0.0) for w, v in profile.items()}
            stored.add(key, {w: v for w, v in rest.items() if v > 1e-6 * max(1.0, profile[w])})

    @torch.inference_mode()
    def _view(
        self, side: str, ids: Sequence[str], with_keywords: bool
    ) -> tuple[np.ndarray, list[dict[str, float]]]:
        table = self._side(side)
        if not ids:
            return np.zeros((0, self.config.dim), dtype=np.float32), []
        unique = list(dict.fromkeys(ids))  # a pending review counts once per entity
        rows = self._known_rows(table, unique)
        self.model.eval()
        pending = KeywordProfiles() if with_keywords else None
        h = self._current(side, table, rows, pending)  # (U, D); adds the pending words
        vectors = self._represent(table, rows, h).float().cpu().numpy()
        profiles: list[dict[str, float]] = []
        if pending is not None:
            stored = self.user_keywords if side == "users" else self.item_keywords
            for key in unique:
                pending.add(key, stored.profile(key))
            profiles = [pending.profile(key) for key in unique]
        if len(unique) == len(ids):
            return vectors, profiles
        at = {key: n for n, key in enumerate(unique)}
        order = [at[key] for key in ids]
        return vectors[order], [dict(profiles[n]) for n in order] if profiles else []

    def _side(self, side: str) -> EntityTable:
        if side not in ("users", "items"):
            raise ValueError(f"side must be 'users' or 'items', not {side!r}")
        return self.users if side == "users" else self.items

    def _known_rows(self, table: EntityTable, ids: Sequence[str]) -> torch.Tensor:
        missing = [k for k in ids if k not in table.index]
        if missing:
            raise KeyError(f"unknown ids: {missing[:5]}")
        return torch.tensor([table.index[k] for k in ids], dtype=torch.long, device=self.device)


def t_batches(users: Sequence[int], items: Sequence[int], max_size: int) -> list[list[int]]:
    """Cut an event-ordered sequence into batches where each user and item appears once.

    Interaction n goes to the batch after the last one holding its user or its item, so
    every entity's interactions stay in order across batches (JODIE's t-batch).

    >>> t_batches([0, 0, 1, 2], [5, 6, 5, 7], max_size=10)
    [[0, 3], [1, 2]]
    """
    last_u: dict[int, int] = {}
    last_i: dict[int, int] = {}
    batches: list[list[int]] = []
    for n, (u, i) in enumerate(zip(users, items, strict=True)):
        b = max(last_u.get(u, -1), last_i.get(i, -1)) + 1
        while b < len(batches) and len(batches[b]) >= max_size:
            b += 1
        if b == len(batches):
            batches.append([])
        batches[b].append(n)
        last_u[u] = last_i[i] = b
    return batches
