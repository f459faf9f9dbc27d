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
from pathlib import Path

from faust.types import TP

from streams.app import create_app
from streams.recovery import Recovery
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
