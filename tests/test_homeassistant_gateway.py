"""Home Assistant discovery of the gateway's devices and stored metrics, against a real Mosquitto
(`gateway.homeassistant`): the configs validate against the JSON Schema written from HA's docs,
the state topics carry the stored values, the rate limit holds and the latest value is not
lost, configs are removed when a device is forgotten and when the feature is turned off, the
gateway's device and via_device are right, and two gateways with the same home and device
names announce different entities."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import jsonschema
import pytest

from gateway.app import Gateway, create_gateway
from gateway.config import ConfigError, load_config
from gateway.db import make_engine
from schemas.telemetry import encode_telemetry
from schemas.topics import Kind, device_topic, gateway_status_topic
from tests.conftest import MosquittoBroker
from tests.waiting import wait_for

SCHEMA = json.loads(
    (Path(__file__).parent / "fixtures" / "ha_mqtt_discovery.schema.json").read_text()
)


def schema_for(component: str) -> dict[str, Any]:
    return {**SCHEMA, "anyOf": [{"$ref": f"#/$defs/{component}"}]}


def gateway_config(
    tmp_path: Path,
    broker: MosquittoBroker,
    root: str,
    prefix: str,
    *,
    gateway_id: str = "gw-a",
    extra: str = "",
    db: str | None = None,
) -> Any:
    path = tmp_path / f"{gateway_id}.toml"
    path.write_text(
        f'gateway_id = "{gateway_id}"\n'
        f'[mqtt]\nurl = "{broker.url}"\ntopic_root = "{root}"\n'
        f'client_id = "{gateway_id}-{root}"\n'
        f'[storage]\npath = "{tmp_path / (db or gateway_id + ".db")}"\ncommit_interval_ms = 20\n'
        "[admin]\nport = 0\n[inference]\nenabled = false\n"
        f'[homeassistant]\ndiscovery_prefix = "{prefix}"\n{extra}'
    )
    return load_config(path)


class Listener:
    """Every message under the discovery prefix and the gateways' output, in arrival order."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.messages: list[tuple[str, bytes, bool]] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self, *filters: str) -> None:
        for f in filters:
            await self.client.subscribe(f, qos=1)
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.client.messages:
            payload = bytes(msg.payload)  # type: ignore[arg-type]
            self.messages.append((str(msg.topic), payload, bool(msg.retain)))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def configs(self) -> dict[str, dict[str, Any]]:
        """The newest non-empty config of each topic that was not removed after it."""
        out: dict[str, dict[str, Any]] = {}
        for topic, payload, _ in self.messages:
            if topic.endswith("/config"):
                if payload:
                    out[topic] = json.loads(payload)
                else:
                    out.pop(topic, None)
        return out

    def removed(self) -> set[str]:
        return {t for t, p, _ in self.messages if t.endswith("/config") and not p}

    def on(self, topic: str) -> list[bytes]:
        return [p for t, p, _ in self.messages if t == topic]


@contextlib.asynccontextmanager
async def listening(broker: MosquittoBroker, *filters: str) -> AsyncIterator[Listener]:
    async with aiomqtt.Client(
        "127.0.0.1", broker.port, identifier=f"ha-{uuid.uuid4().hex[:8]}"
    ) as client:
        listener = Listener(client)
        await listener.start(*filters)
        try:
            yield listener
        finally:
            await listener.stop()


async def started(gw: Gateway) -> None:
    assert await asyncio.to_thread(gw.mqtt.subscribed.wait, 20), "gateway never subscribed"


async def publish(
    broker: MosquittoBroker, root: str, room: str, device: str, readings: dict[str, float]
) -> None:
    topic = device_topic("home-1", room, device, Kind.TELEMETRY, root=root)
    async with aiomqtt.Client(
        "127.0.0.1", broker.port, identifier=f"dev-{uuid.uuid4().hex[:8]}"
    ) as dev:
        await dev.publish(topic, encode_telemetry(time.time(), readings), qos=1)


def by_metric(configs: dict[str, dict[str, Any]], metric: str) -> dict[str, Any]:
    (found,) = [c for c in configs.values() if c["unique_id"].endswith(f"/{metric}")]
    return found


async def test_configs_validate_and_states_carry_the_values(
    mosquitto: MosquittoBroker, topic_root: str, tmp_path: Path
) -> None:
    prefix = f"{topic_root}-ha"
    gw = create_gateway(gateway_config(tmp_path, mosquitto, topic_root, prefix))
    async with (
        listening(mosquitto, f"{prefix}/#", f"{topic_root}/gw-a/gateway/#") as seen,
        gw,
    ):
        await started(gw)
        await publish(
            mosquitto,
            topic_root,
            "living",
            "thermostat-1",
            {"temperature": 21.5, "humidity": 40.0, "battery": 87.0, "heart_rate": 61.0},
        )
        await publish(mosquitto, topic_root, "hall", "motion-1", {"motion": 1.0})
        await publish(mosquitto, topic_root, "hall", "door-1", {"door": 0.0})

        def complete() -> bool:
            configs = seen.configs()
            return len(configs) == 6 and all(seen.on(c["state_topic"]) for c in configs.values())

        await wait_for(complete, what="six configs and a state for each")
    configs = seen.configs()
    components = {topic.split("/")[-4] for topic in configs}
    assert components == {"sensor", "binary_sensor"}
    for topic, config in configs.items():
        jsonschema.validate(config, schema_for(topic.split("/")[-4]))
        assert config["unique_id"].startswith("homeedge_gw-a/")
        assert config["default_entity_id"].startswith(topic.split("/")[-4] + ".homeedge_gw_a_")
    # No entity for health data.
    assert not [c for c in configs.values() if "heart_rate" in c["unique_id"]]

    temp = by_metric(configs, "temperature")
    assert (
        temp["state_topic"] == f"{topic_root}/gw-a/gateway/states/home-1/thermostat-1/temperature"
    )
    assert (temp["device_class"], temp["state_class"], temp["unit_of_measurement"]) == (
        "temperature",
        "measurement",
        "°C",
    )
    assert seen.on(temp["state_topic"]) == [b"21.5"]
    assert seen.on(by_metric(configs, "humidity")["state_topic"]) == [b"40"]
    battery = by_metric(configs, "battery")
    assert (battery["device_class"], battery["entity_category"]) == ("battery", "diagnostic")
    motion = by_metric(configs, "motion")
    assert (motion["device_class"], motion["payload_on"], motion["payload_off"]) == (
        "motion",
        "1",
        "0",
    )
    assert seen.on(motion["state_topic"]) == [b"1"]
    assert seen.on(by_metric(configs, "door")["state_topic"]) == [b"0"]

    # One HA device per homeedge device, in its room, reached through the gateway's device.
    status = gateway_status_topic("gw-a", root=topic_root)
    assert temp["device"] == {
        "identifiers": ["homeedge_gw-a/home-1/thermostat-1"],
        "name": "thermostat-1",
        "manufacturer": "homeedge",
        "model": "thermostat",
        "suggested_area": "living",
        "via_device": "homeedge_gw-a",
    }
    assert motion["device"]["suggested_area"] == "hall"
    assert temp["availability_topic"] == status
    (gateway_entity,) = [c for c in configs.values() if c["device"].get("via_device") is None]
    assert gateway_entity["device"]["identifiers"] == ["homeedge_gw-a"]
    assert gateway_entity["device"]["model"] == "homeedge edge gateway"
    assert gateway_entity["device"]["sw_version"]
    assert gateway_entity["state_topic"] == status and gateway_entity["payload_on"] == "online"
    assert "availability_topic" not in gateway_entity  # it must show offline, not unavailable
    assert seen.on(status)[0] == b"online"
    # The record of what was announced, for removal (written by the task after publishing).

    def recorded() -> set[str]:
        with contextlib.closing(sqlite3.connect(tmp_path / "gw-a.db")) as db:
            return {r[0] for r in db.execute("SELECT topic FROM ha_announced")}

    await wait_for(lambda: recorded() == set(configs), what="every config recorded")
    # The states came back on the gateway's own <root>/# subscription: ignored, no dead letter.
    with contextlib.closing(sqlite3.connect(tmp_path / "gw-a.db")) as db:
        assert db.execute("SELECT topic, reason FROM dead_letters").fetchall() == []


async def test_rate_limit_holds(
    mosquitto: MosquittoBroker, topic_root: str, tmp_path: Path
) -> None:
    prefix = f"{topic_root}-ha"
    config = gateway_config(
        tmp_path, mosquitto, topic_root, prefix, extra="state_interval_s = 3600\n"
    )
    gw = create_gateway(config)
    states = f"{topic_root}/gw-a/gateway/states/home-1"
    temp, marker = f"{states}/thermostat-1/temperature", f"{states}/plug-1/power"
    async with listening(mosquitto, f"{states}/#") as seen, gw:
        await started(gw)
        await publish(mosquitto, topic_root, "living", "thermostat-1", {"temperature": 20.0})
        await wait_for(lambda: seen.on(temp), what="the first state")
        for value in (20.5, 21.0, 21.5):
            await publish(mosquitto, topic_root, "living", "thermostat-1", {"temperature": value})
        # A new entity's first state is due at once: it goes out after anything the readings
        # before it would have sent.
        await publish(mosquitto, topic_root, "living", "plug-1", {"power": 5.0})
        await wait_for(lambda: seen.on(marker), what="the marker's state")
        assert (
            gw.metrics.registry.get_sample_value(
                "homeedge_gateway_ha_states_total", {"outcome": "published"}
            )
            == 2
        )
    assert seen.on(temp) == [b"20"]


async def test_the_latest_value_goes_out_when_the_interval_is_over(
    mosquitto: MosquittoBroker, topic_root: str, tmp_path: Path
) -> None:
    prefix = f"{topic_root}-ha"
    config = gateway_config(tmp_path, mosquitto, topic_root, prefix, extra="state_interval_s = 1\n")
    gw = create_gateway(config)
    state = f"{topic_root}/gw-a/gateway/states/home-1/thermostat-1/temperature"
    async with listening(mosquitto, state) as seen, gw:
        await started(gw)
        await publish(mosquitto, topic_root, "living", "thermostat-1", {"temperature": 20.0})
        await wait_for(lambda: seen.on(state), what="the first state")
        for value in (20.5, 21.0, 22.0):
            await publish(mosquitto, topic_root, "living", "thermostat-1", {"temperature": value})
        # Nothing more arrives after the burst: its newest value still goes out.
        await wait_for(lambda: b"22" in seen.on(state), what="the burst's last value")
    got = seen.on(state)
    assert got[0] == b"20" and got[-1] == b"22"
    assert len(got) <= 4


async def test_configs_are_removed_when_the_device_is_forgotten(
    mosquitto: MosquittoBroker, topic_root: str, tmp_path: Path
) -> None:
    prefix = f"{topic_root}-ha"
    config = gateway_config(
        tmp_path, mosquitto, topic_root, prefix, extra="[devices]\nidle_s = 1.0\n"
    )
    gw = create_gateway(config)
    async with listening(mosquitto, f"{prefix}/#") as seen, gw:
        await started(gw)
        await publish(mosquitto, topic_root, "living", "thermostat-1", {"temperature": 21.0})
        await wait_for(lambda: len(seen.configs()) == 2, what="the gateway's and one config")
        (device_topic_,) = [
            t for t, c in seen.configs().items() if "thermostat-1" in c["unique_id"]
        ]
        await wait_for(lambda: device_topic_ in seen.removed(), what="the empty retained config")

        def unrecorded() -> bool:
            with contextlib.closing(sqlite3.connect(tmp_path / "gw-a.db")) as db:
                rows = [r[0] for r in db.execute("SELECT topic FROM ha_announced")]
            return device_topic_ not in rows and len(rows) == 1

        await wait_for(unrecorded, what="the record of the removed config deleted")
        # The gateway's own device stays.
        assert len(seen.configs()) == 1
        # The device is back: announced again.
        await publish(mosquitto, topic_root, "living", "thermostat-1", {"temperature": 21.5})
        await wait_for(lambda: device_topic_ in seen.configs(), what="the device announced again")


async def retained_under(broker: MosquittoBroker, prefix: str) -> list[str]:
    """The retained topics under `prefix`: what a new subscriber gets before a marker."""
    marker = f"{prefix}/zz-marker-{uuid.uuid4().hex[:6]}"
    async with aiomqtt.Client(
        "127.0.0.1", broker.port, identifier=f"probe-{uuid.uuid4().hex[:8]}"
    ) as probe:
        await probe.publish(marker, b"x", qos=1, retain=True)
        await probe.subscribe(f"{prefix}/#", qos=1)
        topics = []
        async with asyncio.timeout(10):
            async for msg in probe.messages:
                if str(msg.topic) == marker:
                    break
                topics.append(str(msg.topic))
        await probe.publish(marker, b"", qos=1, retain=True)
    return topics


async def test_turning_the_feature_off_removes_what_an_earlier_run_announced(
    mosquitto: MosquittoBroker, topic_root: str, tmp_path: Path
) -> None:
    prefix = f"{topic_root}-ha"
    gw = create_gateway(gateway_config(tmp_path, mosquitto, topic_root, prefix))
    async with listening(mosquitto, f"{prefix}/#") as seen, gw:
        await started(gw)
        await publish(mosquitto, topic_root, "living", "thermostat-1", {"temperature": 21.0})
        await wait_for(lambda: len(seen.configs()) == 2, what="two configs")

        def recorded() -> int:
            with contextlib.closing(sqlite3.connect(tmp_path / "gw-a.db")) as db:
                return int(db.execute("SELECT count(*) FROM ha_announced").fetchone()[0])

        await wait_for(lambda: recorded() == 2, what="both configs recorded")
    assert len(await retained_under(mosquitto, prefix)) == 2

    off = gateway_config(tmp_path, mosquitto, topic_root, prefix, extra="enabled = false\n")
    gw = create_gateway(off)
    async with gw:
        await started(gw)
        await wait_for(lambda: recorded() == 0, what="the records of the removed configs gone")
        assert (
            gw.metrics.registry.get_sample_value(
                "homeedge_gateway_ha_configs_total", {"action": "removed"}
            )
            == 2
        )
        # Nothing new is announced while the feature is off.
        await publish(mosquitto, topic_root, "living", "thermostat-1", {"temperature": 21.5})
    assert await retained_under(mosquitto, prefix) == []


async def test_two_gateways_with_the_same_names_do_not_collide(
    mosquitto: MosquittoBroker, topic_root: str, tmp_path: Path
) -> None:
    prefix = f"{topic_root}-ha"
    gws = [
        create_gateway(gateway_config(tmp_path, mosquitto, topic_root, prefix, gateway_id=g))
        for g in ("gw-a", "gw-b")
    ]
    async with listening(mosquitto, f"{prefix}/#") as seen, gws[0], gws[1]:
        for gw in gws:
            await started(gw)
        await publish(mosquitto, topic_root, "living", "thermostat-1", {"temperature": 21.0})
        await wait_for(lambda: len(seen.configs()) == 4, what="two configs per gateway")
    configs = seen.configs()
    for key in ("unique_id", "default_entity_id", "state_topic"):
        assert len({c[key] for c in configs.values()}) == 4, key
    devices = {c["device"]["identifiers"][0] for c in configs.values()}
    assert devices == {
        "homeedge_gw-a",
        "homeedge_gw-b",
        "homeedge_gw-a/home-1/thermostat-1",
        "homeedge_gw-b/home-1/thermostat-1",
    }
    vias = {c["device"]["identifiers"][0]: c["device"].get("via_device") for c in configs.values()}
    assert vias["homeedge_gw-b/home-1/thermostat-1"] == "homeedge_gw-b"


@pytest.mark.parametrize(
    ("table", "field", "text"),
    [
        ('metrics = ["heart_rate"]', "homeassistant.metrics", "no Home Assistant entity"),
        ('discovery_prefix = "ha/#"', "homeassistant.discovery_prefix", "not a topic prefix"),
        ("state_interval_s = -1", "homeassistant.state_interval_s", "greater than or equal"),
        ("colour = 1", "homeassistant.colour", "Extra inputs"),
    ],
)
def test_config_errors_name_the_field(tmp_path: Path, table: str, field: str, text: str) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(f'gateway_id = "gw"\n[homeassistant]\n{table}\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert field in str(err.value) and text in str(err.value)


async def test_records_of_devices_not_heard_for_idle_s_are_removed_at_start_up(
    mosquitto: MosquittoBroker, topic_root: str, tmp_path: Path
) -> None:
    prefix = f"{topic_root}-ha"
    config = gateway_config(
        tmp_path, mosquitto, topic_root, prefix, extra="[devices]\nidle_s = 3600\n"
    )
    old = f"{prefix}/sensor/homeedge_gw-a/home-1_old-1_temperature_00000000/config"
    recent = f"{prefix}/sensor/homeedge_gw-a/home-1_new-1_temperature_00000000/config"
    make_engine(config.storage.path).dispose()  # the gateway's schema, as an earlier run left it
    with contextlib.closing(sqlite3.connect(config.storage.path)) as db:
        db.executemany(
            "INSERT INTO ha_announced (topic, home, device, announced_at) VALUES (?, ?, ?, ?)",
            [
                (old, "home-1", "old-1", time.time() - 2 * 3600),
                # Announced as long ago, but its device was heard a minute ago.
                (recent, "home-1", "new-1", time.time() - 2 * 3600),
            ],
        )
        db.execute(
            "INSERT INTO devices (home, device, room, device_class, last_seen)"
            " VALUES ('home-1', 'new-1', 'living', 'generic', ?)",
            (time.time() - 60,),
        )
        db.commit()
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="earlier-run") as c:
        for topic in (old, recent):
            await c.publish(topic, b'{"name": "x"}', qos=1, retain=True)
    gw = create_gateway(config)
    async with gw:
        await started(gw)

        def removed() -> bool:
            return (
                gw.metrics.registry.get_sample_value(
                    "homeedge_gateway_ha_configs_total", {"action": "removed"}
                )
                == 1
            )

        await wait_for(removed, what="the stale config removed")
    left = await retained_under(mosquitto, prefix)
    assert old not in left and recent in left
    with contextlib.closing(sqlite3.connect(config.storage.path)) as db:
        rows = {r[0] for r in db.execute("SELECT topic FROM ha_announced")}
    assert old not in rows and recent in rows


async def test_devices_from_an_adapter_get_no_second_ha_device_unless_asked(
    mosquitto: MosquittoBroker, topic_root: str, tmp_path: Path
) -> None:
    """A Zigbee2MQTT sensor is in Home Assistant already (through Zigbee2MQTT's own discovery):
    by default the gateway stores its readings but announces no device for it."""
    prefix = f"{topic_root}-ha"
    z2m = f"{topic_root}-z2m"
    adapter = f'[adapters.zigbee2mqtt]\nenabled = true\nbase_topic = "{z2m}"\n'

    async def announced_for(gateway_id: str, extra: str) -> set[str]:
        config = gateway_config(
            tmp_path, mosquitto, topic_root, prefix, gateway_id=gateway_id, extra=extra
        )
        gw = create_gateway(config)
        async with listening(mosquitto, f"{prefix}/+/homeedge_{gateway_id}/#") as seen, gw:
            await started(gw)
            async with aiomqtt.Client("127.0.0.1", mosquitto.port) as dev:
                payload = json.dumps({"temperature": 21.5, "humidity": 40.0, "linkquality": 90})
                await dev.publish(f"{z2m}/kitchen_sensor", payload, qos=1)
            await publish(mosquitto, topic_root, "living", "thermostat-1", {"temperature": 21.0})

            def stored() -> set[str]:
                with contextlib.closing(sqlite3.connect(tmp_path / f"{gateway_id}.db")) as db:
                    return {r[0] for r in db.execute("SELECT DISTINCT device FROM readings")}

            await wait_for(lambda: {"kitchen_sensor", "thermostat-1"} <= stored(), what="both")
            await wait_for(
                lambda: any("thermostat-1" in c["unique_id"] for c in seen.configs().values()),
                what="the native device's config",
            )
            await asyncio.sleep(0.5)  # a config for the adapter's device would be out by now
            return {c["unique_id"] for c in seen.configs().values()}

    default = await announced_for("gw-a", adapter)
    assert any("thermostat-1" in u for u in default)
    assert not any("kitchen_sensor" in u for u in default), default
    asked = await announced_for("gw-b", "adapter_devices = true\n" + adapter)
    assert any("kitchen_sensor" in u and u.endswith("/temperature") for u in asked), asked
