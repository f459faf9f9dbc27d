"""The learner's state store: one RocksDB (rocksdict, raw bytes, no pickle) per learner.

The store, not the process, is the learner: after every micro-batch one ``WriteBatch``
atomically records everything the batch changed, so whatever survives a crash is a
state the learner really was in, together with the offset of the last interaction in it.

Keys (``id`` = user or item id, UTF-8)::

    m:info          JSON: format, offset, interactions applied, batches, step, time
    m:dense         the dense blob (drex_model.checkpoint.dense_state_bytes): network,
                    Adam, SparseAdam step counts, step, config; rewritten after a step
    u:<id> i:<id>   one entity row (drex_model.checkpoint.row_to_bytes)
    ku:<id> ki:<id> keyword profile, JSON {word: weight} (pending review included)
    eu:<id> ei:<id> representation as the learner computed it after the entity's last
                    change: float64 Unix time, then float32 values (serving reads these)
    c:<batch>       change record of micro-batch <batch> (12 digits): JSON {"users",
                    "items": ids written, "dense": bool}; the last CHANGES_KEPT are kept,
                    so a serving replica reads only what changed since its last batch
    r:<key>         an encoded review (tokens float16) that some row's pending message
                    needs; key = blake2b of the text; unreferenced ones are swept by gc
    a:<id>          an applied interaction id -> "offset wall-time"; purged after the
                    dedup retention

**Delivery semantics.** ``interactions`` is read at least once (faust commits offsets
after the batch body, and a crash replays from the last commit). The learner applies each
interaction effectively once: a batch skips every record whose offset is <= ``m:info``'s
offset (redelivery) or whose id has an ``a:`` key (the join re-emitted it after its own
crash, at a new offset), and the state, the offset and the ids are written in the same
atomic WriteBatch. What is not kept across a crash: gradients accumulated towards the
next optimiser step (fewer than ``step_size`` rated interactions' worth).

With ``fsync`` off (the default) a killed process loses nothing (the WAL is in the OS
page cache); a machine crash may lose the last batches *with* their offset, so they are
learned again, unless the consumer group committed past them (faust commits after a batch
is persisted, but the commit may reach the broker before the un-fsynced WAL reaches the
disk). ``DREX_FSYNC=1`` closes that gap at the cost of one fsync per batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson

from drex_model.checkpoint import (
    EntityRow,
    dense_metadata,
    import_rows,
    load_dense_state,
    review_from_bytes,
    review_to_bytes,
    row_from_bytes,
    row_to_bytes,
)
from drex_model.learner import DReXLearner
from drex_model.text import EncodedReview

logger = logging.getLogger(__name__)

STORE_FORMAT: Final = 1
INFO: Final = b"m:info"
DENSE: Final = b"m:dense"
_PREFIX: Final = {"users": b"u:", "items": b"i:"}
_KEYWORDS: Final = {"users": b"ku:", "items": b"ki:"}
_REVIEW: Final = b"r:"
_APPLIED: Final = b"a:"
_REPRESENTATION: Final = {"users": b"eu:", "items": b"ei:"}
_CHANGE: Final = b"c:"
CHANGES_KEPT: Final = 1000
_TIME: Final = struct.Struct("<d")
_RESTORE_CHUNK: Final = 4096


def representation_to_bytes(vector: npt.NDArray[np.float32], at: float) -> bytes:
    return _TIME.pack(at) + np.asarray(vector, dtype="<f4").tobytes()


def representation_from_bytes(raw: bytes) -> tuple[float, npt.NDArray[np.float32]]:
    """(Unix time of the change, float32 vector) of an ``eu:``/``ei:`` value."""
    (at,) = _TIME.unpack_from(raw)
    return at, np.frombuffer(raw, dtype="<f4", offset=_TIME.size).astype(np.float32)


def _change_key(batch: int) -> bytes:
    return _CHANGE + f"{batch:012d}".encode()


def text_key(text: str) -> str:
    """The stable key of a review text (the learner's cache ids are per process)."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


class StoreLocked(RuntimeError):
    """Another process holds the store (it owns the learner right now)."""


@dataclass
class StoreInfo:
    """``m:info``: where the learner is."""

    offset: int = -1  # last interactions offset applied (-1: none)
    applied: int = 0  # interactions applied, all time
    batches: int = 0  # micro-batches written
    step: int = 0  # optimiser steps
    updated_at: float = 0.0

    def to_json(self) -> bytes:
        data = {"format": STORE_FORMAT, **self.__dict__}
        return json.dumps(data).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> StoreInfo:
        data = json.loads(raw)
        if data.get("format") != STORE_FORMAT:
            raise ValueError(f"learner store of format {data.get('format')!r}")
        return cls(
            offset=int(data["offset"]),
            applied=int(data["applied"]),
            batches=int(data["batches"]),
            step=int(data["step"]),
            updated_at=float(data["updated_at"]),
        )


@dataclass
class BatchWrite:
    """Everything one micro-batch changed; written by :meth:`LearnerStore.commit`."""

    info: StoreInfo
    rows: Mapping[str, Sequence[EntityRow]]  # side -> rows
    keywords: Mapping[str, Mapping[str, Mapping[str, float]]]  # side -> id -> profile
    applied_ids: Sequence[str]
    dense: bytes | None  # None: unchanged since the last write
    # side -> id -> representation (DReXLearner.embeddings) of the rows written
    representations: Mapping[str, Mapping[str, npt.NDArray[np.float32]]] = field(
        default_factory=dict
    )


class LearnerStore:
    """The learner's RocksDB. Open it with :meth:`open`; one process at a time."""

    def __init__(self, db: Any, path: Path, fsync: bool) -> None:
        import rocksdict

        self._db = db
        self.path = path
        self._write_options = rocksdict.WriteOptions()
        self._write_options.sync = fsync
        # learner cache index -> review key, for the pending messages' reviews
        self.review_keys: dict[int, str] = {}
        self._stored_reviews: set[str] = set()
        self._new_reviews: list[tuple[str, EncodedReview]] = []

    @classmethod
    def open(
        cls, path: str | Path, fsync: bool = False, wait: float = 0.0, read_only: bool = False
    ) -> LearnerStore:
        """Open (creating) the store; retry for ``wait`` seconds while another process
        holds it. Raises :class:`StoreLocked` when it stays locked."""
        import rocksdict

        where = Path(path)
        deadline = time.monotonic() + wait
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(not read_only)
        while True:
            try:
                if read_only:
                    db = rocksdict.Rdict(
                        str(where), options, access_type=rocksdict.AccessType.read_only()
                    )
                else:
                    where.mkdir(parents=True, exist_ok=True)
                    db = rocksdict.Rdict(str(where), options)
                return cls(db, where, fsync)
            except Exception as err:  # rocksdict raises a bare Exception for IO errors
                if "lock" not in str(err).lower():
                    raise
                if time.monotonic() >= deadline:
                    raise StoreLocked(f"{where} is held by another process: {err}") from err
                time.sleep(0.2)

    @classmethod
    def open_secondary(cls, path: str | Path, secondary: str | Path) -> LearnerStore:
        """A read-only follower of the store another process writes (RocksDB secondary
        instance; ``secondary`` is this follower's own folder). :meth:`catch_up` reads
        the writer's latest batches; reads in between see one consistent state."""
        import rocksdict

        options = rocksdict.Options(raw_mode=True)
        options.set_max_open_files(-1)  # required of secondary instances
        access = rocksdict.AccessType.secondary(str(secondary))
        return cls(rocksdict.Rdict(str(path), options, access_type=access), Path(path), False)

    def catch_up(self) -> None:
        """(Secondary instances) apply what the writer has written since the last call."""
        self._db.try_catch_up_with_primary()

    def close(self) -> None:
        self._db.close()

    # --- reading ----------------------------------------------------------------------

    def info(self) -> StoreInfo:
        raw = self._db.get(INFO)
        return StoreInfo() if raw is None else StoreInfo.from_json(raw)

    def dense(self) -> bytes | None:
        raw = self._db.get(DENSE)
        return None if raw is None else bytes(raw)

    def saved_config(self) -> dict[str, Any] | None:
        dense = self.dense()
        return None if dense is None else dict(dense_metadata(dense)["config"])

    def applied(self, ids: Iterable[str]) -> set[str]:
        """Which of ``ids`` are already applied."""
        return {i for i in ids if self._db.get(_APPLIED + i.encode()) is not None}

    def restore(self, learner: DReXLearner) -> StoreInfo:
        """Load the whole state into a fresh ``learner``; returns ``m:info``.

        Raises ``drex_model.checkpoint.CheckpointError`` when the store was written by a
        learner with another config.
        """
        info = self.info()
        dense = self.dense()
        if dense is None:
            return info
        load_dense_state(learner, dense)
        learner.step = info.step
        reviews: dict[str, EncodedReview] = {}
        for side in ("users", "items"):
            table = learner.users if side == "users" else learner.items
            chunk: list[tuple[EntityRow, str | None]] = []
            for _, value in self._scan(_PREFIX[side]):
                row, key = row_from_bytes(value)
                if key is not None:
                    if key not in reviews:
                        raw = self._db.get(_REVIEW + key.encode())
                        if raw is None:
                            raise ValueError(f"{self.path}: review {key} missing")
                        reviews[key] = review_from_bytes(raw)
                    row.pending_review = reviews[key]
                chunk.append((row, key))
                if len(chunk) >= _RESTORE_CHUNK:
                    self._import(learner, side, table, chunk)
                    chunk = []
            self._import(learner, side, table, chunk)
        for side in ("users", "items"):  # stored with the pending words: taken out again
            learner.restore_keywords(side, self.keyword_profiles(side))
        self._stored_reviews = set(reviews)
        return info

    def _import(
        self,
        learner: DReXLearner,
        side: str,
        table: Any,
        chunk: list[tuple[EntityRow, str | None]],
    ) -> None:
        import_rows(learner, side, [row for row, _ in chunk])
        for row, key in chunk:
            if key is not None:
                index = int(table.pending_review[table.index[row.id]])
                self.review_keys[index] = key

    def counts(self, side: str) -> dict[str, int]:
        """Interactions applied per user or item (for tools and tests)."""
        out = {}
        for _, value in self._scan(_PREFIX[side]):
            row, _ = row_from_bytes(value)
            out[row.id] = row.count
        return out

    def keyword_profiles(self, side: str) -> dict[str, dict[str, float]]:
        return {
            k[len(_KEYWORDS[side]) :].decode(): json.loads(v)
            for k, v in self._scan(_KEYWORDS[side])
        }

    def changes(self, after: int) -> list[dict[str, Any]] | None:
        """Change records of the batches after ``after``, oldest first; None when some
        are no longer kept (the reader must load everything)."""
        out = []
        for key, value in self._scan(_CHANGE):
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

    def representations(self, side: str, ids: Iterable[str] | None) -> Iterator[tuple[str, bytes]]:
        """(id, :func:`representation_to_bytes` value) of ``ids`` (None: all)."""
        return self._entries(_REPRESENTATION[side], ids)

    def keywords(self, side: str, ids: Iterable[str] | None) -> Iterator[tuple[str, bytes]]:
        """(id, JSON keyword profile) of ``ids`` (None: all)."""
        return self._entries(_KEYWORDS[side], ids)

    def _entries(self, prefix: bytes, ids: Iterable[str] | None) -> Iterator[tuple[str, bytes]]:
        if ids is None:
            for key, value in self._scan(prefix):
                yield key[len(prefix) :].decode(), value
            return
        for entity in ids:
            raw = self._db.get(prefix + entity.encode())
            if raw is not None:
                yield entity, bytes(raw)

    def _scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self._db.items(from_key=prefix):
            if not key.startswith(prefix):
                return
            yield bytes(key), bytes(value)

    # --- writing ------------------------------------------------------------------------

    def commit(self, learner: DReXLearner, batch: BatchWrite) -> None:
        """Write one micro-batch's changes atomically (one WriteBatch)."""
        import rocksdict

        wb = rocksdict.WriteBatch(raw_mode=True)
        now = time.time()
        for side, rows in batch.rows.items():
            for row in rows:
                key = self._review_key(learner, row)
                wb.put(_PREFIX[side] + row.id.encode(), row_to_bytes(row, key))
        for side, profiles in batch.keywords.items():
            for entity, profile in profiles.items():
                wb.put(_KEYWORDS[side] + entity.encode(), orjson.dumps(profile))
        for side, vectors in batch.representations.items():
            for entity, vector in vectors.items():
                wb.put(
                    _REPRESENTATION[side] + entity.encode(), representation_to_bytes(vector, now)
                )
        change = {side: [row.id for row in rows] for side, rows in batch.rows.items()}
        wb.put(
            _change_key(batch.info.batches),
            json.dumps(
                {
                    "users": change.get("users", []),
                    "items": change.get("items", []),
                    "dense": batch.dense is not None,
                }
            ).encode(),
        )
        for interaction in batch.applied_ids:
            wb.put(_APPLIED + interaction.encode(), f"{batch.info.offset} {now:.3f}".encode())
        if batch.dense is not None:
            wb.put(DENSE, batch.dense)
        wb.put(INFO, batch.info.to_json())
        # review blobs go in the same batch, before anything could reference them
        for key, review in self._new_reviews:
            wb.put(_REVIEW + key.encode(), review_to_bytes(review))
        self._new_reviews.clear()
        self._db.write(wb, self._write_options)

    def _review_key(self, learner: DReXLearner, row: EntityRow) -> str | None:
        if row.pending_review is None:
            return None
        index = row.pending_index
        key = self.review_keys.get(index)
        if key is None:
            raise KeyError(f"no stored key for review {index} of {row.id!r}")
        if key not in self._stored_reviews:
            self._stored_reviews.add(key)
            self._new_reviews.append((key, row.pending_review))
        return key

    def renumber_reviews(self, remap: Any) -> None:
        """Follow the learner's cache after :meth:`DReXLearner.sweep_reviews` (``remap``:
        old review id -> new one, -1 forgotten)."""
        new = remap.tolist()
        self.review_keys = {new[i]: k for i, k in self.review_keys.items() if new[i] >= 0}

    def gc(self, applied_older_than: float) -> tuple[int, int]:
        """Delete reviews no row references, applied ids older than a wall time and all
        but the last :data:`CHANGES_KEPT` change records.

        Returns (reviews deleted, applied ids deleted). Run between batches.
        """
        import rocksdict

        referenced: set[str] = set()
        for side in ("users", "items"):
            for _, value in self._scan(_PREFIX[side]):
                _, key = row_from_bytes(value)
                if key is not None:
                    referenced.add(key)
        wb = rocksdict.WriteBatch(raw_mode=True)
        reviews = applied = 0
        for raw_key, _ in self._scan(_REVIEW):
            if raw_key[len(_REVIEW) :].decode() not in referenced:
                wb.delete(raw_key)
                reviews += 1
        for raw_key, value in self._scan(_APPLIED):
            if float(value.split()[1]) < applied_older_than:
                wb.delete(raw_key)
                applied += 1
        oldest_kept = self.info().batches - CHANGES_KEPT
        for raw_key, _ in self._scan(_CHANGE):
            if int(raw_key[len(_CHANGE) :]) > oldest_kept:
                break
            wb.delete(raw_key)
        self._db.write(wb, self._write_options)
        self._stored_reviews &= referenced
        self.review_keys = {i: k for i, k in self.review_keys.items() if k in referenced}
        return reviews, applied
