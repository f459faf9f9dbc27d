"""``POST /feedback``'s contract on the serving side: what the server accepts and answers,
and the sink it hands the accepted entries to.

A client that already speaks HTTP to ``drex serve`` can send what its users did without a
Kafka client of its own. Each entry is one (user, item) interaction with a ``rating``, a
``text`` or both. The server does not learn from it: its :data:`FeedbackSink` publishes
the entries to the ``reviews`` and ``ratings`` topics as contract events (docs/events.md;
the Kafka side is streams/feedback.py, handed in by the ``drex`` command, since serving
imports nothing of streams), and the worker joins and learns them like any other event.
Without a sink (``--feedback`` off, the default) the route answers 503 ``feedback_off``:
a server that anyone can reach should not write into the training stream unasked.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Final

from pydantic import BaseModel, ConfigDict, Field

from serving.schemas import MAX_ID, Answer

MAX_ENTRIES: Final = 1000  # entries per request; larger imports belong on the topics


class FeedbackEntry(BaseModel):
    """One interaction: what a user did with an item (a rating, a review, or both)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: str = Field(min_length=1, max_length=MAX_ID, description="the user's id")
    item_id: str = Field(min_length=1, max_length=MAX_ID, description="the item's id")
    rating: float | None = Field(None, description="the rating, 1 to the worker's rating scale (5)")
    text: str | None = Field(None, min_length=1, description="the review's text")
    event_time: float | None = Field(
        None,
        ge=0,
        lt=1e11,
        description="seconds since the Unix epoch when the user acted (default: now); "
        "give it to make retries safe: the same entry then makes the same event ids",
    )
    categories: list[Annotated[str, Field(min_length=1, max_length=MAX_ID)]] | None = Field(
        None,
        min_length=1,
        max_length=16,
        description="the item's categories (recommendations filter by them: ?category=); "
        "absent: the item keeps those it has",
    )
    event_id: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_ID - len("-review"),
        description="the event's id (default: a digest of user, item, kind and "
        "event_time); an entry with a rating and a text makes two events, whose ids get "
        "'-review' and '-rating' appended",
    )


FeedbackBatch = Annotated[list[FeedbackEntry], Field(min_length=1, max_length=MAX_ENTRIES)]


class FeedbackAccepted(Answer):
    """What the broker acknowledged: events published, by topic."""

    reviews: int = Field(description="review events published to 'reviews'")
    ratings: int = Field(description="rating events published to 'ratings'")


class FeedbackRefused(Exception):
    """The sink's refusal: ``status`` 400 (an entry breaks the event contract,
    ``invalid_event``) or 503 (the broker did not acknowledge, ``broker_unavailable``)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


#: Publishes a request's entries (all or none checked first); raises FeedbackRefused.
FeedbackSink = Callable[[Sequence[FeedbackEntry]], Awaitable[FeedbackAccepted]]
