"""Shape and behaviour checks of each DReX stage (seeded, tiny sizes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drex_model.model import VARIANTS, DReX, DReXConfig, Fusion, RatingHead, ReviewEncoder
from drex_model.scoring import Head

B, T, H, D = 4, 7, 12, 8


def test_review_encoder_attention_is_a_distribution_over_real_tokens() -> None:
    torch.manual_seed(0)
    enc = ReviewEncoder(H, D)
    tokens = torch.randn(B, T, H)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 3:] = False
    mask[2] = False  # a review with no tokens
    t, attn = enc(tokens, mask)
    assert t.shape == (B, D) and attn.shape == (B, T)
    assert torch.allclose(attn[[0, 1, 3]].sum(-1), torch.ones(3))
    assert torch.all(attn[1, 3:] == 0)
    assert torch.all(attn[2] == 0) and torch.all(t[2] == 0)
    # eq. 3: t is the attention-weighted sum of the projected tokens
    assert torch.allclose(t[0], (attn[0, :, None] * enc.proj(tokens[0])).sum(0), atol=1e-6)


def test_fusion_zeroes_a_missing_modality() -> None:
    torch.manual_seed(0)
    fusion = Fusion(D)
    t, r = torch.randn(B, D), torch.randn(B, D)
    x_missing_text = fusion(t, r, torch.zeros(B), torch.ones(B))
    assert torch.allclose(
        x_missing_text, fusion(torch.zeros(B, D), r, torch.ones(B), torch.ones(B))
    )
    both_missing = fusion(t, r, torch.zeros(B), torch.zeros(B))
    assert torch.allclose(both_missing, fusion.proj.bias.expand(B, D))


def test_score_all_matches_pairwise_head() -> None:
    """The numpy scorer's every-pair matrix (drex_model.scoring, which ranking and
    serving use) is the torch head applied pair by pair."""
    torch.manual_seed(0)
    head = RatingHead(D).eval()
    params = {f"head.{k}": v.numpy() for k, v in head.state_dict().items()}
    params["deviation_weight"] = np.ones(2, dtype=np.float32)
    config = {
        "bias_terms": False,
        "running_bias": False,
        "shrinkage": 5.0,
        "rating_levels": 5,
        "exposure_weight": 0.0,
    }
    scorer = Head.from_parameters(params, config)
    u, i = torch.randn(5, D), torch.randn(3, D)
    zeros_u, zeros_i = np.zeros(5), np.zeros(3)
    full = scorer.score_matrix(
        scorer.project("users", u.numpy()),
        scorer.constants("users", 0.0, zeros_u, zeros_u, zeros_u),
        scorer.project("items", i.numpy()),
        scorer.constants("items", 0.0, zeros_i, zeros_i, zeros_i),
    )
    with torch.no_grad():
        pairs = head(u.repeat_interleave(3, 0), i.repeat(5, 1)).view(5, 3)
    assert torch.allclose(torch.from_numpy(full).float(), pairs, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_interaction_and_prediction_shapes(variant: str) -> None:
    torch.manual_seed(0)
    model = DReX(DReXConfig.for_variant(variant, dim=D, encoder_dim=H))
    x, attn = model.interaction(
        torch.randn(B, T, H),
        torch.ones(B, T, dtype=torch.bool),
        torch.ones(B),
        torch.tensor([1.0, 2.0, 5.0, 3.0]),
        torch.ones(B),
    )
    assert x.shape == (B, D) and attn is not None and attn.shape == (B, T)
    u2 = model.memory.user(x, torch.zeros(B, D))
    pred, mlp = model.predict(u2, u2, torch.zeros(B), torch.zeros(B), torch.zeros(B, 2))
    assert pred.shape == (B,) and mlp.shape == (B,)


def test_unknown_variant_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown variant"):
        DReXConfig.for_variant("drex-xl")
