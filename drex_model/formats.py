"""Byte formats of the learner's state, in one torch-free module.

Whatever stores the learner (``drex_store``), follows it (``serving``) or saves it
(``drex_model.checkpoint``) encodes and decodes through these functions, so the layout
of a value is written down once and a server can read it without importing torch.

* an **entity row** (:class:`EntityRow`): one user's or item's whole state, as
  :func:`row_to_bytes`: u32 header length, JSON header, float32 vectors;
* an **encoded review**: the frozen encoder's tokens of one review, as
  :func:`review_to_bytes`: u32 header length, JSON (words, shape), float16 tokens, int32
  word index per token; keyed by :func:`text_key` of its text;
* a **representation**: float64 Unix time of the change, then float32 values;
* a **keyword record**: JSON ``{"learned": {word: weight}, "pending": {word: weight},
  "quotes": [[text, rating, [word, ...]], ...]}``: the profile as learned, the words of
  the pending review under the current model (serving shows their sum; a restore reads
  only the learned part), and an item's quotes (``drex_model.reasons.Quote``; absent in
  users' records and in records written before quotes existed);
* a **vocabulary row**: a word's ``[attention mass, rated reviews, rating sum]``
  (``drex_model.reasons.Vocabulary``), as :func:`word_row_to_bytes`: u8 format version,
  three float64;
* the **dense blob**: safetensors bytes whose metadata holds the format, the config and
  the step (written by ``drex_model.checkpoint.dense_state_bytes``); read here with
  :func:`dense_metadata` and :func:`dense_arrays` (numpy).

Every value carries :data:`FORMAT_VERSION`; a reader refuses another version instead of
misreading it. Nothing here unpickles.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson

from drex_model.reasons import Quote

FORMAT_VERSION: Final = 1
SIDES: Final = ("users", "items")
# Row vectors of an entity, in this order, each (D,): see EntityRow.vectors.
VECTORS: Final = ("memory", "init", "static", "m_init", "v_init", "m_static", "v_static")
_HEADER: Final = struct.Struct("<I")
_TIME: Final = struct.Struct("<d")
_WORD_ROW: Final = struct.Struct("<B3d")

FloatArray = npt.NDArray[np.float32]


class FormatError(ValueError):
    """A value of another format version, another config, or damaged."""


def text_key(text: str) -> str:
    """The stable key of a review text: the review cache's and the store's."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


# --- entity rows --------------------------------------------------------------------------


@dataclass
class EntityRow:
    """One user's or item's whole state.

    The memory and whether it is set, the pending message (its review's key and, where
    the learner exported it, the encoded review itself; and its rating), the interaction
    count and rating sums the running deviations read, the learnable init/bias/static
    rows with their SparseAdam moments, and the user's seen items.
    """

    id: str
    vectors: FloatArray  # (7, D): VECTORS, in order
    bias: float = 0.0
    m_bias: float = 0.0
    v_bias: float = 0.0
    has_memory: bool = False
    has_pending: bool = False
    pending_key: str | None = None  # text_key of the pending message's review
    pending_review: Any = None  # that review (drex_model.text.EncodedReview), when loaded
    pending_rating: float | None = None
    count: int = 0
    rating_sum: float = 0.0
    rating_count: float = 0.0
    seen: list[str] = field(default_factory=list)  # users: items, first interaction first
    # sum of unit review vectors (H,) (drex_model.affinity); empty without text
    content: FloatArray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))


def row_to_bytes(row: EntityRow) -> bytes:
    """A compact, pickle-free encoding of ``row`` (the review itself is stored apart)."""
    header = {
        "v": FORMAT_VERSION,
        "id": row.id,
        "bias": [row.bias, row.m_bias, row.v_bias],
        "mem": row.has_memory,
        "pend": row.has_pending,
        "review": row.pending_key,
        "rating": row.pending_rating,
        "count": row.count,
        "rsum": row.rating_sum,
        "rcount": row.rating_count,
        "seen": row.seen,
        "dim": int(row.vectors.shape[1]),
        "content": int(row.content.shape[0]),
    }
    head = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    return (
        _HEADER.pack(len(head))
        + head
        + row.vectors.astype("<f4").tobytes()
        + row.content.astype("<f4").tobytes()
    )


def row_from_bytes(data: bytes) -> EntityRow:
    """Inverse of :func:`row_to_bytes` (``pending_review`` is left None)."""
    header, start = _read_header(data, "entity row")
    dim = int(header["dim"])
    n = len(VECTORS) * dim
    vectors = np.frombuffer(data, dtype="<f4", offset=start, count=n).reshape(len(VECTORS), dim)
    content = np.frombuffer(
        data, dtype="<f4", offset=start + 4 * n, count=int(header.get("content", 0))
    )
    bias, m_bias, v_bias = header["bias"]
    return EntityRow(
        id=header["id"],
        vectors=vectors.astype(np.float32),
        bias=bias,
        m_bias=m_bias,
        v_bias=v_bias,
        has_memory=header["mem"],
        has_pending=header["pend"],
        pending_key=header["review"],
        pending_rating=header["rating"],
        count=header["count"],
        rating_sum=header["rsum"],
        rating_count=header["rcount"],
        seen=list(header["seen"]),
        content=content.astype(np.float32),
    )


# --- co-occurrence rows -------------------------------------------------------------------


def cooccurrence_to_bytes(users: float, pairs: Mapping[str, float]) -> bytes:
    """One item's co-occurrence state (drex_model.affinity.CoOccurrence): the users who
    picked it and, by item id, how many of them picked the other item too. JSON."""
    pairs = pairs if type(pairs) is dict else dict(pairs)  # the learner's rows are dicts
    return orjson.dumps({"v": FORMAT_VERSION, "users": users, "pairs": pairs})


def cooccurrence_from_bytes(data: bytes) -> tuple[float, dict[str, float]]:
    """Inverse of :func:`cooccurrence_to_bytes`."""
    value = orjson.loads(data)
    if not isinstance(value, dict) or value.get("v") != FORMAT_VERSION:
        raise FormatError("a co-occurrence row of another format version")
    return float(value["users"]), {str(k): float(c) for k, c in value["pairs"].items()}


# --- encoded reviews ----------------------------------------------------------------------


@dataclass
class ReviewArrays:
    """An encoded review as numpy arrays (``drex_model.text.EncodedReview`` in torch)."""

    words: list[str]
    tokens: npt.NDArray[np.float16]  # (T, H)
    word_of_token: npt.NDArray[np.int64]  # (T,)


def review_to_bytes(review: ReviewArrays) -> bytes:
    tokens = np.ascontiguousarray(review.tokens, dtype="<f2")
    head = orjson.dumps({"v": FORMAT_VERSION, "words": review.words, "shape": list(tokens.shape)})
    wot = np.asarray(review.word_of_token).astype("<i4")
    return _HEADER.pack(len(head)) + head + tokens.tobytes() + wot.tobytes()


def review_from_bytes(data: bytes) -> ReviewArrays:
    header, start = _read_header(data, "review")
    t, h = header["shape"]
    tokens = np.frombuffer(data, dtype="<f2", count=t * h, offset=start).reshape(t, h)
    wot = np.frombuffer(data, dtype="<i4", count=t, offset=start + 2 * t * h)
    return ReviewArrays(list(header["words"]), tokens.astype(np.float16), wot.astype(np.int64))


# --- representations and keyword records ---------------------------------------------------


def representation_to_bytes(vector: npt.ArrayLike, at: float) -> bytes:
    return _TIME.pack(at) + np.asarray(vector, dtype="<f4").tobytes()


def representation_from_bytes(raw: bytes) -> tuple[float, FloatArray]:
    """(Unix time of the change, float32 vector)."""
    (at,) = _TIME.unpack_from(raw)
    return at, np.frombuffer(raw, dtype="<f4", offset=_TIME.size).astype(np.float32)


def keywords_to_bytes(
    learned: Mapping[str, float],
    pending: Mapping[str, float],
    quotes: Sequence[Quote] | None = None,
) -> bytes:
    """A keyword record; ``quotes``: an item's (None: a user's, none kept)."""
    record: dict[str, Any] = {"learned": learned, "pending": pending}
    if quotes is not None:
        record["quotes"] = [q.to_record() for q in quotes]
    return orjson.dumps(record)


def keywords_from_bytes(raw: bytes) -> tuple[dict[str, float], dict[str, float], list[Quote]]:
    """(profile as learned, words of the pending review, quotes: [] when none kept)."""
    data = orjson.loads(raw)
    quotes = [Quote.from_record(q) for q in data.get("quotes", ())]
    return dict(data["learned"]), dict(data["pending"]), quotes


def word_row_to_bytes(row: Sequence[float]) -> bytes:
    """A vocabulary row ``[attention mass, rated reviews, rating sum]``."""
    mass, rated, rating_sum = row
    return _WORD_ROW.pack(FORMAT_VERSION, mass, rated, rating_sum)


def word_row_from_bytes(raw: bytes) -> list[float]:
    """Inverse of :func:`word_row_to_bytes`."""
    if len(raw) != _WORD_ROW.size or raw[0] != FORMAT_VERSION:
        raise FormatError("a vocabulary row of another format version, or damaged")
    return list(_WORD_ROW.unpack(raw)[1:])


def shown_profile(
    learned: Mapping[str, float], pending: Mapping[str, float], decay: float = 1.0
) -> dict[str, float]:
    """The profile a reader shows: the learned one with the pending review's words folded
    in, as the learner will fold them (:func:`fold_words`)."""
    return fold_words(learned, pending, decay) if pending else dict(learned)


DROP_BELOW = 1e-3  # a decayed keyword weight below this leaves its profile


def fold_words(
    profile: Mapping[str, float], words: Mapping[str, float], decay: float = 1.0
) -> dict[str, float]:
    """A profile after one review: its weights times ``decay`` (those that fall below
    :data:`DROP_BELOW` dropped), plus the review's attention per word.

    >>> fold_words({"tone": 1.0, "hum": 0.0015}, {"tone": 0.5}, decay=0.5)
    {'tone': 1.0}
    """
    out = dict(profile)
    if decay < 1.0:
        out = {w: x * decay for w, x in out.items() if x * decay >= DROP_BELOW}
    for word, weight in words.items():
        out[word] = out.get(word, 0.0) + weight
    return out


# --- the dense blob -------------------------------------------------------------------------


def dense_metadata(data: bytes) -> dict[str, Any]:
    """The metadata of a dense blob (format, config, step, extra), checked; tensors are
    left unparsed."""
    meta = safetensors_metadata(data)
    if meta.get("kind") != "drex-dense":
        raise FormatError("not a drex dense-state blob")
    if meta.get("format") != str(FORMAT_VERSION):
        raise FormatError(
            f"dense state has format version {meta.get('format')!r}; this drex reads "
            f"{FORMAT_VERSION}"
        )
    return {
        "format": int(meta["format"]),
        "config": json.loads(meta["config"]),
        "step": int(meta["step"]),
        "extra": json.loads(meta.get("extra", "{}")),
    }


def dense_arrays(data: bytes, prefix: str = "model/") -> dict[str, npt.NDArray[Any]]:
    """The dense blob's tensors under ``prefix`` (the network's parameters), as numpy,
    named as in the network's ``state_dict`` (prefix removed)."""
    from safetensors.numpy import load

    return {k[len(prefix) :]: v for k, v in load(data).items() if k.startswith(prefix)}


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of safetensors bytes, read without touching the tensors."""
    if len(data) < 8:
        raise FormatError("not safetensors data (too short)")
    (n,) = struct.unpack_from("<Q", data)
    if n > len(data) - 8:
        raise FormatError("not safetensors data (bad header length)")
    try:
        header = json.loads(data[8 : 8 + n])
    except ValueError as err:
        raise FormatError(f"not safetensors data: {err}") from None
    meta = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}


def _read_header(data: bytes, what: str) -> tuple[dict[str, Any], int]:
    (n,) = _HEADER.unpack_from(data)
    header = orjson.loads(data[4 : 4 + n])
    if header.get("v") != FORMAT_VERSION:
        raise FormatError(f"{what} of format {header.get('v')!r}")
    return header, 4 + n
