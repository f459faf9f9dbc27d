"""``POST /feedback``'s contract on the serving side: what the server accepts and answers,
and the sink it hands the accepted entries to.

A client that already speaks HTTP to ``drex serve`` can send what its users did without a
Kafka client of its own. Each entry is one (user, item) interaction with a ``rating``, a
``text`` or both. The server does not learn from it: its :data:`FeedbackSink` publishes
the entries to the ``reviews`` and ``ratings`` topics as contract events (docs/events.md;
the Kafka side is streams/feedback.py, handed in by the ``drex`` command, since serving
imports nothing of streams), and the worker joins and learns them like any other event.
Without a sink (``--feedback`` off, the default) the server has no such route and its
OpenAPI document none either (404 ``not_found``): a server that anyone can reach should not
write into the training stream unasked.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serving.schemas import MAX_ID, Answer

MAX_ENTRIES: Final = 1000  # entries per request; larger imports belong on the topics
# The event contract's rules (streams/events.py), in the schema, so that what the document
# allows the worker accepts: an id holds no control character and something besides
# white space (the contract strips it); a text holds something besides white space.
_NO_CONTROL = r"\x00-\x1f\x7f-\x9f"
ID_PATTERN: Final = f"^[^{_NO_CONTROL}]*[^\\s{_NO_CONTROL}][^{_NO_CONTROL}]*$"
MAX_TEXT: Final = 20_000  # the worker's default limit (streams.events)
# Python strips U+001C-U+001F as white space; regex engines' \s leaves them out
TEXT_PATTERN: Final = r"[^\s\x1c-\x1f]"
Id = Annotated[str, Field(min_length=1, max_length=MAX_ID, pattern=ID_PATTERN)]


def _entry_schema(schema: dict[str, Any]) -> None:
    """The document's entry as the model reads it: an optional field is left out, never
    null, and an entry has a rating, a text or both."""
    for field in schema["properties"].values():
        branches = field.pop("anyOf", None)
        if branches is not None:
            field.update(next(b for b in branches if b.get("type") != "null"))
        if field.get("default", 0) is None:
            del field["default"]
    schema["anyOf"] = [{"required": ["rating"]}, {"required": ["text"]}]


class FeedbackEntry(BaseModel):
    """One interaction: what a user did with an item (a rating, a review, or both)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_entry_schema)

    @model_validator(mode="before")
    @classmethod
    def _present_not_null(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if nulls := [k for k, v in data.items() if v is None]:
                raise ValueError(f"leave {', '.join(nulls)} out rather than send null")
            if "rating" not in data and "text" not in data:
                raise ValueError("an entry needs a 'rating', a 'text' or both")
        return data

    user_id: Id = Field(description="the user's id")
    item_id: Id = Field(description="the item's id")
    rating: float | None = Field(None, ge=1, le=5, description="the rating, 1 to 5")
    text: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_TEXT,
        pattern=TEXT_PATTERN,
        description="the review's text",
    )
    event_time: float | None = Field(
        None,
        ge=0,
        lt=1e11,
        description="seconds since the Unix epoch when the user acted (default: now); "
        "give it to make retries safe: the same entry then makes the same event ids",
    )
    categories: list[Id] | None = Field(
        None,
        min_length=1,
        max_length=16,
        description="the item's categories (recommendations filter by them: ?category=); "
        "absent: the item keeps those it has",
    )
    event_id: Annotated[str, Field(pattern=ID_PATTERN)] | None = Field(
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
