"""The gateway's cloud-sync path: window aggregation, privacy filter, durable outbox, uplink.

Its tables (`gateway.sync.tables`) are part of the gateway's schema (`gateway.schema`), which
`gateway.db.make_engine` creates whatever was imported.

Wiring in the gateway app:

- writer thread, every `AggregationSettings.interval_s`:
  ``aggregate_and_enqueue(conn, time.time(), pipeline)`` in one transaction, then
  ``metrics.observe_pass(result)`` and ``uplink.notify()`` when it enqueued batches;
- event loop: ``Uplink(settings.uplink, run_db=..., metrics=metrics).run()`` as a task.
"""

from __future__ import annotations

from gateway.sync.metrics import SyncMetrics
from gateway.sync.pipeline import PassResult, SyncPipeline, aggregate_and_enqueue
from gateway.sync.settings import (
    AggregationSettings,
    PrivacySettings,
    RoomClass,
    UplinkSettings,
)
from gateway.sync.uplink import RunDb, Uplink, thread_run_db

__all__ = [
    "AggregationSettings",
    "PassResult",
    "PrivacySettings",
    "RoomClass",
    "RunDb",
    "SyncMetrics",
    "SyncPipeline",
    "Uplink",
    "UplinkSettings",
    "aggregate_and_enqueue",
    "thread_run_db",
]
