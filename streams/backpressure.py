"""faust's producer back-pressure: counted in a metric, logged once per interval.

When more than 100 messages wait in faust's producer buffer (table changelog writes and
the join's sends queued for the broker), a stream waits for it to drain, and faust logs
``producer buffer full size N`` at WARNING for every message it waits on, then ``producer
flush took S`` at INFO: hundreds of lines per burst. The worker's :class:`RepeatFilter`
(streams/shutdown.py) does not thin them, since each size makes a different message.

:class:`BufferFullFilter`, on faust's producer logger (:func:`install`, called by
``create_app``), counts every such warning in ``drex_producer_buffer_full_total`` and lets
one through per ``interval`` seconds, saying how many it held back since the last one;
the ``producer flush took`` line that follows a held-back warning is held back with it.
``drex_producer_buffer_messages`` reads the buffer's size at scrape time
(:func:`bind_buffer_gauge`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from streams import metrics

#: faust's module logger of ``faust/transport/producer.py`` (``mode.get_logger(__name__)``).
PRODUCER_LOGGER = "faust.transport.producer"
FULL = "producer buffer full size"
FLUSH_TOOK = "producer flush took"


class BufferFullFilter(logging.Filter):
    """Counts faust's ``producer buffer full`` warnings; lets the first through, then at
    most one per ``interval`` seconds with how many were held back since (``interval``
    0: every one). Other records of the logger pass, but for the ``producer flush took``
    line that follows a held-back warning."""

    def __init__(
        self,
        interval: float = 30.0,
        counter: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``counter``: a prometheus counter (default ``drex_producer_buffer_full_total``)."""
        super().__init__()
        self.interval = interval
        self.counter = metrics.PRODUCER_BUFFER_FULL if counter is None else counter
        self.clock = clock
        self._last: float | None = None  # when one was last let through
        self._held = 0  # held back since then
        self._hold_flush = False  # the last warning was held back: so is its flush line
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(FLUSH_TOOK):
            return not self._hold_flush
        if not message.startswith(FULL):
            return True
        self.counter.inc()
        now = self.clock()
        with self._lock:
            last = self._last
            if last is not None and self.interval > 0 and now - last < self.interval:
                self._held += 1
                self._hold_flush = True
                return False
            held, self._held, self._last, self._hold_flush = self._held, 0, now, False
        if held and last is not None:
            record.msg = (
                f"{message} [and {held} more in the last {now - last:.0f} s: "
                "drex_producer_buffer_full_total counts them]"
            )
            record.args = ()
        return True


def install(interval: float) -> BufferFullFilter:
    """Put a :class:`BufferFullFilter` on faust's producer logger, replacing one put there
    before (a filter on the logger itself: the records are logged by it, and those held
    back reach no handler)."""
    logger = logging.getLogger(PRODUCER_LOGGER)
    for old in [f for f in logger.filters if isinstance(f, BufferFullFilter)]:
        logger.removeFilter(old)
    new = BufferFullFilter(interval)
    logger.addFilter(new)
    return new


def buffer_size(app: Any) -> float:
    """Messages in ``app``'s producer buffer; 0 before faust made its producer (read
    without making it: a scrape runs in the metrics server's thread)."""
    producer = getattr(app, "_producer", None)
    if producer is None:
        return 0.0
    return float(producer.buffer.size)


def bind_buffer_gauge(app: Any) -> None:
    """``drex_producer_buffer_messages`` reads ``app``'s producer buffer at scrape time."""
    metrics.bind_gauge(metrics.PRODUCER_BUFFER, lambda: buffer_size(app))
