"""Zigbee2MQTT adapter: fixtures -> exact readings, availability, ignored fields, dead letters."""

from __future__ import annotations

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
