"""The analytics API on a seeded fleet with known answers: fleet percentiles and ranks, clusters
recovering planted groups, the planted anomaly ranked first, edge event statistics, the
bandwidth report, the background task, and the read credential (Bearer or session cookie).

Also holds the seeded fleet the dashboard test draws.
"""

from __future__ import annotations

import asyncio
import gzip
import math
import random
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient

from cloud.analytics.anomalies import range_floor, rank_anomalies, robust_z
from cloud.analytics.clusters import cluster_homes
from cloud.analytics.fleet import Cell, event_report, percentile_rank
from cloud.analytics.runner import AnalyticsSettings, compute_snapshot
from cloud.app import create_app
from cloud.auth import SESSION_KEY
from cloud.sessions import SESSION_COOKIE, open_session
from cloud.web import ENGINE_KEY
from schemas.batch import Batch, BatchStats, WindowAggregate, encode_batch
from tests.test_cloud_api import (
    GW1_TOKEN,
    GW2_TOKEN,
    READ,
    READ_TOKEN,
    T0,
    AiohttpClient,
    db_url,
    home_id,
    make_config,
    upload_headers,
)

__all__ = ["db_url"]  # the fixture, imported for pytest

HOURS = 48
HOME = {i: home_id(f"home-{i:02d}") for i in range(1, 10)}  # the homes' pseudonyms
INDEX = {home: i for i, home in HOME.items()}
GROUPS = {  # planted clusters: the hour (UTC) their power and motion peak
    7: [HOME[1], HOME[2], HOME[3]],
    19: [HOME[4], HOME[5], HOME[6]],
    1: [HOME[7], HOME[8], HOME[9]],
}
GATEWAY_OF = {HOME[i]: ("gw-1" if i <= 5 else "gw-2") for i in range(1, 10)}
TOKENS = {"gw-1": GW1_TOKEN, "gw-2": GW2_TOKEN}
ANOMALOUS_HOME = HOME[8]
ALARMS = {(HOME[3], 10): 2.0, (HOME[3], 30): 1.0}  # (home, hour index) -> alarms


def _peak(hour: int, at: int) -> float:
    distance = min(abs(hour - at), 24 - abs(hour - at))
    return math.exp(-(distance**2) / 4)


def _window(home: str, t: float, metric: str, value: float, **fields: Any) -> WindowAggregate:
    values: dict[str, Any] = {
        "window_s": 3600,
        "home": home,
        "room_class": "living",
        "device_class": "thermostat",
        "metric": metric,
        "unit": "",
        "policy": "aggregate",
        "count": 60.0,
        "sum": 60.0 * value,
        "mean": value,
        "min": value - 1,
        "max": value + 1,
        "std": 0.5,
    }
    values.update(fields)
    return WindowAggregate(window_start=t, **values)


def fleet_windows() -> list[WindowAggregate]:
    """Two days of hourly windows for nine homes in three planted groups."""
    rng = random.Random(42)
    out = []
    for peak, homes in GROUPS.items():
        for n, home in enumerate(homes):
            level = 1.0 + 0.5 * n  # homes differ in level, not in the shape of their day
            index = INDEX[home]
            for i in range(HOURS):
                t = T0 + 3600 * i
                shape = _peak(i % 24, peak)
                noise = 1 + rng.uniform(-0.02, 0.02)
                out.append(
                    _window(
                        home,
                        t,
                        "power",
                        level * (100 + 400 * shape) * noise,
                        unit="W",
                        device_class="plug",
                    )
                )
                out.append(
                    _window(
                        home,
                        t,
                        "motion",
                        (0.1 + 0.6 * shape) * noise,
                        device_class="motion",
                        std=0.3,
                    )
                )
                temperature = 20 + 0.25 * index + rng.uniform(-0.1, 0.1)
                if home == ANOMALOUS_HOME and i == HOURS - 1:
                    temperature = 35.0
                out.append(_window(home, t, "temperature", temperature, unit="°C"))
                alarms = ALARMS.get((home, i), 0.0)
                mic = {"device_class": "microphone", "min": 0.0, "max": 1.0, "std": None}
                if alarms:
                    # An event count, as the gateway releases it: only windows with alarms,
                    # count = sum = alarms heard, no order statistics.
                    event = {"count": alarms, "sum": alarms, "min": None, "max": None}
                    out.append(_window(home, t, "inference_alarm", 1.0, **{**mic, **event}))
                out.append(_window(home, t, "inference_speech", 0.2, **mic))
    return out


@dataclass
class Seeded:
    windows: list[WindowAggregate]
    ingested: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    wire: dict[str, int] = field(default_factory=lambda: defaultdict(int))


async def seed_fleet(client: TestClient[Any, Any]) -> Seeded:
    """Upload the fleet as the two gateways would: one batch per gateway per 6 hours."""
    windows = fleet_windows()
    seeded = Seeded(windows)
    chunks: dict[tuple[str, int], list[WindowAggregate]] = defaultdict(list)
    for a in windows:
        chunks[(GATEWAY_OF[a.home], int(a.window_start - T0) // (6 * 3600))].append(a)
    seqs: dict[str, int] = defaultdict(int)
    for (gateway, _), aggs in sorted(chunks.items()):
        seqs[gateway] += 1
        ingested = 1000 * len(aggs) + seqs[gateway]
        batch = Batch(
            batch_id=uuid.uuid4().hex,
            gateway=gateway,
            seq=seqs[gateway],
            created_at=T0,
            aggregates=aggs,
            stats=BatchStats(ingested_messages=10 * len(aggs), ingested_bytes=ingested),
        )
        body = gzip.compress(encode_batch(batch), compresslevel=1)
        resp = await client.post(
            "/api/v1/batches", data=body, headers=upload_headers(TOKENS[gateway])
        )
        assert resp.status == 201, await resp.text()
        seeded.ingested[gateway] += ingested
        seeded.wire[gateway] += len(body)
    return seeded


def daily_means(windows: list[WindowAggregate], metric: str) -> dict[str, list[float]]:
    days: dict[tuple[str, float], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for a in windows:
        if a.metric == metric:
            cell = days[(a.home, math.floor(a.window_start / 86400) * 86400)]
            cell[0] += a.count * a.mean
            cell[1] += a.count
    out: dict[str, list[float]] = defaultdict(list)
    for (home, _), (weighted, n) in sorted(days.items()):
        out[home].append(weighted / n)
    return out


async def get(client: TestClient[Any, Any], path: str, **params: str) -> Any:
    resp = await client.get(path, params=params, headers=READ)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_analytics_on_a_seeded_fleet_give_the_known_answers(
    aiohttp_client: AiohttpClient, db_url: str
) -> None:
    client = await aiohttp_client(create_app(make_config(db_url, analytics_interval_s=0)))
    seeded = await seed_fleet(client)
    resp = await client.post("/api/v1/analytics/run", headers=READ)
    assert resp.status == 200
    assert (await resp.json())["homes"] == 9

    # Fleet percentiles of homes' mean daily temperature, and each home's rank.
    fleet = await get(client, "/api/v1/analytics/fleet", metric="temperature")
    means = {h: float(np.mean(v)) for h, v in daily_means(seeded.windows, "temperature").items()}
    (stat,) = fleet["stats"]
    assert (stat["device_class"], stat["homes"], stat["unit"]) == ("thermostat", 9, "°C")
    for name, q in (("p10", 10), ("p50", 50), ("p90", 90)):
        assert stat[name] == pytest.approx(np.percentile(list(means.values()), q), rel=1e-9)
    ranks = {s["home"]: s for s in fleet["homes"]}
    for home, value in means.items():
        assert ranks[home]["value"] == pytest.approx(value, rel=1e-9)
        assert ranks[home]["rank_pct"] == percentile_rank(list(means.values()), value)
        assert ranks[home]["days"] == 2
    one = await get(client, "/api/v1/analytics/fleet", metric="power", home=HOME[5])
    assert [s["home"] for s in one["homes"]] == [HOME[5]]
    assert one["stats"][0]["device_class"] == "plug"

    # The planted groups come back as the clusters, chosen by silhouette.
    clusters = (await get(client, "/api/v1/analytics/clusters"))["report"]
    assert clusters["k"] == 3
    assert sorted(sorted(c["homes"]) for c in clusters["clusters"]) == sorted(
        sorted(h) for h in GROUPS.values()
    )
    assert clusters["families"] == ["power", "occupancy"]
    for c in clusters["clusters"]:
        peak = next(p for p, homes in GROUPS.items() if c["homes"][0] in homes)
        assert int(np.argmax(c["centroid"]["power"])) == peak
        assert np.mean(c["centroid"]["power"]) == pytest.approx(1.0, abs=0.02)

    # The planted temperature jump ranks first, against its history and its cluster.
    anomalies = await get(client, "/api/v1/analytics/anomalies", flagged="true")
    top = anomalies["anomalies"][0]
    assert (top["home"], top["metric"], top["t"]) == (
        ANOMALOUS_HOME,
        "temperature",
        T0 + 3600 * (HOURS - 1),
    )
    assert top["flagged"] and top["value"] == 35.0
    assert top["z_history"] > 10 and top["z_peers"] > 10
    assert all(
        a["home"] == ANOMALOUS_HOME or a["metric"] != "temperature" for a in anomalies["anomalies"]
    )

    # Edge events: alarms per home and day, the speech share, the alarm timeline.
    events = (await get(client, "/api/v1/analytics/events"))["report"]
    alarms = {(d["home"], d["day"]): d["alarms"] for d in events["days"]}
    assert alarms[(HOME[3], T0)] == pytest.approx(2.0)
    assert alarms[(HOME[3], T0 + 86400)] == pytest.approx(1.0)
    assert sum(alarms.values()) == pytest.approx(3.0)
    assert events["alarms_per_home_day"] == pytest.approx(3.0 / 18)
    assert events["speech_share"] == pytest.approx(0.2)
    assert [(p["t"], p["home"], p["alarms"]) for p in events["timeline"]] == [
        (T0 + 3600 * 10, HOME[3], pytest.approx(2.0)),
        (T0 + 3600 * 30, HOME[3], pytest.approx(1.0)),
    ]

    # Bandwidth: bytes ingested at the edge vs bytes uplinked, per gateway and in total.
    band = await get(client, "/api/v1/analytics/bandwidth")
    for g in band["gateways"]:
        assert g["ingested_bytes"] == seeded.ingested[g["gateway"]]
        assert g["uplink_wire_bytes"] == seeded.wire[g["gateway"]]
    total_in, total_wire = sum(seeded.ingested.values()), sum(seeded.wire.values())
    assert band["fleet"]["saving_pct"] == pytest.approx(100 * (1 - total_wire / total_in))
    assert band["fleet"]["reduction_x"] == pytest.approx(total_in / total_wire)

    overview = await get(client, "/api/v1/analytics/overview")
    assert overview["gateways_online"] == 2 and overview["homes"] == 9
    assert overview["aggregate_rows"] == len(seeded.windows)
    assert overview["batches_per_s"] == pytest.approx(16 / 60)
    assert overview["clusters"] == 3 and overview["anomalies_flagged"] >= 1

    rollups = await get(client, "/api/v1/analytics/rollups")
    assert rollups["data_end"] == T0 + 3600 * HOURS
    spans = {m["metric"]: m for m in rollups["metrics"]}
    assert spans["power"]["homes"] == 9 and spans["power"]["windows"] == 9 * HOURS


async def test_the_background_task_runs_on_start_and_stops_with_the_app(
    aiohttp_client: AiohttpClient, db_url: str
) -> None:
    client = await aiohttp_client(create_app(make_config(db_url, analytics_interval_s=0.2)))
    await seed_fleet(client)
    for _ in range(100):
        clusters = (await get(client, "/api/v1/analytics/clusters"))["report"]
        if clusters["k"] == 3:
            break
        await asyncio.sleep(0.1)
    assert clusters["k"] == 3
    task = next(t for t in asyncio.all_tasks() if t.get_name() == "analytics")
    await client.close()
    assert task.cancelled() or task.done()


async def test_analytics_need_the_read_credential_and_the_cookie_works(
    aiohttp_client: AiohttpClient, db_url: str
) -> None:
    client = await aiohttp_client(create_app(make_config(db_url, analytics_interval_s=0)))
    for path in ("/api/v1/analytics/overview", "/api/v1/analytics/fleet"):
        assert (await client.get(path)).status == 401
        resp = await client.get(path, headers={"Authorization": f"Bearer {GW1_TOKEN}"})
        assert resp.status == 401
    assert (await client.post("/api/v1/analytics/run")).status == 401
    # Before login the page is the login form; a wrong token is refused.
    page = await client.get("/")
    assert page.status == 200 and 'action="/login"' in await page.text()
    resp = await client.post("/login", data={"token": "wrong-token-000000000"})
    assert resp.status == 401
    resp = await client.post("/login", data={"token": READ_TOKEN}, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/"
    cookie = resp.cookies[SESSION_COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict"
    assert READ_TOKEN not in cookie.value
    client.session.cookie_jar.clear()  # from here on, cookies only as sent explicitly
    session = {"Cookie": f"{SESSION_COOKIE}={cookie.value}"}
    assert (await client.get("/api/v1/analytics/overview", headers=session)).status == 200
    page = await client.get("/", headers=session)
    assert 'id="chart-series"' in await page.text()
    forged = {"Cookie": f"{SESSION_COOKIE}={'0' * 64}"}
    assert (await client.get("/api/v1/analytics/overview", headers=forged)).status == 401
    # The server checks the session's age: a session opened 13 h ago is refused, and so is a
    # cookie one character away from a real one.
    app = client.server.app
    assert app is not None
    stale = await open_session(app[ENGINE_KEY], app[SESSION_KEY], now=time.time() - 13 * 3600)
    old = {"Cookie": f"{SESSION_COOKIE}={stale}"}
    assert (await client.get("/api/v1/analytics/overview", headers=old)).status == 401
    flipped = ("B" if cookie.value[0] == "A" else "A") + cookie.value[1:]
    moved = {"Cookie": f"{SESSION_COOKIE}={flipped}"}
    assert (await client.get("/api/v1/analytics/overview", headers=moved)).status == 401
    # plotly.js comes from the installed package, not from a CDN.
    js = await client.get("/assets/plotly.min.js")
    assert js.status == 200 and len(await js.read()) > 1_000_000
    assert (await client.get("/assets/../../etc/passwd")).status == 404
    resp = await client.get("/api/v1/analytics/anomalies", params={"flagged": "x"}, headers=READ)
    assert resp.status == 400


def test_robust_z_uses_median_and_mad() -> None:
    sample = [1.0, 2.0, 3.0, 4.0, 100.0]  # median 3, MAD 1: the outlier does not widen it
    z, median = robust_z(6.0, sample)
    assert median == 3.0 and z == pytest.approx(3.0 / 1.4826)
    z, _ = robust_z(5.0, [2.0, 2.0, 2.0, 2.0, 4.0])  # MAD 0: mean absolute deviation stands in
    assert z == pytest.approx(3.0 / (1.2533 * 0.4))
    assert robust_z(2.0, [2.0, 2.0]) == (0.0, 2.0)
    # A constant sample: the scale is 5 % of the median; at median 0 a share of the metric's
    # range, and with no range known there is no z (not a made-up one).
    assert robust_z(3.0, [2.0, 2.0]) == (pytest.approx(10.0), 2.0)
    assert robust_z(1.0, [0.0, 0.0]) == (None, 0.0)
    assert range_floor("motion") == pytest.approx(0.05)
    assert robust_z(0.3, [0.0, 0.0], floor=range_floor("motion")) == (pytest.approx(6.0), 0.0)
    # A noised value: its noise is added to the scale in quadrature.
    z, _ = robust_z(13.0, [1.0, 2.0, 3.0, 4.0, 100.0], noise_sd=1.4826 * math.sqrt(3))
    assert z == pytest.approx(10.0 / (2 * 1.4826))
    assert percentile_rank([1.0, 2.0, 2.0, 3.0], 2.0) == 50.0


def _cell(home: str, metric: str, hour: int, mean: float, **fields: Any) -> Cell:
    count = fields.pop("count", 60.0)
    return Cell(
        home, metric, "x", "", T0 + 3600 * hour, count, count * mean, count * mean, **fields
    )


def test_a_noised_value_is_ranked_only_for_what_its_noise_does_not_explain() -> None:
    homes = [home_id(f"pulse-{i}") for i in range(4)]

    def cells(inv_eps_sq: float) -> list[Cell]:
        out = []
        for i, home in enumerate(homes):
            for hour in range(12):
                mean = 70.0 + 0.5 * ((hour + i) % 3 - 1)
                if i == 0 and hour == 11:
                    mean += 25.0
                out.append(_cell(home, "heart_rate", hour, mean, inv_eps_sq=inv_eps_sq))
        return out

    # Read as exact, the 25 bpm jump is 7 scales out, from its history and its peers...
    (exact,) = [a for a in rank_anomalies(cells(0.0), {}, threshold=3.5, top=10) if a.flagged]
    assert (exact.home, exact.noise_sd, exact.t) == (homes[0], None, T0 + 11 * 3600)
    # ...but with epsilon 1 per window, an hour of 60 readings carries noise of s.d. ~12.6 bpm.
    ranked = rank_anomalies(cells(1.0), {}, threshold=3.5, top=10)
    jump = next(a for a in ranked if a.home == homes[0])
    assert jump.noise_sd == pytest.approx(math.sqrt(8 * (250**2 + jump.value**2)) / 60)
    assert not jump.flagged and jump.score < 2.5
    assert not any(a.flagged for a in ranked)


def test_event_counts_are_not_ranked_and_a_constant_zero_gives_no_placeholder() -> None:
    homes = [home_id(f"quiet-{i}") for i in range(4)]
    cells = [
        _cell(home, metric, hour, 0.0 if metric == "motion" else 1.0, count=1.0)
        for home in homes
        for hour in range(10)
        for metric in ("motion", "inference_alarm", "custom_level")
    ]
    cells.append(_cell(homes[0], "motion", 10, 0.3))
    cells.append(_cell(homes[0], "custom_level", 10, 5.0, count=1.0))
    cells += [
        _cell(h, m, 10, 0.0, count=1.0) for h in homes[1:] for m in ("motion", "custom_level")
    ]
    ranked = rank_anomalies(cells, {}, threshold=3.5, top=50)
    assert all(a.metric != "inference_alarm" for a in ranked)
    motion = next(a for a in ranked if a.home == homes[0] and a.metric == "motion")
    # A constant 0 history and peers: one sigma is 5 % of motion's 0..1 range, not a cap.
    assert motion.z_history == pytest.approx(6.0) and motion.z_peers == pytest.approx(6.0)
    assert motion.flagged
    # An unregistered metric's constant peers: no z at all against them (nothing to scale by);
    # its history of 1.0 (scale 5 % of it) still gives one.
    level = next(a for a in ranked if a.home == homes[0] and a.metric == "custom_level")
    assert level.z_peers is None and level.peers is None
    assert level.z_history == pytest.approx(4.0 / 0.05)
    assert all(abs(a.score) < 1e6 for a in ranked)


def test_cluster_profiles_leave_hours_without_data_as_gaps() -> None:
    homes = [home_id(f"half-{i}") for i in range(6)]
    cells = [
        _cell(home, "power", hour, 100.0 + 50.0 * (hour == (3 if i < 3 else 9)))
        for i, home in enumerate(homes)
        for hour in range(12)  # hours 0-11 UTC only
    ]
    report = cluster_homes(cells, k=2)
    assert report.k == 2
    for cluster in report.clusters:
        profile = cluster.centroid["power"]
        assert profile[12:] == [None] * 12
        assert all(v is not None for v in profile[:12])
        assert np.mean(profile[:12]) == pytest.approx(1.0)


def test_the_events_report_counts_voice_commands() -> None:
    home = home_id("talker")
    hours = [
        _cell(home, "inference_keyword", 5, 1.0, count=3.0),
        _cell(home, "inference_alarm", 6, 1.0, count=1.0),
    ]
    days = [
        Cell(home, "inference_keyword", "x", "", T0, 3.0, 3.0, 3.0),
        Cell(home, "inference_alarm", "x", "", T0, 1.0, 1.0, 1.0),
    ]
    report = event_report(days, hours)
    assert [(p.t, p.keywords, p.alarms) for p in report.timeline] == [
        (T0 + 5 * 3600, 3.0, 0.0),
        (T0 + 6 * 3600, 0.0, 1.0),
    ]
    assert (report.days[0].keywords, report.days[0].alarms) == (3.0, 1.0)


async def test_the_hour_still_filling_is_not_ranked(
    aiohttp_client: AiohttpClient, db_url: str
) -> None:
    client = await aiohttp_client(create_app(make_config(db_url, analytics_interval_s=0)))
    await seed_fleet(client)
    app = client.server.app
    assert app is not None
    last = T0 + 3600 * (HOURS - 1)  # the planted jump's hour
    settings = AnalyticsSettings()
    closed = await compute_snapshot(app[ENGINE_KEY], settings, now=last + 3600)
    assert any(a.flagged and a.t == last for a in closed.anomalies)
    filling = await compute_snapshot(app[ENGINE_KEY], settings, now=last + 1800)
    assert filling.anomalies and all(a.t < last for a in filling.anomalies)
    assert not any(
        a.home == ANOMALOUS_HOME and a.metric == "temperature" and a.flagged
        for a in filling.anomalies
    )


def test_a_pair_whose_newest_hour_is_a_day_old_is_not_ranked() -> None:
    homes = [home_id(f"rotated-{i}") for i in range(4)]
    cells = [
        _cell(h, "temperature", hour, 20.0 + i) for i, h in enumerate(homes) for hour in range(30)
    ]
    # The first home's pseudonym rotated 25 h before the fleet's newest hour (29): it ends at 4.
    cells = [c for c in cells if c.home != homes[0] or c.t <= T0 + 4 * 3600]
    ranked = rank_anomalies(cells, {}, threshold=3.5, top=50)
    assert {a.home for a in ranked} == set(homes[1:])
