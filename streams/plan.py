"""Plan the event stream drex consumes from a dataset, with the faults real streams have.

:func:`plan_events` splits each interaction into a review and a rating event, drops one
half for a share of them, resends some, mixes in malformed messages and lets the halves of
one interaction drift apart, all deterministically by seed, and says exactly what a
correct consumer must end up with (:class:`GroundTruth`). Planning only: sending the
events to Kafka is :class:`streams.producer.EventProducer`'s job.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import numpy as np
import orjson

from drex_model.types import Interaction
from streams.events import (
    DEFAULT_MAX_TEXT_CHARS,
    DEFAULT_RATING_SCALE,
    MAX_EVENT_TIME,
    RATINGS_TOPIC,
    REVIEWS_TOPIC,
    encode_rating,
    encode_review,
    event_key,
)

Event = tuple[str, bytes, bytes]  # (topic, key, value)

REVIEW: Final = "review"
RATING: Final = "rating"

# The malformed messages the generator mixes in, by the reason a consumer must give.
MALFORMED_KINDS: Final = (
    "invalid_json",
    "not_an_object",
    "missing_field",
    "wrong_type:rating",
    "rating_out_of_range",
    "empty_text",
    "text_too_long",
    "unknown_schema_version",
    "bad_event_time",
)
_MISSABLE: Final = ("event_id", "user_id", "item_id", "event_time", "schema")


def event_id_for(user_id: str, item_id: str, kind: str) -> str:
    """A deterministic event id: replaying a dataset resends the same ids, so a consumer
    that already saw them treats the replay as duplicates instead of new interactions."""
    digest = hashlib.blake2b(f"{user_id}\x1f{item_id}".encode(), digest_size=12).hexdigest()
    return f"{kind}-{digest}"


@dataclass(slots=True)
class GroundTruth:
    """What a correct consumer of a planned stream must end up with."""

    interactions: int = 0  # distinct (user, item) pairs with at least one valid event
    both: int = 0  # interactions sent as a review and a rating
    review_only: int = 0  # interactions sent as a review alone
    rating_only: int = 0  # interactions sent as a rating alone
    review_events: int = 0  # distinct valid review events
    rating_events: int = 0  # distinct valid rating events
    duplicates: int = 0  # extra copies of valid events (same event_id, same bytes)
    malformed: int = 0  # messages the consumer must reject
    malformed_reasons: dict[str, int] = field(default_factory=dict)  # reason code -> count
    per_user: dict[str, int] = field(default_factory=dict)  # user -> interactions
    per_item: dict[str, int] = field(default_factory=dict)  # item -> interactions
    skipped_repeats: int = 0  # input rows whose (user, item) pair came earlier
    skipped_empty: int = 0  # input rows with neither rating nor text
    events: int = 0  # messages in the stream, all kinds

    def summary(self) -> str:
        """One line for the CLI and logs."""
        return (
            f"{self.events} events: {self.review_events} reviews, {self.rating_events} ratings, "
            f"{self.duplicates} duplicates, {self.malformed} malformed; "
            f"{self.interactions} interactions ({self.both} both, {self.review_only} "
            f"review-only, {self.rating_only} rating-only), {len(self.per_user)} users, "
            f"{len(self.per_item)} items"
        )

    def to_json(self) -> bytes:
        """The truth as JSON, for an end-to-end check run by another process."""
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)


@dataclass(slots=True)
class EventPlan:
    """A planned stream and its ground truth."""

    events: list[Event]
    truth: GroundTruth


@dataclass(slots=True)
class _Msg:
    """One message waiting to be placed, with what must follow it."""

    event: Event
    follow: _Msg | None = None  # the other half of its interaction, at most max_delay later
    follow_gap: int = 1
    copy_gap: int = 0  # > 0: resend it this many positions later (a duplicate)


def plan_events(
    interactions: Iterable[Interaction],
    seed: int = 0,
    review_only: float = 0.0,
    rating_only: float = 0.0,
    duplicate: float = 0.0,
    malformed: float = 0.0,
    max_delay: int = 0,
    rating_scale: int = DEFAULT_RATING_SCALE,
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
) -> EventPlan:
    """Plan the event stream for ``interactions`` (in their order) and its ground truth.

    - An interaction with text and rating is sent as both events, except a
      ``review_only`` share (rating dropped) and a ``rating_only`` share (review dropped);
      one without text can only be a rating, one without rating only a review.
    - With ``max_delay`` >= 1 the first half is a review or a rating at random and the
      second follows 1..max_delay positions later (uniformly, guaranteed); with 0 the
      rating directly follows its review.
    - Each valid event is resent with probability ``duplicate``, 1..max(1, max_delay)
      positions later as a target (not guaranteed when many events are due at once).
    - For each valid event a malformed one is mixed in with probability ``malformed``,
      of a kind drawn from :data:`MALFORMED_KINDS`.
    - A repeated (user, item) pair keeps its first row (as the loader does); text is cut
      to ``max_text_chars`` so every planned valid event passes validation.
    """
    for name, share in (
        ("review_only", review_only),
        ("rating_only", rating_only),
        ("duplicate", duplicate),
        ("malformed", malformed),
    ):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{name} must be within 0..1, got {share}")
    if review_only + rating_only > 1.0:
        raise ValueError("review_only + rating_only must be at most 1")
    if max_delay < 0:
        raise ValueError(f"max_delay must be >= 0, got {max_delay}")

    rng = np.random.default_rng(seed)
    window = max(1, max_delay)
    truth = GroundTruth()
    per_user: Counter[str] = Counter()
    per_item: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    seen: set[tuple[str, str]] = set()
    fresh: list[_Msg] = []

    def maybe_copy(msg: _Msg) -> _Msg:
        if duplicate > 0.0 and rng.random() < duplicate:
            msg.copy_gap = int(rng.integers(1, window + 1))
        return msg

    for row in interactions:
        if row.user != row.user.strip() or row.item != row.item.strip():
            # consumers strip ids (as the loader does); the truth must use the same ids
            row = Interaction(
                row.user.strip(), row.item.strip(), row.rating, row.text, row.timestamp
            )
        pair = (row.user, row.item)
        if pair in seen:
            truth.skipped_repeats += 1
            continue
        text = row.text.strip()[:max_text_chars] if row.text else ""
        text = text.strip()
        if row.rating is None and not text:
            truth.skipped_empty += 1
            continue
        _check_row(row, rating_scale)
        seen.add(pair)

        if row.rating is None:
            kinds = [REVIEW]
        elif not text:
            kinds = [RATING]
        else:
            draw = rng.random()
            if draw < review_only:
                kinds = [REVIEW]
            elif draw < review_only + rating_only:
                kinds = [RATING]
            else:
                kinds = [REVIEW, RATING]
                if max_delay >= 1 and rng.random() < 0.5:
                    kinds.reverse()

        key = event_key(row.user)
        parts: list[_Msg] = []
        for kind in kinds:
            eid = event_id_for(row.user, row.item, kind)
            if kind == REVIEW:
                value = encode_review(eid, row.user, row.item, row.timestamp, text)
                parts.append(maybe_copy(_Msg((REVIEWS_TOPIC, key, value))))
                truth.review_events += 1
            else:
                assert row.rating is not None
                value = encode_rating(eid, row.user, row.item, row.timestamp, row.rating)
                parts.append(maybe_copy(_Msg((RATINGS_TOPIC, key, value))))
                truth.rating_events += 1
            if malformed > 0.0 and rng.random() < malformed:
                reason, event = _malformed(row, text, rng, rating_scale, max_text_chars)
                reasons[reason] += 1
                fresh.append(_Msg(event))
        if len(parts) == 2:
            parts[0].follow = parts[1]
            parts[0].follow_gap = int(rng.integers(1, window + 1))
            truth.both += 1
        elif kinds == [REVIEW]:
            truth.review_only += 1
        else:
            truth.rating_only += 1
        fresh.append(parts[0])
        per_user[row.user] += 1
        per_item[row.item] += 1

    events = _schedule(fresh, window)
    truth.interactions = len(seen)
    truth.malformed = sum(reasons.values())
    truth.malformed_reasons = dict(sorted(reasons.items()))
    truth.per_user = dict(per_user)
    truth.per_item = dict(per_item)
    truth.events = len(events)
    truth.duplicates = truth.events - truth.review_events - truth.rating_events - truth.malformed
    return EventPlan(events, truth)


def interactions_to_events(
    interactions: Iterable[Interaction],
    seed: int = 0,
    review_only: float = 0.0,
    rating_only: float = 0.0,
    duplicate: float = 0.0,
    malformed: float = 0.0,
    max_delay: int = 0,
) -> list[Event]:
    """The planned stream alone; :func:`plan_events` also gives its ground truth."""
    return plan_events(
        interactions,
        seed=seed,
        review_only=review_only,
        rating_only=rating_only,
        duplicate=duplicate,
        malformed=malformed,
        max_delay=max_delay,
    ).events


def _check_row(row: Interaction, rating_scale: int) -> None:
    """Refuse input that could only produce invalid "valid" events: the truth would lie."""
    if row.rating is not None and not 1.0 <= row.rating <= rating_scale:
        raise ValueError(f"rating {row.rating} of {row.user}/{row.item} outside 1..{rating_scale}")
    if not (math.isfinite(row.timestamp) and 0.0 <= row.timestamp < MAX_EVENT_TIME):
        raise ValueError(f"timestamp {row.timestamp} of {row.user}/{row.item} is not in seconds")
    if not row.user.strip() or not row.item.strip():
        raise ValueError(f"blank id in {row!r}")


def _schedule(fresh: list[_Msg], window: int) -> list[Event]:
    """Lay the messages out so every second half meets its deadline.

    Second halves hold unique deadline positions within ``window`` of their first half; a
    deadline that is due is always served first, and a first half that needs a slot is
    only sent while one is free (otherwise a pending half goes early, which only shortens
    its gap). Duplicates have soft targets and fill in between.
    """
    out: list[Event] = []
    hard: dict[int, _Msg] = {}  # deadline position -> second half
    hard_heap: list[int] = []
    soft: list[tuple[int, int, Event]] = []  # (target position, sequence, event)
    seq = 0
    nxt = 0

    def emit(msg: _Msg) -> None:
        nonlocal seq
        pos = len(out)
        out.append(msg.event)
        if msg.copy_gap:
            heapq.heappush(soft, (pos + msg.copy_gap, seq, msg.event))
            seq += 1
        if msg.follow is not None:
            slot = pos + msg.follow_gap
            if slot in hard:  # taken: the nearest free slot within the window
                free = [s for s in range(pos + 1, pos + window + 1) if s not in hard]
                slot = min(free, key=lambda s: (abs(s - slot), s))
            hard[slot] = msg.follow
            heapq.heappush(hard_heap, slot)

    def pop_hard() -> _Msg:
        return hard.pop(heapq.heappop(hard_heap))

    while nxt < len(fresh) or hard or soft:
        pos = len(out)
        if hard_heap and hard_heap[0] == pos:
            emit(pop_hard())
        elif soft and soft[0][0] <= pos:
            out.append(heapq.heappop(soft)[2])
        elif nxt < len(fresh) and (fresh[nxt].follow is None or len(hard) < window):
            emit(fresh[nxt])
            nxt += 1
        elif hard:
            emit(pop_hard())
        else:
            out.append(heapq.heappop(soft)[2])
    return out


def _malformed(
    row: Interaction,
    text: str,
    rng: np.random.Generator,
    rating_scale: int,
    max_text_chars: int,
) -> tuple[str, Event]:
    """One message that breaks the contract, and the reason code a consumer must give."""
    kind = MALFORMED_KINDS[int(rng.integers(len(MALFORMED_KINDS)))]
    eid = (
        "bad-"
        + hashlib.blake2b(
            f"{row.user}\x1f{row.item}\x1f{rng.integers(1 << 62)}".encode(), digest_size=10
        ).hexdigest()
    )
    body: dict[str, Any] = {
        "schema": 1,
        "event_id": eid,
        "user_id": row.user,
        "item_id": row.item,
        "event_time": row.timestamp,
    }
    on_ratings = kind in {"wrong_type:rating", "rating_out_of_range"} or (
        kind not in {"empty_text", "text_too_long"} and rng.random() < 0.5
    )
    if on_ratings:
        body["rating"] = row.rating if row.rating is not None else 1.0
    else:
        body["text"] = text or "fine"
    reason = kind
    if kind == "missing_field":
        name = _MISSABLE[int(rng.integers(len(_MISSABLE)))]
        del body[name]
        reason = f"missing_field:{name}"
    elif kind == "wrong_type:rating":
        body["rating"] = "five"
    elif kind == "rating_out_of_range":
        body["rating"] = rating_scale + 4  # 9 on the usual 1..5 scale
    elif kind == "empty_text":
        body["text"] = "   "
    elif kind == "text_too_long":
        body["text"] = "x" * (max_text_chars + 1)
    elif kind == "unknown_schema_version":
        body["schema"] = 2
    elif kind == "bad_event_time":
        body["event_time"] = "2014-05-01T00:00:00Z"  # an ISO string instead of seconds
    value = orjson.dumps(body)
    if kind == "invalid_json":
        value = value[: len(value) // 2]
    elif kind == "not_an_object":
        value = orjson.dumps([body])
    topic = RATINGS_TOPIC if on_ratings else REVIEWS_TOPIC
    return reason, (topic, event_key(row.user), value)
