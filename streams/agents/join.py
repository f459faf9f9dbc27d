"""Review + rating -> interaction: the join agent, partitioned by user.

The two halves of a (user, item) interaction travel separately on ``reviews`` and
``ratings`` (keyed by user id, so both land in the same partition number; producers must
use Kafka's default murmur2 partitioner, e.g. librdkafka's ``murmur2_random``). Kafka
Streams-style stream-stream joins do not exist in faust, so the join is a table and a
clock (:class:`Joiner`, a pure class, wrapped by :func:`register`):

* The first half waits in the ``join-buffer`` table (RocksDB, changelogged, so a
  partition's buffer moves with the partition on a rebalance), keyed by
  ``user \\x1f item``. When the other half arrives, one :class:`InteractionEvent` with
  both goes to ``interactions``.
* A half whose partner has not come within ``join_window`` seconds is emitted alone
  (outcome ``expired``); the model fuses the missing modality as zeros.
* A row remembers every event id it saw. A resend (same ``event_id``) is dropped and
  counted (``duplicate``), also after the interaction went out: the emitted row stays as
  a small tombstone (ids, emitted kinds, time) for ``dedup_retention`` seconds.
* A half arriving after its interaction was emitted without it (its window had expired)
  is emitted as its own single-modality interaction and counted ``late``: the learner
  then sees the pair twice, once per modality. Dropping it would lose a label; merging
  it would need retracting an update the learner has already made.
* A second half of the same kind with a new id while one is waiting (a corrected review
  before the rating came) sends the waiting one alone (``superseded``) and waits with
  the new one.
* An invalid message goes to ``dead-letters`` with its reason code; the stream goes on.

**The clock.** A row's window starts at its record's Kafka timestamp. Expiry is checked
once per batch of messages for each partition in it, and on *ticks*: a timer sends one
small message per owned partition to the co-partitioned ``join-ticks`` topic, because
faust only lets a table be written while an event of the same partition is being
processed. The time a row is compared against
is, per partition, the smallest "latest record timestamp" of the source topics that
delivered a record in the last ``idle_after`` seconds (default: one window), or the wall
clock when none did. So a worker that restarts with a backlog, or reads one topic ahead
of the other, never expires a half whose partner is still in the backlog: the clock
follows the records; only an idle partition is timed by the wall clock. This assumes
producer and worker clocks agree to well within a window (NTP).

**Delivery.** Faust's delivery is at-least-once: after a crash the uncommitted source
messages come again, while the local RocksDB table may already hold their effects. So a
step's table writes are made only *after* its emitted interactions are acknowledged by
the broker: a row can say "emitted" only if the interaction really was. A crash in
between re-emits the same interaction on replay, with the same deterministic id
(:func:`interaction_id`), which the learner drops (streams/agents/learn.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, MutableMapping
from contextlib import AbstractContextManager
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

if TYPE_CHECKING:
    import faust

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
_SEP: Final = "\x1f"


def interaction_id(event: InteractionEvent) -> str:
    """Deterministic id: the same halves always make the same id, so a re-emission after
    a crash is recognisably the same interaction."""
    return _SEP.join(
        (event.user_id, event.item_id, event.review_event_id or "", event.rating_event_id or "")
    )


def row_key(user_id: str, item_id: str) -> bytes:
    return f"{user_id}{_SEP}{item_id}".encode()


@dataclass
class Emission:
    """An interaction to send, and the outcome labels it counts under."""

    event: InteractionEvent
    outcomes: tuple[str, ...]


@dataclass
class JoinStep:
    """What one message, a tick or a batch of them produced. The caller sends ``emits``
    (and waits for the broker's acknowledgement), sends ``dead_letters``, then calls
    :meth:`Joiner.apply`. A later message of the same step sees its earlier writes."""

    emits: list[Emission] = field(default_factory=list)
    writes: dict[bytes, bytes | None] = field(default_factory=dict)  # None: delete
    partitions: dict[bytes, int] = field(default_factory=dict)  # row -> its partition
    dead_letters: list[tuple[str, bytes]] = field(default_factory=list)  # (reason, message)
    outcomes: Counter[str] = field(default_factory=Counter)


@dataclass
class _TopicClock:
    max_ts: float  # latest record timestamp seen (-inf: none since the partition came)
    last_wall: float  # wall time of the latest record (or of taking the partition)


class Joiner:
    """The join's logic over any mutable mapping of bytes to bytes (a faust Table in the
    worker, a dict in tests). Single-threaded; see the module docstring for semantics.

    Rows are JSON: ``p`` partition, ``u``/``i`` ids, ``ids`` event ids seen, ``review`` /
    ``rating`` the waiting halves, ``since`` when the wait began, ``done`` kinds emitted
    in the current generation, ``at`` when the last emission happened.
    """

    def __init__(
        self,
        store: MutableMapping[bytes, bytes],
        window: float,
        retention: float = 3600.0,
        idle_after: float | None = None,
        rating_scale: int = DEFAULT_RATING_SCALE,
        max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
    ) -> None:
        if window <= 0 or retention < 0:
            raise ValueError("window must be > 0 and retention >= 0")
        self.store = store
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
        try:
            event = validate(
                topic, raw, rating_scale=self.rating_scale, max_text_chars=self.max_text_chars
            )
        except InvalidEvent as err:
            step.dead_letters.append((err.reason, dead_letter(raw, topic, err, now)))
        else:
            self._join(step, partition, event, timestamp)
        if expire:
            self._expire(step, partition, now)
        return step

    def on_tick(self, partition: int, now: float, step: JoinStep | None = None) -> JoinStep:
        """Expire and purge ``partition``'s rows whose time has come."""
        step = JoinStep() if step is None else step
        self._ensure(partition, now)
        self._expire(step, partition, now)
        return step

    def apply(
        self,
        step: JoinStep,
        context: Callable[[int], AbstractContextManager[Any]] | None = None,
    ) -> None:
        """Write the step's rows (after its emissions were delivered) and index them.

        ``context(partition)`` wraps the writes of each partition (faust needs an event
        of that partition current while its table is written)."""
        by_partition: dict[int, list[bytes]] = {}
        for key in step.writes:
            by_partition.setdefault(step.partitions[key], []).append(key)
        for partition, keys in by_partition.items():
            with context(partition) if context is not None else contextlib.nullcontext():
                for key in keys:
                    value = step.writes[key]
                    if value is None:
                        self.store.pop(key, None)
                        continue
                    self.store[key] = value
                    self._index(key, orjson.loads(value))

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
        key = row_key(event.user_id, event.item_id)
        row = self._get(step, key)
        if row is not None and event.event_id in row["ids"]:
            step.outcomes[DUPLICATE] += 1
            return
        part: dict[str, Any] = {"id": event.event_id, "t": event.event_time, "ts": ts}
        if isinstance(event, ReviewEvent):
            part["text"] = event.text
        else:
            part["r"] = event.rating
        if row is None:
            row = {
                "p": partition,
                "u": event.user_id,
                "i": event.item_id,
                "ids": [],
                REVIEW: None,
                RATING: None,
                "since": None,
                "done": [],
                "at": None,
            }
        row["ids"].append(event.event_id)
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
            row = self._get(step, key)
            if row is None or row["since"] is None or row["since"] + self.window != deadline:
                continue  # stale entry: the row changed since it was indexed
            kind = REVIEW if row[REVIEW] is not None else RATING
            self._emit_alone(step, row, kind, EXPIRED)
            row["since"] = None
            row["at"] = clock
            self._write(step, partition, key, row)
        purges = self._purges.get(partition, [])
        while purges and purges[0][0] <= clock:
            due, key = heapq.heappop(purges)
            row = self._get(step, key)
            if (
                row is not None
                and row["since"] is None
                and row["at"] is not None
                and row["at"] + self.retention == due
            ):
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
        )
        modality = BOTH if review and rating else (REVIEW_ONLY if review else RATING_ONLY)
        outcomes = (modality, *why)
        step.emits.append(Emission(event, outcomes))
        step.outcomes.update(outcomes)

    # --- rows and the in-memory index -------------------------------------------------

    def _get(self, step: JoinStep, key: bytes) -> dict[str, Any] | None:
        raw = step.writes[key] if key in step.writes else self.store.get(key)
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
        for key, value in list(self.store.items()):
            row = orjson.loads(value)
            if row.get("p") == partition:
                self._index(key, row)

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
    table: Any  # the join-buffer table


def register(
    app: faust.App, settings: WorkerSettings, interactions: Any = None, dead_letters: Any = None
) -> JoinWiring:
    """Add the join agent, its buffer table and its tick timer to ``app``.

    ``settings`` is a :class:`streams.settings.WorkerSettings`. ``interactions`` and
    ``dead_letters`` default to the Kafka topics; tests pass in-memory faust channels.
    """
    from streams import metrics
    from streams.tables import bytes_table, event_context, raw_topic

    n = settings.partitions
    source = raw_topic(app, REVIEWS_TOPIC, RATINGS_TOPIC, TICKS_TOPIC, partitions=n)
    ticks = raw_topic(app, TICKS_TOPIC, partitions=n)
    if interactions is None:
        interactions = raw_topic(app, INTERACTIONS_TOPIC, partitions=1)
    if dead_letters is None:
        dead_letters = raw_topic(app, DEAD_LETTERS_TOPIC)
    table = bytes_table(app, BUFFER_TABLE, n, help="user\x1fitem -> waiting halves, seen ids")
    joiner = Joiner(table, settings.join_window, retention=settings.dedup_retention)
    metrics.bind_gauge(
        metrics.JOIN_PARTITIONS,
        lambda: sum(tp.topic == REVIEWS_TOPIC for tp in app.assignor.assigned_actives()),
    )

    async def deliver(step: JoinStep) -> None:
        sent = [
            await interactions.send(key=e.event.user_id.encode(), value=e.event.dumps())
            for e in step.emits
        ]
        for reason, letter in step.dead_letters:
            await dead_letters.send(value=letter)
            metrics.DEAD_LETTERS.labels(reason).inc()
        if sent:  # acknowledged before the rows that record them are written
            await asyncio.gather(*sent)
        for outcome, count in step.outcomes.items():
            metrics.JOIN_OUTCOMES.labels(outcome).inc(count)

    @app.agent(source, name="drex.join")
    async def join(stream: Any) -> None:
        # A batch is one step: its emissions are sent together and acknowledged once,
        # then its rows are written (one broker round trip per batch, not per event).
        async for events in stream.take_events(settings.join_batch_size, within=JOIN_WITHIN):
            now = time.time()
            step = JoinStep()
            latest: dict[int, Any] = {}  # partition -> an event of it (table writes)
            arrived: Counter[str] = Counter()
            for event in events:
                message = event.message
                latest[message.partition] = event
                if message.topic == TICKS_TOPIC:
                    continue
                arrived[message.topic] += 1
                try:
                    joiner.on_message(
                        message.topic,
                        message.partition,
                        event.value,
                        message.timestamp,
                        now,
                        step=step,
                        expire=False,
                    )
                except Exception as err:  # a bug costs one dead letter, not the stream
                    logger.exception("join failed on %s[%d]@%d", *message.tp, message.offset)
                    letter = dead_letter(event.value, message.topic, err, now)
                    step.dead_letters.append((PROCESSING_ERROR, letter))
            for partition in latest:
                joiner.on_tick(partition, now, step=step)
            for topic, count in arrived.items():
                metrics.EVENTS_IN.labels(topic).inc(count)
            await deliver(step)
            joiner.apply(step, functools.partial(_context_of, latest))

    def _context_of(latest: dict[int, Any], partition: int) -> AbstractContextManager[None]:
        return event_context(latest[partition])

    interval = max(0.1, min(1.0, settings.join_window / 4))

    async def tick() -> None:
        for tp in app.assignor.assigned_actives():
            if tp.topic == REVIEWS_TOPIC:
                await ticks.send(value=b"", partition=tp.partition)

    app.timer(interval, name="drex.join-ticks")(tick)

    @app.on_partitions_revoked.connect
    async def on_revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        joiner.forget({tp.partition for tp in args[0] if tp.topic in _SOURCES})

    @app.on_partitions_assigned.connect
    async def on_assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        joiner.forget({tp.partition for tp in args[0] if tp.topic in _SOURCES})

    return JoinWiring(joiner, join, table)
