"""Which incarnation of the ``interactions`` topic the learner store's offset belongs to.

The learner store records the last ``interactions`` offset it applied, and a micro-batch
skips every record at or below it (a redelivery). An offset only means something in the
topic it was read from: a broker that restarts empty (the embedded Tansu is memory only),
a topic deleted and created again, or another cluster behind the same address starts the
topic at offset 0 again, and the old offset then silently skips that many new
interactions. So when a worker takes the learner (``LearnerSession.acquire``) it looks
at the topic once (:func:`inspect_topic`) and compares it with the store
(:func:`check`). The topic is a new incarnation when

* the broker's cluster id differs from the one the store recorded (a Metadata v2+
  answer; Tansu answers with its ``--cluster-id``, the same after a restart), or
* the topic ends at or below the stored offset (the usual case after a restart), or
* the record at the stored offset is not the interaction the store applied there (its
  id, ``StoreInfo.last_id``; for a record of several, its last): a new incarnation that
  has already grown past it.

A new incarnation keeps the model (it did learn those interactions) and restarts the
offset at -1, so the whole new topic is read; the applied ids (``a:`` keys, kept for
``DREX_DEDUP_RETENTION``) still drop an interaction that is sent again. The worker logs
it at WARNING and counts it (``drex_source_resets_total``). Topic ids (Metadata v10+)
would be the direct answer, but aiokafka 0.14 speaks Metadata up to v5.

A record the broker no longer holds (retention deleted it) cannot be compared: the stored
offset is then trusted and the worker says so. An ``interactions`` topic of several
partitions is refused (:class:`SourceError`): the learner needs exactly one, and Tansu
creates an unknown topic with four as soon as a client asks for it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from drex_store.learner import StoreInfo

if TYPE_CHECKING:
    from streams.settings import WorkerSettings

FETCH_SECONDS = 10.0  # how long reading the one record at the stored offset may take


class SourceError(RuntimeError):
    """The source topic cannot be used as it is; the message says what to do."""


@dataclass(frozen=True)
class TopicView:
    """What the broker holds now, seen from one stored offset."""

    cluster: str | None  # the cluster id (None: the broker gives none)
    partitions: int  # partitions of the topic (0: no such topic)
    start: int  # log start offset of partition 0
    end: int  # true end offset of partition 0 (the next offset to be written)
    record_id: str | None  # interaction id of the record at the stored offset (None: unread)


@dataclass(frozen=True)
class Verdict:
    """What :func:`check` decided."""

    info: StoreInfo  # the info to resume from (``changed``: to be written)
    reset: str | None = None  # why the topic is a new incarnation (None: the same)
    unverified: str | None = None  # why the stored offset could not be checked
    changed: bool = False


def check(info: StoreInfo, view: TopicView, topic: str) -> Verdict:
    """Whether ``info.offset`` is an offset of the topic ``view`` shows (module doc)."""
    if view.partitions > 1:
        raise SourceError(
            f"{topic} has {view.partitions} partitions and the learner needs exactly 1 (a "
            f"broker auto-creates a missing topic with its default count): stop every "
            f"worker, delete {topic} (on the embedded broker: restart it), then start the "
            f"workers again, which create it with 1 partition"
        )
    reset = None
    where = f"offset {info.offset} of {topic}"
    if info.offset >= 0:
        if info.cluster and view.cluster and info.cluster != view.cluster:
            reset = (
                f"the store read {where} in cluster {info.cluster!r}, the broker is "
                f"{view.cluster!r}"
            )
        elif view.end <= info.offset:
            now = (
                f"the broker has no topic {topic}"
                if view.partitions == 0
                else "the topic is empty"
                if view.end == 0
                else f"the topic holds offsets below {view.end} only"
            )
            reset = f"the store applied up to {where}, {now}"
        elif info.last_id is not None and view.record_id not in (None, info.last_id):
            reset = (
                f"the store applied interaction {info.last_id!r} at {where}, the topic "
                f"holds {view.record_id!r} there"
            )
    if reset is not None:
        fresh = dataclasses.replace(
            info,
            offset=-1,
            last_id=None,
            cluster=view.cluster,
            resets=info.resets + 1,
            updated_at=time.time(),
        )
        return Verdict(fresh, reset=reset, changed=True)
    unverified = None
    if info.offset >= 0 and view.record_id is None:
        if info.last_id is None:
            unverified = f"no interaction id stored for {where} (a store from before ids were kept)"
        elif view.start > info.offset:
            unverified = f"the topic no longer holds {where} (it starts at {view.start})"
        else:
            unverified = f"the record at {where} could not be read"
    if view.cluster and info.cluster != view.cluster:
        return Verdict(
            dataclasses.replace(info, cluster=view.cluster), unverified=unverified, changed=True
        )
    return Verdict(info, unverified=unverified)


async def inspect_topic(
    bootstrap: Sequence[str],
    topic: str,
    offset: int,
    identify: Callable[[bytes], str],
    options: dict[str, Any] | None = None,
) -> TopicView:
    """The cluster id, partition count, bounds of partition 0 and the id (``identify`` of
    the value) of the record at ``offset``, from the broker, with a client of its own."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.protocol.metadata import MetadataRequest
    from aiokafka.structs import TopicPartition

    from streams.compat import tansu_end_offsets

    consumer = AIOKafkaConsumer(
        bootstrap_servers=list(bootstrap),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id="drex-source-check",
        **(options or {}),
    )
    await consumer.start()
    try:
        client = consumer._client
        request = MetadataRequest([topic], allow_auto_topic_creation=False)
        metadata = (await client.send(client.get_random_node(), request)).to_object()
        cluster = metadata.get("cluster_id") or None
        found = [t for t in metadata["topics"] if t["topic"] == topic and t["error_code"] == 0]
        partitions = len(found[0]["partitions"]) if found else 0
        if partitions == 0:
            return TopicView(cluster, 0, 0, 0, None)
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        start = (await consumer.beginning_offsets([tp]))[tp]
        end = (await tansu_end_offsets(consumer, [tp]))[tp]
        record_id = None
        if start <= offset < end:
            consumer.seek(tp, offset)
            deadline = time.monotonic() + FETCH_SECONDS
            while record_id is None and time.monotonic() < deadline:
                batch = await consumer.getmany(tp, timeout_ms=500, max_records=1)
                for record in batch.get(tp, []):
                    if record.offset == offset:
                        record_id = _identify(identify, record.value)
        return TopicView(cluster, partitions, start, end, record_id)
    finally:
        await consumer.stop()


def _identify(identify: Callable[[bytes], str], value: bytes | None) -> str:
    """The record's interaction id; "" for one that is none (never an applied id)."""
    try:
        return identify(value) if value is not None else ""
    except Exception:
        return ""


def interactions_view(settings: WorkerSettings) -> Callable[[int], TopicView]:
    """The broker's ``interactions`` topic seen from a stored offset, through a client of
    its own; called in the learner's thread."""
    from streams.broker import run_sync
    from streams.events import INTERACTIONS_TOPIC
    from streams.producer import bootstrap_servers

    servers = bootstrap_servers(settings.broker)

    def view(offset: int) -> TopicView:
        options = settings.aiokafka_options()
        return run_sync(
            lambda: inspect_topic(servers, INTERACTIONS_TOPIC, offset, _record_id, options)
        )

    return view


def _record_id(raw: bytes) -> str:
    """The id of a record's last interaction: the one the store names with its offset."""
    from streams.events import interaction_id, read_interactions

    return interaction_id(read_interactions(raw)[-1])
