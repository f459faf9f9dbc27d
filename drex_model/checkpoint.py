"""Save and restore a :class:`~drex_model.learner.DReXLearner`, safely and in pieces.

Two granularities, because the streaming worker and a human need different things:

* **Pieces** for an incremental store (the worker's RocksDB, ``streams/state.py``): the
  *dense* part (the shared network, both optimisers' state, the step counter and the
  config) as one safetensors blob, :func:`dense_state_bytes` / :func:`load_dense_state`,
  and each user's or item's complete state as an :class:`EntityRow`,
  :func:`export_rows` / :func:`import_rows`. A micro-batch only rewrites the rows it
  touched, and the dense blob only when an optimiser step happened.
* **Folders** (:func:`save_checkpoint` / :func:`load_checkpoint`): everything in
  ``model.safetensors``, ``entities.safetensors``, ``entities.json``, ``reviews.safetensors`` and
  ``config.json``, for serving and for people.

Only safetensors and JSON are ever written or read: nothing here unpickles, so loading a
checkpoint cannot run code. Every blob carries :data:`FORMAT_VERSION`; a reader refuses
another version and a config other than the learner's, instead of misreading them.

What an entity row holds: the memory and whether it is set, the pending message (the
encoded review itself, since review ids index a per-process cache, and the rating), the
interaction count and rating sums that ``_mean`` and the shrunk deviations read, the
learnable init/bias/static rows with their SparseAdam moments, and the user's seen
items. Not saved: gradients accumulated towards the next optimiser step (at most
``step_size`` rated interactions' worth; a restored learner starts a fresh accumulation)
and drex-mlp's preference ratings (that variant needs a fixed catalogue).

This module reads the learner's tables directly: it is the learner's serialisation, kept
out of ``learner.py`` so that the learning code stays one readable file.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from drex_model.learner import DReXLearner, EntityTable
from drex_model.model import DReXConfig
from drex_model.text import EncodedReview, ReviewCache, TextEncoder

FORMAT_VERSION: Final = 1
SIDES: Final = ("users", "items")
# Row vectors of an entity, in this order, each (D,): see EntityRow.vectors.
VECTORS: Final = ("memory", "init", "static", "m_init", "v_init", "m_static", "v_static")
_PARAMS: Final = ("init", "bias", "static")


class CheckpointError(ValueError):
    """A blob or folder of another format version, another config, or damaged."""


# --- the dense part ---------------------------------------------------------------------


def dense_state_bytes(learner: DReXLearner, extra: dict[str, Any] | None = None) -> bytes:
    """The shared network, Adam's state, SparseAdam's step counts, the learner's step and
    config, as safetensors bytes. ``extra`` (JSON-able) is stored in the metadata."""
    if learner.pref_nets is not None:
        raise CheckpointError("drex-mlp learners cannot be saved in pieces (catalogue-bound)")
    tensors: dict[str, torch.Tensor] = {
        f"model/{name}": t.detach().cpu().contiguous().clone()
        for name, t in learner.model.state_dict().items()
    }
    adam = learner.optimizer.state_dict()
    for index, state in adam["state"].items():
        for key, value in state.items():
            tensors[f"adam/{index}/{key}"] = torch.as_tensor(value).detach().cpu().clone()
    groups = [{k: _jsonable(v) for k, v in g.items()} for g in adam["param_groups"]]
    meta = {
        "format": str(FORMAT_VERSION),
        "kind": "drex-dense",
        "config": json.dumps(learner.config.to_dict(), sort_keys=True),
        "step": str(learner.step),
        "adam_groups": json.dumps(groups),
        "sparse_steps": json.dumps(_sparse_steps(learner)),
        "extra": json.dumps(extra or {}),
    }
    return bytes(st_save(tensors, metadata=meta))


def dense_metadata(data: bytes) -> dict[str, Any]:
    """The metadata of a dense blob (format, config, step, extra), checked, unparsed
    tensors left alone."""
    meta = _header_metadata(data)
    if meta.get("kind") != "drex-dense":
        raise CheckpointError("not a drex dense-state blob")
    if meta.get("format") != str(FORMAT_VERSION):
        raise CheckpointError(
            f"dense state has format version {meta.get('format')!r}; this drex reads "
            f"{FORMAT_VERSION}"
        )
    return {
        "format": int(meta["format"]),
        "config": json.loads(meta["config"]),
        "step": int(meta["step"]),
        "extra": json.loads(meta.get("extra", "{}")),
    }


def load_dense_state(learner: DReXLearner, data: bytes) -> dict[str, Any]:
    """Load :func:`dense_state_bytes`'s output into ``learner``; returns its ``extra``.

    Refuses another format version, or a config other than ``learner.config``.
    """
    info = dense_metadata(data)
    if info["config"] != learner.config.to_dict():
        raise CheckpointError(
            "the saved learner has another config: "
            f"{_config_diff(info['config'], learner.config.to_dict())}"
        )
    meta = _header_metadata(data)
    tensors = st_load(data)
    model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}
    learner.model.load_state_dict(model_state)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("adam/"):
            _, index, name = key.split("/", 2)
            state.setdefault(int(index), {})[name] = value
    groups = json.loads(meta["adam_groups"])
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    learner.optimizer.load_state_dict({"state": state, "param_groups": groups})
    steps = json.loads(meta["sparse_steps"])
    for side in SIDES:
        table = _table(learner, side)
        for name in _PARAMS:
            n = int(steps.get(f"{side}.{name}", 0))
            param = getattr(table, name)
            if n > 0:
                slot = learner.sparse_optimizer.state[param]
                slot["step"] = n
                slot.setdefault("exp_avg", torch.zeros_like(param))
                slot.setdefault("exp_avg_sq", torch.zeros_like(param))
    learner.step = info["step"]
    learner._accumulated = 0  # the partial gradient is not saved: start a new one
    learner._loss = None
    learner.optimizer.zero_grad(set_to_none=True)
    learner.sparse_optimizer.zero_grad(set_to_none=True)
    return dict(info["extra"])


def _sparse_steps(learner: DReXLearner) -> dict[str, int]:
    out = {}
    for side in SIDES:
        table = _table(learner, side)
        for name in _PARAMS:
            slot = learner.sparse_optimizer.state.get(getattr(table, name), {})
            out[f"{side}.{name}"] = int(slot.get("step", 0))
    return out


# --- entity rows --------------------------------------------------------------------------


@dataclass
class EntityRow:
    """One user's or item's whole state (see the module docstring)."""

    id: str
    vectors: npt.NDArray[np.float32]  # (7, D): VECTORS, in order
    bias: float = 0.0
    m_bias: float = 0.0
    v_bias: float = 0.0
    has_memory: bool = False
    has_pending: bool = False
    pending_review: EncodedReview | None = None  # the review of the pending message
    pending_index: int = -1  # its index in the exporting learner's cache (-1: none)
    pending_rating: float | None = None
    count: int = 0
    rating_sum: float = 0.0
    rating_count: float = 0.0
    seen: list[str] = field(default_factory=list)  # users: items interacted with


def export_rows(learner: DReXLearner, side: str, ids: Sequence[str]) -> list[EntityRow]:
    """The rows of known ``ids`` of ``side`` ("users" or "items"); unknown ids raise."""
    table = _table(learner, side)
    missing = [k for k in ids if k not in table.index]
    if missing:
        raise KeyError(f"unknown {side}: {missing[:5]}")
    if not ids:
        return []
    rows = torch.tensor([table.index[k] for k in ids], dtype=torch.long, device=table.memory.device)
    opt = learner.sparse_optimizer.state
    with torch.no_grad():
        zeros = torch.zeros(len(ids), table.memory.shape[1], device=table.memory.device)

        def moment(name: str, key: str) -> torch.Tensor:
            slot = opt.get(getattr(table, name))
            if not slot or key not in slot:
                return zeros if name != "bias" else zeros[:, 0]
            value = slot[key][rows]
            return value.reshape(len(ids)) if name == "bias" else value  # bias is (N, 1)

        vectors = torch.stack(
            [
                table.memory[rows],
                table.init[rows],
                table.static[rows],
                moment("init", "exp_avg"),
                moment("init", "exp_avg_sq"),
                moment("static", "exp_avg"),
                moment("static", "exp_avg_sq"),
            ],
            dim=1,
        )  # (B, 7, D)
        scalars = torch.stack(
            [
                table.bias[rows].reshape(len(ids)),
                moment("bias", "exp_avg"),
                moment("bias", "exp_avg_sq"),
                table.rating_sum[rows],
                table.rating_count[rows],
                table.pending_rating[rows],
            ],
            dim=1,
        )  # (B, 6)
    vec = vectors.float().cpu().numpy()
    sc = scalars.double().cpu().numpy()
    has_memory = table.has_memory[rows].cpu().tolist()
    has_pending = table.has_pending[rows].cpu().tolist()
    pending = table.pending_review[rows].cpu().tolist()
    counts = table.count[rows].cpu().tolist()
    out = []
    for n, key in enumerate(ids):
        rating = float(sc[n, 5])
        out.append(
            EntityRow(
                id=key,
                vectors=np.ascontiguousarray(vec[n]),
                bias=float(sc[n, 0]),
                m_bias=float(sc[n, 1]),
                v_bias=float(sc[n, 2]),
                has_memory=bool(has_memory[n]),
                has_pending=bool(has_pending[n]),
                pending_review=learner.cache.reviews[pending[n]] if pending[n] >= 0 else None,
                pending_index=int(pending[n]),
                pending_rating=None if math.isnan(rating) else rating,
                count=int(counts[n]),
                rating_sum=float(sc[n, 3]),
                rating_count=float(sc[n, 4]),
                seen=sorted(learner._seen.get(key, ())) if side == "users" else [],
            )
        )
    return out


def import_rows(learner: DReXLearner, side: str, rows: Sequence[EntityRow]) -> None:
    """Write ``rows`` into ``learner`` (registering unknown ids); overwrites known ones.

    Pending reviews are appended to the learner's review cache (once per object), so the
    learner can fold them in without the encoder.
    """
    if not rows:
        return
    table = _table(learner, side)
    idx = learner._rows(table, [r.id for r in rows])  # grows the table and SparseAdam's state
    device = table.memory.device
    vec = torch.from_numpy(np.stack([r.vectors for r in rows])).to(device)  # (B, 7, D)
    review_index: dict[int, int] = {}
    pending = []
    for r in rows:
        if r.pending_review is None:
            pending.append(-1)
            continue
        key = id(r.pending_review)
        if key not in review_index:
            review_index[key] = len(learner.cache.reviews)
            learner.cache.reviews.append(r.pending_review)
        pending.append(review_index[key])

    def col(values: list[Any], dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=device)

    with torch.no_grad():
        table.memory[idx] = vec[:, 0]
        table.init[idx] = vec[:, 1]
        table.static[idx] = vec[:, 2]
        table.bias[idx] = col([r.bias for r in rows], table.bias.dtype).reshape(-1, 1)
        table.has_memory[idx] = col([r.has_memory for r in rows], torch.bool)
        table.has_pending[idx] = col([r.has_pending for r in rows], torch.bool)
        table.pending_review[idx] = col(pending, torch.long)
        table.pending_rating[idx] = col(
            [math.nan if r.pending_rating is None else r.pending_rating for r in rows],
            table.pending_rating.dtype,
        )
        table.count[idx] = col([r.count for r in rows], torch.long)
        table.rating_sum[idx] = col([r.rating_sum for r in rows], table.rating_sum.dtype)
        table.rating_count[idx] = col([r.rating_count for r in rows], table.rating_count.dtype)
        opt = learner.sparse_optimizer.state
        for name, (m, v) in (("init", (3, 4)), ("static", (5, 6))):
            slot = opt.get(getattr(table, name))
            if slot and "exp_avg" in slot:
                slot["exp_avg"][idx] = vec[:, m]
                slot["exp_avg_sq"][idx] = vec[:, v]
        slot = opt.get(table.bias)
        if slot and "exp_avg" in slot:
            shape = slot["exp_avg"][idx].shape
            slot["exp_avg"][idx] = col([r.m_bias for r in rows], torch.float32).reshape(shape)
            slot["exp_avg_sq"][idx] = col([r.v_bias for r in rows], torch.float32).reshape(shape)
    if side == "users":
        for r in rows:
            if r.seen:
                learner._seen[r.id] = set(r.seen)


def _table(learner: DReXLearner, side: str) -> EntityTable:
    if side == "users":
        return learner.users
    if side == "items":
        return learner.items
    raise ValueError(f"side must be 'users' or 'items', not {side!r}")


# --- entity rows as bytes (for key-value stores) -----------------------------------------

_ROW_HEADER: Final = struct.Struct("<I")


def row_to_bytes(row: EntityRow, review_key: str | None) -> bytes:
    """A compact, pickle-free encoding: u32 header length, JSON header, float32 vectors.

    The pending review itself is stored elsewhere, under ``review_key``.
    """
    header = {
        "v": FORMAT_VERSION,
        "id": row.id,
        "bias": [row.bias, row.m_bias, row.v_bias],
        "mem": row.has_memory,
        "pend": row.has_pending,
        "review": review_key,
        "rating": row.pending_rating,
        "count": row.count,
        "rsum": row.rating_sum,
        "rcount": row.rating_count,
        "seen": row.seen,
        "dim": int(row.vectors.shape[1]),
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    return _ROW_HEADER.pack(len(head)) + head + row.vectors.astype("<f4").tobytes()


def row_from_bytes(
    data: bytes, review: EncodedReview | None = None
) -> tuple[EntityRow, str | None]:
    """Inverse of :func:`row_to_bytes`; returns the row and its pending review key."""
    (n,) = _ROW_HEADER.unpack_from(data)
    header = json.loads(data[4 : 4 + n])
    if header.get("v") != FORMAT_VERSION:
        raise CheckpointError(f"entity row of format {header.get('v')!r}")
    dim = int(header["dim"])
    vectors = np.frombuffer(data, dtype="<f4", offset=4 + n).reshape(len(VECTORS), dim)
    bias, m_bias, v_bias = header["bias"]
    row = EntityRow(
        id=header["id"],
        vectors=vectors.astype(np.float32),
        bias=bias,
        m_bias=m_bias,
        v_bias=v_bias,
        has_memory=header["mem"],
        has_pending=header["pend"],
        pending_review=review,
        pending_rating=header["rating"],
        count=header["count"],
        rating_sum=header["rsum"],
        rating_count=header["rcount"],
        seen=list(header["seen"]),
    )
    return row, header["review"]


def review_to_bytes(review: EncodedReview) -> bytes:
    """An encoded review: u32 header length, JSON (words, sizes), float16 tokens, int32
    word indices."""
    tokens = review.tokens.to(torch.float16).contiguous().cpu().numpy()
    head = json.dumps(
        {"v": FORMAT_VERSION, "words": review.words, "shape": list(tokens.shape)},
        separators=(",", ":"),
    ).encode()
    wot = review.word_of_token.cpu().numpy().astype("<i4")
    return _ROW_HEADER.pack(len(head)) + head + tokens.astype("<f2").tobytes() + wot.tobytes()


def review_from_bytes(data: bytes) -> EncodedReview:
    (n,) = _ROW_HEADER.unpack_from(data)
    header = json.loads(data[4 : 4 + n])
    if header.get("v") != FORMAT_VERSION:
        raise CheckpointError(f"review of format {header.get('v')!r}")
    t, h = header["shape"]
    start = 4 + n
    tokens = np.frombuffer(data, dtype="<f2", count=t * h, offset=start).reshape(t, h)
    wot = np.frombuffer(data, dtype="<i4", count=t, offset=start + 2 * t * h)
    return EncodedReview(
        words=list(header["words"]),
        tokens=torch.from_numpy(tokens.astype(np.float16)),
        word_of_token=torch.from_numpy(wot.astype(np.int64)),
    )


# --- checkpoint folders ------------------------------------------------------------------

MODEL_FILE: Final = "model.safetensors"
ENTITIES_FILE: Final = "entities.safetensors"
ENTITIES_JSON: Final = "entities.json"
CONFIG_FILE: Final = "config.json"
REVIEWS_FILE: Final = "reviews.safetensors"


def save_checkpoint(
    learner: DReXLearner, directory: str | os.PathLike[str], extra: dict[str, Any] | None = None
) -> Path:
    """Write the whole learner into ``directory`` (created); returns it.

    ``extra`` (JSON-able: the worker's settings, offsets) goes into ``config.json``.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / MODEL_FILE).write_bytes(dense_state_bytes(learner))
    pending: list[EncodedReview] = []
    tensors: dict[str, torch.Tensor] = {}
    listing: dict[str, Any] = {}
    for side in SIDES:
        table = _table(learner, side)
        rows = export_rows(learner, side, list(table.ids))
        reviews = []
        for r in rows:
            if r.pending_review is None:
                reviews.append(-1)
            else:
                reviews.append(len(pending))
                pending.append(r.pending_review)
        dim = learner.config.dim
        tensors[f"{side}/vectors"] = (
            torch.from_numpy(np.stack([r.vectors for r in rows]))
            if rows
            else torch.zeros(0, len(VECTORS), dim)
        )
        scalars = [
            [
                r.bias,
                r.m_bias,
                r.v_bias,
                r.rating_sum,
                r.rating_count,
                math.nan if r.pending_rating is None else r.pending_rating,
            ]
            for r in rows
        ]
        tensors[f"{side}/scalars"] = torch.tensor(scalars, dtype=torch.float64).reshape(-1, 6)
        tensors[f"{side}/flags"] = torch.tensor(
            [[r.has_memory, r.has_pending] for r in rows], dtype=torch.bool
        ).reshape(-1, 2)
        tensors[f"{side}/count"] = torch.tensor([r.count for r in rows], dtype=torch.long)
        tensors[f"{side}/review"] = torch.tensor(reviews, dtype=torch.long)
        keywords = learner.user_keywords if side == "users" else learner.item_keywords
        listing[side] = {
            "ids": list(table.ids),
            "seen": {r.id: r.seen for r in rows if r.seen},
            "keywords": {k: keywords.profile(k) for k in keywords.entities()},
        }
    from safetensors.torch import save_file

    save_file(tensors, str(out / ENTITIES_FILE), metadata={"format": str(FORMAT_VERSION)})
    (out / ENTITIES_JSON).write_text(json.dumps(listing), encoding="utf-8")
    _save_reviews(pending, learner.cache.hidden_size, out / REVIEWS_FILE)
    config = {
        "format": FORMAT_VERSION,
        "config": learner.config.to_dict(),
        "step": learner.step,
        "users": len(learner.users),
        "items": len(learner.items),
        "extra": extra or {},
    }
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    return out


def load_checkpoint(
    directory: str | os.PathLike[str],
    encoder: TextEncoder | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> DReXLearner:
    """A learner rebuilt from :func:`save_checkpoint`'s folder.

    Without ``encoder`` it can still fold in the saved pending reviews and predict; it
    needs one to learn from new text.
    """
    from safetensors.torch import load_file

    src = Path(directory)
    config_json = json.loads((src / CONFIG_FILE).read_text(encoding="utf-8"))
    if config_json.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{src}: format {config_json.get('format')!r}")
    config = DReXConfig(**config_json["config"])
    saved_reviews, hidden = _load_reviews(src / REVIEWS_FILE)
    # a fresh cache: import_rows appends the pending reviews it needs
    learner = DReXLearner(
        config, encoder=encoder, cache=ReviewCache(hidden), seed=seed, device=device
    )
    load_dense_state(learner, (src / MODEL_FILE).read_bytes())
    tensors = load_file(str(src / ENTITIES_FILE))
    listing = json.loads((src / ENTITIES_JSON).read_text(encoding="utf-8"))
    for side in SIDES:
        ids = listing[side]["ids"]
        vectors = tensors[f"{side}/vectors"].numpy()
        scalars = tensors[f"{side}/scalars"].numpy()
        flags = tensors[f"{side}/flags"].tolist()
        counts = tensors[f"{side}/count"].tolist()
        reviews = tensors[f"{side}/review"].tolist()
        seen = listing[side]["seen"]
        rows = [
            EntityRow(
                id=key,
                vectors=vectors[n],
                bias=float(scalars[n, 0]),
                m_bias=float(scalars[n, 1]),
                v_bias=float(scalars[n, 2]),
                rating_sum=float(scalars[n, 3]),
                rating_count=float(scalars[n, 4]),
                pending_rating=None if math.isnan(scalars[n, 5]) else float(scalars[n, 5]),
                has_memory=bool(flags[n][0]),
                has_pending=bool(flags[n][1]),
                count=int(counts[n]),
                pending_review=saved_reviews[reviews[n]] if reviews[n] >= 0 else None,
                seen=list(seen.get(key, [])),
            )
            for n, key in enumerate(ids)
        ]
        import_rows(learner, side, rows)
        keywords = learner.user_keywords if side == "users" else learner.item_keywords
        for key, profile in listing[side]["keywords"].items():
            keywords.add(key, profile)
    return learner


def _save_reviews(reviews: Sequence[EncodedReview], hidden: int, path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {
        "tokens": torch.cat([r.tokens.to(torch.float16) for r in reviews])
        if reviews
        else torch.zeros(0, hidden, dtype=torch.float16),
        "word_of_token": torch.cat([r.word_of_token for r in reviews])
        if reviews
        else torch.zeros(0, dtype=torch.long),
        "lengths": torch.tensor([r.tokens.shape[0] for r in reviews], dtype=torch.long),
    }
    meta = {"format": str(FORMAT_VERSION), "words": json.dumps([r.words for r in reviews])}
    save_file(tensors, str(path), metadata=meta)


def _load_reviews(path: Path) -> tuple[list[EncodedReview], int]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != str(FORMAT_VERSION):
        raise CheckpointError(f"{path}: format {meta.get('format')!r}")
    tensors = load_file(str(path))
    words = json.loads(meta["words"])
    out, start = [], 0
    for n, length in enumerate(tensors["lengths"].tolist()):
        out.append(
            EncodedReview(
                words=list(words[n]),
                tokens=tensors["tokens"][start : start + length],
                word_of_token=tensors["word_of_token"][start : start + length],
            )
        )
        start += length
    return out, int(tensors["tokens"].shape[1])


# --- helpers --------------------------------------------------------------------------


def _header_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of safetensors bytes, read without touching the tensors."""
    if len(data) < 8:
        raise CheckpointError("not safetensors data (too short)")
    (n,) = struct.unpack_from("<Q", data)
    if n > len(data) - 8:
        raise CheckpointError("not safetensors data (bad header length)")
    try:
        header = json.loads(data[8 : 8 + n])
    except ValueError as err:
        raise CheckpointError(f"not safetensors data: {err}") from None
    meta = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if torch.is_tensor(value):
        return value.item()
    return value


def _config_diff(saved: dict[str, Any], current: dict[str, Any]) -> str:
    keys = sorted(set(saved) | set(current))
    diffs = [
        f"{k}: saved {saved.get(k)!r}, now {current.get(k)!r}"
        for k in keys
        if saved.get(k) != current.get(k)
    ]
    return "; ".join(diffs) or "(none)"
