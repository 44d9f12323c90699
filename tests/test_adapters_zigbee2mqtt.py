"""Zigbee2MQTT adapter: fixtures -> exact readings, availability, ignored fields, dead letters."""

from __future__ import annotations

import json

import pytest

from gateway.adapters import Adapted, AdapterRegistry, AdapterSettings, AvailabilityChange
from gateway.adapters.zigbee2mqtt import Zigbee2MqttAdapter
from gateway.records import DeadLetter, Reading
from tests.conftest import MosquittoBroker
from tests.fixtures.adapters.support import (
    T0,
    availability,
    broker_roundtrip,
    expected,
    load,
    readings,
    record_availability,
    run_all,
    table,
)

FIX = load("zigbee2mqtt")
MSG = {m.name: m for m in FIX["messages"]}
STATES = ["thermo", "motion", "door", "plug", "co2"]

EXPECTED = [
    ("home", "unassigned", "living-thermo_1", "battery", T0, 91.0),
    # voltage on a battery device is the battery's, in mV
    ("home", "unassigned", "living-thermo_1", "battery_voltage", T0, 2.985),
    ("home", "unassigned", "living-thermo_1", "humidity", T0, 48.25),
    ("home", "unassigned", "living-thermo_1", "temperature", T0, 21.37),
    # last_seen (ISO 8601, UTC) is the reading time; illuminance_lux wins over illuminance
    ("home", "unassigned", "hall_motion", "battery", 1764403205.0, 100.0),
    ("home", "unassigned", "hall_motion", "light", 1764403205.0, 310.0),
    ("home", "unassigned", "hall_motion", "motion", 1764403205.0, 1.0),
    # last_seen as epoch milliseconds; contact false = door open = 1
    ("home", "unassigned", "front_door", "battery", 1764403210.0, 67.0),
    ("home", "unassigned", "front_door", "door", 1764403210.0, 1.0),
    # a metering plug: mains voltage and current
    ("home", "unassigned", "desk_plug", "current", T0, 0.27),
    ("home", "unassigned", "desk_plug", "energy", T0, 12.34),
    ("home", "unassigned", "desk_plug", "power", T0, 61.5),
    ("home", "unassigned", "desk_plug", "voltage", T0, 229.0),
    ("home", "unassigned", "study-co2-sensor", "co2", T0, 812.0),
    ("home", "unassigned", "study-co2-sensor", "temperature", T0, 22.1),
]


def adapter(**z2m: object) -> Zigbee2MqttAdapter:
    settings = AdapterSettings.model_validate({"zigbee2mqtt": {"enabled": True, **z2m}})
    return Zigbee2MqttAdapter(settings)


def test_state_objects_become_readings_with_units_and_times() -> None:
    z2m = adapter()
    found = run_all(z2m, [MSG[n] for n in STATES])
    assert table(found) == expected(EXPECTED)
    assert all(r.received_at == T0 for r in found)


def test_unmapped_fields_are_ignored_and_counted() -> None:
    z2m = adapter()
    run_all(z2m, [MSG[n] for n in STATES])
    assert z2m.ignored_fields == {"linkquality": 2, "illuminance": 1, "state": 1}
    assert z2m.counts["ignored_fields"] == 4
    assert z2m.counts["null_values"] == 1  # co2 sensor's humidity: null
    assert z2m.counts["readings"] == len(EXPECTED)


def test_configured_fields_are_stored_under_their_metric_and_devices_mapped() -> None:
    z2m = adapter(
        field_metrics={"linkquality": "linkquality", "battery": ""},
        devices={"living/thermo_1": {"device": "thermostat-1", "room": "living"}},
        default_room="hallway",
    )
    found = run_all(z2m, [MSG["thermo"], MSG["door"]])
    assert table(found) == expected(
        [
            ("home", "living", "thermostat-1", "battery_voltage", T0, 2.985),
            ("home", "living", "thermostat-1", "humidity", T0, 48.25),
            ("home", "living", "thermostat-1", "linkquality", T0, 120.0),
            ("home", "living", "thermostat-1", "temperature", T0, 21.37),
            ("home", "hallway", "front_door", "door", 1764403210.0, 1.0),
        ]
    )
    assert z2m.ignored_fields["battery"] == 2


def test_availability_bridge_and_commands_yield_no_readings() -> None:
    z2m = adapter()
    changes = record_availability(z2m)
    for name in ("offline", "online_plain", "bridge_state", "bridge_devices", "command"):
        assert readings(z2m.adapt(MSG[name].topic, MSG[name].payload, T0)) == []
    assert changes == [
        AvailabilityChange("zigbee2mqtt", "home", "unassigned", "living-thermo_1", False, T0),
        AvailabilityChange("zigbee2mqtt", "home", "unassigned", "front_door", True, T0),
    ]
    assert z2m.counts["availability"] == 2
    assert z2m.counts["ignored_topics"] == 3


def test_malformed_payloads_are_dead_letters_with_reasons() -> None:
    z2m = adapter()
    for bad in FIX["malformed"]:
        result = z2m.adapt(bad.topic, bad.payload, T0)
        assert isinstance(result, DeadLetter), bad.name
        assert (result.reason, result.topic, result.payload) == (bad.reason, bad.topic, bad.payload)
        assert result.detail and result.received_at == T0
    assert z2m.counts["dead_letters"] == len(FIX["malformed"])


def test_oversized_and_non_finite_values_are_dead_letters() -> None:
    settings = AdapterSettings.model_validate(
        {"max_payload_bytes": 100, "zigbee2mqtt": {"enabled": True}}
    )
    z2m = Zigbee2MqttAdapter(settings)
    big = z2m.adapt("zigbee2mqtt/x", b'{"temperature": 1}' + b" " * 100, T0)
    assert isinstance(big, DeadLetter) and big.reason == "adapter_oversized"
    inf = z2m.adapt("zigbee2mqtt/x", b'{"temperature": 1e400}', T0)
    assert isinstance(inf, DeadLetter) and inf.reason == "adapter_invalid_json"
    huge = z2m.adapt("zigbee2mqtt/x", b'{"temperature": 1e16}', T0)
    assert isinstance(huge, DeadLetter) and huge.reason == "adapter_validation"


def test_through_a_real_broker(mosquitto: MosquittoBroker, topic_root: str) -> None:
    base = f"{topic_root}/z2m"
    fix = load("zigbee2mqtt", {"zigbee2mqtt": base})
    settings = AdapterSettings.model_validate(
        {"zigbee2mqtt": {"enabled": True, "base_topic": base}}
    )
    registry = AdapterRegistry.from_settings(settings)
    traffic = fix["messages"] + fix["malformed"][:1]
    results = broker_roundtrip(mosquitto.port, registry, traffic)
    changes = availability(results)
    found: list[Reading] = [
        r for _, res in results if isinstance(res, Adapted) for r in res.readings
    ]
    dead = [res for _, res in results if isinstance(res, DeadLetter)]
    # Same readings as in-process, except that receive-time-stamped ones carry the real time.
    assert sorted((r.device, r.metric, r.value) for r in found) == sorted(
        (d, m, v) for _, _, d, m, _, v in EXPECTED
    )
    assert {r.ts for r in found if r.device == "front_door"} == {1764403210.0}
    assert [d.reason for d in dead] == ["adapter_invalid_json"]
    assert [(c.device, c.online) for c in changes] == [
        ("living-thermo_1", False),
        ("front_door", True),
    ]


def _rows(z2m: Zigbee2MqttAdapter, topic: str, payload: bytes) -> list[tuple[str, str, float]]:
    return sorted((r.device, r.metric, r.value) for r in readings(z2m.adapt(topic, payload, T0)))


def test_attribute_output_modes() -> None:
    auto = adapter()
    # First round: temperature's meaning (room or chip) waits for the device's other properties
    assert _rows(auto, "zigbee2mqtt/a/b/temperature", b"21.5") == []
    assert _rows(auto, "zigbee2mqtt/a/b/contact", b"true") == [("a-b", "door", 0.0)]
    assert auto.counts["context_unknown"] == 1
    # the next round: a contact sensor's temperature is its own
    assert _rows(auto, "zigbee2mqtt/a/b/temperature", b"21.5") == [
        ("a-b", "device_temperature", 21.5)
    ]
    assert _rows(auto, "zigbee2mqtt/a/b", b'{"temperature": 21.6}') == [
        ("a-b", "device_temperature", 21.6)  # the properties seen before still count
    ]
    # attribute_and_json: once the JSON state is seen, its property topics repeat it
    assert _rows(auto, "zigbee2mqtt/a/b/temperature", b"21.6") == []
    assert auto.counts["attribute_duplicates"] == 1
    json_only = adapter(output="json")
    assert _rows(json_only, "zigbee2mqtt/c/temperature", b"21.5") == []
    both = adapter(output="attribute")
    assert _rows(both, "zigbee2mqtt/c", b'{"humidity": 40}') == [("c", "humidity", 40.0)]
    assert _rows(both, "zigbee2mqtt/c/humidity", b"41") == [("c", "humidity", 41.0)]
    # a JSON array is never attribute output (that joins arrays with commas)
    bad = both.adapt("zigbee2mqtt/c/humidity", b"[1, 2]", T0)
    assert isinstance(bad, DeadLetter) and bad.reason == "adapter_validation"
    # commands, even with a property level, are not attributes
    assert _rows(both, "zigbee2mqtt/c/set/state", b"ON") == []
    assert _rows(both, "zigbee2mqtt/c/get", b'{"state": ""}') == []


def test_device_temperature_is_configurable() -> None:
    contact = b'{"contact": true, "temperature": 27, "battery": 90}'
    assert ("door_1", "device_temperature", 27.0) in _rows(adapter(), "zigbee2mqtt/door_1", contact)
    for z2m in (
        adapter(room_temperature_devices=["door_1"]),
        adapter(device_temperature_markers=[]),
    ):
        assert ("door_1", "temperature", 27.0) in _rows(z2m, "zigbee2mqtt/door_1", contact)
    # a humidity sensor's temperature is the room's, whatever else it reports
    th_relay = b'{"state": "ON", "temperature": 22, "humidity": 40}'
    assert ("th", "temperature", 22.0) in _rows(adapter(), "zigbee2mqtt/th", th_relay)


def test_bridge_devices_give_units_and_power_source() -> None:
    z2m = adapter()
    devices = [
        {
            "friendly_name": "cr2032_button",
            "power_source": "Battery",
            "definition": {"exposes": [{"property": "voltage", "unit": "V"}]},
        },
        {
            "friendly_name": "air",
            "power_source": "Mains (single phase)",
            "definition": {
                "exposes": [{"type": "composite", "features": [{"property": "voc", "unit": "ppm"}]}]
            },
        },
        # Padding as a large network's list would have: over the 64 KiB state limit.
        *({"friendly_name": f"pad-{i}", "definition": None} for i in range(2500)),
    ]
    body = json.dumps(devices).encode()
    assert len(body) > z2m.max_payload_bytes
    assert readings(z2m.adapt("zigbee2mqtt/bridge/devices", body, T0)) == []
    assert z2m.counts["bridge_devices"] == 1
    # Battery per power source, in V per its expose: no battery field needed.
    assert _rows(z2m, "zigbee2mqtt/cr2032_button", b'{"voltage": 3.0, "action": "single"}') == [
        ("cr2032_button", "battery_voltage", 3.0)
    ]
    assert _rows(z2m, "zigbee2mqtt/air", b'{"voc": 0.25}') == [("air", "voc", 250.0)]
    # A broken list is metadata lost, not a device's dead letter.
    assert readings(z2m.adapt("zigbee2mqtt/bridge/devices", b"[{", T0)) == []
    assert z2m.counts["bad_bridge_devices"] == 1


def test_remembered_devices_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.adapters.zigbee2mqtt as module

    monkeypatch.setattr(module, "MAX_REMEMBERED_DEVICES", 2)
    z2m = adapter()
    for name in ("a", "b", "c"):
        z2m.adapt(f"zigbee2mqtt/{name}/battery", b"50", T0)
    assert len(z2m._known) == 2 and z2m.counts["devices_forgotten"] == 1


def _z2m_illuminance(*messages: tuple[str, object]) -> tuple[list[float], Zigbee2MqttAdapter]:
    z2m = Zigbee2MqttAdapter(AdapterSettings.model_validate({"zigbee2mqtt": {"enabled": True}}))
    lux: list[float] = []
    for topic, body in messages:
        payload = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        got = z2m.adapt(topic, payload, T0)
        if not isinstance(got, DeadLetter):
            lux += [r.value for r in readings(got) if r.metric == "light"]
    return lux, z2m


def _bridge(name: str, illuminance: dict[str, str]) -> tuple[str, object]:
    exposes = [{"type": "numeric", "property": "illuminance", **illuminance}]
    device = {"friendly_name": name, "type": "EndDevice", "definition": {"exposes": exposes}}
    return ("zigbee2mqtt/bridge/devices", [device])


def test_raw_illuminance_is_never_stored_as_lux() -> None:
    """review2 #4: Zigbee2MQTT 1.x `illuminance` is raw (no unit), 2.x's is lux (unit lx)."""
    # attribute output, device unknown: the raw value waits, then illuminance_lux wins
    lux, z2m = _z2m_illuminance(
        ("zigbee2mqtt/m/illuminance", "18900"),
        ("zigbee2mqtt/m/illuminance_lux", "78"),
        ("zigbee2mqtt/m/illuminance", "18900"),
    )
    assert lux == [78.0] and z2m.counts["context_unknown"] == 1
    # 1.x bridge/devices: exposed without a unit, in JSON or attribute output: refused
    lux, z2m = _z2m_illuminance(
        _bridge("m", {}), ("zigbee2mqtt/m", {"illuminance": 18900}), ("zigbee2mqtt/m/x", "1")
    )
    lux2, _ = _z2m_illuminance(_bridge("m", {}), ("zigbee2mqtt/m/illuminance", "18900"))
    assert lux == [] and lux2 == [] and z2m.counts["raw_illuminance"] == 1
    # 2.x: unit lx, at once in attribute output; JSON without illuminance_lux is lux
    lux, _ = _z2m_illuminance(_bridge("m", {"unit": "lx"}), ("zigbee2mqtt/m/illuminance", "196"))
    assert lux == [196.0]
    lux, _ = _z2m_illuminance(("zigbee2mqtt/m", {"illuminance": 196, "occupancy": True}))
    assert lux == [196.0]
