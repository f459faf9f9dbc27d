"""The end of table recovery loses no stream record (streams/recovery.py, faust #596).

No broker: the app is the worker's own (``create_app``), with faust's real consumer
bookkeeping (paused and active partitions), flow control and queues; only the I/O is
faked. A fake fetcher delivers a record of a stream partition into an agent's queue
whenever faust would let it: while that partition is active. faust's own order resumes the
stream partitions, seeks, then clears the queues, so a record fetched during the seek
was dropped from the queue after the consumer had moved past it; a restarted worker's
learner then waited forever for interactions it would never see.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from streams.app import create_app
from streams.recovery import ConsumerThread, Recovery
from streams.settings import WorkerSettings


def test_no_stream_record_is_cleared_at_the_end_of_recovery(tmp_path: Path) -> None:
    settings = WorkerSettings.from_env(
        {}, broker="kafka://127.0.0.1:9", state_dir=str(tmp_path), embedded=True
    )
    stream = TP("interactions", 0)

    async def scenario() -> tuple[list[str], int, set[TP], TP]:
        app = create_app(settings).app  # in the running loop: faust's services bind to it
        recovery = app.tables.recovery
        assert isinstance(recovery, Recovery)
        consumer = app.consumer
        changelog = TP(f"{app.conf.id}-item-embeddings-changelog", 0)
        assert changelog.topic in app.tables.changelog_topics

        # an agent's input queue, as faust makes them: cleared by flow_control.resume()
        queue = app.FlowControlQueue(maxsize=100, clear_on_resume=True)
        delivered: list[str] = []

        def fetch(when: str) -> None:  # what the running Fetcher may hand the agents
            if stream in consumer._get_active_partitions():
                delivered.append(when)
                queue.put_nowait(when)

        async def perform_seek() -> None:  # a seek takes round trips; the Fetcher runs
            fetch("during the seek")
            await asyncio.sleep(0)
            fetch("after the seek")

        resume = app.flow_control.resume

        def flow_resume() -> None:  # the queue clear
            fetch("before the clear")
            resume()

        async def fetcher_running() -> None:
            return None

        consumer.assignment = lambda: {stream, changelog}
        consumer.perform_seek = perform_seek
        app.flow_control.resume = flow_resume
        app._fetcher.maybe_start = fetcher_running
        consumer.pause_partitions({stream, changelog})  # as faust does on assignment
        await recovery.on_recovery_completed(app.consumer_generation_id)
        fetch("after recovery")
        return delivered, queue.qsize(), set(consumer._get_active_partitions()), changelog

    delivered, queued, active, changelog = asyncio.run(scenario())
    assert queued == len(delivered)  # every record handed to the agent is still there
    assert delivered == ["after recovery"]
    assert stream in active
    assert changelog not in active  # stays paused


def test_a_fetch_never_hands_over_a_paused_partition() -> None:
    """While every partition is paused (recovery done, streams not resumed yet) faust's set
    of active partitions is empty, and aiokafka's ``Fetcher.fetched_records`` reads an empty
    set as "every partition": a fetch in flight took the buffered records of paused
    partitions, advancing their positions, and faust dropped them."""
    paused, active = TP("interactions", 0), TP("join-ticks", 0)
    buffered = {paused: ["a record"], active: ["a tick"]}

    class Fetcher:  # aiokafka's fetched_records, reduced to how it picks partitions
        _closed = False
        _subscriptions = SimpleNamespace(fetch_context=contextlib.nullcontext)

        async def fetched_records(
            self, partitions: Any, timeout: float = 0, max_records: int | None = None
        ) -> dict[TP, list[str]]:
            return {
                tp: records
                for tp, records in buffered.items()
                if not (partitions and tp not in partitions)  # aiokafka's own test
            }

    thread = ConsumerThread.__new__(ConsumerThread)  # only _fetch_records is exercised
    thread.consumer = SimpleNamespace(flow_active=True)
    aiokafka_consumer = SimpleNamespace(_closed=False, _fetcher=Fetcher())

    async def fetch(partitions: set[TP]) -> Any:
        return await thread._fetch_records(aiokafka_consumer, partitions, timeout=1.0)

    assert asyncio.run(fetch(set())) == {}  # all paused: nothing handed over
    assert asyncio.run(fetch({active})) == {active: ["a tick"]}
    assert asyncio.run(fetch({active, paused})) == buffered
