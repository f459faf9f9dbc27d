"""The learner writes a checkpoint on time as well as on count (DREX_CHECKPOINT_INTERVAL):
at a low batch rate a count of micro-batches alone may take hours to come."""

from __future__ import annotations

import time
from pathlib import Path

from streams import metrics
from streams.agents.index import IndexFeeder
from streams.agents.learn import LearnerSession
from streams.settings import WorkerSettings
from tests.functional.streamed import sample_events

BATCH = 20


def _folders(session: LearnerSession) -> list[str]:
    root = session.settings.checkpoint_path
    return sorted(p.name for p in root.glob("step-*")) if root.exists() else []


def test_a_checkpoint_is_written_once_the_interval_has_passed(
    tmp_path: Path, tiny_encoder_dir: Path
) -> None:
    settings = WorkerSettings(
        state_dir=str(tmp_path / "state"),
        encoder=str(tiny_encoder_dir),
        encoder_max_tokens=32,
        device="cpu",
        torch_threads=1,
        checkpoint_every=500,  # the default: never reached in this test
        checkpoint_interval=60.0,
        batch_size=BATCH,
    )
    events = sample_events(tmp_path / "sample.jsonl", users=20, groups=3)[: 4 * BATCH]
    batches = [[(o, e) for o, e in enumerate(events)][s : s + BATCH] for s in range(0, 80, 20)]
    session = LearnerSession(settings, IndexFeeder(publish_every=0.0))
    try:
        session.process(batches[0])
        assert _folders(session) == []  # neither 500 batches nor 60 s yet

        session.last_checkpoint = time.time() - 61  # a minute later
        session.process(batches[1])
        assert _folders(session) == ["step-000000002"]
        assert metrics.REGISTRY.get_sample_value("drex_checkpoint_age_seconds") < 5

        session.process(batches[2])  # the clock started again
        assert _folders(session) == ["step-000000002"]
    finally:
        session.release(save_index=False)


def test_count_and_time_each_make_a_checkpoint_due() -> None:
    def due(every: int, interval: float, batches: int, age: float) -> bool:
        session = LearnerSession(
            WorkerSettings(checkpoint_every=every, checkpoint_interval=interval),
            IndexFeeder(publish_every=0.0),
        )
        session.last_checkpoint = time.time() - age
        return session.checkpoint_due(batches)

    assert due(500, 600, 500, age=1)  # by count
    assert due(500, 600, 7, age=601)  # by time
    assert not due(500, 600, 7, age=599)
    assert due(0, 600, 7, age=601)  # count off, time on
    assert not due(500, 0, 7, age=10**6)  # time off
    assert not due(0, 0, 500, age=10**6)  # both off: never
