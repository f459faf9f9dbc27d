"""Helpers of the integration tests: worker subprocesses, sending and reading topics."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from drex_model.types import Interaction
from streams.broker import EmbeddedBroker, free_port
from streams.compat import tansu_end_offsets
from streams.metrics import scrape
from streams.plan import EventPlan, plan_events
from streams.producer import EventProducer
from streams.worker import spawn

JOIN_WINDOW = "2"  # short, so that lone halves expire during the test
APP_ID = "drex-it"


def faulty_plan(rows: Sequence[Interaction]) -> EventPlan:
    return plan_events(
        rows,
        seed=0,
        review_only=0.2,
        rating_only=0.2,
        duplicate=0.05,
        malformed=0.02,
        max_delay=50,
    )


class Worker:
    """A ``drex worker`` subprocess with its own metrics port and log file."""

    def __init__(
        self,
        broker: EmbeddedBroker,
        encoder: Path,
        state_dir: Path,
        log_path: Path,
        extra: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.args = [
            "--broker",
            broker.url,
            "--embedded",
            "--app-id",
            APP_ID,
            "--state-dir",
            str(state_dir),
            "--partitions",
            "4",
            "--join-window",
            JOIN_WINDOW,
            "--encoder",
            str(encoder),
            "--metrics-port",
            str(self.port),
            "--torch-threads",
            "1",
            "--session-timeout",
            "4",
            "--checkpoint-every",
            "2",
            *extra,
        ]
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()/kill()
        self.proc = spawn(self.args, env={**os.environ, **(env or {})}, log=self._log)

    def metrics(self) -> dict[str, float]:
        return scrape(self.port)

    def metric(self, name: str) -> float:
        return self.metrics().get(name, 0.0)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 60) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self._log.close()

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def wait_until(check: Callable[[], bool], timeout: float, what: str, *workers: Worker) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        dead = [w for w in workers if not w.alive()]
        if dead or time.monotonic() > deadline:
            why = "a worker exited" if dead else f"timed out after {timeout:.0f} s"
            logs = "\n---\n".join(w.log_tail() for w in workers)
            raise AssertionError(f"{why} waiting for {what}\n{logs}")
        time.sleep(0.5)


def applied_total(*workers: Worker) -> float:
    """Interactions in the learner store, as its current holder reports it."""
    return max((w.metric("drex_learner_interactions") for w in workers), default=0.0)


def send(broker: EmbeddedBroker, events: Sequence[tuple[str, bytes, bytes]]) -> None:
    async def go() -> None:
        async with EventProducer(broker.url) as producer:
            for topic, key, value in events:
                await producer.send_raw(topic, key, value)

    asyncio.run(go())


def read_topic(broker: EmbeddedBroker, topic: str) -> list[tuple[bytes | None, bytes]]:
    """Every record of ``topic``, read to its true end."""

    async def go() -> list[tuple[bytes | None, bytes]]:
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            partitions = await consumer.topics() and consumer.partitions_for_topic(topic)
            tps = [TopicPartition(topic, p) for p in sorted(partitions or ())]
            if not tps:
                return []
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await tansu_end_offsets(consumer, tps)
            out: list[tuple[bytes | None, bytes]] = []
            deadline = time.monotonic() + 30
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                if time.monotonic() > deadline:
                    raise AssertionError(f"could not read {topic} to its end")
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    out += [(r.key, r.value) for r in records if r.value is not None]
            return out
        finally:
            await consumer.stop()

    return asyncio.run(go())
