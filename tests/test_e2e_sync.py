"""Cloud sync end to end with real parts: seeded simulator telemetry (and audio frames) published
at QoS 1 to a real Mosquitto -> the real gateway (in process, its SQLite in tmp_path) -> a
recording reverse proxy -> the real cloud app on SQLite and on PostgreSQL.

- The cloud's aggregates equal the ones this test computes on its own from what it published
  (windows, room classes, device classes, the home's keyed pseudonym, exact statistics).
- Every byte the gateway sent (raw, still gzip-compressed, and inflated) is free of device ids,
  home ids, room names, device names and the audio frames' sample pattern.

The helpers here (cloud, proxy, identities, publishing) are shared with tests/test_e2e_outage.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import hmac
import math
import re
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from sqlalchemy import select

from cloud.app import create_app
from cloud.config import CloudConfig
from cloud.db import aggregates as cloud_aggregates
from cloud.web import ENGINE_KEY
from devices.world import World
from gateway.app import Gateway, create_gateway
from gateway.config import (
    AdminConfig,
    ConfigError,
    GatewayConfig,
    MqttConfig,
    StorageConfig,
    load_config,
)
from gateway.sync.settings import AggregationSettings, PrivacySettings, UplinkSettings
from gateway.sync.wiring import SyncService, install_sync
from schemas.audio import encode_audio_frame
from schemas.batch import decode_batch
from schemas.telemetry import encode_telemetry
from schemas.topics import device_topic
from tests.conftest import MosquittoBroker
from tests.test_gateway_ingest import Publisher, metric_value, query
from tests.waiting import wait_for

GATEWAY_ID = "gw-e2e"
GW_TOKEN = "e2e-gateway-token-0123456789"
READ_TOKEN = "e2e-read-token-0123456789ab"
WINDOW_S = 10

# Identities that must never leave the home. Room names are chosen so that none of them is also
# a room class word ("living", "kitchen"... are what the cloud may see), and device ids get a
# home-specific suffix, so a leak of either is a string the test can find.
HOME_NAMES = {"home-001": "smith-residence-4821", "home-002": "jones-residence-9377"}
ROOM_NAMES = {
    "hallway": "front-foyer",
    "living": "annas-lounge",
    "kitchen": "chef-cookery",
    "bedroom": "master-suite",
    "office": "study-nook",
}
# What the privacy filter must turn them into (written out here, not taken from the gateway).
ROOM_CLASSES = {
    "front-foyer": "hall",
    "annas-lounge": "living",
    "chef-cookery": "kitchen",
    "master-suite": "bedroom",
    "study-nook": "office",
}
# A sample pattern no real audio or JSON contains; its little-endian bytes are searched for.
AUDIO_PATTERN = np.array([0x5AA5, 0x3CC3, 0x0FF0, 0x6996, 0x1234, 0x7BDE], dtype=np.int16)
AUDIO_PATTERN_BYTES = AUDIO_PATTERN.astype("<i2").tobytes()
AUDIO_FRAME_SAMPLES = 1602  # 0.1 s, a whole number of patterns


def device_name(home: str, device: str) -> str:
    """``thermostat-1`` of home-001 -> ``thermostat-q4821x1``: class prefix kept, id unique."""
    prefix, n = device.rsplit("-", 1)
    return f"{prefix}-q{HOME_NAMES[home][-4:]}x{n}"


# -- the cloud -------------------------------------------------------------------------------


def cloud_config(database_url: str, **overrides: Any) -> CloudConfig:
    values: dict[str, Any] = {
        "database_url": database_url,
        "port": 0,
        "gateways": {GATEWAY_ID: GW_TOKEN},
        "read_token": READ_TOKEN,
        "analytics_interval_s": 0,
    }
    values.update(overrides)
    return CloudConfig.model_validate(values)


@dataclass
class Exchange:
    """One request through the proxy: the body exactly as the gateway sent it, and the answer."""

    method: str
    path: str
    headers: dict[str, str]
    raw_body: bytes
    status: int = 0
    response: bytes = b""

    @property
    def batch(self) -> Any:
        return decode_batch(gzip.decompress(self.raw_body))


AfterForward = Callable[[Exchange], Awaitable[None]]


@dataclass
class RecordingProxy:
    """A reverse proxy that records every request's raw body (request decompression is off, so
    these are the bytes on the wire) and forwards it unchanged to `upstream`."""

    upstream: str
    after_forward: AfterForward | None = None
    exchanges: list[Exchange] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._session = aiohttp.ClientSession(auto_decompress=False)
        self._runner = web.AppRunner(app, access_log=None, auto_decompress=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.Response:
        assert self._session is not None
        ex = Exchange(request.method, request.path_qs, dict(request.headers), await request.read())
        self.exchanges.append(ex)
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() in ("content-type", "content-encoding", "authorization")
        }
        try:
            async with self._session.request(
                request.method, self.upstream + request.path_qs, data=ex.raw_body, headers=headers
            ) as resp:
                ex.status, ex.response = resp.status, await resp.read()
        except aiohttp.ClientError as exc:
            ex.status, ex.response = 502, str(exc).encode()
        if self.after_forward is not None:
            await self.after_forward(ex)
        return web.Response(status=ex.status, body=ex.response, content_type="application/json")

    def posts(self) -> list[Exchange]:
        return [e for e in self.exchanges if e.method == "POST"]


@dataclass
class InProcessCloud:
    """The real cloud app on a free port in this event loop."""

    config: CloudConfig
    app: web.Application | None = None
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        self.app = create_app(self.config)
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def rows(self) -> list[Any]:
        assert self.app is not None
        async with self.app[ENGINE_KEY].connect() as conn:
            return list((await conn.execute(select(cloud_aggregates))).all())


async def get_json(url: str, path: str, **params: str) -> Any:
    headers = {"Authorization": f"Bearer {READ_TOKEN}"}
    async with (
        aiohttp.ClientSession() as http,
        http.get(url + path, params=params, headers=headers) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return await resp.json()


# -- the gateway -----------------------------------------------------------------------------


def gateway_config(
    tmp_path: Path,
    broker: MosquittoBroker,
    topic_root: str,
    uplink_url: str,
    *,
    aggregation: dict[str, Any] | None = None,
    privacy: dict[str, Any] | None = None,
    uplink: dict[str, Any] | None = None,
) -> GatewayConfig:
    return GatewayConfig(
        gateway_id=GATEWAY_ID,
        mqtt=MqttConfig(
            url=broker.url,
            topic_root=topic_root,
            client_id=f"gw-{topic_root}",
            reconnect_min_s=0.1,
            reconnect_max_s=1.0,
        ),
        storage=StorageConfig(path=tmp_path / "gateway.db"),
        admin=AdminConfig(port=0),
        aggregation=AggregationSettings.model_validate(
            {"window_s": WINDOW_S, "grace_s": 1.0, "windows_per_batch": 1, **(aggregation or {})}
        ),
        privacy=PrivacySettings.model_validate(privacy or {}),
        uplink=UplinkSettings.model_validate(
            {
                "url": uplink_url,
                "token": GW_TOKEN,
                "backoff_min_s": 0.1,
                "backoff_max_s": 0.5,
                **(uplink or {}),
            }
        ),
    )


def pseudonym(secret: bytes, home: str, window_start: float, rotation_days: int = 30) -> str:
    """The documented pseudonym: "h-" + HMAC-SHA256(key, home NUL epoch), 20 hex digits."""
    epoch = int(window_start // (rotation_days * 86400))
    return "h-" + hmac.new(secret, f"{home}\x00{epoch}".encode(), hashlib.sha256).hexdigest()[:20]


# -- the published data ----------------------------------------------------------------------


@dataclass(frozen=True)
class Published:
    home: str
    room: str
    device: str
    device_class: str
    metric: str
    ts: float
    value: float


@dataclass
class Scenario:
    readings: list[Published]
    telemetry: int
    audio: int


def publish_world(publisher: Publisher, topic_root: str, start: float, steps: int) -> Scenario:
    """Two seeded homes, one message per device per second over `steps` seconds from `start`,
    renamed to the identities above; microphones send frames of the sample pattern."""
    world = World(homes=2, seed=5, anomaly_rate=0.0)
    out = Scenario([], 0, 0)
    pattern = np.tile(AUDIO_PATTERN, AUDIO_FRAME_SAMPLES // len(AUDIO_PATTERN))
    for em in world.run(start=start, step=1.0, steps=steps):
        spec = em.spec
        home, room = HOME_NAMES[spec.home], ROOM_NAMES[spec.room]
        device = device_name(spec.home, spec.device)
        if em.readings is None:
            payload = encode_audio_frame(em.ts, em.seq % 2**32, pattern)
            publisher.publish(device_topic(home, room, device, "audio", root=topic_root), payload)
            out.audio += 1
            continue
        topic = device_topic(home, room, device, "telemetry", root=topic_root)
        publisher.publish(topic, em.payload)
        out.telemetry += 1
        for name, value in em.readings.items():
            out.readings.append(
                Published(home, room, device, spec.device_class.value, name, em.ts, value)
            )
    return out


def expected_aggregates(
    readings: list[Published], secret: bytes, *, min_count: int, noised: set[str]
) -> tuple[dict[tuple[Any, ...], dict[str, float]], set[tuple[Any, ...]]]:
    """What the cloud must hold: exact statistics per (pseudonym, room class, device class,
    metric, window start) for the aggregate metrics, and the keys of the noised ones."""
    groups: dict[tuple[Any, ...], list[float]] = defaultdict(list)
    for r in readings:
        start = math.floor(r.ts / WINDOW_S) * WINDOW_S
        key = (pseudonym(secret, r.home, start), ROOM_CLASSES[r.room], r.device_class, r.metric)
        groups[(*key, float(start))].append(r.value)
    exact: dict[tuple[Any, ...], dict[str, float]] = {}
    noised_keys: set[tuple[Any, ...]] = set()
    for key, values in groups.items():
        if key[3] in noised:
            noised_keys.add(key)
            continue
        if len(values) < min_count:
            continue
        v = np.asarray(values)
        exact[key] = {
            "count": float(v.size),
            "sum": float(v.sum()),
            "mean": float(v.mean()),
            "min": float(v.min()),
            "max": float(v.max()),
            "std": float(v.std()),
            "p50": float(np.percentile(v, 50)),
            "p95": float(np.percentile(v, 95)),
        }
    return exact, noised_keys


@dataclass
class Run:
    """What one end-to-end run left behind."""

    scenario: Scenario
    secret: bytes
    proxy: RecordingProxy
    cloud: InProcessCloud
    gateway_db: Path
    sync_metrics: dict[str, float]


@contextlib.asynccontextmanager
async def run_pipeline(
    tmp_path: Path, broker: MosquittoBroker, topic_root: str, database_url: str
) -> AsyncIterator[Run]:
    """Publish the scenario, let the gateway store it, run one aggregation pass, wait until the
    outbox is empty; yields with the cloud still up."""
    cloud = InProcessCloud(cloud_config(database_url))
    await cloud.start()
    proxy = RecordingProxy(cloud.url)
    await proxy.start()
    # Readings 30-70 s in the past: every window is closed (grace 1 s) when the pass runs.
    start = math.floor(time.time() / WINDOW_S) * WINDOW_S - 70.0
    config = gateway_config(
        tmp_path,
        broker,
        topic_root,
        proxy.url,
        # No timed pass: the test runs it once everything is stored, so no reading is late.
        aggregation={"interval_s": 3600},
        privacy={"epsilon": 5.0},
        uplink={"batch_max_aggregates": 50},  # several batches, so order and seq are tested
    )
    gw = Gateway(config)
    sync: SyncService = install_sync(gw, config)
    publisher = Publisher(broker.port)
    db = tmp_path / "gateway.db"
    try:
        async with gw:
            assert await asyncio.to_thread(gw.mqtt.subscribed.wait, 10), "never subscribed"
            scenario = await asyncio.to_thread(publish_world, publisher, topic_root, start, 40)
            await asyncio.to_thread(publisher.wait_acked)
            n = len(scenario.readings)
            await wait_for(
                lambda: (
                    query(db, "SELECT count(*) FROM readings")[0][0] == n
                    and metric_value(gw, "homeedge_gateway_audio_frames_total") == scenario.audio
                ),
                what=f"{n} readings and {scenario.audio} audio frames stored/received",
            )
            result = await sync.run_pass()
            assert result is not None and result.enqueued.seqs
            await wait_for(
                lambda: sync.health()["outbox_depth"] == 0 and sync.health()["last_success_at"],
                what="the outbox drained",
            )
            health = gw.health()["sync"]
            assert health["uplink"] == "ok" and health["last_error"] is None
            names = ("batches_sent", "batches_enqueued", "retries", "late_readings")
            metrics = {n: metric_value(gw, f"homeedge_gateway_sync_{n}_total") for n in names}
        secret = bytes.fromhex((tmp_path / "gateway.secret").read_text().strip())
        yield Run(scenario, secret, proxy, cloud, db, metrics)
    finally:
        publisher.close()
        await proxy.stop()
        await cloud.stop()


# -- the tests -------------------------------------------------------------------------------


async def check_cloud_equals_independent_computation(run: Run) -> None:
    exact, noised_keys = expected_aggregates(
        run.scenario.readings, run.secret, min_count=5, noised={"heart_rate"}
    )
    assert exact and noised_keys  # the scenario exercises both policies
    rows = await run.cloud.rows()
    got: dict[tuple[Any, ...], Any] = {}
    for row in rows:
        key = (row.home, row.room_class, row.device_class, row.metric, row.window_start)
        assert key not in got, f"aggregate {key} stored twice"
        assert row.gateway == GATEWAY_ID and row.window_s == WINDOW_S
        got[key] = row
    assert set(got) == set(exact) | noised_keys
    for key, want in exact.items():
        row = got[key]
        assert row.policy == "aggregate" and row.epsilon is None
        for stat, value in want.items():
            # released statistics are rounded to 7 significant digits: |error| <= 5e-7 relative
            assert getattr(row, stat) == pytest.approx(value, rel=5.01e-7, abs=1e-9), (key, stat)
    for key in noised_keys:
        row = got[key]
        assert row.policy == "noised" and row.epsilon == 5.0
        assert (row.min, row.max, row.std, row.p50, row.p95) == (None,) * 5
        assert row.count > 0 and 20.0 <= row.mean <= 250.0
    # The read API serves the same numbers (one metric, raw windows).
    body = await get_json(
        run.cloud.url,
        "/api/v1/aggregates",
        metric="temperature",
        group_by="home,room_class,device_class",
    )
    served = {
        (
            s["key"]["home"],
            s["key"]["room_class"],
            s["key"]["device_class"],
            "temperature",
            p["t"],
        ): p
        for s in body["series"]
        for p in s["points"]
    }
    want_t = {k: v for k, v in exact.items() if k[3] == "temperature"}
    assert set(served) == set(want_t)
    for key, want in want_t.items():
        assert served[key]["count"] == want["count"]
        assert served[key]["p95"] == pytest.approx(want["p95"], rel=5.01e-7)
    # Every batch arrived once, in order, without gaps.
    posts = run.proxy.posts()
    assert [e.status for e in posts] == [201] * len(posts)
    assert [e.batch.seq for e in posts] == list(range(1, len(posts) + 1))
    assert run.sync_metrics["batches_sent"] == len(posts) == run.sync_metrics["batches_enqueued"]
    assert run.sync_metrics["retries"] == 0 and run.sync_metrics["late_readings"] == 0
    gateways = await get_json(run.cloud.url, "/api/v1/gateways")
    (status,) = [g for g in gateways["gateways"] if g["gateway"] == GATEWAY_ID]
    assert status["batches"] == len(posts) and status["missing"] == 0 and status["gaps"] == []


async def test_cloud_on_sqlite_holds_exactly_the_independently_computed_aggregates(
    tmp_path: Path, mosquitto: MosquittoBroker, topic_root: str
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}"
    async with run_pipeline(tmp_path, mosquitto, topic_root, url) as run:
        await check_cloud_equals_independent_computation(run)


@pytest.mark.postgres
async def test_cloud_on_postgresql_holds_exactly_the_independently_computed_aggregates(
    tmp_path: Path, mosquitto: MosquittoBroker, topic_root: str, pg_url: str
) -> None:
    async with run_pipeline(tmp_path, mosquitto, topic_root, pg_url) as run:
        await check_cloud_equals_independent_computation(run)


async def test_no_identity_and_no_audio_byte_crosses_the_wire(
    tmp_path: Path, mosquitto: MosquittoBroker, topic_root: str
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}"
    async with run_pipeline(tmp_path, mosquitto, topic_root, url) as run:
        exchanges = run.proxy.exchanges
        # Everything the gateway sent was batch uploads, and they carried real content.
        assert exchanges and all(e.path == "/api/v1/batches" for e in exchanges)
        assert all(e.headers.get("Content-Encoding") == "gzip" for e in exchanges)
        inflated = [gzip.decompress(e.raw_body) for e in exchanges]
        aggregates = sum(len(e.batch.aggregates) for e in exchanges)
        assert aggregates == len(await run.cloud.rows()) > 50
        # Home, room and device names, the id suffix of each device, and every word of the
        # home and room names (a device class such as "thermostat" may leave; an id may not).
        forbidden: set[str] = set()
        for r in run.scenario.readings:
            forbidden |= {r.home, r.room, r.device, r.device.rsplit("-", 1)[1]}
            forbidden |= {w for w in re.findall(r"[a-z]+", f"{r.home} {r.room}") if len(w) > 3}
        assert len(forbidden) > 50
        wire = [e.raw_body for e in exchanges] + [
            f"{k}: {v}".encode() for e in exchanges for k, v in e.headers.items()
        ]
        leaks = [
            word
            for word in sorted(forbidden)
            for blob in (*wire, *inflated)
            if word.encode() in blob
        ]
        assert leaks == []
        # The audio pattern, whole or any 4 bytes of it, appears in no body, raw or inflated.
        chunks = {AUDIO_PATTERN_BYTES[i : i + 4] for i in range(len(AUDIO_PATTERN_BYTES) - 3)}
        assert not [c for c in chunks for blob in (*wire, *inflated) if c in blob]
        # ...although the gateway did receive those frames, and the data did reach the cloud.
        assert run.scenario.audio > 0
        total = sum(len(b) for b in inflated)
        print(
            f"privacy: {len(exchanges)} uploads, {sum(len(w) for w in wire)} bytes on the wire "
            f"({total} inflated), {aggregates} aggregates; {len(forbidden)} identities and "
            f"{run.scenario.audio} patterned audio frames checked: no leak"
        )


async def test_gateway_without_uplink_aggregates_into_its_outbox_and_reports_it(
    tmp_path: Path, mosquitto: MosquittoBroker, topic_root: str
) -> None:
    # The sections as a TOML file, as `python -m gateway` reads them; a typo names its field.
    (tmp_path / "data").mkdir()
    toml = tmp_path / "gateway.toml"
    toml.write_text(
        f'gateway_id = "{GATEWAY_ID}"\n'
        f'[mqtt]\nurl = "{mosquitto.url}"\ntopic_root = "{topic_root}"\n'
        f'[storage]\npath = "{tmp_path / "data" / "gw.db"}"\n'
        "[admin]\nport = 0\n"
        '[aggregation]\nwindow_s = 10\ngrace_s = 1\ninterval_s = 0.2\nclock = "event"\n'
        "windows_per_batch = 1\n"
        "[privacy]\nmin_window_count = 3\n"
        '[uplink]\nurl = ""\n'
    )
    config = load_config(toml)
    with pytest.raises(ConfigError, match=r"aggregation\.window_sz"):
        load_config(toml, aggregation={"window_sz": 10})
    with pytest.raises(ConfigError, match="url is set but token is empty"):
        load_config(toml, uplink={"url": "http://127.0.0.1:1"})
    # One device, in order: on the event clock a window closes once a later reading is stored.
    start = math.floor(time.time() / 10) * 10 - 100.0
    topic = device_topic("home-z", "den", "thermostat-9", "telemetry", root=topic_root)
    publisher = Publisher(mosquitto.port)
    try:
        async with create_gateway(config) as gw, aiohttp.ClientSession() as http:
            assert await asyncio.to_thread(gw.mqtt.subscribed.wait, 10), "never subscribed"
            for i in range(40):
                payload = encode_telemetry(start + i, {"temperature": 20.0 + i % 3}, seq=i)
                publisher.publish(topic, payload)
            await asyncio.to_thread(publisher.wait_acked)
            admin = f"http://127.0.0.1:{gw.admin_port}"

            async def sync_health() -> dict[str, Any]:
                async with http.get(f"{admin}/healthz") as resp:
                    body: dict[str, Any] = (await resp.json())["sync"]
                    return body

            # windows [start, start+30) closed (the newest reading is start+39, grace 1 s)
            await wait_for(
                lambda: metric_value(gw, "homeedge_gateway_sync_windows_total") == 3,
                what="three windows aggregated",
            )
            health = await sync_health()
            assert health["uplink"] == "disabled" and health["clock"] == "event"
            assert health["outbox_depth"] >= 1 and health["last_pass_at"]
            async with http.get(f"{admin}/metrics") as resp:
                exposition = await resp.text()
        for name in (
            "outbox_depth",
            "batches_sent_total",
            "retries_total",
            "batches_rejected_total",
            "outbox_dropped_total",
            "outbox_refused_total",
            "epsilon_refused_total",
            "suppressed_windows_total",
            "late_readings_total",
        ):
            assert f"homeedge_gateway_sync_{name}" in exposition, name
        pending = query(tmp_path / "data" / "gw.db", "SELECT status, n_aggregates FROM outbox")
        assert {status for status, _ in pending} == {"pending"}
        assert sum(n for _, n in pending) == 3  # one aggregate per window: all kept for later
        depth = f"homeedge_gateway_sync_outbox_depth {float(len(pending))}"
        assert depth in exposition and health["outbox_depth"] == len(pending)
        # The key file sits next to the database, private to its owner.
        key = tmp_path / "data" / "gw.secret"
        assert key.stat().st_mode & 0o777 == 0o600
    finally:
        publisher.close()
