"""Review preprocessing, the frozen encoder wrapper and its cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from drex_model import text as text_module
from drex_model.evaluate.runner import EvaluateOptions, review_cache
from drex_model.text import (
    PREPROCESSING_VERSION,
    ReviewCache,
    TextEncoder,
    preprocess,
    review_bytes,
)
from drex_model.types import Interaction


def test_preprocess_lowercases_drops_stopwords_keeps_negations_and_lemmatises() -> None:
    assert preprocess("The strings weren't bad, and they STAYED in tune!") == [
        "string",
        "not",
        "bad",
        "stay",
        "tune",
    ]
    assert preprocess("") == []
    assert preprocess("I can't recommend it") == ["not", "recommend"]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("I've had it a year and I'm happy", ["year", "happy"]),
        ("Ive had it a year and im happy, youre welcome", ["year", "happy", "welcome"]),
        ("I\u2019ve had it \u2018a year\u2019 and I\u2019m happy", ["year", "happy"]),
        ("The guitar's neck, that's what they'll love", ["guitar", "neck", "love"]),
        ("dont buy it, it doesnt stay in tune", ["not", "buy", "not", "stay", "tune"]),
        ("I don\u2019t like it", ["not", "like"]),
        ("I'll be ill, we'll see how well it works", ["ill", "see", "well", "work"]),
    ],
)
def test_preprocess_drops_contractions_with_or_without_their_apostrophe(
    text: str, words: list[str]
) -> None:
    """A contraction's clitic goes ("i've" is "i", a stopword: not the word "ive"), the
    same spellings without an apostrophe go too, and an unmarked negation still says
    "not"; words that a dropped apostrophe could make ("ill", "well") stay."""
    assert preprocess(text) == words


def test_encoder_gives_one_embedding_per_word_piece(tiny_encoder: TextEncoder) -> None:
    reviews = tiny_encoder.encode(["Great tone, sturdy build", "", "the and of"])
    assert [r.words for r in reviews] == [["great", "tone", "sturdy", "build"], [], []]
    first = reviews[0]
    assert first.tokens.shape == (len(first.word_of_token), tiny_encoder.hidden_size)
    assert first.tokens.dtype == torch.float16
    assert sorted(set(first.word_of_token.tolist())) == [0, 1, 2, 3]
    assert reviews[1].tokens.shape[0] == 0 and reviews[2].tokens.shape[0] == 0


def test_a_reviews_vectors_do_not_depend_on_its_batch(tiny_encoder: TextEncoder) -> None:
    """Reviews are sorted by word-piece count and padded per batch: each review's vectors
    are those it gets alone, unpadded, and come back in input order."""
    texts = [
        "Great tone, sturdy build and a fair price for the money",
        "Broke",
        "The strap held up for years of gigs",
        "Unbelievably overengineered tuners",
    ]
    together = tiny_encoder.encode(texts)
    for text, review in zip(texts, together, strict=True):
        (alone,) = tiny_encoder.encode([text])
        assert review.words == alone.words
        assert torch.equal(review.word_of_token, alone.word_of_token)
        torch.testing.assert_close(review.tokens, alone.tokens, atol=2e-3, rtol=1e-2)
    lengths = [r.tokens.shape[0] for r in together]
    assert len(set(lengths)) > 1  # padding really happened in the batch


@pytest.mark.usefixtures("torch_threads_kept")
def test_the_encoder_runs_with_its_own_threads_and_gives_them_back(
    tiny_encoder_dir: Path,
) -> None:
    """A worker learns with one thread and encodes with more: the encoder sets its count
    for each call and restores the caller's."""
    encoder = TextEncoder(str(tiny_encoder_dir), max_tokens=32, device="cpu", threads=2)
    forward, seen = encoder.model.forward, []

    def counting(*args: object, **kwargs: object) -> object:
        seen.append(torch.get_num_threads())
        return forward(*args, **kwargs)

    encoder.model.forward = counting
    torch.set_num_threads(1)
    encoder.encode(["the strings stayed in tune", "a warm tone"])
    assert seen and set(seen) == {2}
    assert torch.get_num_threads() == 1


def test_long_reviews_are_truncated(tiny_encoder: TextEncoder) -> None:
    (review,) = tiny_encoder.encode(["guitar " * 500])
    assert review.tokens.shape[0] == tiny_encoder.max_tokens - 2  # [CLS] and [SEP] dropped


def test_cache_encodes_each_text_once_and_round_trips(
    tiny_encoder: TextEncoder, tmp_path: Path
) -> None:
    calls: list[int] = []
    original = tiny_encoder.encode

    def counting(texts, progress=False):  # type: ignore[no-untyped-def]
        calls.append(len(texts))
        return original(texts, progress)

    tiny_encoder.encode = counting  # type: ignore[method-assign]
    try:
        cache = ReviewCache(tiny_encoder.hidden_size)
        ids = cache.add(tiny_encoder, ["warm tone", "cheap strap", "warm tone"])
        again = cache.add(tiny_encoder, ["cheap strap", "warm tone"])
    finally:
        tiny_encoder.encode = original  # type: ignore[method-assign]
    assert ids == [0, 1, 0] and again == [1, 0] and calls == [2]
    cache.save(tmp_path / "c")
    loaded = ReviewCache.load(tmp_path / "c")
    assert loaded.lookup("cheap strap") == 1 and len(loaded) == 2
    assert torch.equal(loaded.reviews[0].tokens, cache.reviews[0].tokens)
    tokens, mask = loaded.batch([1, -1, 0])
    assert tokens.shape[0] == 3 and not mask[1].any() and mask[0].any()


def test_bundled_encoder_loads_offline() -> None:
    encoder = TextEncoder(precision="fp32")
    (review,) = encoder.encode(["Sounds great and stays in tune"])
    assert encoder.hidden_size == 384 and review.tokens.shape[1] == 384
    assert review.words == ["sound", "great", "stay", "tune"]


def test_cache_unloads_the_oldest_within_a_budget_and_loads_them_back(
    tiny_encoder: TextEncoder,
) -> None:
    texts = ["warm tone and sturdy", "cheap strap", "great value for money", "broke in a week"]
    source = ReviewCache(tiny_encoder.hidden_size)
    source.add(tiny_encoder, texts)
    store = {source.key(j): source.get(j) for j in range(len(source))}
    cache = ReviewCache(tiny_encoder.hidden_size, loader=store.get)
    ids = cache.add(tiny_encoder, texts)
    sizes = [review_bytes(cache.get(j)) for j in ids]
    assert cache.loaded_bytes == sum(sizes)
    assert cache.unload(sizes[2] + sizes[3]) == 2  # the two oldest go
    assert cache.reviews[0] is None and cache.reviews[1] is None
    assert cache.loaded_bytes == sizes[2] + sizes[3]
    tokens, mask = cache.batch([0, -1, 3])  # read back through the loader
    assert torch.equal(tokens[0, : int(mask[0].sum())].half(), store[cache.key(0)].tokens)
    assert cache.loaded_bytes == sizes[0] + sizes[2] + sizes[3]
    assert cache.lookup("cheap strap") == 1 and cache.add(tiny_encoder, ["cheap strap"]) == [1]
    assert cache.add_unloaded("elsewhere") == 4 and len(cache) == 5
    with pytest.raises(KeyError, match="elsewhere"):
        cache.get(4)


def test_the_encoder_output_cache_is_kept_per_preprocessing_version(
    tiny_encoder_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The encoder reads the preprocessed words: outputs cached under other rules are not
    read back (the cache used to be keyed by the texts alone)."""
    data = [Interaction("u1", "i1", 5.0, "I've loved its tone", 0.0)]
    opts = EvaluateOptions(
        dataset="sample",
        output=str(tmp_path / "out"),
        encoder=str(tiny_encoder_dir),
        precision="fp32",
        device="cpu",
        cache_dir=str(tmp_path / "cache"),
        progress=False,
    )
    cache = review_cache(opts, data, "cpu")
    assert cache.get(0).words == ["love", "tone"]
    (first,) = (tmp_path / "cache").iterdir()
    assert f"-p{PREPROCESSING_VERSION}-" in first.name
    assert review_cache(opts, data, "cpu").get(0).words == ["love", "tone"]  # read back
    assert len(list((tmp_path / "cache").iterdir())) == 1

    monkeypatch.setattr(text_module, "PREPROCESSING_VERSION", PREPROCESSING_VERSION + 1)
    review_cache(opts, data, "cpu")
    assert len(list((tmp_path / "cache").iterdir())) == 2
