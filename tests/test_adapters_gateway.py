"""The real gateway with the format adapters: foreign payloads end as rows in SQLite."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt

from gateway.adapters import AdapterRegistry, AdapterSettings
from gateway.app import Gateway
from gateway.config import AdminConfig, GatewayConfig, IngestConfig, MqttConfig, StorageConfig
from tests.conftest import MosquittoBroker
from tests.fixtures.adapters.support import Message, load


def publish(port: int, messages: list[Message]) -> None:
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    try:
        for message in messages:
            pub.publish(message.topic, message.payload, qos=1).wait_for_publish(10)
    finally:
        pub.loop_stop()
        pub.disconnect()


def rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


async def wait_rows(db: Path, sql: str, count: int) -> list[tuple[object, ...]]:
    """The rows of `sql` once there are `count` of them (or whatever is there after 20 s)."""
    found: list[tuple[object, ...]] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(20):
            while len(found) < count:
                found = await asyncio.to_thread(rows, db, sql)
                await asyncio.sleep(0.1)
    return found


async def test_gateway_stores_adapted_readings_and_dead_letters(
    mosquitto: MosquittoBroker, topic_root: str, tmp_path: Path
) -> None:
    z2m_base, tele, stat = f"{topic_root}-z2m", f"{topic_root}-tele", f"{topic_root}-stat"
    z2m = load("zigbee2mqtt", {"zigbee2mqtt": z2m_base})
    tas = load("tasmota", {"tele": tele, "stat": stat})
    settings = AdapterSettings.model_validate(
        {
            "home": "flat-7",
            "zigbee2mqtt": {"enabled": True, "base_topic": z2m_base},
            "tasmota": {"enabled": True, "tele_prefix": tele, "stat_prefix": stat},
        }
    )
    registry = AdapterRegistry.from_settings(settings)
    db = tmp_path / "gateway.db"
    config = GatewayConfig(
        gateway_id="gw-adapters",
        mqtt=MqttConfig(url=mosquitto.url, topic_root=topic_root),
        storage=StorageConfig(path=db),
        admin=AdminConfig(port=0),
        # The recorded payloads carry their devices' times from 2025: accept readings that old.
        ingest=IngestConfig(max_age_s=20 * 365 * 86400.0),
    )
    gw = Gateway(config)
    for adapter in registry:
        gw.add_adapter(adapter)
    async with gw:
        assert await asyncio.to_thread(gw.mqtt.subscribed.wait, 20), "gateway never subscribed"
        traffic = [
            z2m["messages"][0],  # thermo: 4 readings (battery_voltage among them)
            z2m["messages"][2],  # front door: 2 readings at last_seen
            tas["messages"][2],  # plug energy: 9 readings
            z2m["malformed"][0],
            tas["malformed"][3],
        ]
        await asyncio.to_thread(publish, mosquitto.port, traffic)
        stored = await wait_rows(
            db,
            "SELECT home, device, metric, ts, value, seq FROM readings ORDER BY device, metric",
            15,
        )
        dead = await wait_rows(db, "SELECT topic, reason FROM dead_letters ORDER BY id", 2)
    assert [r[:3] for r in stored] == [
        ("flat-7", "front_door", "battery"),
        ("flat-7", "front_door", "door"),
        ("flat-7", "living-thermo_1", "battery"),
        ("flat-7", "living-thermo_1", "battery_voltage"),
        ("flat-7", "living-thermo_1", "humidity"),
        ("flat-7", "living-thermo_1", "temperature"),
        *[
            ("flat-7", "plug_tv", m)
            for m in (
                "apparent_power",
                "current",
                "energy",
                "energy_today",
                "energy_yesterday",
                "power",
                "power_factor",
                "reactive_power",
                "voltage",
            )
        ],
    ]
    assert {r[4] for r in stored if r[1] == "front_door"} == {67.0, 1.0}
    assert {r[3] for r in stored if r[1] == "front_door"} == {1764403210.0}
    assert all(r[5] is None for r in stored)
    assert dead == [
        (z2m["malformed"][0].topic, "adapter_invalid_json"),
        (tas["malformed"][3].topic, "adapter_unit"),
    ]
