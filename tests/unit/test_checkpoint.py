"""drex_model.checkpoint: pieces and folders restore a learner exactly, without pickle."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from drex_model.checkpoint import (
    CheckpointError,
    dense_metadata,
    dense_state_bytes,
    encoded_review,
    export_rows,
    import_rows,
    load_checkpoint,
    load_dense_state,
    review_arrays,
    save_checkpoint,
)
from drex_model.explain import review_words
from drex_model.formats import (
    review_from_bytes,
    review_to_bytes,
    row_from_bytes,
    row_to_bytes,
    shown_profile,
)
from drex_model.learner import DReXLearner
from drex_model.model import DReXConfig
from drex_model.text import TextEncoder
from drex_model.types import Interaction

WORDS = ["warm tone", "cheap strap broke", "solid metal build", "easy setup", "bright sound"]


def config(**overrides: object) -> DReXConfig:
    # No dropout, and an optimiser step every 4 rated interactions, so that a learner
    # saved between steps continues exactly like the original.
    return DReXConfig.for_variant(
        "drex",
        dim=8,
        dropout=0.0,
        step_size=4,
        **overrides,  # type: ignore[arg-type]
    )


def stream(n: int, start: int = 0, seed: int = 0) -> list[Interaction]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(start, start + n):
        text = WORDS[int(rng.integers(len(WORDS)))] if k % 3 else None
        out.append(
            Interaction(
                f"u{int(rng.integers(6))}",
                f"i{int(rng.integers(5))}",
                float(rng.integers(1, 6)),
                text,
                float(k),
            )
        )
    return out


def trained(encoder: TextEncoder, **overrides: object) -> DReXLearner:
    cfg = config(encoder_dim=encoder.hidden_size, **overrides)
    learner = DReXLearner(cfg, encoder=encoder, seed=0)
    for s in range(0, 32, 8):
        learner.learn_many(stream(8, s, seed=s))
    assert learner.step > 0
    return learner


def restored(source: DReXLearner, encoder: TextEncoder) -> DReXLearner:
    copy = DReXLearner(source.config, encoder=encoder, seed=0)
    load_dense_state(copy, dense_state_bytes(source))
    for side in ("users", "items"):
        table = source.users if side == "users" else source.items
        rows = export_rows(source, side, list(table.ids))
        # through bytes, as the learner store keeps them
        encoded = []
        for r in rows:
            row = row_from_bytes(row_to_bytes(r))
            assert row.pending_key == r.pending_key
            if r.pending_review is not None:
                blob = review_to_bytes(review_arrays(r.pending_review))
                row.pending_review = encoded_review(review_from_bytes(blob))
            encoded.append(row)
        import_rows(copy, side, encoded)
    return copy


def all_pairs(learner: DReXLearner) -> tuple[list[str], list[str]]:
    users, items = list(learner.users.ids), list(learner.items.ids)
    return [u for u in users for _ in items], items * len(users)


def test_pieces_restore_identical_predictions_and_training(tiny_encoder: TextEncoder) -> None:
    torch.manual_seed(0)
    source = trained(tiny_encoder)
    copy = restored(source, tiny_encoder)
    users, items = all_pairs(source)
    np.testing.assert_allclose(
        copy.predict_many(users, items), source.predict_many(users, items), atol=1e-5
    )
    assert copy.step == source.step
    # Same next batch, same scores and same state afterwards: optimiser state came along.
    batch = [*stream(8, 100, seed=7), Interaction("new-user", "new-item", 4.0, "warm", 200.0)]
    np.testing.assert_allclose(copy.learn_many(batch), source.learn_many(batch), atol=1e-4)
    np.testing.assert_allclose(
        copy.predict_many(users, items), source.predict_many(users, items), atol=1e-4
    )
    for user in source.users.ids:
        assert copy.seen_items(user) == source.seen_items(user)


def test_wrong_format_version_and_other_config_are_refused(tiny_encoder: TextEncoder) -> None:
    source = trained(tiny_encoder)
    blob = dense_state_bytes(source)
    (n,) = struct.unpack_from("<Q", blob)
    meta = json.loads(blob[8 : 8 + n])["__metadata__"]
    forged = st_save(st_load(blob), metadata={**meta, "format": "2"})
    with pytest.raises(CheckpointError, match="format version '2'"):
        load_dense_state(DReXLearner(source.config, encoder=tiny_encoder), forged)
    other = DReXLearner(config(encoder_dim=tiny_encoder.hidden_size, lr=0.5), encoder=tiny_encoder)
    with pytest.raises(CheckpointError, match="lr"):
        load_dense_state(other, blob)
    with pytest.raises(CheckpointError):
        dense_metadata(b"not a checkpoint")


def test_loading_never_unpickles(
    tiny_encoder: TextEncoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = trained(tiny_encoder)
    blob = dense_state_bytes(source)
    folder = save_checkpoint(source, tmp_path / "step-1", extra={"offset": 41})

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    copy = DReXLearner(source.config, encoder=tiny_encoder)
    load_dense_state(copy, blob)
    again = load_checkpoint(folder, encoder=tiny_encoder)
    users, items = all_pairs(source)
    np.testing.assert_allclose(
        again.predict_many(users, items), source.predict_many(users, items), atol=1e-5
    )
    assert json.loads((folder / "config.json").read_text())["extra"] == {"offset": 41}
    # the ranking's state (co-occurrence, review content, items in order) came along
    u, i = list(source.users.ids), list(source.items.ids)
    assert again.blend.cooccurrence and again.blend.content
    np.testing.assert_allclose(again.ranking_scores(u, i), source.ranking_scores(u, i), atol=1e-5)
    for user in source.users.ids:
        assert again.user_keywords.profile(user) == pytest.approx(
            source.user_keywords.profile(user)
        )


def test_a_learner_loaded_from_a_checkpoint_explains_alike(
    tiny_encoder: TextEncoder, tmp_path: Path
) -> None:
    """The folder carries the explanations' state (vocabulary, items' quotes, decaying
    user profiles): every pair gets the same Reason after a load; a folder written
    before that state existed still loads, with none."""
    from tests.unit.quotable import reviewed

    cfg = config(encoder_dim=tiny_encoder.hidden_size, keyword_decay=0.8)
    source = DReXLearner(cfg, encoder=tiny_encoder, seed=0)
    for n in range(4):
        source.learn_many(reviewed(10, 10 * n, seed=n))
    folder = save_checkpoint(source, tmp_path / "step-4")
    again = load_checkpoint(folder, encoder=tiny_encoder)
    assert again.vocabulary.words == source.vocabulary.words
    assert again.vocabulary.mass == source.vocabulary.mass
    users, items = list(source.users.ids), list(source.items.ids)
    assert {i: again.quotes.get(i) for i in items} == {i: source.quotes.get(i) for i in items}
    reasons = [source.explain(user, items) for user in users]
    assert [again.explain(user, items) for user in users] == reasons
    assert any(r.quote for rs in reasons for r in rs)
    listing = json.loads((folder / "entities.json").read_text())
    del listing["vocabulary"], listing["items"]["quotes"]
    (folder / "entities.json").write_text(json.dumps(listing))
    older = load_checkpoint(folder, encoder=tiny_encoder)
    assert not older.vocabulary.words and not list(older.quotes.items())


def test_views_do_not_register_ids(tiny_encoder: TextEncoder) -> None:
    learner = trained(tiny_encoder)
    n_items = len(learner.items)
    vectors = learner.embeddings("items", list(learner.items.ids))
    assert vectors.shape == (n_items, 8) and vectors.dtype == np.float32
    with pytest.raises(KeyError):
        learner.embeddings("items", ["nope"])
    assert len(learner.items) == n_items
    profiles = learner.keyword_profiles("items", list(learner.items.ids))
    # every item has a pending review or folded ones: the view includes the pending words
    assert all(profiles)


@pytest.mark.parametrize("attention", [True, False], ids=["attention", "reviews"])
def test_a_snapshot_is_both_views_in_one_pass(tiny_encoder: TextEncoder, attention: bool) -> None:
    """Vectors as ``embeddings`` gives them; each learned profile is the stored one, and
    the pending words are the pending review's under the current model (computed here
    review by review); ``keyword_profiles`` shows their sum."""
    learner = trained(tiny_encoder, keyword_attention=attention)
    learner.model.eval()
    pending = 0
    for side in ("users", "items"):
        table = learner.users if side == "users" else learner.items
        stored = learner.user_keywords if side == "users" else learner.item_keywords
        ids = list(table.ids)
        ids = ids + ids[:2]  # a repeated id gets the same answer (its review counted once)
        vectors, learned, words = learner.snapshot(side, ids)
        np.testing.assert_allclose(vectors, learner.embeddings(side, ids), atol=1e-6)
        assert len(learned) == len(words) == len(ids)
        profiles = [shown_profile(a, b) for a, b in zip(learned, words, strict=True)]
        for key, got, as_learned in zip(ids, profiles, learned, strict=True):
            want = stored.profile(key)
            assert as_learned == want
            row = table.index[key]
            j = int(table.pending_review[row]) if bool(table.has_pending[row]) else -1
            if j >= 0:
                pending += 1
                tokens, mask = learner.cache.batch([j])
                with torch.no_grad():
                    _, attn = learner.model.review(tokens, mask)
                review = learner.cache.reviews[j]
                for word, w in review_words(review, attn[0], attention).items():
                    want[word] = want.get(word, 0.0) + w
            assert got == pytest.approx(want, abs=1e-5)
        assert learner.keyword_profiles(side, ids) == profiles
    assert pending > 0
    assert learner.snapshot("items", [])[0].shape == (0, 8)
