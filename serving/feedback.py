"""Feedback over HTTP: ``POST /feedback`` publishes reviews and ratings to the topics.

A client that already speaks HTTP to ``drex serve`` can send what its users did without a
Kafka client of its own. Each entry of the request's JSON array is one (user, item)
interaction with a ``rating``, a ``text`` or both; the server turns it into the contract
events of docs/events.md (a review on ``reviews``, a rating on ``ratings``, keyed by user),
checks every event with the worker's own validators before sending any, and answers once
the broker has acknowledged them all. The worker then joins and learns them like any other
event: the API does not learn, it publishes.

Retries are safe when the client says when the user acted: an entry's ``event_id``
defaults to a digest of (user, item, kind, ``event_time``), so the same entry sent twice is
a duplicate that the worker drops, and a later rating of the same item is new information.
Without ``event_time`` the server's clock is used, and a retry is a new event.

The server publishes only when it is given a broker (``--feedback-broker`` /
``DREX_FEEDBACK_BROKER``); without one the route answers 503 ``feedback_off``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from streams.events import (
    DEFAULT_MAX_TEXT_CHARS,
    DEFAULT_RATING_SCALE,
    RATINGS_TOPIC,
    REVIEWS_TOPIC,
    InvalidEvent,
    encode_rating,
    encode_review,
    event_key,
    validate_rating,
    validate_review,
)

if TYPE_CHECKING:
    from streams.producer import EventProducer

MAX_ENTRIES: Final = 1000  # entries per request; larger imports belong on the topics


class FeedbackEntry(BaseModel):
    """One interaction: what a user did with an item (a rating, a review, or both)."""

    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=256, description="the user's id")
    item_id: str = Field(min_length=1, max_length=256, description="the item's id")
    rating: float | None = Field(None, description="the rating, 1..rating scale (default 5)")
    text: str | None = Field(None, min_length=1, description="the review's text")
    event_time: float | None = Field(
        None,
        ge=0,
        description="seconds since the Unix epoch when the user acted (default: now); "
        "give it to make retries safe",
    )
    event_id: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="the event's id (default: a digest of user, item, kind and event_time); "
        "a review and a rating of one entry get '-review' and '-rating' appended",
    )


class FeedbackError(ValueError):
    """A request the server will not publish: ``code`` names why (docs/serving.md)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One contract event ready to send."""

    topic: str
    key: bytes
    value: bytes


def default_event_id(kind: str, user_id: str, item_id: str, event_time: float) -> str:
    """Deterministic in what the client sent: a resent entry keeps its id."""
    raw = f"{user_id}\x1f{item_id}\x1f{event_time!r}".encode()
    return f"http-{kind}-{hashlib.blake2b(raw, digest_size=12).hexdigest()}"


def parse_feedback(
    body: bytes,
    *,
    rating_scale: int = DEFAULT_RATING_SCALE,
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
    now: float | None = None,
) -> list[Outgoing]:
    """The events of a ``POST /feedback`` body, each checked by the worker's validators;
    raises :class:`FeedbackError` naming the first bad entry, so nothing is half-sent."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise FeedbackError("bad_json", f"the body is not JSON: {err}") from None
    if not isinstance(data, list):
        raise FeedbackError("bad_body", "the body must be a JSON array of feedback entries")
    if not 1 <= len(data) <= MAX_ENTRIES:
        raise FeedbackError(
            "bad_body", f"send 1 to {MAX_ENTRIES} entries per request, got {len(data)}"
        )
    when = time.time() if now is None else now
    out: list[Outgoing] = []
    for i, raw in enumerate(data):
        try:
            entry = FeedbackEntry.model_validate(raw)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "entry"
            raise FeedbackError("bad_entry", f"[{i}] {where}: {first['msg']}") from None
        out.extend(_events(i, entry, when, rating_scale, max_text_chars))
    return out


def _events(
    i: int, entry: FeedbackEntry, now: float, rating_scale: int, max_text_chars: int
) -> list[Outgoing]:
    if entry.rating is None and entry.text is None:
        raise FeedbackError("bad_entry", f"[{i}] an entry needs a 'rating', a 'text' or both")
    when = now if entry.event_time is None else entry.event_time
    user, item = entry.user_id, entry.item_id

    def event_id(kind: str) -> str:
        if entry.event_id is None:
            return default_event_id(kind, user, item, when)
        both = entry.rating is not None and entry.text is not None
        return f"{entry.event_id}-{kind}" if both else entry.event_id

    out = []
    try:
        if entry.text is not None:
            value = encode_review(event_id("review"), user, item, when, entry.text)
            validate_review(value, max_text_chars=max_text_chars)
            out.append(Outgoing(REVIEWS_TOPIC, event_key(user.strip()), value))
        if entry.rating is not None:
            value = encode_rating(event_id("rating"), user, item, when, entry.rating)
            validate_rating(value, rating_scale=rating_scale)
            out.append(Outgoing(RATINGS_TOPIC, event_key(user.strip()), value))
    except InvalidEvent as err:
        raise FeedbackError("invalid_event", f"[{i}] {err}") from None
    return out


class Publisher:
    """The server's Kafka producer, connected on first use (a broker that is down when the
    server starts does not stop it from serving recommendations)."""

    def __init__(self, broker: str, **client_options: Any) -> None:
        self.broker = broker
        self.client_options = client_options
        self._producer: EventProducer | None = None
        self._lock = asyncio.Lock()

    async def publish(self, events: Sequence[Outgoing]) -> None:
        """Send every event and wait for the broker's acknowledgements."""
        async with self._lock:
            producer = await self._connected()
            try:
                for event in events:
                    await producer.send_raw(event.topic, event.key, event.value)
                await producer.flush()
            except Exception:
                await self._drop()  # reconnect on the next request
                raise

    async def close(self) -> None:
        async with self._lock:
            await self._drop()

    async def _connected(self) -> EventProducer:
        if self._producer is None:
            from streams.producer import EventProducer

            producer = EventProducer(
                self.broker, client_id="drex-serve-feedback", acks="all", **self.client_options
            )
            await producer.start()
            self._producer = producer
        return self._producer

    async def _drop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()
