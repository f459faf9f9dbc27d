"""A fuzzed stream of valid-but-extreme and invalid events through a real broker and a
``drex worker``, checked against a ground truth: nothing lost, nothing learned twice,
nothing credited to a user, an item or a value it did not come with, every invalid
message a dead letter with the contract's reason, and the worker never exits.

The truth is what the contract says of each message (``streams.events.validate``) and
of event ids (one id, one event: the first copy in its partition counts; copies in
different partitions or on different topics have no defined order, so either may).
Which halves the join pairs depends on timing, so the check follows the worker's own
record of it, the ``interactions`` topic, and holds the learner store to it.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from streams.events import (
    MAX_ID_CHARS,
    RATINGS_TOPIC,
    REVIEWS_TOPIC,
    InteractionEvent,
    InvalidEvent,
    RatingEvent,
    validate,
)
from tests.integration.harness import send, wait_until
from tests.integration.test_poison import Running, start_worker

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("DREX_FUZZ_SEED", "17"))  # another seed: another stream
# Characters ids and texts are drawn from: JSON's special characters, accents, CJK, RTL,
# combining marks, joiners, a BOM, astral-plane emoji, white space inside (not at the
# ends: the contract strips it).
_EDGE = [*"aZ09-_.:/@#%&*+=~'\"\\", "é", "ß", "漢", "字", "ب", "ש", "\u0301", "\u200d", "\ufeff"]
_EDGE += ["😀", "🎸", "\U0010fffd", "\u00a0", "\u2028", " "]
_ENDS = [c for c in _EDGE if not c.isspace()]
_CONTROL = ["\x00", "\x01", "\x1f", "\x7f", "\x85", "\x9f", "\n", "\r"]
T0 = 1_600_000_000.0


@dataclass
class Fuzz:
    """The stream, and what the contract says of it."""

    messages: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)  # expected dead letters
    copies: dict[str, list[tuple[str, bytes, Any]]] = field(default_factory=dict)

    def add(self, topic: str, key: bytes, body: dict[str, Any]) -> None:
        raw = orjson.dumps(body)
        self.messages.append((topic, key, raw))
        try:
            event = validate(topic, raw)
        except InvalidEvent as err:
            self.reasons[err.reason] += 1
        else:
            self.copies.setdefault(event.event_id, []).append((topic, key, event))

    def candidates(self, event_id: str) -> list[Any]:
        """The copies of an id that may be the one learned: the first on each (topic,
        key); one key is one partition, where the join keeps the first."""
        first: dict[tuple[str, bytes], Any] = {}
        for topic, key, event in self.copies[event_id]:
            first.setdefault((topic, key), event)
        return list(first.values())


def make_fuzz(rng: np.random.Generator, n: int = 4000) -> Fuzz:
    def text(length: int, control: bool = False) -> str:
        chars = _EDGE + (_CONTROL if control else [])
        middle = "".join(chars[i] for i in rng.integers(len(chars), size=max(0, length - 2)))
        ends = [_ENDS[i] for i in rng.integers(len(_ENDS), size=2)]
        return ends[0] + middle + ends[1] if length >= 2 else ends[0][:length]

    def an_id(n_id: int) -> str:  # unique: a counter inside extreme characters
        mark = f"#{n_id}#"
        length = int(rng.choice([1, 8, 64, MAX_ID_CHARS - len(mark)]))
        cut = int(rng.integers(0, length + 1))
        core = text(length)
        return (core[:cut] + mark + core[cut:])[:MAX_ID_CHARS]

    users = [an_id(i) for i in range(40)] + ["12345", "007"]
    items = [an_id(100 + i) for i in range(60)] + ["42"]
    hot = [(users[int(rng.integers(len(users)))], items[i]) for i in range(5)]
    fuzz = Fuzz()
    counter = 1000
    sent_valid: list[tuple[str, bytes, dict[str, Any]]] = []

    def body(kind: str, eid: str, user: str, item: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema": 1,
            "event_id": eid,
            "user_id": int(user) if user == "12345" else user,  # an integer id
            "item_id": item if rng.random() < 0.9 else f"  {item}\t",  # stripped
            "event_time": T0 + float(rng.random()) * 1e6,
        }
        if kind == REVIEWS_TOPIC:
            length = int(rng.integers(15_000, 20_001)) if rng.random() < 0.03 else 60
            out["text"] = text(length, control=True)
        else:
            out["rating"] = float(rng.choice([1, 2, 3, 4, 5, 1.5, 4.75]))
        return out

    while len(fuzz.messages) < n:
        counter += 1
        draw = rng.random()
        topic = REVIEWS_TOPIC if rng.random() < 0.5 else RATINGS_TOPIC
        if rng.random() < 0.15:
            user, item = hot[int(rng.integers(len(hot)))]  # many events for one pair
        else:
            user, item = users[int(rng.integers(len(users)))], items[int(rng.integers(len(items)))]
        key = user.encode()
        if draw < 0.72 or not sent_valid:  # a new valid event
            b = body(topic, an_id(counter), user, item)
            fuzz.add(topic, key, b)
            sent_valid.append((topic, key, b))
        elif draw < 0.82:  # an exact resend of an earlier event
            fuzz.add(*sent_valid[int(rng.integers(max(0, len(sent_valid) - 50), len(sent_valid)))])
        elif draw < 0.88:  # an earlier id with other content (item, kind or user)
            _, _, old = sent_valid[int(rng.integers(len(sent_valid)))]
            b = body(topic, old["event_id"], user, item)
            fuzz.add(topic, key, b)
        elif draw < 0.93:  # a control character in an id
            b = body(topic, an_id(counter), user, item)
            name = ["event_id", "user_id", "item_id"][int(rng.integers(3))]
            value = str(b[name]).strip()
            cut = int(rng.integers(1, max(2, len(value))))
            b[name] = value[:cut] + _CONTROL[int(rng.integers(len(_CONTROL)))] + value[cut:]
            fuzz.add(topic, key, b)
        elif draw < 0.97:  # an id over the limit, up to a 400 KB poison
            b = body(topic, an_id(counter), user, item)
            name = ["event_id", "user_id", "item_id"][int(rng.integers(3))]
            size = 400_000 if rng.random() < 0.05 else int(rng.integers(MAX_ID_CHARS + 1, 2000))
            b[name] = (str(b[name]).strip() + "x" * size)[: max(size, MAX_ID_CHARS + 1)]
            fuzz.add(topic, b"poison" if size > 10_000 else key, b)
        else:  # a text over the limit
            b = body(REVIEWS_TOPIC, an_id(counter), user, item)
            b["text"] = "y" * 20_001
            fuzz.add(REVIEWS_TOPIC, key, b)
    return fuzz


def learned_halves(
    records: list[InteractionEvent],
) -> list[tuple[InteractionEvent, list[tuple[str, Any]]]]:
    """What the learner makes of ``interactions`` by the contract (one event id, one
    event): each interaction, in order, with its halves whose ids were not learned before,
    as (event id, value) pairs; those with none left are dropped. Written out here,
    independently of streams/events.py's ``without_applied``, which the learner uses."""
    seen: set[str] = set()
    out = []
    for e in records:
        halves = [
            (i, v)
            for i, v in ((e.review_event_id, e.text), (e.rating_event_id, e.rating))
            if i is not None and i not in seen
        ]
        if halves:
            seen.update(i for i, _ in halves)
            out.append((e, halves))
    return out


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_dir: Path) -> Iterator[Running]:
    yield from start_worker(tmp_path_factory.mktemp("fuzz"), tiny_encoder_dir, "worker.log")


def test_a_fuzzed_stream_is_learned_exactly_as_the_contract_says(running: Running) -> None:
    started = time.monotonic()
    fuzz = make_fuzz(np.random.default_rng(SEED))
    assert len(fuzz.copies) > 2500 and sum(fuzz.reasons.values()) > 300
    send(running.broker, fuzz.messages)
    valid = set(fuzz.copies)

    # Until the join has read everything, the lone halves have gone out (a join window
    # after the last record, and ticks), nothing more comes to ``interactions`` and the
    # learner has passed its end.
    state: dict[str, Any] = {"read_at": None, "end": -1}

    def settled() -> bool:
        m = running.worker.metrics()
        read = sum(
            m.get(f'drex_events_in_total{{topic="{t}"}}', 0.0) for t in ("reviews", "ratings")
        )
        if read < len(fuzz.messages):
            return False
        state["read_at"] = state["read_at"] or time.monotonic()
        end = max((o + 1 for o, _ in running.interactions()), default=0)  # records
        stable, state["end"] = end == state["end"], end
        waited = time.monotonic() - state["read_at"] > 6.0  # 2 s window, 0.5 s ticks
        return stable and waited and running.worker.metric("drex_learner_offset") >= end - 1

    wait_until(settled, 240, "the join and the learner to settle", running.worker)
    learned = learned_halves([e for _, e in running.interactions()])

    # nothing lost, nothing double
    halves = Counter(i for _, hs in learned for i, _ in hs)
    assert halves == dict.fromkeys(valid, 1)
    # nothing misattributed: each half as one of the copies that may count
    for e, hs in learned:
        for eid, value in hs:
            is_rating = e.rating_event_id == eid
            options = [
                (c.user_id, c.item_id, c.rating if is_rating else c.text)
                for c in fuzz.candidates(eid)
                if isinstance(c, RatingEvent) == is_rating
            ]
            assert (e.user_id, e.item_id, value) in options, (eid, e)
    # the learner store agrees with it
    store = running.store()
    assert store.info().applied == len(learned)
    assert store.applied(valid) == valid
    assert store.counts("users") == dict(Counter(e.user_id for e, _ in learned))
    assert store.counts("items") == dict(Counter(e.item_id for e, _ in learned))
    # every invalid message is a dead letter, with the contract's reason
    letters = running.letters("")
    assert Counter(d.reason for d in letters) == fuzz.reasons
    assert running.worker.alive()
    print(
        f"fuzz: {len(fuzz.messages)} messages, {len(valid)} valid events, "
        f"{len(learned)} interactions learned, {sum(fuzz.reasons.values())} dead letters "
        f"({dict(fuzz.reasons)}), {time.monotonic() - started:.0f} s"
    )
