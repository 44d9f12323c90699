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
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from cloud.analytics.fleet import Cell
from cloud.analytics.models import Anomaly

MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation
MEAN_AD_TO_SIGMA = 1.2533  # the same for the mean absolute deviation (sqrt(pi / 2))
# Scales never go below this share of the median: with few peers, or a very steady history, the
# MAD can be tiny, and a 1 % wobble should not read as a 10-sigma event.
MIN_SCALE_SHARE = 0.05
Z_CAP = 99.0  # a deviation from a perfectly constant sample; finite so it can be ranked and shown
MIN_HISTORY = 6
MIN_PEERS = 2


def robust_z(value: float, sample: Sequence[float]) -> tuple[float, float]:
    """(z, median) of `value` against `sample`: (value - median) / (1.4826 * MAD).

    When more than half the sample is one value the MAD is 0; the mean absolute deviation
    stands in. The scale is at least MIN_SCALE_SHARE of |median|; when it is still 0 (a constant
    zero sample) any difference scores Z_CAP.
    """
    data = np.asarray(sample, dtype=float)
    median = float(np.median(data))
    deviations = np.abs(data - median)
    scale = MAD_TO_SIGMA * float(np.median(deviations))
    if scale == 0:
        scale = MEAN_AD_TO_SIGMA * float(deviations.mean())
    scale = max(scale, MIN_SCALE_SHARE * abs(median))
    if scale == 0:
        return (0.0 if value == median else float(np.sign(value - median)) * Z_CAP), median
    return float(np.clip((value - median) / scale, -Z_CAP, Z_CAP)), median


def rank_anomalies(
    hours: Iterable[Cell],
    clusters: Mapping[str, int],
    *,
    threshold: float,
    top: int,
) -> list[Anomaly]:
    """The `top` home/metric pairs by score, highest first (ties by home, metric)."""
    series: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for cell in hours:
        mean = cell.mean
        if mean is not None:
            series[(cell.home, cell.metric)].append((cell.t, mean))
    by_hour: dict[tuple[str, float], dict[str, float]] = defaultdict(dict)
    for (home, metric), points in series.items():
        points.sort()
        for t, mean in points:
            by_hour[(metric, t)][home] = mean
    found = []
    for (home, metric), points in series.items():
        t, value = points[-1]
        history = [mean for _, mean in points[:-1]]
        z_history = history_median = None
        if len(history) >= MIN_HISTORY:
            z_history, history_median = robust_z(value, history)
        others = {h: v for h, v in by_hour[(metric, t)].items() if h != home}
        cluster = clusters.get(home)
        same = [v for h, v in others.items() if cluster is not None and clusters.get(h) == cluster]
        peers: str | None = None
        sample: list[float] = []
        if len(same) >= MIN_PEERS:
            peers, sample = "cluster", same
        elif len(others) >= MIN_PEERS:
            peers, sample = "fleet", list(others.values())
        z_peers = peer_median = None
        if peers is not None:
            z_peers, peer_median = robust_z(value, sample)
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
