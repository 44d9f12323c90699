"""Live figures straight from the `batches` table: the bandwidth report (bytes the gateways took
in from devices vs bytes they uplinked) and the dashboard's overview.

These read one small row per batch, so they are computed per request rather than by the
background task, and always show the newest upload.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from cloud.analytics.models import (
    BandwidthReport,
    GatewayBandwidth,
    GatewayLiveness,
    Overview,
    Snapshot,
)
from cloud.db import batches
from cloud.queries import gateway_status

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


async def bandwidth_report(engine: AsyncEngine) -> BandwidthReport:
    b = batches.c
    stmt = (
        select(
            b.gateway,
            func.count(),
            func.sum(b.ingested_messages),
            func.sum(b.ingested_bytes),
            func.sum(b.body_bytes),
            func.sum(b.wire_bytes),
        )
        .group_by(b.gateway)
        .order_by(b.gateway)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
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


async def overview(
    engine: AsyncEngine,
    configured: Sequence[str],
    snapshot: Snapshot,
    *,
    now: float,
    online_after_s: float,
    poll_s: float,
) -> Overview:
    statuses = await gateway_status(engine, configured, now=now)
    b = batches.c
    async with engine.connect() as conn:
        recent = await conn.scalar(select(func.count()).where(b.received_at >= now - RATE_WINDOW_S))
        rows = await conn.scalar(select(func.sum(b.aggregate_count)))
    band = await bandwidth_report(engine)
    liveness = [
        GatewayLiveness(
            gateway=s.gateway,
            online=s.last_batch_at is not None and now - s.last_batch_at <= online_after_s,
            last_batch_at=s.last_batch_at,
            lag_s=s.lag_s,
            missing=s.missing,
        )
        for s in statuses
    ]
    lags = [g.lag_s for g in liveness if g.online and g.lag_s is not None]
    return Overview(
        now=now,
        gateways_configured=len(configured),
        gateways_online=sum(g.online for g in liveness),
        gateways=liveness,
        max_lag_s=max(lags) if lags else None,
        batches_per_s=int(recent or 0) / RATE_WINDOW_S,
        aggregate_rows=int(rows or 0),
        homes=len({s.home for s in snapshot.standings} | set(snapshot.clusters.assignments)),
        bandwidth=band.fleet,
        anomalies_flagged=sum(a.flagged for a in snapshot.anomalies),
        clusters=snapshot.clusters.k,
        alarms_per_home_day=snapshot.events.alarms_per_home_day,
        analytics_computed_at=snapshot.computed_at,
        poll_s=poll_s,
    )
