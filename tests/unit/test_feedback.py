"""``POST /feedback``'s parsing: entries become contract events, checked before any is sent."""

from __future__ import annotations

import orjson
import pytest

from serving.feedback import MAX_ENTRIES, FeedbackError, parse_feedback
from streams.events import RATINGS_TOPIC, REVIEWS_TOPIC, validate


def body(*entries: object) -> bytes:
    return orjson.dumps(list(entries))


def test_an_entry_with_text_and_rating_becomes_a_review_and_a_rating() -> None:
    out = parse_feedback(
        body({"user_id": "u1", "item_id": "i9", "rating": 4, "text": " Warm tone. "}), now=1e9
    )
    assert [o.topic for o in out] == [REVIEWS_TOPIC, RATINGS_TOPIC]
    assert all(o.key == b"u1" for o in out)
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
    first = parse_feedback(body(entry), now=1.0)
    again = parse_feedback(body(entry), now=2.0)  # the server's clock does not matter
    later = parse_feedback(body({**entry, "event_time": 1.8e9}))
    ids = [validate(o.topic, o.value).event_id for o in (*first, *again, *later)]
    assert ids[0] == ids[1] != ids[2]


def test_a_client_event_id_is_kept_and_suffixed_when_one_entry_makes_two_events() -> None:
    one = parse_feedback(body({"user_id": "u", "item_id": "i", "rating": 3, "event_id": "e7"}))
    two = parse_feedback(
        body({"user_id": "u", "item_id": "i", "rating": 3, "text": "ok", "event_id": "e7"})
    )
    assert [validate(o.topic, o.value).event_id for o in one] == ["e7"]
    assert [validate(o.topic, o.value).event_id for o in two] == ["e7-review", "e7-rating"]


@pytest.mark.parametrize(
    ("raw", "code", "fragment"),
    [
        (b"{not json", "bad_json", "not JSON"),
        (b'{"user_id": "u"}', "bad_body", "array"),
        (b"[]", "bad_body", "1 to"),
        (body({"user_id": "u", "item_id": "i"}), "bad_entry", "a 'rating', a 'text' or both"),
        (body({"user_id": "u", "item_id": "i", "rating": 3, "x": 1}), "bad_entry", "x"),
        (body({"user_id": "", "item_id": "i", "rating": 3}), "bad_entry", "user_id"),
        (body({"user_id": "u", "item_id": "i", "rating": 9}), "invalid_event", "rating_out"),
        (body({"user_id": "u", "item_id": "i", "text": "   "}), "invalid_event", "empty"),
        (body({"user_id": "u\x00", "item_id": "i", "rating": 3}), "invalid_event", "[0]"),
    ],
)
def test_bad_feedback_is_refused_with_a_reason(raw: bytes, code: str, fragment: str) -> None:
    with pytest.raises(FeedbackError) as caught:
        parse_feedback(raw)
    assert caught.value.code == code
    assert fragment in caught.value.message


def test_one_bad_entry_refuses_the_whole_request_naming_it() -> None:
    good = {"user_id": "u", "item_id": "i", "rating": 3}
    with pytest.raises(FeedbackError, match=r"^\[2\]"):
        parse_feedback(body(good, good, {**good, "rating": 0}))


def test_the_entry_count_is_bounded() -> None:
    entry = {"user_id": "u", "item_id": "i", "rating": 3}
    assert len(parse_feedback(body(*[entry] * MAX_ENTRIES))) == MAX_ENTRIES
    with pytest.raises(FeedbackError, match="1 to"):
        parse_feedback(body(*[entry] * (MAX_ENTRIES + 1)))
