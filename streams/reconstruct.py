"""Rebuild interactions from Kafka source records with the worker's own join.

Step 2 of ``drex replay`` (streams/replay.py reads the records; evaluation is
drex_model/evaluate): :func:`reconstruct` feeds :class:`SourceRecord` values to
:class:`streams.agents.join.Joiner` over a dict instead of the RocksDB table, merged by
Kafka timestamp (each partition in offset order), with a simulated wall clock, and
orders the interactions as ``drex evaluate`` orders a file. Pure Python: no broker.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from drex_model.evaluate.data import LoadReport
from drex_model.types import Interaction
from streams.events import (
    DEFAULT_MAX_TEXT_CHARS,
    DEFAULT_RATING_SCALE,
    RATINGS_TOPIC,
    REVIEWS_TOPIC,
    InvalidEvent,
    validate,
)

_KINDS: Final = (REVIEWS_TOPIC, RATINGS_TOPIC)  # feed order of records with equal timestamps
DUPLICATE_EVENT: Final = "duplicate event"
# SEQ_HEADER (streams.producer), an optional Kafka record header: the producer's send
# position (ASCII decimal). When every record has it, it orders interactions with equal
# event times exactly; without it the feed position stands in, which is the send order
# only where timestamps tell it apart.


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One Kafka record of a source topic, as the replay needs it."""

    topic: str  # the contract topic it is read as: "reviews" or "ratings"
    partition: int
    offset: int
    timestamp: float  # Kafka record timestamp, seconds since the epoch
    value: bytes | None  # None: a tombstone (no event)
    seq: int | None = None  # the producer's send position (SEQ_HEADER), when it sent one


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
