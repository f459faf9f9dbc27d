"""The learner's cost alone: core time of a ``--role learn`` worker per interaction,
beside the same micro-batches through ``LearnerSession.process`` in this process.

A learn-only ``drex worker`` (a subprocess) against the embedded broker is sent rating-only
interactions straight on the ``interactions`` topic, as the join writes them (16 to a
record, ``streams.events.interaction_records``; no join runs); the clock and the worker's
CPU time (user + system, from /proc) run from the first interaction sent until all are
applied (``drex_interactions_applied_total``). Then the same
interactions go through a fresh ``LearnerSession`` in micro-batches of the worker's size:
the learner's work (learn, snapshot, store write, index) without the event loop. The
difference between the two is what the worker's loop costs per interaction (consuming,
decoding, mirroring the representations into the embedding tables, acknowledging).

    python benchmarks/learn_cpu_bench.py [--dataset FILE] [--interactions 12000]

Run it from the tree to measure (``PYTHONPATH=.``): the worker imports the code beside it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from join_cpu_bench import time_worker  # beside this script
from stream_bench import replay

from drex_model.evaluate.data import load_interactions
from streams.agents.index import IndexFeeder
from streams.agents.learn import LearnerSession
from streams.events import INTERACTIONS_TOPIC, InteractionEvent, interaction_records
from streams.settings import WorkerSettings

APPLIED = "drex_interactions_applied_total"
DEFAULT_DATASET = "../shared/data/amazon14_musical_instruments_5.json.gz"


def interactions(dataset: str, n: int) -> list[InteractionEvent]:
    """The first ``n`` rated interactions of ``dataset``, replayed with new users and items
    each pass when it has fewer (``stream_bench.replay``), as rating-only events."""
    rows = [x for x in load_interactions(dataset).interactions if x.rating is not None]
    return [
        InteractionEvent(
            user_id=x.user,
            item_id=x.item,
            rating=x.rating,
            text=None,
            event_time=x.timestamp,
            rating_event_id=f"r{k}",
        )
        for k, x in enumerate(replay(rows, -(-n // len(rows)))[:n])
    ]


def in_process(events: Sequence[InteractionEvent], batch: int, work: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of ``LearnerSession.process`` over
    ``events`` in micro-batches of ``batch``, the first batch (warm-up) left out."""
    settings = WorkerSettings(
        state_dir=str(work / "in-process"), device="cpu", checkpoint_every=0, batch_size=batch
    )
    session = LearnerSession(settings, IndexFeeder(publish_every=0.0))
    session.acquire()
    numbered = list(enumerate(events))
    session.process(numbered[:batch])
    wall, cpu = time.perf_counter(), time.process_time()
    for s in range(batch, len(numbered), batch):
        session.process(numbered[s : s + batch])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    session.release(save_index=False)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=DEFAULT_DATASET)
    parser.add_argument("--interactions", type=int, default=12_000)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=WorkerSettings().batch_size,
        help="the worker's micro-batch (default: the worker's)",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="learn-cpu-"))
    events = interactions(args.dataset, args.interactions)
    n = len(events)
    seconds, used = time_worker(
        work,
        ["--role", "learn", "--batch-size", str(args.batch_size)],
        "drex_owns_learner",
        [  # as the join writes them: rating-only interactions many to a record
            (INTERACTIONS_TOPIC, events[a].user_id.encode(), value)
            for a, _, value in interaction_records(events)
        ],
        APPLIED,
        n,
    )
    wall, cpu = in_process(events, args.batch_size, work)
    m = n - args.batch_size
    print(
        f"learn worker: {n} interactions in {seconds:.1f} s, {n / seconds:,.0f}/s; "
        f"CPU {used:.2f} s = {1e6 * used / n:.0f} us per interaction"
    )
    print(
        f"LearnerSession.process alone: {m / wall:,.0f}/s; "
        f"CPU {1e6 * cpu / m:.0f} us per interaction"
    )
    print(f"the worker's loop beyond it: {1e6 * (used / n - cpu / m):.0f} us per interaction")


if __name__ == "__main__":
    main()
