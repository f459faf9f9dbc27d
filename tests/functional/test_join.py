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

from streams.agents.join import (
    BOTH,
    DUPLICATE,
    EXPIRED,
    LATE,
    RATING_ONLY,
    REVIEW_ONLY,
    SUPERSEDED,
    TICKS_TOPIC,
    Joiner,
    JoinStep,
    interaction_id,
    register,
)
from streams.events import (
    RATINGS_TOPIC,
    REVIEWS_TOPIC,
    InteractionEvent,
    encode_rating,
    encode_review,
    parse_dead_letter,
)
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


# --- the faust agent -------------------------------------------------------------------


async def put(agent: Any, topic: str, value: bytes, partition: int = 0) -> None:
    """Deliver one message as if it came from ``topic`` and wait until it is processed."""
    channel = agent.stream().channel
    message = Message(
        topic=topic,
        partition=partition,
        offset=agent.sent_offset,
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
    wiring = register(app, settings, interactions=interactions, dead_letters=dead)
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
        # the buffer table holds the emitted row (tombstone), the waiting review and the
        # three event ids seen
        assert len(list(wiring.table.keys())) == 5
        wiring.joiner.idle_after = 0.0  # no records pending: the wall clock decides
        wiring.joiner.window = 0.001
        wiring.joiner.forget()
        await asyncio.sleep(0.01)  # past the shortened window
        await put(agent, TICKS_TOPIC, b"")  # re-indexes the partition, then expires
        alone = InteractionEvent.loads((await interactions_out.get(timeout=1)).value)
        assert (alone.item_id, alone.rating, alone.text) == ("pick", None, "warm")
