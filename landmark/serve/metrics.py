"""Prometheus metrics of one service (prometheus_client), in a registry of its own so
that two apps in one process (tests, the Space) never share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """Requests by route and status, latency, batch sizes, queue depth, photos."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("landmark_requests", "HTTP requests answered",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("landmark_request_seconds", "Time to answer a request",
                                 ["route"], registry=self.registry,
                                 buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.batch = Histogram("landmark_batch_size", "Photos in one model call",
                               ["model"], registry=self.registry,
                               buckets=(1, 2, 4, 8, 16, 32, 64))
        self.queue = Gauge("landmark_queue_depth", "Photos waiting for a model call",
                           registry=self.registry)
        self.photos = Counter("landmark_photos", "Photos answered, by outcome",
                              ["outcome"], registry=self.registry)
