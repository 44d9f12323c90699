"""Tasmota adapter: fixtures -> exact readings, availability, ignored fields, dead letters."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.adapters import Adapted, AdapterRegistry, AdapterSettings
from gateway.adapters.tasmota import TasmotaAdapter
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

FIX = load("tasmota")
MSG = {m.name: m for m in FIX["messages"]}
T8 = 1764403200.0  # 2025-11-29T08:00:00Z
U = "unassigned"


def adapter(**tasmota: object) -> TasmotaAdapter:
    settings = AdapterSettings.model_validate({"tasmota": {"enabled": True, **tasmota}})
    return TasmotaAdapter(settings)


def test_sensor_objects_energy_and_units() -> None:
    tas = adapter()
    found = run_all(tas, [MSG[n] for n in ("am2301", "fahrenheit", "energy", "air", "status10")])
    assert table(found) == expected(
        [
            # "Time" without offset and no naive_time_zone: the receive time; every sensor
            # object is its own device <topic>.<Sensor>
            ("home", U, "tasmota_A1B2C3.AM2301", "humidity", T0, 45.2),
            ("home", U, "tasmota_A1B2C3.AM2301", "temperature", T0, 21.4),
            # TempUnit F: 68 °F = 20 °C; Time with offset is used
            ("home", U, "balcony.DS18B20", "temperature", T8, 20.0),
            # ENERGY stays on the plug itself, every documented field mapped
            ("home", U, "plug_tv", "apparent_power", T8, 95.0),
            ("home", U, "plug_tv", "current", T8, 0.411),
            ("home", U, "plug_tv", "energy", T8, 152.118),
            ("home", U, "plug_tv", "energy_today", T8, 0.233),
            ("home", U, "plug_tv", "energy_yesterday", T8, 0.41),
            ("home", U, "plug_tv", "power", T8, 87.0),
            ("home", U, "plug_tv", "power_factor", T8, 0.92),
            ("home", U, "plug_tv", "reactive_power", T8, 38.0),
            ("home", U, "plug_tv", "voltage", T8, 231.0),
            ("home", U, "office_air.SCD30", "co2", T8 + 10, 640.0),
            ("home", U, "office_air.SCD30", "humidity", T8 + 10, 39.0),
            ("home", U, "office_air.BH1750", "light", T8 + 10, 420.0),
            ("home", U, "office_air.SCD30", "temperature", T8 + 10, 23.1),
            # stat/<topic>/STATUS10 wraps the same object in StatusSNS
            ("home", U, "office_air.SCD30", "co2", T8 + 60, 655.0),
            ("home", U, "office_air.SCD30", "humidity", T8 + 60, 39.5),
            ("home", U, "office_air.SCD30", "temperature", T8 + 60, 23.0),
        ]
    )
    assert tas.ignored_fields == {
        "AM2301.DewPoint": 1,
        "DS18B20.Id": 1,
        "ENERGY.TotalStartTime": 1,
        "ENERGY.Period": 1,
        "SCD30.eCO2": 1,
    }


def test_one_device_per_topic_when_configured() -> None:
    tas = adapter(sensor_devices=False)
    found = run_all(tas, [MSG["am2301"], MSG["two_probes"]])
    assert table(found) == expected(
        [
            ("home", U, "tasmota_A1B2C3", "humidity", T0, 45.2),
            ("home", U, "tasmota_A1B2C3", "temperature", T0, 21.4),
            ("home", U, "boiler", "temperature", T8, 55.2),
        ]
    )
    assert tas.counts["duplicate_fields"] == 1


def test_energy_arrays_are_channels_and_full_topic_orders() -> None:
    tas = adapter(full_topics=["%topic%/%prefix%/", "home/cellar/%topic%/%prefix%/"])
    assert tas.filters[:2] == ("+/tele/SENSOR", "+/tele/STATE")
    assert "home/cellar/+/tele/SENSOR" in tas.filters
    body = (
        b'{"Time":"2025-11-29T08:00:00+00:00","ENERGY":{"Total":[1.5,2.25],'
        b'"Power":[12,0],"Voltage":230}}'
    )
    found = readings(tas.adapt("dual/tele/SENSOR", body, T0))
    found += readings(
        tas.adapt(
            "home/cellar/meter/tele/SENSOR",
            b'{"BMP280":{"Pressure":"750.1"},"PressureUnit":"mmHg"}',
            T0,
        )
    )
    assert table(found) == expected(
        [
            ("home", U, "dual", "voltage", T8, 230.0),
            ("home", U, "dual-ch1", "energy", T8, 1.5),
            ("home", U, "dual-ch1", "power", T8, 12.0),
            ("home", U, "dual-ch2", "energy", T8, 2.25),
            ("home", U, "dual-ch2", "power", T8, 0.0),
            ("home", U, "meter.BMP280", "pressure", T0, 750.1 * 1.333223684),
        ]
    )
    # The default order is no longer subscribed when not listed.
    assert readings(tas.adapt("tele/dual/SENSOR", body, T0)) == []
    assert tas.counts["ignored_topics"] == 1


def test_a_bad_field_keeps_the_others() -> None:
    tas = adapter()
    body = b'{"SHT3X":{"Temperature":"nan","Humidity":"45.0"},"DHT11":{"Temperature":" 21.5 "}}'
    found = readings(tas.adapt("tele/th/SENSOR", body, T0))
    assert table(found) == expected(
        [
            ("home", U, "th.SHT3X", "humidity", T0, 45.0),
            ("home", U, "th.DHT11", "temperature", T0, 21.5),
        ]
    )
    assert tas.bad_fields == {"SHT3X.Temperature": 1}
    assert tas.counts["bad_fields"] == 1 and tas.counts["dead_letters"] == 0


def test_naive_time_uses_the_configured_zone() -> None:
    tas = adapter(naive_time_zone="Europe/Berlin")
    found = run_all(tas, [MSG["am2301"]])
    assert {r.ts for r in found} == {T8}  # 09:00 in Berlin (CET) is 08:00 UTC


def test_state_maps_nothing_unless_configured() -> None:
    tas = adapter()
    assert run_all(tas, [MSG["state"]]) == []
    assert tas.counts["ignored_fields"] == 8
    configured = adapter(field_metrics={"Wifi.RSSI": "wifi_rssi", "POWER": "relay"})
    assert table(run_all(configured, [MSG["state"]])) == expected(
        [("home", U, "plug_tv", "relay", T8, 1.0), ("home", U, "plug_tv", "wifi_rssi", T8, 62.0)]
    )


def test_two_probes_of_one_quantity() -> None:
    tas = adapter()
    assert table(run_all(tas, [MSG["two_probes"]])) == expected(
        [
            ("home", U, "boiler.DS18B20-1", "temperature", T8, 55.2),
            ("home", U, "boiler.DS18B20-2", "temperature", T8, 41.7),
        ]
    )
    mapped = adapter(
        devices={
            "boiler": {"device": "heater", "room": "cellar"},
            "boiler/DS18B20-2": {"device": "boiler-return", "room": "utility"},
        }
    )
    assert table(run_all(mapped, [MSG["two_probes"]])) == expected(
        [
            # the device's own mapping places a sensor that has none
            ("home", "cellar", "heater.DS18B20-1", "temperature", T8, 55.2),
            ("home", "utility", "boiler-return", "temperature", T8, 41.7),
        ]
    )


def test_lwt_is_availability() -> None:
    tas = adapter()
    changes = record_availability(tas)
    for name in ("lwt_offline", "lwt_online"):
        assert readings(tas.adapt(MSG[name].topic, MSG[name].payload, T0)) == []
    assert [(c.device, c.online, c.ts) for c in changes] == [
        ("plug_tv", False, T0),
        ("plug_tv", True, T0),
    ]


def test_malformed_payloads_are_dead_letters_with_reasons() -> None:
    tas = adapter()
    for bad in FIX["malformed"]:
        if bad.name == "text_value":
            continue  # a bad field beside a good one: test_a_bad_field_keeps_the_others
        result = tas.adapt(bad.topic, bad.payload, T0)
        assert isinstance(result, DeadLetter), bad.name
        assert (result.reason, result.payload) == (bad.reason, bad.payload), bad.name


def test_settings_reject_bad_values() -> None:
    with pytest.raises(ValidationError):
        AdapterSettings.model_validate({"tasmota": {"naive_time_zone": "Mars/Olympus"}})
    with pytest.raises(ValidationError):
        AdapterSettings.model_validate({"tasmota": {"tele_prefix": "tele/+"}})
    with pytest.raises(ValidationError):
        AdapterSettings.model_validate({"tasmota": {"field_metrics": {"POWER": "Relay State"}}})
    with pytest.raises(ValidationError):
        AdapterSettings.model_validate({"tasmota": {"devices": {"x": {"room": "gateway"}}}})
    with pytest.raises(ValidationError):
        AdapterSettings.model_validate({"tasmota": {"surprise": True}})
    for bad in ("%topic%/", "%prefix%/%topic%/%topic%/", "+/%prefix%/%topic%/", "tele/x/"):
        with pytest.raises(ValidationError, match="full_topics"):
            AdapterSettings.model_validate({"tasmota": {"full_topics": [bad]}})


def test_through_a_real_broker(mosquitto: MosquittoBroker, topic_root: str) -> None:
    tele, stat = f"{topic_root}/tele", f"{topic_root}/stat"
    fix = load("tasmota", {"tele": tele, "stat": stat})
    settings = AdapterSettings.model_validate(
        {"tasmota": {"enabled": True, "tele_prefix": tele, "stat_prefix": stat}}
    )
    registry = AdapterRegistry.from_settings(settings)
    results = broker_roundtrip(mosquitto.port, registry, fix["messages"] + fix["malformed"])
    changes = availability(results)
    found: list[Reading] = [
        r for _, res in results if isinstance(res, Adapted) for r in res.readings
    ]
    dead = [res.reason for _, res in results if isinstance(res, DeadLetter)]
    # 21 from the messages, and the humidity beside a "nan" temperature (a bad field)
    assert len(found) == 22
    assert {(r.device, r.metric, round(r.value, 9)) for r in found if r.ts == T8} >= {
        ("balcony.DS18B20", "temperature", 20.0),
        ("plug_tv", "energy", 152.118),
        ("plug_tv", "power", 87.0),
        ("boiler.DS18B20-1", "temperature", 55.2),
        ("boiler.DS18B20-2", "temperature", 41.7),
    }
    assert dead == [m.reason for m in fix["malformed"] if m.name != "text_value"]
    assert [c.online for c in changes] == [False, True]
