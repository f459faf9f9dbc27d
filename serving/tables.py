"""The replica's tables: one side's rows in numpy, and how store values reach them.

:class:`SideTable` holds what the rating head and the explanations read per user or
item (representation, its first-layer projection, bias, rating sums, the score's
constant, review content, the shown keyword profile's heaviest words, an item's quotes,
seen items) in growable arrays;
:func:`read_side` reads a side's changed values from the learner store and
:func:`write_side` applies them;
:func:`stream_index` turns the worker's published item index into this replica's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from drex_model.affinity import CoOccurrence
from drex_model.formats import (
    EntityRow,
    dense_arrays,
    dense_metadata,
    representation_from_bytes,
    row_from_bytes,
    shown_profile,
)
from drex_model.reasons import PROFILE_WORDS, Quote
from drex_model.scoring import Head, top_keywords
from drex_store.index import ItemIndex
from drex_store.learner import LearnerStore


class SideTable:
    """One side's rows in growable arrays; ids map to rows, rows are never reused."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self.vectors = np.zeros((0, dim), dtype=np.float32)
        self.hidden = np.zeros((0, dim), dtype=np.float32)  # W u (+ b) per row
        self.has_vector = np.zeros(0, dtype=bool)
        self.bias = np.zeros(0)
        self.rating_sum = np.zeros(0)
        self.rating_count = np.zeros(0)
        self.count = np.zeros(0, dtype=np.int64)
        self.updated = np.zeros(0)
        self.const = np.zeros(0)  # per-row constant of the score (biases, deviation)
        self.content = np.zeros((0, 0), dtype=np.float32)  # (N, H) review content, unit
        # the shown profile's PROFILE_WORDS heaviest words, heaviest first: all that
        # reasons.explain reads of a profile, so explanations are the learner's
        self.keywords: dict[str, dict[str, float]] = {}
        self.quotes: dict[str, list[Quote]] = {}  # items only
        self.seen: dict[str, frozenset[str]] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, ids: Sequence[str]) -> npt.NDArray[np.int64]:
        """Rows of ``ids``, adding the unknown ones."""
        new = [k for k in dict.fromkeys(ids) if k not in self.index]
        if new:
            start = len(self.ids)
            for n, k in enumerate(new):
                self.index[k] = start + n
            self.ids.extend(new)
            self._grow(len(self.ids))
        return np.fromiter((self.index[k] for k in ids), dtype=np.int64, count=len(ids))

    def _grow(self, size: int) -> None:
        capacity = len(self.bias)
        if size <= capacity:
            return
        capacity = max(size, 2 * capacity, 64)

        def grown(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
            out = np.zeros((capacity, *a.shape[1:]), dtype=a.dtype)
            out[: len(a)] = a
            return out

        for name in ("vectors", "hidden", "has_vector", "bias", "rating_sum", "rating_count"):
            setattr(self, name, grown(getattr(self, name)))
        for name in ("count", "updated", "const", "content"):
            setattr(self, name, grown(getattr(self, name)))


@dataclass
class SideRead:
    """What was read from the store for one side, before it is applied."""

    rows: dict[str, EntityRow] = field(default_factory=dict)
    vectors: dict[str, npt.NDArray[np.float32]] = field(default_factory=dict)
    updated: dict[str, float] = field(default_factory=dict)
    keywords: dict[str, dict[str, float]] = field(default_factory=dict)
    quotes: dict[str, list[Quote]] = field(default_factory=dict)


def read_side(
    store: LearnerStore, side: str, ids: Iterable[str] | None, decay: float = 1.0
) -> SideRead:
    """Rows, representations, keyword profiles (their :data:`PROFILE_WORDS` heaviest
    words, the pending review's folded in with ``decay``, as the learner shows them) and
    items' quotes of ``ids`` (None: all) of one side."""
    out = SideRead()
    for entity, raw in store.rows(side, ids):
        out.rows[entity] = row_from_bytes(raw)
    for entity, raw in store.representations(side, ids):
        at, vector = representation_from_bytes(raw)
        out.vectors[entity] = vector
        out.updated[entity] = at
    for entity, learned, pending, quotes in store.keyword_records(side, ids):
        profile = shown_profile(learned, pending, decay)
        out.keywords[entity] = dict(top_keywords(profile, PROFILE_WORDS))
        if side == "items":
            out.quotes[entity] = quotes
    return out


def write_side(table: SideTable, read: SideRead, head: Head, side: str) -> None:
    ids = list(read.rows)
    if not ids:
        return
    rows = table.rows(ids)
    table.bias[rows] = [read.rows[k].bias for k in ids]
    table.rating_sum[rows] = [read.rows[k].rating_sum for k in ids]
    table.rating_count[rows] = [read.rows[k].rating_count for k in ids]
    table.count[rows] = [read.rows[k].count for k in ids]
    with_vector = [(r, k) for r, k in zip(rows.tolist(), ids, strict=True) if k in read.vectors]
    if with_vector:
        vr = np.asarray([r for r, _ in with_vector], dtype=np.int64)
        table.vectors[vr] = np.stack([read.vectors[k] for _, k in with_vector])
        table.has_vector[vr] = True
        table.updated[vr] = [read.updated[k] for _, k in with_vector]
        project(table, vr, head, side)
    width = max((read.rows[k].content.shape[0] for k in ids), default=0)
    if width and table.content.shape[1] != width:  # the first rows with review content
        table.content = np.zeros((len(table.bias), width), dtype=np.float32)
    if width:  # kept as unit rows: the content term is then a dot product
        for r, k in zip(rows.tolist(), ids, strict=True):
            content = read.rows[k].content
            if content.shape[0] == width:
                norm = float(np.linalg.norm(content))
                table.content[r] = content / norm if norm > 0 else content
    for k in ids:
        if k in read.keywords:
            table.keywords[k] = read.keywords[k]
        if k in read.quotes:
            table.quotes[k] = read.quotes[k]
        if side == "users":
            table.seen[k] = frozenset(read.rows[k].seen)


def stream_index(
    blob: bytes, items: SideTable, changed: Sequence[str]
) -> tuple[ItemIndex, npt.NDArray[np.int64]]:
    """The worker's published index with ``changed`` items' vectors brought up to this
    replica's, and its label -> row map."""
    index = ItemIndex.from_bytes(blob)
    rows = [items.index[i] for i in changed if i in items.index]
    rows = [r for r in rows if items.has_vector[r]]
    if rows:
        index.upsert([items.ids[r] for r in rows], items.vectors[rows])
    known = [i for i in index.ids() if i in items.index]
    return index, map_labels(np.zeros(0, dtype=np.int64), index, items, known)


def map_labels(
    label_rows: npt.NDArray[np.int64], index: ItemIndex, items: SideTable, ids: Sequence[str]
) -> npt.NDArray[np.int64]:
    """``label_rows`` with the FAISS labels of ``ids`` pointing at their item rows: in
    place, or a grown copy (a reader holding the old array still reads valid rows)."""
    if not ids:
        return label_rows
    labels = index.labels(ids)
    size = int(labels.max()) + 1
    if size > len(label_rows):
        grown = np.full(max(size, 2 * len(label_rows)), -1, dtype=np.int64)
        grown[: len(label_rows)] = label_rows
        label_rows = grown
    label_rows[labels] = items.rows(ids)
    return label_rows


def project(table: SideTable, rows: npt.NDArray[np.int64], head: Head, side: str) -> None:
    """The head's first layer applied to rows' representations (users carry its bias)."""
    table.hidden[rows] = head.project(side, table.vectors[rows])


def load_cooccurrence(
    records: Sequence[tuple[str, float, dict[str, float]]], items: SideTable, into: CoOccurrence
) -> None:
    """Co-occurrence rows read from the store (``LearnerStore.cooccurrence``) into
    ``into``, by ``items`` rows (under the write lock: it may add item rows)."""
    if not records:
        return
    every = sorted({i for i, _, _ in records} | {j for _, _, pairs in records for j in pairs})
    rows = dict(zip(every, items.rows(every).tolist(), strict=True))
    into.load(
        (rows[i], users, {rows[j]: c for j, c in pairs.items()}) for i, users, pairs in records
    )


def head_of(dense: bytes) -> Head:
    """The scoring head of a dense blob (the learner's network and config)."""
    return Head.from_parameters(dense_arrays(dense), dense_metadata(dense)["config"])


@dataclass
class Change:
    """What the change records since a replica's batch name (drex_store/learner.py)."""

    users: set[str] = field(default_factory=set)
    items: set[str] = field(default_factory=set)
    cooccurrence: set[str] = field(default_factory=set)
    words: set[str] = field(default_factory=set)
    categories: set[str] = field(default_factory=set)
    dense: bool = False

    def add(self, record: dict[str, Any]) -> None:
        """One more change record (older stores' records lack the later keys)."""
        self.users.update(record["users"])
        self.items.update(record["items"])
        self.cooccurrence.update(record.get("cooccurrence", []))
        self.words.update(record.get("words", []))
        self.categories.update(record.get("categories", []))
        self.dense = self.dense or bool(record["dense"])


class Categories:
    """Items by category, from the store's ``g:`` rows (``?category=``)."""

    def __init__(self) -> None:
        self.of: dict[str, tuple[str, ...]] = {}  # item -> its categories
        self.members: dict[str, set[str]] = {}  # category -> its items

    def update(self, rows: Iterable[tuple[str, Sequence[str]]]) -> None:
        """Items' categories as now stored: an item leaves the ones it no longer has."""
        for item, names in rows:
            for old in self.of.get(item, ()):
                self.members[old].discard(item)
            self.of[item] = tuple(names)
            for name in names:
                self.members.setdefault(name, set()).add(item)

    def rows(self, category: str, items: SideTable) -> npt.NDArray[np.int64]:
        """The rows of ``items`` in ``category`` that have a representation."""
        ids = self.members.get(category, ())
        rows = np.fromiter((items.index[i] for i in ids if i in items.index), dtype=np.int64)
        return rows[items.has_vector[rows]]
