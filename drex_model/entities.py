"""Per-entity state of the online learner: one :class:`EntityTable` per side.

Each user and item owns a row: learnable parameters (initial representation, bias,
static embedding; sparse gradients, SparseAdam) and state that is not learned (memory,
the pending message, interaction and rating counts). Tables grow as new ids arrive;
:meth:`drex_model.learner.DReXLearner.register` adds ids, predictions never do.

Notation: N rows, B looked-up rows, D embedding size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from drex_model.model import DReXConfig


class LookedUp(NamedTuple):
    """The learnable per-entity rows one t-batch looked up (static: None when unused)."""

    user_bias: torch.Tensor  # (B,)
    item_bias: torch.Tensor  # (B,)
    user_static: torch.Tensor | None  # (B, D)
    item_static: torch.Tensor | None  # (B, D)

    def select(self, keep: torch.Tensor) -> LookedUp:
        """The rows where ``keep`` (a (B,) bool mask) is true."""
        us, is_ = self.user_static, self.item_static
        return LookedUp(
            self.user_bias[keep],
            self.item_bias[keep],
            None if us is None else us[keep],
            None if is_ is None else is_[keep],
        )


class EntityTable(nn.Module):
    """Per-entity state of one side (users or items), growing as new ids arrive.

    Learnable (sparse gradients): initial representation, bias, static embedding.
    Not learnable: memory, whether it is set, the pending message, interaction count,
    rating sums and review content (:mod:`drex_model.affinity`).
    """

    memory: torch.Tensor  # (N, D) representation after the folded interactions
    has_memory: torch.Tensor  # (N,) bool: False -> the initial representation
    pending_review: torch.Tensor  # (N,) review id of the pending message, -1 none
    pending_rating: torch.Tensor  # (N,) rating of the pending message, nan none
    has_pending: torch.Tensor  # (N,) bool
    count: torch.Tensor  # (N,) interactions applied, all passes
    rating_sum: torch.Tensor  # (N,) ratings folded this pass
    rating_count: torch.Tensor  # (N,)
    content: torch.Tensor  # (N, H) sum of unit review vectors this pass (H = 0 without text)

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
        h = config.encoder_dim if config.use_text else 0
        self.register_buffer("content", torch.zeros(0, h))
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
            ("content", 0.0),
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

    def find(self, ids: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of ``ids`` without registering any: ``(B,)`` rows (0 for an unknown id)
        and ``(B,)`` bool, True where the id is known."""
        found = [self.index.get(k, -1) for k in ids]
        rows = torch.tensor(found, dtype=torch.long, device=self.memory.device)
        return rows.clamp(min=0), rows >= 0

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
        self.content.zero_()


def carry_sparse_state(
    optimizer: torch.optim.Optimizer, swapped: dict[str, tuple[Any, Any]]
) -> None:
    """After :meth:`EntityTable.lookup` grew a table: carry the gradient of a partial
    step and SparseAdam's moments over from the old parameters to the grown ones."""
    for old, new in swapped.values():
        if old.grad is not None:
            grad = old.grad.coalesce()
            new.grad = torch.sparse_coo_tensor(
                grad.indices(), grad.values(), new.shape, check_invariants=True
            )
        state = optimizer.state.pop(old, None)
        for group in optimizer.param_groups:
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
            optimizer.state[new] = state


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
