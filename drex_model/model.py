"""The DReX network (paper sections 3.2-3.5), one stage per module, in data-flow order.

    review tokens --ReviewEncoder--> t, attention     (3.2.1, eqs. 2-3)
    rating        --RatingEncoder--> r                (3.2.2)
    [t; r]        --Fusion---------> x                (3.3; a missing modality is zeros)
    (u, x), (i, x)--MemoryUpdate---> u', i'           (3.4, eqs. 4-7; one GRU each)
    [u; i]        --RatingHead-----> rating           (3.5)

The per-user and per-item state (the "unified global representations") lives outside
this module, in the learner: this file holds the dense, shared parameters only.

Notation: B batch, T word-piece tokens, H encoder hidden size (b in the paper),
D embedding size (d), S rating levels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, get_type_hints

import torch
from torch import nn

VARIANTS = ("drex", "drex-paper", "drex-mlp")


@dataclass(frozen=True)
class DReXConfig:
    """Every knob of the model and its training; saved with each checkpoint."""

    variant: str = "drex"  # one of VARIANTS; see ``for_variant``
    dim: int = 64  # D: embedding size d (the paper fixes 64)
    encoder_dim: int = 384  # H: hidden size b of the frozen encoder (384 MiniLM, 768 BERT)
    rating_levels: int = 5  # S: ratings are 1..S
    lr: float = 1e-3  # Adam learning rate (alpha)
    l2: float = 1e-3  # lambda of eq. 8 on the user and item representations
    t_batch_size: int = 1024  # most interactions in a t-batch (each user/item once in it)
    step_size: int = 256  # rated interactions whose gradients make one optimiser step
    init_std: float = 0.1  # std of the random initial user/item embeddings
    use_text: bool = True  # feed reviews to the fusion (False: rating modality only)
    # Changes over the paper, on in the default variant "drex" and ablated in docs/results.md:
    bias_terms: bool = False  # global offset + learnable user/item biases added to the MLP
    static_embeddings: bool = False  # learnable per-entity vector added to the GRU state
    running_bias: bool = False  # add shrunk mean rating deviations of user and item (state)
    shrinkage: float = 5.0  # pseudo-count k of those means: sum(r - mean) / (n + k)
    # Ranking (drex_model.scoring.Blend; drex evaluate chooses these on validation):
    # rating_weight * predicted rating + exposure_weight * log(1 + item ratings)
    # + cooccurrence_weight * item co-occurrence + content_weight * review-content cosine.
    # The paper ranks by rating alone (weights 1, 0, 0, 0).
    rating_weight: float = 1.0
    exposure_weight: float = 0.0  # -1: choose on validation, as 0 elsewhere (older configs)
    cooccurrence_weight: float = 0.0
    cooccurrence_shrinkage: float = 50.0  # k of co(i, j) / (sqrt(n_i n_j) + k)
    cooccurrence_window: int = 200  # a user's recent distinct items a new one pairs with
    # a pair counts (items the user picked before + 1) ** -this (0: every pair 1, ItemKNN)
    cooccurrence_activity: float = 0.0
    content_weight: float = 0.0
    residual_l2: float = 0.0  # L2 on the MLP's output: a correction over the bias terms
    bias_l2: float = 1e-2  # L2 on the bias terms and static embeddings (per example)
    dropout: float = 0.0  # dropout on the head's input
    grad_clip: float = 1.0  # max gradient norm (0: off)
    # DReX-MLP (section 4): initial states from preference vectors via one-hidden-layer MLPs
    preference_init: bool = False
    # Explanations (drex_model.reasons): a review adds each word's attention to its
    # user's and item's keyword profiles (the paper), or, with keyword_attention off, 1
    # per word it holds (a profile counts the reviews that hold each word); a user's
    # profile decays by keyword_decay at each new review; a keyword scores
    # log p_item + user_weight log p_user - corpus_weight log p.
    keyword_attention: bool = True
    keyword_decay: float = 1.0
    explain_user_weight: float = 1.0
    explain_corpus_weight: float = 0.25
    explain_smoothing: float = 2.0

    @classmethod
    def for_variant(cls, variant: str, **overrides: Any) -> DReXConfig:
        """The named variant's settings, then ``overrides``."""
        if variant == "drex-paper":
            base = cls(variant=variant)
        elif variant == "drex-mlp":
            base = cls(variant=variant, preference_init=True)
        elif variant == "drex":
            base = cls(
                variant=variant,
                running_bias=True,
                static_embeddings=True,
                dropout=0.1,
                lr=3e-3,
                bias_l2=0.05,
                # a personal ranking (issue 16, docs/results.md): drex evaluate chooses
                # these on validation; the worker and the server use these values, the
                # median of the choices on three datasets x three seeds
                rating_weight=0.1,
                exposure_weight=0.05,
                cooccurrence_weight=1.0,
                content_weight=1.0,
                cooccurrence_activity=0.5,  # chosen on validation, three datasets x 10 seeds
                # explanations (issue 18): counted reviews predict a user's words about
                # an item better than summed attention on validation, 7 dataset-seeds
                # of 9 (Musical Instruments loses hit; docs/results.md)
                keyword_attention=False,
            )
        else:
            raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
        return replace(base, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def override_keys() -> list[str]:
    """The :class:`DReXConfig` fields ``--set KEY=VALUE`` may change (all but the variant).

    >>> override_keys()[:3]
    ['bias_l2', 'bias_terms', 'content_weight']
    """
    return sorted(name for name in get_type_hints(DReXConfig) if name != "variant")


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings (``--set``) as typed :class:`DReXConfig` overrides.

    Each value is parsed as its field's type (pydantic's lax rules: ``false``, ``no``,
    ``off`` and ``0`` are False); an unknown key or a value of the wrong type raises
    ``ValueError`` naming it, so ``use_text=nope`` is refused, not kept as a string. The
    variant is not a key: it picks the settings the overrides apply to (``for_variant``),
    so each command has a flag of its own for it.

    >>> parse_overrides(["use_text=no", "lr=0.01", "dim=32"])
    {'use_text': False, 'lr': 0.01, 'dim': 32}
    >>> parse_overrides(["variant=drex-paper"])
    Traceback (most recent call last):
    ...
    ValueError: variant is not a KEY=VALUE override: it has a flag of its own, --variants ...
    """
    from pydantic import TypeAdapter, ValidationError

    types = get_type_hints(DReXConfig)
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if key == "variant":
            raise ValueError(
                "variant is not a KEY=VALUE override: it has a flag of its own, --variants "
                "(drex evaluate, drex replay) or --variant (drex worker, DREX_VARIANT)"
            )
        if not sep or key not in types:
            keys = ", ".join(override_keys())
            raise ValueError(f"expected KEY=VALUE with KEY one of {keys}; got {pair!r}")
        try:
            out[key] = TypeAdapter(types[key]).validate_python(value.strip())
        except ValidationError as err:
            reason = err.errors()[0]["msg"]
            raise ValueError(f"{key}={value!r}: {reason} ({types[key].__name__})") from None
    return out


class ReviewEncoder(nn.Module):
    """Token projection P_t and attention vector v: tokens -> review vector t (eqs. 2-3)."""

    def __init__(self, encoder_dim: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(encoder_dim, dim)  # P_t, b_t
        self.v = nn.Linear(dim, 1, bias=False)  # v

    def forward(
        self, tokens: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # project only real tokens: reviews in a batch differ a lot in length
        e = tokens.new_zeros(*tokens.shape[:2], self.proj.out_features)  # (B, T, D)
        e[mask] = self.proj(tokens[mask])  # e'_j = P_t^T e_j + b_t
        score = self.v(e).squeeze(-1).masked_fill(~mask, float("-inf"))  # (B, T)
        attn = torch.softmax(score, dim=-1).nan_to_num(0.0)  # (B, T); empty review -> 0
        t = torch.einsum("bt,btd->bd", attn, e)  # (B, D)  eq. 3
        return t, attn


class RatingEncoder(nn.Module):
    """One-hot rating over S levels, projected by P_s (section 3.2.2)."""

    def __init__(self, levels: int, dim: int) -> None:
        super().__init__()
        self.levels = levels
        self.proj = nn.Linear(levels, dim)  # P_s, b_r

    def forward(self, rating: torch.Tensor) -> torch.Tensor:
        level = (rating.round().clamp(1, self.levels) - 1).long()  # (B,)
        # P_s^T onehot + b_r, as a column lookup (the same numbers, fewer kernels)
        return self.proj.weight.t()[level] + self.proj.bias  # (B, D)


class Fusion(nn.Module):
    """z = [t; r] with zeros for a missing modality, x = P_x^T z + b_x (section 3.3)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(2 * dim, dim)  # P_x, b_x

    def forward(
        self, t: torch.Tensor, r: torch.Tensor, has_text: torch.Tensor, has_rating: torch.Tensor
    ) -> torch.Tensor:
        z = torch.cat([t * has_text[:, None], r * has_rating[:, None]], dim=-1)  # (B, 2D)
        return self.proj(z)  # (B, D)


class MemoryUpdate(nn.Module):
    """Separate GRUs refine user and item representations from x (eqs. 4-7)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.user_gru = nn.GRUCell(dim, dim)
        self.item_gru = nn.GRUCell(dim, dim)

    def user(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self.user_gru(x, u)  # (B, D)  u' = (1 - z) * u + z * u~

    def item(self, x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return self.item_gru(x, i)  # (B, D)


class RatingHead(nn.Module):
    """MLP [2D -> D -> 1] with ReLU on [u; i] (section 3.5)."""

    def __init__(self, dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.hidden = nn.Linear(2 * dim, dim)
        self.out = nn.Linear(dim, 1)

    def forward(self, u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.hidden(self.drop(torch.cat([u, i], dim=-1))))  # (B, D)
        return self.out(h).squeeze(-1)  # (B,)


class PreferenceInit(nn.Module):
    """DReX-MLP: initial states from preference vectors, one hidden layer of size 2D."""

    def __init__(self, inputs: int, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(inputs, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))

    def forward(self, prefs: torch.Tensor) -> torch.Tensor:
        return self.net(prefs)  # (B, D)


class DReX(nn.Module):
    """The dense, shared part of DReX: extraction, fusion, memory update and rating head."""

    def __init__(self, config: DReXConfig) -> None:
        super().__init__()
        self.config = config
        d = config.dim
        self.review = ReviewEncoder(config.encoder_dim, d)
        self.rating = RatingEncoder(config.rating_levels, d)
        self.fusion = Fusion(d)
        self.memory = MemoryUpdate(d)
        self.head = RatingHead(d, config.dropout)
        # running_bias: weights of the user's and item's shrunk mean deviations
        self.deviation_weight = nn.Parameter(torch.ones(2))

    def interaction(
        self,
        tokens: torch.Tensor | None,  # (B, T, H); None: no review in the batch
        mask: torch.Tensor | None,  # (B, T)
        has_text: torch.Tensor,  # (B,) float 0/1
        rating: torch.Tensor,  # (B,) float, any value where has_rating is 0
        has_rating: torch.Tensor,  # (B,) float 0/1
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Interaction-level representation x ``(B, D)`` and token attention ``(B, T)``
        (None when the review head did not run: no text in the batch, or use_text off).
        """
        r = self.rating(rating)  # (B, D)
        if tokens is None or mask is None or not self.config.use_text:
            # the text modality is zeros for every row: the review head would only
            # multiply its output by 0 (x and every gradient are the same without it)
            return self.fusion(torch.zeros_like(r), r, torch.zeros_like(has_text), has_rating), None
        t, attn = self.review(tokens, mask)  # (B, D), (B, T)
        return self.fusion(t, r, has_text, has_rating), attn

    def predict(
        self,
        u: torch.Tensor,  # (B, D) user representation
        i: torch.Tensor,  # (B, D) item representation
        user_bias: torch.Tensor,  # (B,) learnable bias (zeros unless bias_terms)
        item_bias: torch.Tensor,  # (B,)
        deviations: torch.Tensor,  # (B, 2) shrunk mean deviations of user, item
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted rating ``(B,)`` (unclipped: training sees the raw value) and the MLP's
        share of it ``(B,)``, which ``residual_l2`` keeps small."""
        mlp = self.head(u, i)
        out = mlp
        if self.config.bias_terms:
            out = out + user_bias + item_bias
        if self.config.running_bias:
            out = out + deviations @ self.deviation_weight
        return out, mlp
