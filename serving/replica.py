"""A serving replica of the learner: what recommendations need, in numpy, kept fresh.

**Source.** The learner's own store (``drex_store/learner.py``), opened as a RocksDB
*secondary* instance: a read-only follower that any number of processes can open beside
the worker that writes it (same machine or shared volume), and that catches up with the
writer's log on :meth:`Replica.refresh`. Every micro-batch the worker writes, in one
atomic WriteBatch, the rows it changed, their representations as the learner computed
them (``eu:``/``ei:``), their keyword profiles, the dense network when an optimiser step
happened, and a change record (``c:<batch>``) naming the ids. So a refresh reads only
what changed since the replica's last batch, and whatever it reads is a state the learner
really was in. A replica that fell further behind than the change records kept (or
starts) loads everything once.

**What it holds.** Per user and item: the representation, the scalars the rating head
reads (learnable bias, rating sum and count), the interaction count, the shown keyword
profile's :data:`~drex_model.reasons.PROFILE_WORDS` heaviest words, the time of the last
change; per user the items seen; per item its quotes; the explanations' vocabulary
(every word's row, following the words each change record names). From the dense
network only the rating head, and the config's explanation weights and users' keyword
decay. A pair is scored and ranked by ``drex_model.scoring`` and explained by
``drex_model.reasons.explain``, with the global mean rating the head reads (the learner
ranks and explains with the same code and state): ``W_u u + b`` and ``W_i i``
and each row's additive constant are kept per row (recomputed for changed rows, and for
all rows when the head changed), so scoring a candidate costs D multiply-adds: numpy, no
torch, on the request path.

**Retrieval, then ranking.** The candidates are the user's nearest items in the stream's
FAISS index of item representations (exact inner product, or inverted lists from 20,000
items on: ``streams/agents/index.py``), which the worker publishes in the store and the
replica loads, then keeps fresh with the changed items' vectors until the next one; the head's
top items for the average user (recomputed at every refresh: item quality dominates the
head, so these are good for most users) and the most-rated items; the DReX head re-ranks
them exactly. The head is not an inner product, so retrieval approximates ranking every
item; ``benchmarks/serve_bench.py`` measures how much of the exact top-k it keeps.

Staleness: an entity's representation is the one the learner computed after its last
change; an optimiser step moves the GRUs, so entities not touched since keep the
representation of the older network until their next interaction (as in the worker's
own index).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import threading
import time
from collections.abc import Collection
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from drex_model.affinity import CoOccurrence
from drex_model.formats import dense_metadata
from drex_model.reasons import ExplainWeights, Reason, Vocabulary, explain
from drex_model.scoring import Head, lookup_sparse
from drex_store.index import ItemIndex, RWLock
from drex_store.learner import LearnerStore
from serving import metrics
from serving.schemas import ItemProfile, Ranked, Recommendations, UserProfile
from serving.secondary import own_secondary
from serving.tables import (
    Categories,
    Change,
    SideTable,
    head_of,
    load_cooccurrence,
    map_labels,
    project,
    read_side,
    stream_index,
    write_side,
)

logger = logging.getLogger(__name__)

SIDES: Final = ("users", "items")
MISSING_LOG_EVERY: Final = 30.0  # seconds between warnings that there is no store yet
FloatArray = npt.NDArray[np.float64]
Cooc = tuple[npt.NDArray[np.int64], FloatArray]  # a user's sparse co-occurrence term


class NotReady(RuntimeError):
    """The replica has not read a learner store yet (there is none, so far)."""


class Replica:
    """Follows a learner store and answers recommendation queries (module docstring).

    ``refresh()`` may run in another thread than the queries; a readers-writer lock
    gives it the state alone only while it applies what it has already read.
    """

    def __init__(
        self,
        learner_dir: str | Path,
        secondary_dir: str | Path | None = None,
        exposure_weight: float | None = None,
        candidates: int = 100,
        popular_candidates: int = 50,
        prior_candidates: int = 200,
        cooccurrence_candidates: int = 1000,
    ) -> None:
        self.learner_dir = Path(learner_dir)
        self._owner_lock: int | None = None  # held while this replica owns its folder
        if secondary_dir is None:
            self.secondary_dir, self._owner_lock = own_secondary()
        else:
            self.secondary_dir = Path(secondary_dir)
        self.exposure_override = exposure_weight
        self.candidates = candidates
        self.popular_candidates = popular_candidates
        self.prior_candidates = prior_candidates
        # items most often picked with the user's: many tie on small co-occurrence counts,
        # and the other terms reorder them, so take well beyond k
        self.cooccurrence_candidates = cooccurrence_candidates
        self._store: LearnerStore | None = None
        self._lock = RWLock()
        self._refreshing = threading.Lock()
        self.head: Head | None = None
        self.users = SideTable(0)
        self.items = SideTable(0)
        self.cooccurrence = CoOccurrence()  # by this replica's item rows
        self.categories = Categories()
        self.index: ItemIndex | None = None
        self.label_rows = np.zeros(0, dtype=np.int64)  # FAISS label -> item row, -1: none
        self.index_batch = -1  # the learner batch of the worker's index this one started as
        self.batches = -1  # the learner's batch this replica has applied (-1: none)
        self.applied = 0
        self.learner_updated_at = 0.0
        self.refreshed_at = 0.0
        self.mean = 0.0
        self.vocabulary = Vocabulary()  # the learner's, for explanations
        self.weights = ExplainWeights()  # the learner's config's
        self.keyword_decay = 1.0  # users' (DReXConfig.keyword_decay): their shown profile
        self.empty = False  # read a store that holds no model yet: serve it, empty
        self.waiting = f"no learner store at {self.learner_dir} yet"  # why not ready
        self.missing_log_every = MISSING_LOG_EVERY
        self._missing_logged = -float("inf")  # monotonic time of the last such warning
        self.popular = np.zeros(0, dtype=np.int64)  # item rows, most-rated first
        self.average_top = np.zeros(0, dtype=np.int64)  # item rows, best for the mean user
        metrics.READY.set_function(lambda: float(self.ready))
        metrics.USERS.set_function(lambda: len(self.users))
        metrics.ITEMS.set_function(lambda: len(self.items))
        metrics.STALENESS.set_function(
            lambda: time.time() - self.learner_updated_at if self.ready else 0.0
        )
        metrics.REFRESH_AGE.set_function(
            lambda: time.time() - self.refreshed_at if self.refreshed_at else 0.0
        )

    @property
    def ready(self) -> bool:
        """Serving what the learner store holds: its model, or nothing at all when the
        worker has created the store but not learned a batch yet."""
        return self.head is not None or self.empty

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._owner_lock is not None:
            shutil.rmtree(self.secondary_dir, ignore_errors=True)
            os.close(self._owner_lock)
            self._owner_lock = None

    # --- following the learner ----------------------------------------------------------

    def refresh(self) -> bool:
        """Catch up with the learner store; True if anything changed.

        Returns False while there is no store yet or it holds no model.
        """
        with self._refreshing:
            started = time.perf_counter()
            store = self._open()
            if store is None:
                return False
            store.catch_up()
            info = store.info()
            self.refreshed_at = time.time()
            if info.batches == self.batches and self.ready:
                return False
            dense = store.dense()
            if dense is None:  # a worker opened the store and has learned nothing yet
                if not self.empty:
                    logger.info("the learner store at %s holds no model yet", self.learner_dir)
                self.empty = True
                return False
            behind = self.head is not None and info.batches > self.batches
            changes = store.changes(self.batches) if behind else None
            if changes is None:  # first load, behind the oldest change record kept, or
                # a store that went back (replaced or restored from elsewhere)
                if not self._load_all(store, dense):
                    return False
            else:
                change = Change()
                for record in changes:
                    change.add(record)
                self._apply(store, change, dense if change.dense else None)
            self.batches = info.batches
            self.applied = info.applied
            self.learner_updated_at = info.updated_at
            metrics.REFRESH_SECONDS.observe(time.perf_counter() - started)
            return True

    def _open(self) -> LearnerStore | None:
        if self._store is None:
            if not (self.learner_dir / "CURRENT").exists():  # no worker created it yet
                now = time.monotonic()
                if now - self._missing_logged >= self.missing_log_every:
                    self._missing_logged = now
                    logger.warning(
                        "no learner store at %s (STATE_DIR/learner, or --learner-dir): not "
                        "ready until a worker creates it (said again every %g s meanwhile)",
                        self.learner_dir,
                        self.missing_log_every,
                    )
                return None
            logger.info("following the learner store at %s", self.learner_dir)
            self.secondary_dir.mkdir(parents=True, exist_ok=True)
            self._store = LearnerStore.open_secondary(self.learner_dir, self.secondary_dir)
        return self._store

    def _load_all(self, store: LearnerStore, dense: bytes) -> bool:
        """Everything, once; False while the worker has published no item index yet."""
        snapshot = store.index_snapshot()
        if snapshot is None:
            self.waiting = "the learner store has no published item index yet"
            return False
        head = head_of(dense)
        config = dense_metadata(dense)["config"]
        decay = float(config.get("keyword_decay", 1.0))
        read = {
            side: read_side(store, side, None, decay if side == "users" else 1.0) for side in SIDES
        }
        vocabulary = Vocabulary()
        vocabulary.load(store.vocabulary(), store.vocabulary_mass())
        users, items = SideTable(head.dim), SideTable(head.dim)
        for side, table in (("users", users), ("items", items)):
            write_side(table, read[side], head, side)
        index, label_rows = stream_index(snapshot[1], items, list(read["items"].vectors))
        cooccurrence = CoOccurrence()
        load_cooccurrence(list(store.cooccurrence()), items, cooccurrence)
        categories = Categories()
        categories.update(store.categories())
        with self._lock.write():
            self.head, self.users, self.items, self.index = head, users, items, index
            self.cooccurrence, self.categories = cooccurrence, categories
            self.vocabulary = vocabulary
            self.weights, self.keyword_decay = ExplainWeights.from_config(config), decay
            self.label_rows = label_rows
            self.index_batch = snapshot[0]
            self._update_globals()
            self._update_candidates()  # a first load: no list to fall back on yet
        logger.info("replica loaded: %d users, %d items", len(users), len(items))
        return True

    def _apply(self, store: LearnerStore, change: Change, dense: bytes | None) -> None:
        read = {
            "users": read_side(store, "users", sorted(change.users), self.keyword_decay),
            "items": read_side(store, "items", sorted(change.items)),
        }
        co_rows = list(store.cooccurrence(sorted(change.cooccurrence)))
        words = list(store.vocabulary(sorted(change.words)))
        named = list(store.categories(sorted(change.categories)))
        mass = store.vocabulary_mass()
        head = head_of(dense) if dense is not None else None
        assert self.index is not None
        with self._lock.write():
            if head is not None:
                self.head = head
            assert self.head is not None
            write_side(self.users, read["users"], self.head, "users")
            write_side(self.items, read["items"], self.head, "items")
            load_cooccurrence(co_rows, self.items, self.cooccurrence)
            self.vocabulary.load(words, mass)
            self.categories.update(named)
            if head is not None:  # the first layer changed: every row's projection too
                for side, table in (("users", self.users), ("items", self.items)):
                    project(table, np.arange(len(table)), head, side)
            self._update_globals()
        self._update_candidates()
        published = store.index_batch()
        if published is not None and published > self.index_batch:
            self._take_index(store)
            return
        ids = [i for i in read["items"].vectors if i in self.items.index]
        if ids:
            self.index.upsert(ids, np.stack([read["items"].vectors[i] for i in ids]))
            # after the upsert: a query in between may meet a label not mapped yet, and
            # skips it (recommend)
            self.label_rows = map_labels(self.label_rows, self.index, self.items, ids)

    def _take_index(self, store: LearnerStore) -> None:
        """Answer from the worker's newly published index: load it, bring the items
        changed after its batch up to this replica's state, and swap it in."""
        snapshot = store.index_snapshot()
        if snapshot is None:
            return
        batch, blob = snapshot
        records = store.changes(batch)
        if records is None:  # too old to know what changed since: bring every item
            changed = list(self.items.ids)
        else:
            changed = sorted({i for record in records for i in record["items"]})
        index, label_rows = stream_index(blob, self.items, changed)
        with self._lock.write():
            self.index, self.label_rows, self.index_batch = index, label_rows, batch

    def _update_globals(self) -> None:
        """The global mean and every row's constant (vectorised; under the write lock)."""
        head = self.head
        assert head is not None
        u, i = self.users, self.items
        self.mean = head.mean(
            float(u.rating_sum[: len(u)].sum()), float(u.rating_count[: len(u)].sum())
        )
        for side, table in (("users", u), ("items", i)):
            size = len(table)
            table.const[:size] = head.constants(
                side,
                self.mean,
                table.bias[:size],
                table.rating_sum[:size],
                table.rating_count[:size],
            )

    def _update_candidates(self) -> None:
        """The popularity order and the average user's top items: candidate lists, so a
        query may use the previous ones; computed outside the lock (a pass over every
        item) and swapped in whole. Only the refreshing thread writes the arrays read."""
        head = self.head
        assert head is not None
        u, i = self.users, self.items
        counts = i.rating_count[: len(i)]
        order = np.lexsort((np.arange(len(i)), -i.count[: len(i)], -counts))
        popular = order[i.has_vector[order]]
        # the head's ranking for the average user: item quality (biases, deviations,
        # the item's side of the first layer) dominates it, so its top items are
        # candidates for everyone
        rows = np.flatnonzero(i.has_vector[: len(i)])
        users = np.flatnonzero(u.has_vector[: len(u)])
        mean_user = u.hidden[users].mean(axis=0) if len(users) else head.b_hidden
        blend = dataclasses.replace(head.blend, exposure=self.exposure_weight)
        prior = blend.rank(
            head.score(mean_user, 0.0, i.hidden[rows], i.const[rows]), i.rating_count[rows]
        )
        average_top = rows[np.argsort(-prior, kind="stable")[: self.prior_candidates]]
        self.popular, self.average_top = popular, average_top

    # --- queries --------------------------------------------------------------------------

    def _require(self) -> Head | None:
        """The head; None for an empty store (no one is known); :class:`NotReady` before
        the replica has read a store."""
        if not self.ready:
            raise NotReady(self.waiting)
        return self.head

    @property
    def exposure_weight(self) -> float:
        if self.exposure_override is not None:
            return self.exposure_override
        return self.head.blend.exposure if self.head is not None else 0.0

    def recommend(
        self,
        user_id: str,
        k: int = 10,
        exclude_seen: bool = True,
        offset: int = 0,
        exclude: Collection[str] = frozenset(),
        category: str | None = None,
    ) -> Recommendations:
        """The ranks ``offset + 1 .. offset + k`` for a user (the same items as those
        places of ``k + offset``'s list): FAISS candidates, items often picked with the
        user's, and popular items, re-ranked by the learner's blend; the items of
        ``exclude`` (and, with ``exclude_seen``, the user's) left out. With ``category``,
        every item of that category, ranked alike. An unknown user gets the most-rated
        items (of the category), flagged as a fallback."""
        head = self._require()
        if head is None:  # an empty store: no one known, nothing to recommend
            return self._fallback(user_id, k, offset, exclude, category)
        assert self.index is not None
        n = offset + k
        with self._lock.read():
            u = self.users.index.get(user_id)
            if u is None or not self.users.has_vector[u]:
                return self._fallback(user_id, k, offset, exclude, category)
            seen = self.users.seen.get(user_id, frozenset()) if exclude_seen else frozenset()
            skip = seen | frozenset(exclude)
            cooc = self._cooccurrence(user_id, head)
            if category is not None:  # every item of the category, scored exactly
                pool = self.categories.rows(category, self.items)
            else:
                pool = self._candidates(u, cooc, n, len(skip), len(exclude))
            rating, rank = self._score(u, pool, head, user_id, cooc)
            ranked: list[int] = []  # positions in pool, best first
            taken: set[int] = set()
            for j in np.argsort(-rank, kind="stable").tolist():
                row = int(pool[j])
                if row in taken:
                    continue
                taken.add(row)
                if self.items.ids[row] in skip:
                    continue
                ranked.append(j)
                if len(ranked) == n:
                    break
            items = []  # only the page shown is explained
            for j in ranked[offset:]:
                item = self.items.ids[int(pool[j])]
                reason = self._explain(user_id, item)
                items.append(Ranked.of(item, float(rating[j]), float(rank[j]), reason))
        metrics.RECOMMENDATIONS.labels("personal").inc()
        return Recommendations(
            user_id=user_id, kind="personal", fallback_reason=None, offset=offset, items=items
        )

    def _candidates(
        self, u: int, cooc: Cooc | None, n: int, skipped: int, excluded: int
    ) -> npt.NDArray[np.int64]:
        """Item rows to rank for user row ``u`` (repeats and seen items are left to the
        caller): FAISS neighbours, items picked with the user's, the average user's top,
        the most rated."""
        assert self.index is not None
        want = max(self.candidates, 4 * n) + skipped
        labels = self.index.search_labels(self.users.vectors[u], want)
        label_rows = self.label_rows
        neighbours = label_rows[labels[labels < len(label_rows)]]
        picked_with = np.zeros(0, dtype=np.int64)
        if cooc is not None:  # the items most often picked with the user's
            picked_with, scores = cooc
            top = self.cooccurrence_candidates
            if len(picked_with) > top:
                picked_with = picked_with[np.argpartition(-scores, top)[:top]]
        # repeats and seen items are skipped after scoring: cheaper than filtering ~350
        pool = np.concatenate(
            [
                neighbours[neighbours >= 0],
                picked_with,
                self.average_top,
                self.popular[: self.popular_candidates + n + excluded],
            ]
        )
        return pool[self.items.has_vector[pool]]

    def _fallback(
        self, user_id: str, k: int, offset: int, exclude: Collection[str], category: str | None
    ) -> Recommendations:
        if category is None:
            rows = self.popular[: offset + k + len(exclude)].tolist()
        else:
            mine = self.categories.rows(category, self.items)  # in popularity's order:
            i = self.items
            rows = mine[np.lexsort((mine, -i.count[mine], -i.rating_count[mine]))].tolist()
        rows = [r for r in rows if self.items.ids[r] not in exclude][offset : offset + k]
        items = []
        if rows:  # explained as for a user without a profile: the item's own words
            assert self.head is not None
            rating = self.head.clip(self.mean + self.items.const[rows])
            items = [
                Ranked.of(
                    self.items.ids[r],
                    float(rating[n]),
                    float(self.items.rating_count[r]),
                    self._explain(None, self.items.ids[r]),
                )
                for n, r in enumerate(rows)
            ]
        metrics.RECOMMENDATIONS.labels("fallback").inc()
        return Recommendations(
            user_id=user_id,
            kind="fallback",
            fallback_reason="unknown_user",
            offset=offset,
            items=items,
        )

    def predict(self, user_id: str, item_id: str) -> Ranked:
        """The predicted rating of a known pair; ``KeyError`` names an unknown id."""
        head = self._require()
        with self._lock.read():
            u = self._known(self.users, user_id, "user")
            i = self._known(self.items, item_id, "item")
            assert head is not None  # ids are known: a model is loaded
            rating, rank = self._score(u, np.asarray([i]), head, user_id)
            reason = self._explain(user_id, item_id)
            return Ranked.of(item_id, float(rating[0]), float(rank[0]), reason)

    def similar(self, item_id: str, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` items nearest to ``item_id`` in the index; ``KeyError`` if unknown."""
        self._require()
        if self.index is None or item_id not in self.index:
            raise KeyError(f"unknown item: {item_id!r}")
        return self.index.similar(item_id, k)

    def profile(self, side: str, entity_id: str, k: int = 10) -> UserProfile | ItemProfile:
        """Keywords and counts of a user or item; ``KeyError`` if unknown."""
        self._require()
        table = self.users if side == "users" else self.items
        with self._lock.read():
            r = self._known(table, entity_id, side[:-1])
            n = float(table.rating_count[r])
            words = list(table.keywords.get(entity_id, {}).items())[:k]
            return (UserProfile if side == "users" else ItemProfile).model_validate(
                {
                    f"{side[:-1]}_id": entity_id,
                    "interactions": int(table.count[r]),
                    "ratings": int(n),
                    "mean_rating": float(table.rating_sum[r] / n) if n > 0 else None,
                    "updated_at": float(table.updated[r]),
                    "keywords": [{"word": w, "weight": x} for w, x in words],
                }
            )

    def item_vectors(self) -> tuple[list[str], npt.NDArray[np.float32]]:
        """Items with a representation and their vectors (for benchmarks and checks)."""
        with self._lock.read():
            rows = np.flatnonzero(self.items.has_vector[: len(self.items)])
            return [self.items.ids[r] for r in rows], self.items.vectors[rows].copy()

    def exact_scores(self, user_id: str) -> tuple[list[str], FloatArray]:
        """Ranking scores of every item for a known user (no retrieval): the reference
        that retrieval is measured against."""
        head = self._require()
        with self._lock.read():
            u = self._known(self.users, user_id, "user")
            assert head is not None
            rows = np.flatnonzero(self.items.has_vector[: len(self.items)])
            _, rank = self._score(u, rows, head, user_id)
            return [self.items.ids[r] for r in rows], rank

    def _score(
        self,
        u: int,
        rows: npt.NDArray[np.int64],
        head: Head,
        user_id: str,
        cooc: Cooc | None = None,
    ) -> tuple[FloatArray, FloatArray]:
        """(clipped predicted rating, ranking score) of user row ``u`` with item ``rows``:
        the learner's :class:`drex_model.scoring.Blend`. ``cooc``: the user's sparse
        co-occurrence term, when the caller has it already."""
        raw = head.score(
            self.users.hidden[u],
            float(self.users.const[u]),
            self.items.hidden[rows],
            self.items.const[rows],
        )
        blend = dataclasses.replace(head.blend, exposure=self.exposure_weight)
        if cooc is None:
            cooc = self._cooccurrence(user_id, head)
        content = None
        if blend.content and self.users.content.shape[1]:
            user = self.users.content[u]  # unit rows (write_side): a dot is the cosine
            if user.any():
                content = self.items.content[rows] @ user
        rank = blend.rank(
            raw,
            self.items.rating_count[rows],
            None if cooc is None else lookup_sparse(*cooc, rows),
            content,
        )
        return head.clip(raw), rank

    def _cooccurrence(self, user_id: str, head: Head) -> Cooc | None:
        """The user's co-occurrence term, sparse: (item rows, scores); None when the
        blend does not use it. Under the read lock."""
        if not head.blend.cooccurrence:
            return None
        index = self.items.index
        items = [index[i] for i in self.users.seen.get(user_id, ()) if i in index]
        return self.cooccurrence.scores(items, len(self.items), head.blend.shrinkage)

    def _known(self, table: SideTable, entity_id: str, what: str) -> int:
        r = table.index.get(entity_id)
        if r is None or not table.has_vector[r]:
            raise KeyError(f"unknown {what}: {entity_id!r}")
        return r

    def _explain(self, user_id: str | None, item_id: str) -> Reason:
        """:func:`drex_model.reasons.explain` of the pair, from the state the learner
        explains it with (``user_id`` None: a user without a profile). Under the read
        lock."""
        return explain(
            self.users.keywords.get(user_id, {}) if user_id is not None else {},
            self.items.keywords.get(item_id, {}),
            self.vocabulary,
            self.mean,
            self.weights,
            self.items.quotes.get(item_id, ()),
        )
