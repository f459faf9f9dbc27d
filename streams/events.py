"""The event contract between producers and the drex stream processor.

Producers (in any language) write one JSON object per Kafka message, keyed by the user
id as UTF-8 bytes, to ``reviews`` or ``ratings``; docs/events.md and
docs/events.schema.json are the same contract for people and for validators. The two
halves of one (user, item) interaction travel separately, so they may arrive in either
order, late, twice, or never; ``event_id`` is what lets the consumer drop a resend.

A message that breaks the contract must never stop the stream: the validators raise
:class:`InvalidEvent` with a short, stable reason code, and :func:`dead_letter` wraps the
original bytes so they can be inspected (and replayed) from ``dead-letters`` later.

Wire fields, shared by both kinds:

- ``schema``: int, the contract version; only ``1`` exists. A consumer rejects versions
  it does not know instead of guessing what their fields mean.
- ``event_id``: non-empty string (an integer is accepted and turned into a string),
  unique per event across the whole stream. A resend of the same event must reuse it:
  same id = duplicate, whatever the second message contains.
- ``user_id`` / ``item_id``: non-empty string (or integer), the external ids. Ids are
  stripped of surrounding white space, as the offline loader does.
- Every id: at most ``MAX_ID_CHARS`` (256) characters after stripping, and no control
  characters (C0, DEL, C1: U+0000-U+001F, U+007F-U+009F). The bound keeps every record
  the worker derives from an event (its join row, its interaction) far below Kafka's
  message size limit; control characters have no place in an id and used to be the
  join's key separator.
- ``event_time``: number, seconds since the Unix epoch (fractions allowed), when the
  user acted; orders the stream. Negative, non-finite or millisecond-looking values
  (>= 1e11, i.e. after the year 5138) are rejected.
- review only, ``text``: string, the review body; not blank, at most ``max_text_chars``
  characters (default 20,000) after stripping surrounding white space.
- rating only, ``rating``: number (int or float) in ``1..rating_scale`` (default 5).
- optional, either kind, ``categories``: the item's categories, an array of 1 to
  ``MAX_CATEGORIES`` (16) strings, each an id by the rules above (stripped, at most 256
  characters, no control characters); repeats are dropped. Absent or ``null``: the event
  says nothing of them, and the item keeps the ones an earlier event gave. Recommendations
  can be filtered by category (``drex serve``, ``?category=``).

Unknown extra fields are ignored, so producers can add fields without breaking consumers.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Collection, Iterator, Sequence
from typing import Any, Final

import faust
import orjson

from drex_model.types import Interaction

REVIEWS_TOPIC: Final = "reviews"
RATINGS_TOPIC: Final = "ratings"
DEAD_LETTERS_TOPIC: Final = "dead-letters"
INTERACTIONS_TOPIC: Final = "interactions"

SCHEMA_VERSION: Final = 1
DEFAULT_MAX_TEXT_CHARS: Final = 20_000
DEFAULT_RATING_SCALE: Final = 5
# A dead letter quotes its payload; a cap keeps the wrapped message under Kafka's size limit
# even when JSON escaping inflates it (a control character becomes 6 bytes).
DEFAULT_MAX_RAW_CHARS: Final = 100_000
# Event times at or above this are almost surely milliseconds (seconds would be year 5138+).
MAX_EVENT_TIME: Final = 1e11
# Characters an id may have after stripping: every record derived from an event (join
# row, interaction, dead letter) then stays far below Kafka's 1 MB message limit.
MAX_ID_CHARS: Final = 256
MAX_CATEGORIES: Final = 16  # categories one event may give its item
# Control characters (C0, DEL, C1) are refused in ids.
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f]")

# Reason codes: stable strings that dashboards and alerts match on. Field-specific codes
# are "<code>:<field>", e.g. "missing_field:user_id".
INVALID_JSON: Final = "invalid_json"
NOT_AN_OBJECT: Final = "not_an_object"
MISSING_FIELD: Final = "missing_field"
WRONG_TYPE: Final = "wrong_type"
EMPTY_ID: Final = "empty_id"
ID_TOO_LONG: Final = "id_too_long"
BAD_ID_CHARACTERS: Final = "bad_id_characters"
UNKNOWN_SCHEMA_VERSION: Final = "unknown_schema_version"
BAD_EVENT_TIME: Final = "bad_event_time"
RATING_OUT_OF_RANGE: Final = "rating_out_of_range"
EMPTY_TEXT: Final = "empty_text"
TEXT_TOO_LONG: Final = "text_too_long"
BAD_CATEGORIES: Final = "bad_categories"
PROCESSING_ERROR: Final = "processing_error"


class InvalidEvent(ValueError):
    """A message that breaks the contract; ``reason`` is a stable code, ``message`` prose."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class ReviewEvent(faust.Record, serializer="json", include_metadata=False):
    """A validated review; ``dumps()`` gives the wire format (``categories`` null when
    the event gave none)."""

    schema: int
    event_id: str
    user_id: str
    item_id: str
    event_time: float
    text: str
    categories: list[str] | None = None


class RatingEvent(faust.Record, serializer="json", include_metadata=False):
    """A validated rating; ``dumps()`` gives the wire format (``categories`` null when
    the event gave none)."""

    schema: int
    event_id: str
    user_id: str
    item_id: str
    event_time: float
    rating: float
    categories: list[str] | None = None


class InteractionEvent(faust.Record, serializer="json", include_metadata=False):
    """A joined (user, item) interaction passed between agents on ``interactions``.

    A missing half is ``None`` (a review that never got its rating, or the reverse); the
    event ids of the halves are kept so a downstream step can trace and deduplicate.
    ``event_time`` is the latest of the halves' times: when the interaction was complete.
    ``categories``: the item's, as the halves gave them (the rating's when both did).
    """

    user_id: str
    item_id: str
    rating: float | None
    text: str | None
    event_time: float
    review_event_id: str | None = None
    rating_event_id: str | None = None
    categories: list[str] | None = None

    def to_interaction(self) -> Interaction:
        """The model's record type, so the learner never sees Kafka-specific fields."""
        return Interaction(
            user=self.user_id,
            item=self.item_id,
            rating=self.rating,
            text=self.text,
            timestamp=self.event_time,
        )


# Rating-only interactions one ``interactions`` record may carry (:func:`interaction_records`).
# Each costs the learner ~0.3 ms, so a full record is a few ms of work and a take of
# ``encode_window`` records stays a few seconds long; an id-bounded, rating-only
# interaction is at most ~5 KB, so a full record stays far below Kafka's 1 MB limit.
RECORD_INTERACTIONS: Final = 16


def interaction_records(events: Sequence[InteractionEvent]) -> list[tuple[int, int, bytes]]:
    """``(start, stop, value)``: the ``interactions`` records that carry ``events[start:
    stop]``, in order. Consecutive rating-only interactions share a record, a JSON array
    of up to :data:`RECORD_INTERACTIONS` of them: the per-message work of the producer,
    the broker and the consumer is then paid once for many. An interaction with a review
    travels alone, as one JSON object: the encoder dominates its cost, and the learner's
    takes, counted in records, stay as long as they were."""
    records: list[tuple[int, int, bytes]] = []
    start = 0
    while start < len(events):
        stop = start + 1
        if events[start].text is None:
            while (
                stop < len(events)
                and stop - start < RECORD_INTERACTIONS
                and events[stop].text is None
            ):
                stop += 1
        if stop - start == 1:
            value = events[start].dumps()
        else:
            value = b"[" + b",".join(e.dumps() for e in events[start:stop]) + b"]"
        records.append((start, stop, value))
        start = stop
    return records


def read_interactions(raw: bytes) -> list[InteractionEvent]:
    """The interactions of one ``interactions`` record, in order: a JSON object (one
    interaction, as a foreign writer or a replayed dead letter sends it) or a non-empty
    array of them (the join's, :func:`interaction_records`). Raises on anything else."""
    data = orjson.loads(raw)
    if not isinstance(data, list):
        return [InteractionEvent.from_data(_mapping(data))]
    if not data:
        raise ValueError("an interactions record holds an empty array")
    return [InteractionEvent.from_data(_mapping(d)) for d in data]


def micro_batches(
    take: Sequence[tuple[int, InteractionEvent]], ends: Collection[int], size: int
) -> Iterator[tuple[list[tuple[int, InteractionEvent]], int]]:
    """A take's (record offset, interaction) pairs in micro-batches of ``size``, each with
    the last offset whose record it finishes: ``ends`` holds where in ``take`` each
    record's last interaction is, so a record cut in two is finished by its second part."""
    for start in range(0, len(take), size):
        stop = min(start + size, len(take))
        tail = take[stop - 1][0]
        yield list(take[start:stop]), tail if stop - 1 in ends else tail - 1


def _mapping(data: object) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError(f"an interaction is a JSON object, not {_kind(data)}")
    return data


def interaction_id(event: InteractionEvent) -> str:
    """Deterministic id for tracing: the same halves always make the same id. A JSON
    array, so no id's content can make two interactions look alike."""
    parts = (event.user_id, event.item_id, event.review_event_id, event.rating_event_id)
    return orjson.dumps(parts).decode()


def learned_keys(event: InteractionEvent) -> list[str]:
    """What the learner remembers of an applied interaction: its halves' event ids
    (event ids are unique across the stream), or the pair for one that carries none (a
    foreign writer's)."""
    ids = [i for i in (event.review_event_id, event.rating_event_id) if i is not None]
    return ids or [orjson.dumps((event.user_id, event.item_id, None, None)).decode()]


def without_applied(event: InteractionEvent, applied: Collection[str]) -> InteractionEvent | None:
    """``event`` less its halves whose event id is in ``applied``; None when nothing is
    left. The learner's rule for an event id it has already learned from: the same
    interaction emitted again after a crash, or an id reused in another partition (another
    user), where the join could not see the first one."""
    keys = learned_keys(event)
    if not any(k in applied for k in keys):
        return event
    review = event.review_event_id is not None and event.review_event_id not in applied
    rating = event.rating_event_id is not None and event.rating_event_id not in applied
    if not (review or rating):
        return None
    return InteractionEvent(
        user_id=event.user_id,
        item_id=event.item_id,
        rating=event.rating if rating else None,
        text=event.text if review else None,
        event_time=event.event_time,
        review_event_id=event.review_event_id if review else None,
        rating_event_id=event.rating_event_id if rating else None,
        categories=event.categories,
    )


class DeadLetter(faust.Record, serializer="json", include_metadata=False):
    """A rejected message with why it was rejected, as written to ``dead-letters``."""

    topic: str  # source topic
    reason: str  # reason code (see the module constants)
    message: str  # human explanation
    raw: str  # the original payload, UTF-8 decoded with replacement characters
    received_at: float  # when the processor rejected it, seconds since the epoch


# --- encoding (producers) ------------------------------------------------------------


def event_key(user_id: str) -> bytes:
    """Kafka key of an event: the user id, so one user's events stay in one partition."""
    return user_id.encode("utf-8")


def encode_review(
    event_id: str,
    user_id: str,
    item_id: str,
    event_time: float,
    text: str,
    categories: Sequence[str] | None = None,
) -> bytes:
    """A review event's wire bytes, fields in contract order (``categories`` only when
    given)."""
    return _encode(event_id, user_id, item_id, event_time, "text", text, categories)


def encode_rating(
    event_id: str,
    user_id: str,
    item_id: str,
    event_time: float,
    rating: float,
    categories: Sequence[str] | None = None,
) -> bytes:
    """A rating event's wire bytes, fields in contract order (``categories`` only when
    given)."""
    return _encode(event_id, user_id, item_id, event_time, "rating", rating, categories)


def _encode(
    event_id: str,
    user_id: str,
    item_id: str,
    event_time: float,
    field: str,
    value: str | float,
    categories: Sequence[str] | None,
) -> bytes:
    event = {
        "schema": SCHEMA_VERSION,
        "event_id": event_id,
        "user_id": user_id,
        "item_id": item_id,
        "event_time": event_time,
        field: value,
    }
    return orjson.dumps(event if categories is None else {**event, "categories": categories})


# --- validation (consumers) ----------------------------------------------------------


def validate_review(
    raw: bytes | bytearray | memoryview | str, max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
) -> ReviewEvent:
    """Parse and check one ``reviews`` message; raise :class:`InvalidEvent` if it breaks the
    contract. The text is returned stripped of surrounding white space."""
    obj = _common(raw)
    text = obj.get("text")
    if text is None:
        raise InvalidEvent(f"{MISSING_FIELD}:text", "a review event needs a 'text' field")
    if not isinstance(text, str):
        raise InvalidEvent(f"{WRONG_TYPE}:text", f"'text' must be a string, got {_kind(text)}")
    text = text.strip()
    if not text:
        raise InvalidEvent(EMPTY_TEXT, "'text' is empty or white space only")
    if len(text) > max_text_chars:
        raise InvalidEvent(
            TEXT_TOO_LONG, f"'text' has {len(text)} characters, the limit is {max_text_chars}"
        )
    return ReviewEvent(**_envelope(obj), text=text)


def _envelope(obj: dict[str, Any]) -> dict[str, Any]:
    """The fields every event kind shares, already checked by ``_common``."""
    keys = ("event_id", "user_id", "item_id", "event_time", "categories")
    return {"schema": SCHEMA_VERSION, **{k: obj[k] for k in keys}}


def validate_rating(
    raw: bytes | bytearray | memoryview | str, rating_scale: int = DEFAULT_RATING_SCALE
) -> RatingEvent:
    """Parse and check one ``ratings`` message; raise :class:`InvalidEvent` if it breaks the
    contract. Integer ratings are accepted and returned as floats."""
    obj = _common(raw)
    rating = obj.get("rating")
    if rating is None:
        raise InvalidEvent(f"{MISSING_FIELD}:rating", "a rating event needs a 'rating' field")
    if not _is_number(rating):
        raise InvalidEvent(
            f"{WRONG_TYPE}:rating", f"'rating' must be a number, got {_kind(rating)}"
        )
    value = float(rating)
    if not (math.isfinite(value) and 1.0 <= value <= rating_scale):
        raise InvalidEvent(
            RATING_OUT_OF_RANGE, f"'rating' is {rating!r}, outside 1..{rating_scale}"
        )
    return RatingEvent(**_envelope(obj), rating=value)


def validate(
    topic: str,
    raw: bytes | bytearray | memoryview | str,
    rating_scale: int = DEFAULT_RATING_SCALE,
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
) -> ReviewEvent | RatingEvent:
    """Validate a message by the topic it came from (one entry point for a generic agent)."""
    if topic == REVIEWS_TOPIC:
        return validate_review(raw, max_text_chars=max_text_chars)
    if topic == RATINGS_TOPIC:
        return validate_rating(raw, rating_scale=rating_scale)
    raise ValueError(f"no event contract for topic {topic!r}")


def _common(raw: bytes | bytearray | memoryview | str) -> dict[str, Any]:
    """Check the fields both kinds share; returns the object with ids as str and a float
    event_time, so the kind-specific validators only look at their own field."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise InvalidEvent(INVALID_JSON, f"not valid UTF-8 JSON: {err}") from None
    if not isinstance(obj, dict):
        raise InvalidEvent(NOT_AN_OBJECT, f"expected a JSON object, got {_kind(obj)}")

    version = obj.get("schema")
    if version is None:
        raise InvalidEvent(f"{MISSING_FIELD}:schema", "no 'schema' version field")
    if not _is_number(version):
        raise InvalidEvent(
            f"{WRONG_TYPE}:schema", f"'schema' must be an integer, got {_kind(version)}"
        )
    if version != SCHEMA_VERSION:
        raise InvalidEvent(
            UNKNOWN_SCHEMA_VERSION, f"schema version {version!r}; this consumer knows 1"
        )

    for name in ("event_id", "user_id", "item_id"):
        obj[name] = _id(obj, name)

    when = obj.get("event_time")
    if when is None:
        raise InvalidEvent(f"{MISSING_FIELD}:event_time", "no 'event_time' field")
    if not _is_number(when):
        raise InvalidEvent(
            BAD_EVENT_TIME, f"'event_time' must be seconds since the epoch, got {_kind(when)}"
        )
    seconds = float(when)
    if not math.isfinite(seconds) or seconds < 0.0:
        raise InvalidEvent(BAD_EVENT_TIME, f"'event_time' {when!r} is not a time after 1970")
    if seconds >= MAX_EVENT_TIME:
        raise InvalidEvent(
            BAD_EVENT_TIME, f"'event_time' {when!r} looks like milliseconds; send seconds"
        )
    obj["event_time"] = seconds
    obj["categories"] = _categories(obj.get("categories"))
    return obj


def _categories(value: object) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_CATEGORIES:
        raise InvalidEvent(
            BAD_CATEGORIES,
            f"'categories' must be an array of 1 to {MAX_CATEGORIES} strings, got "
            + (f"{len(value)} of them" if isinstance(value, list) else _kind(value)),
        )
    try:
        names = [_id({"category": v}, "category") for v in value]
    except InvalidEvent as err:
        raise InvalidEvent(BAD_CATEGORIES, f"'categories': {err.message}") from None
    return list(dict.fromkeys(names))


def _id(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    if value is None:
        raise InvalidEvent(f"{MISSING_FIELD}:{name}", f"no '{name}' field")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # orjson reads at most 64-bit integers: 20 characters
    if not isinstance(value, str):
        raise InvalidEvent(
            f"{WRONG_TYPE}:{name}", f"'{name}' must be a string or an integer, got {_kind(value)}"
        )
    value = value.strip()  # as the offline loader does, so both see the same ids
    if not value:
        raise InvalidEvent(f"{EMPTY_ID}:{name}", f"'{name}' is empty")
    if len(value) > MAX_ID_CHARS:
        raise InvalidEvent(
            f"{ID_TOO_LONG}:{name}",
            f"'{name}' has {len(value)} characters, the limit is {MAX_ID_CHARS}",
        )
    if (bad := _CONTROL.search(value)) is not None:
        raise InvalidEvent(
            f"{BAD_ID_CHARACTERS}:{name}",
            f"'{name}' contains the control character U+{ord(bad.group()):04X}",
        )
    return value


def _is_number(value: object) -> bool:
    """JSON numbers only: Python counts booleans as ints, the contract does not."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _kind(value: object) -> str:
    """A JSON type name for messages (producers may not know Python's names)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


# --- dead letters --------------------------------------------------------------------


def dead_letter(
    raw: bytes | bytearray | memoryview | str | None,
    topic: str,
    err: BaseException,
    received_at: float | None = None,
    max_raw_chars: int = DEFAULT_MAX_RAW_CHARS,
) -> bytes:
    """The ``dead-letters`` message for a rejected payload.

    ``err`` is normally an :class:`InvalidEvent`; any other exception (a bug met while
    processing a valid-looking event) is recorded as ``processing_error`` so that one bad
    message still costs one dead letter, not a crashed worker. A payload longer than
    ``max_raw_chars`` is cut, and the message says so.
    """
    if isinstance(err, InvalidEvent):
        reason, message = err.reason, err.message
    else:
        reason, message = PROCESSING_ERROR, f"{type(err).__name__}: {err}"
    if raw is None:
        text = ""
    elif isinstance(raw, str):
        text = raw
    else:
        text = bytes(raw).decode("utf-8", errors="replace")
    if len(text) > max_raw_chars:
        message += f" (raw cut to {max_raw_chars} of {len(text)} characters)"
        text = text[:max_raw_chars]
    letter = DeadLetter(
        topic=topic,
        reason=reason,
        message=message,
        raw=text,
        received_at=time.time() if received_at is None else float(received_at),
    )
    return orjson.dumps(letter.asdict())


def parse_dead_letter(data: bytes | str) -> DeadLetter:
    """Read a ``dead-letters`` message back (for tooling, replays and tests)."""
    obj = orjson.loads(data)
    return DeadLetter(
        topic=obj["topic"],
        reason=obj["reason"],
        message=obj["message"],
        raw=obj["raw"],
        received_at=float(obj["received_at"]),
    )
