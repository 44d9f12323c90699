"""Home Assistant statestream adapter: fixtures -> exact readings, held states, availability."""

from __future__ import annotations

import pytest

from gateway.adapters import Adapted, AdapterRegistry, AdapterSettings, ha_statestream
from gateway.adapters.ha_statestream import HaStatestreamAdapter
from gateway.records import DeadLetter, Reading
from tests.conftest import MosquittoBroker
from tests.fixtures.adapters.support import (
    T0,
    broker_roundtrip,
    expected,
    load,
    readings,
    record_availability,
    table,
)

FIX = load("ha_statestream")
MESSAGES = FIX["messages"]
U = "unassigned"
SETTINGS = {"enabled": True, "entity_metrics": {"sensor.garage_co2": "co2"}}


def adapter(**ha: object) -> HaStatestreamAdapter:
    settings = AdapterSettings.model_validate({"ha_statestream": {**SETTINGS, **ha}})
    return HaStatestreamAdapter(settings)


def replay(ha: HaStatestreamAdapter) -> tuple[list[Reading], dict[str, list[Reading]]]:
    """Feed every fixture, message i received at T0 + i; readings overall and per message."""
    found: list[Reading] = []
    per_message: dict[str, list[Reading]] = {}
    for i, message in enumerate(MESSAGES):
        out = readings(ha.adapt(message.topic, message.payload, T0 + i))
        per_message[message.name] = out
        found.extend(out)
    return found, per_message


def at(name: str) -> float:
    return T0 + [m.name for m in MESSAGES].index(name)


def test_states_with_their_attributes_become_readings() -> None:
    ha = adapter()
    found, per_message = replay(ha)
    assert table(found) == expected(
        [
            # the first state waits for unit (°F) and device class, keeps its own time
            ("home", U, "living_room_temperature", "temperature", at("lr_state"), 20.0),
            ("home", U, "living_room_temperature", "temperature", at("lr_state_2"), 25.0),
            ("home", U, "dishwasher_energy", "energy", at("dw_state"), 1.2345),  # Wh -> kWh
            ("home", U, "hallway_motion", "motion", at("motion_state"), 1.0),
            ("home", U, "back_door", "door", at("door_state"), 0.0),
            ("home", U, "kitchen_humidity", "humidity", at("kh_back"), 44.0),
            ("home", U, "garage_co2", "co2", at("garage_co2"), 950.0),  # entity_metrics
        ]
    )
    # the held state is released by the attribute message that completes it
    assert [r.metric for r in per_message["lr_class"]] == ["temperature"]
    assert per_message["lr_state"] == per_message["lr_unit"] == []
    assert ha.counts["pending_resolved"] == 2
    assert ha.ignored_fields == {
        "state_class": 1,
        "friendly_name": 1,
        "last_updated": 1,
        "sensor.<non-numeric>": 1,  # a text sensor (the next dawn), never held
    }
    assert ha.counts["ignored_topics"] == 1  # discovery config under the same base


def test_unavailable_is_availability() -> None:
    ha = adapter()
    changes = record_availability(ha)
    replay(ha)
    assert [(c.device, c.online, c.ts) for c in changes] == [
        ("kitchen_humidity", False, at("kh_gone")),
        ("kitchen_humidity", True, at("kh_back")),
    ]


def test_the_gateways_own_entities_are_not_adopted() -> None:
    """Statestream publishes the gateway's own HA entities too (gateway.homeassistant): taking
    them would store the gateway's readings again as new devices, announced again (a loop)."""
    ha = adapter()
    base = "homeassistant/sensor/homeedge_gw_1_home_1_thermostat_1_temperature"
    for leaf, payload in (
        ("device_class", b'"temperature"'),
        ("unit_of_measurement", b'"\xc2\xb0C"'),
        ("state", b"21.5"),
    ):
        out = ha.adapt(f"{base}/{leaf}", payload, T0)
        assert isinstance(out, Adapted) and out.readings == []
    assert ha.counts["own_entities"] == 3


def test_held_states_are_bounded() -> None:
    ha = adapter(max_pending=1)
    for i in range(3):
        topic = f"homeassistant/sensor/probe_{i}/state"
        assert readings(ha.adapt(topic, b'"1.5"', T0)) == []
    assert ha.counts["pending"] == 1 and ha.counts["pending_dropped"] == 2


def test_the_least_recently_heard_entity_is_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flood of entity ids forgets the idle entities, never the one in use (its device class
    and unit arrive once, retained: forgetting them would silence it until HA restarts)."""
    monkeypatch.setattr(ha_statestream, "MAX_ENTITIES", 3)
    ha = adapter()
    base = "homeassistant/sensor/in_use"
    ha.adapt(f"{base}/device_class", b'"temperature"', T0)
    ha.adapt(f"{base}/unit_of_measurement", b'"\xc2\xb0C"', T0)
    for i in range(10):
        ha.adapt(f"homeassistant/sensor/flood_{i}/state", b'"1.5"', T0)
        [reading] = readings(ha.adapt(f"{base}/state", b'"21.5"', T0 + i))
        assert (reading.metric, reading.value) == ("temperature", 21.5)
    assert ha.counts["entities_forgotten"] == 8


def test_malformed_payloads_are_dead_letters_with_reasons() -> None:
    ha = adapter()
    replay(ha)  # attributes known: a wrong state is now an error, not a text sensor
    for bad in FIX["malformed"]:
        result = ha.adapt(bad.topic, bad.payload, T0)
        assert isinstance(result, DeadLetter), bad.name
        assert (result.reason, result.payload) == (bad.reason, bad.payload), bad.name
    ha.adapt("homeassistant/sensor/living_room_temperature/unit_of_measurement", b'"mi"', T0)
    unit = ha.adapt("homeassistant/sensor/living_room_temperature/state", b'"70"', T0)
    assert isinstance(unit, DeadLetter) and unit.reason == "adapter_unit"


def test_through_a_real_broker(mosquitto: MosquittoBroker, topic_root: str) -> None:
    base = f"{topic_root}/ha"
    fix = load("ha_statestream", {"homeassistant": base})
    settings = AdapterSettings.model_validate(
        {"home": "flat-7", "ha_statestream": {**SETTINGS, "base_topic": base}}
    )
    registry = AdapterRegistry.from_settings(settings)
    results = broker_roundtrip(mosquitto.port, registry, fix["messages"] + fix["malformed"][:1])
    found: list[Reading] = [
        r for _, res in results if isinstance(res, Adapted) for r in res.readings
    ]
    dead = [res.reason for _, res in results if isinstance(res, DeadLetter)]
    assert sorted((r.home, r.device, r.metric, round(r.value, 9)) for r in found) == [
        ("flat-7", "back_door", "door", 0.0),
        ("flat-7", "dishwasher_energy", "energy", 1.2345),
        ("flat-7", "garage_co2", "co2", 950.0),
        ("flat-7", "hallway_motion", "motion", 1.0),
        ("flat-7", "kitchen_humidity", "humidity", 44.0),
        ("flat-7", "living_room_temperature", "temperature", 20.0),
        ("flat-7", "living_room_temperature", "temperature", 25.0),
    ]
    assert dead == ["adapter_validation"]
