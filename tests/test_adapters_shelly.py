"""Shelly adapter (Gen1 topics, Gen2+ RPC notifications): fixtures -> exact readings, etc."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.adapters import Adapted, AdapterRegistry, AdapterSettings
from gateway.adapters import shelly as shelly_module
from gateway.adapters.ha_discovery import HaDiscoveryAdapter
from gateway.adapters.shelly import ShellyAdapter
from gateway.app import Gateway
from gateway.config import (
    AdminConfig,
    GatewayConfig,
    IngestConfig,
    MqttConfig,
    StorageConfig,
)
from gateway.ingest import MessageDecoder, ReadingsIn
from gateway.records import DeadLetter, Reading
from schemas.metrics import metric
from tests.conftest import MosquittoBroker
from tests.fixtures.adapters.support import (
    T0,
    Message,
    availability,
    broker_roundtrip,
    expected,
    load,
    readings,
    record_availability,
    run_all,
    table,
)
from tests.test_adapters_gateway import publish, wait_rows

FIX = load("shelly")
MSG = {m.name: m for m in FIX["messages"]}
U = "unassigned"
GEN1 = [
    "plug_power",
    "plug_energy",
    "plug_relay",
    "plug_internal_temp",
    "ht_temperature",
    "ht_humidity",
    "ht_battery",
    "relay1_power",
    "em_total",
    "dw_state",
    "dw_lux",
    "motion",
]
GEN2 = ["gen2_switch", "gen2_ht_full", "gen2_pro3"]

EXPECTED_GEN1 = [
    ("home", U, "shellyplug-s-7F3A21", "power", T0, 42.17),
    ("home", U, "shellyplug-s-7F3A21", "energy", T0, 2.05),  # 123000 Wmin
    ("home", U, "shellyplug-s-7F3A21", "device_temperature", T0, 38.5),  # the plug's own chip
    ("home", U, "shellyht-5C9E01", "temperature", T0, 21.75),
    ("home", U, "shellyht-5C9E01", "humidity", T0, 52.5),
    ("home", U, "shellyht-5C9E01", "battery", T0, 88.0),
    ("home", U, "shellyswitch25-11AA22-ch1", "power", T0, 15.0),
    ("home", U, "shellyem-33BB44", "energy", T0, 12.3455),  # 12345.5 Wh
    ("home", U, "shellydw2-55CC66", "door", T0, 1.0),
    ("home", U, "shellydw2-55CC66", "light", T0, 130.0),
    ("home", U, "shellymotionsensor-77DD88", "motion", T0, 1.0),
]
EXPECTED_GEN2 = [
    ("home", U, "shellyplus1pm-a8032ab1c2d3", "power", 1764403200.52, 118.4),
    ("home", U, "shellyplus1pm-a8032ab1c2d3", "energy", 1764403200.52, 4.5215),  # 4521.5 Wh
    ("home", U, "shellyplusht-c049ef8e1a2b", "temperature", 1764403260.0, 19.8),
    ("home", U, "shellyplusht-c049ef8e1a2b", "humidity", 1764403260.0, 42.2),
    ("home", U, "shellyplusht-c049ef8e1a2b", "battery", 1764403260.0, 76.0),
    ("home", U, "shellypro3-0cb815fc1a2b-ch2", "power", 1764403300.25, 1500.0),
]


def adapter(**shelly: object) -> ShellyAdapter:
    settings = AdapterSettings.model_validate({"shelly": {"enabled": True, **shelly}})
    return ShellyAdapter(settings)


def test_gen1_plain_values_with_watt_minutes_and_channels() -> None:
    shelly = adapter()
    assert table(run_all(shelly, [MSG[n] for n in GEN1])) == expected(EXPECTED_GEN1)
    # the relay's on/off state is not mapped; the plug's own temperature is device_temperature
    # (issue 13: it used to be ignored, it must never be the room's temperature)
    assert shelly.ignored_fields == {"relay": 1}


def test_gen1_fahrenheit_setting_converts() -> None:
    shelly = adapter(gen1_temperature_unit="°F")
    found = run_all(shelly, [MSG["ht_temperature"]])
    assert [r.value for r in found] == [(21.75 - 32.0) * 5.0 / 9.0]


def test_gen2_notifications_use_params_ts_and_wh_to_kwh() -> None:
    shelly = adapter()
    assert table(run_all(shelly, [MSG[n] for n in GEN2])) == expected(EXPECTED_GEN2)
    assert shelly.ignored_fields == {
        "switch.id": 2,
        "switch.aenergy.by_minute": 1,
        "switch.aenergy.minute_ts": 1,
        "switch.output": 1,
        "temperature.id": 1,
        "temperature.tF": 1,
        "humidity.id": 1,
        "devicepower.id": 1,
        "devicepower.battery.V": 1,
        "devicepower.external.present": 1,
        "sys": 1,
        "wifi": 1,
    }
    # NotifyEvent is not a status: no readings, counted
    assert readings(shelly.adapt(MSG["gen2_event"].topic, MSG["gen2_event"].payload, T0)) == []
    assert shelly.counts["ignored_messages"] == 1


def test_channels_can_be_mapped() -> None:
    shelly = adapter(
        devices={"shellypro3-0cb815fc1a2b:2": {"device": "heater", "room": "bathroom"}}
    )
    assert table(run_all(shelly, [MSG["gen2_pro3"]])) == expected(
        [("home", "bathroom", "heater", "power", 1764403300.25, 1500.0)]
    )


def test_availability_and_announce() -> None:
    shelly = adapter()
    changes = record_availability(shelly)
    for name in ("gen1_offline", "gen2_online", "announce"):
        assert readings(shelly.adapt(MSG[name].topic, MSG[name].payload, T0)) == []
    assert [(c.device, c.online) for c in changes] == [
        ("shellyplug-s-7F3A21", False),
        ("shellyplus1pm-a8032ab1c2d3", True),
    ]
    assert shelly.counts["ignored_topics"] == 1


# Malformed fixtures that are not Shelly-shaped at all: under a wildcard Gen2+ prefix (the
# default `+`) they could be any device's, so they are "not ours", not dead letters.
NOT_SHELLY_SHAPED = {"gen2_not_json", "gen2_no_method"}


def test_malformed_payloads_are_dead_letters_with_reasons() -> None:
    # A literal Gen2+ prefix: the topic surely is a Shelly's, so a bad payload is a dead letter.
    shelly = adapter(gen2_prefixes=["shellyplus1pm-a8032ab1c2d3"])
    for bad in FIX["malformed"]:
        result = shelly.adapt(bad.topic, bad.payload, T0)
        assert isinstance(result, DeadLetter), bad.name
        assert (result.reason, result.payload) == (bad.reason, bad.payload), bad.name
    assert shelly.counts["foreign_topics"] == 0


def test_malformed_under_the_wildcard_prefix() -> None:
    # Under the default `+`, a payload no Shelly sends is another device's; a Shelly-shaped
    # frame with a bad field, and anything under shellies/ (the Gen1 prefix), stay dead letters.
    shelly = adapter()
    for bad in FIX["malformed"]:
        result = shelly.adapt(bad.topic, bad.payload, T0)
        if bad.name in NOT_SHELLY_SHAPED:
            assert result == Adapted([], []), bad.name
        else:
            assert isinstance(result, DeadLetter), bad.name
            assert result.reason == bad.reason, bad.name
    assert shelly.counts["foreign_topics"] == len(NOT_SHELLY_SHAPED)
    assert shelly.counts["dead_letters"] == len(FIX["malformed"]) - len(NOT_SHELLY_SHAPED)


def test_through_a_real_broker(mosquitto: MosquittoBroker, topic_root: str) -> None:
    gen1, gen2 = f"{topic_root}/shellies", f"{topic_root}/gen2"
    fix = load(
        "shelly",
        {
            "shellies": gen1,
            "shellyplus1pm-a8032ab1c2d3": f"{gen2}/shellyplus1pm-a8032ab1c2d3",
            "shellyplusht-c049ef8e1a2b": f"{gen2}/shellyplusht-c049ef8e1a2b",
            "shellypro3-0cb815fc1a2b": f"{gen2}/shellypro3-0cb815fc1a2b",
        },
    )
    settings = AdapterSettings.model_validate(
        {"shelly": {"enabled": True, "gen1_prefix": gen1, "gen2_prefixes": [f"{gen2}/+"]}}
    )
    registry = AdapterRegistry.from_settings(settings)
    results = broker_roundtrip(mosquitto.port, registry, fix["messages"] + fix["malformed"])
    changes = availability(results)
    found: list[Reading] = [
        r for _, res in results if isinstance(res, Adapted) for r in res.readings
    ]
    dead = [res.reason for _, res in results if isinstance(res, DeadLetter)]
    assert sorted((r.device, r.metric, round(r.value, 9)) for r in found) == sorted(
        (d, m, round(v, 9)) for _, _, d, m, _, v in EXPECTED_GEN1 + EXPECTED_GEN2
    )
    gen2_ts = {(r.device, r.ts) for r in found if r.device.startswith(("shellyplus", "shellypro"))}
    assert gen2_ts == {(d, ts) for _, _, d, _, ts, _ in EXPECTED_GEN2}
    # the gen2 prefix has a `+` level: not-Shelly-shaped payloads there are foreign, not dead
    assert dead == [m.reason for m in fix["malformed"] if m.name not in NOT_SHELLY_SHAPED]
    assert [(c.device, c.online) for c in changes] == [
        ("shellyplug-s-7F3A21", False),
        ("shellyplus1pm-a8032ab1c2d3", True),
    ]


# -- the ecosystem corpus (tests/fixtures/ecosystems/shelly*.yaml), replayed through the adapter --

CORPUS_DIR = Path(__file__).parent / "fixtures" / "ecosystems"
CORPUS_FILES = sorted(CORPUS_DIR.glob("shelly*.yaml"))


def _corpus(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(doc, dict) and isinstance(doc.get("entries"), list), path
    return doc


def _wire(payload: object) -> bytes:
    if isinstance(payload, dict | list):
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    assert isinstance(payload, str), payload
    return payload.encode()


def _stored(result: object) -> tuple[dict[tuple[str, str], float], str | None]:
    """Readings (device, metric) -> value that the gateway would keep, and a dead letter's reason.

    The gateway's ingest check drops a reading outside its metric's range; the pure replay does
    the same so that a value the registry refuses is not counted as stored."""
    if isinstance(result, DeadLetter):
        return {}, result.reason
    assert isinstance(result, Adapted)
    kept: dict[tuple[str, str], float] = {}
    for r in result.readings:
        known = metric(r.metric)
        if known is None or known.plausible(r.value):
            kept[(r.device, r.metric)] = r.value
    return kept, None


def test_corpus_files_are_well_formed() -> None:
    ids: list[str] = []
    for path in CORPUS_FILES:
        doc = _corpus(path)
        assert doc["ecosystem"] == "shelly"
        for entry in doc["entries"]:
            ids.append(entry["id"])
            assert str(entry["source"]).startswith("https://"), entry["id"]
            assert entry["messages"], entry["id"]
            for reading in entry["expect"]:
                assert {"device", "metric", "value"} <= set(reading), entry["id"]
    assert len(ids) == len(set(ids)), "entry ids must be unique"
    assert len(ids) >= 30


def test_corpus_entries_adapt_exactly() -> None:
    """Every corpus entry yields exactly its expected readings (or dead letter) through
    `ShellyAdapter.adapt`; the corpus runner replays the same files through the real gateway."""
    wrong: list[str] = []
    for path in CORPUS_FILES:
        doc = _corpus(path)
        overrides = dict(doc.get("settings") or {})
        shelly_over = dict(overrides.pop("shelly", {}))
        settings = AdapterSettings.model_validate(
            {**overrides, "shelly": {"enabled": True, **shelly_over}}
        )
        shelly = ShellyAdapter(settings)
        for entry in doc["entries"]:
            got: dict[tuple[str, str], float] = {}
            dead: list[str] = []
            for message in entry["messages"]:
                result = shelly.adapt(message["topic"], _wire(message["payload"]), T0)
                kept, reason = _stored(result)
                got.update(kept)
                if reason is not None:
                    dead.append(reason)
            want = {(e["device"], e["metric"]): float(e["value"]) for e in entry["expect"]}
            same = got.keys() == want.keys() and all(
                math.isclose(got[k], want[k], rel_tol=1e-6, abs_tol=1e-12) for k in want
            )
            expected_dead = [entry["expect_dead_letter"]] if "expect_dead_letter" in entry else []
            if not same or dead != expected_dead:
                wrong.append(f"{entry['id']}: got {sorted(got.items())} dead {dead}")
    assert wrong == []


async def test_gen2_status_under_a_two_level_prefix_reaches_sqlite(
    mosquitto: MosquittoBroker, topic_root: str, tmp_path: Path
) -> None:
    """The real gateway and Mosquitto: a Gen2 status/switch:0 topic under a two-level prefix,
    a NotifyStatus overlay, a USB-powered H&T and a Gen1 plug end as the right rows."""
    # Not under topic_root itself: that is the gateway's own topic tree.
    root = f"{topic_root}-g2"
    plug, ht = f"{root}/shellyplus1pm-a8032ab1d0e1", f"{root}/shellyplusht-08b61fd0e1f2"
    gen1 = f"{topic_root}-shellies"
    settings = AdapterSettings.model_validate(
        {"shelly": {"enabled": True, "gen1_prefix": gen1, "gen2_prefixes": [f"{root}/+"]}}
    )
    switch = {
        "id": 0,
        "output": True,
        "apower": 8.9,
        "voltage": 237.5,
        "current": 0.068,
        "aenergy": {"total": 6.532, "by_minute": [45.2, 47.1, 88.4], "minute_ts": 1764403140},
        "temperature": {"tC": 23.5, "tF": 74.4},
    }
    overlay = {
        "src": "shellyplus1pm-a8032ab1d0e1",
        "method": "NotifyStatus",
        "params": {"ts": 1764403200.5, "switch:0": {"id": 0, "apower": 0.0}},
    }
    usb = {"id": 0, "battery": {"V": 0.0, "percent": 0}, "external": {"present": True}}
    traffic = [
        Message("status", f"{plug}/status/switch:0", json.dumps(switch).encode()),
        Message("overlay", f"{plug}/events/rpc", json.dumps(overlay).encode()),
        Message("online", f"{plug}/online", b"true"),
        Message("usb", f"{ht}/status/devicepower:0", json.dumps(usb).encode()),
        Message("ht", f"{ht}/status/temperature:0", b'{"id":0,"tC":21.9,"tF":71.4}'),
        Message("gen1", f"{gen1}/shellyplug-s-C45BBE5F1A2B/temperature", b"47.12"),
    ]
    db = tmp_path / "gateway.db"
    config = GatewayConfig(
        gateway_id="gw-shelly",
        mqtt=MqttConfig(url=mosquitto.url, topic_root=topic_root),
        storage=StorageConfig(path=db),
        admin=AdminConfig(port=0),
        # The overlay's params.ts is from 2025: accept readings that old.
        ingest=IngestConfig(max_age_s=20 * 365 * 86400.0),
    )
    gw = Gateway(config)
    for adapter in AdapterRegistry.from_settings(settings):
        gw.add_adapter(adapter)
    async with gw:
        assert await asyncio.to_thread(gw.mqtt.subscribed.wait, 20), "gateway never subscribed"
        await asyncio.to_thread(publish, mosquitto.port, traffic)
        sql = "SELECT device, metric, value FROM readings ORDER BY device, metric, ts"
        stored = await wait_rows(db, sql, 8)
        seen = await wait_rows(
            db, "SELECT device, availability FROM devices WHERE availability IS NOT NULL", 1
        )
    assert [(d, m, round(float(v), 9)) for d, m, v in stored] == [
        ("shellyplug-s-C45BBE5F1A2B", "device_temperature", 47.12),
        ("shellyplus1pm-a8032ab1d0e1", "current", 0.068),
        ("shellyplus1pm-a8032ab1d0e1", "device_temperature", 23.5),
        ("shellyplus1pm-a8032ab1d0e1", "energy", 0.006532),
        ("shellyplus1pm-a8032ab1d0e1", "power", 0.0),  # the overlay, at its params.ts (2025)
        ("shellyplus1pm-a8032ab1d0e1", "power", 8.9),  # the status topic, at the receive time
        ("shellyplus1pm-a8032ab1d0e1", "voltage", 237.5),
        ("shellyplusht-08b61fd0e1f2", "temperature", 21.9),  # no 0 % battery: on USB
    ]
    assert seen == [("shellyplus1pm-a8032ab1d0e1", "online")]


def test_default_filters_cover_the_device_id_and_shellies_prefixes_once() -> None:
    shelly = adapter()
    # shellies/+ is under the Gen1 'shellies/#': no overlapping subscription (which MQTT lets a
    # broker answer with one copy per subscription).
    assert shelly.filters == ("shellies/#", "+/events/rpc", "+/status/+", "+/online")
    alone = adapter(gen1_prefix=None)
    assert alone.filters == (
        "+/events/rpc",
        "+/status/+",
        "+/online",
        "shellies/+/events/rpc",
        "shellies/+/status/+",
        "shellies/+/online",
    )


def test_multi_level_prefix_names_the_device_by_its_wildcards() -> None:
    status = b'{"id":0,"apower":5.5}'
    shelly = adapter(gen2_prefixes=["home/+/+", "flat/hall/meter"])
    found = run_all(
        shelly,
        [
            Message("a", "home/kitchen/shellyplus1pm-x1/status/switch:0", status),
            Message("b", "flat/hall/meter/status/switch:1", status),
        ],
    )
    assert sorted((r.device, r.value) for r in found) == [
        ("kitchen-shellyplus1pm-x1", 5.5),
        ("meter-ch1", 5.5),  # a prefix without '+' names one device: its last level
    ]
    # A topic of another depth is not this prefix's.
    assert readings(shelly.adapt("home/kitchen/status/switch:0", status, T0)) == []
    assert shelly.counts["ignored_topics"] == 1


def test_devices_map_by_name_full_prefix_or_rpc_src() -> None:
    shelly = adapter(
        gen2_prefixes=["home/+/+"],
        devices={
            "home/kitchen/plug": {"device": "kettle", "room": "kitchen"},
            "shellyplusplugs-e1": {"device": "tv", "room": "living"},
        },
    )
    frame = {
        "src": "shellyplusplugs-e1",
        "method": "NotifyStatus",
        "params": {"ts": T0, "switch:0": {"id": 0, "apower": 80.0}},
    }
    found = run_all(
        shelly,
        [
            Message("a", "home/kitchen/plug/status/switch:0", b'{"id":0,"apower":1800.0}'),
            Message("b", "home/living/x/events/rpc", json.dumps(frame).encode()),
        ],
    )
    assert sorted((r.room, r.device, r.value) for r in found) == [
        ("kitchen", "kettle", 1800.0),
        ("living", "tv", 80.0),
    ]


def test_bad_prefixes_are_config_errors() -> None:
    for bad in ["home/+x", "home//x", "/x", "x/#"]:
        with pytest.raises(ValueError, match="prefix"):
            adapter(gen2_prefixes=[bad])


def test_external_power_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shelly_module, "MAX_POWERED_DEVICES", 2)
    shelly = adapter()
    usb = b'{"id":0,"battery":{"percent":0},"external":{"present":true}}'
    for n in range(3):
        run_all(shelly, [Message("usb", f"shellyhtg3-{n}/status/devicepower:0", usb)])
    assert list(shelly._powered) == ["shellyhtg3-1", "shellyhtg3-2"]
    assert shelly.counts["external_power_battery"] == 3
    # the device still remembered keeps its battery ignored
    overlay = b'{"id":0,"battery":{"percent":0}}'
    assert run_all(shelly, [Message("o", "shellyhtg3-2/status/devicepower:0", overlay)]) == []


def test_status_topics_of_unknown_components_are_not_decoded() -> None:
    shelly = adapter()
    # A foreign device's <x>/status/<y> matches '+/status/+': ignored, not a dead letter.
    assert readings(shelly.adapt("printer/status/state", b"idle", T0)) == []
    assert shelly.ignored_fields["state"] == 1
    # under the wildcard `+` a non-object status is another device's, not a dead letter...
    assert shelly.adapt("shellyplus1-a1/status/switch:0", b"on", T0) == Adapted([], [])
    assert shelly.counts["foreign_topics"] == 1
    # ...under a literal prefix it is this Shelly's broken status
    literal = adapter(gen2_prefixes=["shellyplus1-a1"])
    bad = literal.adapt("shellyplus1-a1/status/switch:0", b"on", T0)
    assert isinstance(bad, DeadLetter) and bad.reason == "adapter_invalid_json"


# Other devices' payloads on topics of a Shelly's shape (hand-made or Node-RED topics, or devices
# whose topic was set so): the payload words follow each ecosystem's documentation, as cited in
# tests/fixtures/ecosystems/shelly.yaml (shelly-foreign-*).
FOREIGN = [
    ("esp-hall/online", b"online"),  # ESPHome's birth/LWT words
    ("tasmota-lamp/online", b"Online"),  # Tasmota's LWT words
    ("kitchen/status/light", b"ON"),  # Tasmota POWER
    ("kitchen/status/switch:0", b'{"POWER":"ON"}'),  # Tasmota RESULT: no id
    ("wled/status/switch", b"1"),
    ("wled/status/light:0", b"128"),  # WLED brightness
    ("omg/status/temperature:0", b'{"id":"A4:C1:38:5E:2B:11","tempc":21.4,"hum":48}'),
    ("omg/status/temperature", b'{"id":0,"tempc":21.4}'),  # no component id in the topic
    ("hall/status/switch:1", b'{"id":0,"apower":5}'),  # the id is not the topic's
    ("hall/status/switch:0", b'{"id":true,"apower":5}'),  # true == 1 in Python, not an id
    ("remote/events/rpc", b'{"action":"single"}'),  # a Zigbee2MQTT-like action, no method
    ("remote/events/rpc", b"single"),
    ("remote/status/rpc", b'"ok"'),
    ("bad-utf8/online", b"\xff\xfe"),
]


@pytest.mark.parametrize(("topic", "payload"), FOREIGN)
def test_foreign_topics_under_the_wildcard_prefix_are_not_ours(topic: str, payload: bytes) -> None:
    shelly = adapter()
    assert shelly.adapt(topic, payload, T0) == Adapted([], [])
    assert shelly.counts["foreign_topics"] == 1
    assert shelly.counts["dead_letters"] == 0 and shelly.counts["readings"] == 0
    # Under a literal prefix the same topic is surely a Shelly's and is decoded as one (a
    # dead letter, a reading, or fields and replies ignored): never "foreign".
    literal = adapter(gen2_prefixes=[topic.split("/", 1)[0]])
    literal.adapt(topic, payload, T0)
    assert literal.counts["foreign_topics"] == 0


def test_shelly_shaped_payloads_under_the_wildcard_still_count() -> None:
    shelly = adapter()
    status = b'{"id":1,"apower":12.5,"voltage":230.1}'
    found = readings(shelly.adapt("shellypro4pm-c8f09e8a1b2c/status/switch:1", status, T0))
    assert sorted((r.device, r.metric, r.value) for r in found) == [
        ("shellypro4pm-c8f09e8a1b2c-ch1", "power", 12.5),
        ("shellypro4pm-c8f09e8a1b2c-ch1", "voltage", 230.1),
    ]
    # a Shelly-shaped status with a bad field is still a Shelly's dead letter
    bad = shelly.adapt("shellypro4pm-c8f09e8a1b2c/status/switch:0", b'{"id":0,"apower":"x"}', T0)
    assert isinstance(bad, DeadLetter) and bad.reason == "adapter_validation"
    gone = shelly.adapt("shellypro4pm-c8f09e8a1b2c/online", b"false", T0)
    assert isinstance(gone, Adapted) and [c.online for c in gone.availability] == [False]
    # under shellies/ (the Gen1 prefix) every topic is a Shelly's: dead letter, not foreign
    odd = shelly.adapt("shellies/shellyplus1-a1/online", b"online", T0)
    assert isinstance(odd, DeadLetter) and odd.reason == "adapter_validation"
    assert shelly.counts["foreign_topics"] == 0


def test_an_adopted_entity_takes_its_topic_from_the_wildcard_prefix() -> None:
    # Home Assistant discovery adopts an ESPHome-like node whose availability topic was set to
    # <node>/online and a hand-made sensor on <x>/status/<y>: both match Shelly's `+` filters,
    # which only guess, so the claims win; a literal Shelly prefix and shellies/ are not taken.
    settings = AdapterSettings.model_validate(
        {
            "shelly": {"enabled": True, "gen2_prefixes": ["+", "shellies/+", "garage-pm"]},
            "ha_discovery": {"enabled": True},
        }
    )
    registry = AdapterRegistry.from_settings(settings)
    decoder = MessageDecoder(topic_root="homeedge", adapters=list(registry))
    ha = next(a for a in registry if isinstance(a, HaDiscoveryAdapter))
    shelly = next(a for a in registry if isinstance(a, ShellyAdapter))
    assert set(shelly.yielding_filters) == {"+/events/rpc", "+/status/+", "+/online"}

    def config(uid: str, state: str, avty: str) -> bytes:
        body = {
            "dev_cla": "temperature",
            "unit_of_meas": "°C",
            "stat_t": state,
            "avty_t": avty,
            "uniq_id": uid,
            "dev": {"ids": [uid]},
        }
        return json.dumps(body).encode()

    decoder.decode(
        "homeassistant/sensor/hall/t/config",
        config("hall-t", "esp-hall/sensor/t/state", "esp-hall/status"),
        0.0,
    )
    decoder.decode(
        "homeassistant/sensor/attic/t/config",
        config("attic-t", "attic/status/temperature", "esp-attic/online"),
        0.0,
    )
    for topic in ("esp-hall/status", "attic/status/temperature", "esp-attic/online"):
        assert decoder.adapters.owner(topic) is ha, topic
    # ESPHome's own availability topic, <node>/status, is never one of Shelly's
    assert decoder.adapters.owner("esp-other/status") is None
    # a topic nobody claimed stays Shelly's
    assert decoder.adapters.owner("shellyplus1-a1/status/switch:0") is shelly
    taken = ha.counts["state_topic_taken"]
    decoder.decode(
        "homeassistant/sensor/g/t/config", config("g-t", "garage-pm/status/switch:0", "x/y"), 0.0
    )
    decoder.decode(
        "homeassistant/sensor/s/t/config",
        config("s-t", "shellies/shellyht-1/sensor/temperature", "x/y"),
        0.0,
    )
    assert ha.counts["state_topic_taken"] == taken + 2
    assert decoder.adapters.owner("garage-pm/status/switch:0") is shelly
    items = decoder.decode("attic/status/temperature", b"19.5", 0.0)
    assert isinstance(items[-1], ReadingsIn) and items[-1].readings[0].value == 19.5


def test_gen1_custom_prefixes_under_or_beside_shellies() -> None:
    shelly = adapter(gen1_custom_prefixes=["shellies/office/+/+", "garden/+"])
    # under shellies/#: no second subscription; beside it: its own
    assert shelly.filters[0] == "shellies/#" and "garden/+/#" in shelly.filters
    assert not any(f.startswith("shellies/office") for f in shelly.filters)
    found = run_all(
        shelly,
        [
            Message("a", "shellies/office/roller/window/roller/0/power", b"120.5"),
            Message("b", "garden/pump/relay/0/power", b"640"),
            Message("c", "shellies/shelly1pm-84CCA8B1C2D3/temperature", b"37.35"),
            Message("d", "garden/pump/temperature", b"41.0"),
        ],
    )
    assert sorted((r.device, r.metric, r.value) for r in found) == [
        ("pump", "device_temperature", 41.0),
        ("pump", "power", 640.0),
        ("roller-window", "power", 120.5),
        ("shelly1pm-84CCA8B1C2D3", "device_temperature", 37.35),
    ]
