"""The cloud enforces the batch contract itself, against the real app (SQLite and PostgreSQL
where storage differs):

- a batch id re-sent with the same body is a 200 duplicate, with another body a 409;
- every rule of `schemas.batch_rules` is refused with a 422 naming the rule and the aggregate;
- window and batch times are bounded to the cloud's clock plus the configured skew;
- one gateway's future-dated windows (stored before that bound existed) do not move the
  analytics' look-back off the rest of the fleet.
"""

from __future__ import annotations

import gzip
import time
from typing import Any

import msgspec
import pytest
from sqlalchemy import update

from cloud.app import create_app
from cloud.db import batches
from cloud.ingest import Body
from cloud.web import BATCH_WRITER_KEY, ENGINE_KEY
from schemas.batch import Batch, BatchPrivacy, WindowAggregate, encode_batch
from schemas.batch_rules import Rule
from tests.test_cloud_api import (
    READ,
    T0,
    AiohttpClient,
    db_url,
    home_id,
    make_aggregate,
    make_batch,
    make_config,
    post,
    row_counts,
    sqlite_url,
    upload_headers,
)

__all__ = ["db_url", "sqlite_url"]  # the fixtures, imported for pytest

Y2100 = 4102444800.0  # the schema's upper bound of window_start and created_at


async def metrics_text(client: Any) -> str:
    return str(await (await client.get("/metrics")).text())


# -- the same batch id with another body --------------------------------------------------------


async def test_a_resend_is_a_duplicate_and_other_content_a_conflict(
    aiohttp_client: AiohttpClient, db_url: str
) -> None:
    client = await aiohttp_client(create_app(make_config(db_url)))
    batch = make_batch()
    assert (await post(client, batch))[0] == 201
    # The same decompressed bytes gzipped otherwise (a proxy re-compressing): the same batch.
    resp = await client.post(
        "/api/v1/batches",
        data=gzip.compress(encode_batch(batch), compresslevel=9),
        headers=upload_headers(),
    )
    assert (resp.status, (await resp.json())["status"]) == (200, "duplicate")
    # The same id for other windows: refused, and what was stored stays.
    other = msgspec.structs.replace(batch, aggregates=[make_aggregate(T0 + 7200, mean=30.0)])
    status, body = await post(client, other)
    assert (status, body["error"]["code"]) == (409, "content_conflict")
    assert batch.batch_id in body["error"]["message"]
    assert await row_counts(client) == (1, 3)
    text = await metrics_text(client)
    assert 'homeedge_cloud_batches_rejected_total{reason="content_conflict"} 1.0' in text
    assert "homeedge_cloud_batches_duplicate_total 1.0" in text


async def test_a_batch_stored_before_digests_were_kept_takes_a_resend_as_a_duplicate(
    aiohttp_client: AiohttpClient, db_url: str
) -> None:
    # Migration 0005 leaves NULL in the rows stored before it: their bodies are gone, and the
    # likely resend is an honest retry, which a 409 would make its gateway park.
    client = await aiohttp_client(create_app(make_config(db_url)))
    batch = make_batch()
    assert (await post(client, batch))[0] == 201
    async with client.server.app[ENGINE_KEY].begin() as conn:  # type: ignore[union-attr]
        await conn.execute(update(batches).values(body_sha256=None))
    other = msgspec.structs.replace(batch, created_at=T0 + 7200)
    assert (await post(client, other))[0] == 200
    assert await row_counts(client) == (1, 3)


# -- the contract's rules -----------------------------------------------------------------------

NOISED: dict[str, Any] = {
    "policy": "noised",
    "epsilon": 0.5,
    "min": None,
    "max": None,
    "std": None,
    "p50": None,
    "p95": None,
}
NO_ORDER: dict[str, Any] = {"min": None, "max": None, "std": None, "p50": None, "p95": None}
ALARMS: dict[str, Any] = {"metric": "inference_alarm", "unit": "", "device_class": "microphone"}
# name -> (fields of aggregates[1], the rule its 422 names)
BROKEN_AGGREGATES: dict[str, tuple[dict[str, Any], Rule]] = {
    "a home id": ({"home": "smith-residence-4821"}, Rule.HOME_NOT_PSEUDONYM),
    "a hardware address": ({"home": "0x00158d0001a2b3c4"}, Rule.HOME_NOT_PSEUDONYM),
    "a free-text room": ({"room_class": "annas-lounge"}, Rule.ROOM_CLASS_UNKNOWN),
    "a device name": ({"device_class": "thermostat-q4821x1"}, Rule.DEVICE_CLASS_UNKNOWN),
    "exact heart rate": (
        {"metric": "heart_rate", "unit": "bpm", "mean": 70.0, "min": 60.0, "max": 80.0},
        Rule.HEALTH_NOT_NOISED,
    ),
    "a window under the minimum count": (
        {"count": 4.0, "sum": 84.0},
        Rule.WINDOW_TOO_SMALL,
    ),
    # An event count is released from one event up only as a count: with order statistics it
    # is held to the normal floor (a single reading's value never passes as an event).
    "one event with order statistics": (
        {**ALARMS, "count": 1.0, "sum": 1.0, "mean": 1.0, "min": 1.0, "max": 1.0},
        Rule.WINDOW_TOO_SMALL,
    ),
    "an event count of 0": (
        {**ALARMS, **NO_ORDER, "count": 0.0, "sum": 0.0, "mean": 1.0},
        Rule.WINDOW_TOO_SMALL,
    ),
    "an event count whose sum is not its count": (
        {**ALARMS, **NO_ORDER, "count": 2.0, "sum": 1.0, "mean": 0.5},
        Rule.EVENT_SUM_NOT_COUNT,
    ),
    "a noised window with min and max": (
        {**NOISED, "min": 20.0, "max": 22.0},
        Rule.NOISED_ORDER_STATISTICS,
    ),
    "a noised window with percentiles": ({**NOISED, "p95": 21.8}, Rule.NOISED_ORDER_STATISTICS),
    "a noised window without epsilon": ({**NOISED, "epsilon": None}, Rule.NOISED_WITHOUT_EPSILON),
    "min above max": ({"min": 23.0, "max": 20.0}, Rule.MIN_ABOVE_MAX),
    # found by tests/test_cloud_batch_properties.py: a 500 on PostgreSQL (mean * mean underflows)
    "a mean of 1e-200": ({"mean": 1e-200, "sum": 6e-200}, Rule.TINY_STATISTIC),
    "a std of 1e-170": ({"std": 1e-170}, Rule.TINY_STATISTIC),
    "a NUL in the unit": ({"unit": "C\x00"}, Rule.UNIT_NOT_PRINTABLE),
    "a bidi override in the unit": ({"unit": "\u202eC"}, Rule.UNIT_NOT_PRINTABLE),
    "a window dated 2100": ({"window_start": Y2100}, Rule.WINDOW_IN_FUTURE),
}


def broken_batch(fields: dict[str, Any]) -> Batch:
    aggs = [make_aggregate(T0 + 60 * i) for i in range(3)]
    aggs[1] = msgspec.structs.replace(aggs[1], **fields)
    return make_batch(aggs=aggs)


@pytest.mark.parametrize("case", list(BROKEN_AGGREGATES))
async def test_each_rule_is_refused_with_a_422_naming_it(
    aiohttp_client: AiohttpClient, sqlite_url: str, case: str
) -> None:
    fields, rule = BROKEN_AGGREGATES[case]
    client = await aiohttp_client(create_app(make_config(sqlite_url)))
    status, body = await post(client, broken_batch(fields))
    assert status == 422, body
    error = body["error"]
    assert (error["code"], error["aggregate"]) == (rule.value, 1)
    assert error["message"].startswith("aggregates[1]: ")
    assert await row_counts(client) == (0, 0)
    assert f'homeedge_cloud_batches_rejected_total{{reason="{rule}"}} 1.0' in (
        await metrics_text(client)
    )
    # The same batch with that aggregate mended is stored.
    assert (await post(client, broken_batch({})))[0] == 201


async def test_a_window_under_the_count_the_batch_declares_is_refused(
    aiohttp_client: AiohttpClient, sqlite_url: str
) -> None:
    client = await aiohttp_client(create_app(make_config(sqlite_url, min_window_count=1)))
    batch = make_batch()  # windows of 6 readings
    declared = msgspec.structs.replace(batch, privacy=BatchPrivacy(min_window_count=10))
    status, body = await post(client, declared)
    assert (status, body["error"]["code"], body["error"]["aggregate"]) == (
        422,
        "window_too_small",
        0,
    )
    # The cloud's floor is a setting: at its default (5) a window of 4 readings is refused, at
    # 1 it is stored.
    small = make_batch(aggs=[make_aggregate(T0, count=4.0, sum=84.0)])
    assert (await post(client, small))[0] == 201


async def test_one_event_is_stored_as_a_count_of_one(
    aiohttp_client: AiohttpClient, db_url: str
) -> None:
    # At the cloud's default floor (5), a measured window of one reading is refused, one alarm
    # heard (an event count, schemas.batch_rules) is stored.
    client = await aiohttp_client(create_app(make_config(db_url)))
    one = {**ALARMS, **NO_ORDER, "count": 1.0, "sum": 1.0, "mean": 1.0}
    aggs = [msgspec.structs.replace(make_aggregate(T0), **one)]
    assert (await post(client, make_batch(aggs=aggs)))[0] == 201
    measured = make_aggregate(T0 + 60, count=1.0, sum=21.0, mean=21.0, min=21.0, max=21.0)
    status, body = await post(client, make_batch(aggs=[measured]))
    assert (status, body["error"]["code"]) == (422, "window_too_small")
    assert await row_counts(client) == (1, 1)


async def test_times_are_bounded_to_the_clock_plus_the_skew(
    aiohttp_client: AiohttpClient, db_url: str
) -> None:
    client = await aiohttp_client(create_app(make_config(db_url, max_clock_skew_s=600)))
    now = time.time()
    # A window ending within the skew (a gateway clock a little ahead) is fine.
    ahead = make_batch(aggs=[make_aggregate(now + 500 - 60)])
    assert (await post(client, ahead))[0] == 201
    status, body = await post(client, make_batch(aggs=[make_aggregate(now + 700 - 60)]))
    assert (status, body["error"]["code"], body["error"]["aggregate"]) == (
        422,
        "window_in_future",
        0,
    )
    made_in_2100 = msgspec.structs.replace(make_batch(), created_at=Y2100)
    status, body = await post(client, made_in_2100)
    assert (status, body["error"]["code"]) == (422, "created_in_future")
    assert "aggregate" not in body["error"] and body["error"]["message"].startswith("batch: ")
    assert await row_counts(client) == (1, 1)


# -- analytics against one gateway's outliers ---------------------------------------------------

GATEWAYS = {f"gw-{g}": f"gw{g}-token-0123456789abcdef" for g in range(1, 5)}


def hourly(home: str, start: float, hours: int, value: float) -> list[WindowAggregate]:
    return [
        make_aggregate(
            start + 3600 * i,
            window_s=3600,
            home=home,
            device_class="thermostat",
            count=60.0,
            sum=60.0 * value,
            mean=value,
            min=value - 1,
            max=value + 1,
        )
        for i in range(hours)
    ]


async def test_one_gateways_future_windows_do_not_blind_the_fleet_analytics(
    aiohttp_client: AiohttpClient, db_url: str
) -> None:
    config = make_config(db_url, analytics_interval_s=0, gateways=GATEWAYS)
    client = await aiohttp_client(create_app(config))
    for n, (gateway, token) in enumerate(GATEWAYS.items()):
        batch = make_batch(aggs=hourly(home_id(gateway), T0, 48, 20.0 + n), gateway=gateway)
        assert (await post(client, batch, token=token))[0] == 201
    # gw-4's clock once said 2100. Ingest refuses that now...
    future = hourly(home_id("gw-4"), Y2100 - 86400, 2, 25.0)
    late = make_batch(seq=2, aggs=future, gateway="gw-4")
    status, body = await post(client, late, token=GATEWAYS["gw-4"])
    assert (status, body["error"]["code"]) == (422, "window_in_future")
    # ...but a database may hold such windows from before: stored here as it was then.
    writer = client.server.app[BATCH_WRITER_KEY]  # type: ignore[union-attr]
    await writer.store(late, Body.of(encode_batch(late)))

    resp = await client.post("/api/v1/analytics/run", headers=READ)
    assert resp.status == 200
    resp = await client.get(
        "/api/v1/analytics/fleet", params={"metric": "temperature"}, headers=READ
    )
    fleet = await resp.json()
    (stat,) = fleet["stats"]
    assert stat["homes"] == 4
    assert fleet["until"] == T0 + 2 * 86400
    resp = await client.get("/api/v1/analytics/rollups", headers=READ)
    assert (await resp.json())["data_end"] == T0 + 48 * 3600
