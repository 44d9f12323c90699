"""The gateway's Prometheus instruments, on a registry of its own (never the global default).

Each `Gateway` owns one `GatewayMetrics`, so tests can run several gateways in one process.
Other components register their own instruments on ``metrics.registry``.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "homeedge_gateway"


class GatewayMetrics:
    """Counters, gauges and histograms of the ingest path."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.received = Counter(
            f"{PREFIX}_messages_received",
            "MQTT messages received, by kind (telemetry, audio, state, adapter, other)",
            ["kind"],
            registry=r,
        )
        self.rows_stored = Counter(
            f"{PREFIX}_rows_stored", "reading rows committed to SQLite", registry=r
        )
        self.duplicates = Counter(
            f"{PREFIX}_duplicate_rows",
            "reading rows ignored because they were stored already (redelivery)",
            registry=r,
        )
        self.dead_letters = Counter(
            f"{PREFIX}_dead_letters",
            "messages stored as dead letters or counted again on their row, by reason "
            "(a redelivered or retained copy of a stored one is not)",
            ["reason"],
            registry=r,
        )
        self.audio_frames = Counter(
            f"{PREFIX}_audio_frames", "valid audio frames received (never stored)", registry=r
        )
        self.acks = Counter(
            f"{PREFIX}_acks", "QoS 1 messages acknowledged to the broker", registry=r
        )
        self.stale_acks = Counter(
            f"{PREFIX}_stale_acks_skipped",
            "acks not sent because the message came on an earlier connection (it is redelivered)",
            registry=r,
        )
        self.reconnects = Counter(
            f"{PREFIX}_mqtt_reconnects", "MQTT connections lost and re-established", registry=r
        )
        self.queue_full = Counter(
            f"{PREFIX}_queue_full",
            "times a bounded queue was full, by queue (ingest: MQTT thread waits; callbacks and "
            "audio: oldest item dropped)",
            ["queue"],
            registry=r,
        )
        self.dropped = Counter(
            f"{PREFIX}_queue_dropped", "items dropped by a drop-oldest queue", ["queue"], registry=r
        )
        self.connect_attempts = Counter(
            f"{PREFIX}_mqtt_connect_attempts",
            "MQTT connection attempts (the first and every retry; paced by the reconnect backoff)",
            registry=r,
        )
        self.connect_failures = Counter(
            f"{PREFIX}_mqtt_connect_failures",
            "MQTT connection attempts that failed, by reason (unreachable, tls, refused: the "
            "broker's CONNACK said no, e.g. bad credentials)",
            ["reason"],
            registry=r,
        )
        self.commits = Counter(f"{PREFIX}_commits", "writer transactions committed", registry=r)
        self.commit_seconds = Histogram(
            f"{PREFIX}_commit_seconds",
            "time to write and commit one batch",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.batch_rows = Histogram(
            f"{PREFIX}_batch_messages",
            "messages per committed batch",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000),
            registry=r,
        )
        self.checkpoints = Counter(
            f"{PREFIX}_wal_checkpoints", "WAL checkpoints run beside the writer", registry=r
        )
        self.checkpoint_failures = Counter(
            f"{PREFIX}_wal_checkpoint_failures",
            "WAL checkpoints that failed (e.g. the disk full); the task tries again next interval",
            registry=r,
        )
        self.writer_errors = Counter(
            f"{PREFIX}_writer_errors", "batches or jobs that failed in the writer", registry=r
        )
        self.published = Counter(
            f"{PREFIX}_mqtt_published",
            "messages the gateway published on its own session (events, discovery, status) by "
            "outcome: queued (paho sends it, again after a reconnect) or dropped (queue full, "
            "or the gateway not running)",
            ["outcome"],
            registry=r,
        )
        self.task_restarts = Counter(
            f"{PREFIX}_task_restarts",
            "background tasks restarted after a crash",
            ["task"],
            registry=r,
        )
        self._queue_depth = Gauge(
            f"{PREFIX}_queue_depth", "items waiting in a queue", ["queue"], registry=r
        )
        self._connected = Gauge(f"{PREFIX}_mqtt_connected", "1 when connected", registry=r)
        # The device table (gateway.device_table): admission of device ids on the ingest path.
        self.devices_evicted = Counter(
            f"{PREFIX}_devices_evicted",
            "device ids forgotten after devices.idle_s without a message",
            registry=r,
        )
        self._devices_tracked = Gauge(
            f"{PREFIX}_devices_tracked",
            "device ids the gateway keeps state for, by kind (all; microphone: those that sent "
            "audio); new ones beyond devices.max_devices are dead letters 'too_many_devices'",
            ["kind"],
            registry=r,
        )

    def watch_queue(self, name: str, depth: Callable[[], float]) -> None:
        """Report `depth()` as the current depth of queue `name` at scrape time."""
        self._queue_depth.labels(name).set_function(depth)

    def watch_devices(self, tracked: Callable[[], float], microphones: Callable[[], float]) -> None:
        """Report the device table's sizes at scrape time."""
        self._devices_tracked.labels("all").set_function(tracked)
        self._devices_tracked.labels("microphone").set_function(microphones)

    def watch_connected(self, connected: Callable[[], bool]) -> None:
        self._connected.set_function(lambda: 1.0 if connected() else 0.0)
