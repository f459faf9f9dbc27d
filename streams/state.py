"""The learner and its store: restore one from the other, and write a micro-batch.

The store itself (key layout, atomic writes, delivery semantics) is
``drex_store/learner.py`` and imports no torch; this module is the torch side: it turns
a :class:`~drex_model.learner.DReXLearner` into store values and back, through the
learner's public surface and ``drex_model.checkpoint``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

from drex_model.checkpoint import (
    CheckpointError,
    dense_state_bytes,
    encoded_review,
    export_cooccurrence,
    export_rows,
    import_cooccurrence,
    import_rows,
    load_dense_state,
    review_arrays,
)
from drex_model.formats import EntityRow, review_from_bytes, review_to_bytes
from drex_model.learner import DReXLearner
from drex_model.text import EncodedReview
from drex_store.learner import BatchWrite, LearnerStore, StoreInfo

_RESTORE_CHUNK: Final = 4096


def restore(store: LearnerStore, learner: DReXLearner, encoder: Mapping[str, Any]) -> StoreInfo:
    """Load the stored state into a fresh ``learner``; returns ``m:info``.

    Raises :class:`~drex_model.checkpoint.CheckpointError` when the store was written by
    a learner with another config, or with another text encoder than ``encoder`` (its
    identity, ``TextEncoder.identity``): a store's representations mean nothing to
    another encoder, even one of the same width.
    """
    info = store.info()
    dense = store.dense()
    if dense is None:
        return info
    saved = store.encoder()
    if saved is not None and dict(saved) != dict(encoder):
        raise CheckpointError(
            f"the store was written with another text encoder: saved {saved}, now {dict(encoder)}"
        )
    load_dense_state(learner, dense)
    learner.step = info.step
    for side in ("users", "items"):
        chunk: list[EntityRow] = []
        for row in store.entity_rows(side):
            key = row.pending_key
            if key is not None and learner.cache.index_of(key) is None:
                if learner.cache.loader is not None:  # read when first needed
                    learner.cache.add_unloaded(key)
                else:
                    row.pending_review = stored_review(store, key)
                    if row.pending_review is None:
                        raise CheckpointError(f"{store.path}: review {key} missing")
            chunk.append(row)
            if len(chunk) >= _RESTORE_CHUNK:
                import_rows(learner, side, chunk)
                chunk = []
        import_rows(learner, side, chunk)
        records = list(store.keyword_records(side))
        learner.load_keywords(side, {k: a for k, a, _, _ in records})
        if side == "items":
            for item, _, _, quotes in records:
                if quotes:
                    learner.quotes.load(item, quotes)
    import_cooccurrence(
        learner, {item: (users, pairs) for item, users, pairs in store.cooccurrence()}
    )
    learner.cooccurrence.take_changed()  # as stored: nothing to write back
    learner.vocabulary.load(store.vocabulary(), store.vocabulary_mass())
    return info


def stored_review(store: LearnerStore, key: str) -> EncodedReview | None:
    """The encoded review of content key ``key`` as ``store`` holds it (None: absent):
    the review cache's loader in the worker (``ReviewCache.loader``)."""
    blob = store.review(key)
    return None if blob is None else encoded_review(review_from_bytes(blob))


def batch_write(
    store: LearnerStore,
    learner: DReXLearner,
    info: StoreInfo,
    changed: Mapping[str, Sequence[str]],
    applied_ids: Sequence[str],
    dense: bool,
    encoder: Mapping[str, Any] | None = None,
    categories: Mapping[str, Sequence[str]] | None = None,
) -> BatchWrite:
    """Everything a micro-batch changed, read off ``learner``: the ``changed`` ids' rows,
    keyword records (items' with their quotes) and representations, the co-occurrence
    rows and vocabulary rows changed since the last write, the reviews their pending
    messages need that the store lacks, the dense state when ``dense``, and the items'
    ``categories`` that the batch's events gave (item metadata, not learned).

    Quotes change only for items with an interaction in the batch (``learn_many``), all
    of which are in ``changed``, so their records carry them."""
    rows = {side: export_rows(learner, side, ids) for side, ids in changed.items()}
    views = {side: learner.snapshot(side, ids) for side, ids in changed.items()}
    needed = {
        r.pending_key: r.pending_review
        for side_rows in rows.values()
        for r in side_rows
        if r.pending_key is not None
    }
    reviews = {
        key: review_to_bytes(review_arrays(needed[key])) for key in store.missing_reviews(needed)
    }
    learner.quotes.changed.clear()  # written below with every item record
    words = learner.vocabulary.drain()
    return BatchWrite(
        info=info,
        rows=rows,
        keywords={
            side: {
                key: (a, b)
                for key, a, b in zip(changed[side], view.learned, view.pending, strict=True)
            }
            for side, view in views.items()
        },
        applied_ids=applied_ids,
        dense=dense_state_bytes(learner) if dense else None,
        representations={
            side: dict(zip(changed[side], view.vectors, strict=True))
            for side, view in views.items()
        },
        reviews=reviews,
        encoder=encoder,
        cooccurrence=export_cooccurrence(
            learner, [learner.items.ids[r] for r in sorted(learner.cooccurrence.take_changed())]
        ),
        quotes={item: learner.quotes.get(item) for item in changed.get("items", ())},
        words=words,
        words_mass=learner.vocabulary.mass if words else None,
        categories=categories or {},
    )


def next_info(
    info: StoreInfo, offset: int, applied: int, step: int, last_id: str | None = None
) -> StoreInfo:
    """``m:info`` after one more micro-batch whose last record, ``last_id``, is at
    ``offset``: the fingerprint of the topic incarnation the offset belongs to
    (streams/source.py). A batch wholly at or below the stored offset keeps both."""
    ahead = offset > info.offset
    return dataclasses.replace(
        info,
        offset=offset if ahead else info.offset,
        last_id=last_id if ahead else info.last_id,
        applied=info.applied + applied,
        batches=info.batches + 1,
        step=step,
        updated_at=time.time(),
    )
