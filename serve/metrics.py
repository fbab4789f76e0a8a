"""Prometheus metrics of one server (a private registry, so several apps can share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class ServerMetrics:
    """The server's Prometheus metrics, in a registry of its own (``/metrics``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("entpruner_requests", "generate requests by model and status",
                                ["model", "status"], registry=self.registry)
        self.errors = Counter("entpruner_errors", "failed requests by reason", ["reason"],
                              registry=self.registry)
        self.latency = Histogram("entpruner_request_latency_seconds",
                                 "generate latency (queue + compute)", ["model"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_images = Histogram("entpruner_batch_images", "images per model batch",
                                      buckets=BATCH_BUCKETS, registry=self.registry)
        self.batch_requests = Histogram("entpruner_batch_requests", "requests per model batch",
                                        buckets=BATCH_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("entpruner_queue_depth", "requests waiting for a batch",
                                 registry=self.registry)
        self.images = Counter("entpruner_images_generated", "images returned", ["model"],
                              registry=self.registry)
        # what the batches cost: a guided call (both halves in one batch) counts once, and
        # an adaptive sampler's calls follow its batch, not its steps
        self.model_calls = Counter("entpruner_model_calls", "denoiser calls the samplers made",
                                   ["model"], registry=self.registry)

    def observe_batch(self, images: int, requests: int) -> None:
        """Record one batch run: its images and the requests merged into it."""
        self.batch_images.observe(images)
        self.batch_requests.observe(requests)
