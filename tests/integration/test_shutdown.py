"""Stopping a worker whose broker is gone: SIGTERM exits within the grace, keeps what was
committed, and the worker does not flood its log while it waits (issue 17, item 3)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from drex_model.types import Interaction
from drex_store.learner import LearnerStore
from streams.broker import EmbeddedBroker, port_in_use
from tests.integration.harness import Worker, applied_total, faulty_plan, send, wait_until

pytestmark = pytest.mark.integration

GRACE = 8.0  # DREX_SHUTDOWN_GRACE of the test's worker (default 30)
MARGIN = 7.0  # the watchdog's own flush and exit, on a loaded 2-core machine
AWAY = 15.0  # seconds the worker runs on with its broker gone, before SIGTERM
MAX_LOG_RATE = 1000.0  # bytes/s while the broker is away (unlimited: ~13 KB/s)


def test_sigterm_exits_within_the_grace_when_the_broker_is_gone_and_keeps_the_store(
    sample_rows: list[Interaction],
    fresh_broker: EmbeddedBroker,
    tiny_encoder_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DREX_SHUTDOWN_GRACE", str(GRACE))  # the worker inherits it
    plan = faulty_plan(sample_rows[:300])
    state = tmp_path / "state"
    log = tmp_path / "worker.log"
    worker = Worker(fresh_broker, tiny_encoder_dir, state, log)
    try:
        send(fresh_broker, plan.events)
        wait_until(
            lambda: applied_total(worker) >= plan.truth.interactions,
            120,
            f"{plan.truth.interactions} interactions",
            worker,
        )
        applied = applied_total(worker)
        fresh_broker.stop()  # the broker is gone: faust's commits and flushes cannot land

        time.sleep(3)  # the first errors (one of each kind) pass the rate limit
        size = log.stat().st_size
        time.sleep(AWAY)
        rate = (log.stat().st_size - size) / AWAY
        assert worker.alive(), worker.log_tail()

        worker.proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        try:
            code = worker.proc.wait(GRACE + MARGIN)
        except Exception:
            pytest.fail(f"no exit {GRACE + MARGIN:.0f} s after SIGTERM:\n{worker.log_tail()}")
        took = time.monotonic() - sent
    finally:
        if worker.alive():
            worker.kill()
    print(f"log rate with the broker gone: {rate:.0f} B/s; exit {code} after {took:.1f} s")
    assert rate <= MAX_LOG_RATE, worker.log_tail(80)
    assert code != 0  # it did not finish cleanly, and says so by its exit status
    assert "did not stop within" in log.read_text(errors="replace"), worker.log_tail()
    assert not port_in_use(worker.port)

    store = LearnerStore.open(state / "learner", read_only=True)
    try:
        assert store.info().applied == applied == plan.truth.interactions
    finally:
        store.close()
