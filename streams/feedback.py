"""``POST /feedback``'s Kafka side: entries become contract events on the topics.

``drex serve --feedback`` hands the server a :class:`KafkaFeedback` (serving/feedback.py
has the route's types; serving imports nothing of streams). Each entry becomes a review
on ``reviews`` and/or a rating on ``ratings``, keyed by user (docs/events.md). Every
event is checked by the worker's own validators before any is sent, so a request is
published whole or refused whole, and the answer waits for the broker's
acknowledgements (``acks=all``).

Retries are safe when the client says when the user acted: an entry's event id defaults
to a digest of (user, item, kind, ``event_time``), so the same entry sent twice makes the
same event ids, which the worker drops as duplicates, while a later rating of the same
item is new information. Without ``event_time`` the server's clock is used and a retry
is a new event.

The producer connects on first use and again after a failure, so a broker that is down
when the server starts stops only this route (503 ``broker_unavailable``), not the
recommendations. It reads the worker's broker and TLS/SASL settings
(streams/kafka_client.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass

from serving.feedback import FeedbackAccepted, FeedbackEntry, FeedbackRefused
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
from streams.kafka_client import KafkaClientSettings, add_client_flags
from streams.producer import EventProducer

logger = logging.getLogger(__name__)


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


def events_of(
    entries: Sequence[FeedbackEntry],
    *,
    rating_scale: int = DEFAULT_RATING_SCALE,
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
    now: float | None = None,
) -> list[Outgoing]:
    """The contract events of ``entries``, each checked by the worker's validators;
    raises :class:`FeedbackRefused` (400) naming the first bad entry."""
    when = time.time() if now is None else now
    out: list[Outgoing] = []
    for i, entry in enumerate(entries):
        try:
            out.extend(_events(entry, when, rating_scale, max_text_chars))
        except InvalidEvent as err:
            raise FeedbackRefused(400, "invalid_event", f"[{i}] {err}") from None
    return out


def _events(
    entry: FeedbackEntry, now: float, rating_scale: int, max_text_chars: int
) -> list[Outgoing]:
    if entry.rating is None and entry.text is None:
        raise InvalidEvent("missing_field:rating", "an entry needs a 'rating', a 'text' or both")
    when = now if entry.event_time is None else entry.event_time
    user, item = entry.user_id, entry.item_id
    both = entry.rating is not None and entry.text is not None

    def event_id(kind: str) -> str:
        if entry.event_id is None:
            return default_event_id(kind, user, item, when)
        return f"{entry.event_id}-{kind}" if both else entry.event_id

    out = []
    categories = entry.categories  # the item's, on each of its events
    if entry.text is not None:
        value = encode_review(event_id("review"), user, item, when, entry.text, categories)
        event = validate_review(value, max_text_chars=max_text_chars)
        out.append(Outgoing(REVIEWS_TOPIC, event_key(event.user_id), value))
    if entry.rating is not None:
        value = encode_rating(event_id("rating"), user, item, when, entry.rating, categories)
        rated = validate_rating(value, rating_scale=rating_scale)
        out.append(Outgoing(RATINGS_TOPIC, event_key(rated.user_id), value))
    return out


class KafkaFeedback:
    """The server's feedback sink (serving.feedback.FeedbackSink): checks, publishes,
    waits for the acknowledgements."""

    def __init__(self, client: KafkaClientSettings, rating_scale: int = DEFAULT_RATING_SCALE):
        self.client = client
        self.rating_scale = rating_scale
        self._producer: EventProducer | None = None
        self._lock = asyncio.Lock()

    async def __call__(self, entries: Sequence[FeedbackEntry]) -> FeedbackAccepted:
        events = events_of(entries, rating_scale=self.rating_scale)
        async with self._lock:
            try:
                producer = await self._connected()
                for event in events:
                    await producer.send_raw(event.topic, event.key, event.value)
                await producer.flush()
            except Exception as err:
                await self._drop()  # connect again on the next request
                logger.warning("feedback: the broker at %s failed: %r", self.client.broker, err)
                raise FeedbackRefused(
                    503,
                    "broker_unavailable",
                    f"the broker did not acknowledge the events ({type(err).__name__}); "
                    "nothing may have been published: retry with the same entries",
                ) from None
        reviews = sum(e.topic == REVIEWS_TOPIC for e in events)
        return FeedbackAccepted(reviews=reviews, ratings=len(events) - reviews)

    async def close(self) -> None:
        async with self._lock:
            await self._drop()

    async def _connected(self) -> EventProducer:
        if self._producer is None:
            producer = EventProducer(
                self.client.broker,
                client_id="drex-serve-feedback",
                acks="all",
                client_options=self.client.aiokafka_options(),
            )
            await asyncio.wait_for(producer.start(), timeout=10)
            self._producer = producer
        return self._producer

    async def _drop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The broker and TLS/SASL flags ``drex serve --feedback`` publishes with (serve's
    help keeps its paragraphs: the password's line goes in one of its own)."""
    epilog, parser.epilog = parser.epilog, None
    add_client_flags(parser)
    added = textwrap.fill(parser.epilog, 88) if parser.epilog else None
    parser.epilog = "\n\n".join(filter(None, [epilog, added]))


def from_args(args: argparse.Namespace) -> KafkaFeedback:
    """The sink of a ``drex serve`` command line (flags, then ``DREX_*`` variables)."""
    return KafkaFeedback(KafkaClientSettings.from_args(args))
