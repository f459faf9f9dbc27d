"""Consumer lag as kafka-exporter measures it: a partition's end offset minus the consumer
group's committed offset, read from the broker every few seconds.

``drex_consumer_lag_messages{topic, partition}`` counts what the group has not committed
yet, i.e. what a crash now would make it read again and what the workers still owe. The
gap between faust's fetch position and the high watermark, which this replaced, hides
the backlog: faust fetches far ahead of what its agents have processed (it read 6 on
``interactions`` while the committed lag was ~4,260), and it froze on changelog
partitions, which faust stops fetching once a table is recovered.

Each worker reports the partitions it is assigned, so ``sum by (topic)`` over the
workers is the group's lag, each partition counted once. faust's own topics (table
changelogs, the assignor's leader topic) are left out (streams/app.py): tables write
changelogs and standbys read them, and the group commits no offset there.

The offsets come from the broker, not from the worker's memory: the committed ones
through an admin client (``OffsetFetch`` for the group, partitions named explicitly, as
Tansu needs), the end offsets through a consumer of no group, by the rule ``drex replay``
uses on every broker (:func:`streams.compat.tansu_end_offsets`: the larger of ListOffsets
and the Fetch high watermark, since Tansu's ``ListOffsets(latest)`` answers short,
STACK-NOTES). A partition with no committed offset lags by everything from its log
start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping
from typing import Any

from aiokafka.structs import TopicPartition

from streams import metrics
from streams.compat import tansu_end_offsets

logger = logging.getLogger(__name__)

INTERVAL = 5.0  # seconds between two readings
TIMEOUT = 10.0  # a reading that takes longer is dropped (the gauges keep their values)


def lag(end: int, committed: int | None, start: int = 0) -> int:
    """Messages between the committed offset (the next one the group will read; None or
    negative: none committed, so from ``start``, the log start) and ``end``."""
    position = start if committed is None or committed < 0 else committed
    return max(0, end - position)


class LagReader:
    """Reads the committed lag of ``group`` on the broker at ``servers``; sets the gauge."""

    def __init__(
        self, servers: str, group: str, options: Mapping[str, Any] | None = None
    ) -> None:
        """``options``: aiokafka's security options (``WorkerSettings.aiokafka_options``)."""
        self.servers = servers
        self.group = group
        self.options = dict(options or {})
        self._admin: Any = None
        self._consumer: Any = None
        self._shown: set[tuple[str, str]] = set()  # label sets of the gauge this sets
        self._closed = False  # by the worker's shutdown: no reading opens clients again

    async def _start(self) -> None:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.admin import AIOKafkaAdminClient

        if self._admin is None:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self.servers, client_id="drex-lag", **self.options
            )
            await admin.start()
            self._admin = admin
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.servers,
                client_id="drex-lag",
                group_id=None,
                enable_auto_commit=False,
                **self.options,
            )
            await consumer.start()
            self._consumer = consumer

    async def read(self, partitions: Collection[TopicPartition]) -> dict[TopicPartition, int]:
        """The committed lag of each of ``partitions`` (from the broker)."""
        tps = sorted(set(partitions))
        if not tps:
            return {}
        await self._start()
        committed = await self._admin.list_consumer_group_offsets(self.group, partitions=tps)
        consumer = self._consumer
        ends = await tansu_end_offsets(consumer, tps)
        offsets = {tp: committed[tp].offset if tp in committed else -1 for tp in tps}
        unread = [tp for tp in tps if offsets[tp] < 0]
        starts = dict(await consumer.beginning_offsets(unread)) if unread else {}
        return {tp: lag(ends[tp], offsets[tp], starts.get(tp, 0)) for tp in tps if tp in ends}

    def publish(self, lags: Mapping[TopicPartition, int]) -> None:
        """Set the gauge's series to ``lags``; drop those of partitions not in it (revoked
        from this worker: their new owner reports them)."""
        shown = set()
        for tp, value in lags.items():
            labels = (tp.topic, str(tp.partition))
            metrics.CONSUMER_LAG.labels(*labels).set(value)
            shown.add(labels)
        for labels in self._shown - shown:
            metrics.CONSUMER_LAG.remove(*labels)
        self._shown = shown

    async def update(self, partitions: Collection[TopicPartition]) -> None:
        """:meth:`read` then :meth:`publish`; a failure is logged and the gauge kept (the
        next reading tries again, with new connections)."""
        if self._closed:
            return
        try:
            lags = await asyncio.wait_for(self.read(partitions), TIMEOUT)
        except Exception as err:
            logger.warning("could not read the consumer lag of %s: %r", self.group, err)
            await self._disconnect()
            return
        self.publish(lags)

    async def close(self) -> None:
        """Close the clients for good (the worker stops)."""
        self._closed = True
        await self._disconnect()

    async def _disconnect(self) -> None:
        admin, consumer = self._admin, self._consumer
        self._admin = self._consumer = None
        for client, stop in ((admin, "close"), (consumer, "stop")):
            if client is not None:
                try:
                    await getattr(client, stop)()
                except Exception as err:  # closing is best effort
                    logger.debug("closing a lag client failed: %r", err)
