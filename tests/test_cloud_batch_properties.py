"""Property-based tests of ``POST /api/v1/batches`` against the real app (hypothesis).

Whatever a gateway sends (batches of the right shape with random values, resends and reused
ids, random bytes, gzip or not), the cloud answers with a status its OpenAPI document lists for
the route, never a 5xx, always with a JSON body; and everything it stores obeys the batch
contract's rules (`schemas.batch_rules`). One app per test serves every example, so the
examples also meet the state the earlier ones left. Bounded: a few seconds per test.
"""

from __future__ import annotations

import gzip
import json
import time
import uuid
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from cloud.app import create_app
from cloud.config import CloudConfig
from cloud.db import aggregates, batches
from cloud.ingest import AGGREGATE_COLUMNS
from cloud.openapi import OPENAPI_PATH
from cloud.web import CONFIG_KEY, ENGINE_KEY
from schemas.batch import WindowAggregate
from schemas.batch_rules import DEVICE_CLASSES, ROOM_CLASSES, aggregate_violation
from schemas.metrics import METRICS
from tests.test_cloud_api import (
    GW1_TOKEN,
    T0,
    AiohttpClient,
    db_url,
    make_config,
    upload_headers,
)

__all__ = ["db_url"]  # the fixture, imported for pytest

# The statuses the checked-in OpenAPI document lists for the route.
DOCUMENTED = {
    int(status)
    for status in json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))["paths"]["/api/v1/batches"][
        "post"
    ]["responses"]
}
MAX_BODY = 64 * 1024
NOW = time.time()  # fixed: a strategy must draw the same way each time
BOUNDED = settings(
    max_examples=80,
    deadline=None,
    database=None,  # nothing written to the work tree
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- strategies: valid batches, then random fields broken ---------------------------------------

NAMEISH = st.from_regex(r"\A[A-Za-z0-9_.\-]{1,64}\Z")
ANY_TEXT = st.text(max_size=40)
NUMBERS = st.one_of(
    st.floats(-1e3, 1e3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**20), 10**20),
)
ANYTHING = st.one_of(st.none(), st.booleans(), NUMBERS, ANY_TEXT, NAMEISH)
EXACT_METRICS = sorted(m.name for m in METRICS.values() if not m.health)
NOISED_METRICS = sorted(METRICS)
ORDER_STATISTICS = ("min", "max", "std", "p50", "p95")


def mostly(of_type: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Values of the field's type (which may break a rule), sometimes any JSON value."""
    return st.one_of(of_type, of_type, of_type, ANYTHING)


# What a broken field may become.
BROKEN: dict[str, st.SearchStrategy[Any]] = {
    "window_start": mostly(st.one_of(st.floats(0, 5e9), NUMBERS)),
    "window_s": mostly(st.integers(-10, 10**6)),
    "home": mostly(st.one_of(NAMEISH, st.from_regex(r"\Ahome-[0-9]{1,3}\Z"), ANY_TEXT)),
    "room_class": mostly(NAMEISH),
    "device_class": mostly(NAMEISH),
    "metric": mostly(st.one_of(st.sampled_from(sorted(METRICS)), ANY_TEXT)),
    "unit": mostly(st.text(max_size=20)),
    "policy": mostly(st.sampled_from(["aggregate", "noised", "local"])),
    **{
        name: mostly(st.one_of(st.floats(-10, 10), NUMBERS))
        for name in ("count", "sum", "mean", *ORDER_STATISTICS, "epsilon")
    },
}


@st.composite
def valid_aggregates(draw: st.DrawFn) -> dict[str, Any]:
    """An aggregate the contract allows (exact or noised)."""
    noised = draw(st.booleans())
    count = float(draw(st.integers(5, 120)))
    mean = draw(st.integers(-500, 1500)) / 10
    a: dict[str, Any] = {
        "window_start": draw(st.floats(T0, T0 + 30 * 86400)),
        "window_s": draw(st.sampled_from([60, 300, 3600])),
        "home": draw(st.from_regex(r"\Ah-[0-9a-f]{20}\Z")),
        "room_class": draw(st.sampled_from(sorted(ROOM_CLASSES))),
        "device_class": draw(st.sampled_from(sorted(DEVICE_CLASSES))),
        "metric": draw(st.sampled_from(NOISED_METRICS if noised else EXACT_METRICS)),
        "unit": draw(st.sampled_from(["°C", "%", "ppm", "W", "bpm", ""])),
        "policy": "noised" if noised else "aggregate",
        "count": count,
        "sum": count * mean,
        "mean": mean,
    }
    if noised:
        a["epsilon"] = draw(st.floats(0.01, 10))
    else:
        spread = draw(st.integers(0, 100)) / 10
        a.update(min=mean - spread, max=mean + spread, std=spread / 2, p50=mean, p95=mean)
    return a


@st.composite
def batch_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """A valid batch, often with a few fields broken (a value off a rule, or any JSON value)."""
    aggs = draw(st.lists(valid_aggregates(), max_size=6))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3]))):
        if aggs:
            a = aggs[draw(st.integers(0, len(aggs) - 1))]
            field = draw(st.sampled_from(sorted(BROKEN)))
            if draw(st.integers(0, 9)) == 5:
                a.pop(field, None)  # a field missing
            else:
                a[field] = draw(BROKEN[field])
        if draw(st.integers(0, 19)) == 7 and aggs:
            aggs[0][draw(ANY_TEXT)] = draw(ANYTHING)  # an unknown field
    b: dict[str, Any] = {
        "batch_id": draw(st.uuids().map(lambda u: u.hex)),
        "gateway": draw(st.sampled_from(["gw-1", "gw-1", "gw-1", "gw-2"])),
        # Past int64 too: the schema bounds seq, so 2**63 and more are a 422, never a 500.
        "seq": draw(st.one_of(st.integers(1, 2**31), st.integers(2**62, 2**70))),
        "created_at": draw(st.floats(T0, NOW)),
        "aggregates": aggs,
    }
    if draw(st.booleans()):
        b["privacy"] = {"min_window_count": draw(st.integers(0, 20))}
    if draw(st.integers(0, 9)) == 5:
        field = draw(st.sampled_from(["batch_id", "seq", "created_at", "version"]))
        b[field] = draw(st.one_of(st.integers(-5, 0), st.floats(4e9, 5e9), ANYTHING))
    return b


# -- what every answer and every stored row must satisfy ----------------------------------------


async def checked_post(client: TestClient[Any, Any], body: bytes, *, gz: bool) -> int:
    headers = upload_headers(GW1_TOKEN) if gz else {"Authorization": f"Bearer {GW1_TOKEN}"}
    resp = await client.post("/api/v1/batches", data=body, headers=headers)
    assert resp.status in DOCUMENTED, (resp.status, await resp.text())
    assert resp.content_type == "application/json"
    answer = await resp.json()
    if resp.status >= 400:
        assert answer["error"]["code"] and answer["error"]["message"]
        event(f"{resp.status} {answer['error']['code']}")
    return resp.status


async def assert_stored_rows_obey_the_rules(client: TestClient[Any, Any], batch_id: str) -> None:
    config: CloudConfig = client.server.app[CONFIG_KEY]  # type: ignore[union-attr]
    engine = client.server.app[ENGINE_KEY]  # type: ignore[union-attr]
    a = aggregates.c
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(batches.c.id, batches.c.min_window_count, batches.c.body_sha256).where(
                    batches.c.batch_id == batch_id
                )
            )
        ).one()
        stored = (
            await conn.execute(select(*(a[c] for c in AGGREGATE_COLUMNS)).where(a.batch == row.id))
        ).all()
    assert row.body_sha256 is not None
    latest = time.time() + config.max_clock_skew_s
    min_count = max(config.min_window_count, row.min_window_count)
    for values in stored:
        fields = dict(zip(AGGREGATE_COLUMNS, values, strict=True))
        del fields["batch"], fields["gateway"]
        broken = aggregate_violation(
            WindowAggregate(**fields), min_count=min_count, latest_end=latest
        )
        assert broken is None, (fields, broken)


# -- the properties -----------------------------------------------------------------------------


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, db_url: str) -> TestClient[Any, Any]:
    config = make_config(db_url, max_body_bytes=MAX_BODY, analytics_interval_s=0)
    return await aiohttp_client(create_app(config))


@BOUNDED
@given(
    batch=batch_dicts(),
    gz=st.booleans(),
    resend=st.sampled_from(["no", "no", "same", "other"]),
    pad=st.sampled_from(range(10)),
    fresh_id=st.booleans(),
)
async def test_any_batch_gets_a_documented_answer_and_only_valid_content_is_stored(
    client: TestClient[Any, Any],
    batch: dict[str, Any],
    gz: bool,
    resend: str,
    pad: int,
    fresh_id: bool,
) -> None:
    if fresh_id and isinstance(batch["batch_id"], str):
        # Drawn ids repeat across examples (a reused id, 409): half the time a new one instead.
        batch["batch_id"] = uuid.uuid4().hex
    body = msgspec.json.encode(batch)
    if pad == 9:  # past max_body_bytes: 413, not a 5xx
        body += b" " * MAX_BODY
    wire = gzip.compress(body, compresslevel=1) if gz else body
    status = await checked_post(client, wire, gz=gz)
    event(f"{status}")
    if status == 201:
        await assert_stored_rows_obey_the_rules(client, batch["batch_id"])
    if status not in (200, 201):
        return
    if resend == "same":
        # The very bytes again (a gateway's retry): always the duplicate.
        assert await checked_post(client, wire, gz=gz) == 200
    elif resend == "other":
        # The same id for other content: never taken as the stored batch nor stored again.
        other = {**batch, "created_at": batch["created_at"] + 1}
        assert await checked_post(client, msgspec.json.encode(other), gz=False) not in (200, 201)


@settings(BOUNDED, max_examples=150)
@given(
    data=st.one_of(
        st.binary(max_size=2048),
        st.binary(max_size=2048).map(gzip.compress),
        st.binary(max_size=64).map(lambda b: gzip.compress(b)[: max(1, len(b) // 2)]),
        st.recursive(
            st.none() | st.booleans() | NUMBERS | ANY_TEXT,
            lambda inner: (
                st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4)
            ),
            max_leaves=12,
        ).map(msgspec.json.encode),
    ),
    gz=st.booleans(),
)
async def test_random_bytes_get_a_documented_answer_and_store_nothing(
    client: TestClient[Any, Any], data: bytes, gz: bool
) -> None:
    assert await checked_post(client, data, gz=gz) not in (200, 201)
