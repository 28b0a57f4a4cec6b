"""The server's Prometheus metrics (``GET /metrics``), in a registry of their own per app, so two
apps in one process (tests) do not share counters. Stage latencies are clip-retrieval's idea: one
histogram per stage tells where a slow request spent its time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Seconds: from a thumbnail served from cache to a burst of 8-photo searches on 2 cores.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STAGES = ("decode", "embed", "search", "total")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("prodsearch_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("prodsearch_request_seconds", "HTTP request latency by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.stages = Histogram("prodsearch_search_stage_seconds", "Search latency by stage", ["stage"],
                                buckets=LATENCY_BUCKETS, registry=r)
        self.batch = Histogram("prodsearch_embed_batch_photos", "Photos per model step",
                               buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32), registry=r)
        self.generation = Gauge("prodsearch_index_generation", "Catalog generation searches answer from",
                                registry=r)
        self.images = Gauge("prodsearch_index_images", "Images in the generation searches answer from",
                            registry=r)

    def observe_stages(self, timings_ms: dict[str, float]) -> None:
        for stage in STAGES:
            self.stages.labels(stage).observe(timings_ms[stage] / 1000)

    def render(self) -> bytes:
        return generate_latest(self.registry)
