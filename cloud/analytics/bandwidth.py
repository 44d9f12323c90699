"""Live figures from the per-gateway statistics ingest keeps (`gateway_stats`, migration
0009): the bandwidth report (bytes the gateways took in from devices vs bytes they uplinked) and
the dashboard's overview.

These read one row per gateway (and the overview the last minute's batches, through the
receive-time index), not the `batches` table, which grows with history; they are computed per
request rather than by the background task, and always show the newest upload.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from cloud.analytics.models import (
    BandwidthReport,
    GatewayBandwidth,
    GatewayLiveness,
    Overview,
    Snapshot,
)
from cloud.db import batches, gateway_stats

RATE_WINDOW_S = 60.0


def _bandwidth(
    gateway: str, n: int, messages: int, ingested: int, body: int, wire: int
) -> GatewayBandwidth:
    return GatewayBandwidth(
        gateway=gateway,
        batches=n,
        ingested_messages=messages,
        ingested_bytes=ingested,
        uplink_body_bytes=body,
        uplink_wire_bytes=wire,
        saving_pct=100.0 * (1.0 - wire / ingested) if ingested > 0 else None,
        reduction_x=ingested / wire if wire > 0 else None,
    )


def bandwidth_select() -> Any:
    """The statement `bandwidth_report` runs: one row per gateway."""
    s = gateway_stats.c
    return select(
        s.gateway, s.batches, s.ingested_messages, s.ingested_bytes, s.body_bytes, s.wire_bytes
    ).order_by(s.gateway)


async def bandwidth_report(engine: AsyncEngine) -> BandwidthReport:
    async with engine.connect() as conn:
        rows = (await conn.execute(bandwidth_select())).all()
    return _bandwidth_of(rows)


def _bandwidth_of(rows: Sequence[Any]) -> BandwidthReport:
    gateways = [_bandwidth(g, *(int(v) for v in rest)) for g, *rest in rows]
    totals = [sum(getattr(g, f) for g in gateways) for f in _TOTALLED]
    return BandwidthReport(fleet=_bandwidth("fleet", *totals), gateways=gateways)


_TOTALLED = (
    "batches",
    "ingested_messages",
    "ingested_bytes",
    "uplink_body_bytes",
    "uplink_wire_bytes",
)


def liveness_select() -> Any:
    """The overview's per-gateway figures: one row per gateway."""
    s = gateway_stats.c
    return select(
        s.gateway,
        s.batches,
        s.ingested_messages,
        s.ingested_bytes,
        s.body_bytes,
        s.wire_bytes,
        s.last_batch_at,
        s.window_end_max,
        s.last_seq - s.seqs,
        s.aggregate_rows,
    ).order_by(s.gateway)


def recent_batches_select(now: float) -> Any:
    """The batches received in the rate window before `now`: a range of the receive-time index."""
    return select(func.count()).where(batches.c.received_at >= now - RATE_WINDOW_S)


async def overview(
    engine: AsyncEngine,
    configured: Sequence[str],
    snapshot: Snapshot,
    *,
    now: float,
    online_after_s: float,
    poll_s: float,
) -> Overview:
    async with engine.connect() as conn:
        recent = await conn.scalar(recent_batches_select(now))
        rows = (await conn.execute(liveness_select())).all()
    band = _bandwidth_of([row[:6] for row in rows])
    seen = {row[0]: row for row in rows}
    liveness = []
    for gateway in sorted(set(configured) | set(seen)):
        row = seen.get(gateway)
        if row is None:
            liveness.append(GatewayLiveness(gateway, False, None, None, 0))
            continue
        last_batch_at, window_end, missing = row[6], row[7], row[8]
        liveness.append(
            GatewayLiveness(
                gateway=gateway,
                online=now - last_batch_at <= online_after_s,
                last_batch_at=last_batch_at,
                lag_s=None if window_end is None else now - window_end,
                # Never below 0: see gateway_stats.seqs (two batches of one seq at once).
                missing=max(int(missing), 0),
            )
        )
    lags = [g.lag_s for g in liveness if g.online and g.lag_s is not None]
    return Overview(
        now=now,
        gateways_configured=len(configured),
        gateways_online=sum(g.online for g in liveness),
        gateways=liveness,
        max_lag_s=max(lags) if lags else None,
        batches_per_s=int(recent or 0) / RATE_WINDOW_S,
        aggregate_rows=sum(int(row[9]) for row in rows),
        homes=len({s.home for s in snapshot.standings} | set(snapshot.clusters.assignments)),
        bandwidth=band.fleet,
        anomalies_flagged=sum(a.flagged for a in snapshot.anomalies),
        clusters=snapshot.clusters.k,
        alarms_per_home_day=snapshot.events.alarms_per_home_day,
        analytics_computed_at=snapshot.computed_at,
        poll_s=poll_s,
    )
