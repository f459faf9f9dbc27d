"""``drex replay``: evaluate the model from the Kafka topics, off the live system.

    drex replay --broker kafka://HOST:PORT --output DIR [--mode paper|prequential]
                [--since T] [--until T] [--from-offset N] [--to-offset N] [--embedded]

Three steps, each its own function so that tests can feed records without a broker:

1. :func:`read_records` reads ``reviews`` and ``ratings`` (from the beginning, an offset
   range, or filtered to a range of Kafka record timestamps) to their end as it was when
   the replay started. It is a plain consumer with no group: manual assignment and
   seeks, ``group_id=None``, nothing committed, nothing produced, so the live worker's
   consumer group, offsets and topics are untouched.
2. :func:`reconstruct` turns the records into interactions with the worker's own join,
   :class:`streams.agents.join.Joiner`, over a dict instead of the RocksDB table:
   records go in merged by Kafka timestamp (each partition in offset order), the
   simulated wall clock follows the record timestamps, and at the end every half still
   waiting is expired. Invalid events become dead letters (counted by reason, written to
   ``DIR/dead_letters.jsonl``), resends are dropped by the Joiner. The interactions are
   then ordered as ``drex evaluate`` orders a file, by (event time, send order), where
   the send order of an interaction is that of its first half (the producer's
   :data:`SEQ_HEADER` when every record has one, else its feed position), and a repeated
   (user, item) pair keeps its first interaction, as the loader does.
3. ``--mode paper`` runs ``drex evaluate``'s protocol on them
   (:func:`drex_model.evaluate.runner.evaluate` with ``data=``); ``--mode prequential``
   runs :func:`prequential`: test-then-train over the stream with
   :meth:`DReXLearner.learn_many`, the call the worker makes.

See docs/replay.md for the protocols, determinism and what "same order" can promise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import heapq
import itertools
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

import numpy as np
import orjson

from drex_model.evaluate.data import LoadReport, describe, filter_min_counts
from drex_model.evaluate.metrics import RELEVANT_RATING, ranking_metrics, rating_metrics
from drex_model.types import Interaction
from streams.events import (
    DEFAULT_MAX_TEXT_CHARS,
    DEFAULT_RATING_SCALE,
    RATINGS_TOPIC,
    REVIEWS_TOPIC,
    InvalidEvent,
    validate,
)
from streams.producer import SEQ_HEADER

if TYPE_CHECKING:
    from drex_model.evaluate.runner import EvaluateOptions
    from drex_model.learner import DReXLearner

MODES: Final = ("paper", "prequential")
# Baselines with a one-pass form (running estimates); ``mf`` needs epochs and a split.
PREQUENTIAL_BASELINES: Final = ("global-mean", "bias", "popularity")
PREQUENTIAL_VARIANTS: Final = ("drex", "drex-paper")  # drex-mlp needs a fixed catalogue
_KINDS: Final = (REVIEWS_TOPIC, RATINGS_TOPIC)  # feed order of records with equal timestamps
DUPLICATE_EVENT: Final = "duplicate event"
# SEQ_HEADER, an optional Kafka record header: the producer's send position (ASCII
# decimal). When every record has it, it orders interactions with equal event times
# exactly; without it the feed position stands in, which is the send order only where
# timestamps tell it apart.


class ReplayError(RuntimeError):
    """Something the user must fix (broker, topics, range); the CLI prints it, no trace."""


# --- records ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One Kafka record of a source topic, as the replay needs it."""

    topic: str  # the contract topic it is read as: "reviews" or "ratings"
    partition: int
    offset: int
    timestamp: float  # Kafka record timestamp, seconds since the epoch
    value: bytes | None  # None: a tombstone (no event)
    seq: int | None = None  # the producer's send position (SEQ_HEADER), when it sent one


@dataclass(frozen=True)
class OffsetBound:
    """An offset for every partition (``default``), or per ``(topic, partition)``."""

    default: int | None = None
    per_partition: Mapping[tuple[str, int], int] = field(default_factory=dict)

    def get(self, topic: str, partition: int) -> int | None:
        return self.per_partition.get((topic, partition), self.default)

    def __bool__(self) -> bool:
        return self.default is not None or bool(self.per_partition)


def parse_offsets(text: str) -> OffsetBound:
    """``N`` (every partition) and/or ``TOPIC:PARTITION=N`` entries, comma-separated."""
    default: int | None = None
    per: dict[tuple[str, int], int] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        where, sep, value = part.rpartition("=")
        try:
            offset = int(value)
            if sep:
                topic, colon, partition = where.rpartition(":")
                if not colon or not topic:
                    raise ValueError(where)
                per[(topic, int(partition))] = offset
            else:
                default = offset
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected N or TOPIC:PARTITION=N (comma-separated), got {part!r}"
            ) from None
        if offset < 0:
            raise argparse.ArgumentTypeError(f"offsets are >= 0, got {part!r}")
    return OffsetBound(default, per)


def parse_time(text: str) -> float:
    """Unix seconds, or an ISO 8601 date/time (UTC when it names no zone)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected Unix seconds or an ISO 8601 time (2014-05-01T12:00:00Z), got {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@dataclass
class ReadResult:
    """Records read and exactly what was read, for the report."""

    records: list[SourceRecord]
    ranges: dict[str, tuple[int, int]]  # "topic:partition" -> [start, end) offsets read
    read: int  # records read in those ranges (before the time filter)
    missing: list[str]  # source topics that do not exist


def read_records(broker: str, **options: Any) -> ReadResult:
    """Read both source topics from ``broker``; the options of :func:`read_records_async`."""
    return asyncio.run(read_records_async(broker, **options))


async def read_records_async(
    broker: str,
    *,
    reviews_topic: str = REVIEWS_TOPIC,
    ratings_topic: str = RATINGS_TOPIC,
    since: float | None = None,
    until: float | None = None,
    from_offset: OffsetBound | None = None,
    to_offset: OffsetBound | None = None,
    embedded: bool = False,
    timeout: float = 30.0,
    progress: bool = False,
) -> ReadResult:
    """Every record of the source topics in the range, read to the end they had at start.

    Offsets: ``from_offset`` inclusive, ``to_offset`` exclusive, both clamped to what the
    partition holds. Times: ``since <= timestamp < until`` on the Kafka record timestamp,
    as a filter (partitions are read from their start offset: timestamps need not be
    ordered). ``embedded``: the broker is Tansu, whose ListOffsets answer can be short of
    the true end (streams/compat.py), so the end comes from a Fetch high watermark.
    Raises :class:`ReplayError` for an unreachable broker, missing topics or a stall.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaError
    from tqdm.auto import tqdm

    from streams.compat import tansu_end_offsets
    from streams.producer import bootstrap_servers

    kinds = {reviews_topic: REVIEWS_TOPIC, ratings_topic: RATINGS_TOPIC}
    if len(kinds) != 2:
        raise ReplayError("the reviews and ratings topics must differ")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers(broker),
        client_id="drex-replay",
        group_id=None,  # no consumer group: nothing joins, nothing is committed
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=int(max(timeout, 5.0) * 1000),
        fetch_max_wait_ms=100,
    )
    try:
        await consumer.start()
    except KafkaError as err:
        with contextlib.suppress(Exception):
            await consumer.stop()
        raise ReplayError(f"cannot reach {broker}: {err}") from None
    try:
        # topics() asks for all topics: unlike a request naming a topic, it makes no broker
        # auto-create a missing one (Tansu would), so a replay never creates topics.
        existing = await consumer.topics()
        missing = [t for t in kinds if t not in existing]
        tps: list[TopicPartition] = []
        for topic in kinds:
            if topic in existing:
                tps += [
                    TopicPartition(topic, p)
                    for p in sorted(consumer.partitions_for_topic(topic) or ())
                ]
        if not tps:
            raise ReplayError(
                f"neither {reviews_topic!r} nor {ratings_topic!r} exists on {broker} "
                f"(topics there: {', '.join(sorted(existing)) or 'none'})"
            )
        consumer.assign(tps)
        firsts = await consumer.beginning_offsets(tps)
        ends = await (tansu_end_offsets(consumer, tps) if embedded else consumer.end_offsets(tps))
        ranges: dict[TopicPartition, tuple[int, int]] = {}
        for tp in tps:
            start, end = firsts[tp], ends[tp]
            if (
                from_offset is not None
                and (low := from_offset.get(tp.topic, tp.partition)) is not None
            ):
                start = max(start, low)
            if (
                to_offset is not None
                and (high := to_offset.get(tp.topic, tp.partition)) is not None
            ):
                end = min(end, high)
            ranges[tp] = (start, max(start, end))
        pending = {tp for tp, (start, end) in ranges.items() if end > start}
        for tp in tps:
            if tp in pending:
                consumer.seek(tp, ranges[tp][0])
        if len(pending) < len(tps):
            consumer.pause(*[tp for tp in tps if tp not in pending])
        records: list[SourceRecord] = []
        read = 0
        total = sum(end - start for start, end in ranges.values())
        last = time.monotonic()
        with tqdm(total=total, unit="records", desc="reading", disable=not progress) as bar:
            while pending:
                batch = await consumer.getmany(*pending, timeout_ms=200, max_records=10_000)
                for tp, got in batch.items():
                    end = ranges[tp][1]
                    for r in got:
                        if r.offset >= end:
                            continue
                        read += 1
                        bar.update(1)
                        ts = max(int(r.timestamp or 0), 0) / 1000.0
                        if (since is not None and ts < since) or (
                            until is not None and ts >= until
                        ):
                            continue
                        records.append(
                            SourceRecord(
                                kinds[tp.topic], tp.partition, r.offset, ts, r.value, _seq(r)
                            )
                        )
                done = [tp for tp in pending if await consumer.position(tp) >= ranges[tp][1]]
                if batch or done:
                    last = time.monotonic()
                for tp in done:
                    pending.discard(tp)
                    consumer.pause(tp)
                if pending and time.monotonic() - last > timeout:
                    where = ", ".join(
                        [
                            f"{tp.topic}:{tp.partition} at {await consumer.position(tp)} of "
                            f"{ranges[tp][1]}"
                            for tp in sorted(pending)
                        ]
                    )
                    raise ReplayError(f"no progress for {timeout:.0f} s reading {where}")
        return ReadResult(
            records,
            {f"{tp.topic}:{tp.partition}": ranges[tp] for tp in tps},
            read,
            missing,
        )
    except KafkaError as err:
        raise ReplayError(f"reading from {broker} failed: {err!r}") from None
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()


def _seq(record: Any) -> int | None:
    for key, value in record.headers or ():
        if key == SEQ_HEADER:
            with contextlib.suppress(ValueError, TypeError, UnicodeDecodeError):
                return int(bytes(value).decode("ascii"))
    return None


# --- reconstruction ----------------------------------------------------------------------


@dataclass
class Reconstruction:
    """The interactions rebuilt from source records, and what the join made of them."""

    interactions: list[Interaction]  # in stream order, one per (user, item)
    records: int  # records fed to the join (tombstones excluded)
    tombstones: int  # records without a value
    dead_letters: dict[str, int]  # reason code -> invalid events
    outcomes: dict[str, int]  # join outcomes (both, review_only, expired, duplicate, ...)
    repeated_pairs: int  # later interactions of a (user, item) pair, dropped
    letters: list[bytes] = field(default_factory=list)  # the dead-letter messages

    def report(self) -> LoadReport:
        """The interactions as a :class:`LoadReport`, for ``evaluate(opts, data=...)``."""
        skipped = {f"dead letter {reason}": n for reason, n in self.dead_letters.items()}
        if self.outcomes.get("duplicate"):
            skipped[DUPLICATE_EVENT] = self.outcomes["duplicate"]
        if self.tombstones:
            skipped["tombstone"] = self.tombstones
        return LoadReport(
            self.interactions,
            self.records + self.tombstones,
            skipped,
            self.repeated_pairs,
            "kafka",
        )

    def summary(self) -> str:
        """One line for logs and reports."""
        o = self.outcomes
        line = (
            f"{self.records} records -> {len(self.interactions)} interactions "
            f"({o.get('both', 0)} both, {o.get('review_only', 0)} review-only, "
            f"{o.get('rating_only', 0)} rating-only emitted; {o.get('expired', 0)} expired, "
            f"{o.get('late', 0)} late, {o.get('superseded', 0)} superseded); "
            f"{o.get('duplicate', 0)} duplicate events; {self.repeated_pairs} repeated pairs"
        )
        n_dead = sum(self.dead_letters.values())
        line += f"; {n_dead} dead letters"
        if n_dead:
            line += " (" + ", ".join(f"{k} {v}" for k, v in sorted(self.dead_letters.items())) + ")"
        return line


def feed_order(records: Iterable[SourceRecord]) -> list[SourceRecord]:
    """Records as the replay feeds them: each partition in offset order, partitions merged
    by Kafka timestamp (equal timestamps: reviews before ratings, then by partition)."""
    by_tp: dict[tuple[int, str, int], list[SourceRecord]] = {}
    for r in records:
        rank = _KINDS.index(r.topic) if r.topic in _KINDS else len(_KINDS)
        by_tp.setdefault((rank, r.topic, r.partition), []).append(r)
    lists = [sorted(by_tp[k], key=lambda r: r.offset) for k in sorted(by_tp)]
    # heapq.merge keeps each list's order and breaks key ties by list position.
    return list(heapq.merge(*lists, key=lambda r: r.timestamp))


def reconstruct(
    records: Iterable[SourceRecord],
    *,
    join_window: float = 30.0,
    dedup_retention: float = 3600.0,
    rating_scale: int = DEFAULT_RATING_SCALE,
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
    progress: bool = False,
) -> Reconstruction:
    """Join ``records`` into interactions exactly as the worker's join agent does.

    The Joiner's wall clock is simulated by the latest record timestamp fed so far (a
    worker that keeps up with its topics), with the worker's tick timer (every
    ``min(1, window / 4)`` s of that clock, at least 0.1 s) expiring halves between
    messages; everything still waiting at the end is expired and emitted alone.

    Interactions are sorted by (event time, send position of their first half, emission
    order), the send position being the records' :data:`SEQ_HEADER` when all have one,
    else their feed position; a later interaction of a (user, item) pair that
    already came (a late half emitted on its own, or an event resent after the dedup
    retention) is dropped and counted, as ``load_interactions`` drops repeated rows.
    """
    from tqdm.auto import tqdm

    from streams.agents.join import Joiner, JoinStep

    feed = feed_order(records)
    for r in feed:
        if r.topic not in _KINDS:
            raise ValueError(f"no event contract for topic {r.topic!r} (expected {_KINDS})")
    joiner = Joiner(
        {},
        join_window,
        retention=dedup_retention,
        rating_scale=rating_scale,
        max_text_chars=max_text_chars,
    )
    # The send order: the producer's sequence header if every record has one, else the
    # feed position. first_seen: event id -> that order of its first valid copy.
    by_seq = bool(feed) and all(r.seq is not None for r in feed if r.value is not None)
    first_seen: dict[str, int] = {}
    emitted: list[tuple[float, int, int, Interaction]] = []
    dead: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    letters: list[bytes] = []
    partitions: set[int] = set()
    now = next_tick = -math.inf
    tick_every = max(0.1, min(1.0, join_window / 4))  # as streams/agents/join.py's timer
    fed = tombstones = 0

    def take(step: JoinStep) -> None:
        joiner.apply(step)
        outcomes.update(step.outcomes)
        for reason, letter in step.dead_letters:
            dead[reason] += 1
            letters.append(letter)
        for emission in step.emits:
            event = emission.event
            ids = [i for i in (event.review_event_id, event.rating_event_id) if i is not None]
            position = min(first_seen[i] for i in ids)
            emitted.append((event.event_time, position, len(emitted), event.to_interaction()))

    for seq, r in enumerate(tqdm(feed, unit="records", desc="joining", disable=not progress)):
        if r.value is None:
            tombstones += 1
            continue
        fed += 1
        with contextlib.suppress(InvalidEvent):  # the Joiner makes it a dead letter
            event = validate(
                r.topic, r.value, rating_scale=rating_scale, max_text_chars=max_text_chars
            )
            order = r.seq if by_seq and r.seq is not None else seq
            first_seen[event.event_id] = min(first_seen.get(event.event_id, order), order)
        if r.timestamp >= next_tick:  # the worker's timer ticks every owned partition
            now = r.timestamp
            next_tick = now + tick_every
            for partition in sorted(partitions):
                take(joiner.on_tick(partition, now))
        now = max(now, r.timestamp)
        partitions.add(r.partition)
        take(joiner.on_message(r.topic, r.partition, r.value, r.timestamp, now))
    if partitions:
        # Late enough that every window has passed and no topic counts as active.
        end = now + join_window + dedup_retention + joiner.idle_after + 1.0
        for partition in sorted(partitions):
            take(joiner.on_tick(partition, end))

    emitted.sort(key=lambda e: e[:3])
    seen: set[tuple[str, str]] = set()
    kept: list[Interaction] = []
    for *_, x in emitted:
        if (x.user, x.item) not in seen:
            seen.add((x.user, x.item))
            kept.append(x)
    return Reconstruction(
        interactions=kept,
        records=fed,
        tombstones=tombstones,
        dead_letters=dict(sorted(dead.items())),
        outcomes=dict(sorted(outcomes.items())),
        repeated_pairs=len(emitted) - len(kept),
        letters=letters,
    )


def interactions_digest(interactions: Sequence[Interaction]) -> str:
    """A short fingerprint of an interaction list, order included (for reports)."""
    h = hashlib.blake2b(digest_size=12)
    for x in interactions:
        h.update(orjson.dumps([x.user, x.item, x.rating, x.text, x.timestamp]))
    return h.hexdigest()


def write_interactions(interactions: Sequence[Interaction], path: Path) -> None:
    """The list as generic JSON lines, which ``drex evaluate --dataset`` reads back."""
    with path.open("wb") as f:
        for x in interactions:
            row: dict[str, Any] = {"user": x.user, "item": x.item, "timestamp": x.timestamp}
            if x.rating is not None:
                row["rating"] = x.rating
            if x.text is not None:
                row["text"] = x.text
            f.write(orjson.dumps(row) + b"\n")


# --- prequential evaluation --------------------------------------------------------------


@dataclass(frozen=True)
class PrequentialSettings:
    """The stream side of ``--mode prequential``."""

    batch_size: int = 256  # interactions per learn_many call (the worker's micro-batch)
    window: int = 1000  # interactions per window of the error-over-time curve
    checkpoint_every: int = -1  # interactions between ranking checkpoints (0: none; -1: window)

    def __post_init__(self) -> None:
        if self.checkpoint_every == -1:
            object.__setattr__(self, "checkpoint_every", self.window)
        if self.batch_size < 1 or self.window < 1 or self.checkpoint_every < 0:
            raise ValueError(
                "batch size and window must be >= 1 and checkpoint_every >= 0, got "
                f"{self.batch_size}, {self.window}, {self.checkpoint_every}"
            )


@dataclass
class Checkpoint:
    """A ranking test at stream position ``position`` (before it is learned).

    Users: those seen before it with a relevant item in the horizon. Candidates: the
    items seen before it that the user has not interacted with. Relevant: candidates the
    user rates >= 4 within the next ``checkpoint_every`` interactions.
    """

    position: int
    users: list[str]
    items: list[str]  # the catalogue known at this point, sorted
    candidates: list[np.ndarray]  # per user: column indices into ``items``
    relevant: list[np.ndarray]  # per user: bool per candidate


def checkpoints(stream: Sequence[Interaction], every: int) -> list[Checkpoint]:
    """The ranking checkpoints of ``stream`` at positions every, 2*every, ... (< len)."""
    if every <= 0:
        return []
    out: list[Checkpoint] = []
    items: set[str] = set()
    seen: dict[str, set[str]] = {}
    for p in range(0, len(stream), every):
        if p > 0:
            catalogue = sorted(items)
            column = {item: j for j, item in enumerate(catalogue)}
            relevant: dict[str, set[str]] = {}
            for x in stream[p : p + every]:
                if (
                    x.rating is not None
                    and x.rating >= RELEVANT_RATING
                    and x.user in seen
                    and x.item in column
                    and x.item not in seen[x.user]
                ):
                    relevant.setdefault(x.user, set()).add(x.item)
            users = sorted(relevant)
            cands, rels = [], []
            for u in users:
                keep = np.array([column[i] for i in catalogue if i not in seen[u]], dtype=np.int64)
                cands.append(keep)
                rels.append(np.array([catalogue[j] in relevant[u] for j in keep], dtype=bool))
            out.append(Checkpoint(p, users, catalogue, cands, rels))
        for x in stream[p : p + every]:
            items.add(x.item)
            seen.setdefault(x.user, set()).add(x.item)
    return out


class StreamModel(Protocol):
    """A model evaluated test-then-train: score a batch, then learn it."""

    predicts_ratings: bool

    def learn(self, batch: Sequence[Interaction]) -> np.ndarray:
        """Predicted ratings for ``batch``, each made before it was learned."""
        ...

    def scores(self, users: Sequence[str], items: Sequence[str]) -> np.ndarray:
        """Ranking scores ``(U, I)`` from the current state; learns nothing."""
        ...


class DReXStream:
    """A :class:`DReXLearner` fed micro-batches, as the worker feeds it."""

    predicts_ratings = True

    def __init__(self, learner: DReXLearner) -> None:
        self.learner = learner

    def learn(self, batch: Sequence[Interaction]) -> np.ndarray:
        return self.learner.learn_many(batch)

    def scores(self, users: Sequence[str], items: Sequence[str]) -> np.ndarray:
        return self.learner.ranking_scores(users, items)


class RunningBaseline:
    """``global-mean``, ``bias`` and ``popularity`` as running estimates.

    Each interaction is scored from the ratings before it, then counted. ``bias`` is
    ``mu + b_u + b_i`` from one closed-form sweep of the bias baseline's estimator over
    the ratings so far (items first: b_i = sum(r - mu) / (n_i + 5), then
    b_u = sum(r - mu - b_i) / (n_u + 5)), recomputed for each prediction.
    ``popularity`` ranks by the ratings each item got so far (no rating predictions).
    """

    def __init__(
        self,
        name: str,
        rating_scale: int = DEFAULT_RATING_SCALE,
        reg_user: float = 5.0,
        reg_item: float = 5.0,
    ) -> None:
        if name not in PREQUENTIAL_BASELINES:
            raise ValueError(
                f"baseline {name!r} has no prequential form; choose from {PREQUENTIAL_BASELINES}"
            )
        self.name = name
        self.predicts_ratings = name != "popularity"
        self.rating_scale = rating_scale
        self.reg_user, self.reg_item = reg_user, reg_item
        self.n = 0
        self.total = 0.0
        self.item_n: Counter[str] = Counter()
        self.item_sum: dict[str, float] = {}
        self.user_sum: dict[str, float] = {}
        self.user_items: dict[str, list[str]] = {}

    def mean(self) -> float:
        return self.total / self.n if self.n else (1.0 + self.rating_scale) / 2.0

    def item_bias(self, item: str, mu: float) -> float:
        n = self.item_n.get(item, 0)
        return (self.item_sum.get(item, 0.0) - n * mu) / (n + self.reg_item) if n else 0.0

    def user_bias(self, user: str, mu: float) -> float:
        items = self.user_items.get(user)
        if not items:
            return 0.0
        residual = self.user_sum[user] - len(items) * mu
        residual -= sum(self.item_bias(i, mu) for i in items)
        return residual / (len(items) + self.reg_user)

    def predict(self, user: str, item: str) -> float:
        mu = self.mean()
        if self.name != "bias":
            return mu
        value = mu + self.user_bias(user, mu) + self.item_bias(item, mu)
        return min(max(value, 1.0), float(self.rating_scale))

    def learn(self, batch: Sequence[Interaction]) -> np.ndarray:
        out = np.full(len(batch), np.nan)
        for j, x in enumerate(batch):
            if self.predicts_ratings:
                out[j] = self.predict(x.user, x.item)
            if x.rating is None:
                continue
            r = float(x.rating)
            self.n += 1
            self.total += r
            self.item_n[x.item] += 1
            self.item_sum[x.item] = self.item_sum.get(x.item, 0.0) + r
            self.user_sum[x.user] = self.user_sum.get(x.user, 0.0) + r
            self.user_items.setdefault(x.user, []).append(x.item)
        return out

    def scores(self, users: Sequence[str], items: Sequence[str]) -> np.ndarray:
        if self.name == "popularity":
            row = np.array([float(self.item_n.get(i, 0)) for i in items])
            return np.tile(row, (len(users), 1))
        mu = self.mean()
        if self.name == "global-mean":
            return np.full((len(users), len(items)), mu)
        item_part = np.array([self.item_bias(i, mu) for i in items])
        user_part = np.array([self.user_bias(u, mu) for u in users])
        scores: np.ndarray = mu + user_part[:, None] + item_part[None, :]
        return scores  # unclipped: clipping to the scale would make ties


@dataclass
class StreamRun:
    """What one pass of a model over the stream produced."""

    predictions: np.ndarray  # (n,) scored before learning; NaN where not a rating model
    rankings: list[list[tuple[np.ndarray, np.ndarray]]]  # per checkpoint, per user
    seconds: float = 0.0


def run_stream(
    model: StreamModel,
    stream: Sequence[Interaction],
    settings: PrequentialSettings,
    tests: Sequence[Checkpoint] = (),
    progress: bool = False,
    desc: str = "learning",
) -> StreamRun:
    """Test-then-train over ``stream`` in micro-batches; rank at each checkpoint first.

    Micro-batches are cut at every ``batch_size`` interactions and at checkpoints, so a
    checkpoint sees exactly the interactions before it.
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    n = len(stream)
    at = {c.position: c for c in tests}
    cuts = sorted({0, n, *range(0, n, settings.batch_size), *at})
    predictions = np.full(n, np.nan)
    rankings: list[list[tuple[np.ndarray, np.ndarray]]] = []
    with tqdm(total=n, unit="interactions", desc=desc, disable=not progress, leave=False) as bar:
        for a, b in itertools.pairwise(cuts):
            test = at.get(a)
            if test is not None:
                rows: list[tuple[np.ndarray, np.ndarray]] = []
                if test.users:
                    scores = model.scores(test.users, test.items)
                    rows = [
                        (scores[k, keep], rel)
                        for k, (keep, rel) in enumerate(
                            zip(test.candidates, test.relevant, strict=True)
                        )
                    ]
                rankings.append(rows)
            predictions[a:b] = model.learn(stream[a:b])
            bar.update(b - a)
    if not model.predicts_ratings:
        predictions[:] = np.nan
    return StreamRun(predictions, rankings, time.perf_counter() - started)


def summarise(
    run: StreamRun,
    stream: Sequence[Interaction],
    settings: PrequentialSettings,
    tests: Sequence[Checkpoint],
    ks: Sequence[int],
) -> tuple[dict[str, float], dict[str, list[dict[str, float]]]]:
    """Overall metrics (evaluate's keys) and the curves: windows and checkpoints."""
    from drex_model.evaluate.runner import COLD_MAX_RATINGS

    out: dict[str, float] = {}
    rated = np.array([x.rating is not None for x in stream], dtype=bool)
    y = np.array([np.nan if x.rating is None else x.rating for x in stream], dtype=np.float64)
    scored = rated & ~np.isnan(run.predictions)
    windows: list[dict[str, float]] = []
    if scored.any():
        out.update(rating_metrics(y[scored], run.predictions[scored]))
        history: Counter[str] = Counter()
        cold = np.zeros(len(stream), dtype=bool)
        for j, x in enumerate(stream):
            cold[j] = history[x.user] <= COLD_MAX_RATINGS
            if x.rating is not None:
                history[x.user] += 1
        for tag, mask in (("cold", scored & cold), ("warm", scored & ~cold)):
            out[f"n_{tag}"] = float(mask.sum())
            if mask.any():
                m = rating_metrics(y[mask], run.predictions[mask])
                out[f"mae_{tag}"], out[f"rmse_{tag}"] = m["mae"], m["rmse"]
        for start in range(0, len(stream), settings.window):
            end = min(start + settings.window, len(stream))
            mask = scored[start:end]
            if mask.any():
                m = rating_metrics(y[start:end][mask], run.predictions[start:end][mask])
                windows.append({"end": float(end), "n": float(mask.sum()), **m})
    points: list[dict[str, float]] = []
    if tests:
        out.update(ranking_metrics([row for rows in run.rankings for row in rows], ks))
        for test, rows in zip(tests, run.rankings, strict=True):
            m = ranking_metrics(rows, ks)
            points.append(
                {"position": float(test.position), **{k: m[k] for k in _CURVE_KEYS if k in m}}
            )
    out["seconds"] = run.seconds
    return out, {"windows": windows, "checkpoints": points}


_CURVE_KEYS: Final = ("users", "f1@5", "ndcg@5", "ndcg@10")


def prequential(
    opts: EvaluateOptions,
    data: LoadReport | Sequence[Interaction],
    settings: PrequentialSettings | None = None,
) -> dict[str, Any]:
    """Test-then-train evaluation of DReX variants and running baselines over a stream.

    ``data`` is in stream order. ``opts`` are ``drex evaluate``'s options: seeds,
    variants, baselines, filter, limit, encoder, precision, device, cache, overrides, ks
    and output (epochs, patience and early stopping do not apply). Writes results.json,
    results.md and prequential.png; returns what results.json holds.
    """
    import torch

    from drex_model.evaluate.runner import aggregate_runs, machine_info, review_cache, say
    from drex_model.learner import DReXLearner
    from drex_model.model import DReXConfig

    settings = settings or PrequentialSettings()
    started = time.perf_counter()
    out = Path(opts.output)
    out.mkdir(parents=True, exist_ok=True)
    device = (
        opts.device if opts.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    report = data if isinstance(data, LoadReport) else LoadReport(list(data), len(data), {}, 0)
    say(opts, f"{opts.dataset}: {report.summary()}")
    bad = [v for v in opts.variants if v not in PREQUENTIAL_VARIANTS]
    if bad:
        raise ValueError(
            f"variant(s) {bad} cannot run prequentially (drex-mlp needs a fixed catalogue, "
            f"as in the worker); choose from {PREQUENTIAL_VARIANTS}"
        )
    bad = [b for b in opts.baselines if b not in PREQUENTIAL_BASELINES]
    if bad:
        raise ValueError(
            f"baseline(s) {bad} have no prequential form (mf needs epochs on a split); "
            f"choose from {PREQUENTIAL_BASELINES}"
        )
    stream = report.interactions[: opts.limit] if opts.limit else report.interactions
    stream = filter_min_counts(stream, opts.min_user, opts.min_item)
    if not any(x.rating is not None for x in stream):
        raise ValueError(
            f"no rated interactions left (of {len(report.interactions)}) after the limit "
            f"and filter (min_user={opts.min_user}, min_item={opts.min_item})"
        )
    stats = describe(stream)
    say(
        opts,
        f"stream: {stats['users']} users, {stats['items']} items, "
        f"{stats['interactions']} interactions",
    )
    tests = checkpoints(stream, settings.checkpoint_every)
    cache = review_cache(opts, stream, device) if opts.variants else None

    def config(name: str) -> DReXConfig:
        extra = {"encoder_dim": cache.hidden_size} if cache is not None else {}
        return DReXConfig.for_variant(name, **{**extra, **opts.overrides})

    per_seed: dict[str, list[dict[str, float]]] = {}
    curves: dict[str, list[dict[str, Any]]] = {}

    def record(name: str, seed: int | None, run: StreamRun) -> None:
        metrics, curve = summarise(run, stream, settings, tests, opts.ks)
        per_seed.setdefault(name, []).append(metrics)
        curves.setdefault(name, []).append({"seed": seed, **curve})
        say(
            opts,
            f"{'' if seed is None else f'seed {seed} '}{name:12s} "
            f"rmse {metrics.get('rmse', float('nan')):.4f} "
            f"ndcg@10 {metrics.get('ndcg@10', float('nan')):.4f} ({run.seconds:.1f}s)",
        )

    for seed in opts.seeds:
        for name in opts.variants:
            learner = DReXLearner(config(name), cache=cache, seed=seed, device=device)
            run = run_stream(
                DReXStream(learner), stream, settings, tests, opts.progress, f"{name} seed {seed}"
            )
            record(name, seed, run)
    for name in opts.baselines:  # deterministic: one run, whatever the seeds
        run = run_stream(RunningBaseline(name), stream, settings, tests, opts.progress, name)
        record(name, None, run)

    results: dict[str, Any] = {
        "dataset": os.path.basename(opts.dataset),
        "mode": "prequential",
        "protocol": {
            "order": "stream order; each interaction is scored before it is learned",
            "learner": "DReXLearner.learn_many, one call per micro-batch, one pass",
            "micro_batch": settings.batch_size,
            "window": settings.window,
            "checkpoint_every": settings.checkpoint_every,
            "seeds": list(opts.seeds),
            "filter": {"min_user": opts.min_user, "min_item": opts.min_item},
            "relevance": f"rating >= {RELEVANT_RATING:g}",
            "candidates": "at each checkpoint, for each user seen before it: the items "
            "seen before it that the user has not interacted with; relevant: those the "
            f"user rates >= {RELEVANT_RATING:g} in the next checkpoint_every interactions",
            "ties": "pessimistic: among equal scores, irrelevant items rank first",
            "cold_users": "<= 2 ratings before the interaction",
            "baselines": "running estimates, updated after each interaction is scored: "
            "global-mean (mean so far), bias (one closed-form sweep over the ratings so "
            "far), popularity (ratings so far, ranking only)",
            "exposure_weight": "config value, -1 (choose on validation) counts as 0",
            "ks": list(opts.ks),
        },
        "data": {**stats, "load": report.summary()},
        "config": {v: config(v).to_dict() for v in opts.variants},
        "machine": machine_info(device),
        "seconds": 0.0,
        "models": {name: aggregate_runs(runs) for name, runs in per_seed.items()},
        "curves": curves,
    }
    results["seconds"] = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    markdown = render_prequential(results)
    (out / "results.md").write_text(markdown, encoding="utf-8")
    plot_prequential(curves, out / "prequential.png")
    print(markdown)
    return results


PREQUENTIAL_COLUMNS: Final = ("mae", "rmse", "rmse_cold", "rmse_warm", "f1@5", "ndcg@5", "ndcg@10")


def render_prequential(results: dict[str, Any]) -> str:
    """The prequential results as markdown: overall table, ranking table, windows."""
    models: dict[str, dict[str, float]] = results["models"]
    proto = results["protocol"]
    data = results["data"]
    lines = [
        f"## {results['dataset']} (prequential)",
        "",
        f"{data['users']} users, {data['items']} items, {data['interactions']} interactions; "
        f"seeds {proto['seeds']}; micro-batches of {proto['micro_batch']}; each interaction "
        f"scored before it is learned; ranking every {proto['checkpoint_every']} "
        f"interactions over the known items the user has not interacted with, relevance "
        f"{proto['relevance']}, ties pessimistic.",
        "",
    ]

    def cell(m: dict[str, float], key: str) -> str:
        if key not in m or not np.isfinite(m[key]):
            return "—"
        return f"{m[key]:.4f} ± {m.get(key + '_std', 0.0):.4f}"

    def table(columns: Sequence[str]) -> None:
        lines.append("| model | " + " | ".join(columns) + " |")
        lines.append("|---|" + "---|" * len(columns))
        for name, m in models.items():
            lines.append(f"| {name} | " + " | ".join(cell(m, c) for c in columns) + " |")
        lines.append("")

    table(PREQUENTIAL_COLUMNS)
    lines += ["Ranking at the checkpoints (all users and checkpoints pooled):", ""]
    table([f"{m}@{k}" for m in ("p", "r", "f1", "ndcg") for k in proto["ks"]])
    curves: dict[str, list[dict[str, Any]]] = results["curves"]
    rating_models = [n for n, runs in curves.items() if runs and runs[0]["windows"]]
    if rating_models:
        ends = [int(w["end"]) for w in curves[rating_models[0]][0]["windows"]]
        lines += [f"RMSE per window of {proto['window']} interactions (mean over seeds):", ""]
        lines.append("| up to | " + " | ".join(rating_models) + " |")
        lines.append("|---|" + "---|" * len(rating_models))
        for j, end in enumerate(ends):
            cells = []
            for name in rating_models:
                values = [r["windows"][j]["rmse"] for r in curves[name] if j < len(r["windows"])]
                cells.append(f"{np.mean(values):.4f}" if values else "—")
            lines.append(f"| {end} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(
        f"Run time {results['seconds']:.0f}s on {results['machine']['platform']} "
        f"({results['machine']['cpus']} CPUs, device {results['machine']['device']})."
    )
    return "\n".join(lines) + "\n"


def plot_prequential(curves: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """RMSE per window, F1@5 and NDCG@10 per checkpoint, over the stream position."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for n, (name, runs) in enumerate(curves.items()):
        c = colours[n % len(colours)]
        for s, run in enumerate(runs):
            label = name if s == 0 else None
            if run["windows"]:
                axes[0].plot(
                    [w["end"] for w in run["windows"]],
                    [w["rmse"] for w in run["windows"]],
                    color=c,
                    alpha=0.7,
                    marker=".",
                    label=label,
                )
            for ax, key in ((axes[1], "f1@5"), (axes[2], "ndcg@10")):
                points = [p for p in run["checkpoints"] if key in p]
                if points:
                    ax.plot(
                        [p["position"] for p in points],
                        [p[key] for p in points],
                        color=c,
                        alpha=0.7,
                        marker=".",
                        label=label,
                    )
    for ax, title in zip(
        axes,
        ("RMSE per window (prequential)", "F1@5 at checkpoints", "NDCG@10 at checkpoints"),
        strict=True,
    ):
        ax.set_title(title)
        ax.set_xlabel("stream position (interactions)")
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- the CLI -----------------------------------------------------------------------------


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``drex replay`` to the ``drex`` command's subparsers."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "replay",
        help="evaluate the model from the Kafka topics (paper protocol or prequential)",
        description="Replay the reviews and ratings topics through the worker's join and "
        "the learner, with no consumer group and nothing written to Kafka, and evaluate: "
        "drex evaluate's protocol (--mode paper) or test-then-train over the stream "
        "(--mode prequential). See docs/replay.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=cmd_replay)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The replay's flags (shared with ``python -m streams.replay``)."""
    from drex_model.evaluate.runner import DEFAULT_BASELINES
    from drex_model.model import VARIANTS

    src = p.add_argument_group("source")
    src.add_argument(
        "--broker",
        default=os.environ.get("DREX_BROKER", "kafka://127.0.0.1:9092"),
        help="kafka://HOST:PORT (DREX_BROKER)",
    )
    src.add_argument(
        "--embedded",
        action="store_true",
        default=os.environ.get("DREX_EMBEDDED", "").lower() in {"1", "true", "yes", "on"},
        help="the broker is the embedded Tansu: read end offsets its way (DREX_EMBEDDED)",
    )
    src.add_argument("--reviews-topic", default=REVIEWS_TOPIC)
    src.add_argument("--ratings-topic", default=RATINGS_TOPIC)
    src.add_argument(
        "--since",
        type=parse_time,
        default=None,
        help="records with Kafka timestamp >= T "
        "(Unix seconds or ISO 8601; UTC unless a zone is given)",
    )
    src.add_argument("--until", type=parse_time, default=None, help="records before T")
    src.add_argument(
        "--from-offset",
        type=parse_offsets,
        default=None,
        help="first offset read (inclusive): N for every partition and/or TOPIC:P=N entries",
    )
    src.add_argument(
        "--to-offset", type=parse_offsets, default=None, help="end offset (exclusive), same form"
    )
    src.add_argument(
        "--read-timeout", type=float, default=30.0, help="seconds without progress = failure"
    )
    src.add_argument("--join-window", type=float, default=30.0, help="as the worker's")
    src.add_argument("--dedup-retention", type=float, default=3600.0, help="as the worker's")
    src.add_argument("--rating-scale", type=int, default=DEFAULT_RATING_SCALE)

    ev = p.add_argument_group("evaluation")
    ev.add_argument("--output", required=True, help="directory for results and plots")
    ev.add_argument("--mode", choices=MODES, default="paper")
    ev.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ev.add_argument(
        "--variants",
        nargs="*",
        default=None,
        choices=VARIANTS,
        help=f"default: all (paper), {' '.join(PREQUENTIAL_VARIANTS[:1])} (prequential)",
    )
    ev.add_argument(
        "--baselines",
        nargs="*",
        default=None,
        help=f"default: {' '.join(DEFAULT_BASELINES)} (paper), "
        f"{' '.join(PREQUENTIAL_BASELINES)} (prequential)",
    )
    ev.add_argument("--min-user", type=int, default=None, help="default 5 (paper), 0 (prequential)")
    ev.add_argument("--min-item", type=int, default=None, help="default 5 (paper), 0 (prequential)")
    ev.add_argument("--max-epochs", type=int, default=100, help="paper mode")
    ev.add_argument("--patience", type=int, default=10, help="paper mode")
    ev.add_argument("--early-stop", choices=["rmse", "ranking"], default="rmse", help="paper mode")
    ev.add_argument("--batch-size", type=int, default=256, help="prequential micro-batch")
    ev.add_argument("--window", type=int, default=1000, help="prequential: error-curve window")
    ev.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        help="prequential: interactions between ranking checkpoints (default: --window; 0 off)",
    )
    ev.add_argument("--encoder", default=None, help="local Hugging Face BERT-family directory")
    ev.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    ev.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ev.add_argument("--cache-dir", default=None, help="encoder output cache (~/.cache/drex)")
    ev.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="DReXConfig override"
    )
    ev.add_argument("--limit", type=int, default=0, help="use only the first N interactions")
    ev.add_argument(
        "--save-interactions",
        action="store_true",
        help="also write the rebuilt list as DIR/interactions.jsonl (drex evaluate reads it)",
    )
    ev.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_replay(args: argparse.Namespace) -> int:
    """Read, rebuild, evaluate; returns the exit code (errors: SystemExit with a line)."""
    try:
        return _replay(args)
    except ReplayError as err:
        raise SystemExit(f"drex replay: {err}") from None
    except (ValueError, FileNotFoundError) as err:  # bad data or settings: say so, no trace
        raise SystemExit(f"drex replay: {err}") from None


def _replay(args: argparse.Namespace) -> int:
    from drex_model.evaluate.runner import DEFAULT_BASELINES, EvaluateOptions, evaluate
    from drex_model.model import VARIANTS
    from streams.cli import parse_overrides
    from streams.producer import bootstrap_servers

    progress = not args.quiet
    paper = args.mode == "paper"
    out = Path(args.output)
    if args.limit < 0:
        raise ReplayError("--limit must be >= 0")
    if args.since is not None and args.until is not None and args.until <= args.since:
        raise ReplayError("--until must be later than --since")
    settings = PrequentialSettings(
        batch_size=args.batch_size,
        window=args.window,
        checkpoint_every=-1 if args.checkpoint_every is None else args.checkpoint_every,
    )
    overrides = parse_overrides(args.set)
    started = time.perf_counter()
    read = read_records(
        args.broker,
        reviews_topic=args.reviews_topic,
        ratings_topic=args.ratings_topic,
        since=args.since,
        until=args.until,
        from_offset=args.from_offset,
        to_offset=args.to_offset,
        embedded=args.embedded,
        timeout=args.read_timeout,
        progress=progress,
    )
    read_seconds = time.perf_counter() - started
    ranges = ", ".join(f"{tp} [{a}, {b})" for tp, (a, b) in read.ranges.items())
    if not read.records:
        raise ReplayError(
            f"no records in the selected range ({ranges}; {read.read} read, "
            f"since={args.since}, until={args.until})"
        )
    if read.missing:
        print(
            f"drex replay: topic(s) {read.missing} do not exist; replaying the rest",
            file=sys.stderr,
        )
    rebuilt = reconstruct(
        read.records,
        join_window=args.join_window,
        dedup_retention=args.dedup_retention,
        rating_scale=args.rating_scale,
        progress=progress,
    )
    print(f"drex replay: {rebuilt.summary()}", file=sys.stderr)
    if not rebuilt.interactions:
        raise ReplayError(
            f"the {len(read.records)} records made no interaction ({rebuilt.summary()})"
        )
    out.mkdir(parents=True, exist_ok=True)
    if rebuilt.letters:
        (out / "dead_letters.jsonl").write_bytes(b"".join(x + b"\n" for x in rebuilt.letters))
    if args.save_interactions:
        write_interactions(rebuilt.interactions, out / "interactions.jsonl")
    hosts = ",".join(bootstrap_servers(args.broker))
    label = f"replay of {args.reviews_topic}+{args.ratings_topic} at {hosts}"
    info = {
        "broker": args.broker,
        "topics": {"reviews": args.reviews_topic, "ratings": args.ratings_topic},
        "missing_topics": read.missing,
        "offsets": {tp: list(r) for tp, r in read.ranges.items()},
        "since": args.since,
        "until": args.until,
        "records_read": read.read,
        "records_in_range": len(read.records),
        "records_joined": rebuilt.records,
        "tombstones": rebuilt.tombstones,
        "dead_letters": rebuilt.dead_letters,
        "join_outcomes": rebuilt.outcomes,
        "repeated_pairs": rebuilt.repeated_pairs,
        "interactions": len(rebuilt.interactions),
        "interactions_digest": interactions_digest(rebuilt.interactions),
        "join_window": args.join_window,
        "dedup_retention": args.dedup_retention,
        "read_seconds": read_seconds,
        "summary": rebuilt.summary(),
    }
    variants = (
        args.variants
        if args.variants is not None
        else (list(VARIANTS) if paper else list(PREQUENTIAL_VARIANTS[:1]))
    )
    baselines = (
        args.baselines
        if args.baselines is not None
        else (list(DEFAULT_BASELINES) if paper else list(PREQUENTIAL_BASELINES))
    )
    default_min = 5 if paper else 0
    opts = EvaluateOptions(
        dataset=label,
        output=str(out),
        seeds=args.seeds,
        variants=variants,
        baselines=baselines,
        min_user=default_min if args.min_user is None else args.min_user,
        min_item=default_min if args.min_item is None else args.min_item,
        max_epochs=args.max_epochs,
        patience=args.patience,
        early_stop=args.early_stop,
        encoder=args.encoder,
        precision=args.precision,
        device=args.device,
        cache_dir=args.cache_dir,
        overrides=overrides,
        limit=args.limit,
        progress=progress,
    )
    if paper:
        results = {**evaluate(opts, data=rebuilt.report()), "mode": "paper"}
        plot = "learning_curves.png"
    else:
        results = prequential(opts, rebuilt.report(), settings)
        plot = "prequential.png"
    results["replay"] = info
    (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    with (out / "results.md").open("a", encoding="utf-8") as f:
        f.write(f"\nReplayed from Kafka: {ranges}; {rebuilt.summary()}.\n")
    print(f"wrote {out}/results.json, results.md and {plot}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m streams.replay ARGS``: the same as ``drex replay ARGS``."""
    parser = argparse.ArgumentParser(prog="drex replay", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return cmd_replay(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
