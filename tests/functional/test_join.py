"""The review/rating join: the pure Joiner, then the faust agent via agent.test_context()."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import faust
import orjson
import pytest
from faust.types import Message

from streams import metrics
from streams.agents.join import (
    BOTH,
    DUPLICATE,
    EXPIRED,
    LATE,
    RATING_ONLY,
    REPLAYED,
    REVIEW_ONLY,
    SUPERSEDED,
    TICKS_TOPIC,
    Joiner,
    JoinStep,
    id_key,
    register,
    row_key,
)
from streams.events import (
    DEFAULT_MAX_TEXT_CHARS,
    INTERACTIONS_TOPIC,
    MAX_ID_CHARS,
    RATINGS_TOPIC,
    REVIEWS_TOPIC,
    InteractionEvent,
    encode_rating,
    encode_review,
    interaction_id,
    learned_keys,
    parse_dead_letter,
    without_applied,
)
from streams.join_state import JoinState, MemoryChangelog, encode_records
from streams.settings import WorkerSettings

WINDOW = 2.0


def review(eid: str = "r1", user: str = "ann", item: str = "amp", text: str = "warm") -> bytes:
    return encode_review(eid, user, item, 100.0, text)


def rating(eid: str = "s1", user: str = "ann", item: str = "amp", value: float = 4.0) -> bytes:
    return encode_rating(eid, user, item, 101.0, value)


class Harness:
    """A Joiner over a dict, applying each step as the agent does."""

    def __init__(self, store: dict[bytes, bytes] | None = None, **kwargs: Any) -> None:
        self.store: dict[bytes, bytes] = {} if store is None else store
        self.joiner = Joiner(self.store, WINDOW, **kwargs)
        self.emitted: list[InteractionEvent] = []
        self.outcomes: dict[str, int] = {}
        self.dead: list[bytes] = []

    def _take(self, step: JoinStep) -> JoinStep:
        self.joiner.apply(step)
        self.emitted += [e.event for e in step.emits]
        for k, v in step.outcomes.items():
            self.outcomes[k] = self.outcomes.get(k, 0) + v
        self.dead += [letter for _, letter in step.dead_letters]
        return step

    def send(self, topic: str, raw: bytes, ts: float, now: float | None = None) -> JoinStep:
        now = ts if now is None else now
        return self._take(self.joiner.on_message(topic, 0, raw, ts, now))

    def tick(self, now: float) -> JoinStep:
        return self._take(self.joiner.on_tick(0, now))


@pytest.mark.parametrize("first", ["review", "rating"])
def test_both_orders_make_one_interaction(first: str) -> None:
    h = Harness()
    parts = [(REVIEWS_TOPIC, review()), (RATINGS_TOPIC, rating())]
    if first == "rating":
        parts.reverse()
    assert not h.send(*parts[0], ts=10.0).emits
    h.send(*parts[1], ts=10.5)
    [event] = h.emitted
    assert (event.user_id, event.item_id, event.rating, event.text) == ("ann", "amp", 4.0, "warm")
    assert event.event_time == 101.0
    assert interaction_id(event) == '["ann","amp","r1","s1"]'
    assert h.outcomes == {BOTH: 1}
    assert h.joiner.pending() == 0 or not h.tick(100.0).emits  # nothing left to expire


def test_duplicates_are_dropped_before_and_after_emission() -> None:
    h = Harness()
    h.send(REVIEWS_TOPIC, review(), ts=10.0)
    h.send(REVIEWS_TOPIC, review(), ts=10.1)  # resend while waiting
    h.send(RATINGS_TOPIC, rating(), ts=10.2)
    h.send(RATINGS_TOPIC, rating(), ts=10.3)  # resend after emission
    h.send(REVIEWS_TOPIC, review(), ts=10.4)
    assert len(h.emitted) == 1
    assert h.outcomes == {BOTH: 1, DUPLICATE: 3}


def test_a_lone_half_expires_after_the_window_then_a_late_partner_goes_alone() -> None:
    h = Harness()
    h.send(REVIEWS_TOPIC, review(), ts=10.0)
    assert not h.tick(now=10.0 + WINDOW / 2).emits
    # idle partition: the wall clock times the window
    [expired] = h.tick(now=10.0 + 2 * WINDOW + 0.1).emits
    assert expired.outcomes == (REVIEW_ONLY, EXPIRED)
    assert (expired.event.text, expired.event.rating) == ("warm", None)
    [late] = h.send(RATINGS_TOPIC, rating(), ts=30.0).emits
    assert late.outcomes == (RATING_ONLY, LATE)
    assert interaction_id(late.event) == '["ann","amp",null,"s1"]'
    h.send(RATINGS_TOPIC, rating(), ts=31.0)
    assert len(h.emitted) == 2 and h.outcomes[DUPLICATE] == 1


def test_the_clock_follows_records_after_a_restart_with_a_backlog() -> None:
    """A restored half whose partner is still in the backlog must not expire, however
    long the worker was down: until records flow, the partition's clock does not move."""
    first = Harness()
    first.send(REVIEWS_TOPIC, review(), ts=10.0)
    restarted = Harness(store=first.store)  # same table, fresh process
    assert not restarted.tick(now=500.0).emits  # just started: not idle yet
    # the backlog: the other topic delivers records from before the crash
    restarted.send(REVIEWS_TOPIC, review("r2", user="bob"), ts=10.2, now=500.1)
    assert not restarted.tick(now=500.2).emits  # ratings has delivered nothing: clock -inf
    restarted.send(RATINGS_TOPIC, rating(), ts=10.3, now=500.3)
    [joined] = restarted.emitted
    assert joined.rating == 4.0 and joined.text == "warm"


def test_one_topic_running_ahead_does_not_expire_the_other_topics_halves() -> None:
    h = Harness()
    h.send(RATINGS_TOPIC, rating(), ts=10.0, now=10.0)
    h.send(REVIEWS_TOPIC, review("r9", user="bob"), ts=10.0, now=10.0)
    # reviews runs far ahead while ratings is still busy (delivered a record recently)
    h.send(REVIEWS_TOPIC, review("r3", user="cy"), ts=50.0, now=10.5)
    assert h.joiner.clock(0, 10.6) == 10.0
    assert not h.tick(now=10.6).emits
    h.send(REVIEWS_TOPIC, review(), ts=50.1, now=10.7)
    assert [e.rating for e in h.emitted] == [4.0]


def test_a_new_half_of_the_same_kind_supersedes_the_waiting_one() -> None:
    h = Harness()
    h.send(REVIEWS_TOPIC, review("r1", text="first"), ts=10.0)
    [gone] = h.send(REVIEWS_TOPIC, review("r2", text="second"), ts=10.5).emits
    assert gone.outcomes == (REVIEW_ONLY, SUPERSEDED) and gone.event.text == "first"
    h.send(RATINGS_TOPIC, rating(), ts=11.0)
    assert h.emitted[-1].text == "second" and h.emitted[-1].rating == 4.0


def test_malformed_messages_become_dead_letters_and_change_nothing() -> None:
    h = Harness()
    h.send(RATINGS_TOPIC, b'{"schema": 1, "event_id": ', ts=10.0)
    bad = orjson.loads(rating())
    bad["rating"] = 9
    h.send(RATINGS_TOPIC, orjson.dumps(bad), ts=10.1)
    reasons = [parse_dead_letter(d).reason for d in h.dead]
    assert reasons == ["invalid_json", "rating_out_of_range"]
    assert parse_dead_letter(h.dead[1]).topic == RATINGS_TOPIC
    assert h.store == {} and not h.emitted


def test_tombstones_are_purged_after_the_retention() -> None:
    h = Harness(retention=60.0)
    h.send(REVIEWS_TOPIC, review(), ts=10.0)
    h.send(RATINGS_TOPIC, rating(), ts=10.5)
    assert len(h.store) == 3  # the tombstone and the two event ids
    h.tick(now=40.0)
    assert len(h.store) == 3
    h.tick(now=71.0)
    assert h.store == {}


def test_a_rebuilt_joiner_finds_waiting_rows_in_the_store() -> None:
    first = Harness()
    first.send(REVIEWS_TOPIC, review(), ts=10.0)
    again = Harness(store=first.store)
    again.tick(now=100.0)  # first sight: the partition is not idle yet
    [expired] = again.tick(now=100.0 + WINDOW + 0.1).emits
    assert expired.outcomes == (REVIEW_ONLY, EXPIRED)


# --- keys, duplicates, re-ratings, bounded rows, failures (issue 17) ---------------------


def test_keys_are_unambiguous_whatever_the_ids_contain() -> None:
    """Ids stored before the contract refused control characters still get keys of their
    own: the old separator-joined keys made these pairs one row and one interaction."""
    assert row_key("a", "b\x1fc") != row_key("a\x1fb", "c")
    assert row_key("a", "b") != id_key(0, "b") and id_key(0, "e") != id_key(1, "e")
    first = InteractionEvent(
        user_id="a", item_id="b", rating=None, text="t", event_time=1.0, review_event_id="c\x1fd"
    )
    second = InteractionEvent(
        user_id="a", item_id="b\x1fc", rating=None, text="t", event_time=1.0, review_event_id="d"
    )
    assert interaction_id(first) != interaction_id(second)
    assert learned_keys(first) != learned_keys(second)


def test_ids_with_control_characters_or_over_the_limit_are_dead_letters() -> None:
    h = Harness()
    h.send(REVIEWS_TOPIC, review(item="b\x1fc"), ts=10.0)
    h.send(RATINGS_TOPIC, rating(user="ann\x1fb", item="c"), ts=10.1)
    h.send(RATINGS_TOPIC, rating(eid="s" * (MAX_ID_CHARS + 1)), ts=10.2)
    h.send(RATINGS_TOPIC, rating(user="u" * 400_000, item="i" * 400_000), ts=10.3)
    reasons = [parse_dead_letter(d).reason for d in h.dead]
    assert reasons == [
        "bad_id_characters:item_id",
        "bad_id_characters:user_id",
        "id_too_long:event_id",
        "id_too_long:user_id",
    ]
    assert h.store == {} and not h.emitted


def test_an_event_id_is_one_event_whatever_the_second_message_contains() -> None:
    h = Harness()
    h.send(RATINGS_TOPIC, rating("x1", item="amp", value=4.0), ts=10.0)
    h.send(RATINGS_TOPIC, rating("x1", item="pick", value=1.0), ts=10.1)  # another item
    h.send(REVIEWS_TOPIC, review("x1", item="amp"), ts=10.2)  # another kind
    h.send(RATINGS_TOPIC, rating("x1", user="bob", value=2.0), ts=10.3)  # another user
    h.tick(now=10.0 + 2 * WINDOW + 1)
    [alone] = h.emitted
    assert (alone.user_id, alone.item_id, alone.rating) == ("ann", "amp", 4.0)
    assert h.outcomes[DUPLICATE] == 3
    # also after the interaction went out, until the retention has passed
    h.send(RATINGS_TOPIC, rating("x1", item="drum"), ts=20.0)
    assert len(h.emitted) == 1 and h.outcomes[DUPLICATE] == 4


def test_a_re_rating_of_a_used_pair_is_a_new_interaction() -> None:
    h = Harness()
    h.send(REVIEWS_TOPIC, review(), ts=10.0)
    h.send(RATINGS_TOPIC, rating("s1", value=4.0), ts=10.5)
    h.send(RATINGS_TOPIC, rating("s2", value=2.0), ts=30.0)  # the user changed their mind
    h.tick(now=30.0 + 2 * WINDOW + 1)
    assert [(e.text, e.rating) for e in h.emitted] == [("warm", 4.0), (None, 2.0)]
    assert [e.rating_event_id for e in h.emitted] == ["s1", "s2"]


def test_a_pair_s_row_stays_small_however_many_events_it_gets() -> None:
    """150 events with the longest ids for one pair: the row holds no list of ids."""
    h = Harness()
    long_text = "\x01" * DEFAULT_MAX_TEXT_CHARS  # escapes to 6 bytes each in JSON
    for n in range(150):
        eid = f"{n:03d}".ljust(MAX_ID_CHARS, "e")
        user, item = "u" * MAX_ID_CHARS, "i" * MAX_ID_CHARS
        if n % 2:
            h.send(RATINGS_TOPIC, rating(eid, user=user, item=item), ts=10.0 + n / 100)
        else:
            h.send(REVIEWS_TOPIC, review(eid, user=user, item=item, text=long_text), ts=10.0)
    assert len(h.emitted) == 150 // 2
    biggest = max(len(k) + len(v) for k, v in h.store.items())
    assert biggest < 200_000  # far below Kafka's 1 MB, whatever the history


def test_without_applied_keeps_only_the_halves_not_learned_yet() -> None:
    both = InteractionEvent(
        user_id="u",
        item_id="i",
        rating=4.0,
        text="t",
        event_time=1.0,
        review_event_id="r",
        rating_event_id="s",
    )
    assert without_applied(both, set()) is both
    assert without_applied(both, {"r", "s"}) is None
    rest = without_applied(both, {"r"})
    assert rest is not None
    assert (rest.text, rest.review_event_id, rest.rating, rest.rating_event_id) == (
        None,
        None,
        4.0,
        "s",
    )
    assert learned_keys(both) == ["r", "s"]


def test_a_message_whose_join_fails_costs_only_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure midway through one message's join leaves no trace of it in the step; the
    messages around it in the same batch are joined as if it had not come."""
    h = Harness()
    joiner = h.joiner
    original = Joiner._join

    def flaky(self: Joiner, step: JoinStep, partition: int, event: Any, ts: float) -> None:
        original(self, step, partition, event, ts)  # writes the rows, then fails
        if event.event_id == "poison":
            raise RuntimeError("boom")

    monkeypatch.setattr(Joiner, "_join", flaky)
    step = JoinStep()
    joiner.on_message(REVIEWS_TOPIC, 0, review(), 10.0, 10.0, step=step, expire=False)
    joiner.on_message(RATINGS_TOPIC, 0, rating("poison"), 10.1, 10.1, step=step, expire=False)
    joiner.on_message(RATINGS_TOPIC, 0, rating("s1"), 10.2, 10.2, step=step, expire=False)
    h._take(step)
    [joined] = h.emitted
    assert (joined.review_event_id, joined.rating_event_id) == ("r1", "s1")
    [letter] = [parse_dead_letter(d) for d in h.dead]
    assert (letter.reason, letter.topic) == ("processing_error", RATINGS_TOPIC)
    assert "poison" in letter.raw and "boom" in letter.message
    assert id_key(0, "poison") not in h.store  # the failed message left nothing behind


def test_an_unreadable_row_goes_to_dead_letters_and_the_partition_goes_on() -> None:
    h = Harness()
    h.send(REVIEWS_TOPIC, review(), ts=10.0)
    h.store[row_key("ann", "amp")] = b'{"p": 0, "since": 10.0'  # corrupted
    h.send(REVIEWS_TOPIC, review("r2", item="pick"), ts=10.1)
    h.tick(now=10.0 + 2 * WINDOW + 1)
    assert [parse_dead_letter(d).topic for d in h.dead] == ["join-buffer"]
    assert [e.item_id for e in h.emitted] == ["pick"]
    assert row_key("ann", "amp") not in h.store


# --- the faust agent -------------------------------------------------------------------


async def put(
    agent: Any, topic: str, value: bytes, partition: int = 0, offset: int | None = None
) -> None:
    """Deliver one message as if it came from ``topic`` and wait until it is processed."""
    channel = agent.stream().channel
    message = Message(
        topic=topic,
        partition=partition,
        offset=agent.sent_offset if offset is None else offset,
        timestamp=time.time(),
        timestamp_type=0,
        headers=None,
        key=b"ann",
        value=value,
        checksum=b"",
        serialized_key_size=3,
        serialized_value_size=len(value),
        generation_id=agent.app.consumer_generation_id,  # older ones are dropped
    )
    agent.sent_offset += 1
    await channel.put(await channel.decode(message))
    async with agent.new_value_processed:
        await agent.new_value_processed.wait()


@pytest.mark.asyncio
async def test_the_agent_joins_and_dead_letters_through_faust(tmp_path: Path) -> None:
    app = faust.App("drex-join-test", store="memory://", datadir=str(tmp_path), web_enabled=False)
    settings = WorkerSettings(partitions=1, join_window=WINDOW)
    interactions, dead = app.channel(), app.channel()
    state = JoinState(tmp_path / "join-state", MemoryChangelog())
    wiring = register(app, settings, interactions=interactions, dead_letters=dead, state=state)
    # a channel delivers to its subscribers: subscribe before anything is sent
    interactions_out, dead_out = interactions.__aiter__(), dead.__aiter__()
    async with wiring.agent.test_context() as agent:
        await put(agent, REVIEWS_TOPIC, review())
        await put(agent, RATINGS_TOPIC, b"not json")
        await put(agent, RATINGS_TOPIC, rating())
        await put(agent, REVIEWS_TOPIC, review())  # duplicate
        await put(agent, REVIEWS_TOPIC, review("r7", item="pick"))
        await put(agent, TICKS_TOPIC, b"")  # not expired yet
        joined = InteractionEvent.loads((await interactions_out.get(timeout=1)).value)
        assert interaction_id(joined) == '["ann","amp","r1","s1"]'
        letter = parse_dead_letter((await dead_out.get(timeout=1)).value)
        assert (letter.topic, letter.reason, letter.raw) == (
            RATINGS_TOPIC,
            "invalid_json",
            "not json",
        )
        assert interactions_out.empty()
        # the join's state holds the emitted row (tombstone), the waiting review and the
        # three event ids seen, once the last step committed (after its sends)
        await _eventually(lambda: len(wiring.state.rows(0)) == 5)
        wiring.joiner.idle_after = 0.0  # no records pending: the wall clock decides
        wiring.joiner.window = 0.001
        wiring.joiner.forget()
        await asyncio.sleep(0.01)  # past the shortened window
        await put(agent, TICKS_TOPIC, b"")  # re-indexes the partition, then expires
        alone = InteractionEvent.loads((await interactions_out.get(timeout=1)).value)
        assert (alone.item_id, alone.rating, alone.text) == ("pick", None, "warm")


@pytest.mark.asyncio
async def test_the_agent_catches_up_from_the_changelog_and_drops_what_was_applied(
    tmp_path: Path,
) -> None:
    """A partition comes to this worker: before its first message the store is caught up
    from the changelog another worker wrote (a waiting review, the offsets it applied);
    a message below those offsets is dropped as replayed when its event id is in the
    rows, and joined when it is not (its topic started again: nothing new is lost)."""
    log = MemoryChangelog()
    other = Harness()  # the other worker's rows
    other.send(REVIEWS_TOPIC, review(), ts=time.time())
    await log.append(0, encode_records(other.store, {REVIEWS_TOPIC: 10}))
    app = faust.App("drex-join-move", store="memory://", datadir=str(tmp_path), web_enabled=False)
    settings = WorkerSettings(partitions=1, join_window=WINDOW)
    interactions, dead = app.channel(), app.channel()
    state = JoinState(tmp_path / "join-state", log)
    wiring = register(app, settings, interactions=interactions, dead_letters=dead, state=state)
    interactions_out = interactions.__aiter__()
    resets = metrics.SOURCE_RESETS.labels("join")
    resets_before, replayed_before = resets._value.get(), _outcome(REPLAYED)
    async with wiring.agent.test_context() as agent:
        await put(agent, REVIEWS_TOPIC, review(), offset=9)  # applied there
        await _eventually(lambda: _outcome(REPLAYED) == replayed_before + 1)
        assert resets._value.get() == resets_before
        await put(agent, REVIEWS_TOPIC, review("r0", item="old"), offset=8)  # a new topic's
        await _eventually(lambda: state.changelog_offset(0) == 1)
        assert resets._value.get() == resets_before + 1
        assert state.next_offset(REVIEWS_TOPIC, 0) == 9  # the offsets follow the new topic
        assert state.rows(0).get(row_key("ann", "old")) is not None  # waiting, not dropped
        await put(agent, RATINGS_TOPIC, rating(), offset=0)
        joined = InteractionEvent.loads((await interactions_out.get(timeout=1)).value)
        assert interaction_id(joined) == '["ann","amp","r1","s1"]'
        assert interactions_out.empty()
        await _eventually(lambda: state.changelog_offset(0) == 2)
        assert state.next_offset(RATINGS_TOPIC, 0) == 1
        assert len(log.partitions[0]) == 3  # its record, then one per step that wrote


async def _eventually(done: Any) -> None:
    """Wait until ``done()``: a step commits after its interactions went out."""
    for _ in range(100):
        if done():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not reached in 1 s")


def _outcome(outcome: str) -> float:
    return float(metrics.JOIN_OUTCOMES.labels(outcome)._value.get())


class Refusing:
    """An ``interactions`` topic whose broker refuses one interaction (as Kafka refuses a
    message over its size limit) and takes the others."""

    def __init__(self, channel: Any, refuse: str) -> None:
        self.channel, self.refuse = channel, refuse

    async def send(self, key: bytes, value: bytes) -> Any:
        if self.refuse.encode() in value:
            raise RuntimeError("MessageSizeTooLargeError: the message is too large")
        return await self.channel.send(key=key, value=value)


@pytest.mark.asyncio
async def test_an_interaction_the_broker_refuses_is_a_dead_letter_and_the_batch_goes_on(
    tmp_path: Path,
) -> None:
    app = faust.App("drex-join-refuse", store="memory://", datadir=str(tmp_path), web_enabled=False)
    settings = WorkerSettings(partitions=1, join_window=WINDOW)
    interactions, dead = app.channel(), app.channel()
    wiring = register(
        app,
        settings,
        interactions=Refusing(interactions, "s-poison"),
        dead_letters=dead,
        state=JoinState(tmp_path / "join-state", MemoryChangelog()),
    )
    interactions_out, dead_out = interactions.__aiter__(), dead.__aiter__()
    async with wiring.agent.test_context() as agent:
        await put(agent, REVIEWS_TOPIC, review())
        await put(agent, RATINGS_TOPIC, rating("s-poison"))
        await put(agent, REVIEWS_TOPIC, review("r2", item="pick"))
        await put(agent, RATINGS_TOPIC, rating("s2", item="pick"))
        letter = parse_dead_letter((await dead_out.get(timeout=1)).value)
        assert (letter.topic, letter.reason) == (INTERACTIONS_TOPIC, "processing_error")
        refused = InteractionEvent.loads(letter.raw.encode())  # replayable as it is
        assert (refused.review_event_id, refused.rating_event_id) == ("r1", "s-poison")
        joined = InteractionEvent.loads((await interactions_out.get(timeout=1)).value)
        assert (joined.item_id, joined.review_event_id, joined.rating_event_id) == (
            "pick",
            "r2",
            "s2",
        )


def test_an_items_categories_travel_with_the_half_that_gave_them() -> None:
    def tagged(raw: bytes, categories: list[str]) -> bytes:
        return orjson.dumps({**orjson.loads(raw), "categories": categories})

    h = Harness()
    h.send(REVIEWS_TOPIC, tagged(review(), ["Amps"]), ts=10.0)
    h.send(RATINGS_TOPIC, rating(), ts=10.5)  # this half says nothing of them
    h.send(REVIEWS_TOPIC, review("r2", item="cab"), ts=11.0)
    h.send(RATINGS_TOPIC, tagged(rating("s2", item="cab"), ["Cabs"]), ts=11.5)
    h.send(RATINGS_TOPIC, rating("s3", item="pick"), ts=12.0)
    h.tick(100.0)  # the lone rating expires: no categories
    assert [(e.item_id, e.categories) for e in h.emitted] == [
        ("amp", ["Amps"]),
        ("cab", ["Cabs"]),
        ("pick", None),
    ]
    # the learner's copy of a half-applied interaction keeps them
    rest = without_applied(h.emitted[0], {"r1"})
    assert rest is not None and rest.categories == ["Amps"]
