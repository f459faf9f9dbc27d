"""The embedded Tansu broker, and faust on it with the compat layer (streams/compat.py).

Each faust worker start costs ~1 s (faust waits for tables to register) plus half the
session timeout for the group join, hence the short ``broker_session_timeout`` below.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import faust
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.broker import BrokerError, EmbeddedBroker, create_topics, create_topics_async
from streams.compat import (
    TANSU_SETTINGS,
    TansuConsumer,
    apply_tansu_compat,
    leave_group_from_generation_zero,
    tansu_end_offsets,
)

pytestmark = pytest.mark.integration

#: Test-only speed-ups on top of TANSU_SETTINGS: a 2 s group join instead of 5 s, and a
#: producer linger so faust's changelog writes go out in multi-record batches (the case
#: where Tansu's ListOffsets is wrong).
FAST = {"broker_session_timeout": 4.0, "broker_heartbeat_interval": 1.0, "producer_linger": 0.05}
PARTITIONS = 2
UniqueTopic = Callable[[str], str]
KEYS = [f"k{i}" for i in range(7)]


async def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


async def produce(
    bootstrap: str, topic: str, values: list[bytes], keys: list[bytes] | None = None
) -> None:
    """Send in one burst (one multi-record batch per partition), then wait for every ack."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value, key=keys[i] if keys else None)
            for i, value in enumerate(values)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_to_end(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int:
    """The true next offset of ``tp``: read every record, return last offset + 1."""
    consumer.assign([tp])
    consumer.seek(tp, 0)
    last = -1
    while True:
        batch = await consumer.getmany(tp, timeout_ms=500)
        if not batch:
            return last + 1
        last = batch[tp][-1].offset


# --- the broker itself ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_produce_and_consume_1000(broker: EmbeddedBroker, unique_topic: UniqueTopic) -> None:
    topic = unique_topic("roundtrip")
    assert await create_topics_async(broker.bootstrap, {topic: 3}) == {topic}
    values = [b"%d" % i for i in range(1000)]
    await produce(broker.bootstrap, topic, values, keys=[b"%d" % (i % 17) for i in range(1000)])

    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(3)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        got: list[bytes] = []
        deadline = time.monotonic() + 20
        while len(got) < 1000 and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                got.extend(r.value for r in records if r.value is not None)
    finally:
        await consumer.stop()
    assert sorted(got) == sorted(values)


def test_create_topics_tolerates_existing(
    broker: EmbeddedBroker, unique_topic: UniqueTopic
) -> None:
    a, b = unique_topic("a"), unique_topic("b")
    assert create_topics(broker.bootstrap, {a: 2}, {"retention.ms": "-1"}) == {a}
    assert create_topics(broker.bootstrap, {a: 2, b: 1}) == {b}


def test_port_in_use_is_a_clear_error(
    broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(BrokerError, match="already in use"):
        EmbeddedBroker(broker.port, startup_timeout=5).start()
    assert list(tmp_path.iterdir()) == []  # its temporary log folder is gone too


def test_a_temporary_log_folder_goes_when_the_broker_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with EmbeddedBroker() as running:
        assert running.log_path is not None and running.log_path.exists()
        assert running.log_path.parent.parent == tmp_path
    assert list(tmp_path.iterdir()) == []
    kept = tmp_path / "kept"
    with EmbeddedBroker(log_dir=kept) as running:
        pass
    assert [p.name for p in kept.iterdir()] == [f"tansu-{running.port}.log"]  # given: kept


def test_broker_command_stops_on_sigterm(tmp_path: Path) -> None:
    """``drex broker`` prints the URL, runs until SIGTERM, exits 0 and leaves no broker."""
    script = (
        "import argparse, sys\n"
        "from streams.broker import register\n"
        "parser = argparse.ArgumentParser(prog='drex')\n"
        "register(parser.add_subparsers(dest='command', required=True))\n"
        "args = parser.parse_args(sys.argv[1:])\n"
        "sys.exit(args.func(args))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, "broker", "--port", "0", "--log-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        assert first.startswith("broker ready: kafka://127.0.0.1:"), first + proc.stderr.read()
        port = int(first.split("kafka://127.0.0.1:")[1].split()[0])
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    assert list(tmp_path.glob("tansu-*.log"))


# --- the end-offset shim ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_end_offsets_come_from_the_fetch_high_watermark(
    broker: EmbeddedBroker, unique_topic: UniqueTopic
) -> None:
    topic = unique_topic("ends")
    await create_topics_async(broker.bootstrap, {topic: 3})
    many, single, empty = (TopicPartition(topic, p) for p in range(3))
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    try:
        for _ in range(3):  # partition 0: three bursts, each a 10-record batch
            futures = [await producer.send(topic, b"x", partition=0) for _ in range(10)]
            await asyncio.gather(*futures)
        await producer.send_and_wait(topic, b"one", partition=1)  # single-record batches
        await producer.send_and_wait(topic, b"two", partition=1)
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        shim = await tansu_end_offsets(consumer, [many, single, empty])
        raw = await consumer.end_offsets([many, single, empty])
        truth = {tp: await read_to_end(consumer, tp) for tp in (many, single, empty)}
    finally:
        await consumer.stop()

    assert truth == {many: 30, single: 2, empty: 0}
    assert shim == truth
    # The bug the shim exists for: Tansu's ListOffsets(latest) is the last batch's base
    # offset + 1 when that batch holds several records; right for single-record batches.
    assert raw[many] < truth[many]
    assert raw[single] == truth[single] and raw[empty] == 0


def test_apply_tansu_compat_patches_only_that_app(broker: EmbeddedBroker) -> None:
    patched = faust.App("compat-a", broker=broker.url, **TANSU_SETTINGS)
    other = faust.App("compat-b", broker=broker.url, **TANSU_SETTINGS)
    apply_tansu_compat(patched)
    apply_tansu_compat(patched)  # idempotent
    assert patched.transport.Consumer is TansuConsumer
    assert other.transport.Consumer is not TansuConsumer
    with pytest.raises(ValueError, match="exactly_once"):
        apply_tansu_compat(
            faust.App("compat-c", broker=broker.url, processing_guarantee="exactly_once")
        )


@pytest.mark.asyncio
async def test_group_rejoin_is_not_delayed_by_the_previous_member(
    broker: EmbeddedBroker, unique_topic: UniqueTopic
) -> None:
    """Tansu starts generations at 0, where aiokafka skips LeaveGroup; the fix sends it."""
    topic, group = unique_topic("rejoin"), unique_topic("group")
    await create_topics_async(broker.bootstrap, {topic: 1})

    async def join_seconds() -> float:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=broker.bootstrap,
            group_id=group,
            session_timeout_ms=2000,
            heartbeat_interval_ms=500,
        )
        started = time.monotonic()
        await consumer.start()
        leave_group_from_generation_zero(consumer)
        try:
            await wait_until(lambda: bool(consumer.assignment()), 15, "partition assignment")
            return time.monotonic() - started
        finally:
            await consumer.stop()

    joins = [await join_seconds(), await join_seconds()]
    # Without the fix the second join waits out the first member's session (~4 s here).
    assert joins[1] < 2.5, joins


# --- faust on the embedded broker -------------------------------------------------------


@dataclass
class CountingWorker:
    """A faust app whose one agent counts events per key into a RocksDB table."""

    app: faust.App
    table: Any
    seen: list[int]

    @property
    def counts(self) -> dict[str, int]:
        return {key: int(value) for key, value in self.table.items()}

    @property
    def recovery_crash(self) -> BaseException | None:
        return cast(BaseException | None, cast(Any, self.app.tables).recovery.crash_reason)

    def saw(self, n: int) -> bool:
        """Whether the agent has seen ``n`` events; fails at once if table recovery crashed."""
        reason = self.recovery_crash
        if reason is not None:
            raise AssertionError(f"table recovery crashed: {reason!r}") from reason
        return self.seen[0] >= n


def counting_worker(
    broker: EmbeddedBroker, app_id: str, topic: str, datadir: Path
) -> CountingWorker:
    app = faust.App(
        app_id,
        broker=broker.url,
        datadir=str(datadir),
        store="rocksdb://",
        web_enabled=False,
        topic_partitions=PARTITIONS,
        **{**TANSU_SETTINGS, **FAST},
    )
    apply_tansu_compat(app)
    source = app.topic(topic, key_type=bytes, value_type=bytes, partitions=PARTITIONS)
    table = app.Table(
        "counts",
        default=int,
        key_type=str,
        value_type=int,
        partitions=PARTITIONS,
        options={"driver": "rocksdict"},
    )
    worker = CountingWorker(app, table, [0])

    @app.agent(source)
    async def count(stream: Any) -> None:
        async for key, _value in stream.items():
            table[key.decode()] += 1
            worker.seen[0] += 1

    return worker


@contextlib.asynccontextmanager
async def running(worker: CountingWorker) -> AsyncIterator[CountingWorker]:
    """Run the faust app in this event loop (no faust.Worker: no signals, no log setup)."""
    await worker.app.start()
    try:
        yield worker
    finally:
        await worker.app.stop()


async def send_events(bootstrap: str, topic: str, n: int, offset: int = 0) -> Counter[str]:
    keys = [KEYS[(offset + i) % len(KEYS)] for i in range(n)]
    await produce(
        bootstrap, topic, [b"%d" % (offset + i) for i in range(n)], [k.encode() for k in keys]
    )
    return Counter(keys)


@pytest.mark.asyncio
async def test_faust_agent_counts_into_a_rocksdb_table(
    broker: EmbeddedBroker, unique_topic: UniqueTopic, tmp_path: Path
) -> None:
    topic = unique_topic("events")
    await create_topics_async(broker.bootstrap, {topic: PARTITIONS})
    worker = counting_worker(broker, unique_topic("app"), topic, tmp_path)
    threads_before = set(threading.enumerate())
    async with running(worker):
        expected = await send_events(broker.bootstrap, topic, 500)
        await wait_until(lambda: worker.saw(500), 40, "the agent to see 500 events")
        await wait_until(lambda: worker.counts == dict(expected), 10, "the table totals")
    assert worker.seen[0] == 500
    # app.stop() is a clean in-process stop: faust's consumer thread and tasks are gone.
    assert set(threading.enumerate()) <= threads_before
    leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert not leftover, leftover


@pytest.mark.asyncio
async def test_faust_restart_with_local_state_and_rebuild_from_changelog(
    broker: EmbeddedBroker, unique_topic: UniqueTopic, tmp_path: Path
) -> None:
    """STACK-NOTES issue 1 end to end: restart with RocksDB data, then rebuild from scratch.

    Unpatched, the restart crashes with ConsistencyError (local offset > ListOffsets) and
    the rebuild silently misses the changelog's last batch.
    """
    topic, app_id = unique_topic("events"), unique_topic("app")
    await create_topics_async(broker.bootstrap, {topic: PARTITIONS})
    expected: Counter[str] = Counter()

    first = counting_worker(broker, app_id, topic, tmp_path / "node-a")
    async with running(first):
        expected += await send_events(broker.bootstrap, topic, 300)
        await wait_until(lambda: first.saw(300), 40, "the first worker's events")
        await wait_until(lambda: first.counts == dict(expected), 10, "the table totals")

    # Precondition: the changelog ends in a multi-record batch, so raw ListOffsets is low.
    changelog = [TopicPartition(f"{app_id}-counts-changelog", p) for p in range(PARTITIONS)]
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        raw = await consumer.end_offsets(changelog)
        truth = {tp: await read_to_end(consumer, tp) for tp in changelog}
    finally:
        await consumer.stop()
    assert any(raw[tp] < truth[tp] for tp in changelog), (raw, truth)

    # Restart on the same local RocksDB data.
    second = counting_worker(broker, app_id, topic, tmp_path / "node-a")
    async with running(second):
        expected += await send_events(broker.bootstrap, topic, 50, offset=300)
        await wait_until(lambda: second.saw(50), 40, "the restarted worker's events")
        await wait_until(lambda: second.counts == dict(expected), 10, "restored table totals")
        assert second.recovery_crash is None

    # A new node with no local data rebuilds the whole table from the changelog.
    third = counting_worker(broker, app_id, topic, tmp_path / "node-b")
    async with running(third):
        expected += await send_events(broker.bootstrap, topic, 20, offset=350)
        await wait_until(lambda: third.saw(20), 40, "the new node's events")
        await wait_until(lambda: third.counts == dict(expected), 10, "rebuilt table totals")
        assert third.recovery_crash is None
    assert sum(expected.values()) == 370
