"""Clustering homes by their daily profiles (scikit-learn KMeans).

A home's profile of a family of metrics (power, occupancy, CO2) is its count-weighted mean per
hour of the day (UTC) over the look-back period, divided by its own daily mean, so homes group
by the shape of their day rather than by their level (a big house and a flat that both peak at
7 pm belong together). The feature vector is the concatenation of the families' 24-hour
profiles. For the fit, a family a home does not report is flat (1.0, an average hour) and so is
an hour without data; what is reported is not invented: a cluster's centroid per hour is the
mean of its members' profiles over the members with data in that hour, and None (a gap) where
none has any. k is configured, or chosen in 2..k_max by the silhouette score.

The bound: KMeans is fitted, and k chosen, on at most `sample` homes (`cluster_sample_homes`,
default 2,000), the same ones from run to run (the smallest SHA-256 of their pseudonyms, so a
sample is spread over the fleet and a home stays in or out of it); every home is then assigned
to its nearest centroid. Fitting costs `sample` x k x restarts and the silhouette `sample`
squared, whatever the fleet's size; assigning all homes is linear in them. Below `sample` homes
this is the plain fit of all of them.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from sqlalchemy import case, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncEngine
from threadpoolctl import threadpool_limits

from cloud.analytics.fleet import Cell, analytics_session
from cloud.analytics.models import Cluster, ClusterReport
from cloud.analytics.rollups import DAY_S, STORED_S
from cloud.db import rollups
from cloud.queries import TimeBucket

log = logging.getLogger(__name__)

# Family -> metrics pooled into its profile (all of them shares or rates, so pooling is sound).
PROFILE_FAMILIES: dict[str, tuple[str, ...]] = {
    "power": ("power",),
    "occupancy": ("motion", "inference_occupancy"),
    "co2": ("co2",),
}
HOURS = 24
SEED = 0  # KMeans restarts are seeded: the same rollups give the same clusters
DEFAULT_SAMPLE = 2000


# home, family -> per hour of day: [sum of count * mean, sum of count]
ProfileSums = dict[tuple[str, str], npt.NDArray[np.float64]]


def daily_profiles(hours: Iterable[Cell]) -> dict[str, dict[str, npt.NDArray[np.float64]]]:
    """home -> family -> 24 normalized hourly values."""
    family_of = {m: family for family, metrics in PROFILE_FAMILIES.items() for m in metrics}
    acc: ProfileSums = defaultdict(lambda: np.zeros((HOURS, 2)))
    for cell in hours:
        family = family_of.get(cell.metric)
        if family is None or cell.count <= 0:
            continue
        hour = int(cell.t % 86400) // 3600
        acc[(cell.home, family)][hour] += (cell.weighted, cell.count)
    return normalized_profiles(acc)


async def load_profile_sums(engine: AsyncEngine, since: float, until: float) -> ProfileSums:
    """What `daily_profiles` accumulates, summed by the database: one row per home, family and
    hour of the day instead of one per home, metric and hour of the look-back period."""
    r = rollups.c
    family_metrics = [m for metrics in PROFILE_FAMILIES.values() for m in metrics]
    # Pooled per home, metric and hour first, as the cells are: a pooled hour with no count
    # (noised counts can cancel) is left out, as daily_profiles leaves such a cell out.
    pooled = (
        select(
            r.home,
            r.metric,
            r.bucket_start,
            func.sum(r.weighted).label("weighted"),
            func.sum(r.count).label("count"),
        )
        .where(
            r.bucket_s == STORED_S,
            r.bucket_start >= since,
            r.bucket_start < until,
            r.metric.in_(family_metrics),
        )
        .group_by(r.home, r.metric, r.bucket_start)
        .having(func.sum(r.count) > 0)
        .subquery()
    )
    p = pooled.c
    family = case(
        *((p.metric.in_(metrics), family) for family, metrics in PROFILE_FAMILIES.items())
    ).label("family")
    hour = ((p.bucket_start - TimeBucket(p.bucket_start, literal_column(str(DAY_S)))) / 3600).label(
        "hour"
    )
    stmt = select(p.home, family, hour, func.sum(p.weighted), func.sum(p.count)).group_by(
        p.home, family, hour
    )
    acc: ProfileSums = defaultdict(lambda: np.zeros((HOURS, 2)))
    async with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            await analytics_session(conn)
        for home, fam, h, weighted, count in (await conn.execute(stmt)).all():
            acc[(home, fam)][round(float(h))] += (float(weighted), float(count))
    return acc


def normalized_profiles(acc: ProfileSums) -> dict[str, dict[str, npt.NDArray[np.float64]]]:
    """home -> family -> the 24 hourly means divided by their mean (NaN where there is none;
    1.0 in every hour with data when the level is not positive). All keys at once, as arrays."""
    keys = list(acc)
    profiles: dict[str, dict[str, npt.NDArray[np.float64]]] = defaultdict(dict)
    if not keys:
        return {}
    sums = np.stack([acc[key] for key in keys])
    present = sums[:, :, 1] > 0
    hourly = np.divide(sums[:, :, 0], sums[:, :, 1], out=np.zeros(present.shape), where=present)
    reported = present.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):  # no hour with data: no level
        level = np.where(present, hourly, 0.0).sum(axis=1) / reported
    flat = ~(level > 0)  # not positive (or none): 1.0 where reported
    scaled = np.divide(hourly, np.where(flat, 1.0, level)[:, None])
    out = np.where(present, np.where(flat[:, None], 1.0, scaled), np.nan)
    for (home, family), profile in zip(keys, out, strict=True):
        profiles[home][family] = profile
    return dict(profiles)


def _reported_mean(rows: npt.NDArray[np.float64]) -> list[float | None]:
    """Per column, the mean of the rows that have a value there (None where none has)."""
    present = ~np.isnan(rows)
    n = present.sum(axis=0)
    total = np.where(present, rows, 0.0).sum(axis=0)
    return [float(t / k) if k else None for t, k in zip(total, n, strict=True)]


def _kmeans(features: npt.NDArray[np.float64], k: int) -> KMeans:
    return KMeans(n_clusters=k, n_init=10, random_state=SEED).fit(features)


def fit_sample(homes: list[str], sample: int) -> list[int]:
    """Indices (into `homes`) of the at most `sample` homes a model is fitted on."""
    if len(homes) <= sample:
        return list(range(len(homes)))
    digest = [hashlib.sha256(h.encode()).digest() for h in homes]
    return sorted(sorted(range(len(homes)), key=digest.__getitem__)[:sample])


def cluster_homes(
    hours: Iterable[Cell], *, k: int = 0, k_max: int = 6, sample: int = DEFAULT_SAMPLE
) -> ClusterReport:
    """Cluster the homes of `hours` (hourly cells) by daily profile; k = 0 picks k by silhouette.
    KMeans is fitted on at most `sample` homes and every home assigned (module docstring)."""
    return cluster_profiles(daily_profiles(hours), k=k, k_max=k_max, sample=sample)


def cluster_profiles(
    profiles: dict[str, dict[str, npt.NDArray[np.float64]]],
    *,
    k: int = 0,
    k_max: int = 6,
    sample: int = DEFAULT_SAMPLE,
) -> ClusterReport:
    """`cluster_homes` of profiles already made (`normalized_profiles`)."""
    # One thread: the run is a background task next to the worker's requests, and on a busy
    # machine KMeans' OpenMP threads wait on each other (10,000 homes at load 6 here: 5.9 s
    # with the default threads, 0.9 s with one; the same labels, the fit is seeded).
    with threadpool_limits(limits=1):
        return _cluster_profiles(profiles, k=k, k_max=k_max, sample=sample)


def _cluster_profiles(
    profiles: dict[str, dict[str, npt.NDArray[np.float64]]], *, k: int, k_max: int, sample: int
) -> ClusterReport:
    homes = sorted(profiles)
    families = [f for f in PROFILE_FAMILIES if any(f in profiles[h] for h in homes)]
    if not homes:
        return ClusterReport(k=0, silhouette=None, families=[], clusters=[], assignments={})
    reported = np.array(
        [
            np.concatenate([profiles[h].get(f, np.full(HOURS, np.nan)) for f in families])
            for h in homes
        ]
    )
    every = np.nan_to_num(reported, nan=1.0)  # for the fit only: an average hour
    features = every[fit_sample(homes, sample)]
    distinct = len(np.unique(features.round(12), axis=0))
    silhouette: float | None = None
    if k > 0:
        k = min(k, distinct)
    elif distinct < 3:
        k = 1  # the silhouette needs 2 <= k < samples
    else:
        best: tuple[float, int] | None = None
        for candidate in range(2, min(k_max, distinct - 1) + 1):
            labels = _kmeans(features, candidate).labels_
            score = float(silhouette_score(features, labels))
            log.debug("k=%d silhouette %.3f", candidate, score)
            if best is None or score > best[0]:
                best = (score, candidate)
        assert best is not None
        silhouette, k = best
    model = _kmeans(features, k)
    if silhouette is None and 1 < k < len(features):
        silhouette = float(silhouette_score(features, model.labels_))
    labels = model.labels_ if len(features) == len(every) else model.predict(every)
    # Stable ids: the largest cluster is 0; ties by the first home's name.
    members: dict[int, list[str]] = defaultdict(list)
    rows: dict[int, list[int]] = defaultdict(list)
    for index, (home, label) in enumerate(zip(homes, labels, strict=True)):
        members[int(label)].append(home)
        rows[int(label)].append(index)
    order = sorted(members, key=lambda label: (-len(members[label]), members[label][0]))
    clusters = []
    assignments: dict[str, int] = {}
    for new_id, label in enumerate(order):
        centroid = _reported_mean(reported[rows[label]])
        clusters.append(
            Cluster(
                id=new_id,
                size=len(members[label]),
                homes=members[label],
                centroid={
                    family: centroid[i * HOURS : (i + 1) * HOURS]
                    for i, family in enumerate(families)
                },
            )
        )
        assignments.update(dict.fromkeys(members[label], new_id))
    return ClusterReport(
        k=len(clusters),
        silhouette=silhouette,
        families=families,
        clusters=clusters,
        assignments=assignments,
    )
