"""What the gateway accepts as a reading (`gateway.validation`, applied by the decoder): time
bounds relative to the receive time, plausible ranges and sensor error values per metric, with
their ``[ingest]`` overrides; and the inputs that cost a traceback or passed unnoticed before
(deep JSON, a trailing newline in a name, a lone surrogate, a device in the ``gateway`` room)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from gateway.adapters import AdapterSettings, Zigbee2MqttAdapter
from gateway.app import Gateway, create_gateway
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.ingest import Ignored, MessageDecoder, ReadingsIn
from gateway.records import DeadLetter, Reading
from gateway.validation import ReadingChecks
from schemas.batch import Name
from schemas.json_input import MAX_JSON_DEPTH
from schemas.metrics import METRIC_NAME
from schemas.telemetry import encode_telemetry
from schemas.topics import device_topic, gateway_topic, valid_segment
from tests.adapter_fakes import FnAdapter
from tests.conftest import MosquittoBroker
from tests.test_gateway_ingest import Publisher, gateway_config, metric_value, query
from tests.waiting import wait_for

ROOT = "unit"
T = "unit/h1/kitchen/thermostat-1/telemetry"
NOW = 1764403300.0
DAY = 86400.0
Y2099 = 4070908800.0  # 2099-01-01
Y2000 = 959817600.0  # 2000-06-01


def decode(
    topic: str, payload: bytes, *adapters: Any, checks: ReadingChecks | None = None
) -> list[Any]:
    decoder = MessageDecoder(topic_root=ROOT, adapters=adapters, checks=checks)
    return list(decoder.decode(topic, payload, NOW))


def telemetry(ts: float, **readings: float) -> bytes:
    return encode_telemetry(ts, readings, seq=1)


def reasons(items: list[Any]) -> list[str]:
    return [i.reason for i in items if isinstance(i, DeadLetter)]


def stored(items: list[Any]) -> dict[str, float]:
    last = items[-1]
    assert isinstance(last, ReadingsIn), items
    return {r.metric: r.value for r in last.readings}


# -- time ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "words"),
    [
        (Y2099, "ahead of the gateway clock"),
        (Y2000, "older than its receive time"),
        (NOW + 301, "ahead of the gateway clock"),
        (NOW - 7 * DAY - 1, "older than its receive time"),
    ],
)
def test_readings_too_far_ahead_or_too_old_are_dead_letters(ts: float, words: str) -> None:
    items = decode(T, telemetry(ts, temperature=21.0, humidity=40.0))
    assert len(items) == 1 and isinstance(items[0], DeadLetter)
    assert items[0].reason == "ts_out_of_range" and words in items[0].detail


@pytest.mark.parametrize("ts", [NOW + 299, NOW - 7 * DAY + 1, NOW])
def test_readings_within_the_skew_and_the_age_are_kept(ts: float) -> None:
    assert stored(decode(T, telemetry(ts, temperature=21.0))) == {"temperature": 21.0}


def test_time_bounds_are_configurable() -> None:
    checks = GatewayConfig(
        gateway_id="gw", ingest={"max_clock_skew_s": 10, "max_age_s": 3600}
    ).ingest.reading_checks()
    assert reasons(decode(T, telemetry(NOW + 11, power=1.0), checks=checks)) == ["ts_out_of_range"]
    assert reasons(decode(T, telemetry(NOW - 3601, power=1.0), checks=checks)) == [
        "ts_out_of_range"
    ]
    assert stored(decode(T, telemetry(NOW - 3599, power=1.0), checks=checks)) == {"power": 1.0}


# -- values --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metric", "value", "words"),
    [
        ("temperature", 900.0, "outside its plausible range [-55, 125]"),
        ("temperature", -1e9, "outside its plausible range"),
        ("temperature", 85.0, "sensor error value"),  # a DS18B20 after a power-on reset
        ("temperature", -127.0, "sensor error value"),  # a DS18B20 that is not there
        ("humidity", 100.5, "outside its plausible range [0, 100]"),
        ("motion", 2.0, "outside its plausible range [0, 1]"),
    ],
)
def test_implausible_values_are_dead_letters(metric: str, value: float, words: str) -> None:
    items = decode(T, telemetry(NOW, **{metric: value}))
    assert len(items) == 1 and isinstance(items[0], DeadLetter)
    assert items[0].reason == "out_of_range" and words in items[0].detail
    assert metric in items[0].detail


def test_plausible_values_and_unknown_metrics_are_kept() -> None:
    values = {
        "temperature": 84.9,
        "humidity": 100.0,
        "co2": 0.0,
        "radon_bq": 1e12,  # not in the registry: kept as it is
        "power": -4000.0,
    }  # solar export
    assert stored(decode(T, telemetry(NOW, **values))) == values


def test_a_bad_reading_does_not_cost_the_rest_of_its_message() -> None:
    items = decode(T, telemetry(NOW, temperature=900.0, humidity=40.0, co2=-5.0))
    assert [type(i) for i in items] == [DeadLetter, ReadingsIn]
    dead = items[0]
    assert dead.reason == "out_of_range" and dead.topic == T
    assert "temperature = 900.0" in dead.detail and "co2 = -5.0" in dead.detail
    assert stored(items) == {"humidity": 40.0}
    assert [s.device for s in items[-1].seen] == ["thermostat-1"]
    # Nothing good left: the dead letter is the message's own item.
    only = decode(T, telemetry(NOW, temperature=900.0, co2=-5.0))
    assert [type(i) for i in only] == [DeadLetter] and "co2" in only[0].detail


def test_adapter_readings_are_checked_one_by_one() -> None:
    def readings(_topic: str, _payload: bytes, at: float) -> list[Reading]:
        return [
            Reading("h", "hall", "a-1", "humidity", at, 40.0, None, at),
            Reading("h", "hall", "a-1", "temperature", Y2099, 21.0, None, at),
            Reading("h", "hall", "b-2", "temperature", at, 900.0, None, at),
            Reading("h", "hall", "b-2", "battery", at, 80.0, None, at),
        ]

    items = decode("ext/x", b"{}", FnAdapter("ext/#", readings))
    assert reasons(items) == ["ts_out_of_range", "out_of_range"]
    assert "a-1/temperature" in items[0].detail and "b-2: temperature = 900.0" in items[1].detail
    assert stored(items) == {"humidity": 40.0, "battery": 80.0}
    assert sorted(s.device for s in items[-1].seen) == ["a-1", "b-2"]


def zigbee2mqtt() -> Zigbee2MqttAdapter:
    settings = AdapterSettings.model_validate(
        {"home": "flat", "zigbee2mqtt": {"enabled": True, "base_topic": "z2m"}}
    )
    return Zigbee2MqttAdapter(settings)


def test_a_real_adapters_message_keeps_its_good_fields() -> None:
    payload = b'{"temperature": 900, "humidity": 48.5, "battery": 91}'
    items = decode("z2m/living/thermo", payload, zigbee2mqtt())
    assert reasons(items) == ["out_of_range"]
    assert stored(items) == {"humidity": 48.5, "battery": 91.0}
    future = b'{"humidity": 48.5, "last_seen": "2099-01-01T00:00:00Z"}'
    assert reasons(decode("z2m/living/thermo", future, zigbee2mqtt())) == ["ts_out_of_range"]


def test_ranges_are_overridden_per_metric_in_the_config(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(
        'gateway_id = "gw"\n'
        "[ingest.ranges.temperature]\nmax = 130.0\nerror_values = []\n"  # a sauna
        "[ingest.ranges.humidity]\nerror_values = [0.0]\n"
        "[ingest.ranges.pm25]\nmin = 0\nmax = 1000\n"  # a metric the registry does not know
    )
    checks = load_config(path).ingest.reading_checks()
    assert stored(decode(T, telemetry(NOW, temperature=95.0), checks=checks)) == {
        "temperature": 95.0
    }
    assert stored(decode(T, telemetry(NOW, temperature=85.0), checks=checks)) == {
        "temperature": 85.0
    }
    # min still comes from the registry: -127 is below -40
    assert reasons(decode(T, telemetry(NOW, temperature=-127.0), checks=checks)) == ["out_of_range"]
    assert reasons(decode(T, telemetry(NOW, humidity=0.0), checks=checks)) == ["out_of_range"]
    assert reasons(decode(T, telemetry(NOW, pm25=1000.5), checks=checks)) == ["out_of_range"]
    assert stored(decode(T, telemetry(NOW, pm25=12.0), checks=checks)) == {"pm25": 12.0}


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        ("[ingest.ranges.temperature]\nmin = 90\nmax = 80\n", "ingest.ranges.temperature"),
        ("[ingest.ranges.temperature]\nmax = inf\n", "ingest.ranges.temperature.max"),
        ("[ingest.ranges.temperature]\nerror_values = [nan]\n", "ingest.ranges.temperature"),
        ("[ingest.ranges.temperature]\nmaximum = 80\n", "ingest.ranges.temperature.maximum"),
        ('[ingest.ranges."Temp"]\nmax = 80\n', "ingest.ranges"),
        ("[ingest]\nmax_age_s = 0\n", "ingest.max_age_s"),
        ("[ingest]\nmax_clock_skew_s = -1\n", "ingest.max_clock_skew_s"),
    ],
)
def test_bad_ingest_settings_name_the_field(tmp_path: Path, toml: str, field: str) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('gateway_id = "gw"\n' + toml)
    with pytest.raises(ConfigError, match=rf"(^|\n){re.escape(field)}: "):
        load_config(path)


# -- inputs that cost a traceback or passed unnoticed ------------------------------------


def nested(depth: int) -> bytes:
    """A good telemetry message with an unknown field nested `depth` levels (the message's
    own object is one more)."""
    inner = b"[" * (depth - 1) + b"]" * (depth - 1)
    return b'{"ts": %d, "readings": {"temperature": 21.5}, "x": %s}' % (NOW, inner)


def test_deep_json_is_a_clear_dead_letter_not_an_exception() -> None:
    assert stored(decode(T, nested(MAX_JSON_DEPTH))) == {"temperature": 21.5}
    for depth in (MAX_JSON_DEPTH + 1, 1000, 5000):
        (dead,) = decode(T, nested(depth))
        assert isinstance(dead, DeadLetter) and dead.reason == "too_deep"
        assert f"nests {depth} levels" in dead.detail
    (dead,) = decode(
        "z2m/living/thermo", b'{"x": ' + b"[" * 1000 + b"]" * 1000 + b"}", zigbee2mqtt()
    )
    assert isinstance(dead, DeadLetter) and dead.reason == "adapter_too_deep"
    # brackets inside strings are not nesting
    text = b'{"ts": %d, "readings": {"temperature": 21.5}, "x": "%s"}' % (NOW, b"[" * 500)
    assert stored(decode(T, text)) == {"temperature": 21.5}


def test_a_trailing_newline_is_no_part_of_a_name() -> None:
    (dead,) = decode(T, b'{"ts": %d, "readings": {"temp\\n": 1}}' % NOW)
    assert isinstance(dead, DeadLetter) and dead.reason == "validation"
    (dead,) = decode("unit/h1/kitchen\n/thermostat-1/telemetry", telemetry(NOW, power=1.0))
    assert isinstance(dead, DeadLetter) and dead.reason == "bad_topic"
    assert not valid_segment("kitchen\n") and not METRIC_NAME.match("temp\n")
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'"gw-1\\n"', type=Name)
    with pytest.raises(ValueError, match="temp"):
        AdapterSettings.model_validate({"zigbee2mqtt": {"field_metrics": {"t": "temp\n"}}})


def test_every_anchored_pattern_refuses_a_trailing_newline() -> None:
    from cloud import api, web
    from gateway.adapters import base
    from gateway.sync import pipeline

    for pattern, good in [
        (api._METRIC_RE, "temp"),
        (web._REQUEST_ID_RE, "req-1"),
        (pipeline._GATEWAY_ID, "gw-1"),
        (base._PLAIN_NUMBER, "1.5"),
    ]:
        assert pattern.match(good) and not pattern.match(good + "\n"), pattern


@pytest.mark.parametrize(
    "payload",
    [
        rb'{"ts": 1764403300, "readings": {"temperature": 1}, "name": "\ud800"}',
        rb'{"ts": 1764403300, "readings": {"temperature": 1}, "name": "\ud800 and more"}',
    ],
)
def test_a_lone_surrogate_is_named_not_called_truncated(payload: bytes) -> None:
    for topic, adapters, reason in [
        (T, (), "invalid_json"),
        ("z2m/living/thermo", (zigbee2mqtt(),), "adapter_invalid_json"),
    ]:
        (dead,) = decode(topic, payload, *adapters)
        assert isinstance(dead, DeadLetter) and dead.reason == reason
        assert "unpaired UTF-16 surrogate escape \\ud800 at byte" in dead.detail
        assert "truncated" not in dead.detail


def test_a_device_in_the_gateway_room_is_a_dead_letter_not_ignored() -> None:
    for topic in [
        "unit/h1/gateway/thermostat-1/telemetry",
        "unit/h1/gateway/door-1/state",
        "unit/h1/gateway/status/extra",
        "unit/h1/gateway/events",
        "unit/h1/gateway/notify/extra",
    ]:
        (dead,) = decode(topic, telemetry(NOW, temperature=21.0))
        assert isinstance(dead, DeadLetter), topic
        assert dead.reason == "bad_topic" and "reserved" in dead.detail
    for topic in ["unit/h1/gateway/status", "unit/h1/gateway/events/alarm"]:
        assert decode(topic, b"online") == [Ignored(topic)]
    with pytest.raises(ValueError, match="gateway topics start with"):
        gateway_topic("h1", "thermostat-1", "telemetry")


# -- through a running gateway -----------------------------------------------------------


async def test_the_gateway_dead_letters_and_counts_them_by_reason_without_a_traceback(
    tmp_path: Path,
    mosquitto: MosquittoBroker,
    topic_root: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = time.time()
    tele = device_topic("h1", "kitchen", "thermostat-1", "telemetry", root=topic_root)
    deep = b'{"ts": %d, "readings": {"temperature": 1}, "x": %s}' % (now, b"[" * 1000 + b"]" * 1000)
    bad = [
        (tele, deep, "too_deep"),
        (tele, encode_telemetry(Y2099, {"temperature": 21.0}, seq=1), "ts_out_of_range"),
        (tele, encode_telemetry(Y2000, {"temperature": 21.0}, seq=2), "ts_out_of_range"),
        (tele, encode_telemetry(now, {"temperature": 900.0}, seq=3), "out_of_range"),
        (tele, encode_telemetry(now, {"temperature": 85.0}, seq=4), "out_of_range"),
        (f"{topic_root}/h1/gateway/thermostat-2/telemetry", b"{}", "bad_topic"),
    ]
    caplog.set_level(logging.WARNING)
    pub = Publisher(mosquitto.port)
    try:
        async with Gateway(gateway_config(tmp_path, mosquitto, topic_root)) as gw:
            assert await asyncio.to_thread(gw.mqtt.subscribed.wait, 10), "never subscribed"
            for topic, payload, _ in bad:
                pub.publish(topic, payload)
            pub.publish(tele, encode_telemetry(now, {"temperature": 21.0, "co2": -1.0}, seq=5))
            await asyncio.to_thread(pub.wait_acked)
            db = gw.config.storage.path
            await wait_for(lambda: len(query(db, "SELECT id FROM dead_letters")) == len(bad) + 1)
            await wait_for(lambda: query(db, "SELECT metric, value FROM readings") != [])
            dead = query(db, "SELECT reason FROM dead_letters ORDER BY id")
            counted = {
                r: metric_value(gw, "homeedge_gateway_dead_letters_total", {"reason": r})
                for r in ("too_deep", "ts_out_of_range", "out_of_range", "bad_topic")
            }
            assert query(db, "SELECT metric, value FROM readings") == [("temperature", 21.0)]
    finally:
        pub.close()
    assert [r for (r,) in dead] == [r for *_, r in bad] + ["out_of_range"]
    assert counted == {"too_deep": 1, "ts_out_of_range": 2, "out_of_range": 3, "bad_topic": 1}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert "Traceback" not in caplog.text and "internal_error" not in caplog.text


async def test_a_reading_from_2099_does_not_stop_its_devices_inference(
    tmp_path: Path, mosquitto: MosquittoBroker, topic_root: str
) -> None:
    """Before: the 2099 reading opened the device's sensor window in 2099, so no later window
    ever closed (no inference results, every reading kept in that window's memory)."""
    db = tmp_path / "gateway.db"
    path = tmp_path / "gateway.toml"
    path.write_text(
        f'gateway_id = "gw-skew"\n[mqtt]\nurl = "{mosquitto.url}"\n'
        f'topic_root = "{topic_root}"\nclient_id = "gw-{topic_root}"\n'
        f'[storage]\npath = "{db}"\n[admin]\nport = 0\n'
        "[inference]\nsensor_window_s = 60.0\nbaseline_hours = 1.0\nwarmup_hours = 0.03\n"
    )
    gw = create_gateway(load_config(path))
    topic = device_topic("home-1", "living", "air-quality-1", "telemetry", root=topic_root)
    start = float(int(time.time() - 3600) // 60 * 60)  # an hour ago, on a window edge
    pub = Publisher(mosquitto.port)
    try:
        async with gw:
            assert await asyncio.to_thread(gw.mqtt.subscribed.wait, 20), "never subscribed"
            pub.publish(topic, encode_telemetry(Y2099, {"temperature": 21.0}, seq=0))
            for i in range(8 * 4):  # 8 one-minute windows, a reading every 15 s
                values = {"temperature": 21.0 + (i % 3) * 0.1, "humidity": 45.0, "co2": 450.0}
                pub.publish(topic, encode_telemetry(start + 15.0 * i, values, seq=i + 1))
            await asyncio.to_thread(pub.wait_acked)
            sql = (
                "SELECT count(*) FROM inferences "
                "WHERE model = 'sensor_anomaly' AND device = 'air-quality-1'"
            )
            await wait_for(
                lambda: query(db, sql)[0][0] >= 1, within=30, what="a sensor inference result"
            )
    finally:
        pub.close()
    assert query(db, "SELECT reason FROM dead_letters") == [("ts_out_of_range",)]
    assert (
        query(db, "SELECT max(ts) FROM readings WHERE device = 'air-quality-1'")[0][0] < time.time()
    )


@pytest.mark.parametrize(
    ("topic", "mangle", "reason"),
    [
        ("homeedge/h1/kitchen/mic-1/audio", lambda f: f[:-1], "bad_samples"),
        ("homeedge/h1/kitchen/mic-1/audio", lambda f: b"\x00" * 24 + f[24:], "bad_header"),
        ("homeedge/h1/gateway/mic-1/audio", lambda f: f, "bad_topic"),  # the reserved room
        ("homeedge/h1/kitchen/mic 1/audio", lambda f: f, "bad_topic"),
    ],
)
def test_an_audio_dead_letter_keeps_the_header_never_the_samples(
    topic: str, mangle: Any, reason: str
) -> None:
    import numpy as np

    from schemas.audio import HEADER_SIZE, encode_audio_frame

    frame = encode_audio_frame(NOW, 1, np.full(8000, 1234, dtype=np.int16))
    (dead,) = MessageDecoder(topic_root="homeedge").decode(topic, mangle(frame), NOW)
    assert isinstance(dead, DeadLetter) and dead.reason == reason
    assert len(dead.payload) <= HEADER_SIZE and "audio samples not kept" in dead.detail
