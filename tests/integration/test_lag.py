"""Consumer lag (streams/lag.py) read off the real embedded broker: what the group has not
committed, per partition, even where faust's fetch position ran far ahead."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams import metrics
from streams.broker import EmbeddedBroker, create_topics
from streams.lag import LagReader, lag

pytestmark = pytest.mark.integration


def test_lag_counts_from_the_committed_offset_or_the_log_start() -> None:
    assert lag(100, 40) == 60
    assert lag(100, None) == 100
    assert lag(100, -1, start=30) == 70
    assert lag(100, 120) == 0


async def _produce(servers: str, topic: str, counts: dict[int, int]) -> None:
    # lingering, so that Tansu stores several records per batch: its ListOffsets(latest)
    # then answers short of the true end, which the reader must not trust
    producer = AIOKafkaProducer(bootstrap_servers=servers, linger_ms=50)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, b"x" * 10, partition=p)
            for p, n in counts.items()
            for _ in range(n)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _commit(servers: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


def _gauge(topic: str, partition: int) -> float | None:
    return metrics.REGISTRY.get_sample_value(
        "drex_consumer_lag_messages", {"topic": topic, "partition": str(partition)}
    )


def test_lag_is_what_the_group_has_not_committed_and_falls_after_commits(
    broker: EmbeddedBroker, unique_topic: Callable[[str], str]
) -> None:
    topic, group = unique_topic("lag"), unique_topic("group")
    servers = broker.bootstrap
    create_topics(servers, {topic: 2})
    p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)

    async def go() -> None:
        await _produce(servers, topic, {0: 120, 1: 45})
        await _commit(servers, group, {p0: 20})  # p1: nothing committed
        reader = LagReader(servers, group)
        try:
            assert await reader.read([p0, p1]) == {p0: 100, p1: 45}
            await reader.update([p0, p1])
            assert (_gauge(topic, 0), _gauge(topic, 1)) == (100.0, 45.0)

            await _produce(servers, topic, {0: 30})  # more arrives: the lag grows
            await reader.update([p0, p1])
            assert _gauge(topic, 0) == 130.0

            await _commit(servers, group, {p0: 150, p1: 40})  # consumed: it falls
            await reader.update([p0, p1])
            assert (_gauge(topic, 0), _gauge(topic, 1)) == (0.0, 5.0)

            await reader.update([p1])  # p0 revoked from this worker: its series goes
            assert (_gauge(topic, 0), _gauge(topic, 1)) == (None, 5.0)
        finally:
            await reader.close()

    asyncio.run(go())


def test_an_unreachable_broker_keeps_the_gauge_and_raises_nothing(
    unique_topic: Callable[[str], str],
) -> None:
    from streams.broker import free_port

    topic = unique_topic("lag")
    tp = TopicPartition(topic, 0)
    reader = LagReader(f"127.0.0.1:{free_port()}", "g")
    reader.publish({tp: 7})

    async def go() -> None:
        await reader.update([tp])
        assert (reader._admin, reader._consumer) == (None, None)  # the next one reconnects
        await reader.close()
        await reader.update([tp])  # closed: no client is opened again
        assert (reader._admin, reader._consumer) == (None, None)

    asyncio.run(go())
    assert _gauge(topic, 0) == 7.0
