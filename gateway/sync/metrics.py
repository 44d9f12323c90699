"""Prometheus metrics of the sync path, registered on a registry the caller passes in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.sync.pipeline import PassResult

_P = "homeedge_gateway_sync"


class SyncMetrics:
    """Counters of aggregation, privacy, outbox and uplink; one instance per gateway."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # A private registry by default: tests build many instances, the default one would clash.
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.windows = Counter(f"{_P}_windows", "Windows aggregated locally", registry=r)
        self.late_readings = Counter(
            f"{_P}_late_readings", "Readings stored after their window was aggregated", registry=r
        )
        self.aggregates_released = Counter(
            f"{_P}_aggregates_released", "Window aggregates put in the outbox", registry=r
        )
        self.suppressed_windows = Counter(
            f"{_P}_suppressed_windows", "Windows under min_window_count, not released", registry=r
        )
        self.epsilon_refused = Counter(
            f"{_P}_epsilon_refused", "Noised windows refused: privacy budget spent", registry=r
        )
        self.invalid_aggregates = Counter(
            f"{_P}_invalid_aggregates",
            "Aggregates the wire schema refuses (e.g. a sum beyond 1e15), dropped, not sent",
            registry=r,
        )
        self.batches_enqueued = Counter(f"{_P}_batches_enqueued", "Batches written", registry=r)
        self.dropped = Counter(
            f"{_P}_outbox_dropped",
            "Pending batches dropped (reason: full = drop_oldest, ttl = expired)",
            ["reason"],
            registry=r,
        )
        self.refused = Counter(
            f"{_P}_outbox_refused", "New batches refused by a full outbox (refuse_new)", registry=r
        )
        self._outbox_depth = Gauge(f"{_P}_outbox_depth", "Pending batches", registry=r)
        self.depth = 0  # the gauge's value, for /healthz (a gauge is not read back)
        self.sent = Counter(
            f"{_P}_batches_sent", "Batches acknowledged by the cloud (2xx)", registry=r
        )
        self.duplicates = Counter(
            f"{_P}_batches_duplicate",
            "Acknowledged batches the cloud already had (200)",
            registry=r,
        )
        self.retries = Counter(
            f"{_P}_retries",
            "Failed sends that will be retried (any failure but 400, 409, 422)",
            registry=r,
        )
        self.retry_after_waits = Counter(
            f"{_P}_retry_after_waits",
            "Retries that waited as the cloud's Retry-After asked (429/503: backpressure)",
            registry=r,
        )
        self.send_failures = Counter(
            f"{_P}_send_failures",
            "Failed sends by HTTP status ('network' when there was no answer)",
            ["status"],
            registry=r,
        )
        self.rejected = Counter(
            f"{_P}_batches_rejected",
            "Batches the cloud refused as bad (400, 409, 422), parked",
            registry=r,
        )

    def observe_pass(self, result: PassResult) -> None:
        self.windows.inc(result.windows)
        self.late_readings.inc(result.closed.late)
        self.aggregates_released.inc(len(result.release.aggregates))
        self.suppressed_windows.inc(result.release.suppressed)
        self.epsilon_refused.inc(result.release.refused)
        self.batches_enqueued.inc(len(result.enqueued.seqs))
        self.invalid_aggregates.inc(result.enqueued.invalid)
        self.dropped.labels(reason="full").inc(result.enqueued.dropped)
        self.dropped.labels(reason="ttl").inc(result.enqueued.expired)
        self.refused.inc(result.enqueued.refused)
        self.set_outbox_depth(result.outbox_depth)

    def set_outbox_depth(self, depth: int) -> None:
        self.depth = depth
        self._outbox_depth.set(depth)
