"""Fleet anomaly ranking: which homes' metrics deviate from their own history and their peers.

For every home and metric the newest hourly mean is compared, with robust z-scores
(median and MAD, so one earlier outlier does not hide the next), against
- the same home's earlier hourly means in the look-back period, and
- the other homes' means in the same hour: the home's cluster when it has enough members with
  data, else the whole fleet.
A home is anomalous when it deviates from both: the score is the smaller absolute z when both
comparisons exist (the daily cycle or a fleet-wide change moves a home away from its own history
but not from its peers; a home that is always unlike its peers is not unlike its own history),
else the one that exists. The list is sorted by score.

Cost: the peer statistics of one (metric, hour, cluster) group are computed once for the group
when it has more than PEER_EXACT members, and the home's own value stays in its peers' sample
then (one value in more than PEER_EXACT moves a median and a MAD by at most one rank, well
under a percent of the spread); smaller groups leave the home out exactly. So a run costs
n log n in the homes instead of n squared.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from cloud.analytics.fleet import Cell, analytics_session
from cloud.analytics.models import Anomaly
from cloud.analytics.rollups import STORED_S

MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation
MEAN_AD_TO_SIGMA = 1.2533  # the same for the mean absolute deviation (sqrt(pi / 2))
# Scales never go below this share of the median: with few peers, or a very steady history, the
# MAD can be tiny, and a 1 % wobble should not read as a 10-sigma event.
MIN_SCALE_SHARE = 0.05
Z_CAP = 99.0  # a deviation from a perfectly constant sample; finite so it can be ranked and shown
MIN_HISTORY = 6
MIN_PEERS = 2
PEER_EXACT = 200


def robust_z(value: float, sample: Sequence[float]) -> tuple[float, float]:
    """(z, median) of `value` against `sample`: (value - median) / (1.4826 * MAD).

    When more than half the sample is one value the MAD is 0; the mean absolute deviation
    stands in. The scale is at least MIN_SCALE_SHARE of |median|; when it is still 0 (a constant
    zero sample) any difference scores Z_CAP.
    """
    return z_against(value, *robust_scale(sample))


def robust_scale(sample: Sequence[float]) -> tuple[float, float]:
    """(median, scale) of `sample` as `robust_z` uses them."""
    data = np.asarray(sample, dtype=float)
    median = float(np.median(data))
    deviations = np.abs(data - median)
    scale = MAD_TO_SIGMA * float(np.median(deviations))
    if scale == 0:
        scale = MEAN_AD_TO_SIGMA * float(deviations.mean())
    return median, max(scale, MIN_SCALE_SHARE * abs(median))


def z_against(value: float, median: float, scale: float) -> tuple[float, float]:
    """(z, median) of `value` for a sample of that median and scale."""
    if scale == 0:
        return (0.0 if value == median else float(np.sign(value - median)) * Z_CAP), median
    return float(np.clip((value - median) / scale, -Z_CAP, Z_CAP)), median


@dataclass(frozen=True)
class Latest:
    """One home's newest hourly mean of a metric, with the robust statistics of its earlier
    hours (None below MIN_HISTORY of them), and its peers: every home's mean in that hour."""

    home: str
    metric: str
    t: float
    value: float
    history: int
    history_median: float | None
    history_mad: float | None
    history_mean_ad: float | None


def latest_from_cells(hours: Iterable[Cell]) -> tuple[list[Latest], HourValues]:
    """The newest hour of every (home, metric) of `hours`, and the homes' means per (metric,
    hour) (what the database computes on PostgreSQL, `load_latest`)."""
    series: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for cell in hours:
        mean = cell.mean
        if mean is not None:
            series[(cell.home, cell.metric)].append((cell.t, mean))
    by_hour: HourValues = defaultdict(dict)
    latest = []
    for (home, metric), points in series.items():
        points.sort()
        for t, mean in points:
            by_hour[(metric, t)][home] = mean
        t, value = points[-1]
        history = np.array([mean for _, mean in points[:-1]], dtype=float)
        median = mad = mean_ad = None
        if len(history):
            median = float(np.median(history))
            deviations = np.abs(history - median)
            mad, mean_ad = float(np.median(deviations)), float(deviations.mean())
        latest.append(Latest(home, metric, t, value, len(history), median, mad, mean_ad))
    return latest, by_hour


# (metric, hour) -> home -> that home's mean in that hour
HourValues = dict[tuple[str, float], dict[str, float]]

_LATEST_SQL = """
WITH hourly AS (
  SELECT home, metric, bucket_start AS t, sum(weighted) / sum(count) AS m
  FROM rollups
  WHERE bucket_s = :width AND bucket_start >= :since AND bucket_start < :until
  GROUP BY home, metric, bucket_start
  HAVING sum(count) > 0
), ranked AS (
  SELECT home, metric, t, m, row_number() OVER (PARTITION BY home, metric ORDER BY t DESC) AS rn
  FROM hourly
), hist AS (
  SELECT home, metric, count(*) AS n, percentile_cont(0.5) WITHIN GROUP (ORDER BY m) AS med
  FROM ranked WHERE rn > 1 GROUP BY home, metric
), dev AS (
  SELECT r.home, r.metric,
         percentile_cont(0.5) WITHIN GROUP (ORDER BY abs(r.m - h.med)) AS mad,
         avg(abs(r.m - h.med)) AS mean_ad
  FROM ranked r JOIN hist h ON h.home = r.home AND h.metric = r.metric
  WHERE r.rn > 1 GROUP BY r.home, r.metric
), newest_hours AS (
  SELECT DISTINCT metric, t FROM ranked WHERE rn = 1
)
SELECT p.home, p.metric, p.t, p.m, p.rn = 1 AS newest, coalesce(h.n, 0) AS n, h.med, d.mad,
       d.mean_ad
FROM ranked p
JOIN newest_hours USING (metric, t)
LEFT JOIN hist h ON p.rn = 1 AND h.home = p.home AND h.metric = p.metric
LEFT JOIN dev d ON p.rn = 1 AND d.home = p.home AND d.metric = p.metric
"""


async def load_latest(
    engine: AsyncEngine, since: float, until: float
) -> tuple[list[Latest], HourValues]:
    """`latest_from_cells` of the hour cells in [since, until), computed by PostgreSQL: the
    medians and MADs of every home's history (percentile_cont, numpy's linear interpolation)
    and only the hours some home's newest value lies in come back, not every hour row."""
    latest = []
    by_hour: HourValues = defaultdict(dict)
    params = {"width": STORED_S, "since": since, "until": until}
    async with engine.connect() as conn:
        await analytics_session(conn)
        result = await conn.execute(text(_LATEST_SQL), params)
        for home, metric, t, m, newest, n, med, mad, mean_ad in result.all():
            t, m = float(t), float(m)
            by_hour[(metric, t)][home] = m
            if newest:
                latest.append(
                    Latest(home, metric, t, m, int(n), _float(med), _float(mad), _float(mean_ad))
                )
    return latest, by_hour


def _float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def rank_anomalies(
    hours: Iterable[Cell],
    clusters: Mapping[str, int],
    *,
    threshold: float,
    top: int,
) -> list[Anomaly]:
    """The `top` home/metric pairs by score, highest first (ties by home, metric)."""
    latest, by_hour = latest_from_cells(hours)
    return rank_latest(latest, by_hour, clusters, threshold=threshold, top=top)


def rank_latest(
    latest: Sequence[Latest],
    by_hour: HourValues,
    clusters: Mapping[str, int],
    *,
    threshold: float,
    top: int,
) -> list[Anomaly]:
    """`rank_anomalies` of the newest hours and their peers' values."""
    # (metric, hour, cluster or None for the fleet) -> the homes' values of that group.
    groups: dict[tuple[str, float, int | None], dict[str, float]] = defaultdict(dict)
    for (metric, t), values in by_hour.items():
        groups[(metric, t, None)] = values
        for home, value in values.items():
            cluster = clusters.get(home)
            if cluster is not None:
                groups[(metric, t, cluster)][home] = value
    scales: dict[tuple[str, float, int | None], tuple[float, float]] = {}

    def peer_z(key: tuple[str, float, int | None], home: str, value: float) -> tuple[float, float]:
        members = groups[key]
        if len(members) > PEER_EXACT:  # the group's statistics, computed once (see above)
            if key not in scales:
                scales[key] = robust_scale(list(members.values()))
            return z_against(value, *scales[key])
        return robust_z(value, [v for h, v in members.items() if h != home])

    found = []
    for item in latest:
        home, metric, t, value = item.home, item.metric, item.t, item.value
        z_history = history_median = None
        if item.history >= MIN_HISTORY and item.history_median is not None:
            median = item.history_median
            scale = MAD_TO_SIGMA * (item.history_mad or 0.0)
            if scale == 0:
                scale = MEAN_AD_TO_SIGMA * (item.history_mean_ad or 0.0)
            scale = max(scale, MIN_SCALE_SHARE * abs(median))
            z_history, history_median = z_against(value, median, scale)
        cluster = clusters.get(home)
        same = len(groups.get((metric, t, cluster), ())) - 1 if cluster is not None else 0
        others = len(groups[(metric, t, None)]) - 1
        peers: str | None = None
        z_peers = peer_median = None
        if same >= MIN_PEERS:
            peers = "cluster"
            z_peers, peer_median = peer_z((metric, t, cluster), home, value)
        elif others >= MIN_PEERS:
            peers = "fleet"
            z_peers, peer_median = peer_z((metric, t, None), home, value)
        scores = [abs(z) for z in (z_history, z_peers) if z is not None]
        if not scores:
            continue
        score = min(scores)
        found.append(
            Anomaly(
                home=home,
                metric=metric,
                t=t,
                value=value,
                history_median=history_median,
                z_history=z_history,
                peer_median=peer_median,
                z_peers=z_peers,
                peers=peers,
                score=score,
                flagged=score >= threshold,
            )
        )
    found.sort(key=lambda a: (-a.score, a.home, a.metric))
    return found[:top]
