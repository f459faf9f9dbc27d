"""The event contract: every reject reason, the edge cases that must pass, dead letters,
and the fault-injecting stream planner's ground truth."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from drex_model.types import Interaction
from streams.events import (
    DEAD_LETTERS_TOPIC,
    INTERACTIONS_TOPIC,
    RATINGS_TOPIC,
    REVIEWS_TOPIC,
    InteractionEvent,
    InvalidEvent,
    RatingEvent,
    ReviewEvent,
    dead_letter,
    encode_rating,
    encode_review,
    interaction_records,
    micro_batches,
    parse_dead_letter,
    read_interactions,
    validate,
    validate_rating,
    validate_review,
)
from streams.plan import EventPlan, event_id_for, interactions_to_events, plan_events
from streams.producer import bootstrap_servers, register

DOCS = Path(__file__).resolve().parents[2] / "docs"


def review(**changes: Any) -> bytes:
    body: dict[str, Any] = {
        "schema": 1,
        "event_id": "e1",
        "user_id": "u1",
        "item_id": "i1",
        "event_time": 1_500_000_000.5,
        "text": "Warm tone, solid build.",
    }
    body.update(changes)
    return orjson.dumps({k: v for k, v in body.items() if v is not DROP})


def rating(**changes: Any) -> bytes:
    body: dict[str, Any] = {
        "schema": 1,
        "event_id": "e2",
        "user_id": "u1",
        "item_id": "i1",
        "event_time": 1_500_000_000,
        "rating": 4,
    }
    body.update(changes)
    return orjson.dumps({k: v for k, v in body.items() if v is not DROP})


DROP = object()  # a field value meaning "leave the field out"


def reason_of(call: Any, raw: bytes | str, **kwargs: Any) -> str:
    with pytest.raises(InvalidEvent) as info:
        call(raw, **kwargs)
    assert info.value.message  # every rejection explains itself to a human
    return info.value.reason


# --- reject reasons --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"schema": 1, "event_id": ', "invalid_json"),
        (b"", "invalid_json"),
        (b'{"text": "\xff\xfe"}', "invalid_json"),  # not UTF-8
        (b'{"event_time": NaN}', "invalid_json"),
        (b"[1, 2]", "not_an_object"),
        (b'"a string"', "not_an_object"),
        (b"null", "not_an_object"),
        (review(schema=DROP), "missing_field:schema"),
        (review(schema=None), "missing_field:schema"),
        (review(schema="1"), "wrong_type:schema"),
        (review(schema=True), "wrong_type:schema"),
        (review(schema=2), "unknown_schema_version"),
        (review(schema=0), "unknown_schema_version"),
        (review(event_id=DROP), "missing_field:event_id"),
        (review(user_id=DROP), "missing_field:user_id"),
        (review(item_id=DROP), "missing_field:item_id"),
        (review(user_id=1.5), "wrong_type:user_id"),
        (review(item_id=["i1"]), "wrong_type:item_id"),
        (review(event_id=True), "wrong_type:event_id"),
        (review(user_id="  "), "empty_id:user_id"),
        (review(event_id=""), "empty_id:event_id"),
        (review(user_id="u" * 257), "id_too_long:user_id"),
        (review(item_id="i" * 400_000), "id_too_long:item_id"),
        (review(event_id="e" * 10_000), "id_too_long:event_id"),
        (review(item_id="b\x1fc"), "bad_id_characters:item_id"),
        (review(user_id="a\x00b"), "bad_id_characters:user_id"),
        (review(event_id="x\x7fy"), "bad_id_characters:event_id"),
        (review(user_id="a\x85b"), "bad_id_characters:user_id"),  # C1
        (review(user_id="a\nb"), "bad_id_characters:user_id"),
        (review(event_time=DROP), "missing_field:event_time"),
        (review(event_time="2014-05-01T00:00:00Z"), "bad_event_time"),
        (review(event_time=False), "bad_event_time"),
        (review(event_time=-1), "bad_event_time"),
        (review(event_time=1_500_000_000_000), "bad_event_time"),  # milliseconds
        (review(text=DROP), "missing_field:text"),
        (review(text=5), "wrong_type:text"),
        (review(text=""), "empty_text"),
        (review(text=" \n\t "), "empty_text"),
        (review(text="x" * 20_001), "text_too_long"),
    ],
)
def test_review_reject_reasons(raw: bytes, reason: str) -> None:
    assert reason_of(validate_review, raw) == reason


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (rating(rating=DROP), "missing_field:rating"),
        (rating(rating=None), "missing_field:rating"),
        (rating(rating="4"), "wrong_type:rating"),
        (rating(rating=True), "wrong_type:rating"),
        (rating(rating=9), "rating_out_of_range"),
        (rating(rating=0), "rating_out_of_range"),
        (rating(rating=0.999), "rating_out_of_range"),
        (rating(rating=5.0001), "rating_out_of_range"),
        (rating(rating=1e300), "rating_out_of_range"),
        (rating(user_id=DROP), "missing_field:user_id"),
        (rating(schema=3), "unknown_schema_version"),
        (b'{"rating": 1e400}', "invalid_json"),  # overflows to infinity
    ],
)
def test_rating_reject_reasons(raw: bytes, reason: str) -> None:
    assert reason_of(validate_rating, raw) == reason


def test_text_limit_is_configurable() -> None:
    assert reason_of(validate_review, review(text="abcdef"), max_text_chars=5) == "text_too_long"
    assert validate_review(review(text="abcde"), max_text_chars=5).text == "abcde"


def test_rating_scale_is_configurable() -> None:
    assert validate_rating(rating(rating=10), rating_scale=10).rating == 10.0
    assert reason_of(validate_rating, rating(rating=6), rating_scale=5) == "rating_out_of_range"


def test_schema_version_is_checked_before_fields() -> None:
    """A future version may rename fields; its events must not be misreported as broken."""
    assert reason_of(validate_review, review(schema=2, user_id=DROP)) == "unknown_schema_version"


# --- valid edge cases --------------------------------------------------------------------


def test_valid_review_is_typed() -> None:
    event = validate_review(review())
    assert isinstance(event, ReviewEvent)
    assert (event.schema, event.event_id, event.user_id, event.item_id) == (1, "e1", "u1", "i1")
    assert event.event_time == 1_500_000_000.5
    assert event.text == "Warm tone, solid build."


def test_valid_rating_accepts_int_and_returns_float() -> None:
    event = validate_rating(rating(rating=4))
    assert isinstance(event, RatingEvent)
    assert event.rating == 4.0 and isinstance(event.rating, float)
    assert isinstance(event.event_time, float)


@pytest.mark.parametrize("value", [1, 1.0, 2.5, 5, 5.0])
def test_rating_bounds_are_inclusive(value: float) -> None:
    assert validate_rating(rating(rating=value)).rating == float(value)


@pytest.mark.parametrize(
    "changes",
    [
        {"user_id": 42, "item_id": 7, "event_id": 123},  # integer ids
        {"schema": 1.0},  # JSON does not distinguish 1 from 1.0
        {"event_time": 0},
        {"event_time": 99_999_999_999.0},  # just under the milliseconds guard
        {"text": "x" * 20_000},  # exactly at the limit
        {"text": "  Gut 👍 — très bien  "},  # non-ASCII, surrounding white space
        {"extra": {"nested": True}, "rating": 3},  # unknown fields are ignored
    ],
)
def test_valid_review_edge_cases(changes: dict[str, Any]) -> None:
    event = validate_review(review(**changes))
    for name in ("user_id", "item_id", "event_id"):
        assert isinstance(getattr(event, name), str)
    assert event.text == event.text.strip()


def test_ids_up_to_the_limit_pass_and_the_limit_counts_after_stripping() -> None:
    event = validate_review(review(user_id="  " + "u" * 256 + "\t", item_id="é" * 256))
    assert (event.user_id, event.item_id) == ("u" * 256, "é" * 256)
    event = validate_rating(rating(event_id='id with spaces, "quotes" and \u00e9\U0001f600'))
    assert event.event_id == 'id with spaces, "quotes" and é\U0001f600'


def test_integer_ids_become_strings_and_ids_are_stripped() -> None:
    event = validate_rating(rating(user_id=42, item_id=" i9 ", event_id=7))
    assert (event.user_id, event.item_id, event.event_id) == ("42", "i9", "7")


def test_accepts_bytearray_memoryview_and_str() -> None:
    raw = review()
    for form in (bytearray(raw), memoryview(raw), raw.decode()):
        assert validate_review(form).event_id == "e1"


def test_encoders_round_trip_through_validators() -> None:
    r = encode_review("e", "u", "i", 1.0, "nice")
    s = encode_rating("e", "u", "i", 1.0, 3.0)
    # the record's JSON is the wire format, with categories null when none were given
    assert validate_review(r).asdict() == {**orjson.loads(r), "categories": None}
    assert validate_rating(s).asdict() == {**orjson.loads(s), "categories": None}
    assert validate_review(validate_review(r).dumps()) == validate_review(r)
    tagged = orjson.dumps({**orjson.loads(s), "categories": ["Guitars", " Picks", "Guitars"]})
    assert validate_rating(tagged).categories == ["Guitars", "Picks"]  # stripped, once each
    assert validate_rating(validate_rating(tagged).dumps()) == validate_rating(tagged)


@pytest.mark.parametrize(
    ("categories", "why"),
    [
        ([], "1 to 16"),
        (["c"] * 17, "1 to 16"),
        ("Guitars", "got string"),
        ([1.5], "must be a string"),
        (["  "], "is empty"),
        (["x" * 257], "the limit is 256"),
        (["a\x00b"], "control character"),
    ],
)
def test_bad_categories_are_refused(categories: object, why: str) -> None:
    raw = orjson.loads(encode_rating("e", "u", "i", 1.0, 3.0))
    with pytest.raises(InvalidEvent, match=why) as caught:
        validate_rating(orjson.dumps({**raw, "categories": categories}))
    assert caught.value.reason == "bad_categories"


def test_validate_dispatches_by_topic() -> None:
    assert isinstance(validate(REVIEWS_TOPIC, review()), ReviewEvent)
    assert isinstance(validate(RATINGS_TOPIC, rating()), RatingEvent)
    with pytest.raises(ValueError, match="no event contract"):
        validate("other", review())


def test_topic_names() -> None:
    assert (REVIEWS_TOPIC, RATINGS_TOPIC, DEAD_LETTERS_TOPIC, INTERACTIONS_TOPIC) == (
        "reviews",
        "ratings",
        "dead-letters",
        "interactions",
    )


def test_interaction_event_round_trip_and_conversion() -> None:
    event = InteractionEvent(
        user_id="u",
        item_id="i",
        rating=None,
        text="only a review",
        event_time=12.0,
        review_event_id="review-1",
        rating_event_id=None,
    )
    back = InteractionEvent.loads(event.dumps())
    assert back == event
    assert back.to_interaction() == Interaction("u", "i", None, "only a review", 12.0)


def _interaction(n: int, text: str | None = None) -> InteractionEvent:
    return InteractionEvent(
        user_id=f"u{n}",
        item_id=f"i{n}",
        rating=None if text else 4.0,
        text=text,
        event_time=float(n),
        review_event_id=f"v{n}" if text else None,
        rating_event_id=None if text else f"r{n}",
    )


def test_rating_only_interactions_share_records_and_a_review_travels_alone() -> None:
    kinds = [None] * 20 + ["a review"] + [None] * 3 + ["another", "and another"]
    events = [_interaction(n, text) for n, text in enumerate(kinds)]
    records = interaction_records(events)
    assert [(a, b) for a, b, _ in records] == [
        (0, 16),
        (16, 20),
        (20, 21),
        (21, 24),
        (24, 25),
        (25, 26),
    ]
    assert records[0][2].startswith(b"[") and records[2][2] == events[20].dumps()
    assert [e for _, _, value in records for e in read_interactions(value)] == events
    assert interaction_records([events[0]]) == [(0, 1, events[0].dumps())]  # one: an object
    assert interaction_records([]) == []


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"[]", ValueError),
        (b"[5]", ValueError),
        (b'"x"', ValueError),
        (b"[{", orjson.JSONDecodeError),
    ],
)
def test_an_interactions_record_that_is_not_interactions_is_refused(
    raw: bytes, error: type[Exception]
) -> None:
    with pytest.raises(error):
        read_interactions(raw)
    with pytest.raises(TypeError):  # a field missing
        read_interactions(b'[{"user_id": "u"}]')


def test_micro_batches_say_which_records_they_finish() -> None:
    take = [(o, _interaction(o)) for o, size in enumerate([3, 1, 4]) for _ in range(size)]
    ends = {2, 3, 7}  # records at offsets 0, 1, 2 end at these indices
    got = [([o for o, _ in b], complete) for b, complete in micro_batches(take, ends, 3)]
    assert got == [([0, 0, 0], 0), ([1, 2, 2], 1), ([2, 2], 2)]


# --- dead letters ------------------------------------------------------------------------


def test_dead_letter_round_trip() -> None:
    raw = b'{"schema": 1, "rating": 9, \xff}'
    with pytest.raises(InvalidEvent) as info:
        validate_rating(raw)
    data = dead_letter(raw, RATINGS_TOPIC, info.value, received_at=123.5)
    assert set(orjson.loads(data)) == {"topic", "reason", "message", "raw", "received_at"}
    letter = parse_dead_letter(data)
    assert letter.topic == "ratings"
    assert letter.reason == "invalid_json"
    assert letter.message == info.value.message
    assert letter.raw == raw.decode("utf-8", errors="replace")
    assert "\ufffd" in letter.raw
    assert letter.received_at == 123.5


def test_dead_letter_of_a_valid_json_payload_keeps_it_verbatim() -> None:
    raw = rating(rating=9)
    with pytest.raises(InvalidEvent) as info:
        validate_rating(raw)
    letter = parse_dead_letter(dead_letter(raw, RATINGS_TOPIC, info.value))
    assert letter.reason == "rating_out_of_range"
    assert letter.raw.encode() == raw  # can be replayed as it was


def test_dead_letter_of_an_unexpected_error_and_a_cut_payload() -> None:
    letter = parse_dead_letter(
        dead_letter(b"a" * 50, REVIEWS_TOPIC, KeyError("boom"), max_raw_chars=10)
    )
    assert letter.reason == "processing_error"
    assert "KeyError" in letter.message and "cut to 10 of 50" in letter.message
    assert letter.raw == "a" * 10
    assert letter.received_at > 1.6e9  # defaults to now


# --- the planned stream ------------------------------------------------------------------


def make_interactions(n: int = 5_000, users: int = 300, items: int = 149) -> list[Interaction]:
    """Distinct (user, item) rows (users and items coprime) with both modalities, except
    one in 50 without text and one in 50 without rating."""
    rows = []
    for j in range(n):
        text: str | None = f"review {j}: warm tone"
        stars: float | None = float(1 + j % 5)
        if j % 50 == 0:
            text = None
        elif j % 50 == 1:
            stars = None
        rows.append(Interaction(f"u{j % users}", f"i{j % items}", stars, text, float(j)))
    return rows


def consume(plan: EventPlan) -> dict[str, Any]:
    """What a correct consumer derives from the stream (validate, dedupe, join)."""
    reasons: Counter[str] = Counter()
    seen: dict[str, bytes] = {}
    joined: dict[tuple[str, str], set[str]] = {}
    dupes = 0
    for topic, key, value in plan.events:
        try:
            event = validate(topic, value)
        except InvalidEvent as err:
            reasons[err.reason] += 1
            continue
        assert key == event.user_id.encode()
        if event.event_id in seen:
            assert seen[event.event_id] == value  # a duplicate is the same event
            dupes += 1
            continue
        seen[event.event_id] = value
        kind = "review" if isinstance(event, ReviewEvent) else "rating"
        joined.setdefault((event.user_id, event.item_id), set()).add(kind)
    return {"reasons": reasons, "joined": joined, "dupes": dupes, "events": seen}


@pytest.fixture(scope="module")
def faulty_plan() -> EventPlan:
    return plan_events(
        make_interactions(),
        seed=3,
        review_only=0.2,
        rating_only=0.1,
        duplicate=0.05,
        malformed=0.03,
        max_delay=40,
    )


def test_ground_truth_matches_what_a_consumer_sees(faulty_plan: EventPlan) -> None:
    truth = faulty_plan.truth
    got = consume(faulty_plan)
    joined = got["joined"]
    assert truth.interactions == len(joined) == 5_000
    assert truth.per_user == Counter(u for u, _ in joined)
    assert truth.per_item == Counter(i for _, i in joined)
    assert truth.malformed_reasons == dict(got["reasons"])
    assert truth.malformed == sum(got["reasons"].values())
    assert truth.duplicates == got["dupes"]
    kinds = Counter(frozenset(k) for k in joined.values())
    assert kinds[frozenset({"review", "rating"})] == truth.both
    assert kinds[frozenset({"review"})] == truth.review_only
    assert kinds[frozenset({"rating"})] == truth.rating_only
    assert truth.review_events == truth.both + truth.review_only
    assert truth.rating_events == truth.both + truth.rating_only
    assert truth.events == len(faulty_plan.events)
    assert orjson.loads(truth.to_json())["interactions"] == 5_000


def test_shares_are_approximately_right(faulty_plan: EventPlan) -> None:
    truth = faulty_plan.truth
    valid = truth.review_events + truth.rating_events
    # 100 of the 5,000 rows have one modality only (forced), 4,900 draw their split
    assert truth.review_only == pytest.approx(50 + 0.2 * 4_900, rel=0.12)
    assert truth.rating_only == pytest.approx(50 + 0.1 * 4_900, rel=0.15)
    assert truth.duplicates == pytest.approx(0.05 * valid, rel=0.2)
    assert truth.malformed == pytest.approx(0.03 * valid, rel=0.2)
    assert len(truth.malformed_reasons) >= 10  # every kind, and several missing fields


def test_missing_modalities_force_the_kind() -> None:
    rows = [Interaction("u", "a", None, "text only", 1.0), Interaction("u", "b", 4.0, None, 2.0)]
    plan = plan_events(rows, rating_only=1.0)  # would drop every review it could
    topics = [topic for topic, _, _ in plan.events]
    assert topics == [REVIEWS_TOPIC, RATINGS_TOPIC]
    assert (plan.truth.review_only, plan.truth.rating_only, plan.truth.both) == (1, 1, 0)


def test_repeats_and_empty_rows_are_skipped() -> None:
    rows = [
        Interaction("u", "a", 4.0, "good", 1.0),
        Interaction("u", "a", 1.0, "changed my mind", 2.0),
        Interaction("u", "b", None, "   ", 3.0),
    ]
    truth = plan_events(rows).truth
    assert (truth.interactions, truth.skipped_repeats, truth.skipped_empty) == (1, 1, 1)


def test_ids_are_stripped_like_the_consumer_does() -> None:
    plan = plan_events([Interaction(" u1 ", "i1\t", 3.0, "fine", 1.0)])
    assert plan.truth.per_user == {"u1": 1} and plan.truth.per_item == {"i1": 1}
    assert set(consume(plan)["joined"]) == {("u1", "i1")}
    assert {key for _, key, _ in plan.events} == {b"u1"}


def test_deterministic_by_seed() -> None:
    rows = make_interactions(1_000)
    kwargs: dict[str, Any] = {
        "review_only": 0.2,
        "rating_only": 0.2,
        "duplicate": 0.1,
        "malformed": 0.1,
        "max_delay": 20,
    }
    first = interactions_to_events(rows, seed=7, **kwargs)
    assert first == interactions_to_events(rows, seed=7, **kwargs)
    assert first != interactions_to_events(rows, seed=8, **kwargs)


def test_event_ids_are_deterministic_and_per_kind() -> None:
    assert event_id_for("u", "i", "review") == event_id_for("u", "i", "review")
    assert event_id_for("u", "i", "review") != event_id_for("u", "i", "rating")
    assert event_id_for("u", "i", "review") != event_id_for("u", "j", "review")
    # the separator keeps ("ab", "c") and ("a", "bc") apart
    assert event_id_for("ab", "c", "rating") != event_id_for("a", "bc", "rating")


def positions_of_halves(plan: EventPlan) -> list[tuple[int, int]]:
    """(position of review, position of rating) of each interaction's first copies."""
    first: dict[tuple[str, str, str], int] = {}
    for pos, (topic, _, value) in enumerate(plan.events):
        try:
            event = validate(topic, value)
        except InvalidEvent:
            continue
        first.setdefault((event.user_id, event.item_id, topic), pos)
    pairs = []
    for (user, item, topic), pos in first.items():
        if topic == REVIEWS_TOPIC and (user, item, RATINGS_TOPIC) in first:
            pairs.append((pos, first[(user, item, RATINGS_TOPIC)]))
    return pairs


def test_halves_come_in_both_orders_within_max_delay(faulty_plan: EventPlan) -> None:
    pairs = positions_of_halves(faulty_plan)
    assert len(pairs) == faulty_plan.truth.both
    gaps = [rat - rev for rev, rat in pairs]
    assert all(1 <= abs(gap) <= 40 for gap in gaps)
    assert sum(gap < 0 for gap in gaps) > 0.4 * len(gaps)  # rating first
    assert sum(gap > 0 for gap in gaps) > 0.4 * len(gaps)  # review first
    assert max(abs(gap) for gap in gaps) > 20  # the delay is used, not just adjacency


def test_no_delay_means_review_then_rating_adjacent() -> None:
    plan = plan_events(make_interactions(500), max_delay=0, duplicate=0.2, malformed=0.2)
    assert all(rat - rev == 1 for rev, rat in positions_of_halves(plan))


def test_duplicates_share_event_id_and_follow_the_original(faulty_plan: EventPlan) -> None:
    positions: dict[str, list[int]] = {}
    for pos, (topic, _, value) in enumerate(faulty_plan.events):
        try:
            event = validate(topic, value)
        except InvalidEvent:
            continue
        positions.setdefault(event.event_id, []).append(pos)
    repeated = {eid: pos for eid, pos in positions.items() if len(pos) > 1}
    assert sum(len(p) - 1 for p in repeated.values()) == faulty_plan.truth.duplicates > 0
    assert {eid.split("-")[0] for eid in repeated} == {"review", "rating"}


def test_malformed_events_never_reuse_a_valid_event_id(faulty_plan: EventPlan) -> None:
    valid = set(consume(faulty_plan)["events"])
    for _, _, value in faulty_plan.events:
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict) and str(obj.get("event_id", "")).startswith("bad-"):
            assert obj["event_id"] not in valid


def test_long_text_is_cut_so_the_review_stays_valid() -> None:
    plan = plan_events([Interaction("u", "i", 3.0, "y" * 25_000, 1.0)])
    assert consume(plan)["reasons"] == Counter()
    assert plan.truth.both == 1


def test_invalid_arguments_and_rows_are_refused() -> None:
    rows = make_interactions(10)
    with pytest.raises(ValueError, match="at most 1"):
        plan_events(rows, review_only=0.6, rating_only=0.6)
    with pytest.raises(ValueError, match="duplicate"):
        plan_events(rows, duplicate=1.5)
    with pytest.raises(ValueError, match="max_delay"):
        plan_events(rows, max_delay=-1)
    with pytest.raises(ValueError, match=r"outside 1\.\.5"):
        plan_events([Interaction("u", "i", 7.0, None, 1.0)])
    with pytest.raises(ValueError, match="seconds"):
        plan_events([Interaction("u", "i", 3.0, None, 1.6e12)])


def test_bootstrap_servers() -> None:
    assert bootstrap_servers("kafka://localhost:9092") == ["localhost:9092"]
    assert bootstrap_servers("kafka://a:1;kafka://b:2") == ["a:1", "b:2"]
    assert bootstrap_servers("a:1,b:2") == ["a:1", "b:2"]
    with pytest.raises(ValueError):
        bootstrap_servers("kafka://")


def test_produce_subcommand_parses() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="drex")
    register(parser.add_subparsers(dest="command", required=True))
    argv = "produce --dataset sample --broker kafka://h:1 --rate 100 --review-only 0.2"
    argv += " --rating-only 0.2 --duplicate 0.05 --malformed 0.02 --max-delay 50 --seed 1"
    args = parser.parse_args([*argv.split(), "--limit", "10"])
    assert (args.dataset, args.broker, args.rate, args.max_delay, args.limit) == (
        "sample",
        "kafka://h:1",
        100.0,
        50,
        10,
    )
    assert callable(args.func)


# --- the published schema agrees with the validators ------------------------------------


def test_json_schema_accepts_what_the_validators_accept() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = orjson.loads((DOCS / "events.schema.json").read_bytes())
    jsonschema.Draft202012Validator.check_schema(schema)
    checker = jsonschema.Draft202012Validator(schema)
    for raw in (
        review(),
        rating(),
        review(user_id=42),
        rating(rating=2.5),
        review(extra=1),
        review(user_id="u" * 256, text="tab\tand\x1fcontrol characters are fine in text"),
    ):
        assert not list(checker.iter_errors(orjson.loads(raw))), raw
    for raw in (
        review(schema=2),
        review(text=""),
        review(user_id=""),
        rating(rating=9),
        rating(rating="4"),
        review(event_time="2014-05-01"),
        review(event_time=1_500_000_000_000),
        rating(text="both kinds at once"),
        review(user_id="u" * 257),
        review(item_id="b\x1fc"),
        rating(event_id="x\x9fy"),
    ):
        assert list(checker.iter_errors(orjson.loads(raw))), raw
