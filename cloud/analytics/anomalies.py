"""Fleet anomaly ranking: which homes' metrics deviate from their own history and their peers.

For every home and measured metric (event counts are the events panel's, not ranked here) the
newest complete hourly mean (an hour the clock has passed: a filling hour's mean would move
from run to run and flip its flag) is compared, with robust z-scores (median and MAD, so one
earlier outlier does not hide the next), against
- the same home's earlier hourly means in the look-back period, and
- the other homes' means in the same hour: the home's cluster when it has enough members with
  data, else the whole fleet.
A home is anomalous when it deviates from both: the score is the smaller absolute z when both
comparisons exist (the daily cycle or a fleet-wide change moves a home away from its own history
but not from its peers; a home that is always unlike its peers is not unlike its own history),
else the one that exists. The list is sorted by score. Only pairs whose newest hour is in the
last RECENT_S (a day) of the fleet's newest are ranked: older ones are pseudonyms that rotated
or devices gone quiet.

Noised metrics (health data, or any metric a home noises): the newest value's privacy noise
(`cloud.noise`) is added in quadrature to the scale it is compared with, so a value is only
ranked for what its noise does not explain. A sample with no spread at all (a constant history)
gets a scale of MIN_RANGE_SHARE of the metric's registered range; an unregistered metric's
constant sample gives no z (nothing to compare with), never a made-up one.

Cost: the peer statistics of one (metric, hour, cluster) group are computed once for the group
when it has more than PEER_EXACT members, and the home's own value stays in its peers' sample
then (one value in more than PEER_EXACT moves a median and a MAD by at most one rank, well
under a percent of the spread); smaller groups leave the home out exactly. So a run costs
n log n in the homes instead of n squared.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncEngine

from cloud.analytics.fleet import Cell, analytics_session
from cloud.analytics.models import Anomaly
from cloud.analytics.rollups import STORED_S
from cloud.noise import mean_noise_sd
from schemas.metrics import METRICS, is_event, metric

MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation
MEAN_AD_TO_SIGMA = 1.2533  # the same for the mean absolute deviation (sqrt(pi / 2))
# Scales never go below this share of the median: with few peers, or a very steady history, the
# MAD can be tiny, and a 1 % wobble should not read as a 10-sigma event.
MIN_SCALE_SHARE = 0.05
# A constant sample (no spread, median 0): the smallest change read as one sigma, as a share of
# the metric's registered range (0.05 of a 0/1 share such as a door's open time).
MIN_RANGE_SHARE = 0.05
# Only pairs whose newest hour lies in the last day of the fleet's data are ranked: an older
# newest hour is a pseudonym that has rotated or a device gone quiet, not news.
RECENT_S = 86400
MIN_HISTORY = 6
MIN_PEERS = 2
PEER_EXACT = 200
EVENTS = tuple(name for name in METRICS if is_event(name))  # counts, not ranked here


def robust_z(
    value: float, sample: Sequence[float], *, floor: float = 0.0, noise_sd: float | None = None
) -> tuple[float | None, float]:
    """(z, median) of `value` against `sample`: (value - median) / (1.4826 * MAD).

    When more than half the sample is one value the MAD is 0; the mean absolute deviation
    stands in. The scale is at least MIN_SCALE_SHARE of |median|; when it is still 0 (a constant
    zero sample) `floor` stands in (`range_floor`), and without one there is no z (None).
    `noise_sd`, the value's own privacy noise, is added to the scale in quadrature.
    """
    median, scale = robust_scale(sample, floor=floor)
    return z_against(value, median, scale, noise_sd)


def robust_scale(sample: Sequence[float], *, floor: float = 0.0) -> tuple[float, float]:
    """(median, scale) of `sample` as `robust_z` uses them."""
    data = np.asarray(sample, dtype=float)
    median = float(np.median(data))
    deviations = np.abs(data - median)
    scale = MAD_TO_SIGMA * float(np.median(deviations))
    if scale == 0:
        scale = MEAN_AD_TO_SIGMA * float(deviations.mean())
    return median, _floored(scale, median, floor)


def _floored(scale: float, median: float, floor: float) -> float:
    scale = max(scale, MIN_SCALE_SHARE * abs(median))
    return floor if scale == 0 else scale


def range_floor(name: str) -> float:
    """The scale of a constant sample of metric `name` (0 for an unregistered metric)."""
    known = metric(name)
    return 0.0 if known is None else MIN_RANGE_SHARE * (known.high - known.low)


def z_against(
    value: float, median: float, scale: float, noise_sd: float | None = None
) -> tuple[float | None, float]:
    """(z, median) of `value` for a sample of that median and scale; None when the scale, with
    the value's noise, is 0 (nothing to measure a deviation with)."""
    if noise_sd:
        scale = float(np.hypot(scale, noise_sd))
    if scale == 0:
        return None, median
    return (value - median) / scale, median


@dataclass(frozen=True, slots=True)
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
    noise_sd: float | None = None  # of `value` (`cloud.noise`)


def latest_from_cells(hours: Iterable[Cell]) -> tuple[list[Latest], HourValues]:
    """The newest hour of every (home, metric) of `hours`, and the homes' means per (metric,
    hour) (what the database computes on PostgreSQL, `load_latest`)."""
    series: dict[tuple[str, str], list[tuple[float, float, float, float]]] = defaultdict(list)
    for cell in hours:
        mean = cell.mean
        if mean is not None and not is_event(cell.metric):
            series[(cell.home, cell.metric)].append((cell.t, mean, cell.count, cell.inv_eps_sq))
    by_hour: HourValues = defaultdict(dict)
    latest = []
    for (home, name), points in series.items():
        points.sort()
        for t, mean, _, _ in points:
            by_hour[(name, t)][home] = mean
        t, value, count, inv_eps_sq = points[-1]
        history = np.array([p[1] for p in points[:-1]], dtype=float)
        median = mad = mean_ad = None
        if len(history):
            median = float(np.median(history))
            deviations = np.abs(history - median)
            mad, mean_ad = float(np.median(deviations)), float(deviations.mean())
        noise = mean_noise_sd(name, inv_eps_sq, count, value)
        latest.append(Latest(home, name, t, value, len(history), median, mad, mean_ad, noise))
    return latest, by_hour


# (metric, hour) -> home -> that home's mean in that hour
HourValues = dict[tuple[str, float], dict[str, float]]

_LATEST_SQL = """
WITH hourly AS (
  SELECT home, metric, bucket_start AS t, sum(weighted) / sum(count) AS m, sum(count) AS n,
         sum(inv_eps_sq) AS inv
  FROM rollups
  WHERE bucket_s = :width AND bucket_start >= :since AND bucket_start < :until
    AND metric NOT IN :events
  GROUP BY home, metric, bucket_start
  HAVING sum(count) > 0
), ranked AS (
  SELECT home, metric, t, m, n, inv,
         row_number() OVER (PARTITION BY home, metric ORDER BY t DESC) AS rn
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
       d.mean_ad, p.n AS count, p.inv
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
    params = {"width": STORED_S, "since": since, "until": until, "events": EVENTS}
    stmt = text(_LATEST_SQL).bindparams(bindparam("events", expanding=True))
    async with engine.connect() as conn:
        await analytics_session(conn)
        result = await conn.execute(stmt, params)
        for home, name, t, m, newest, n, med, mad, mean_ad, count, inv in result.all():
            t, m = float(t), float(m)
            by_hour[(name, t)][home] = m
            if newest:
                noise = mean_noise_sd(name, float(inv or 0.0), float(count), m)
                latest.append(
                    Latest(
                        home,
                        name,
                        t,
                        m,
                        int(n),
                        _float(med),
                        _float(mad),
                        _float(mean_ad),
                        noise,
                    )
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
    for (name, t), values in by_hour.items():
        groups[(name, t, None)] = values
        for home, value in values.items():
            cluster = clusters.get(home)
            if cluster is not None:
                groups[(name, t, cluster)][home] = value
    scales: dict[tuple[str, float, int | None], tuple[float, float]] = {}

    def peer_z(
        key: tuple[str, float, int | None], item: Latest, floor: float
    ) -> tuple[float | None, float]:
        members = groups[key]
        if len(members) > PEER_EXACT:  # the group's statistics, computed once (see above)
            if key not in scales:
                scales[key] = robust_scale(list(members.values()), floor=floor)
            return z_against(item.value, *scales[key], item.noise_sd)
        others = [v for h, v in members.items() if h != item.home]
        return robust_z(item.value, others, floor=floor, noise_sd=item.noise_sd)

    found = []
    newest = max((item.t for item in latest), default=0.0)
    for item in latest:
        home, name, t, value = item.home, item.metric, item.t, item.value
        if is_event(name) or t <= newest - RECENT_S:
            continue
        floor = range_floor(name)
        z_history = history_median = None
        if item.history >= MIN_HISTORY and item.history_median is not None:
            median = item.history_median
            scale = MAD_TO_SIGMA * (item.history_mad or 0.0)
            if scale == 0:
                scale = MEAN_AD_TO_SIGMA * (item.history_mean_ad or 0.0)
            scale = _floored(scale, median, floor)
            z_history, history_median = z_against(value, median, scale, item.noise_sd)
            if z_history is None:
                history_median = None
        cluster = clusters.get(home)
        same = len(groups.get((name, t, cluster), ())) - 1 if cluster is not None else 0
        others = len(groups[(name, t, None)]) - 1
        peers: str | None = None
        z_peers = peer_median = None
        if same >= MIN_PEERS:
            peers = "cluster"
            z_peers, peer_median = peer_z((name, t, cluster), item, floor)
        elif others >= MIN_PEERS:
            peers = "fleet"
            z_peers, peer_median = peer_z((name, t, None), item, floor)
        if z_peers is None:
            peers = peer_median = None
        scores = [abs(z) for z in (z_history, z_peers) if z is not None]
        if not scores:
            continue
        score = min(scores)
        # The ranking's fields only: an Anomaly is made for the `top` kept (of every pair).
        found.append(
            (
                -score,
                home,
                name,
                t,
                value,
                history_median,
                z_history,
                peer_median,
                z_peers,
                peers,
                item.noise_sd,
            )
        )
    kept = heapq.nsmallest(top, found, key=lambda f: (f[0], f[1], f[2]))
    return [
        Anomaly(
            home=home,
            metric=name,
            t=t,
            value=value,
            history_median=history_median,
            z_history=z_history,
            peer_median=peer_median,
            z_peers=z_peers,
            peers=peers,
            score=-negative,
            flagged=-negative >= threshold,
            noise_sd=noise_sd,
        )
        for (
            negative,
            home,
            name,
            t,
            value,
            history_median,
            z_history,
            peer_median,
            z_peers,
            peers,
            noise_sd,
        ) in kept
    ]
