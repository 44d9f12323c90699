"""The per-home analytics' one pass over the hour rows (PostgreSQL): profiles and newest hours.

The clusters need every home's hour-of-day profile and the anomalies every home's newest hour
with the median and MAD of its earlier ones. Both come from the same hour rows of the measured
metrics, so on PostgreSQL they are read once (`load_sliced`, streamed and reduced in slices of
pairs so the process holds a bounded part at a time): one row per (home, metric) with its
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
import itertools
from collections import defaultdict
from collections.abc import Iterable, Sequence
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
  {where}
GROUP BY home, metric
"""

# The rows of a few (metric, hours) only: the peers' re-read (`load_sliced`).
_AT_SQL = "AND metric IN :metrics AND bucket_start IN :starts"

# The most (home, metric) pairs x look-back hours one slice of `load_sliced` holds: 250,000
# pair-hours (8 MB packed; a few times that as arrays), i.e. 744 pairs (~150 homes of five
# measured metrics) a slice at the 14-day look-back, 10,416 pairs at one day.
SLICE_PAIR_HOURS = 250_000


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


async def load_hours(
    engine: AsyncEngine, since: float, until: float, *, at: Sequence[tuple[str, float]] = ()
) -> Hours:
    """The hour rows of the measured metrics (not the `EVENTS`) in [since, until), pooled per
    home, metric and hour; when `at` is given, of those rows' metrics and hours only (a
    superset of the (metric, hour)s in `at`)."""
    stmt, params = _hours_statement(since, until, at)
    async with engine.connect() as conn:
        await analytics_session(conn)
        rows = (await conn.execute(stmt, params)).all()
    return await asyncio.to_thread(_unpack, rows)  # array work off the event loop


def _hours_statement(
    since: float, until: float, at: Sequence[tuple[str, float]] = ()
) -> tuple[Any, dict[str, Any]]:
    where = ""
    params: dict[str, Any] = {"width": STORED_S, "since": since, "until": until, "events": EVENTS}
    if at:
        where = _AT_SQL
        params |= {"metrics": sorted({m for m, _ in at}), "starts": sorted({t for _, t in at})}
    stmt = text(_HOURS_SQL.format(where=where)).bindparams(
        *(
            bindparam(name, expanding=True)
            for name in ("events", "metrics", "starts")
            if name in params
        )
    )
    return stmt, params


def _unpack(rows: Sequence[Any]) -> Hours:
    homes = [row[0] for row in rows]
    metrics = [row[1] for row in rows]
    blobs = [row[2] for row in rows]
    lengths = np.fromiter((len(b) for b in blobs), dtype=np.int64, count=len(blobs)) // (
        8 * _FIELDS
    )
    # One contiguous float64 array per field (the bytes are big-endian float8).
    fields = np.ascontiguousarray(
        np.frombuffer(b"".join(blobs), dtype=">f8").reshape(-1, _FIELDS).T, dtype=np.float64
    )
    del blobs
    t, weighted, count, inv = fields
    pair = np.repeat(np.arange(len(homes), dtype=np.int64), lengths)
    # Neighbours in the same pair: every position but a pair's last.
    inner = np.ones(max(len(t) - 1, 0), dtype=bool)
    inner[np.cumsum(lengths)[:-1] - 1] = False
    step = np.diff(t)
    # Grouped by pair already; within a pair the rows come in storage order, which is mostly
    # time order: sort only when some pair's hours are not.
    if bool(np.any((step < 0) & inner)):
        order = np.lexsort((t, pair))
        t, weighted, count, inv = t[order], weighted[order], count[order], inv[order]
        step = np.diff(t)
    # One value per pair and hour: rooms, devices and gateways pooled (count-weighted sums).
    repeated = (step == 0) & inner
    if bool(np.any(repeated)):
        first = np.flatnonzero(np.r_[True, ~repeated])
        weighted, count, inv = (np.add.reduceat(a, first) for a in (weighted, count, inv))
        pair, t = pair[first], t[first]
    keep = count > 0
    if not bool(keep.all()):
        pair, t, weighted, count, inv = (a[keep] for a in (pair, t, weighted, count, inv))
    return Hours(homes, metrics, pair, t, weighted, count, inv)


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


def latest_hours(
    hours: Hours, until: float, also: Iterable[tuple[str, float]] = ()
) -> tuple[list[Latest], HourValues]:
    """`load_latest` of the loaded hours before `until`: every pair's newest hour with the
    median, MAD and mean absolute deviation of its earlier ones, and the homes' means in the
    hours some newest value lies in, and in the (metric, hour)s `also` (another slice's)."""
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
    # Built column by column (lists, then one Latest per pair): 500,000 pairs at 100,000 homes.
    homes = np.array(hours.homes, dtype=object)
    names = np.array(hours.metrics, dtype=object)
    newest = pair[last]
    sizes = size[newest]
    gaps = np.flatnonzero(sizes == 0).tolist()  # no earlier hour: no history statistics
    medians, mads, mean_ads = (a[newest].tolist() for a in (median, mad, mean_ad))
    for i in gaps:
        medians[i] = mads[i] = mean_ads[i] = None
    newest_names = names[newest].tolist()
    values, counts, noised = mean[last].tolist(), count[last].tolist(), inv[last]
    noise: list[float | None] = [None] * len(values)
    for i in np.flatnonzero(noised > 0).tolist():
        noise[i] = mean_noise_sd(newest_names[i], float(noised[i]), counts[i], values[i])
    latest = list(
        map(
            Latest,
            homes[newest].tolist(),
            newest_names,
            t[last].tolist(),
            values,
            sizes.tolist(),
            medians,
            mads,
            mean_ads,
            noise,
        )
    )
    # The peers: every pair's value in the (metric, hour)s some pair's newest value lies in,
    # found by one membership test of (metric, hour) codes (hours are whole: t / 3600), then
    # one dict per (metric, hour).
    metric_ids: dict[str, int] = {}
    metric_of_pair = np.fromiter(
        (metric_ids.setdefault(m, len(metric_ids)) for m in hours.metrics),
        dtype=np.int64,
        count=pairs,
    )
    code = metric_of_pair[pair] * (1 << 40) + np.rint(t / STORED_S).astype(np.int64)
    extra = [metric_ids[m] * (1 << 40) + round(at / STORED_S) for m, at in also if m in metric_ids]
    wanted = np.unique(np.r_[code[last], np.array(extra, dtype=np.int64)])
    rows = np.flatnonzero(np.isin(code, wanted))
    rows = rows[np.argsort(code[rows], kind="stable")]
    edges = np.flatnonzero(np.r_[True, np.diff(code[rows]) != 0, True]).tolist()
    peer_homes = homes[pair[rows]].tolist()
    peer_values = mean[rows].tolist()
    peer_names = names[pair[rows]].tolist()
    peer_t = t[rows].tolist()
    by_hour: HourValues = {}
    for a, b in itertools.pairwise(edges):
        by_hour[(peer_names[a], peer_t[a])] = dict(
            zip(peer_homes[a:b], peer_values[a:b], strict=True)
        )
    return latest, by_hour


async def load_sliced(
    engine: AsyncEngine,
    since: float,
    until: float,
    complete: float,
    *,
    pair_hours: int = SLICE_PAIR_HOURS,
) -> tuple[ProfileSums, list[Latest], HourValues]:
    """`profile_sums` and `latest_hours` (before `complete`) of the hour rows in [since, until),
    streamed from one query (a server-side cursor) and reduced in slices of (home, metric)
    pairs: a slice holds at most `pair_hours` // look-back hours pairs. A pair's history is its
    own and the profiles are sums, so slices are independent; only the newest hours' peers
    span them: each slice gives its pairs' values in the (metric, hour)s known so far, and the
    few (metric, hour)s first met in a later slice are read again for every home at the end
    (through the width and time index)."""
    per_slice = max(1, pair_hours // max(1, round((until - since) / STORED_S)))
    stmt, params = _hours_statement(since, until)
    sums: ProfileSums = defaultdict(lambda: np.zeros((HOURS, 2)))
    latest: list[Latest] = []
    by_hour: HourValues = {}
    late: set[tuple[str, float]] = set()  # met after the first slice: earlier ones lack them

    def reduce(
        rows: Sequence[Any], known: list[tuple[str, float]]
    ) -> tuple[ProfileSums, list[Latest], HourValues]:
        hours = _unpack(rows)
        return profile_sums(hours), *latest_hours(hours, complete, known)

    async with engine.connect() as conn:
        await analytics_session(conn)
        result = await conn.stream(stmt.execution_options(yield_per=per_slice), params)
        first = True
        async for rows in result.partitions(per_slice):
            part_sums, part_latest, part_by_hour = await asyncio.to_thread(
                reduce, rows, list(by_hour)
            )
            del rows
            for home_family, acc in part_sums.items():
                # A (home, family) of several metrics may span slices: its sums add up.
                old = sums.get(home_family)
                sums[home_family] = acc if old is None else old + acc
            latest.extend(part_latest)
            for key, values in part_by_hour.items():
                if not first and key not in by_hour:
                    late.add(key)
                by_hour.setdefault(key, {}).update(values)
            first = False
    if late:
        again = await load_hours(engine, since, until, at=sorted(late))
        _, peers = await asyncio.to_thread(latest_hours, again, complete, late)
        for key in late:
            by_hour[key] = peers.get(key, {})
    return sums, latest, by_hour
