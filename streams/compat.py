"""What faust-streaming needs to run correctly on the embedded Tansu broker.

Use it only when the worker is pointed at the embedded broker (``streams/broker.py``);
against Apache Kafka none of this is needed and nothing here is installed::

    import faust
    from streams.compat import TANSU_SETTINGS, apply_tansu_compat

    app = faust.App("drex", broker=broker.url, **{**TANSU_SETTINGS, **my_settings})
    apply_tansu_compat(app)  # before the worker starts (before app.start()/faust.Worker)

**End offsets** (STACK-NOTES issue 1). Tansu 0.6.0 answers ListOffsets(latest) with the
base offset of the partition's last record batch + 1, not the true end, whenever that
batch holds several records (faust's producer batches changelog writes, so it happens).
faust asks for end offsets ("highwaters") in table recovery, where a low value makes a
worker restarted on its RocksDB data crash with ``ConsistencyError`` (recovery then never
finishes and the agents never run) and a table rebuilt from its changelog silently miss
the last updates. The high watermark in a Fetch response is right, so
:func:`tansu_end_offsets` takes ListOffsets' answer and raises it to the high watermark
of one small Fetch per leader (max_wait 1 ms: Tansu answers max_wait 0 with nothing).

**LeaveGroup.** Tansu numbers a new group's first generation 0 (Kafka starts at 1), and
aiokafka sends LeaveGroup only when ``generation > 0``. So the first member of every
group leaves silently and the next join waits out its session timeout: a worker restart
took 18 s instead of 5 s with a 10 s session. :func:`leave_group_from_generation_zero`
sends it for generation 0 too.

What is patched, exactly (tested with faust-streaming 0.15.3, aiokafka 0.14.0), nothing
of it global: :func:`apply_tansu_compat` sets the *instance* attribute ``Consumer`` of
``app.transport`` (a ``faust.transport.drivers.aiokafka.Transport``) to
:class:`TansuConsumer`, whose consumer thread, :class:`TansuConsumerThread`

* overrides ``AIOKafkaConsumerThread._highwaters`` (the body of faust's
  ``Consumer.highwaters()``, which calls ``aiokafka.AIOKafkaConsumer.end_offsets``), and
* after ``on_start`` sets ``_maybe_leave_group`` on its aiokafka consumer's
  ``GroupCoordinator`` instance.

It builds on :class:`streams.recovery.ConsumerThread` (paused partitions stay paused during
a fetch; a faust/aiokafka fix for any broker), so installing it keeps that fix.

Private aiokafka names used: ``AIOKafkaConsumer._client`` / ``._coordinator``,
``GroupCoordinator._send_req`` / ``._group_instance_id`` / ``._maybe_leave_group``. Other
apps in the process and aiokafka itself are untouched. The per-message ``highwater()``
of faust's monitor already comes from Fetch responses and is right.

**Settings** (:data:`TANSU_SETTINGS`, merge into ``faust.App(...)``), and why:

* ``broker_session_timeout=10``, ``broker_heartbeat_interval=1``: Tansu completes a group
  join after exactly half the session timeout, so faust's default (60 s) costs ~30 s per
  rebalance and 10 s costs 5 s (tests use 4 s: 2 s). Heartbeats stay well below it.
* ``processing_guarantee="at_least_once"``: Tansu has no InitProducerId (no idempotent or
  transactional producer), so ``exactly_once`` cannot run; :func:`apply_tansu_compat`
  refuses an app configured for it.
* ``producer_acks=-1`` (faust's default) works on the single broker; keep it.
* ``topic_replication_factor=1``: there is one broker.
* ``topic_allow_declare=True``: faust creates its changelog, repartition and assignor
  topics with CreateTopics, which Tansu supports (configs included).
* ``consumer_auto_offset_reset="earliest"``: "latest" resets through the same wrong
  ListOffsets answer and would replay up to one record batch.
* ``web_bind="127.0.0.1"``: faust's web server otherwise binds 0.0.0.0 when enabled
  (``web_enabled`` itself is left to the worker: tests turn it off).

Not covered by settings, for whoever writes the worker:

* faust never declares source topics that are not internal, and Tansu auto-creates an
  unknown topic on the first Metadata request with **4** partitions. Create them first
  (``streams.broker.create_topics``) with the partition count the tables use, or the
  agent crashes with ``PartitionsMismatch``.
* ``cleanup.policy=compact`` is accepted and ignored: changelogs grow without bound and
  recovery replays every update ever written.
* The broker is memory-only: a restart loses every topic, offset and group. Nothing to
  wipe: a worker running through it stops with a one-line instruction (start it again);
  started again, as it is, it re-anchors its table partitions on the new, empty
  changelogs (streams/recovery.py, fix 3) and its learner on the new ``interactions``
  topic (streams/source.py). Wiping ``datadir`` is not needed, and loses the tables' rows
  the broker no longer has (the join's waiting halves).
* A worker start costs ~1 s (faust waits for tables to register) + half the session
  timeout (join) + up to ~3 s of recovery on idle topics: each ListOffsets/Fetch queues
  behind faust's long-poll Fetch (``fetch_max_wait_ms=1500``, hard-coded in faust) on
  the same connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

import aiokafka
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.errors import KafkaError
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.protocol.group import JoinGroupRequest, LeaveGroupRequest
from aiokafka.structs import TopicPartition
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Transport
from faust.types import TP, AppT

from streams.recovery import Consumer, ConsumerThread

logger = logging.getLogger(__name__)

#: faust App settings for the embedded broker; see the module docstring for the reasons.
TANSU_SETTINGS: Mapping[str, Any] = MappingProxyType(
    {
        "broker_session_timeout": 10.0,
        "broker_heartbeat_interval": 1.0,
        "processing_guarantee": "at_least_once",
        "producer_acks": -1,
        "topic_replication_factor": 1,
        "topic_allow_declare": True,
        "consumer_auto_offset_reset": "earliest",
        "web_bind": "127.0.0.1",
    }
)

#: Fetch max-wait steps in ms. Tansu answers a Fetch with max_wait 0 with no partitions
#: at all, and waits the full max_wait when there is nothing past the fetch offset.
_FETCH_WAITS_MS = (1, 10, 100)


async def fetch_high_watermarks(
    client: aiokafka.AIOKafkaClient, offsets: Mapping[TopicPartition, int]
) -> dict[TopicPartition, int]:
    """High watermark of each partition, from one small Fetch per partition leader.

    ``offsets`` gives the offset to fetch from for each partition; it must lie within the
    log (ListOffsets' answer does, on Kafka and on Tansu). Partitions whose leader is
    unknown or whose answer carries an error are left out of the result.
    """
    by_node: dict[int, list[TopicPartition]] = defaultdict(list)
    for tp in offsets:
        node = client.cluster.leader_for_partition(tp)
        if node is None or node < 0:
            logger.warning("no leader known for %s; its high watermark is skipped", tp)
            continue
        by_node[node].append(tp)

    async def one_node(node: int, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        topics: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
        for tp in tps:
            topics[tp.topic].append((tp.partition, max(offsets[tp], 0), 1))
        found: dict[TopicPartition, int] = {}
        for wait_ms in _FETCH_WAITS_MS:
            request = FetchRequest(wait_ms, 0, 1, 0, list(topics.items()))
            response = await client.send(node, request)
            for topic, partitions in response.topics:
                for partition, error_code, highwater, *_ in partitions:
                    if error_code == 0 and highwater >= 0:
                        found[TopicPartition(topic, partition)] = highwater
            if len(found) == len(tps):
                break
        return found

    results = await asyncio.gather(*(one_node(n, tps) for n, tps in by_node.items()))
    merged: dict[TopicPartition, int] = {}
    for result in results:
        merged.update(result)
    return merged


async def tansu_end_offsets(
    consumer: aiokafka.AIOKafkaConsumer, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, int]:
    """True end offsets (next offset to be written) of ``partitions``, on Tansu or any broker.

    ListOffsets first (it refreshes metadata, and its answer is a valid fetch offset
    that is never past the end), then the Fetch high watermark; the larger wins, so the
    result equals ``consumer.end_offsets`` on a correct broker. That is why readers that
    must not stop short, such as ``drex replay`` (streams/replay.py), call it whatever
    the broker, not only with ``--embedded``.
    """
    listed: dict[TopicPartition, int] = dict(await consumer.end_offsets(list(partitions)))
    if not listed:
        return listed
    highwaters = await fetch_high_watermarks(consumer._client, listed)
    missing = set(listed) - set(highwaters)
    if missing:
        logger.warning("no Fetch high watermark for %s; using ListOffsets", sorted(missing))
    return {tp: max(end, highwaters.get(tp, end)) for tp, end in listed.items()}


def leave_group_from_generation_zero(consumer: aiokafka.AIOKafkaConsumer) -> None:
    """Make ``consumer`` send LeaveGroup on stop even in generation 0 (call after start()).

    Tansu numbers a new group's first generation 0, where Kafka starts at 1; aiokafka
    sends LeaveGroup only when ``generation > 0``. Without this, the first member of every
    group leaves silently and the next one to join waits out its session timeout (a worker
    restart then takes ~1.8x the session timeout instead of ~0.5x).
    """
    coordinator = getattr(consumer, "_coordinator", None)
    if not isinstance(coordinator, GroupCoordinator):
        return

    async def maybe_leave_group() -> None:
        if (
            coordinator.generation >= 0
            and coordinator.member_id != JoinGroupRequest.UNKNOWN_MEMBER_ID
            and coordinator._group_instance_id is None
        ):
            request = LeaveGroupRequest(coordinator.group_id, coordinator.member_id)
            try:
                await coordinator._send_req(request)
            except KafkaError as err:
                logger.warning("LeaveGroup request failed: %s", err)
        coordinator.reset_generation()

    # Instance attribute: close() and maybe_leave_group() look it up on the instance.
    coordinator._maybe_leave_group = maybe_leave_group


class TansuConsumerThread(ConsumerThread):
    """faust's aiokafka consumer thread, fixed for Tansu (end offsets, LeaveGroup) and for
    paused partitions (streams/recovery.py, any broker)."""

    async def on_start(self) -> None:
        await super().on_start()
        if self._consumer is not None:
            leave_group_from_generation_zero(self._consumer)

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        if self.consumer.in_transaction:  # never on Tansu; keep faust's own path
            return await super()._highwaters(partitions)
        consumer = self._ensure_consumer()
        return await tansu_end_offsets(consumer, partitions)


class TansuConsumer(Consumer):
    """faust's aiokafka Consumer, running a :class:`TansuConsumerThread`."""

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return TansuConsumerThread(self, loop=self.loop, beacon=self.beacon)


def apply_tansu_compat(app: AppT) -> None:
    """Make ``app`` safe on Tansu: install both fixes on this app's transport only.

    Call it after creating the app and before the worker starts (its consumer is built
    at start). Idempotent. Raises ``ValueError`` for settings Tansu cannot serve
    (``exactly_once``) and ``RuntimeError`` if the consumer already exists.
    """
    if str(app.conf.processing_guarantee.value) == "exactly_once":
        raise ValueError(
            "processing_guarantee='exactly_once' needs transactions, which Tansu lacks "
            "(InitProducerId fails); use 'at_least_once' against the embedded broker"
        )
    transport = app.transport
    if not isinstance(transport, Transport):
        raise ValueError(
            f"the Tansu shim needs faust's aiokafka transport (kafka://), got "
            f"{type(transport).__module__}.{type(transport).__name__}"
        )
    if transport.Consumer is TansuConsumer:
        return
    if getattr(app, "_consumer", None) is not None:
        raise RuntimeError(
            "apply_tansu_compat(app) must run before the worker starts: the app's "
            "consumer already exists and would keep the unpatched end offsets"
        )
    # An instance attribute: only this app's transport builds TansuConsumer.
    transport.Consumer = TansuConsumer  # type: ignore[misc]
