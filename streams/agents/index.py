"""Item representations -> the FAISS index that serving searches.

After every learner micro-batch the items it changed are upserted into a
:class:`serving.index.ItemIndex` (exact inner product over an ``IndexIDMap2``, rows
overwritten in place, so an update costs microseconds and never blocks searches for
long). The learner's thread does the upsert right after its batch, so the index is never
older than the last persisted batch; a timer saves it to ``STATE_DIR/index`` every
``index_save_every`` seconds (files replaced atomically) for serving processes to load.

Only the worker that holds the learner has an index; on taking the learner over, the
index is rebuilt from the restored item representations.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from serving.index import ItemIndex
from streams import metrics

if TYPE_CHECKING:
    import faust

    from streams.settings import WorkerSettings

logger = logging.getLogger(__name__)


class IndexFeeder:
    """Keeps an :class:`ItemIndex` equal to the learner's item representations."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.index: ItemIndex | None = None
        self.saved_version = -1
        metrics.bind_gauge(metrics.FAISS_SIZE, lambda: len(self.index) if self.index else 0)
        metrics.bind_gauge(metrics.FAISS_AGE, self.age_seconds)

    def rebuild(self, dim: int, ids: Sequence[str], vectors: npt.ArrayLike) -> None:
        """A fresh index of exactly these items (after the learner was restored)."""
        index = ItemIndex(dim, metric="ip")
        if len(ids):
            index.upsert(ids, vectors)
        self.index = index

    def upsert(self, ids: Sequence[str], vectors: npt.ArrayLike) -> None:
        if self.index is None:
            self.rebuild(np.asarray(vectors).shape[-1], ids, vectors)
        elif len(ids):
            self.index.upsert(ids, vectors)

    def age_seconds(self) -> float:
        """Seconds since the index last changed (0 without an index)."""
        return self.index.age_seconds() if self.index is not None else 0.0

    def save(self) -> Path | None:
        """Write the index if it changed since the last save; returns the folder."""
        index = self.index
        if index is None or index.version == self.saved_version:
            return None
        version = index.version
        out = index.save(self.directory)
        self.saved_version = version
        return out

    def drop(self) -> None:
        """Forget the index (the learner moved to another worker)."""
        self.index = None


def register(app: faust.App, settings: WorkerSettings, feeder: IndexFeeder) -> None:
    """Save ``feeder``'s index periodically (off the event loop)."""
    if settings.index_save_every <= 0:
        return

    async def save_index() -> None:
        started = time.monotonic()
        out = await asyncio.to_thread(feeder.save)
        if out is not None:
            logger.info("saved the item index to %s in %.2f s", out, time.monotonic() - started)

    app.timer(settings.index_save_every, name="drex.index-save")(save_index)
