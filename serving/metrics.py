"""Prometheus metrics of the serving process (``drex serve``), exposed at ``/metrics``.

Module-level objects, as in :mod:`streams.metrics`; the two processes run apart, so each
has its own registry and names never collide (the worker's start ``drex_``, the server's
``drex_http_`` / ``drex_serving_`` / ``drex_recommendations_``).

Request latency buckets run from 0.5 ms (a recommendation from memory costs about a
millisecond) to 1 s (a request stuck behind a refresh or an overloaded CPU).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "drex_http_requests_total",
    "HTTP requests, by endpoint (route template) and status code",
    ["endpoint", "status"],
)
REQUEST_SECONDS = Histogram(
    "drex_http_request_seconds",
    "Seconds from request to response, by endpoint (route template)",
    ["endpoint"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
)
RECOMMENDATIONS = Counter(
    "drex_recommendations_total",
    "Recommendation lists served: personal (retrieval + DReX ranking) or fallback "
    "(popular items, for unknown or cold users)",
    ["kind"],
)
USERS = Gauge("drex_serving_users", "Users in the serving replica")
ITEMS = Gauge("drex_serving_items", "Items in the serving replica (and its FAISS index)")
READY = Gauge("drex_serving_ready", "1 once the replica has loaded the learner's state")
STALENESS = Gauge(
    "drex_serving_staleness_seconds",
    "Seconds since the learner wrote the newest micro-batch this replica has applied",
)
REFRESH_AGE = Gauge("drex_serving_refresh_age_seconds", "Seconds since the replica last caught up")
REFRESH_SECONDS = Histogram(
    "drex_serving_refresh_seconds",
    "Seconds per replica refresh (catch up with the learner store, apply the changes)",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0),
)
