"""``POST /feedback``'s entries: the body's model, then contract events checked by the
worker's validators before any is sent (streams/feedback.py)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from serving.feedback import MAX_ENTRIES, FeedbackBatch, FeedbackEntry, FeedbackRefused
from streams.events import RATINGS_TOPIC, REVIEWS_TOPIC, validate
from streams.feedback import events_of

BATCH: TypeAdapter[list[FeedbackEntry]] = TypeAdapter(FeedbackBatch)


def entries(*raw: dict[str, Any]) -> list[FeedbackEntry]:
    return BATCH.validate_python(list(raw))


def test_an_entry_with_text_and_rating_becomes_a_review_and_a_rating() -> None:
    out = events_of(
        entries({"user_id": " u1", "item_id": "i9", "rating": 4, "text": " Warm tone. "}), now=1e9
    )
    assert [o.topic for o in out] == [REVIEWS_TOPIC, RATINGS_TOPIC]
    assert all(o.key == b"u1" for o in out)  # keyed by the id as the worker reads it
    review, rating = (validate(o.topic, o.value) for o in out)
    assert (review.user_id, review.item_id, review.text, review.event_time) == (
        "u1",
        "i9",
        "Warm tone.",
        1e9,
    )
    assert rating.rating == 4.0
    assert review.event_id != rating.event_id  # the join tells the halves apart by id


def test_a_resent_entry_keeps_its_ids_and_a_later_one_is_new() -> None:
    entry = {"user_id": "u1", "item_id": "i9", "rating": 5, "event_time": 1.7e9}
    first = events_of(entries(entry), now=1.0)
    again = events_of(entries(entry), now=2.0)  # the server's clock does not matter
    later = events_of(entries({**entry, "event_time": 1.8e9}))
    ids = [validate(o.topic, o.value).event_id for o in (*first, *again, *later)]
    assert ids[0] == ids[1] != ids[2]


def test_a_client_event_id_is_kept_and_suffixed_when_one_entry_makes_two_events() -> None:
    one = events_of(entries({"user_id": "u", "item_id": "i", "rating": 3, "event_id": "e7"}))
    two = events_of(
        entries({"user_id": "u", "item_id": "i", "rating": 3, "text": "ok", "event_id": "e7"})
    )
    assert [validate(o.topic, o.value).event_id for o in one] == ["e7"]
    assert [validate(o.topic, o.value).event_id for o in two] == ["e7-review", "e7-rating"]


CONTRACT_BREAKERS = [
    ({"user_id": "u", "item_id": "i"}, "a 'rating', a 'text' or both"),
    ({"user_id": "u", "item_id": "i", "rating": 9}, "rating_out_of_range"),
    ({"user_id": "u", "item_id": "i", "text": "   "}, "empty_text"),
    ({"user_id": "u", "item_id": "i", "text": "\x1c\x1d"}, "empty_text"),
    ({"user_id": "u\x00", "item_id": "i", "rating": 3}, "bad_id_characters:user_id"),
    ({"user_id": "   ", "item_id": "i", "rating": 3}, "empty_id:user_id"),
    ({"user_id": "u", "item_id": "i", "rating": 3, "categories": [" "]}, "bad_categories"),
]


@pytest.mark.parametrize(("raw", "fragment"), CONTRACT_BREAKERS)
def test_the_body_model_refuses_what_the_event_contract_refuses(
    raw: dict[str, Any], fragment: str
) -> None:
    """The document allows only what the worker accepts (schemathesis holds the server
    to it); the contract's own check stays behind it, naming the entry."""
    with pytest.raises(ValidationError):
        entries(raw)
    good = FeedbackEntry(user_id="u", item_id="i", rating=3)
    unchecked = FeedbackEntry.model_construct(**{"rating": None, "text": None, **raw})
    with pytest.raises(FeedbackRefused) as caught:
        events_of([good, unchecked])
    assert (caught.value.status, caught.value.code) == (400, "invalid_event")
    assert caught.value.message.startswith("[1] ") and fragment in caught.value.message


@pytest.mark.parametrize(
    "raw",
    [
        [],
        [{"user_id": "u", "item_id": "i", "rating": 3}] * (MAX_ENTRIES + 1),
        [{"user_id": "u", "item_id": "i", "rating": 3, "x": 1}],
        [{"user_id": "", "item_id": "i", "rating": 3}],
        [{"user_id": 7, "item_id": "i", "rating": 3}],
        [{"user_id": "u", "item_id": "i", "rating": "5"}],
        [{"user_id": "u", "item_id": "i", "rating": 3, "text": None}],
    ],
)
def test_the_body_model_refuses_what_is_not_a_list_of_entries(raw: list[Any]) -> None:
    with pytest.raises(ValidationError):
        BATCH.validate_python(raw)


def test_an_entrys_categories_ride_on_its_events() -> None:
    out = events_of(
        entries({"user_id": "u", "item_id": "i", "rating": 4, "text": "ok", "categories": ["A"]})
    )
    assert [validate(o.topic, o.value).categories for o in out] == [["A"], ["A"]]
    bare = events_of(entries({"user_id": "u", "item_id": "i", "rating": 4}))
    assert validate(bare[0].topic, bare[0].value).categories is None
