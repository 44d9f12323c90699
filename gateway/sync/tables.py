"""The cloud-sync path's own SQLite tables, defined with the rest of the gateway's schema in
`gateway.schema` (created or migrated by `gateway.db.make_engine`) and re-exported here.

- ``sync_watermark``: how far the window aggregation got (one row), so a restarted gateway resumes
  without losing or double-counting a window.
- ``aggregates``: every closed window's full statistics, with real home and room names. Local
  only: what leaves the home is derived from it by the privacy filter.
- ``late_readings``: readings stored after their window had been aggregated, counted per window.
- ``privacy_ledger``: epsilon spent per home and budget period.
- ``outbox`` + ``outbox_seq``: durable batches waiting for the uplink, and the per-gateway
  sequence counter (kept apart so pruning rows never reuses a seq).
- ``sync_counters``: durable totals (dropped, refused, suppressed, ...) for reports.
"""

from __future__ import annotations

from gateway.schema import (
    aggregates,
    late_readings,
    outbox,
    outbox_seq,
    privacy_ledger,
    sync_counters,
    sync_watermark,
)

__all__ = [
    "aggregates",
    "late_readings",
    "outbox",
    "outbox_seq",
    "privacy_ledger",
    "sync_counters",
    "sync_watermark",
]
