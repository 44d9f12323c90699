"""Prometheus metrics of one cloud app, in a registry of its own (no process-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class CloudMetrics:
    """The collectors of one app; `registry` is what /metrics renders."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.batches_stored = Counter(
            "homeedge_cloud_batches_stored", "Batches stored", registry=self.registry
        )
        self.batches_duplicate = Counter(
            "homeedge_cloud_batches_duplicate",
            "Batches received again and not stored twice",
            registry=self.registry,
        )
        self.batches_rejected = Counter(
            "homeedge_cloud_batches_rejected",
            "Batch uploads rejected, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.unavailable = Counter(
            "homeedge_cloud_unavailable",
            "503 answers with Retry-After (backpressure), by reason",
            ["reason"],
            registry=self.registry,
        )
        self.aggregate_rows = Counter(
            "homeedge_cloud_aggregate_rows", "Aggregate rows stored", registry=self.registry
        )
        # What the routes that read a body received and inflated: a body no route reads is in
        # neither (a gzip bomb sent to a route that does not read it inflates nothing).
        self.request_body_bytes = Counter(
            "homeedge_cloud_request_body_bytes",
            "Bytes of request bodies read by routes, as received (wire) and after gzip (inflated)",
            ["stage"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "homeedge_cloud_request_seconds",
            "Request latency by route and status",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )
