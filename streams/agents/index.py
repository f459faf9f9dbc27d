"""Item representations -> the FAISS index that servers answer from.

The stream keeps the one item index: after every learner micro-batch, the items it
changed are upserted into a :class:`drex_store.index.ItemIndex` (exact inner product over
an ``IndexIDMap2``, rows overwritten in place: microseconds per item), or, from
:data:`IVF_MIN_ITEMS` items on, an :class:`~drex_store.index.IVFItemIndex` whose inverted
lists are trained here and trained again when the catalogue has doubled. The learner's
thread does the upsert right after its batch, so the index is never older than the last
persisted batch.

Servers get it through the learner store: the index is *published* there
(``LearnerStore.put_index``: the serialised index and the batch it reflects) when the
learner is taken over, at most every ``index_save_every`` seconds while it changes
(0: after every micro-batch), and when the learner is released. A server loads the
newest snapshot and upserts the items changed after its batch from the store's change
records, so it answers from the stream's index without training or building one.

Only the worker that holds the learner has an index; on taking the learner over, the
index is rebuilt from the restored item representations and published.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from drex_store.index import ItemIndex, IVFItemIndex
from streams import metrics

IVF_MIN_ITEMS: Final = 20_000  # from this catalogue size on, inverted lists


class IndexFeeder:
    """Keeps the item index equal to the learner's item representations and publishes
    it into the learner store."""

    def __init__(self, publish_every: float = 60.0) -> None:
        self.publish_every = publish_every
        self.index: ItemIndex | None = None
        self.published_version = -1
        self.published_at = 0.0
        metrics.bind_gauge(metrics.FAISS_SIZE, lambda: len(self.index) if self.index else 0)
        metrics.bind_gauge(metrics.FAISS_AGE, self.age_seconds)

    def rebuild(self, dim: int, ids: Sequence[str], vectors: npt.ArrayLike) -> None:
        """A fresh index of exactly these items (after the learner was restored, or to
        train the inverted lists again on today's catalogue)."""
        matrix = np.asarray(vectors, dtype=np.float32).reshape(len(ids), dim)
        index = IVFItemIndex(dim, matrix) if len(ids) >= IVF_MIN_ITEMS else ItemIndex(dim)
        if len(ids):
            index.upsert(ids, matrix)
        self.index = index
        self.published_version = -1  # a new index: publish it at the next chance

    def upsert(self, ids: Sequence[str], vectors: npt.ArrayLike) -> None:
        if self.index is None:
            self.rebuild(np.asarray(vectors).shape[-1], ids, vectors)
        elif len(ids):
            self.index.upsert(ids, vectors)

    def needs_training(self) -> bool:
        """Whether the catalogue outgrew the index: an exact index past
        :data:`IVF_MIN_ITEMS` items, or inverted lists at twice the size trained on."""
        index = self.index
        if index is None:
            return False
        if isinstance(index, IVFItemIndex):
            return len(index) >= 2 * index.trained_on
        return len(index) >= IVF_MIN_ITEMS

    def publish(self, store: Any, batch: int, force: bool = False) -> bool:
        """Write the index into ``store`` as of learner batch ``batch`` when it changed
        and ``publish_every`` seconds passed since the last time (``force``: whenever it
        changed). Returns whether it wrote."""
        index = self.index
        if index is None or index.version == self.published_version:
            return False
        now = time.monotonic()
        if not force and now - self.published_at < self.publish_every:
            return False
        version = index.version
        store.put_index(batch, index.to_bytes())
        self.published_version, self.published_at = version, now
        return True

    def age_seconds(self) -> float:
        """Seconds since the index last changed (0 without an index)."""
        return self.index.age_seconds() if self.index is not None else 0.0

    def drop(self) -> None:
        """Forget the index (the learner moved to another worker)."""
        self.index = None
        self.published_version = -1
