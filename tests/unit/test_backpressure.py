"""faust's "producer buffer full" warnings: counted, and one logged per interval.

The records come from faust's own code: a real ``ProducerBuffer`` of a real app, filled
past its limit, whose ``wait_until_ebb`` logs the warning (then fails to flush, as the
buffer's service is not running; the warning is logged first).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import faust
import pytest
from faust.transport.producer import ProducerBuffer

from streams import backpressure, metrics

FULL_TOTAL = "drex_producer_buffer_full_total"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def app() -> faust.App:
    return faust.App("drex-test-backpressure", broker="kafka://127.0.0.1:1")


@pytest.fixture
def logged() -> Iterator[tuple[Collect, Clock, backpressure.BufferFullFilter]]:
    """A filter installed as the worker installs it (30 s), on a clock the test moves, and
    what faust's producer logger lets through."""
    logger = logging.getLogger(backpressure.PRODUCER_LOGGER)
    handler = Collect()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    clock = Clock()
    installed = backpressure.install(30.0)
    installed.clock = clock
    try:
        yield handler, clock, installed
    finally:
        logger.removeFilter(installed)
        logger.removeHandler(handler)
        logger.setLevel(level)


def full_buffer(app: faust.App, size: int) -> ProducerBuffer:
    buffer = ProducerBuffer()
    buffer.app = app
    for n in range(size):
        buffer.pending.put_nowait(n)
    return buffer


def wait_until_ebb(buffer: ProducerBuffer) -> None:
    """faust's call that logs the warning (and, as the buffer is not running, fails)."""

    async def wait() -> None:
        with pytest.raises(RuntimeError, match="not Running"):
            await buffer.wait_until_ebb()

    asyncio.run(wait())


def full_total() -> float:
    return metrics.REGISTRY.get_sample_value(FULL_TOTAL) or 0.0


def test_a_burst_logs_one_warning_and_counts_every_one(
    app: faust.App, logged: tuple[Collect, Clock, backpressure.BufferFullFilter]
) -> None:
    handler, clock, _ = logged
    buffer = full_buffer(app, 101)
    before = full_total()
    for n in range(250):
        buffer.pending.put_nowait(n)  # a different size each time, as in a real burst
        wait_until_ebb(buffer)
        clock.now += 0.01  # 250 in 2.5 s
    assert full_total() - before == 250
    assert handler.messages == ["producer buffer full size 102"]

    clock.now += 27.0  # 29.5 s after the first: still held back
    wait_until_ebb(buffer)
    assert len(handler.messages) == 1
    assert full_total() - before == 251

    clock.now += 1.0  # 30.5 s after the first: one passes, with what was held back
    wait_until_ebb(buffer)
    assert len(handler.messages) == 2
    assert handler.messages[1] == (
        "producer buffer full size 351 [and 250 more in the last 30 s: "
        "drex_producer_buffer_full_total counts them]"
    )
    assert full_total() - before == 252

    clock.now += 31.0  # a lone one after a quiet interval says nothing more
    wait_until_ebb(buffer)
    assert handler.messages[2] == "producer buffer full size 351"


def test_the_flush_line_of_a_held_back_warning_is_held_back_too(
    logged: tuple[Collect, Clock, backpressure.BufferFullFilter],
) -> None:
    handler, _, _ = logged
    logger = logging.getLogger(backpressure.PRODUCER_LOGGER)
    for size in (101, 102, 103):  # faust's two lines, as wait_until_ebb logs them
        logger.warning(f"producer buffer full size {size}")
        logger.info(f"producer flush took {0.25}")
    logger.info("something else faust says")
    assert handler.messages == [
        "producer buffer full size 101",
        "producer flush took 0.25",
        "something else faust says",
    ]


def test_interval_zero_logs_every_one_and_still_counts(
    logged: tuple[Collect, Clock, backpressure.BufferFullFilter],
) -> None:
    handler, _, installed = logged
    installed.interval = 0.0
    before = full_total()
    for size in range(101, 111):
        logging.getLogger(backpressure.PRODUCER_LOGGER).warning(f"producer buffer full size {size}")
    assert len(handler.messages) == 10
    assert full_total() - before == 10


def test_install_replaces_the_filter_it_put_there() -> None:
    logger = logging.getLogger(backpressure.PRODUCER_LOGGER)
    first = backpressure.install(30.0)
    second = backpressure.install(5.0)
    try:
        assert [f for f in logger.filters if isinstance(f, backpressure.BufferFullFilter)] == [
            second
        ]
        assert first is not second
    finally:
        logger.removeFilter(second)


def test_the_gauge_reads_the_buffer_without_making_a_producer(app: faust.App) -> None:
    assert backpressure.buffer_size(app) == 0.0
    assert app._producer is None  # a scrape does not make faust's producer
    for n in range(7):
        app.producer.buffer.pending.put_nowait(n)
    backpressure.bind_buffer_gauge(app)
    assert metrics.REGISTRY.get_sample_value("drex_producer_buffer_messages") == 7.0
