"""Prometheus metrics of one server, in a registry of its own (two apps in one process never share counts).

``tips_requests_total{route,status}``, ``tips_request_seconds{route}`` (latency histogram),
``tips_batch_size{kind}`` (items per forward), ``tips_queue_depth`` (items waiting for the worker) and
``tips_batches_total{kind}``.
"""

from __future__ import annotations

from ..formats.optional import require

_prom = require("prometheus_client", "tips-serve metrics", extra="serve")
CollectorRegistry, Counter, Gauge, Histogram = _prom.CollectorRegistry, _prom.Counter, _prom.Gauge, _prom.Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    content_type = _prom.CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("tips_requests", "HTTP requests answered, by route and status", ["route", "status"],
                                registry=self.registry)
        self.latency = Histogram("tips_request_seconds", "time from a request's arrival to its answer", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("tips_batch_size", "items in one forward of the worker", ["kind"],
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.batches = Counter("tips_batches", "forwards run by the worker", ["kind"], registry=self.registry)
        self.queue_depth = Gauge("tips_queue_depth", "items waiting for the worker", registry=self.registry)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_batch(self, kind: str, size: int) -> None:
        self.batches.labels(kind).inc()
        self.batch_size.labels(kind).observe(size)

    def text(self) -> bytes:
        return _prom.generate_latest(self.registry)
