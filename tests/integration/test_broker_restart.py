"""A broker that restarts empty (the embedded one is memory only) loses no interaction.

The worker keeps two kinds of state outside the broker: faust's table partitions (RocksDB
under ``<state>/faust``, each with the changelog offset it has read) and the learner store
(``<state>/learner``, with the ``interactions`` offset it has applied). After the broker
comes back empty both offsets point into topics that no longer exist: the new
``interactions`` topic starts again at offset 0, and the changelogs are empty.

Before the fix a worker restarted as is crash-looped on faust's ``ConsistencyError``;
restarted after wiping ``<state>/faust`` it skipped every new interaction whose offset was
at or below the store's old offset, while ``drex_learner_interactions`` still
counted them. All of it is tested here, in one run: the worker running while the broker
restarts (it stops by itself, with a one-line instruction), the worker restarted as is
(that instruction), then the worker restarted after what the old docs advised (wipe the
faust datadir).
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

from drex_model.types import Interaction
from drex_store.learner import LearnerStore
from streams.broker import EmbeddedBroker
from streams.plan import EventPlan, plan_events
from tests.integration.harness import Worker, applied_total, send, wait_until

pytestmark = pytest.mark.integration


def restart(broker: EmbeddedBroker) -> None:
    """Stop the broker and start it again on the same port: every topic is gone."""
    broker.stop()
    broker.start()


def parts(rows: list[Interaction], n: int) -> list[EventPlan]:
    """``n`` clean event plans over disjoint users (so disjoint interaction ids)."""
    users = sorted({r.user for r in rows})
    return [plan_events([r for r in rows if r.user in set(users[i::n])], seed=i) for i in range(n)]


def stored(state: Path) -> tuple[int, Counter[str]]:
    store = LearnerStore.open(state / "learner", read_only=True)
    try:
        return store.info().applied, Counter(store.counts("users"))
    finally:
        store.close()


def test_a_broker_restart_loses_no_interaction_both_ways(
    sample_rows: list[Interaction],
    fresh_broker: EmbeddedBroker,
    tiny_encoder_dir: Path,
    tmp_path: Path,
) -> None:
    broker = fresh_broker
    first, second, third = parts(sample_rows, 3)
    state = tmp_path / "state"
    expected: Counter[str] = Counter()

    def run_phase(name: str, plan: EventPlan) -> Worker:
        """A worker on ``state``, ``plan`` sent, every interaction so far learned."""
        worker = Worker(broker, tiny_encoder_dir, state, tmp_path / f"{name}.log")
        expected.update(plan.truth.per_user)
        total = sum(expected.values())
        try:
            send(broker, plan.events)
            wait_until(lambda: applied_total(worker) >= total, 150, f"{total} ({name})", worker)
            assert applied_total(worker) == total, worker.log_tail()
        except BaseException:
            worker.kill()
            raise
        return worker

    worker = run_phase("before", first)
    restart(broker)  # under the running worker: its topics are gone
    try:
        wait_until(lambda: not worker.alive(), 90, "the worker to stop by itself")
    finally:
        code = worker.stop()  # it has exited already: this closes its log
    assert code != 0
    said = [line for line in worker.log_path.read_text().splitlines() if "CRITICAL" in line]
    assert any("start the worker again, as it is" in line for line in said), said

    # (a) restarted as is: it recovers by itself and learns every new interaction
    worker = run_phase("as-is", second)
    assert worker.stop() == 0, worker.log_tail()
    applied, per_user = stored(state)
    assert applied == sum(expected.values())
    assert per_user == expected  # none skipped, none learned twice

    # (b) restarted after wiping the faust datadir: the learner store alone must notice
    restart(broker)
    shutil.rmtree(state / "faust")
    worker = run_phase("wiped", third)
    assert worker.stop() == 0, worker.log_tail()
    applied, per_user = stored(state)
    assert applied == sum(expected.values())
    assert per_user == expected
    log = (tmp_path / "wiped.log").read_text(errors="replace")
    assert "new incarnation of interactions" in log
