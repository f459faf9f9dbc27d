"""A fix for faust's end of table recovery, which can silently drop stream records.

Any broker, not only the embedded one: :func:`streams.app.create_app` installs it on every
app (``TableManager=`` setting).

**The bug** (faust-streaming 0.15.3 and master; upstream issue #596, open). When a worker
gets its partitions, faust pauses the stream partitions and replays the changelogs of its
tables. If a table needs restoring (its local RocksDB is behind its changelog: a worker
killed mid-write, a lost disk, a partition that moved), faust starts the Fetcher during
recovery and turns the consumer's flow on; on a later rebalance the Fetcher runs anyway and
the flow is on again before recovery completes. ``Recovery.on_recovery_completed`` then

1. resumes the stream partitions,
2. seeks them to their committed offsets (``perform_seek``: one OffsetFetch per assigned
   partition, queued behind the long-poll Fetch, so it takes a while), and
3. calls ``app.flow_control.resume()``, which **clears every agent's input queue**.

Between 1 and 3 the running Fetcher hands the agents records of the stream partitions:
some reach an agent, the rest wait in its queue and step 3 throws them away. By then the
consumer's position is past them, and nothing brings them back: ``seek_to_committed``
skips partitions without a committed offset (or at offset 0), a seek that ran before the
fetch is a no-op, and faust's read-offset check drops re-fetched offsets below the last
one it delivered. The agents never see those records and nothing is logged; consumer lag
reads 0. In drex the learner then waits for interactions that never come: a worker
restarted after a kill (``test_a_killed_worker_resumes_without_losing_or_repeating``)
stopped after its first take, its log silent, its lag 0, hundreds of interactions short.

**The fix.** :class:`Recovery` keeps the stream partitions paused until the queues have
been cleared: seek, clear (``flow_control.resume()``), and only then resume the stream
partitions and the consumer's flow. A record of a stream partition can then reach an
agent's queue only after the clear, starting at the committed offset. The rest of the
method is faust's, unchanged.

Private faust names used (checked against faust-streaming 0.15.3):
``Recovery._set_recovery_ended``, ``._is_changelog_tp``, ``._wait``, ``.actives_for_table``,
``.standbys_for_table``, ``TableManager._recovery``, ``App._fetcher``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from faust.tables.manager import TableManager as FaustTableManager
from faust.tables.recovery import Recovery as FaustRecovery


class Recovery(FaustRecovery):
    """faust's table recovery, with the stream partitions resumed after the queue clear."""

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        """faust's method (tables' callbacks, seek, resume), reordered: see module doc."""
        app: Any = self.app
        consumer = app.consumer
        self.log.info("Restore complete!")
        await app.on_rebalance_complete.send()
        self._set_recovery_ended()
        callbacks = [
            asyncio.ensure_future(
                table.on_recovery_completed(
                    self.actives_for_table[table], self.standbys_for_table[table]
                )
            )
            for table in self.tables.values()
        ]
        if callbacks:
            await asyncio.wait(callbacks)
        assignment = consumer.assignment()
        if app.consumer_generation_id != generation_id:
            self.log.warning(
                f"Recovery rebalancing again app id "
                f"{app.consumer_generation_id} param {generation_id}"
            )
            return
        streams = {tp for tp in assignment if not self._is_changelog_tp(tp)}
        if assignment:  # the stream partitions are still paused: nothing fetches them
            self.log.info("Seek stream partitions to committed offsets.")
            await self._wait(consumer.perform_seek(), timeout=app.conf.broker_request_timeout)
        self.completed.set()
        self.log.dev("Resume stream partitions")
        app.flow_control.resume()  # clears the agents' queues: none holds a stream record
        consumer.resume_partitions(streams)  # only now may the Fetcher deliver them
        consumer.resume_flow()
        await app._fetcher.maybe_start()
        self.tables.on_actives_ready()
        if not app.assignor.assigned_standbys():
            self.tables.on_standbys_ready()
        app.on_rebalance_end()
        self.log.info("Worker ready")


class TableManager(FaustTableManager):
    """faust's table manager, recovering with :class:`Recovery`."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = Recovery(self.app, self, beacon=self.beacon, loop=self.loop)
        assert isinstance(self._recovery, Recovery)
        return self._recovery
