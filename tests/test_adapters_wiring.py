"""The ``[adapters]`` section in the real gateway: `create_gateway` subscribes the enabled
ecosystems, stores their readings, keeps foreign devices' availability in ``devices`` and exports
the adapters' counters on /metrics."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as paho
import pytest

from gateway.app import create_gateway
from gateway.config import ConfigError, MqttConfig, load_config
from gateway.ingest import Adapted, AvailabilityChange, MessageDecoder, ReadingsIn, StateIn
from gateway.monitoring import GatewayMetrics
from gateway.mqtt import MqttBridge
from schemas.state import Availability
from tests.adapter_fakes import FnAdapter
from tests.conftest import MosquittoBroker
from tests.fixtures.adapters.support import Message, load
from tests.test_adapters_gateway import publish, wait_rows
from tests.test_gateway_ingest import metric_value


async def test_adapters_section_wires_readings_availability_and_metrics(
    mosquitto: MosquittoBroker,
    topic_root: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    z2m_base, tele, stat = f"{topic_root}-z2m", f"{topic_root}-tele", f"{topic_root}-stat"
    db = tmp_path / "gateway.db"
    path = tmp_path / "gateway.toml"
    path.write_text(
        f'gateway_id = "gw-wired"\n[mqtt]\nurl = "{mosquitto.url}"\n'
        f'topic_root = "{topic_root}"\nclient_id = "gw-{topic_root}"\n'
        f'[storage]\npath = "{db}"\n[admin]\nport = 0\n'
        # The recorded payloads carry their devices' times from 2025: accept readings that old.
        "[ingest]\nmax_age_s = 630720000.0\n"
        '[adapters]\nhome = "flat-7"\n'
        f'[adapters.zigbee2mqtt]\nenabled = true\nbase_topic = "{z2m_base}"\n'
    )
    # The environment fills in a whole ecosystem the file does not mention.
    monkeypatch.setenv("HOMEEDGE_GATEWAY__ADAPTERS__TASMOTA__ENABLED", "true")
    monkeypatch.setenv("HOMEEDGE_GATEWAY__ADAPTERS__TASMOTA__TELE_PREFIX", tele)
    monkeypatch.setenv("HOMEEDGE_GATEWAY__ADAPTERS__TASMOTA__STAT_PREFIX", stat)
    config = load_config(path)
    assert config.adapters.tasmota.enabled and config.adapters.zigbee2mqtt.enabled
    assert not config.adapters.shelly.enabled

    z2m = load("zigbee2mqtt", {"zigbee2mqtt": z2m_base})["messages"]
    tas = load("tasmota", {"tele": tele, "stat": stat})["messages"]
    gw = create_gateway(config)
    async with gw:
        assert await asyncio.to_thread(gw.mqtt.subscribed.wait, 20), "gateway never subscribed"
        traffic = [
            z2m[0],  # thermo: battery, humidity, temperature; linkquality and voltage ignored
            z2m[5],  # thermo availability: offline
            z2m[6],  # front door availability: online (a device never seen before)
            tas[2],  # plug_tv energy: power, energy
            tas[5],  # plug_tv LWT Offline
            tas[6],  # plug_tv LWT Online
            # a numeric string is read; a word where a number belongs is a bad field, counted
            Message("bad", f"{z2m_base}/attic", b'{"battery":"37.00","temperature":"warm"}'),
        ]
        await asyncio.to_thread(publish, mosquitto.port, traffic)
        devices = await wait_rows(
            db, "SELECT device, availability FROM devices WHERE availability IS NOT NULL", 3
        )
        stored = await wait_rows(db, "SELECT device, metric FROM readings", 14)
        events = {
            (adapter, event): metric_value(
                gw,
                "homeedge_gateway_adapter_events_total",
                {"adapter": adapter, "event": event},
            )
            for adapter in ("zigbee2mqtt", "tasmota")
            for event in ("messages", "readings", "availability")
        }
        bad_temperature = metric_value(
            gw,
            "homeedge_gateway_adapter_bad_fields_total",
            {"adapter": "zigbee2mqtt", "field": "temperature"},
        )
        bad_events = metric_value(
            gw,
            "homeedge_gateway_adapter_events_total",
            {"adapter": "zigbee2mqtt", "event": "bad_fields"},
        )
        linkquality = metric_value(
            gw,
            "homeedge_gateway_adapter_ignored_fields_total",
            {"adapter": "zigbee2mqtt", "field": "linkquality"},
        )
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as resp,
        ):
            exposition = await resp.text()
    assert sorted(devices) == [
        ("front_door", "online"),
        ("living-thermo_1", "offline"),
        ("plug_tv", "online"),  # Offline then Online: the later one wins
    ]
    assert sorted(stored) == [
        ("attic", "battery"),
        ("living-thermo_1", "battery"),
        ("living-thermo_1", "battery_voltage"),
        ("living-thermo_1", "humidity"),
        ("living-thermo_1", "temperature"),
        *[
            ("plug_tv", m)
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
    assert events == {
        ("zigbee2mqtt", "messages"): 4,
        ("zigbee2mqtt", "readings"): 5,
        ("zigbee2mqtt", "availability"): 2,
        ("tasmota", "messages"): 3,
        ("tasmota", "readings"): 9,
        ("tasmota", "availability"): 2,
    }
    assert linkquality == 1
    assert bad_temperature == 1 and bad_events == 1
    assert (
        'homeedge_gateway_adapter_bad_fields_total{adapter="zigbee2mqtt",field="temperature"}'
        in (exposition)
    )
    assert 'homeedge_gateway_adapter_events_total{adapter="tasmota",event="messages"} 3.0' in (
        exposition
    )


def test_adapters_section_errors_name_the_field(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('gateway_id = "g"\n[adapters.zigbee2mqtt]\nenabeld = true\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith("adapters.zigbee2mqtt.enabeld: "), str(err.value)


class _FakeWriter:
    """Records what the bridge queues; refuses entries while told to, as the real writer does
    when it gives up waiting for room at shutdown."""

    def __init__(self) -> None:
        self.refuse = False
        self.queued: list[tuple[Any, Any]] = []

    def put_messages(self, messages: list[tuple[Any, Any]], _give_up: Any) -> bool:
        if self.refuse:
            return False
        self.queued.extend(messages)
        return True


def test_side_item_goes_ahead_of_its_message_or_holds_it_back(tmp_path: Path) -> None:
    """A unit test of the bridge's contract for adapter side effects (no broker): the
    availability an adapter returns with its message is queued BEFORE the message, in the
    same hand-off entry (so it commits no later than the message's ack); when the entry cannot
    be queued, neither is (the message is never acked, so redelivered)."""
    state = StateIn("h", "r", "plug", Availability.OFFLINE, 1.0)

    def adapt(topic: str, payload: bytes, at: float) -> Adapted:
        return Adapted([], [AvailabilityChange("fake", "h", "r", "plug", False, 1.0)])

    writer = _FakeWriter()
    bridge = MqttBridge(
        MqttConfig(),
        client_id="unit",
        status_topic="homeedge/gw/gateway/status",
        decoder=MessageDecoder(topic_root="homeedge", adapters=[FnAdapter("tele/+/LWT", adapt)]),
        writer=writer,  # type: ignore[arg-type]
        metrics=GatewayMetrics(),
    )
    msg = paho.MQTTMessage(mid=7, topic=b"tele/plug/LWT")
    msg.qos, msg.payload = 1, b"Offline"
    bridge._on_message(bridge._client, None, msg)
    assert writer.queued == []  # collected until the read burst ends
    bridge._hand_off()
    assert writer.queued[0][1] == state
    assert writer.queued[0][0] is None  # no ack of its own
    assert writer.queued[1][0] == (0, 7) and isinstance(writer.queued[1][1], ReadingsIn)

    writer.queued.clear()
    writer.refuse = True
    bridge._on_message(bridge._client, None, msg)
    bridge._hand_off()
    assert writer.queued == []
    bridge.close()
