"""A FAISS index of item embeddings that keeps answering while the embeddings change.

The learner updates item vectors continuously; recommenders search them at the same time.
An ``IndexIDMap2`` over an exact flat index is the structure that supports both: a new
item is an ``add_with_ids``, a changed one is written over its own row of the flat
storage (microseconds; ``remove_ids`` + ``add_with_ids`` would move every later row, ~4
ms at 100k x 64), a query is exact (~1 ms at 100k x 64 on one core), and
``reconstruct`` returns an item's own vector, which :meth:`ItemIndex.similar` needs.
HNSW is faster to query but cannot remove vectors, and IVF needs trained centroids that
drift as embeddings move (``benchmarks/index_bench.py`` compares them).

FAISS allows concurrent searches but not a search during an update, so a readers-writer
lock lets many searches run together and gives an update the index alone (writers go
first when both wait, so a steady query load cannot starve the learner).

Threads: FAISS releases the GIL while it searches, so concurrent searches from Python
threads run in parallel; but by default it also spreads each query over OpenMP threads,
which on the project's 2-core machines made one single-vector query ~15x slower (15.8 ms
against 1.0 ms). A serving process should start with ``OMP_NUM_THREADS=1`` in its
environment: ``faiss.omp_set_num_threads`` only changes the calling thread, and threads
started later still get the default. ``benchmarks/index_bench.py`` measures both.

GPU: updates write the CPU storage in place; a GPU copy (``faiss.index_cpu_to_gpu``)
would have to be copied again after every change, and at this size a CPU query already
takes ~1 ms, so the index stays on the CPU.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
import orjson

try:
    import faiss
except ModuleNotFoundError as exc:  # an install without the cpu or gpu extra
    raise ModuleNotFoundError(
        "faiss is not installed: install drex with exactly one of its faiss extras,"
        ' `pip install -e ".[cpu]"` (faiss-cpu) or `pip install -e ".[gpu]"` (faiss-gpu)',
        name="faiss",
    ) from exc

Metric = Literal["ip", "cosine", "l2"]
METRICS: Final = ("ip", "cosine", "l2")
INDEX_FILE: Final = "index.faiss"
IDS_FILE: Final = "ids.json"
_FORMAT: Final = 1


class RWLock:
    """Many readers or one writer; a waiting writer blocks new readers (no starvation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writing or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


class ItemIndex:
    """Exact nearest-neighbour search over item vectors addressed by string item ids.

    ``metric``: ``"ip"`` (inner product, higher is closer; what a dot-product
    recommender scores with), ``"cosine"`` (vectors are L2-normalised on the way in and
    on the way out of queries) or ``"l2"`` (squared Euclidean distance, lower is closer).
    FAISS needs int64 labels; each new item id gets the next integer, never reused.
    """

    def __init__(self, dim: int, metric: Metric = "ip") -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.dim = dim
        self.metric: Metric = metric
        flat = faiss.IndexFlatL2(dim) if metric == "l2" else faiss.IndexFlatIP(dim)
        self._index = faiss.IndexIDMap2(flat)
        self._labels: dict[str, int] = {}  # item id -> FAISS label
        self._items: dict[int, str] = {}  # FAISS label -> item id
        self._rows: dict[int, int] = {}  # FAISS label -> row in the flat storage
        self._next_label = 0
        self._lock = RWLock()
        self.refreshed_at = time.time()  # last change (or creation), seconds since the epoch
        self.version = 0  # bumped by every change, so callers can cache per version

    # --- updates (exclusive) ----------------------------------------------------------

    def upsert(self, ids: Sequence[str], vectors: npt.ArrayLike) -> None:
        """Insert new items and replace the vectors of known ones.

        Within one call a repeated id keeps its last vector, as repeated single upserts
        would. Non-finite values are refused: one NaN would poison every query's ranking.
        """
        matrix = self._matrix(vectors)
        if matrix.shape[0] != len(ids):
            raise ValueError(f"{len(ids)} ids but {matrix.shape[0]} vectors")
        if not np.isfinite(matrix).all():
            raise ValueError("vectors contain NaN or infinity")
        last = {item: row for row, item in enumerate(ids)}  # last occurrence wins
        rows = np.fromiter(last.values(), dtype=np.int64, count=len(last))
        matrix = self._normalised(matrix[rows])
        with self._lock.write():
            known = [j for j, item in enumerate(last) if item in self._labels]
            fresh = [j for j, item in enumerate(last) if item not in self._labels]
            items = list(last)
            if known:
                labels = np.asarray([self._labels[items[j]] for j in known], dtype=np.int64)
                self._replace(labels, matrix[known])
            if fresh:
                labels = np.arange(self._next_label, self._next_label + len(fresh), dtype=np.int64)
                self._next_label += len(fresh)
                for j, label in zip(fresh, labels.tolist(), strict=True):
                    self._labels[items[j]] = label
                    self._items[label] = items[j]
                self._add(labels, np.ascontiguousarray(matrix[fresh]))
            self._touch()

    def remove(self, ids: Sequence[str]) -> int:
        """Remove items; unknown ids are ignored. Returns how many were removed.

        Costs a pass over the whole index (FAISS compacts its storage), unlike an update.
        """
        with self._lock.write():
            labels = [self._labels.pop(item) for item in set(ids) if item in self._labels]
            if not labels:
                return 0
            for label in labels:
                del self._items[label]
            self._remove(np.asarray(labels, dtype=np.int64))
            self._touch()
            return len(labels)

    # The three storage operations, under the write lock. Replacing a known vector writes
    # it over its row of the flat storage: O(dim) instead of remove_ids + add_with_ids,
    # which moves every later row (~4 ms per update at 100k x 64 on the project's CPUs).

    def _replace(self, labels: npt.NDArray[np.int64], matrix: npt.NDArray[np.float32]) -> None:
        rows = np.fromiter((self._rows[label] for label in labels.tolist()), np.int64, len(labels))
        flat = faiss.downcast_index(self._index.index)
        if not isinstance(flat, faiss.IndexFlat):  # a subclass over another index overrides this
            raise TypeError(f"in-place replace needs a flat index, not {type(flat).__name__}")
        storage = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * self.dim)
        storage.reshape(flat.ntotal, self.dim)[rows] = matrix

    def _add(self, labels: npt.NDArray[np.int64], matrix: npt.NDArray[np.float32]) -> None:
        start = int(self._index.ntotal)
        self._index.add_with_ids(matrix, labels)
        self._rows.update(zip(labels.tolist(), range(start, start + len(labels)), strict=True))

    def _remove(self, labels: npt.NDArray[np.int64]) -> None:
        self._index.remove_ids(faiss.IDSelectorBatch(labels))
        self._rows = self._rows_of(self._index)

    @staticmethod
    def _rows_of(index: faiss.IndexIDMap2) -> dict[int, int]:
        """Label -> storage row, read from the index itself (after a compaction or a load)."""
        labels = faiss.vector_to_array(index.id_map).tolist()
        return dict(zip(labels, range(len(labels)), strict=True))

    def _touch(self) -> None:
        self.refreshed_at = time.time()
        self.version += 1

    # --- queries (shared) -------------------------------------------------------------

    def search(
        self, vectors: npt.ArrayLike, k: int
    ) -> tuple[list[list[str]], npt.NDArray[np.float32]]:
        """The ``k`` nearest items to each query vector (a 1-D vector is one query).

        Returns ids per query, best first, and their scores as an (n, k') float32 array
        with k' = min(k, len(self)): inner products / cosines, or squared distances for
        "l2".
        """
        queries = self._normalised(self._matrix(vectors))
        with self._lock.read():
            return self._search(queries, k)

    def search_labels(self, vector: npt.ArrayLike, k: int) -> npt.NDArray[np.int64]:
        """FAISS labels of the ``k`` nearest items to one vector, best first: the ids'
        integer handles (:meth:`labels`), for callers that keep their own label -> row
        map and should not pay for a string per hit."""
        queries = self._normalised(self._matrix(vector))
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        with self._lock.read():
            width = min(k, int(self._index.ntotal))
            if width == 0:
                return np.empty(0, dtype=np.int64)
            _, labels = self._index.search(queries, width)
        row = labels[0]
        return row[row >= 0]

    def labels(self, item_ids: Sequence[str]) -> npt.NDArray[np.int64]:
        """The FAISS label of each id (stable for as long as the item stays indexed);
        ``KeyError`` for an id not in the index."""
        with self._lock.read():
            return np.fromiter((self._labels[i] for i in item_ids), np.int64, len(item_ids))

    def search_ids(
        self, item_ids: Sequence[str], k: int
    ) -> tuple[list[list[str]], npt.NDArray[np.float32]]:
        """The ``k`` nearest items to each given item's own vector, the item itself left out.

        Rows have k' = min(k, len(self) - 1) entries. Raises ``KeyError`` for an unknown id.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        with self._lock.read():
            labels = np.asarray([self._labels[item] for item in item_ids], dtype=np.int64)
            if len(labels) == 0:
                return [], np.empty((0, 0), dtype=np.float32)
            queries = self._index.reconstruct_batch(labels)
            found, scores = self._search(np.ascontiguousarray(queries), k + 1)
        width = min(k, len(found[0]) - 1)
        out_ids: list[list[str]] = []
        out_scores = np.empty((len(found), width), dtype=np.float32)
        for row, (item, hits) in enumerate(zip(item_ids, found, strict=True)):
            keep = [j for j, hit in enumerate(hits) if hit != item][:width]
            out_ids.append([hits[j] for j in keep])
            out_scores[row] = scores[row, keep]
        return out_ids, out_scores

    def similar(self, item_id: str, k: int) -> list[tuple[str, float]]:
        """The ``k`` items nearest to ``item_id``'s vector, without itself, with scores."""
        ids, scores = self.search_ids([item_id], k)
        return [(hit, float(score)) for hit, score in zip(ids[0], scores[0], strict=True)]

    def vector(self, item_id: str) -> npt.NDArray[np.float32]:
        """The stored vector of an item (normalised for "cosine"); ``KeyError`` if unknown."""
        with self._lock.read():
            return np.asarray(self._index.reconstruct(self._labels[item_id]), dtype=np.float32)

    def ids(self) -> list[str]:
        """The indexed item ids, in insertion order of their first upsert."""
        with self._lock.read():
            return list(self._labels)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._labels

    def age_seconds(self) -> float:
        """Seconds since the last change: how stale the answers may be, for health checks."""
        return time.time() - self.refreshed_at

    def _search(
        self, queries: npt.NDArray[np.float32], k: int
    ) -> tuple[list[list[str]], npt.NDArray[np.float32]]:
        """Search under a lock the caller holds; drops FAISS's -1 padding."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        width = min(k, int(self._index.ntotal))
        if width == 0:
            return [[] for _ in range(len(queries))], np.empty((len(queries), 0), np.float32)
        scores, labels = self._index.search(queries, width)
        items = self._items
        ids = [[items[int(label)] for label in row if label >= 0] for row in labels]
        return ids, np.asarray(scores, dtype=np.float32)

    def _matrix(self, vectors: npt.ArrayLike) -> npt.NDArray[np.float32]:
        matrix = np.asarray(vectors, dtype=np.float32)
        if matrix.ndim == 1:
            matrix = matrix.reshape(1, -1)
        if matrix.ndim != 2 or matrix.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape (n, {self.dim}), got {matrix.shape}")
        return np.ascontiguousarray(matrix)

    def _normalised(self, matrix: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        if self.metric != "cosine":
            return matrix
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        return np.ascontiguousarray(matrix / np.where(norms > 0, norms, 1.0), dtype=np.float32)

    # --- persistence ------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``index.faiss`` and ``ids.json`` (no pickle: both are safe to load).

        Each file is written to a temporary name and renamed, so a crash mid-save leaves
        the previous files, not a half-written one. Returns the directory.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        with self._lock.read():
            meta = {
                "format": _FORMAT,
                "dim": self.dim,
                "metric": self.metric,
                "next_label": self._next_label,
                "refreshed_at": self.refreshed_at,
                "version": self.version,
                "ids": list(self._labels.items()),
            }
            tmp_index = out / f".{INDEX_FILE}.tmp"
            faiss.write_index(self._index, str(tmp_index))
        tmp_ids = out / f".{IDS_FILE}.tmp"
        tmp_ids.write_bytes(orjson.dumps(meta))
        os.replace(tmp_index, out / INDEX_FILE)
        os.replace(tmp_ids, out / IDS_FILE)
        return out

    def to_bytes(self) -> bytes:
        """The whole index as one value (u32 header length, JSON header, the FAISS index
        as ``faiss.serialize_index`` writes it): what the worker publishes in the learner
        store for servers. :meth:`from_bytes` reads it; nothing is unpickled."""
        with self._lock.read():
            meta = {
                "format": _FORMAT,
                "kind": "ivf" if isinstance(self, IVFItemIndex) else "flat",
                "dim": self.dim,
                "metric": self.metric,
                "next_label": self._next_label,
                "refreshed_at": self.refreshed_at,
                "version": self.version,
                "trained_on": getattr(self, "trained_on", 0),
                "ids": list(self._labels.items()),
            }
            blob = faiss.serialize_index(self._index).tobytes()
        head = orjson.dumps(meta)
        return struct.pack("<I", len(head)) + head + blob

    @staticmethod
    def from_bytes(data: bytes) -> ItemIndex:
        """Read :meth:`to_bytes`'s value (an :class:`IVFItemIndex` when it was one)."""
        (n,) = struct.unpack_from("<I", data)
        meta = orjson.loads(data[4 : 4 + n])
        if meta.get("format") != _FORMAT:
            raise ValueError(f"item index of unknown format {meta.get('format')!r}")
        stored: Any = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8, offset=4 + n))
        index: ItemIndex
        if meta["kind"] == "ivf":
            index = IVFItemIndex.__new__(IVFItemIndex)
            ItemIndex.__init__(index, int(meta["dim"]), meta["metric"])
            index.trained_on = int(meta["trained_on"])
        else:
            index = ItemIndex(int(meta["dim"]), meta["metric"])
        labels = {str(item): int(label) for item, label in meta["ids"]}
        if stored.d != index.dim or stored.ntotal != len(labels):
            raise ValueError("the item index's header and FAISS data disagree")
        index._index = stored
        index._labels = labels
        index._items = {label: item for item, label in labels.items()}
        index._rows = ItemIndex._rows_of(stored) if meta["kind"] == "flat" else {}
        index._next_label = int(meta["next_label"])
        index.refreshed_at = float(meta["refreshed_at"])
        index.version = int(meta["version"])
        return index

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> ItemIndex:
        """Read what :meth:`save` wrote; ``ValueError`` if the two files disagree."""
        src = Path(directory)
        meta = orjson.loads((src / IDS_FILE).read_bytes())
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{src / IDS_FILE}: unknown format {meta.get('format')!r}")
        index = cls(int(meta["dim"]), meta["metric"])
        stored = faiss.read_index(str(src / INDEX_FILE))
        if not isinstance(stored, faiss.IndexIDMap2) or stored.d != index.dim:
            raise ValueError(f"{src / INDEX_FILE} is not an IndexIDMap2 of dim {index.dim}")
        labels = {str(item): int(label) for item, label in meta["ids"]}
        stored_labels = faiss.vector_to_array(stored.id_map)
        if len(stored_labels) != len(labels) or set(stored_labels.tolist()) != set(labels.values()):
            raise ValueError(f"{src}: {IDS_FILE} and {INDEX_FILE} hold different items")
        index._index = stored
        index._labels = labels
        index._items = {label: item for item, label in labels.items()}
        index._rows = cls._rows_of(stored)
        index._next_label = int(meta["next_label"])
        index.refreshed_at = float(meta["refreshed_at"])
        index.version = int(meta["version"])
        return index


class IVFItemIndex(ItemIndex):
    """The same interface over inverted lists (``IndexIVFFlat``): for large catalogues.

    A query scans the ``nprobe`` lists whose centroids are nearest instead of every item
    (at 100,000 x 64 on the project's 2-core machine: ~0.1-0.2 ms against ~3 ms for the
    exact scan), at the price of neighbours in lists it does not probe. A changed vector
    is removed and added again (found through a hash-table direct map, so the cost is
    that of one list, not of the index), which may move it to another list. Centroids
    are trained once, on the vectors given at construction; as embeddings drift they
    fit less well, so the owner rebuilds the index when the catalogue has grown a lot
    (the worker's index agent, streams/agents/index.py, at twice the trained size).

    Built in memory by its owner: :meth:`save` refuses (the worker's saved index is the
    exact one).
    """

    def __init__(
        self,
        dim: int,
        train: npt.ArrayLike,
        nlist: int | None = None,
        nprobe: int = 16,
        metric: Metric = "ip",
    ) -> None:
        super().__init__(dim, metric)
        sample = self._normalised(self._matrix(train))
        if nlist is None:
            nlist = max(1, min(4096, len(sample) // 100))  # ~100 items per list
        if len(sample) < nlist:
            raise ValueError(f"{len(sample)} training vectors for {nlist} lists")
        faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        self._quantizer = faiss.IndexFlatL2(dim) if metric == "l2" else faiss.IndexFlatIP(dim)
        ivf = faiss.IndexIVFFlat(self._quantizer, dim, nlist, faiss_metric)
        ivf.train(sample)
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
        ivf.nprobe = min(nprobe, nlist)
        self._index = ivf  # type: ignore[assignment]  # the base class keeps an IndexIDMap2
        self.trained_on = len(sample)

    def _replace(self, labels: npt.NDArray[np.int64], matrix: npt.NDArray[np.float32]) -> None:
        self._remove(labels)
        self._index.add_with_ids(np.ascontiguousarray(matrix), labels)

    def _add(self, labels: npt.NDArray[np.int64], matrix: npt.NDArray[np.float32]) -> None:
        self._index.add_with_ids(matrix, labels)

    def _remove(self, labels: npt.NDArray[np.int64]) -> None:
        labels = np.ascontiguousarray(labels, dtype=np.int64)  # the hash map wants an array
        self._index.remove_ids(faiss.IDSelectorArray(len(labels), faiss.swig_ptr(labels)))

    def save(self, directory: str | os.PathLike[str]) -> Path:
        raise TypeError("an IVFItemIndex is built in memory by its owner; save an ItemIndex")
