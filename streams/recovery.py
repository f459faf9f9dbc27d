"""Two fixes for faust's end of table recovery, where it can silently drop stream records.

Any broker, not only the embedded one: :func:`streams.app.create_app` installs both on every
app, fix 1 as its ``TableManager`` setting and fix 2 with :func:`install`.

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

**Fix 1.** :class:`Recovery` keeps the stream partitions paused until the queues have
been cleared: seek, clear (``flow_control.resume()``), and only then resume the stream
partitions and the consumer's flow. A record of a stream partition can then reach an
agent's queue only after the clear, starting at the committed offset. The rest of the
method is faust's, unchanged.

**The second hole: an empty set of active partitions means "all" to aiokafka.** faust
pauses a partition by leaving it out of its set of active partitions and hands that set
(the live object) to ``aiokafka``'s ``Fetcher.fetched_records(partitions)``, which filters
with ``if partitions and tp not in partitions``: an *empty* set filters nothing. When recovery
has paused the changelogs and the stream partitions are still paused, the set is empty, and
a fetch in flight (it waits up to a second for records) hands over the records aiokafka
has buffered for every partition, advancing their positions; faust then yields only those
of active partitions and drops the rest. faust's own order leaves that gap too (between
pausing the changelogs and resuming the streams); fix 1 widens it by the seek, and with
fix 1 alone a restarted worker once lost its whole ``interactions`` backlog.
**Fix 2:** :class:`ConsumerThread` hands aiokafka a view of the active set that is never
empty to ``bool()``, so a paused partition's records stay in aiokafka's buffer until faust
resumes it.

**A changelog that restarted (fix 3).** A table partition's local RocksDB keeps the offset
of the last changelog record it holds. When the broker comes back empty (the embedded one
is memory only) or a changelog is deleted and made again, that offset points past the end
of the new changelog, and faust's recovery raises ``ConsistencyError``: the worker crashes,
and restarted as it is crashes again, for ever (a restart policy makes that a loop).
:meth:`Recovery._build_offsets` finds such partitions first (stored offset >= the
changelog's end) and re-anchors them: the local rows are kept, the stored offset goes back
to the start of the new changelog, which is then read on top of them. One WARNING line per
partition says so, and ``drex_source_resets_total{state="table"}`` counts them. What the
broker lost stays lost for everyone else: the rows written before are not in the new
changelog, so a worker that rebuilds that partition from the changelog alone (another
worker, or this one after its datadir is wiped) does not have them: for the join, the
halves that were waiting for their partner and the event ids remembered to drop resends.
That is at start. A worker that finds it in a later rebalance (the broker restarted under
it) stops instead, with a one-line instruction (:class:`BrokerLostTopics`, exit code 1):
its topics are gone, and only a start creates them again with the right partition counts
(Tansu otherwise creates a missing topic with 4 at the first request). Started again, as
it is, it re-anchors as above; a restart policy (``restart: unless-stopped``) does that
by itself.

Private names used (checked against faust-streaming 0.15.3, aiokafka 0.14.0):
``Recovery._set_recovery_ended``, ``._is_changelog_tp``, ``._wait``, ``.actives_for_table``,
``.standbys_for_table``, ``.tp_to_table``, ``._build_offsets``, ``TableManager._recovery``,
``App._fetcher``, ``AIOKafkaConsumerThread._fetch_records``, ``Transport.Consumer``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Set
from typing import Any

import aiokafka
from faust.tables.manager import TableManager as FaustTableManager
from faust.tables.recovery import Recovery as FaustRecovery
from faust.transport.consumer import RecordMap
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Transport
from faust.transport.drivers.aiokafka import Consumer as FaustConsumer
from faust.types import TP, AppT
from faust.types.transports import ConsumerT

logger = logging.getLogger(__name__)


class BrokerLostTopics(RuntimeError):
    """The broker lost this running worker's topics: the one-line instruction."""


class Recovery(FaustRecovery):
    """faust's table recovery, with the stream partitions resumed after the queue clear
    and table partitions re-anchored on a changelog that restarted empty."""

    recovered_once = False  # a recovery completed in this process (set per instance)

    async def _build_offsets(
        self, consumer: ConsumerT, tps: set[TP], destination: Counter[TP], title: str
    ) -> None:
        """faust's offsets to read the changelogs from, then fix 3 (module doc)."""
        await super()._build_offsets(consumer, tps, destination, title)
        stored = {tp: o for tp in tps if (o := destination[tp]) is not None and o >= 0}
        if not stored:
            return
        if title == "active":  # built just before, as last offsets (end - 1)
            ends = {tp: self.active_highwaters[tp] + 1 for tp in stored}
        else:
            ends = dict(await consumer.highwaters(*stored))
        stale = {
            tp: offset
            for tp, offset in stored.items()
            if ends.get(tp) is not None and offset >= ends[tp]
        }
        if not stale:
            return
        if self.recovered_once:  # the broker restarted under a running worker
            tp, offset = min(stale.items())
            err = BrokerLostTopics(
                f"the broker lost this worker's topics while it ran (changelog {tp.topic}"
                f"[{tp.partition}] ends at {ends[tp]}, its local table had read up to offset "
                f"{offset}: a broker restarted empty?): start the worker again, as it is: it "
                f"creates its topics and keeps its local tables and learner (no wipe needed)"
            )
            logger.critical("drex worker stops: %s", err)
            raise err
        earliest = await consumer.earliest_offsets(*stale)
        from streams import metrics

        for tp, offset in sorted(stale.items()):
            start = earliest.get(tp)
            anchor = -1 if start is None else start - 1
            table: Any = self.tp_to_table[tp]  # a faust Table: its store is .data
            table.data.set_persisted_offset(tp, anchor)
            destination[tp] = anchor
            metrics.SOURCE_RESETS.labels("table").inc()
            logger.warning(
                "changelog %s[%d] of table %s starts again (the broker restarted empty, or "
                "the topic was made again): the local rows were read up to offset %d, the "
                "changelog ends at %d. Local rows kept; the new changelog is read on top of "
                "them (rows from before are not in it: a worker rebuilding this partition "
                "from the changelog will not have them)",
                tp.topic,
                tp.partition,
                table.name,
                offset,
                ends[tp],
            )

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        """faust's method (tables' callbacks, seek, resume), reordered: see module doc."""
        app: Any = self.app
        consumer = app.consumer
        self.log.info("Restore complete!")
        await app.on_rebalance_complete.send()
        self._set_recovery_ended()
        self.recovered_once = True
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


class ActivePartitions:
    """faust's live set of active partitions, never empty to ``bool()`` (fix 2)."""

    __slots__ = ("_tps",)

    def __init__(self, tps: Set[TP]) -> None:
        self._tps = tps

    def __bool__(self) -> bool:
        return True

    def __contains__(self, tp: object) -> bool:
        return tp in self._tps


class ConsumerThread(AIOKafkaConsumerThread):
    """faust's aiokafka consumer thread; a fetch never hands over a paused partition."""

    async def _fetch_records(
        self,
        consumer: aiokafka.AIOKafkaConsumer,
        active_partitions: Set[TP],
        timeout: float | None = None,
        max_records: int | None = None,
    ) -> RecordMap:
        view: Any = (
            active_partitions if active_partitions is None else ActivePartitions(active_partitions)
        )
        return await super()._fetch_records(
            consumer, view, timeout=timeout, max_records=max_records
        )


class Consumer(FaustConsumer):
    """faust's aiokafka consumer, running a :class:`ConsumerThread`."""

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


def install(app: AppT) -> None:
    """Fix 2 on ``app``'s transport (an instance attribute, like streams/compat.py's, which
    builds on :class:`ConsumerThread`); fix 1 is the ``TableManager`` setting. Call it
    before the worker starts."""
    transport = app.transport
    if not isinstance(transport, Transport):
        raise ValueError(f"faust's aiokafka transport (kafka://) expected, got {transport!r}")
    if getattr(app, "_consumer", None) is not None:
        raise RuntimeError("install(app) must run before the app's consumer exists")
    if not (isinstance(transport.Consumer, type) and issubclass(transport.Consumer, Consumer)):
        transport.Consumer = Consumer  # type: ignore[misc]
