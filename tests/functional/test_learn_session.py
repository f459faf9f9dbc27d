"""The learner session as the learn agent drives it, take by take (no broker needed):
encoding a take's reviews ahead, sweeping the review cache between takes, restarts from
the store and records replayed after a crash."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from streams.agents.index import IndexFeeder
from streams.agents.learn import LearnerSession
from streams.events import InteractionEvent, interaction_id, micro_batches
from streams.settings import WorkerSettings
from tests.functional.streamed import sample_events

BATCH = 40


def _session(tmp: Path, encoder: Path, name: str, **overrides: Any) -> LearnerSession:
    settings = WorkerSettings(
        state_dir=str(tmp / name),
        encoder=str(encoder),
        encoder_max_tokens=32,
        device="cpu",
        checkpoint_every=0,
        batch_size=BATCH,
        **{"torch_threads": 1, **overrides},
    )
    return LearnerSession(settings, IndexFeeder(publish_every=0.0))


def _take(session: LearnerSession, events: list[InteractionEvent], start: int, ahead: bool) -> None:
    """One take as the agent handles it: encode ahead, micro-batches, sweep."""
    batch = [(start + j, e) for j, e in enumerate(events)]
    if ahead:
        session.encode_ahead(batch)
    for s in range(0, len(batch), BATCH):
        torch.manual_seed(s)  # the same dropout draws in every session
        session.process(batch[s : s + BATCH])
    session.sweep()


@pytest.fixture
def events(tmp_path: Path) -> list[InteractionEvent]:
    return sample_events(tmp_path / "sample.jsonl", users=40, groups=5)


@pytest.fixture
def sessions(tmp_path: Path, tiny_encoder_dir: Path) -> Iterator[list[LearnerSession]]:
    made = [_session(tmp_path, tiny_encoder_dir, f"s{n}") for n in range(2)]
    for s in made:
        s.acquire()  # before any seeding in _take: building a learner reseeds torch
    yield made
    for s in made:
        s.release(save_index=False)


_Views = dict[str, tuple[np.ndarray, list[dict[str, float]]]]


def _views(session: LearnerSession) -> _Views:
    learner = session.learner
    return {
        side: learner.snapshot(side, sorted(getattr(learner, side).ids))
        for side in ("users", "items")
    }


def _assert_same(a: LearnerSession, b: LearnerSession) -> None:
    _assert_close(_views(a), _views(b))


def _assert_close(va: _Views, vb: _Views) -> None:
    """The same views up to float rounding (where a review is encoded, or a profile
    summed, changes the order of the same additions: differences ~1e-6)."""
    for side in va:
        np.testing.assert_allclose(va[side][0], vb[side][0], rtol=1e-4, atol=1e-5)
        for pa, pb in zip(va[side][1], vb[side][1], strict=True):
            assert pa.keys() == pb.keys()
            np.testing.assert_allclose(list(pa.values()), list(pb.values()), rtol=1e-4)


def test_encoding_a_take_ahead_changes_no_result(
    events: list[InteractionEvent], sessions: list[LearnerSession]
) -> None:
    ahead, alone = sessions
    take = 4 * BATCH
    for start in range(0, 3 * take, take):
        _take(ahead, events[start : start + take], start, ahead=True)
        _take(alone, events[start : start + take], start, ahead=False)
    assert ahead.info.applied == alone.info.applied == 3 * take
    _assert_same(ahead, alone)


def test_a_swept_cache_is_persisted_and_restored_right(
    events: list[InteractionEvent], sessions: list[LearnerSession]
) -> None:
    """A sweep keeps only the pending messages' reviews, and changes no view; the store's
    review keys follow the new ids, so a restart restores the very same learner."""
    swept, kept = sessions
    take = 2 * BATCH
    for start in range(0, 4 * take, take):
        _take(swept, events[start : start + take], start, ahead=True)
        _take(kept, events[start : start + take], start, ahead=True)
        swept.sweep(force=True)
        learner = swept.learner
        pending = {
            j
            for table in (learner.users, learner.items)
            for j in table.pending_review[: len(table)].tolist()
            if j >= 0
        }
        assert len(learner.cache) == len(pending)
    texts = {e.text for e in events[: 4 * take] if e.text}
    assert len(swept.learner.cache) < len(kept.learner.cache) == len(texts)  # below SWEEP_AT
    _assert_same(swept, kept)
    before = _views(swept)
    swept.release(save_index=False)
    swept.acquire()  # a restart: the learner comes back from the store
    _assert_close(before, _views(swept))
    start = 4 * take  # and goes on learning and persisting from the restored reviews
    _take(swept, events[start : start + take], start, ahead=True)
    assert swept.info.applied == 5 * take


def test_a_restart_restores_the_same_views(
    events: list[InteractionEvent], sessions: list[LearnerSession]
) -> None:
    """The store keeps keyword profiles with the pending review's words in (what serving
    shows); a restore takes them out of the learner's own profiles again, or every
    restart would count each pending review twice from then on."""
    session = sessions[0]
    take = 2 * BATCH
    for start in range(0, 3 * take, take):
        _take(session, events[start : start + take], start, ahead=True)
    before = _views(session)
    session.release(save_index=False)
    session.acquire()
    _assert_close(before, _views(session))


def test_replayed_records_write_their_entities_again(
    events: list[InteractionEvent], sessions: list[LearnerSession]
) -> None:
    """A crash may fall between the store's write and the embedding tables' changelog;
    the records replayed after it are not learned again, but their users' and items'
    current representations go to the tables again."""
    session = sessions[0]
    batch = events[:BATCH]
    users, items = {e.user_id for e in batch}, {e.item_id for e in batch}
    session.process(list(enumerate(batch)))
    again = session.process(list(enumerate(batch)))  # the same offsets, after a restart
    moved = session.process([(BATCH + j, e) for j, e in enumerate(batch)])  # re-emitted
    assert again.applied == moved.applied == 0
    assert again.skipped_offset == moved.skipped_applied == BATCH
    for result in (again, moved):
        assert set(result.users) == users and set(result.items) == items
        ids = sorted(items)
        want = session.learner.embeddings("items", ids)
        got = np.stack([np.frombuffer(result.items[k], dtype=np.float32) for k in ids])
        np.testing.assert_array_equal(got, want)


def test_a_record_cut_between_micro_batches_is_learned_once_across_a_crash(
    events: list[InteractionEvent], sessions: list[LearnerSession]
) -> None:
    """Records of 16 interactions in micro-batches of 40: the stored offset moves only
    past a record whose last interaction is learned, so after a crash the whole take
    comes again and the ids of the cut record's first part drop it."""
    session = sessions[0]
    records = [events[k : k + 16] for k in range(0, 96, 16)]  # offsets 0-5
    take = [(o, e) for o, record in enumerate(records) for e in record]
    ends = {16 * o + 15 for o in range(len(records))}
    batches = list(micro_batches(take, ends, BATCH))
    assert [c for _, c in batches] == [1, 4, 5]  # 40 = records 0, 1 and half of 2
    first = session.process(*batches[0])
    assert (first.applied, session.info.offset) == (BATCH, 1)
    assert session.info.last_id == interaction_id(records[1][-1])
    session.release(save_index=False)  # a crash: faust delivers the take again
    session.acquire()
    replayed = [session.process(*b) for b in batches]
    assert sum(r.skipped_offset for r in replayed) == 32  # records 0 and 1
    assert sum(r.skipped_applied for r in replayed) == BATCH - 32  # record 2's first part
    assert session.info.applied == len(take)
    assert (session.info.offset, session.info.last_id) == (5, interaction_id(records[5][-1]))


def test_a_store_refuses_a_learner_with_another_text_encoder(
    tmp_path: Path,
    tiny_encoder_dir: Path,
    events: list[InteractionEvent],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The encoder's identity is saved with the store's first write and checked at each
    take-over: another encoder of the same width would read the stored states wrongly."""
    from drex_model.checkpoint import CheckpointError
    from drex_model.text import TextEncoder
    from drex_store.learner import LearnerStore

    first = _session(tmp_path, tiny_encoder_dir, "s")
    _take(first, events[:BATCH], 0, ahead=False)
    identity = first._encoder.identity
    first.release(save_index=False)
    store = LearnerStore.open(tmp_path / "s" / "learner", read_only=True)
    assert store.encoder() == identity
    store.close()
    again = _session(tmp_path, tiny_encoder_dir, "s")
    again.acquire()  # the same encoder: restored
    again.release(save_index=False)
    other = {**identity, "fingerprint": "something else"}
    monkeypatch.setattr(TextEncoder, "identity", property(lambda self: other))
    with pytest.raises(CheckpointError, match="another text encoder"):
        _session(tmp_path, tiny_encoder_dir, "s").acquire()


@pytest.mark.usefixtures("torch_threads_kept")
def test_the_learner_learns_with_its_threads_and_encodes_with_the_encoders(
    tmp_path: Path, tiny_encoder_dir: Path, events: list[InteractionEvent]
) -> None:
    """DREX_LEARN_THREADS while learning (one by default), DREX_TORCH_THREADS while
    encoding (torch's default when 0): small t-batches gain nothing from a second
    thread and stall when another process holds the core (docs/results.md)."""
    torch.set_num_threads(2)  # as torch's default on a 2-core machine
    default = _session(tmp_path, tiny_encoder_dir, "default", torch_threads=0)
    default.acquire()
    assert torch.get_num_threads() == 1
    assert default._encoder is not None and default._encoder.threads == 2
    _take(default, events[:BATCH], 0, ahead=True)
    assert torch.get_num_threads() == 1  # the encoder gave its threads back
    default.release(save_index=False)
    default.acquire()  # a take-over keeps the encoder's count, not the learner's
    assert default._encoder.threads == 2 and torch.get_num_threads() == 1
    default.release(save_index=False)
    both = _session(tmp_path, tiny_encoder_dir, "both", learn_threads=0, torch_threads=2)
    both.acquire()
    assert torch.get_num_threads() == 2  # 0: as when encoding
    both.release(save_index=False)
