"""Which incarnation of ``interactions`` the learner store's offset belongs to
(streams/source.py): the decision, without a broker."""

from __future__ import annotations

import json

import pytest

from drex_store.learner import STORE_FORMAT, LearnerStore, StoreInfo
from streams.source import SourceError, TopicView, check
from streams.state import next_info

TOPIC = "interactions"


def stored(offset: int = 683, last_id: str | None = "a", cluster: str | None = "c") -> StoreInfo:
    return StoreInfo(
        offset=offset, applied=684, batches=9, step=3, last_id=last_id, cluster=cluster
    )


def view(end: int = 2000, record_id: str | None = "a", cluster: str | None = "c") -> TopicView:
    return TopicView(cluster=cluster, partitions=1, start=0, end=end, record_id=record_id)


def test_the_same_topic_keeps_the_stored_offset() -> None:
    verdict = check(stored(), view(), TOPIC)
    assert verdict.reset is None and verdict.unverified is None and not verdict.changed
    assert verdict.info == stored()


@pytest.mark.parametrize(
    ("topic", "why"),
    [
        (view(end=672, record_id=None), "below 672 only"),  # restarted empty, refilled less
        (view(end=683, record_id=None), "below 683 only"),  # one short of the old offset
        (view(end=0, record_id=None), "the topic is empty"),
        (TopicView("c", 0, 0, 0, None), "the broker has no topic interactions"),
        (view(record_id="b"), "holds 'b' there"),  # refilled past the old offset
        (view(cluster="other"), "cluster 'c', the broker is 'other'"),
    ],
)
def test_a_new_incarnation_restarts_the_offset_and_keeps_the_count(
    topic: TopicView, why: str
) -> None:
    verdict = check(stored(), topic, TOPIC)
    assert verdict.reset is not None and why in verdict.reset
    assert verdict.changed
    info = verdict.info
    assert (info.offset, info.last_id, info.resets) == (-1, None, 1)
    assert (info.applied, info.batches, info.step) == (684, 9, 3)  # the model is kept
    assert info.cluster == topic.cluster


def test_an_offset_that_cannot_be_checked_is_trusted_and_said() -> None:
    old_store = check(stored(last_id=None), view(record_id=None), TOPIC)  # written before
    assert old_store.reset is None and "no interaction id stored" in (old_store.unverified or "")
    retention = check(stored(), TopicView("c", 1, 900, 2000, None), TOPIC)
    assert retention.reset is None and "starts at 900" in (retention.unverified or "")
    unread = check(stored(), view(record_id=None), TOPIC)  # a fetch that timed out
    assert unread.reset is None and "could not be read" in (unread.unverified or "")
    assert check(stored(offset=-1, last_id=None), view(end=0), TOPIC).unverified is None


def test_the_cluster_id_is_recorded_when_first_seen() -> None:
    verdict = check(stored(cluster=None), view(cluster="k"), TOPIC)
    assert verdict.reset is None and verdict.changed and verdict.info.cluster == "k"


def test_a_topic_of_several_partitions_is_refused_with_what_to_do() -> None:
    with pytest.raises(SourceError, match=r"has 4 partitions .* delete interactions"):
        check(stored(), TopicView("c", 4, 0, 10, None), TOPIC)


def test_each_batch_records_the_id_at_its_offset_and_a_replay_keeps_it() -> None:
    info = next_info(StoreInfo(), offset=9, applied=10, step=1, last_id="x9")
    assert (info.offset, info.last_id) == (9, "x9")
    replay = next_info(info, offset=5, applied=0, step=1, last_id="x5")  # redelivered
    assert (replay.offset, replay.last_id, replay.batches) == (9, "x9", 2)
    reset = check(info, view(end=3, record_id=None), TOPIC).info
    after = next_info(reset, offset=2, applied=3, step=2, last_id="y2")
    assert (after.offset, after.last_id, after.applied, after.resets) == (2, "y2", 13, 1)


def test_the_info_round_trips_and_an_older_store_reads_as_unknown() -> None:
    info = stored()
    assert StoreInfo.from_json(info.to_json()) == info
    old = {"format": STORE_FORMAT, "offset": 5, "applied": 6, "batches": 1, "step": 0}
    read = StoreInfo.from_json(json.dumps({**old, "updated_at": 1.0}).encode())
    assert (read.offset, read.last_id, read.cluster, read.resets) == (5, None, None, 0)
    store = LearnerStore.in_memory()
    store.put_info(info)
    assert store.info() == info
