"""Save and restore a :class:`~drex_model.learner.DReXLearner`, safely and in pieces.

Two granularities, because the streaming worker and a human need different things:

* **Pieces** for an incremental store (the learner store, ``drex_store/learner.py``): the
  *dense* part (the shared network, both optimisers' state, the step counter and the
  config) as one safetensors blob, :func:`dense_state_bytes` / :func:`load_dense_state`,
  and each user's or item's complete state as an :class:`EntityRow`,
  :func:`export_rows` / :func:`import_rows`. A micro-batch only rewrites the rows it
  touched, and the dense blob only when an optimiser step happened.
* **Folders** (:func:`save_checkpoint` / :func:`load_checkpoint`): everything in
  ``model.safetensors``, ``entities.safetensors``, ``entities.json`` (ids, seen items,
  keyword profiles, items' quotes, co-occurrence, the explanations' vocabulary),
  ``reviews.safetensors`` and ``config.json``, for serving and for people.

Only safetensors and JSON are ever written or read: nothing here unpickles, so loading a
checkpoint cannot run code. Every blob carries :data:`FORMAT_VERSION`; a reader refuses
another version and a config other than the learner's, instead of misreading them.

What an entity row holds: see :class:`drex_model.formats.EntityRow` (byte formats
live in that torch-free module). Pending reviews travel by their content key. Not
saved: gradients accumulated towards the next optimiser step (at most
``step_size`` rated interactions' worth; a restored learner starts a fresh accumulation)
and drex-mlp's preference ratings (that variant needs a fixed catalogue).

This module is the learner's serialisation, written against its public surface
(``table``, ``register``, ``seen_items``, ``discard_partial_step``, the optimisers),
kept out of ``learner.py`` so that the learning code stays one readable file.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from drex_model.formats import (
    FORMAT_VERSION,
    SIDES,
    VECTORS,
    EntityRow,
    FormatError,
    ReviewArrays,
    dense_metadata,
    safetensors_metadata,
)
from drex_model.learner import DReXLearner
from drex_model.model import DReXConfig
from drex_model.reasons import Quote
from drex_model.text import EncodedReview, ReviewCache, TextEncoder

_PARAMS: Final = ("init", "bias", "static")
__all__ = ["CheckpointError", "EntityRow", "dense_metadata"]  # re-exported for callers

CheckpointError = FormatError  # another format version, another config, or damaged


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
    meta = safetensors_metadata(data)
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
        table = learner.table(side)
        for name in _PARAMS:
            n = int(steps.get(f"{side}.{name}", 0))
            param = getattr(table, name)
            if n > 0:
                slot = learner.sparse_optimizer.state[param]
                slot["step"] = n
                slot.setdefault("exp_avg", torch.zeros_like(param))
                slot.setdefault("exp_avg_sq", torch.zeros_like(param))
    learner.step = info["step"]
    learner.discard_partial_step()  # the partial gradient is not saved: start a new one
    return dict(info["extra"])


def _sparse_steps(learner: DReXLearner) -> dict[str, int]:
    out = {}
    for side in SIDES:
        table = learner.table(side)
        for name in _PARAMS:
            slot = learner.sparse_optimizer.state.get(getattr(table, name), {})
            out[f"{side}.{name}"] = int(slot.get("step", 0))
    return out


# --- entity rows --------------------------------------------------------------------------


def export_rows(learner: DReXLearner, side: str, ids: Sequence[str]) -> list[EntityRow]:
    """The rows of known ``ids`` of ``side`` ("users" or "items"); unknown ids raise."""
    table = learner.table(side)
    missing = [k for k in ids if k not in table.index]
    if missing:
        raise KeyError(f"unknown {side}: {missing[:5]}")
    cache = learner.cache
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
        content = table.content[rows].float().cpu().numpy()  # (B, H)
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
                pending_key=cache.key(pending[n]) if pending[n] >= 0 else None,
                pending_review=cache.get(pending[n]) if pending[n] >= 0 else None,
                pending_rating=None if math.isnan(rating) else rating,
                count=int(counts[n]),
                rating_sum=float(sc[n, 3]),
                rating_count=float(sc[n, 4]),
                seen=learner.seen_in_order(key) if side == "users" else [],
                content=np.ascontiguousarray(content[n]),
            )
        )
    return out


def export_cooccurrence(
    learner: DReXLearner, items: Iterable[str] | None = None
) -> dict[str, tuple[float, dict[str, float]]]:
    """The co-occurrence state of ``items`` (None: all) by item id: (users who picked
    it, {item id: users who picked both})."""
    co, table = learner.cooccurrence, learner.items
    rows = co.users if items is None else [table.index[i] for i in items if i in table.index]
    ids = table.ids
    out = {}
    for row in rows:  # a row is re-read whole after each change: map its keys in C
        users, pairs = co.row(row)
        out[ids[row]] = (users, dict(zip(map(ids.__getitem__, pairs), pairs.values(), strict=True)))
    return out


def import_cooccurrence(
    learner: DReXLearner, records: Mapping[str, tuple[float, Mapping[str, float]]]
) -> None:
    """Take :func:`export_cooccurrence`'s records back (registering unknown items)."""
    every = sorted({*records, *(j for _, pairs in records.values() for j in pairs)})
    learner.register("items", every)
    index = learner.items.index
    learner.cooccurrence.load(
        (index[i], users, {index[j]: c for j, c in pairs.items()})
        for i, (users, pairs) in records.items()
    )


def import_rows(learner: DReXLearner, side: str, rows: Sequence[EntityRow]) -> None:
    """Write ``rows`` into ``learner`` (registering unknown ids); overwrites known ones.

    Pending reviews go into the learner's review cache under their content key, so the
    learner can fold them in without the encoder; a row with a pending key must carry
    its review (``pending_review``) unless the cache holds that key already.
    """
    if not rows:
        return
    table = learner.table(side)
    idx = learner.register(side, [r.id for r in rows])  # grows the table and SparseAdam's
    device = table.memory.device
    vec = torch.from_numpy(np.stack([r.vectors for r in rows])).to(device)  # (B, 7, D)
    pending = [_cached_review(learner.cache, r) for r in rows]

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
        width = table.content.shape[1]
        if width:
            content = np.zeros((len(rows), width), dtype=np.float32)
            for n, r in enumerate(rows):
                if r.content.shape == (width,):
                    content[n] = r.content
            table.content[idx] = torch.from_numpy(content).to(device)
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
                learner.set_seen_items(r.id, r.seen)


def _cached_review(cache: ReviewCache, row: EntityRow) -> int:
    """The cache's review id of ``row``'s pending review (-1: none), adding it."""
    if row.pending_key is None:
        if row.pending_review is not None:
            raise ValueError(f"{row.id!r}: a pending review needs its content key")
        return -1
    if row.pending_review is None:
        found = cache.index_of(row.pending_key)
        if found is None:
            raise KeyError(f"review {row.pending_key} of {row.id!r} is neither given nor cached")
        return found
    return cache.put(row.pending_key, row.pending_review)


def review_arrays(review: EncodedReview) -> ReviewArrays:
    """A review as numpy arrays (drex_model.formats.review_to_bytes encodes those)."""
    return ReviewArrays(
        list(review.words),
        review.tokens.to(torch.float16).contiguous().cpu().numpy(),
        review.word_of_token.cpu().numpy().astype(np.int64),
    )


def encoded_review(arrays: ReviewArrays) -> EncodedReview:
    return EncodedReview(
        words=list(arrays.words),
        tokens=torch.from_numpy(np.ascontiguousarray(arrays.tokens, dtype=np.float16)),
        word_of_token=torch.from_numpy(np.asarray(arrays.word_of_token, dtype=np.int64)),
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
    review_at: dict[str, int] = {}  # content key -> position in reviews.safetensors
    tensors: dict[str, torch.Tensor] = {}
    listing: dict[str, Any] = {}
    for side in SIDES:
        table = learner.table(side)
        rows = export_rows(learner, side, list(table.ids))
        reviews = []
        for r in rows:
            if r.pending_review is None or r.pending_key is None:
                reviews.append(-1)
            else:  # once per review: a user and an item often share their pending one
                if r.pending_key not in review_at:
                    review_at[r.pending_key] = len(pending)
                    pending.append(r.pending_review)
                reviews.append(review_at[r.pending_key])
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
        tensors[f"{side}/content"] = table.content[: len(table)].float().cpu().contiguous()
        keywords = learner.keywords(side)
        listing[side] = {
            "ids": list(table.ids),
            "seen": {r.id: r.seen for r in rows if r.seen},
            "keywords": {k: keywords.profile(k) for k in keywords.entities()},
        }
    listing["items"]["quotes"] = {
        i: [q.to_record() for q in learner.quotes.get(i)] for i in learner.quotes.items()
    }
    listing["cooccurrence"] = export_cooccurrence(learner)
    vocabulary = learner.vocabulary
    listing["vocabulary"] = {"mass": vocabulary.mass, "words": vocabulary.words}
    from safetensors.torch import save_file

    save_file(tensors, str(out / ENTITIES_FILE), metadata={"format": str(FORMAT_VERSION)})
    (out / ENTITIES_JSON).write_text(json.dumps(listing), encoding="utf-8")
    _save_reviews(pending, list(review_at), learner.cache.hidden_size, out / REVIEWS_FILE)
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
    saved_reviews, review_keys, hidden = _load_reviews(src / REVIEWS_FILE)
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
        content = tensors.get(f"{side}/content", torch.zeros(len(ids), 0)).numpy()
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
                pending_key=review_keys[reviews[n]] if reviews[n] >= 0 else None,
                pending_review=saved_reviews[reviews[n]] if reviews[n] >= 0 else None,
                seen=list(seen.get(key, [])),
                content=content[n],
            )
            for n, key in enumerate(ids)
        ]
        import_rows(learner, side, rows)
        learner.load_keywords(side, listing[side]["keywords"])
    import_cooccurrence(
        learner, {i: (u, p) for i, (u, p) in listing.get("cooccurrence", {}).items()}
    )
    for item, quotes in listing["items"].get("quotes", {}).items():
        learner.quotes.load(item, [Quote.from_record(q) for q in quotes])
    vocabulary = listing.get("vocabulary", {"mass": 0.0, "words": {}})
    learner.vocabulary.load(vocabulary["words"].items(), vocabulary["mass"])
    return learner


def _save_reviews(
    reviews: Sequence[EncodedReview], keys: Sequence[str], hidden: int, path: Path
) -> None:
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
    meta = {
        "format": str(FORMAT_VERSION),
        "words": json.dumps([r.words for r in reviews]),
        "keys": json.dumps(list(keys)),
    }
    save_file(tensors, str(path), metadata=meta)


def _load_reviews(path: Path) -> tuple[list[EncodedReview], list[str], int]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != str(FORMAT_VERSION):
        raise CheckpointError(f"{path}: format {meta.get('format')!r}")
    tensors = load_file(str(path))
    words = json.loads(meta["words"])
    keys = json.loads(meta["keys"])
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
    return out, keys, int(tensors["tokens"].shape[1])


# --- helpers --------------------------------------------------------------------------


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
