"""Prometheus metrics of the streaming worker, served by :func:`serve`.

Metric objects are module-level, as is the prometheus_client idiom; they hold counts
only, never learner state. Gauges whose value belongs to an object (the index, the
learner) are bound to it with :func:`bind_gauge` when it exists.

They live in a registry of their own, :data:`REGISTRY`, which joins the process's default
registry only in a worker (:func:`expose`, called by ``create_app`` and :func:`serve`).
Importing this module registers nothing: ``drex serve`` runs in a CLI that imports it
(``scrape``), and its ``/metrics`` must carry the server's series only, not twenty worker
series stuck at zero.

Latency buckets start at 5 ms: a micro-batch of 64 interactions costs tens of ms on a
CPU with the bundled encoder, and seconds when the machine is overloaded, which is the
case an alert should catch.
"""

from __future__ import annotations

from collections.abc import Callable

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

#: The worker's metrics; in the default registry once :func:`expose` has run.
REGISTRY = CollectorRegistry(auto_describe=True)
_EXPOSED: set[CollectorRegistry] = set()  # the default registry, once REGISTRY is in it

EVENTS_IN = Counter(
    "drex_events_in_total", "Messages consumed, by topic", ["topic"], registry=REGISTRY
)
JOIN_OUTCOMES = Counter(
    "drex_join_outcomes_total",
    "Join results: emitted interactions by modality (both, review_only, rating_only), "
    "why a single part went alone (expired, late, superseded), dropped duplicates, "
    "source messages dropped as applied before a restart (replayed)",
    ["outcome"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "drex_dead_letters_total", "Rejected messages, by reason", ["reason"], registry=REGISTRY
)
INTERACTIONS_SKIPPED = Counter(
    "drex_interactions_skipped_total",
    "Interactions not applied because they already were (offset: redelivered; "
    "applied: re-emitted by the join after a restart)",
    ["reason"],
    registry=REGISTRY,
)
SOURCE_RESETS = Counter(
    "drex_source_resets_total",
    "New incarnations of a topic found under stored offsets (a broker restarted empty, a "
    "topic made again), by what was re-anchored: learner (its interactions offset, "
    "streams/source.py), table (a changelog partition, streams/recovery.py) or join (a "
    "join-state partition, streams/join_state.py)",
    ["state"],
    registry=REGISTRY,
)
INTERACTIONS_APPLIED = Counter(
    "drex_interactions_applied_total", "Interactions learned", registry=REGISTRY
)
BATCH_SIZE = Histogram(
    "drex_learn_batch_size",
    "Interactions per learner micro-batch",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
    registry=REGISTRY,
)
LEARN_SECONDS = Histogram(
    "drex_learn_seconds",
    "Seconds per micro-batch: prediction + update (learn_many), with the encoding of "
    "reviews not encoded ahead",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
ENCODE_SECONDS = Histogram(
    "drex_encode_seconds",
    "Seconds per take encoding its reviews ahead of its micro-batches",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
PERSIST_SECONDS = Histogram(
    "drex_persist_seconds",
    "Seconds per micro-batch to write the learner store (one RocksDB WriteBatch)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)
# Prequential (test-then-train) error: each score is computed before its label is used.
PREQ_SQUARED_ERROR = Counter(
    "drex_prequential_squared_error_total",
    "Sum of squared errors of rated interactions",
    registry=REGISTRY,
)
PREQ_ABSOLUTE_ERROR = Counter(
    "drex_prequential_absolute_error_total",
    "Sum of absolute errors of rated interactions",
    registry=REGISTRY,
)
PREQ_RATED = Counter("drex_prequential_rated_total", "Rated interactions scored", registry=REGISTRY)
PREQ_LOSS = Gauge(
    "drex_prequential_mse", "Squared error, exponentially weighted (alpha 0.01)", registry=REGISTRY
)
PREQ_MAE = Gauge(
    "drex_prequential_mae", "Absolute error, exponentially weighted (alpha 0.01)", registry=REGISTRY
)
USERS = Gauge("drex_users", "Users known to the learner", registry=REGISTRY)
ITEMS = Gauge("drex_items", "Items known to the learner", registry=REGISTRY)
REVIEWS_CACHED = Gauge(
    "drex_reviews_cached",
    "Encoded reviews the learner's cache names (pending or ahead; past the memory budget "
    "the oldest are read back from the store)",
    registry=REGISTRY,
)
REVIEW_CACHE_BYTES = Gauge(
    "drex_review_cache_bytes",
    "Memory the encoded reviews loaded in the learner's cache hold (DREX_REVIEW_CACHE_MB)",
    registry=REGISTRY,
)
APPLIED_TOTAL = Gauge(
    "drex_learner_interactions",
    "Interactions in the learner store (survives restarts)",
    registry=REGISTRY,
)
LEARNER_OFFSET = Gauge(
    "drex_learner_offset", "Last interactions offset in the learner store", registry=REGISTRY
)
FAISS_SIZE = Gauge("drex_faiss_items", "Items in the FAISS index", registry=REGISTRY)
FAISS_AGE = Gauge(
    "drex_faiss_refresh_age_seconds", "Seconds since the index last changed", registry=REGISTRY
)
CHECKPOINT_AGE = Gauge(
    "drex_checkpoint_age_seconds", "Seconds since the last checkpoint", registry=REGISTRY
)
JOIN_PARTITIONS = Gauge(
    "drex_join_partitions", "Source partitions this worker joins", registry=REGISTRY
)
CONSUMER_LAG = Gauge(
    "drex_consumer_lag_messages",
    "Messages of the partitions this worker is assigned that the consumer group has not "
    "committed (end offset minus committed offset, as kafka-exporter), by topic and "
    "partition (streams/lag.py)",
    ["topic", "partition"],
    registry=REGISTRY,
)
OWNS_LEARNER = Gauge(
    "drex_owns_learner", "1 while this worker holds the learner", registry=REGISTRY
)
PRODUCER_BUFFER_FULL = Counter(
    "drex_producer_buffer_full",
    "Back-pressure events: times a stream found faust's producer buffer full (over 100 "
    "messages waiting for the broker) and waited for it to drain; faust logs 'producer "
    "buffer full size N' for each, the worker one per log repeat interval "
    "(streams/backpressure.py)",
    registry=REGISTRY,
)
PRODUCER_BUFFER = Gauge(
    "drex_producer_buffer_messages",
    "Messages waiting in faust's producer buffer (table changelog writes, the join's "
    "sends); past 100 a stream waits for it (drex_producer_buffer_full_total)",
    registry=REGISTRY,
)

_EWMA_ALPHA = 0.01


class Prequential:
    """Running prequential error; feeds the counters and the smoothed gauges."""

    def __init__(self) -> None:
        self.mse: float | None = None
        self.mae: float | None = None

    def update(self, errors: list[float]) -> None:
        for err in errors:
            sq, ab = err * err, abs(err)
            self.mse = sq if self.mse is None else self.mse + _EWMA_ALPHA * (sq - self.mse)
            self.mae = ab if self.mae is None else self.mae + _EWMA_ALPHA * (ab - self.mae)
        if errors:
            PREQ_SQUARED_ERROR.inc(sum(e * e for e in errors))
            PREQ_ABSOLUTE_ERROR.inc(sum(abs(e) for e in errors))
            PREQ_RATED.inc(len(errors))
            assert self.mse is not None and self.mae is not None
            PREQ_LOSS.set(self.mse)
            PREQ_MAE.set(self.mae)


def bind_gauge(gauge: Gauge, read: Callable[[], float]) -> None:
    """Make ``gauge`` read its value from ``read`` at scrape time."""
    gauge.set_function(read)


def scrape(port: int, host: str = "127.0.0.1") -> dict[str, float]:
    """A worker's metrics as {sample name with labels: value}; {} when unreachable.

    For tests and benchmarks that read a running worker from outside.
    """
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def expose() -> None:
    """Put the worker's metrics in the process's default registry (once): a worker's
    ``/metrics`` then serves them beside the process and Python collectors."""
    if prometheus_client.REGISTRY not in _EXPOSED:
        prometheus_client.REGISTRY.register(REGISTRY)
        _EXPOSED.add(prometheus_client.REGISTRY)


def serve(port: int, host: str = "127.0.0.1") -> int:
    """Start the metrics HTTP server in a daemon thread; returns the bound port.

    ``port`` 0 picks a free port (tests run several workers on one machine).
    """
    expose()
    server, _thread = start_http_server(port, addr=host)
    return int(server.server_port)
