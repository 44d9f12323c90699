"""The analytics results as value objects: what the background task stores and the API serves.

msgspec Structs, so one definition gives the stored JSON, the HTTP answer and the OpenAPI schema.
"""

from __future__ import annotations

import msgspec


class FleetStat(msgspec.Struct, frozen=True):
    """Percentiles across homes of their daily means, for one metric and device class."""

    metric: str
    device_class: str
    unit: str
    homes: int
    p10: float
    p50: float
    p90: float
    mean: float


class HomeStanding(msgspec.Struct, frozen=True):
    """One home against the fleet: its mean of daily means and its percentile rank (0-100)."""

    home: str
    metric: str
    device_class: str
    value: float
    rank_pct: float
    days: int


class Cluster(msgspec.Struct, frozen=True):
    """A group of homes with similar daily profiles; centroid: family -> 24 hourly values
    (each profile divided by its own daily mean, so 1.0 is an average hour), the mean of the
    members with data in that hour; None where no member has any (`cloud.analytics.clusters`)."""

    id: int
    size: int
    homes: list[str]
    centroid: dict[str, list[float | None]]


class ClusterReport(msgspec.Struct, frozen=True):
    k: int
    silhouette: float | None
    families: list[str]
    clusters: list[Cluster]
    assignments: dict[str, int]


class Anomaly(msgspec.Struct, frozen=True):
    """A home's newest complete hourly mean of a metric against its own history and its peers.

    z-scores are robust: (value - median) / (1.4826 * MAD), with the value's privacy noise
    added to that scale for a noised metric; `peers` says whether the comparison group was the
    home's cluster or, when that is too small, the whole fleet. A z is None where there is
    nothing to compare with (too little history or too few peers, or a constant sample of an
    unregistered metric).
    """

    home: str
    metric: str
    t: float
    value: float
    history_median: float | None
    z_history: float | None
    peer_median: float | None
    z_peers: float | None
    peers: str | None
    score: float
    flagged: bool
    # The privacy noise's standard deviation in `value` (noised metrics, `cloud.noise`); the
    # z-scores count it in their scale, so noise alone does not rank. None: an exact value.
    noise_sd: float | None = None


class HomeDayEvents(msgspec.Struct, frozen=True):
    """Edge inference results of one home on one day (UTC)."""

    home: str
    day: float
    alarms: float
    anomalies: float
    speech_share: float | None
    occupancy_share: float | None
    keywords: float = 0.0  # voice commands recognised


class EventPoint(msgspec.Struct, frozen=True):
    """An hour of one home with at least one alarm, anomaly or voice command detected at the
    edge."""

    t: float
    home: str
    alarms: float
    anomalies: float
    keywords: float = 0.0


class EventReport(msgspec.Struct, frozen=True):
    days: list[HomeDayEvents]
    timeline: list[EventPoint]
    alarms_per_home_day: float | None
    speech_share: float | None


class Snapshot(msgspec.Struct, frozen=True):
    """One analytics run over the rollups in [since, until)."""

    computed_at: float | None
    since: float | None
    until: float | None
    duration_s: float
    fleet: list[FleetStat]
    standings: list[HomeStanding]
    clusters: ClusterReport
    anomalies: list[Anomaly]
    events: EventReport


EMPTY_SNAPSHOT = Snapshot(
    computed_at=None,
    since=None,
    until=None,
    duration_s=0.0,
    fleet=[],
    standings=[],
    clusters=ClusterReport(k=0, silhouette=None, families=[], clusters=[], assignments={}),
    anomalies=[],
    events=EventReport(days=[], timeline=[], alarms_per_home_day=None, speech_share=None),
)


class GatewayBandwidth(msgspec.Struct, frozen=True):
    """Bytes a gateway took in from devices vs bytes it sent to the cloud."""

    gateway: str
    batches: int
    ingested_messages: int
    ingested_bytes: int
    uplink_body_bytes: int  # JSON after decompression
    uplink_wire_bytes: int  # as sent (gzip)
    saving_pct: float | None  # 100 * (1 - wire / ingested)
    reduction_x: float | None  # ingested / wire


class BandwidthReport(msgspec.Struct, frozen=True):
    fleet: GatewayBandwidth
    gateways: list[GatewayBandwidth]


class GatewayLiveness(msgspec.Struct, frozen=True):
    gateway: str
    online: bool
    last_batch_at: float | None
    lag_s: float | None
    missing: int


class Overview(msgspec.Struct, frozen=True):
    """The dashboard's headline figures."""

    now: float
    gateways_configured: int
    gateways_online: int
    gateways: list[GatewayLiveness]
    max_lag_s: float | None
    batches_per_s: float  # over the last minute
    aggregate_rows: int
    homes: int
    bandwidth: GatewayBandwidth
    anomalies_flagged: int
    clusters: int
    alarms_per_home_day: float | None
    analytics_computed_at: float | None
    poll_s: float


class MetricSpan(msgspec.Struct, frozen=True):
    metric: str
    unit: str
    first: float
    last: float
    homes: int
    windows: int
    # Some of its windows are noised at the edge (policy ``noised``, e.g. health metrics).
    noised: bool = False


class RollupsReport(msgspec.Struct, frozen=True):
    """What the rollup tables hold over the analytics' look-back period, which ends with the
    newest day of data (`since` to `data_end`): per metric the days covered, homes, windows.
    A bounded period, so the answer reads series x look-back days of day rows, not the whole
    retained history; a metric with no data in it is not listed."""

    data_end: float | None
    metrics: list[MetricSpan]
    since: float | None = None


class FleetReport(msgspec.Struct, frozen=True):
    computed_at: float | None
    since: float | None
    until: float | None
    stats: list[FleetStat]
    homes: list[HomeStanding]


class ClustersResponse(msgspec.Struct, frozen=True):
    computed_at: float | None
    report: ClusterReport


class AnomaliesResponse(msgspec.Struct, frozen=True):
    computed_at: float | None
    threshold: float
    anomalies: list[Anomaly]


class EventsResponse(msgspec.Struct, frozen=True):
    computed_at: float | None
    report: EventReport


class RunResult(msgspec.Struct, frozen=True):
    computed_at: float
    duration_s: float
    homes: int
