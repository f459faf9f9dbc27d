"""Review + rating -> interaction: the join agent, partitioned by user.

The two halves of a (user, item) interaction travel separately on ``reviews`` and
``ratings`` (keyed by user id, so both land in the same partition number; producers must
use Kafka's default murmur2 partitioner, e.g. librdkafka's ``murmur2_random``). Kafka
Streams-style stream-stream joins do not exist in faust, so the join is a store and a
clock (:class:`Joiner`, a pure class, wrapped by :func:`register`):

* The first half waits in the join's state (streams/join_state.py: RocksDB per partition,
  changelogged per step, so a partition's rows move with it on a rebalance), keyed by
  :func:`row_key`, the JSON array ``[user, item]`` (unambiguous whatever the ids hold).
  When the other half arrives, one :class:`InteractionEvent` with both goes to
  ``interactions`` (rating-only ones up to 16 to a record: :func:`interaction_records`).
* A half whose partner has not come within ``join_window`` seconds is emitted alone
  (outcome ``expired``); the model fuses the missing modality as zeros.
* **An event id is one event, across the stream.** Each id seen is a small row of its
  own (:func:`id_key`) for ``dedup_retention`` seconds: a later message with that id in
  the partition is dropped (``duplicate``), whatever it contains. In another partition
  (another user) the learner drops it (:func:`streams.events.without_applied`). A pair's
  row keeps no list of ids: its size is bounded however many events the pair gets.
* A half arriving after its interaction was emitted without it (its window had expired)
  is emitted as its own single-modality interaction and counted ``late``: the learner
  then sees the pair twice, once per modality. Dropping it would lose a label; merging
  it would need retracting an update the learner has already made.
* A second half of the same kind with a new id while one is waiting (a corrected review
  before the rating came) sends the waiting one alone (``superseded``) and waits with
  the new one. A new event for a pair already emitted (a re-rating) starts a new
  interaction: every distinct valid event is learned once (docs/events.md).
* An invalid message goes to ``dead-letters`` with its reason code; the stream goes on.
  So does a valid one whose processing fails: each message is joined in a sub-step,
  merged only if it succeeded (else: a ``processing_error`` dead letter), and an
  interaction the broker refuses is a dead letter itself; the batch goes on.

**The clock.** A row's window starts at its record's Kafka timestamp. Expiry is checked
once per batch of messages for each partition in it, and on *ticks*: a timer sends one
small message per owned partition to the co-partitioned ``join-ticks`` topic, so that
every change of the state happens in the agent, one step at a time. The time a row is
compared against is, per partition, the smallest "latest record timestamp" of the source topics that
delivered a record in the last ``idle_after`` seconds (default: one window), or the wall
clock when none did. So a worker that restarts with a backlog, or reads one topic ahead
of the other, never expires a half whose partner is still in the backlog: the clock
follows the records; only an idle partition is timed by the wall clock. This assumes
producer and worker clocks agree to well within a window (NTP).

**Delivery.** A step's rows are committed only *after* its emitted interactions are
acknowledged (a row can say "emitted" only if the interaction really was): its changelog
record, then its local write batch with the source offsets (streams/join_state.py). A
message delivered again is dropped by its event id (``replayed`` when below the stored
offsets); a new event below them (its topic started again) is joined, never dropped. A
crash before the changelog record re-emits the interactions with the same event ids,
which the learner drops (:func:`streams.events.without_applied`).
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import orjson

from streams.events import (
    DEAD_LETTERS_TOPIC,
    DEFAULT_MAX_TEXT_CHARS,
    DEFAULT_RATING_SCALE,
    INTERACTIONS_TOPIC,
    PROCESSING_ERROR,
    RATINGS_TOPIC,
    REVIEWS_TOPIC,
    InteractionEvent,
    InvalidEvent,
    RatingEvent,
    ReviewEvent,
    dead_letter,
    validate,
)
from streams.join_state import PartitionRows

if TYPE_CHECKING:
    import faust

    from streams.join_state import JoinState
    from streams.settings import WorkerSettings

logger = logging.getLogger(__name__)

TICKS_TOPIC: Final = "join-ticks"
BUFFER_TABLE: Final = "join-buffer"
REVIEW: Final = "review"
RATING: Final = "rating"
# Outcomes (metric labels): emitted modality, why a half went alone, dropped resends.
BOTH: Final = "both"
REVIEW_ONLY: Final = "review_only"
RATING_ONLY: Final = "rating_only"
EXPIRED: Final = "expired"
LATE: Final = "late"
SUPERSEDED: Final = "superseded"
DUPLICATE: Final = "duplicate"

JOIN_WITHIN: Final = 0.05  # seconds a partial batch of source messages waits
_SOURCES: Final = (REVIEWS_TOPIC, RATINGS_TOPIC)


def row_key(user_id: str, item_id: str) -> bytes:
    """A pair's row in the buffer table: ``["user", "item"]`` (unambiguous)."""
    return _key(orjson.dumps((user_id, item_id)))


def id_key(partition: int, event_id: str) -> bytes:
    """The row remembering an event id in a partition: ``[partition, "id"]`` (never
    equal to a :func:`row_key`, whose first element is a string)."""
    return _key(orjson.dumps((partition, event_id)))


Store = MutableMapping[bytes, bytes]
REPLAYED: Final = "replayed"  # a source message applied before a restart, dropped


def _key(raw: bytes) -> bytes:
    """``raw`` in a buffer of its own length: orjson (3.13) leaves a short result in a 4
    KiB allocation, and keys live in the expiry heaps for the dedup retention (an hour)."""
    return bytes(memoryview(raw))


@dataclass
class Emission:
    """An interaction to send, and the outcome labels it counts under."""

    event: InteractionEvent
    outcomes: tuple[str, ...]


@dataclass
class JoinStep:
    """What one message, a tick or a batch of them produced. The caller sends ``emits``
    (and waits for the broker's acknowledgement), sends ``dead_letters``, then stores the
    ``writes`` (:meth:`Joiner.apply`, or JoinState.commit and :meth:`Joiner.index`). A
    later message of the same step sees its earlier writes.

    A step with a ``parent`` is one message's part: it sees the parent's writes and is
    merged into it (:meth:`merge`) only if the message went through."""

    emits: list[Emission] = field(default_factory=list)
    writes: dict[bytes, bytes | None] = field(default_factory=dict)  # None: delete
    partitions: dict[bytes, int] = field(default_factory=dict)  # row -> its partition
    dead_letters: list[tuple[str, bytes]] = field(default_factory=list)  # (reason, message)
    outcomes: Counter[str] = field(default_factory=Counter)
    parent: JoinStep | None = None

    def merge(self, sub: JoinStep) -> None:
        """Take over what the sub-step ``sub`` produced."""
        self.emits += sub.emits
        self.writes.update(sub.writes)
        self.partitions.update(sub.partitions)
        self.dead_letters += sub.dead_letters
        self.outcomes.update(sub.outcomes)


@dataclass
class _TopicClock:
    max_ts: float  # latest record timestamp seen (-inf: none since the partition came)
    last_wall: float  # wall time of the latest record (or of taking the partition)


class Joiner:
    """The join's logic over mappings of bytes to bytes: one per partition (the worker's
    ``JoinState.rows``) or one for all (a dict: replays, tests). Single-threaded; see the
    module docstring for semantics.

    Pair rows are JSON: ``p`` partition, ``u``/``i`` ids, ``review`` / ``rating`` the
    waiting halves, ``since`` when the wait began, ``done`` kinds emitted in the current
    generation, ``at`` when the last emission happened. Id rows (:func:`id_key`) are
    ``{"p", "e": 1, "since": null, "at"}``: ``at`` when the id came; purged like an
    emitted pair row, ``retention`` seconds after ``at``.
    """

    def __init__(
        self,
        store: Store | Callable[[int], Store],
        window: float,
        retention: float = 3600.0,
        idle_after: float | None = None,
        rating_scale: int = DEFAULT_RATING_SCALE,
        max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
    ) -> None:
        if window <= 0 or retention < 0:
            raise ValueError("window must be > 0 and retention >= 0")
        # one mapping for every partition (a dict), or a partition's own (JoinState.rows)
        self._store_of: Callable[[int], Store] = (
            store if callable(store) else lambda _partition: store
        )
        self.window = float(window)
        self.retention = float(retention)
        self.idle_after = float(idle_after if idle_after is not None else window)
        self.rating_scale = rating_scale
        self.max_text_chars = max_text_chars
        self._loaded: set[int] = set()
        self._deadlines: dict[int, list[tuple[float, bytes]]] = {}
        self._purges: dict[int, list[tuple[float, bytes]]] = {}
        self._clocks: dict[tuple[str, int], _TopicClock] = {}

    # --- entry points -----------------------------------------------------------------

    def on_message(
        self,
        topic: str,
        partition: int,
        raw: bytes,
        timestamp: float,
        now: float,
        step: JoinStep | None = None,
        expire: bool = True,
    ) -> JoinStep:
        """A message from ``reviews`` or ``ratings`` with its Kafka timestamp (seconds).

        ``step`` accumulates a batch (default: a new step); ``expire=False`` leaves the
        expiry check to a later :meth:`on_tick` of the same step (once per batch)."""
        step = JoinStep() if step is None else step
        self._ensure(partition, now)
        clock = self._clocks[(topic, partition)]
        clock.max_ts = max(clock.max_ts, timestamp)
        clock.last_wall = now
        sub = JoinStep(parent=step)
        try:
            event = validate(
                topic, raw, rating_scale=self.rating_scale, max_text_chars=self.max_text_chars
            )
            self._join(sub, partition, event, timestamp)
        except InvalidEvent as err:
            step.dead_letters.append((err.reason, dead_letter(raw, topic, err, now)))
        except Exception as err:  # a bug costs this message a dead letter, not the batch
            logger.exception("joining a %s message failed", topic)
            step.dead_letters.append((PROCESSING_ERROR, dead_letter(raw, topic, err, now)))
        else:
            step.merge(sub)
        if expire:
            self._expire(step, partition, now)
        return step

    def on_tick(self, partition: int, now: float, step: JoinStep | None = None) -> JoinStep:
        """Expire and purge ``partition``'s rows whose time has come."""
        step = JoinStep() if step is None else step
        self._ensure(partition, now)
        self._expire(step, partition, now)
        return step

    def apply(self, step: JoinStep) -> None:
        """Write the step's rows into the store (after its emissions were delivered) and
        index them. A write that fails is logged and the others go on: the interactions
        it records are out already. (The worker commits through JoinState, then indexes.)"""
        for partition, writes in self.writes_by_partition(step).items():
            store = self._store_of(partition)
            for key, value in writes.items():
                try:
                    if value is None:
                        store.pop(key, None)
                    else:
                        store[key] = value
                except Exception:
                    logger.exception("writing join row %r failed", key[:200])
        self.index(step)

    @staticmethod
    def writes_by_partition(step: JoinStep) -> dict[int, dict[bytes, bytes | None]]:
        """The step's row writes, by partition."""
        out: dict[int, dict[bytes, bytes | None]] = {}
        for key, value in step.writes.items():
            out.setdefault(step.partitions[key], {})[key] = value
        return out

    def index(self, step: JoinStep) -> None:
        """Index the step's written rows (once they are stored)."""
        for key, value in step.writes.items():
            if value is not None:
                try:
                    self._index(key, orjson.loads(value))
                except Exception:
                    logger.exception("indexing join row %r failed", key[:200])

    def clock(self, partition: int, now: float) -> float:
        """The time rows of ``partition`` are compared against (module docstring)."""
        marks = [
            c.max_ts
            for topic in _SOURCES
            if (c := self._clocks.get((topic, partition))) is not None
            and now - c.last_wall < self.idle_after
        ]
        return min(marks) if marks else now

    def forget(self, partitions: Iterable[int] | None = None) -> None:
        """Drop what is cached about ``partitions`` (all if None): after a rebalance the
        table may hold rows another worker wrote; they are re-read on next use."""
        parts = set(self._loaded) if partitions is None else set(partitions)
        for p in parts:
            self._loaded.discard(p)
            self._deadlines.pop(p, None)
            self._purges.pop(p, None)
            for topic in _SOURCES:
                self._clocks.pop((topic, p), None)

    def pending(self) -> int:
        """Rows waiting for a partner (loaded partitions), for metrics and tests."""
        return sum(len(h) for h in self._deadlines.values())

    # --- the join -------------------------------------------------------------------

    def _join(
        self, step: JoinStep, partition: int, event: ReviewEvent | RatingEvent, ts: float
    ) -> None:
        kind = REVIEW if isinstance(event, ReviewEvent) else RATING
        other = RATING if kind == REVIEW else REVIEW
        seen = id_key(partition, event.event_id)
        if self._get(step, partition, seen) is not None:
            step.outcomes[DUPLICATE] += 1
            return
        self._write(step, partition, seen, {"p": partition, "e": 1, "since": None, "at": ts})
        key = row_key(event.user_id, event.item_id)
        row = self._get(step, partition, key)
        part: dict[str, Any] = {"id": event.event_id, "t": event.event_time, "ts": ts}
        part |= {"text": event.text} if isinstance(event, ReviewEvent) else {"r": event.rating}
        if event.categories:  # the item's, travelling with the half that gave them
            part["c"] = event.categories
        if row is None:
            row = {"p": partition, "u": event.user_id, "i": event.item_id, REVIEW: None}
            row |= {RATING: None, "since": None, "done": [], "at": None}
        if row[other] is not None:  # the partner is waiting: both halves go out
            halves = {kind: part, other: row[other]}
            self._emit(step, row, halves[REVIEW], halves[RATING], ())
            row[other] = None
            row["since"] = None
            row["done"] = [REVIEW, RATING]
            row["at"] = ts
        elif row[kind] is not None:  # a newer half of the same kind replaces the waiting one
            self._emit_alone(step, row, kind, SUPERSEDED)
            row[kind] = part
            row["since"] = ts
            row["done"] = []
        elif row["done"] and kind not in row["done"]:  # its interaction went out without it
            self._emit_part(step, row, kind, part, (LATE,))
            row["done"].append(kind)
            row["at"] = ts
        else:  # the first half (of a new generation, if this kind was emitted before)
            row[kind] = part
            row["since"] = ts
            row["done"] = []
        self._write(step, partition, key, row)

    def _expire(self, step: JoinStep, partition: int, now: float) -> None:
        clock = self.clock(partition, now)
        heap = self._deadlines.get(partition, [])
        while heap and heap[0][0] <= clock:
            deadline, key = heapq.heappop(heap)
            sub = JoinStep(parent=step)
            try:
                row = self._get(sub, partition, key)
                if row is None or row["since"] is None or row["since"] + self.window != deadline:
                    continue  # stale entry: the row changed since it was indexed
                kind = REVIEW if row[REVIEW] is not None else RATING
                self._emit_alone(sub, row, kind, EXPIRED)
                row["since"] = None
                row["at"] = clock
                self._write(sub, partition, key, row)
            except Exception as err:  # a row that cannot be expired is set aside, not retried
                self._set_aside(step, partition, key, err, clock)
            else:
                step.merge(sub)
        purges = self._purges.get(partition, [])
        while purges and purges[0][0] <= clock:
            due, key = heapq.heappop(purges)
            try:
                row = self._get(step, partition, key)
                at = None if row is None or row["since"] is not None else row["at"]
                if at is not None and at + self.retention == due:  # else: stale entry
                    self._write(step, partition, key, None)
            except Exception as err:
                self._set_aside(step, partition, key, err, clock)

    def _set_aside(
        self, step: JoinStep, partition: int, key: bytes, err: Exception, now: float
    ) -> None:
        """A row that fails goes to ``dead-letters`` (topic ``join-buffer``), out of the way."""
        logger.exception("join row %r failed; it goes to dead-letters", key[:200])
        letter = dead_letter(self._raw(step, partition, key), BUFFER_TABLE, err, now)
        step.dead_letters.append((PROCESSING_ERROR, letter))
        self._write(step, partition, key, None)

    @staticmethod
    def _write(step: JoinStep, partition: int, key: bytes, row: dict[str, Any] | None) -> None:
        step.writes[key] = None if row is None else orjson.dumps(row)
        step.partitions[key] = partition

    def _emit_alone(self, step: JoinStep, row: dict[str, Any], kind: str, why: str) -> None:
        self._emit_part(step, row, kind, row[kind], (why,))
        row[kind] = None
        if kind not in row["done"]:
            row["done"].append(kind)

    def _emit_part(
        self,
        step: JoinStep,
        row: dict[str, Any],
        kind: str,
        part: dict[str, Any],
        why: tuple[str, ...],
    ) -> None:
        if kind == REVIEW:
            self._emit(step, row, part, None, why)
        else:
            self._emit(step, row, None, part, why)

    def _emit(
        self,
        step: JoinStep,
        row: dict[str, Any],
        review: dict[str, Any] | None,
        rating: dict[str, Any] | None,
        why: tuple[str, ...],
    ) -> None:
        times = [p["t"] for p in (review, rating) if p is not None]
        event = InteractionEvent(
            user_id=row["u"],
            item_id=row["i"],
            rating=rating["r"] if rating is not None else None,
            text=review["text"] if review is not None else None,
            event_time=max(times),
            review_event_id=review["id"] if review is not None else None,
            rating_event_id=rating["id"] if rating is not None else None,
            categories=(rating or {}).get("c") or (review or {}).get("c"),
        )
        modality = BOTH if review and rating else (REVIEW_ONLY if review else RATING_ONLY)
        outcomes = (modality, *why)
        step.emits.append(Emission(event, outcomes))
        step.outcomes.update(outcomes)

    # --- rows and the in-memory index -------------------------------------------------

    def _raw(self, step: JoinStep, partition: int, key: bytes) -> bytes | None:
        """A row as the step (and the steps it belongs to) left it, else as stored."""
        s: JoinStep | None = step
        while s is not None:
            if key in s.writes:
                return s.writes[key]
            s = s.parent
        return self._store_of(partition).get(key)

    def _get(self, step: JoinStep, partition: int, key: bytes) -> dict[str, Any] | None:
        raw = self._raw(step, partition, key)
        return None if raw is None else dict(orjson.loads(raw))

    def _ensure(self, partition: int, now: float) -> None:
        """Index a partition's rows the first time it is seen (after start or rebalance)."""
        if partition in self._loaded:
            return
        self._loaded.add(partition)
        self._deadlines[partition] = []
        self._purges[partition] = []
        for topic in _SOURCES:
            self._clocks[(topic, partition)] = _TopicClock(-math.inf, now)
        store = self._store_of(partition)
        rows = store.rows() if isinstance(store, PartitionRows) else list(store.items())
        for key, value in rows:
            try:
                row = orjson.loads(value)
                if row.get("p") == partition:
                    self._index(key, row)
            except Exception:  # left to purge by hand; the stream goes on
                logger.exception("join row %r is unreadable", key[:200])

    def _index(self, key: bytes, row: dict[str, Any]) -> None:
        p = row["p"]
        if p not in self._loaded:
            return
        if row["since"] is not None:
            heapq.heappush(self._deadlines[p], (row["since"] + self.window, key))
        elif row["at"] is not None:
            heapq.heappush(self._purges[p], (row["at"] + self.retention, key))


# --- faust wiring ---------------------------------------------------------------------


@dataclass
class JoinWiring:
    """What :func:`register` added to the app."""

    joiner: Joiner
    agent: Any  # the faust agent (agent.test_context() in tests)
    state: JoinState  # the rows and source offsets, per partition (streams/join_state.py)


def register(
    app: faust.App,
    settings: WorkerSettings,
    interactions: Any = None,
    dead_letters: Any = None,
    state: JoinState | None = None,
) -> JoinWiring:
    """Add the join agent, its state and its tick timer to ``app`` (``settings``: a
    :class:`streams.settings.WorkerSettings`). ``interactions`` and ``dead_letters``
    default to the Kafka topics, ``state`` to a ``JoinState`` under the state dir
    changelogged to ``<app id>-join-state``; tests pass channels and a state of their own."""
    from streams import metrics
    from streams.join_state import JoinState, KafkaChangelog, changelog_topic, deliver
    from streams.tables import raw_topic

    n = settings.partitions
    source = raw_topic(app, REVIEWS_TOPIC, RATINGS_TOPIC, TICKS_TOPIC, partitions=n)
    ticks = raw_topic(app, TICKS_TOPIC, partitions=n)
    if interactions is None:
        interactions = raw_topic(app, INTERACTIONS_TOPIC, partitions=1)
    if dead_letters is None:
        dead_letters = raw_topic(app, DEAD_LETTERS_TOPIC)
    if state is None:
        name = changelog_topic(settings.app_id)
        changelog = KafkaChangelog(raw_topic(app, name, partitions=n), name, settings)
        state = JoinState(settings.state_path / "join-state", changelog)
    joiner = Joiner(state.rows, settings.join_window, retention=settings.dedup_retention)
    metrics.bind_gauge(
        metrics.JOIN_PARTITIONS,
        lambda: sum(tp.topic == REVIEWS_TOPIC for tp in app.assignor.assigned_actives()),
    )

    async def step_of(events: list[Any]) -> None:
        partitions = list(dict.fromkeys(e.message.partition for e in events))
        joiner.forget(await state.ensure_all(partitions))  # caught up before any use
        now = time.time()
        step = JoinStep()
        arrived: Counter[str] = Counter()
        offsets: dict[int, dict[str, int]] = {}  # partition -> topic -> next offset
        resets: set[tuple[str, int]] = set()
        for event in events:
            m = event.message
            if m.topic == TICKS_TOPIC:
                continue
            arrived[m.topic] += 1
            below = state.applied(m.topic, m.partition, m.offset)
            duplicates, letters = step.outcomes[DUPLICATE], len(step.dead_letters)
            # a failure costs that message a dead letter, no more
            joiner.on_message(m.topic, m.partition, event.value, m.timestamp, now, step, False)
            if below and step.outcomes[DUPLICATE] > duplicates:  # applied before a restart
                step.outcomes[DUPLICATE] -= 1
                step.outcomes[REPLAYED] += 1
                continue
            if below and len(step.dead_letters) == letters:  # a new event under the offsets
                resets.add((m.topic, m.partition))
            seen = offsets.setdefault(m.partition, {})
            seen[m.topic] = max(seen.get(m.topic, 0), m.offset + 1)
        for partition in partitions:
            joiner.on_tick(partition, now, step=step)
        for topic, count in arrived.items():
            metrics.EVENTS_IN.labels(topic).inc(count)
        for topic, partition in sorted(resets):  # this commit lowers the stored offsets
            logger.warning("%s[%d]: new events below the applied offsets", topic, partition)
            metrics.SOURCE_RESETS.labels("join").inc()
        # the interactions acknowledged, then the changelog record, then the rows
        await deliver(step, now, interactions, dead_letters)
        await state.commit(joiner.writes_by_partition(step), offsets)
        joiner.index(step)

    @app.agent(source, name="drex.join")
    async def join(stream: Any) -> None:
        # A batch is one step: its emissions are sent together and acknowledged once,
        # then its rows are committed (one changelog record, one write batch per partition).
        try:
            async for events in stream.take_events(settings.join_batch_size, within=JOIN_WITHIN):
                try:
                    await step_of(events)
                except Exception as err:  # a bug outside any one message: never lose the batch
                    logger.exception("a join batch failed; its messages go to dead-letters")
                    for e in (e for e in events if e.message.topic != TICKS_TOPIC):
                        with contextlib.suppress(Exception):
                            letter = dead_letter(e.value, e.message.topic, err)
                            await dead_letters.send(value=letter)
                            metrics.DEAD_LETTERS.labels(PROCESSING_ERROR).inc()
        finally:
            await state.aclose()

    interval = max(0.1, min(1.0, settings.join_window / 4))

    async def tick() -> None:
        for tp in app.assignor.assigned_actives():
            if tp.topic == REVIEWS_TOPIC:
                await ticks.send(value=b"", partition=tp.partition)

    app.timer(interval, name="drex.join-ticks")(tick)

    async def moved(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        parts = {tp.partition for tp in args[0] if tp.topic in _SOURCES}
        state.release(parts)  # caught up from the changelog before their next message
        joiner.forget(parts)

    app.on_partitions_revoked.connect(moved)
    app.on_partitions_assigned.connect(moved)
    return JoinWiring(joiner, join, state)
