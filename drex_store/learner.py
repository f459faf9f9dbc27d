"""The learner store: the learner's whole state in one key-value store (torch-free).

The store, not the process, is the learner: after every micro-batch one atomic write
records everything the batch changed, so whatever survives a crash is a state the
learner really was in, together with the offset of the last interaction in it. The
worker writes it (``streams/state.py`` restores a learner from it and builds each
batch's write); servers follow it (``serving/replica.py``). Values are encoded by
``drex_model.formats``.

Keys (``id`` = user or item id, UTF-8)::

    m:info          JSON: format, offset, interactions applied, batches, step, time,
                    the id of the interaction at offset, cluster id, topic resets seen
    m:dense         the dense blob (drex_model.checkpoint.dense_state_bytes): network,
                    Adam, SparseAdam step counts, step, config; rewritten after a step
    m:encoder       JSON: the identity of the text encoder the learner was built with
    u:<id> i:<id>   one entity row (formats.row_to_bytes)
    ku:<id> ki:<id> keyword record (formats.keywords_to_bytes): learned + pending words,
                    and an item's quotes (written with it: quotes change only when the
                    item had an interaction in the batch, and then its record is written)
    w:<word>        a vocabulary row (formats.word_row_to_bytes): the word's attention
                    mass, rated reviews and rating sum over every review folded in
    m:words         JSON {"mass": m}: the vocabulary's total attention mass
    eu:<id> ei:<id> representation as the learner computed it after the entity's last
                    change (formats.representation_to_bytes; serving reads these)
    o:<id>          an item's co-occurrence row (formats.cooccurrence_to_bytes): users
                    who picked it, and by item id how many of them picked that one too
    g:<id>          an item's categories (JSON array of strings), as the last event that
                    gave any said (streams/events.py); not model state: checkpoints do
                    not carry them
    c:<batch>       change record of micro-batch <batch> (12 digits): JSON {"users",
                    "items": ids written, "cooccurrence": item ids whose co-occurrence
                    row was written, "words": words whose row was written,
                    "categories": item ids whose categories were written, "dense":
                    bool}; the last CHANGES_KEPT are kept,
                    so a serving replica reads only what changed since its last batch
    r:<key>         an encoded review (formats.review_to_bytes) that some row's pending
                    message needs; key = formats.text_key of its text, the review cache's
                    own key; unreferenced ones are swept by gc
    a:<id>          an applied event id (streams.events.learned_keys) -> "offset
                    wall-time"; purged after the dedup retention
    m:index         JSON {"batch": b}: the learner batch the published item index reflects
    x:index         the published item index (drex_store.index.ItemIndex.to_bytes): the
                    stream's FAISS index, which servers load instead of building one

**Delivery semantics.** ``interactions`` is read at least once (faust commits offsets
after the batch body, and a crash replays from the last commit). The learner applies each
interaction effectively once: a batch skips every record whose offset is <= ``m:info``'s
offset (redelivery) or whose id has an ``a:`` key (the join re-emitted it after its own
crash, at a new offset), and the state, the offset and the ids are written in the same
atomic write. An offset belongs to one incarnation of the topic: when the worker takes the
learner it checks that the topic still holds the record it last applied
(streams/source.py) and, if not (a broker restarted empty), starts the new incarnation at
its beginning, where the ``a:`` ids still drop what was already learned. What is not kept
across a crash: gradients accumulated towards the next optimiser step (fewer than
``step_size`` rated interactions' worth).

With ``fsync`` off (the default) a killed process loses nothing (the WAL is in the OS
page cache); a machine crash may lose the last batches *with* their offset, so they are
learned again, unless the consumer group committed past them (faust commits after a batch
is persisted, but the commit may reach the broker before the un-fsynced WAL reaches the
disk). ``DREX_FSYNC=1`` closes that gap at the cost of one fsync per batch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from drex_model.formats import (
    EntityRow,
    cooccurrence_from_bytes,
    cooccurrence_to_bytes,
    dense_metadata,
    keywords_from_bytes,
    keywords_to_bytes,
    representation_to_bytes,
    row_from_bytes,
    row_to_bytes,
    shown_profile,
    word_row_from_bytes,
    word_row_to_bytes,
)
from drex_model.reasons import Quote
from drex_store.kv import KeyValueStore, MemoryStore, RocksStore, StoreLocked, WriteBatch

__all__ = ["BatchWrite", "LearnerStore", "StoreInfo", "StoreLocked"]

STORE_FORMAT: Final = 1
INFO: Final = b"m:info"
DENSE: Final = b"m:dense"
ENCODER: Final = b"m:encoder"
INDEX_INFO: Final = b"m:index"
INDEX: Final = b"x:index"
WORDS_INFO: Final = b"m:words"
_PREFIX: Final = {"users": b"u:", "items": b"i:"}
_KEYWORDS: Final = {"users": b"ku:", "items": b"ki:"}
_REPRESENTATION: Final = {"users": b"eu:", "items": b"ei:"}
_REVIEW: Final = b"r:"
_APPLIED: Final = b"a:"
_CHANGE: Final = b"c:"
_COOCCURRENCE: Final = b"o:"
_WORD: Final = b"w:"
_CATEGORIES: Final = b"g:"
CHANGES_KEPT: Final = 1000


def _change_key(batch: int) -> bytes:
    return _CHANGE + f"{batch:012d}".encode()


@dataclass
class StoreInfo:
    """``m:info``: where the learner is, and in which incarnation of its source topic.

    ``offset`` means something only in the topic it was read from: a broker that restarts
    empty (the embedded one is memory only) or a topic deleted and created again starts
    its offsets at 0 again. ``last_id`` (the interaction id of the record at ``offset``)
    and ``cluster`` let the worker recognise the topic it read (streams/source.py); a new
    incarnation resets ``offset`` to -1 and counts one more ``resets``.
    """

    offset: int = -1  # last interactions offset applied (-1: none)
    applied: int = 0  # interactions applied, all time
    batches: int = 0  # micro-batches written
    step: int = 0  # optimiser steps
    updated_at: float = 0.0
    last_id: str | None = None  # interaction id of the record at ``offset`` (None: unknown)
    cluster: str | None = None  # the broker cluster's id when ``offset`` was read
    resets: int = 0  # new incarnations of the topic seen (offset restarted at -1)

    def to_json(self) -> bytes:
        return json.dumps({"format": STORE_FORMAT, **self.__dict__}).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> StoreInfo:
        data = json.loads(raw)
        if data.get("format") != STORE_FORMAT:
            raise ValueError(f"learner store of format {data.get('format')!r}")
        return cls(  # the last three fields came later: a store without them reads as unknown
            offset=int(data["offset"]),
            applied=int(data["applied"]),
            batches=int(data["batches"]),
            step=int(data["step"]),
            updated_at=float(data["updated_at"]),
            last_id=data.get("last_id"),
            cluster=data.get("cluster"),
            resets=int(data.get("resets", 0)),
        )


@dataclass
class BatchWrite:
    """Everything one micro-batch changed; written by :meth:`LearnerStore.commit`."""

    info: StoreInfo
    rows: Mapping[str, Sequence[EntityRow]]  # side -> rows
    # side -> id -> (profile as learned, the pending review's words)
    keywords: Mapping[str, Mapping[str, tuple[Mapping[str, float], Mapping[str, float]]]]
    applied_ids: Sequence[str]
    dense: bytes | None  # None: unchanged since the last write
    # side -> id -> representation of the rows written (DReXLearner.snapshot)
    representations: Mapping[str, Mapping[str, npt.NDArray[np.float32]]] = field(
        default_factory=dict
    )
    reviews: Mapping[str, bytes] = field(default_factory=dict)  # key -> new review blobs
    encoder: Mapping[str, Any] | None = None  # the encoder's identity, on the first write
    # item id -> (users who picked it, {item id: users who picked both}), changed rows
    cooccurrence: Mapping[str, tuple[float, Mapping[str, float]]] = field(default_factory=dict)
    # item id -> its quotes, written into its keyword record (items of ``keywords`` only)
    quotes: Mapping[str, Sequence[Quote]] = field(default_factory=dict)
    # word -> [attention mass, rated reviews, rating sum], the rows changed, and the
    # vocabulary's total mass after them (None: no row changed)
    words: Mapping[str, Sequence[float]] = field(default_factory=dict)
    words_mass: float | None = None
    # item id -> its categories, for the items whose events in the batch gave some
    categories: Mapping[str, Sequence[str]] = field(default_factory=dict)


class LearnerStore:
    """The learner's key layout over a :class:`~drex_store.kv.KeyValueStore`."""

    def __init__(self, kv: KeyValueStore, path: Path | None = None) -> None:
        self.kv = kv
        self.path = path

    @classmethod
    def open(
        cls, path: str | Path, fsync: bool = False, wait: float = 0.0, read_only: bool = False
    ) -> LearnerStore:
        """The RocksDB store at ``path`` (created), waiting ``wait`` seconds for another
        process to let go of it (:class:`StoreLocked` when it does not)."""
        kv = RocksStore.open(path, fsync=fsync, wait=wait, read_only=read_only)
        return cls(kv, Path(path))

    @classmethod
    def open_secondary(cls, path: str | Path, secondary: str | Path) -> LearnerStore:
        """A read-only follower of the store another process writes."""
        return cls(RocksStore.open_secondary(path, secondary), Path(path))

    @classmethod
    def in_memory(cls) -> LearnerStore:
        return cls(MemoryStore())

    def catch_up(self) -> None:
        """(Followers) apply what the writer has written since the last call."""
        self.kv.catch_up()

    def close(self) -> None:
        self.kv.close()

    # --- reading ----------------------------------------------------------------------

    def info(self) -> StoreInfo:
        raw = self.kv.get(INFO)
        return StoreInfo() if raw is None else StoreInfo.from_json(raw)

    def dense(self) -> bytes | None:
        return self.kv.get(DENSE)

    def saved_config(self) -> dict[str, Any] | None:
        dense = self.dense()
        return None if dense is None else dict(dense_metadata(dense)["config"])

    def encoder(self) -> dict[str, Any] | None:
        """The identity of the encoder the stored learner was built with (None: none
        saved yet)."""
        raw = self.kv.get(ENCODER)
        return None if raw is None else dict(json.loads(raw))

    def index_batch(self) -> int | None:
        """The learner batch the published item index reflects (None: none published)."""
        raw = self.kv.get(INDEX_INFO)
        return None if raw is None else int(json.loads(raw)["batch"])

    def index_snapshot(self) -> tuple[int, bytes] | None:
        """(batch, serialised item index) as last published, or None."""
        batch, blob = self.index_batch(), self.kv.get(INDEX)
        return None if batch is None or blob is None else (batch, blob)

    def applied(self, ids: Iterable[str]) -> set[str]:
        """Which of ``ids`` are already applied."""
        return {i for i in ids if self.kv.get(_APPLIED + i.encode()) is not None}

    def entity_rows(self, side: str) -> Iterator[EntityRow]:
        """Every stored row of a side (pending reviews not loaded: see :meth:`review`)."""
        for _, value in self.kv.scan(_PREFIX[side]):
            yield row_from_bytes(value)

    def review(self, key: str) -> bytes | None:
        """An encoded review blob by its content key."""
        return self.kv.get(_REVIEW + key.encode())

    def missing_reviews(self, keys: Iterable[str]) -> set[str]:
        return {k for k in set(keys) if self.kv.get(_REVIEW + k.encode()) is None}

    def counts(self, side: str) -> dict[str, int]:
        """Interactions applied per user or item (for tools and tests)."""
        return {row.id: row.count for row in self.entity_rows(side)}

    def keyword_records(
        self, side: str, ids: Iterable[str] | None = None
    ) -> Iterator[tuple[str, dict[str, float], dict[str, float], list[Quote]]]:
        """(id, profile as learned, pending review's words, quotes) of ``ids`` (None:
        all); a user has no quotes."""
        for entity, raw in self._entries(_KEYWORDS[side], ids):
            yield entity, *keywords_from_bytes(raw)

    def keyword_profiles(self, side: str) -> dict[str, dict[str, float]]:
        """Every profile of a side as shown to people (learned + pending words, folded
        with the users' ``keyword_decay`` as the learner folds them)."""
        config = self.saved_config() or {}
        decay = float(config.get("keyword_decay", 1.0)) if side == "users" else 1.0
        return {k: shown_profile(a, b, decay) for k, a, b, _ in self.keyword_records(side)}

    def vocabulary(self, words: Iterable[str] | None = None) -> Iterator[tuple[str, list[float]]]:
        """(word, [attention mass, rated reviews, rating sum]) of ``words`` (None: all)."""
        for word, raw in self._entries(_WORD, words):
            yield word, word_row_from_bytes(raw)

    def vocabulary_mass(self) -> float:
        """The vocabulary's total attention mass (0 before any word)."""
        raw = self.kv.get(WORDS_INFO)
        return 0.0 if raw is None else float(json.loads(raw)["mass"])

    def changes(self, after: int) -> list[dict[str, Any]] | None:
        """Change records of the batches after ``after``, oldest first; None when some
        are no longer kept (the reader must load everything)."""
        out = []
        for key, value in self.kv.scan(_CHANGE):
            batch = int(key[len(_CHANGE) :])
            if batch > after:
                out.append({"batch": batch, **json.loads(value)})
        expected = range(after + 1, after + 1 + len(out))
        if [r["batch"] for r in out] != list(expected) or len(out) < self.info().batches - after:
            return None
        return out

    def rows(self, side: str, ids: Iterable[str] | None) -> Iterator[tuple[str, bytes]]:
        """(id, row bytes) of ``ids`` (None: all) of a side; unknown ids are left out."""
        return self._entries(_PREFIX[side], ids)

    def cooccurrence(
        self, ids: Iterable[str] | None = None
    ) -> Iterator[tuple[str, float, dict[str, float]]]:
        """(item id, users who picked it, {item id: users who picked both}) of ``ids``
        (None: every item with a row)."""
        for item, raw in self._entries(_COOCCURRENCE, ids):
            users, pairs = cooccurrence_from_bytes(raw)
            yield item, users, pairs

    def categories(self, ids: Iterable[str] | None = None) -> Iterator[tuple[str, list[str]]]:
        """(item id, its categories) of ``ids`` (None: every item that has some)."""
        for item, raw in self._entries(_CATEGORIES, ids):
            yield item, json.loads(raw)

    def representations(self, side: str, ids: Iterable[str] | None) -> Iterator[tuple[str, bytes]]:
        """(id, formats.representation_to_bytes value) of ``ids`` (None: all)."""
        return self._entries(_REPRESENTATION[side], ids)

    def _entries(self, prefix: bytes, ids: Iterable[str] | None) -> Iterator[tuple[str, bytes]]:
        if ids is None:
            for key, value in self.kv.scan(prefix):
                yield key[len(prefix) :].decode(), value
            return
        for entity in ids:
            raw = self.kv.get(prefix + entity.encode())
            if raw is not None:
                yield entity, raw

    # --- writing ------------------------------------------------------------------------

    def commit(self, batch: BatchWrite) -> None:
        """Write one micro-batch's changes atomically.

        Every pending review a row names must be stored already or come in
        ``batch.reviews`` (:meth:`missing_reviews` says which).
        """
        wb = WriteBatch()
        now = time.time()
        for key, blob in batch.reviews.items():  # before anything could reference them
            wb.put(_REVIEW + key.encode(), blob)
        for side, rows in batch.rows.items():
            for row in rows:
                wb.put(_PREFIX[side] + row.id.encode(), row_to_bytes(row))
        for side, profiles in batch.keywords.items():
            for entity, (learned, pending) in profiles.items():
                quotes = batch.quotes.get(entity) if side == "items" else None
                value = keywords_to_bytes(learned, pending, quotes)
                wb.put(_KEYWORDS[side] + entity.encode(), value)
        for word, counts in batch.words.items():
            wb.put(_WORD + word.encode(), word_row_to_bytes(counts))
        if batch.words_mass is not None:
            wb.put(WORDS_INFO, json.dumps({"mass": batch.words_mass}).encode())
        for side, vectors in batch.representations.items():
            for entity, vector in vectors.items():
                wb.put(
                    _REPRESENTATION[side] + entity.encode(), representation_to_bytes(vector, now)
                )
        for item, (users, pairs) in batch.cooccurrence.items():
            wb.put(_COOCCURRENCE + item.encode(), cooccurrence_to_bytes(users, pairs))
        for item, names in batch.categories.items():
            wb.put(_CATEGORIES + item.encode(), json.dumps(list(names)).encode())
        change = {side: [row.id for row in rows] for side, rows in batch.rows.items()}
        record = {
            "users": change.get("users", []),
            "items": change.get("items", []),
            "cooccurrence": list(batch.cooccurrence),
            "words": list(batch.words),
            "categories": list(batch.categories),
            "dense": batch.dense is not None,
        }
        wb.put(_change_key(batch.info.batches), json.dumps(record).encode())
        for interaction in batch.applied_ids:
            wb.put(_APPLIED + interaction.encode(), f"{batch.info.offset} {now:.3f}".encode())
        if batch.dense is not None:
            wb.put(DENSE, batch.dense)
        if batch.encoder is not None:
            wb.put(ENCODER, json.dumps(dict(batch.encoder), sort_keys=True).encode())
        wb.put(INFO, batch.info.to_json())
        self.kv.write(wb)

    def put_info(self, info: StoreInfo) -> None:
        """Write ``m:info`` alone (a new incarnation of the source topic: a new offset, no
        new state)."""
        wb = WriteBatch()
        wb.put(INFO, info.to_json())
        self.kv.write(wb)

    def put_index(self, batch: int, blob: bytes) -> None:
        """Publish the item index as of learner batch ``batch`` (one atomic write)."""
        wb = WriteBatch()
        wb.put(INDEX, blob)
        wb.put(INDEX_INFO, json.dumps({"batch": batch}).encode())
        self.kv.write(wb)

    def gc(self, applied_older_than: float) -> tuple[int, int]:
        """Delete reviews no row references, applied ids older than a wall time and all
        but the last :data:`CHANGES_KEPT` change records.

        Returns (reviews deleted, applied ids deleted). Run between batches.
        """
        referenced = {
            row.pending_key
            for side in ("users", "items")
            for row in self.entity_rows(side)
            if row.pending_key is not None
        }
        wb = WriteBatch()
        reviews = applied = 0
        for raw_key, _ in self.kv.scan(_REVIEW):
            if raw_key[len(_REVIEW) :].decode() not in referenced:
                wb.delete(raw_key)
                reviews += 1
        for raw_key, value in self.kv.scan(_APPLIED):
            if float(value.split()[1]) < applied_older_than:
                wb.delete(raw_key)
                applied += 1
        oldest_kept = self.info().batches - CHANGES_KEPT
        for raw_key, _ in self.kv.scan(_CHANGE):
            if int(raw_key[len(_CHANGE) :]) > oldest_kept:
                break
            wb.delete(raw_key)
        self.kv.write(wb)
        return reviews, applied
