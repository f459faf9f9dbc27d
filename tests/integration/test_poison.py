"""Issue 17 end to end: poison events, ids that used to collide, duplicate event ids and
re-ratings, against the real broker and one ``drex worker`` shared by the module.

Each test tags its ids with a fresh uuid and checks only what carries its tag, so the
tests share the worker (and its start-up time) without seeing each other's events.
"""

from __future__ import annotations

import contextlib
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from drex_store.learner import LearnerStore
from streams.broker import BrokerError, EmbeddedBroker, resolve_tansu_bin
from streams.events import (
    DEAD_LETTERS_TOPIC,
    INTERACTIONS_TOPIC,
    RATINGS_TOPIC,
    REVIEWS_TOPIC,
    DeadLetter,
    InteractionEvent,
    encode_rating,
    encode_review,
    interaction_records,
    parse_dead_letter,
    read_interactions,
)
from tests.integration.harness import Worker, read_topic, send, wait_until

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0


@dataclass
class Running:
    """A broker and a worker of the module's own, and a follower of the learner store."""

    broker: EmbeddedBroker
    worker: Worker
    learner_dir: Path
    follower_dir: Path
    follower: LearnerStore | None = None

    def store(self) -> LearnerStore:
        """A read-only follower of the worker's learner store, caught up."""
        if self.follower is None:
            self.follower_dir.mkdir(parents=True, exist_ok=True)
            self.follower = LearnerStore.open_secondary(self.learner_dir, self.follower_dir)
        self.follower.catch_up()
        return self.follower

    def applied(self, ids: Iterable[str]) -> set[str]:
        return self.store().applied(list(ids))

    def counts(self, side: str) -> dict[str, int]:
        return self.store().counts(side)

    def wait_learned(self, users: dict[str, int], timeout: float = 120) -> None:
        """Until the learner store counts at least these interactions for these users."""

        def done() -> bool:
            counts = self.counts("users")
            return all(counts.get(u, 0) >= n for u, n in users.items())

        wait_until(done, timeout, f"interactions of {len(users)} users", self.worker)

    def letters(self, tag: str) -> list[DeadLetter]:
        """The dead letters of this test's events."""
        out = [parse_dead_letter(v) for _, v in read_topic(self.broker, DEAD_LETTERS_TOPIC)]
        return [d for d in out if tag in d.raw]

    def interactions(self) -> list[tuple[int, InteractionEvent]]:
        """Every interaction on ``interactions`` in order, with its record's offset (one
        partition: a record's index is its offset; a record may hold several). A record
        that is not interactions is left out, as the learner leaves it to dead-letters."""
        out: list[tuple[int, InteractionEvent]] = []
        for offset, (_, value) in enumerate(read_topic(self.broker, INTERACTIONS_TOPIC)):
            with contextlib.suppress(ValueError, TypeError):
                out += ((offset, e) for e in read_interactions(value))
        return out

    def wait_learned_up_to(self, offset: int, timeout: float = 60) -> None:
        wait_until(
            lambda: self.worker.metric("drex_learner_offset") >= offset,
            timeout,
            f"the learner at offset {offset}",
            self.worker,
        )


def start_worker(tmp: Path, encoder: Path, log_name: str) -> Iterator[Running]:
    """A fresh broker and worker (the worker's topic names are fixed); the worker must
    still be alive at the end and stop cleanly."""
    try:
        binary = resolve_tansu_bin()
    except BrokerError as exc:
        pytest.skip(f"no Tansu broker binary ({exc})")
    with EmbeddedBroker(log_dir=tmp / "tansu", binary=binary) as broker:
        state = tmp / "state"
        worker = Worker(broker, encoder, state, tmp / log_name)
        try:
            wait_until(
                lambda: worker.metric("drex_owns_learner") == 1 and (state / "learner").exists(),
                120,
                "the worker to hold the learner",
                worker,
            )
            running = Running(broker, worker, state / "learner", tmp / "follower")
            try:
                yield running
            finally:
                if running.follower is not None:
                    running.follower.close()
            assert worker.alive(), worker.log_tail()
        finally:
            code = worker.stop() if worker.alive() else worker.proc.returncode
        assert code == 0, worker.log_tail()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_dir: Path) -> Iterator[Running]:
    yield from start_worker(tmp_path_factory.mktemp("poison"), tiny_encoder_dir, "worker.log")


def rating(eid: str, user: str, item: str, value: float, key: str | None = None) -> tuple:
    key_bytes = (user if key is None else key).encode()
    return (RATINGS_TOPIC, key_bytes, encode_rating(eid, user, item, T0, value))


def review(eid: str, user: str, item: str, text: str, key: str | None = None) -> tuple:
    key_bytes = (user if key is None else key).encode()
    return (REVIEWS_TOPIC, key_bytes, encode_review(eid, user, item, T0, text))


def canaries(tag: str, n: int = 4) -> tuple[list[tuple], dict[str, int]]:
    """``n`` valid ratings of users of their own, and those users (one interaction each)."""
    users = {f"{tag}-cu{k}": 1 for k in range(n)}
    events = [rating(f"{tag}-canary-{k}", u, f"{tag}-ci{k}", 4.0) for k, u in enumerate(users)]
    return events, users


# --- item 1: a poison event --------------------------------------------------------------


def test_a_poison_event_costs_one_dead_letter_and_never_its_neighbours(running: Running) -> None:
    """A contract-valid-looking rating with 400 KB ids, and 150 events for one pair with
    10 KB event ids, used to make the join's row exceed Kafka's 1 MB limit: the worker
    exited and the valid events around them were lost. Now the ids are refused by the
    contract (id_too_long), a pair's row stays small however many events it gets, and
    the canaries sent right after are learned."""
    tag = uuid.uuid4().hex[:8]
    poison = rating(f"{tag}-poison", "u" * 400_000, "i" * 400_000, 5.0, key=f"{tag}-p")
    user, item = f"{tag}-pair-user", f"{tag}-pair-item"
    long_ids = [rating(f"{tag}-{k}-".ljust(10_000, "x"), user, item, 3.0) for k in range(150)]
    # the same pair, 150 events with ids at the limit: every one is a new rating
    at_limit = [f"{tag}-{k}-".ljust(256, "y") for k in range(150)]
    valid = [rating(i, user, item, 1.0 + k % 5) for k, i in enumerate(at_limit)]
    tail, canary_users = canaries(tag)
    send(running.broker, [poison, *long_ids, *valid, *tail])
    running.wait_learned({**canary_users, user: 150})
    assert running.worker.alive()
    reasons = Counter(d.reason for d in running.letters(tag))
    assert reasons == {"id_too_long:user_id": 1, "id_too_long:event_id": 150}
    assert running.counts("users")[user] == 150
    assert running.applied(at_limit) == set(at_limit)


def test_an_interactions_record_the_learner_cannot_read_costs_one_dead_letter(
    running: Running,
) -> None:
    """Between two records of rating-only interactions as the join writes them (16, then
    4), a record that is not interactions: it goes to ``dead-letters`` whole, and every
    interaction of the records around it is learned."""
    tag = uuid.uuid4().hex[:8]
    good = [
        InteractionEvent(
            user_id=f"{tag}-u{k}",
            item_id=f"{tag}-i{k}",
            rating=4.0,
            text=None,
            event_time=T0,
            rating_event_id=f"{tag}-r{k}",
        )
        for k in range(20)
    ]
    first, second = [value for _, _, value in interaction_records(good)]
    bad = b'[{"user_id": "' + tag.encode() + b'"}]'  # no item, no time
    send(running.broker, [(INTERACTIONS_TOPIC, b"k", v) for v in (first, bad, second)])
    running.wait_learned(dict.fromkeys((e.user_id for e in good), 1))
    letters = running.letters(tag)
    assert [(d.topic, d.reason, d.raw) for d in letters] == [
        (INTERACTIONS_TOPIC, "processing_error", bad.decode())
    ]
    assert running.worker.alive()


# --- item 5: ids that used to collide -----------------------------------------------------


def test_ids_with_the_old_key_separator_are_refused_not_credited_to_another_user(
    running: Running,
) -> None:
    """The join's row key was ``user \\x1f item`` and the learner's interaction id joined
    its parts with the same separator: review (a, b\\x1fc) and rating (a\\x1fb, c) became
    one interaction of user a, and two distinct interactions shared one id (the second
    was dropped as applied). Control characters are now refused in ids."""
    tag = uuid.uuid4().hex[:8]
    a = f"{tag}a"
    row_collision = [
        review(f"{tag}-r1", a, "b\x1fc", "a review of b-c by a"),
        rating(f"{tag}-s1", f"{a}\x1fb", "c", 1.0, key=a),
    ]
    id_collision = [  # old interaction ids: "a\x1fb\x1fc\x1fd\x1f" twice
        review(f"{tag}c\x1fd", f"{tag}x", "b", "first"),
        review(f"{tag}d", f"{tag}x", "b\x1fc", "second"),
    ]
    tail, canary_users = canaries(tag, 2)
    send(running.broker, [*row_collision, *id_collision, *tail])
    running.wait_learned(canary_users)
    reasons = Counter(d.reason for d in running.letters(tag))
    assert reasons == {
        "bad_id_characters:item_id": 2,
        "bad_id_characters:user_id": 1,
        "bad_id_characters:event_id": 1,
    }
    users = running.counts("users")
    assert not {u for u in users if u.startswith(tag)} - {f"{tag}-cu0", f"{tag}-cu1"}


# --- item 6: duplicate event ids and re-ratings ------------------------------------------


def test_an_event_id_is_learned_once_and_a_re_rating_is_learned_as_new(running: Running) -> None:
    """The same event id with another item, kind or user is a duplicate (the first copy
    counts), also when the other user is in another partition; a new rating of a pair
    already used, with a new event id, is a new interaction."""
    tag = uuid.uuid4().hex[:8]
    n = 8
    originals = [f"{tag}-d{k}" for k in range(n)]
    users = [f"{tag}-u{k}" for k in range(n)]
    items = [f"{tag}-i{k}" for k in range(n)]
    first = []
    for k, eid in enumerate(originals):
        first += [
            rating(eid, users[k], items[k], 5.0),
            rating(eid, users[k], f"{tag}-other-item{k}", 1.0),  # same user, another item
            review(eid, users[k], items[k], "the same id as a review"),  # another kind
        ]
    send(running.broker, first)
    running.wait_learned(dict.fromkeys(users, 1))
    re_ratings = [f"{tag}-again{k}" for k in range(n)]
    later = []
    for k, eid in enumerate(originals):
        later += [
            rating(eid, users[k], items[k], 5.0),  # an exact resend
            rating(eid, f"{tag}-other-user{k}", items[k], 2.0),  # another user (partition)
            rating(re_ratings[k], users[k], items[k], 1.0),  # a re-rating: new information
        ]
    duplicates = 'drex_join_outcomes_total{outcome="duplicate"}'
    before = running.worker.metric(duplicates)
    send(running.broker, later)
    running.wait_learned(dict.fromkeys(users, 2))

    # Every copy of the second round is either dropped by the join (the exact resends,
    # and another user's copy in the same partition) or goes out alone after the join
    # window (another user's copy in another partition): wait for all of them, then for
    # the learner to pass the last one.
    def others() -> list[int]:
        records = running.interactions()
        return [o for o, e in records if e.user_id.startswith(f"{tag}-other-user")]

    wait_until(
        lambda: running.worker.metric(duplicates) - before + len(others()) == 2 * n,
        60,
        "the join to handle every copy",
        running.worker,
    )
    running.wait_learned_up_to(max(others(), default=0))
    user_counts, item_counts = running.counts("users"), running.counts("items")
    assert {u: c for u, c in user_counts.items() if u.startswith(tag)} == dict.fromkeys(users, 2)
    assert {i: c for i, c in item_counts.items() if i.startswith(tag)} == dict.fromkeys(items, 2)
    # each id learned once, from the first copy on its topic (reviews and ratings are
    # two topics: which of a rating and a review with one id comes first is not defined)
    learned = [e for _, e in running.interactions() if e.user_id in set(users)]
    halves = Counter(i for e in learned for i in (e.review_event_id, e.rating_event_id) if i)
    assert halves == dict.fromkeys(originals + re_ratings, 1)
    assert {e.rating for e in learned if e.rating_event_id in set(originals)} <= {5.0}
    assert {e.rating for e in learned if e.rating_event_id in set(re_ratings)} == {1.0}
