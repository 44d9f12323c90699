"""The adapter registry, identity sanitizing and unit conversion (pure units)."""

from __future__ import annotations

import json
import math
import random
from collections import Counter

import pytest

from gateway.adapters import AdapterRegistry, AdapterSettings
from gateway.adapters.base import sanitize_device
from gateway.adapters.units import UnitError, to_metric_unit
from gateway.ingest import MessageDecoder
from gateway.records import DeadLetter
from schemas.topics import valid_segment
from tests.fixtures.adapters.support import T0, load


def all_enabled(**extra: object) -> AdapterSettings:
    return AdapterSettings.model_validate(
        {name: {"enabled": True} for name in ("zigbee2mqtt", "tasmota", "shelly", "ha_statestream")}
        | extra
    )


def test_only_enabled_adapters_are_built() -> None:
    # Home Assistant discovery is the one adapter on by default (devices describe themselves).
    assert [a.name for a in AdapterRegistry.from_settings(AdapterSettings())] == ["ha_discovery"]
    settings = AdapterSettings.model_validate(
        {"tasmota": {"enabled": True}, "ha_discovery": {"enabled": False}}
    )
    registry = AdapterRegistry.from_settings(settings)
    assert [a.name for a in registry] == ["tasmota"]
    assert registry.match("zigbee2mqtt/lamp") is None
    assert registry.adapt("zigbee2mqtt/lamp", b"{}", 0.0) is None


def test_filters_and_dispatch() -> None:
    registry = AdapterRegistry.from_settings(all_enabled())
    assert registry.filters() == [
        "zigbee2mqtt/#",
        "tele/+/SENSOR",
        "tele/+/STATE",
        "tele/+/LWT",
        "stat/+/STATUS8",
        "stat/+/STATUS10",
        # Tasmota's other documented FullTopic order, %topic%/%prefix%/
        "+/tele/SENSOR",
        "+/tele/STATE",
        "+/tele/LWT",
        "+/stat/STATUS8",
        "+/stat/STATUS10",
        "shellies/#",
        "+/events/rpc",
        "+/status/+",
        "+/online",
        "homeassistant/+/+/config",
        "homeassistant/+/+/+/config",
        "homeassistant/sensor/+/+",
        "homeassistant/binary_sensor/+/+",
    ]
    owner = {
        "zigbee2mqtt/kitchen/floor_light": "zigbee2mqtt",
        "tele/plug/SENSOR": "tasmota",
        "plug/tele/SENSOR": "tasmota",
        "shellies/shelly1-AB12/relay/0/power": "shelly",
        "shellyplus1-a1b2/events/rpc": "shelly",
        "shellyplus1-a1b2/status/switch:0": "shelly",
        "shellies/shellyplus1-a1b2/status/switch:0": "shelly",
        "homeassistant/sensor/temp/state": "ha_statestream",
        # statestream's filter matches discovery configs too: discovery comes first
        "homeassistant/sensor/temp/config": "ha_discovery",
        "homeassistant/sensor/node/temp/config": "ha_discovery",
    }
    for topic, name in owner.items():
        adapter = registry.match(topic)
        assert adapter is not None and adapter.name == name, topic
    assert registry.match("tele/plug/INFO1") is None
    assert registry.match("homeassistant/light/desk/state") is None
    # The gateway's decoder routes with the same table: same owner for every topic.
    decoder = MessageDecoder(topic_root="homeedge", adapters=list(registry))
    assert decoder.adapters.filters == registry.filters()
    for topic in [*owner, "tele/plug/INFO1", "homeassistant/light/desk/state"]:
        assert decoder.adapters.owner(topic) is registry.match(topic), topic


@pytest.mark.parametrize(
    ("name", "device"),
    [
        ("kitchen/floor_light", "kitchen-floor_light"),
        ("Living Room Lamp", "Living-Room-Lamp"),
        ("0x00158d0001aabbcc", "0x00158d0001aabbcc"),
        ("_hidden/", "hidden"),
    ],
)
def test_sanitized_names_are_topic_segments(name: str, device: str) -> None:
    assert sanitize_device(name) == device


def test_sanitizing_keeps_long_and_empty_names_apart() -> None:
    a, b = sanitize_device("x" * 80 + "a"), sanitize_device("x" * 80 + "b")
    assert a != b and len(a) <= 64 and valid_segment(a) and valid_segment(b)
    assert valid_segment(sanitize_device("///")) and sanitize_device("///") != sanitize_device("#")


def test_unit_conversions() -> None:
    assert to_metric_unit(68.0, "°F", "temperature") == 20.0
    assert to_metric_unit(293.15, "K", "temperature") == pytest.approx(20.0)
    assert to_metric_unit(1500.0, "Wh", "energy") == 1.5
    assert to_metric_unit(120000.0, "Wmin", "energy") == 2.0
    assert to_metric_unit(1.2, "kW", "power") == 1200.0
    assert to_metric_unit(21.0, "C", "temperature") == 21.0
    assert to_metric_unit(5.0, "dB", "radon_bq") == 5.0  # unknown metric: kept as it is
    assert to_metric_unit(750.06, "mmHg", "pressure") == pytest.approx(1000.0, abs=0.01)
    assert to_metric_unit(29.92, "inHg", "pressure") == pytest.approx(1013.2, abs=0.1)
    assert to_metric_unit(3000.0, "mV", "voltage") == 3.0
    assert to_metric_unit(0.05, "mg/m³", "formaldehyde") == pytest.approx(50.0)
    assert to_metric_unit(1500.0, "L", "water") == 1.5
    with pytest.raises(UnitError):
        to_metric_unit(1.0, "W", "energy")
    with pytest.raises(UnitError):
        to_metric_unit(1.0, "furlong", "temperature")


def test_settings_reject_unknown_units() -> None:
    with pytest.raises(ValueError, match="unknown unit"):
        AdapterSettings.model_validate({"zigbee2mqtt": {"field_units": {"energy": "BTU"}}})


ODD_VALUES: list[object] = [None, [], {}, "x", "", 1e308, -1, True, [1, 2], {"a": {"b": 1}}, 0]


def _mutations(payload: bytes, rng: random.Random) -> list[bytes]:
    out = [payload[: rng.randrange(len(payload) + 1)], bytes(rng.randrange(256) for _ in range(8))]
    try:
        doc = json.loads(payload)
    except ValueError:
        return out
    if isinstance(doc, dict):
        for _ in range(6):
            bent = json.loads(payload)
            target = bent
            while isinstance(target, dict) and target and rng.random() < 0.6:
                key = rng.choice(list(target))
                if isinstance(target[key], dict):
                    target = target[key]
                else:
                    break
            if isinstance(target, dict) and target:
                target[rng.choice(list(target))] = rng.choice(ODD_VALUES)
            out.append(json.dumps(bent).encode())
    return out


def test_odd_input_never_raises_and_readings_stay_finite() -> None:
    rng = random.Random(5)
    registry = AdapterRegistry.from_settings(all_enabled())
    kinds: Counter[str] = Counter()
    for ecosystem in ("zigbee2mqtt", "tasmota", "shelly", "ha_statestream"):
        fix = load(ecosystem)
        for message in fix["messages"] + fix["malformed"]:
            for payload in _mutations(message.payload, rng):
                result = registry.adapt(message.topic, payload, T0)
                assert result is not None
                if isinstance(result, DeadLetter):
                    kinds[result.reason] += 1
                    assert result.reason.startswith("adapter_") and len(result.reason) <= 32
                else:
                    found = result.readings
                    kinds["readings"] += len(found)
                    assert all(math.isfinite(r.value) and valid_segment(r.device) for r in found)
    assert kinds["adapter_invalid_json"] and kinds["adapter_validation"] and kinds["readings"]
