"""The cloud HTTP API against the real app, on SQLite in tmp_path and on the real PostgreSQL.

Also holds the small builders (batches, configs, upload helper) the other cloud tests import.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import random
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select

from cloud.app import create_app
from cloud.config import CloudConfig
from cloud.db import aggregates, batches
from cloud.web import ENGINE_KEY
from schemas.batch import Batch, WindowAggregate, encode_batch
from tests.conftest import PG_DSN

GW1_TOKEN = "gw1-token-0123456789abcdef"
GW2_TOKEN = "gw2-token-0123456789abcdef"
READ_TOKEN = "read-token-0123456789abcdef"
T0 = 1_764_374_400.0  # 2025-11-29 00:00:00 UTC, a day boundary

AiohttpClient = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


def home_id(label: str) -> str:
    """A home pseudonym as a gateway makes them (``h-`` + 20 hex digits), derived from `label`."""
    return "h-" + hashlib.sha256(label.encode()).hexdigest()[:20]


HOME_A = home_id("a")
HOME_B = home_id("b")


def make_config(database_url: str, **overrides: Any) -> CloudConfig:
    values: dict[str, Any] = {
        "database_url": database_url,
        "port": 0,
        "gateways": {"gw-1": GW1_TOKEN, "gw-2": GW2_TOKEN},
        "read_token": READ_TOKEN,
    }
    values.update(overrides)
    return CloudConfig.model_validate(values)


def make_aggregate(window_start: float, **fields: Any) -> WindowAggregate:
    values: dict[str, Any] = {
        "window_s": 60,
        "home": HOME_A,
        "room_class": "kitchen",
        "device_class": "thermostat",
        "metric": "temperature",
        "unit": "C",
        "policy": "aggregate",
        "count": 6.0,
        "sum": 126.0,
        "mean": 21.0,
        "min": 20.0,
        "max": 22.0,
        "std": 0.5,
        "p50": 21.0,
        "p95": 21.8,
    }
    values.update(fields)
    return WindowAggregate(window_start=window_start, **values)


def make_batch(
    seq: int = 1, aggs: list[WindowAggregate] | None = None, gateway: str = "gw-1"
) -> Batch:
    if aggs is None:
        aggs = [make_aggregate(T0 + 60 * i) for i in range(3)]
    return Batch(
        batch_id=uuid.uuid4().hex, gateway=gateway, seq=seq, created_at=T0 + 3600, aggregates=aggs
    )


def gzip_body(batch: Batch) -> bytes:
    return gzip.compress(encode_batch(batch), compresslevel=1)


def upload_headers(token: str = GW1_TOKEN) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {token}",
        "Content-Encoding": "gzip",
        "Content-Type": "application/json",
    }


READ = {"Authorization": f"Bearer {READ_TOKEN}"}


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}"


async def row_counts(client: TestClient[Any, Any]) -> tuple[int, int]:
    engine = client.server.app[ENGINE_KEY]  # type: ignore[union-attr]
    async with engine.connect() as conn:
        n_batches = await conn.scalar(select(func.count()).select_from(batches))
        n_aggs = await conn.scalar(select(func.count()).select_from(aggregates))
    return int(n_batches or 0), int(n_aggs or 0)


async def post(client: TestClient[Any, Any], batch: Batch, token: str = GW1_TOKEN) -> Any:
    resp = await client.post(
        "/api/v1/batches", data=gzip_body(batch), headers=upload_headers(token)
    )
    return resp.status, await resp.json()


async def test_store_then_query_returns_the_exact_numbers(
    aiohttp_client: AiohttpClient, db_url: str
) -> None:
    # Windows of 1 to 4 readings: the exact numbers are the point, so the floor is lowered.
    client = await aiohttp_client(create_app(make_config(db_url, min_window_count=1)))
    aggs = [
        make_aggregate(T0, count=4, sum=82.0, mean=20.5, min=19.5, max=21.25, std=0.75),
        make_aggregate(T0 + 60, count=2, sum=43.0, mean=21.5, min=21.0, max=22.0, std=0.5),
        make_aggregate(T0, home=HOME_B, count=1, sum=18.0, mean=18.0, min=18.0, max=18.0),
        make_aggregate(T0, metric="humidity", unit="%", count=3, sum=120.0, mean=40.0),
    ]
    status, body = await post(client, make_batch(aggs=aggs))
    assert (status, body["status"]) == (201, "stored")

    resp = await client.get(
        "/api/v1/aggregates", params={"metric": "temperature", "home": HOME_A}, headers=READ
    )
    assert resp.status == 200
    result = await resp.json()
    assert result["metric"] == "temperature" and result["bucket"] == "raw"
    assert len(result["series"]) == 1
    series = result["series"][0]
    assert series["key"] == {
        "gateway": "gw-1",
        "home": HOME_A,
        "room_class": "kitchen",
        "device_class": "thermostat",
        "unit": "C",
    }
    first, second = series["points"]
    assert first == {
        "t": T0,
        "count": 4.0,
        "sum": 82.0,
        "mean": 20.5,
        "min": 19.5,
        "max": 21.25,
        "std": pytest.approx(0.75),
        "windows": 1,
        "p50": 21.0,
        "p95": 21.8,
        "noise_sd": None,  # an exact aggregate: no privacy noise
    }
    assert series["noised"] is False
    assert (second["t"], second["count"], second["mean"], second["max"]) == (T0 + 60, 2, 21.5, 22)

    # No filter on home: two series (HOME_A, HOME_B); humidity never mixes in.
    resp = await client.get("/api/v1/aggregates", params={"metric": "temperature"}, headers=READ)
    keys = [s["key"]["home"] for s in (await resp.json())["series"]]
    assert keys == sorted([HOME_A, HOME_B])


async def test_the_same_batch_twice_is_stored_once(
    aiohttp_client: AiohttpClient, db_url: str
) -> None:
    client = await aiohttp_client(create_app(make_config(db_url)))
    batch = make_batch()
    assert await post(client, batch) == (201, {"status": "stored", "batch_id": batch.batch_id})
    assert await post(client, batch) == (200, {"status": "duplicate", "batch_id": batch.batch_id})
    assert await row_counts(client) == (1, 3)
    metrics = await (await client.get("/metrics")).text()
    assert "homeedge_cloud_batches_stored_total 1.0" in metrics
    assert "homeedge_cloud_batches_duplicate_total 1.0" in metrics
    assert "homeedge_cloud_aggregate_rows_total 3.0" in metrics


async def test_a_batch_id_of_another_gateway_is_a_conflict(
    aiohttp_client: AiohttpClient, sqlite_url: str
) -> None:
    client = await aiohttp_client(create_app(make_config(sqlite_url)))
    batch = make_batch()
    assert (await post(client, batch))[0] == 201
    stolen = Batch(batch_id=batch.batch_id, gateway="gw-2", seq=1, created_at=T0, aggregates=[])
    status, body = await post(client, stolen, token=GW2_TOKEN)
    assert (status, body["error"]["code"]) == (409, "conflict")
    assert await row_counts(client) == (1, 3)


def _raw(payload: bytes, token: str = GW1_TOKEN) -> tuple[bytes, dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    return payload, headers


BAD_UPLOADS: dict[str, tuple[Callable[[], tuple[bytes, dict[str, str]]], int, str]] = {
    "no credential": (
        lambda: (gzip_body(make_batch()), {"Content-Encoding": "gzip"}),
        401,
        "unauthorized",
    ),
    "wrong credential": (
        lambda: (gzip_body(make_batch()), upload_headers("not-a-token-of-anyone")),
        401,
        "unauthorized",
    ),
    "another gateway's identity": (
        lambda: (gzip_body(make_batch(gateway="gw-2")), upload_headers(GW1_TOKEN)),
        403,
        "forbidden",
    ),
    "malformed json": (lambda: _raw(b'{"batch_id": '), 400, "invalid_json"),
    "not gzip although it says so": (
        lambda: (b"plain text", upload_headers()),
        400,
        "bad_encoding",
    ),
    "oversized body": (
        lambda: (gzip.compress(b" " * 300_000), upload_headers()),
        413,
        "payload_too_large",
    ),
    "wrong types": (
        lambda: _raw(encode_batch(make_batch()).replace(b'"seq":1', b'"seq":"one"')),
        422,
        "validation",
    ),
}


async def test_bad_uploads_get_a_json_error_and_store_nothing(
    aiohttp_client: AiohttpClient, db_url: str
) -> None:
    client = await aiohttp_client(create_app(make_config(db_url, max_body_bytes=200_000)))
    for name, (build, status, code) in BAD_UPLOADS.items():
        body, headers = build()
        resp = await client.post("/api/v1/batches", data=body, headers=headers)
        assert resp.status == status, name
        assert resp.content_type == "application/json", name
        error = (await resp.json())["error"]
        assert error["code"] == code, name
        assert error["message"], name
        assert await row_counts(client) == (0, 0), name
    # The wrong-types message names the field.
    body, headers = BAD_UPLOADS["wrong types"][0]()
    resp = await client.post("/api/v1/batches", data=body, headers=headers)
    assert "seq" in (await resp.json())["error"]["message"]
    metrics = await (await client.get("/metrics")).text()
    assert 'homeedge_cloud_batches_rejected_total{reason="forbidden"} 1.0' in metrics
    assert 'homeedge_cloud_batches_rejected_total{reason="oversized"} 1.0' in metrics
    # Plain JSON (no gzip) is accepted too.
    resp = await client.post(
        "/api/v1/batches", data=encode_batch(make_batch()), headers=_raw(b"")[1]
    )
    assert resp.status == 201


def _direct_rollup(
    aggs: list[WindowAggregate], width: int
) -> dict[tuple[str, float], dict[str, float]]:
    """What an hour/day roll-up must be, computed from the windows in Python."""
    groups: dict[tuple[str, float], list[WindowAggregate]] = defaultdict(list)
    for a in aggs:
        groups[(a.room_class, math.floor(a.window_start / width) * width)].append(a)
    expected = {}
    for key, members in groups.items():
        n = sum(a.count for a in members)
        mean = sum(a.count * a.mean for a in members) / n
        sumsq = sum(a.count * ((a.std or 0) ** 2 + a.mean**2) for a in members)
        expected[key] = {
            "count": n,
            "sum": sum(a.sum for a in members),
            "mean": mean,
            "min": min(a.min for a in members if a.min is not None),
            "max": max(a.max for a in members if a.max is not None),
            "std": math.sqrt(max(sumsq / n - mean * mean, 0.0)),
            "windows": len(members),
        }
    return expected


async def test_hour_and_day_buckets_equal_a_direct_computation(
    aiohttp_client: AiohttpClient, db_url: str
) -> None:
    client = await aiohttp_client(create_app(make_config(db_url)))
    rng = random.Random(7)
    aggs = []
    for i in range(400):
        # 10-minute windows over ~1.4 days, two room classes, three homes, odd counts.
        count = rng.randint(5, 30)
        mean = rng.uniform(15, 25)
        std = rng.uniform(0, 2)
        aggs.append(
            make_aggregate(
                T0 + 600 * (i // 2) + 30,
                window_s=600,
                home=home_id(str(i % 3)),
                room_class=("kitchen", "bedroom")[i % 2],
                count=count,
                sum=count * mean,
                mean=mean,
                min=mean - rng.uniform(0, 5),
                max=mean + rng.uniform(0, 5),
                std=std,
            )
        )
    for seq, start in enumerate(range(0, len(aggs), 150), start=1):
        assert (await post(client, make_batch(seq=seq, aggs=aggs[start : start + 150])))[0] == 201

    for bucket, width in (("hour", 3600), ("day", 86400)):
        resp = await client.get(
            "/api/v1/aggregates",
            params={"metric": "temperature", "bucket": bucket, "group_by": "room_class"},
            headers=READ,
        )
        assert resp.status == 200
        got = {
            (s["key"]["room_class"], p["t"]): p
            for s in (await resp.json())["series"]
            for p in s["points"]
        }
        expected = _direct_rollup(aggs, width)
        assert got.keys() == expected.keys(), bucket
        for key, want in expected.items():
            for stat, value in want.items():
                assert got[key][stat] == pytest.approx(value, rel=1e-9, abs=1e-9), (
                    bucket,
                    key,
                    stat,
                )
            assert got[key]["p50"] is None  # percentiles do not combine

    # A time range keeps windows whose start lies in [start, end).
    resp = await client.get(
        "/api/v1/aggregates",
        params={
            "metric": "temperature",
            "bucket": "day",
            "group_by": "",
            "start": T0 + 86400,
            "end": T0 + 2 * 86400,
        },
        headers=READ,
    )
    (series,) = (await resp.json())["series"]
    assert series["key"] == {"unit": "C"}
    assert [p["t"] for p in series["points"]] == [T0 + 86400]
    in_range = [a for a in aggs if T0 + 86400 <= a.window_start < T0 + 2 * 86400]
    assert series["points"][0]["windows"] == len(in_range) > 0


async def test_gateways_report_sequence_gaps_and_lag(
    aiohttp_client: AiohttpClient, db_url: str
) -> None:
    client = await aiohttp_client(create_app(make_config(db_url)))
    for seq in (1, 2, 5, 6, 9):
        aggs = [make_aggregate(T0 + 60 * seq)]
        assert (await post(client, make_batch(seq=seq, aggs=aggs)))[0] == 201
    resp = await client.get("/api/v1/gateways", headers=READ)
    assert resp.status == 200
    body = await resp.json()
    gw1, gw2 = body["gateways"]
    assert gw1["gateway"] == "gw-1" and gw1["configured"] is True
    assert (gw1["batches"], gw1["last_seq"], gw1["missing"]) == (5, 9, 4)
    assert gw1["gaps"] == [[3, 4], [7, 8]]
    assert gw1["lag_s"] == pytest.approx(body["now"] - (T0 + 60 * 9 + 60))
    assert gw1["last_created_at"] == T0 + 3600
    assert gw2 == {
        "gateway": "gw-2",
        "configured": True,
        "batches": 0,
        "last_seq": None,
        "last_batch_at": None,
        "last_created_at": None,
        "missing": 0,
        "gaps": [],
        "lag_s": None,
    }


async def test_read_endpoints_need_the_read_token(
    aiohttp_client: AiohttpClient, sqlite_url: str
) -> None:
    client = await aiohttp_client(create_app(make_config(sqlite_url)))
    for path in ("/api/v1/aggregates?metric=temperature", "/api/v1/gateways"):
        for headers in ({}, {"Authorization": f"Bearer {GW1_TOKEN}"}):
            resp = await client.get(path, headers=headers)
            assert resp.status == 401, (path, headers)
            assert (await resp.json())["error"]["code"] == "unauthorized"
            assert resp.headers["WWW-Authenticate"] == "Bearer"
    # A gateway token does not double as a reader, nor the read token as a gateway.
    status, body = await post(client, make_batch(), token=READ_TOKEN)
    assert (status, body["error"]["code"]) == (401, "unauthorized")


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({}, "metric"),
        ({"metric": "temperature", "bucket": "week"}, "bucket"),
        ({"metric": "temperature", "group_by": "device"}, "group_by"),
        ({"metric": "temperature", "start": "yesterday"}, "start"),
    ],
)
async def test_a_bad_query_names_the_parameter(
    aiohttp_client: AiohttpClient, sqlite_url: str, params: dict[str, str], named: str
) -> None:
    client = await aiohttp_client(create_app(make_config(sqlite_url)))
    resp = await client.get("/api/v1/aggregates", params=params, headers=READ)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "bad_query" and named in error["message"]


async def test_health_metrics_and_aiohttp_errors_are_json(
    aiohttp_client: AiohttpClient, sqlite_url: str
) -> None:
    client = await aiohttp_client(create_app(make_config(sqlite_url)))
    resp = await client.get("/healthz", headers={"X-Request-Id": "trace-42"})
    assert resp.status == 200
    assert (await resp.json())["database"] == "ok"
    assert resp.headers["X-Request-Id"] == "trace-42"

    resp = await client.get("/nowhere")
    assert (resp.status, (await resp.json())["error"]["code"]) == (404, "not_found")
    assert len(resp.headers["X-Request-Id"]) == 32
    resp = await client.delete("/api/v1/batches")
    assert (resp.status, (await resp.json())["error"]["code"]) == (405, "method_not_allowed")
    assert resp.headers["Allow"] == "POST"

    resp = await client.get("/metrics")
    assert resp.status == 200 and resp.content_type == "text/plain"
    text = await resp.text()
    assert 'route="/nowhere"' not in text  # unmatched paths share one label
    assert (
        'homeedge_cloud_request_seconds_count{method="GET",route="unmatched",status="404"} 1.0'
        in text
    )
    assert 'route="/healthz",status="200"' in text


async def test_a_lost_database_answers_503_so_gateways_retry(
    aiohttp_client: AiohttpClient, pg_url: str
) -> None:
    client = await aiohttp_client(create_app(make_config(pg_url)))
    assert (await client.get("/healthz")).status == 200
    name = pg_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(PG_DSN)
    try:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()
    for path, send in (("/healthz", client.get), ("/api/v1/batches", client.post)):
        kwargs = (
            {}
            if path == "/healthz"
            else {"data": gzip_body(make_batch()), "headers": upload_headers()}
        )
        resp = await send(path, **kwargs)
        assert resp.status == 503, path
        assert (await resp.json())["error"]["code"] == "database_unavailable"
        assert resp.headers["Retry-After"] == "5"
