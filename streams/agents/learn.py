"""Interactions -> the learner -> its store, the embedding tables and the item index.

**One model.** The dense network (review head, fusion, GRUs, rating MLP) and every
user's and item's state form one model that must see every interaction, so the
``interactions`` topic has one partition, and the worker assigned it holds the learner.
Joins scale out by user partitions (streams/agents/join.py); the learner is one process,
whose scaling path is the encoder, the cost of a text interaction: a ``learn`` worker on
a GPU (``DREX_DEVICE=cuda``) with ``join`` workers (no torch imported) around it.

**Taking over.** The learner lives in its store (drex_store/learner.py), opened when this
worker is assigned ``interactions`` and closed when the partition is revoked (after the
batch in progress is written). Workers that may take over from each other share the
store's folder (``DREX_LEARNER_DIR`` on a shared volume); RocksDB's lock keeps a second
process out until the first has let go, and the new owner restores the learner (checking
its config and text encoder), rebuilds and publishes the item index, and checks that the
store's offset belongs to the ``interactions`` topic the broker holds now
(streams/source.py: after a broker restarted empty, the new topic is read from its
beginning, the model kept). Without a shared store, give the ``learn`` role to one
worker at a time.

**A take** is what the agent reads at once: up to ``encode_window`` records (1024) when a
backlog is there, fewer when ``batch_within`` passes first. A record holds one
interaction, or up to 16 rating-only ones (the join's, ``interaction_records``); each
interaction keeps its record's offset. The take's reviews are encoded first, in one pass
sorted by length (:meth:`LearnerSession.encode_ahead`: fewer padded tokens than a pass
per micro-batch); then its micro-batches of ``batch_size`` interactions are learned and
persisted one by one, as below, a record possibly cut between two (the stored offset
moves once its last interaction is learned, and its ids drop its first part should it
come again); then the review cache is swept (:meth:`LearnerSession.sweep`). A rebalance
waits for the take in progress (faust's ``wait_empty``); should the assignment change
under it anyway, the take stops between micro-batches and the rest is the new owner's.

**A micro-batch**, in the learner's thread (one dedicated thread, so the event loop keeps
serving joins and heartbeats while the CPU works):

1. drop interactions already applied (record offset <= stored offset, or id applied);
2. ``DReXLearner.learn_many`` (the same call as ``drex evaluate`` and replays); its
   scores, made before each label was used, feed the prequential error metrics;
3. read back (``DReXLearner.snapshot``) the representations and keyword profiles of
   the users and items whose state changed (in the batch, or moved by an optimiser
   step), and of those dropped in 1 (a crash may have fallen between the store's write
   and the embedding tables', so a replay writes them again);
4. write all of it (with the reviews pending messages need that the store lacks), the
   applied ids and the offset in one atomic write (``streams.state.batch_write``);
5. upsert the changed items into the stream's FAISS index, published in the store when
   ``index_save_every`` has passed (streams/agents/index.py); every ``checkpoint_every``
   batches, or ``checkpoint_interval`` seconds after the last, write a versioned
   checkpoint folder (keeping the last few) and sweep the store.

Back on the event loop, after a take, the representations it changed are mirrored
(float32 bytes, each id once, its latest) into the ``user-embeddings`` and
``item-embeddings`` tables, whose changelogs let any Kafka consumer follow them, before
faust acknowledges the take (overwrite-only: a replayed take writes them again). Faust
acknowledges a take's records only after the body has gone through all of it
(``take_events``), so the group never commits past what the store holds, and also when
the body raises: a failed micro-batch is retried from the store's state, and after three
failures its interactions go to ``dead-letters`` (replayable), one message each.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from streams import metrics
from streams.agents.index import IndexFeeder
from streams.events import (
    DEAD_LETTERS_TOPIC,
    INTERACTIONS_TOPIC,
    PROCESSING_ERROR,
    InteractionEvent,
    dead_letter,
    interaction_id,
    learned_keys,
    micro_batches,
    read_interactions,
    without_applied,
)
from streams.heap import release_heap
from streams.source import interactions_view
from streams.tables import bytes_table, raw_topic, write_tables

if TYPE_CHECKING:
    import faust

    from streams.settings import WorkerSettings
    from streams.source import TopicView

logger = logging.getLogger(__name__)

USER_EMBEDDINGS: Final = "user-embeddings"
ITEM_EMBEDDINGS: Final = "item-embeddings"
STORE_WAIT_SECONDS: Final = 120.0  # how long a new owner waits for the old one to let go
RETRIES: Final = 3  # attempts at a micro-batch before its interactions are dead-lettered
SWEEP_AT: Final = 4096  # cached reviews before the first sweep (then twice what it kept)
TRIM_EVERY: Final = 30.0  # seconds between two release_heap calls


@dataclass
class BatchResult:
    """What one micro-batch did, for the event loop (tables, metrics)."""

    applied: int = 0
    skipped_offset: int = 0
    skipped_applied: int = 0
    errors: list[float] = field(default_factory=list)  # score - rating, rated ones
    users: dict[str, bytes] = field(default_factory=dict)  # id -> float32 embedding
    items: dict[str, bytes] = field(default_factory=dict)
    learn_seconds: float = 0.0
    persist_seconds: float = 0.0


class LearnerSession:
    """The learner while this worker holds it; every method runs in the learner thread."""

    def __init__(
        self,
        settings: WorkerSettings,
        feeder: IndexFeeder,
        source: Callable[[int], TopicView] | None = None,
    ) -> None:
        """``source(offset)`` shows the ``interactions`` topic from a stored offset
        (:func:`interactions_view`); None: the store's offset is trusted (no broker)."""
        self.settings = settings
        self.feeder = feeder
        self.source = source
        self.learner: Any = None
        self.store: Any = None
        self.info: Any = None
        self.last_checkpoint = time.time()
        self._encoder: Any = None
        self._sweep_at = SWEEP_AT
        self._trim_at = 0.0  # monotonic time of the next release_heap
        self._save_encoder = False
        metrics.bind_gauge(metrics.CHECKPOINT_AGE, lambda: time.time() - self.last_checkpoint)

    @property
    def held(self) -> bool:
        return self.learner is not None

    def acquire(self) -> None:
        """Open the store (waiting for a previous owner), restore the learner and index."""
        if self.held:
            return
        import torch

        from drex_model.device import resolve_device
        from drex_model.learner import DReXLearner
        from drex_model.model import DReXConfig
        from drex_model.text import TextEncoder
        from drex_store.learner import LearnerStore
        from streams.state import restore, stored_review

        s, encoder = self.settings, self._encoder  # None: torch still has its default count
        encode_threads = encoder.threads if encoder else s.torch_threads or torch.get_num_threads()
        torch.set_num_threads(s.learn_threads or encode_threads)  # the encoder sets its own
        device = resolve_device(s.device)
        started = time.monotonic()
        store = LearnerStore.open(s.learner_path, fsync=s.fsync, wait=STORE_WAIT_SECONDS)
        try:
            if self._encoder is None:
                self._encoder = TextEncoder(
                    s.encoder or None, s.encoder_max_tokens, device=device, threads=encode_threads
                )
                self._encoder.warm_up()
            config = DReXConfig.for_variant(
                s.variant, encoder_dim=self._encoder.hidden_size, **s.model_overrides_dict()
            )
            learner = DReXLearner(config, encoder=self._encoder, seed=s.seed, device=device)
            learner.cache.loader = functools.partial(stored_review, store)  # past the budget
            info = restore(store, learner, self._encoder.identity)
            info = self._check_source(store, info)
            items = list(learner.items.ids)
            self.feeder.rebuild(config.dim, items, learner.embeddings("items", items))
            self.feeder.publish(store, info.batches, force=True)
        except BaseException:
            store.close()
            raise
        self.learner, self.store, self.info = learner, store, info
        self._save_encoder = store.encoder() is None  # with the next batch's write
        self._sweep_at = SWEEP_AT
        metrics.OWNS_LEARNER.set(1)
        self._update_gauges()
        logger.info(
            "learner restored in %.1f s: offset %d, %d interactions, %d users, %d items",
            time.monotonic() - started,
            info.offset,
            info.applied,
            len(learner.users),
            len(learner.items),
        )

    def _check_source(self, store: Any, info: Any) -> Any:
        """The store's info, its offset restarted at -1 if the ``interactions`` topic is a
        new incarnation (streams/source.py); that is written at once and logged."""
        from streams.source import check

        if self.source is None:
            return info
        try:
            view = self.source(info.offset)
        except Exception as err:  # the next take-over checks again
            logger.warning(
                "could not look at %s (%r): the stored offset %d is trusted",
                INTERACTIONS_TOPIC,
                err,
                info.offset,
            )
            return info
        verdict = check(info, view, INTERACTIONS_TOPIC)
        if verdict.reset is not None:
            logger.warning(
                "new incarnation of %s (the broker restarted empty, or the topic was made "
                "again): %s. The model is kept (%d interactions learned) and the new topic "
                "is read from its beginning; already applied ids are still dropped",
                INTERACTIONS_TOPIC,
                verdict.reset,
                info.applied,
            )
            metrics.SOURCE_RESETS.labels("learner").inc()
        if verdict.unverified is not None:
            logger.warning("the learner trusts its stored offset: %s", verdict.unverified)
        if verdict.changed:
            store.put_info(verdict.info)
        return verdict.info

    def release(self, save_index: bool = True) -> None:
        """Close the store and forget the learner (another worker takes it over)."""
        if not self.held:
            return
        try:
            if save_index:  # servers get the latest items even between timed publications
                self.feeder.publish(self.store, self.info.batches, force=True)
        except Exception:
            logger.exception("publishing the item index failed")
        self.store.close()
        self.learner = self.store = self.info = None
        self.feeder.drop()
        metrics.OWNS_LEARNER.set(0)
        logger.info("learner released")

    def encode_ahead(self, batch: Sequence[tuple[int, InteractionEvent]]) -> float:
        """Encode the reviews of a whole take in one pass sorted by length, before its
        micro-batches are learned: fewer padded tokens than one pass per micro-batch.

        The encoder is frozen, so this changes no result: :meth:`process` finds the
        reviews in the learner's cache. A failure is only logged; :meth:`process` then
        encodes what is missing itself, with its retries. Returns the seconds it took.
        """
        started = time.perf_counter()
        try:
            self.acquire()
            learner = self.learner
            texts = [e.text for o, e in batch if e.text and o > self.info.offset]
            if texts and learner.encoder is not None and learner.config.use_text:
                learner.cache.add(learner.encoder, texts)
        except Exception:
            logger.exception("encoding ahead failed; each micro-batch encodes its own reviews")
        return time.perf_counter() - started

    def sweep(self, force: bool = False) -> None:
        """Forget the encoded reviews no pending message needs, once the cache has grown
        to twice what the last sweep kept (at least :data:`SWEEP_AT`; ``force``: now):
        without it the cache would hold every review the worker ever read. Between takes
        only: a take's reviews encoded ahead are not pending yet."""
        if not self.held:
            return
        if time.monotonic() >= self._trim_at:
            release_heap()
            self._trim_at = time.monotonic() + TRIM_EVERY
        cache, budget = self.learner.cache, int(self.settings.review_cache_mb * 2**20)
        if len(cache) < self._sweep_at and cache.loaded_bytes <= budget and not force:
            return
        started = time.perf_counter()
        before = len(cache)
        self.learner.sweep_reviews()
        kept = len(cache)
        self._sweep_at = max(SWEEP_AT, 2 * kept)
        # every review still cached is a pending message's, stored with the batch that
        # set it: the oldest can go back to the store (ReviewCache.get reads them again)
        unloaded = cache.unload(budget // 2) if cache.loaded_bytes > budget else 0
        self._update_gauges()
        logger.info(
            "review cache swept: kept %d of %d (%d back in the store, %.0f MiB in memory) "
            "in %.2f s",
            kept,
            before,
            unloaded,
            cache.loaded_bytes / 2**20,
            time.perf_counter() - started,
        )

    def process(
        self, batch: Sequence[tuple[int, InteractionEvent]], complete: int | None = None
    ) -> BatchResult:
        """Learn one micro-batch of (record offset, interaction) and persist it (module
        doc); ``complete``: the last offset whose record it finishes (None: all of them).
        If anything fails, the in-memory learner (possibly half updated) is dropped, so
        that a retry starts again from the store, and the error propagates."""
        self.acquire()
        try:
            return self._process(batch, complete)
        except BaseException:
            logger.exception("a micro-batch failed; the learner is reloaded from its store")
            self.release(save_index=False)
            raise

    def _process(
        self, batch: Sequence[tuple[int, InteractionEvent]], complete: int | None
    ) -> BatchResult:
        from streams.state import batch_write, next_info

        learner, store, info = self.learner, self.store, self.info
        result = BatchResult()
        fresh = [(o, e) for o, e in batch if o > info.offset]
        result.skipped_offset = len(batch) - len(fresh)
        # applied event ids (streams/agents/join.py): a half already learned is dropped
        done = store.applied(k for _, e in fresh for k in learned_keys(e))
        keep: list[InteractionEvent] = []
        kept_ids: list[str] = []
        replayed = [e for o, e in batch if o <= info.offset]
        for _, event in fresh:
            rest = without_applied(event, done)
            if rest is None:
                result.skipped_applied += 1
                replayed.append(event)
            else:
                done.update(learned_keys(rest))  # also drops a repeat within the batch
                keep.append(rest)
                kept_ids += learned_keys(rest)
        # the stored offset moves to the last record finished (its last interaction):
        # a record's first part, learned alone, is dropped by its ids when it comes again
        finished = [r for r in batch if complete is None or r[0] <= complete]
        last_offset, last = max(reversed(finished), key=lambda r: r[0], default=(info.offset, None))
        step_before = learner.step
        started = time.perf_counter()
        changed: dict[str, set[str]] = {"users": set(), "items": set()}
        if keep:
            scores = learner.learn_many([e.to_interaction() for e in keep])
            result.errors = [
                float(s) - float(e.rating)
                for s, e in zip(scores, keep, strict=True)
                if e.rating is not None
            ]
            # this batch's entities, and those whose learnable rows a step moved
            changed = {side: set(ids_) for side, ids_ in learner.changed.items()}
        result.learn_seconds = time.perf_counter() - started
        stepped = learner.step != step_before
        # Interactions already in the store come again after a crash, which may have hit
        # between the store's write and the embedding tables' changelog: their entities'
        # current representations are written again (overwrite-only, so harmless).
        changed["users"] |= {e.user_id for e in replayed if e.user_id in learner.users.index}
        changed["items"] |= {e.item_id for e in replayed if e.item_id in learner.items.index}
        ordered = {side: sorted(ids_) for side, ids_ in changed.items()}
        started = time.perf_counter()
        last_id = interaction_id(last) if last is not None else None
        new_info = next_info(info, last_offset, len(keep), learner.step, last_id)
        first = info.batches == 0
        write = batch_write(
            store,
            learner,
            new_info,
            ordered,
            kept_ids,
            dense=stepped or first,
            encoder=self._encoder.identity if self._save_encoder else None,
            categories={e.item_id: e.categories for e in keep if e.categories},
        )
        store.commit(write)
        self._save_encoder = False
        result.persist_seconds = time.perf_counter() - started
        self.info = new_info
        result.applied = len(keep)
        vectors = {side: write.representations[side] for side in ordered}
        items = [vectors["items"][k] for k in ordered["items"]]
        dim = learner.config.dim
        self.feeder.upsert(ordered["items"], np.stack(items) if items else np.zeros((0, dim)))
        if self.feeder.needs_training():  # train the inverted lists on today's catalogue
            catalogue = list(learner.items.ids)
            self.feeder.rebuild(dim, catalogue, learner.embeddings("items", catalogue))
        self.feeder.publish(store, new_info.batches)
        result.users = {k: v.tobytes() for k, v in vectors["users"].items()}
        result.items = {k: v.tobytes() for k, v in vectors["items"].items()}
        if self.checkpoint_due(new_info.batches):
            self.checkpoint()
        self._update_gauges()
        return result

    def checkpoint_due(self, batches: int) -> bool:
        """After the ``batches``-th micro-batch: every ``checkpoint_every`` batches, or once
        ``checkpoint_interval`` seconds have passed since the last checkpoint (a stream
        of few batches would otherwise go hours without one)."""
        every, interval = self.settings.checkpoint_every, self.settings.checkpoint_interval
        by_count = every > 0 and batches % every == 0
        return by_count or 0 < interval <= time.time() - self.last_checkpoint

    def checkpoint(self) -> Path:
        """A versioned folder for serving and people; sweeps the store; keeps the last N."""
        from drex_model.checkpoint import save_checkpoint

        s = self.settings
        name = f"step-{self.info.batches:09d}"
        root: Path = s.checkpoint_path
        tmp = root / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_checkpoint(
            self.learner,
            tmp,
            extra={
                "offset": self.info.offset,
                "interactions": self.info.applied,
                "batches": self.info.batches,
                "settings": s.to_dict(),
                "written_at": time.time(),
            },
        )
        out = root / name
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)  # a reader never sees a half-written folder
        for old in sorted(p for p in root.glob("step-*") if p.is_dir())[: -s.checkpoints_kept]:
            shutil.rmtree(old, ignore_errors=True)
        reviews, applied = self.store.gc(time.time() - s.dedup_retention)
        self.last_checkpoint = time.time()
        logger.info("checkpoint %s (swept %d reviews, %d applied ids)", out, reviews, applied)
        return out

    def _update_gauges(self) -> None:
        if self.learner is None:
            return
        metrics.USERS.set(len(self.learner.users))
        metrics.ITEMS.set(len(self.learner.items))
        metrics.REVIEWS_CACHED.set(len(self.learner.cache))
        metrics.REVIEW_CACHE_BYTES.set(self.learner.cache.loaded_bytes)
        metrics.APPLIED_TOTAL.set(self.info.applied)
        metrics.LEARNER_OFFSET.set(self.info.offset)


@dataclass
class LearnWiring:
    """What :func:`register` added to the app."""

    session: LearnerSession
    agent: Any
    user_embeddings: Any
    item_embeddings: Any
    executor: concurrent.futures.ThreadPoolExecutor


def register(app: faust.App, settings: WorkerSettings, feeder: IndexFeeder) -> LearnWiring:
    """Add the learn agent, the embedding tables and the ownership hooks to ``app``."""
    interactions = raw_topic(app, INTERACTIONS_TOPIC, partitions=1)
    dead_letters = raw_topic(app, DEAD_LETTERS_TOPIC)
    # partitions=1: written while processing interactions' only partition
    tables = [
        bytes_table(app, USER_EMBEDDINGS, 1, help="user id -> float32 representation"),
        bytes_table(app, ITEM_EMBEDDINGS, 1, help="item id -> float32 representation"),
    ]
    session = LearnerSession(settings, feeder, interactions_view(settings))
    executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="drex-learner")
    prequential = metrics.Prequential()

    def owned() -> bool:
        return any(tp.topic == INTERACTIONS_TOPIC for tp in app.consumer.assignment())

    async def in_learner_thread(fun: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(executor, fun, *args)

    async def learn_with_retries(
        batch: list[tuple[int, InteractionEvent]], complete: int
    ) -> BatchResult | None:
        """``session.process`` retried from the store's state: raising out of the loop
        would not replay the batch (``take_events`` acknowledges it on its way out), so
        one that fails three times goes to ``dead-letters`` instead of blocking the stream.
        """
        from streams.source import SourceError

        for attempt in range(RETRIES):
            try:
                result: BatchResult = await in_learner_thread(session.process, batch, complete)
                return result
            except SourceError as err:  # no retry helps: the worker stops with the reason
                await refuse(err)
                return None
            except Exception as err:
                if attempt + 1 < RETRIES:
                    await asyncio.sleep(2.0**attempt)
                    continue
                logger.error("%d interactions go to dead-letters", len(batch))
                for _, event in batch:  # one each, replayable as it is
                    letter = dead_letter(event.dumps(), INTERACTIONS_TOPIC, err)
                    await dead_letters.send(value=letter)
                metrics.DEAD_LETTERS.labels(PROCESSING_ERROR).inc(len(batch))
        return None

    take = max(settings.batch_size, settings.encode_window)

    @app.agent(interactions, name="drex.learn")
    async def learn(stream: Any) -> None:
        async for events in stream.take_events(take, within=settings.batch_within):
            if not owned():  # revoked while these were buffered: the new owner reads them
                continue
            metrics.EVENTS_IN.labels(INTERACTIONS_TOPIC).inc(len(events))
            decoded: list[tuple[int, InteractionEvent]] = []  # (record offset, interaction)
            ends: set[int] = set()  # where each record's last interaction is in ``decoded``
            for event in events:
                offset = event.message.offset
                try:
                    parsed = read_interactions(event.value)
                except Exception as err:  # only a bug or a foreign writer gets here
                    logger.exception("undecodable interactions record at offset %d", offset)
                    await dead_letters.send(value=dead_letter(event.value, INTERACTIONS_TOPIC, err))
                    metrics.DEAD_LETTERS.labels(PROCESSING_ERROR).inc()
                else:
                    decoded += ((offset, e) for e in parsed)
                    ends.add(len(decoded) - 1)
            if any(e.text for _, e in decoded):  # any size: a take may be one micro-batch
                seconds = await in_learner_thread(session.encode_ahead, decoded)
                metrics.ENCODE_SECONDS.observe(seconds)
            users: dict[str, bytes] = {}  # each id's latest representation in the take
            items: dict[str, bytes] = {}
            try:
                for batch, complete in micro_batches(decoded, ends, settings.batch_size):
                    if not owned():  # revoked midway: the new owner reads the rest
                        break
                    result = await learn_micro_batch(batch, complete)
                    if result is not None:
                        users.update(result.users)
                        items.update(result.items)
            finally:  # before faust acknowledges the take
                write_tables(tables, (users, items), events[-1])
            await in_learner_thread(session.sweep)

    async def learn_micro_batch(
        batch: list[tuple[int, InteractionEvent]], complete: int
    ) -> BatchResult | None:
        result = await learn_with_retries(batch, complete)
        if result is None:
            return None
        metrics.BATCH_SIZE.observe(len(batch))
        metrics.LEARN_SECONDS.observe(result.learn_seconds)
        metrics.PERSIST_SECONDS.observe(result.persist_seconds)
        metrics.INTERACTIONS_APPLIED.inc(result.applied)
        if result.skipped_offset:
            metrics.INTERACTIONS_SKIPPED.labels("offset").inc(result.skipped_offset)
        if result.skipped_applied:
            metrics.INTERACTIONS_SKIPPED.labels("applied").inc(result.skipped_applied)
        prequential.update(result.errors)
        return result

    @app.on_partitions_revoked.connect
    async def on_revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        if any(tp.topic == INTERACTIONS_TOPIC for tp in args[0]):  # args: (revoked,)
            await in_learner_thread(session.release)  # after the batch in progress

    pending: list[asyncio.Future[Any]] = []

    @app.on_partitions_assigned.connect
    async def on_assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        if any(tp.topic == INTERACTIONS_TOPIC for tp in args[0]):  # args: (assigned,)
            # restore now rather than at the first record; not awaited: the rebalance
            # must not wait for torch and the store (the next batch queues behind it)
            future = asyncio.ensure_future(take_over())
            future.add_done_callback(_log_failure)
            pending[:] = [future]

    async def take_over() -> None:
        from streams.source import SourceError

        try:
            await in_learner_thread(session.acquire)
        except SourceError as err:
            await refuse(err)

    async def refuse(err: Exception) -> None:
        """Stop the worker with ``err``'s one-line instruction (a crash: exit code 1)."""
        logger.critical("drex worker stops: %s", err)
        await app.crash(err)

    @app.on_before_shutdown.connect
    async def on_shutdown(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        await in_learner_thread(session.release)
        executor.shutdown(wait=True)

    return LearnWiring(session, learn, tables[0], tables[1], executor)


def _log_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.error("restoring the learner failed", exc_info=future.exception())
