"""The per-home analytics' one pass over the hour rows (PostgreSQL): profiles and newest hours.

The clusters need every home's hour-of-day profile and the anomalies every home's newest hour
with the median and MAD of its earlier ones. Both come from the same hour rows of the measured
metrics, so on PostgreSQL they are read once (`load_hours`): one row per (home, metric) with its
hour rows packed as binary float8 (``string_agg`` of ``float8send``; unpacked by numpy without a
Python object per value), grouped by a hash of the 500,000 (home, metric) pairs of 100,000 homes
rather than of their millions of hours. What the database did per hour before (pooling rooms,
devices and gateways into one value per home, metric and hour; the medians) is done here on whole
arrays: sort by (pair, hour), add up equal hours, and the median of each pair's sorted values read
at its middle positions (numpy's and ``percentile_cont``'s linear interpolation). The answers are
the same as `load_profile_sums` and `load_latest` give (tests/test_analytics_scale.py): those stay
the SQLite path's and the reference.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncEngine

from cloud.analytics.anomalies import EVENTS, HourValues, Latest
from cloud.analytics.clusters import HOURS, PROFILE_FAMILIES, ProfileSums
from cloud.analytics.fleet import analytics_session
from cloud.analytics.rollups import DAY_S, STORED_S
from cloud.noise import mean_noise_sd

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]

_FIELDS = 4  # bucket_start, weighted, count, inv_eps_sq

_HOURS_SQL = """
SELECT home, metric,
       string_agg(float8send(bucket_start) || float8send(weighted) || float8send(count)
                  || float8send(inv_eps_sq), ''::bytea)
FROM rollups
WHERE bucket_s = :width AND bucket_start >= :since AND bucket_start < :until
  AND metric NOT IN :events
GROUP BY home, metric
"""


@dataclass(frozen=True)
class Hours:
    """Every (home, metric) pair's pooled hours, sorted by pair and time, hours without a count
    left out (as the SQL's ``HAVING sum(count) > 0``)."""

    homes: list[str]  # per pair
    metrics: list[str]  # per pair
    pair: Ints  # per hour: its pair's index
    t: Floats
    weighted: Floats
    count: Floats
    inv_eps_sq: Floats


async def load_hours(engine: AsyncEngine, since: float, until: float) -> Hours:
    """The hour rows of the measured metrics (not the `EVENTS`) in [since, until), pooled per
    home, metric and hour."""
    stmt = text(_HOURS_SQL).bindparams(bindparam("events", expanding=True))
    params = {"width": STORED_S, "since": since, "until": until, "events": EVENTS}
    async with engine.connect() as conn:
        await analytics_session(conn)
        rows = (await conn.execute(stmt, params)).all()
    return await asyncio.to_thread(_unpack, rows)  # array work off the event loop


def _unpack(rows: Sequence[Any]) -> Hours:
    homes = [row[0] for row in rows]
    metrics = [row[1] for row in rows]
    blobs = [row[2] for row in rows]
    del rows
    lengths = np.fromiter((len(b) for b in blobs), dtype=np.int64, count=len(blobs)) // (
        8 * _FIELDS
    )
    packed = np.frombuffer(b"".join(blobs), dtype=">f8").astype(np.float64)
    del blobs
    data = packed.reshape(-1, _FIELDS)
    pair = np.repeat(np.arange(len(homes), dtype=np.int64), lengths)
    t = data[:, 0]
    # Sorted by pair already; within a pair the rows come in storage order, which is mostly
    # time order: sort only when some pair's hours are not.
    if len(t) > 1 and bool(np.any((np.diff(t) < 0) & (np.diff(pair) == 0))):
        order = np.lexsort((t, pair))
        data, pair, t = data[order], pair[order], t[order]
    # One value per pair and hour: rooms, devices and gateways pooled (count-weighted sums).
    first = np.flatnonzero(np.r_[True, (np.diff(pair) != 0) | (np.diff(t) != 0)])
    if len(first) == len(t):
        weighted, count, inv = data[:, 1], data[:, 2], data[:, 3]
    else:
        weighted, count, inv = (np.add.reduceat(data[:, i], first) for i in (1, 2, 3))
        pair, t = pair[first], t[first]
    keep = count > 0
    return Hours(
        homes=homes,
        metrics=metrics,
        pair=pair[keep],
        t=np.ascontiguousarray(t[keep]),
        weighted=np.ascontiguousarray(weighted[keep]),
        count=np.ascontiguousarray(count[keep]),
        inv_eps_sq=np.ascontiguousarray(inv[keep]),
    )


def profile_sums(hours: Hours) -> ProfileSums:
    """`load_profile_sums` of the loaded hours: per home and family, per hour of the day, the
    sum of count * mean and of count."""
    family_of = {m: family for family, metrics in PROFILE_FAMILIES.items() for m in metrics}
    keys: dict[tuple[str, str], int] = {}
    key_of_pair = np.full(len(hours.homes), -1, dtype=np.int64)
    for index, (home, name) in enumerate(zip(hours.homes, hours.metrics, strict=True)):
        family = family_of.get(name)
        if family is not None:
            key_of_pair[index] = keys.setdefault((home, family), len(keys))
    key = key_of_pair[hours.pair]
    mine = key >= 0
    hour = np.rint((hours.t[mine] - np.floor(hours.t[mine] / DAY_S) * DAY_S) / STORED_S)
    cell = key[mine] * HOURS + hour.astype(np.int64)
    size = len(keys) * HOURS
    acc = np.empty((len(keys), HOURS, 2))
    acc[:, :, 0] = np.bincount(cell, weights=hours.weighted[mine], minlength=size).reshape(
        -1, HOURS
    )
    acc[:, :, 1] = np.bincount(cell, weights=hours.count[mine], minlength=size).reshape(-1, HOURS)
    out: ProfileSums = defaultdict(lambda: np.zeros((HOURS, 2)))
    for k, index in keys.items():
        out[k] = acc[index]
    return out


def _middle(values: Floats, group: Ints, groups: int) -> tuple[Floats, Ints]:
    """Per group (0..groups-1), the median of its `values` (NaN for an empty group), and its
    size; `group` is sorted. Each group's values go into one row of a NaN-padded matrix that
    is sorted along its rows (NaN sorts last), so the middle is read at the group's size."""
    size = np.bincount(group, minlength=groups)
    median = np.full(groups, np.nan)
    if len(values) == 0:
        return median, size
    start = np.concatenate(([0], np.cumsum(size)[:-1]))
    table = np.full((groups, int(size.max())), np.nan)
    table[group, np.arange(len(values)) - start[group]] = values
    table.sort(axis=1)
    some = np.flatnonzero(size > 0)
    low, high = (size[some] - 1) // 2, size[some] // 2
    median[some] = (table[some, low] + table[some, high]) / 2
    return median, size


def latest_hours(hours: Hours, until: float) -> tuple[list[Latest], HourValues]:
    """`load_latest` of the loaded hours before `until`: every pair's newest hour with the
    median, MAD and mean absolute deviation of its earlier ones, and the homes' means in the
    hours some newest value lies in."""
    before = hours.t < until
    pair, t = hours.pair[before], hours.t[before]
    count, inv = hours.count[before], hours.inv_eps_sq[before]
    mean = hours.weighted[before] / count
    pairs = len(hours.homes)
    if len(pair) == 0:
        return [], {}
    last = np.r_[np.diff(pair) != 0, True]  # the newest hour of each pair present
    history = ~last
    median, size = _middle(mean[history], pair[history], pairs)
    deviation = np.abs(mean[history] - median[pair[history]])
    mad, _ = _middle(deviation, pair[history], pairs)
    mean_ad = np.bincount(pair[history], weights=deviation, minlength=pairs) / np.maximum(size, 1)
    names, homes = hours.metrics, hours.homes
    sizes = size.tolist()
    medians, mads, mean_ads = median.tolist(), mad.tolist(), mean_ad.tolist()
    latest = []
    for p, when, value, n, noise in zip(
        pair[last].tolist(),
        t[last].tolist(),
        mean[last].tolist(),
        count[last].tolist(),
        inv[last].tolist(),
        strict=True,
    ):
        has = sizes[p] > 0
        name = names[p]
        latest.append(
            Latest(
                homes[p],
                name,
                when,
                value,
                sizes[p],
                medians[p] if has else None,
                mads[p] if has else None,
                mean_ads[p] if has else None,
                mean_noise_sd(name, noise, n, value) if noise > 0 else None,
            )
        )
    # The peers: every pair's value in the (metric, hour)s some pair's newest value lies in,
    # found by one membership test of (metric, hour) codes (hours are whole: t / 3600).
    metric_ids: dict[str, int] = {}
    metric_of_pair = np.fromiter(
        (metric_ids.setdefault(m, len(metric_ids)) for m in hours.metrics),
        dtype=np.int64,
        count=pairs,
    )
    code = metric_of_pair[pair] * (1 << 40) + np.rint(t / STORED_S).astype(np.int64)
    rows = np.flatnonzero(np.isin(code, np.unique(code[last])))
    by_hour: HourValues = defaultdict(dict)
    for p, when, value in zip(
        pair[rows].tolist(), t[rows].tolist(), mean[rows].tolist(), strict=True
    ):
        by_hour[(hours.metrics[p], when)][hours.homes[p]] = value
    return latest, by_hour
