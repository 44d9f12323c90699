"""The inference entities go through the Home Assistant plug-in's sink (pure unit tests with a
fake sink): announced once per source, and again after the gateway forgot the device and its
configs were removed."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy import Connection

from gateway.homeassistant.naming import DiscoveryConfig
from gateway.inference.manifest import ModelKind
from gateway.inference.results import InferenceResult, ResultHandler
from gateway.inference.settings import InferenceSettings
from gateway.inference.stats import EngineStats
from gateway.ingest import ReadingsIn


class Events:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def submit(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        self.sent.append(topic)
        return True


class Sink:
    gateway_id = "gw-x"
    prefix = "ha"

    def __init__(self) -> None:
        self.announced: list[tuple[str, str, list[str]]] = []
        self.owners: dict[tuple[str, str], set[str]] = {}

    def announce(self, home: str, device: str, configs: Sequence[DiscoveryConfig]) -> bool:
        self.announced.append((home, device, [c.topic for c in configs]))
        self.owners.setdefault((home, device), set()).update(c.topic for c in configs)
        return True

    def has(self, home: str, device: str, topic: str) -> bool:
        return topic in self.owners.get((home, device), ())


async def _write(fn: Callable[[Connection], None]) -> None:
    return None


async def _store(item: ReadingsIn) -> None:
    return None


def _alarm() -> InferenceResult:
    return InferenceResult(
        "alarm", "1", ModelKind.AUDIO_ALARM, "home-1", "kitchen", "mic-1", 0.0, 1.0, 0.9,
        "smoke_t3", 1.0, True,
    )  # fmt: skip


def test_inference_configs_go_through_the_sink_and_come_back_after_removal() -> None:
    sink = Sink()
    handler = ResultHandler(
        InferenceSettings(),
        write=_write,
        store=_store,
        publisher=Events(),
        stats=EngineStats(),
        discovery=sink,
    )
    handler.emit([_alarm()])
    handler.emit([_alarm()])
    assert len(sink.announced) == 1
    home, device, topics = sink.announced[0]
    assert (home, device) == ("home-1", "mic-1")
    assert all(t.startswith("ha/") and "/homeedge_gw-x/" in t for t in topics)
    sink.owners.clear()  # the device was forgotten: its configs removed
    handler.emit([_alarm()])
    assert len(sink.announced) == 2
    # Forgotten again; back, its first reading announces a metric entity of the same device
    # before its next alarm: the alarm's configs are still announced anew.
    sink.owners.clear()
    sink.announce("home-1", "mic-1", [DiscoveryConfig("ha/sensor/x/noise/config", b"{}")])
    handler.emit([_alarm()])
    assert len(sink.announced) == 4 and sink.announced[-1][2] == topics


def test_no_sink_no_discovery() -> None:
    events = Events()
    handler = ResultHandler(
        InferenceSettings(), write=_write, store=_store, publisher=events, stats=EngineStats()
    )
    handler.emit([_alarm()])
    assert events.sent == ["homeedge/home-1/gateway/events/alarm"]  # the event, no config


def test_inference_configs_follow_has_documented_schema() -> None:
    import json
    from pathlib import Path

    import jsonschema

    from gateway.inference.discovery import anomaly_config, microphone_configs, occupancy_config

    schema = json.loads(
        (Path(__file__).parent / "fixtures" / "ha_mqtt_discovery.schema.json").read_text()
    )
    common = {"gateway_id": "gw-x", "root": "homeedge", "prefix": "homeassistant"}
    status = "homeedge/gw-x/gateway/status"
    alarm, _keyword = microphone_configs(
        "home-1", "kitchen", "mic-1", off_delay_s=60, availability_topic=status, **common
    )
    occupancy = occupancy_config("home-1", "kitchen", availability_topic=status, **common)
    anomaly = anomaly_config("home-1", "living", "th-1", availability_topic=status, **common)
    for config, component in ((alarm, "binary_sensor"), (occupancy, "binary_sensor")):
        jsonschema.validate(
            json.loads(config.payload), {**schema, "anyOf": [{"$ref": f"#/$defs/{component}"}]}
        )
    jsonschema.validate(
        json.loads(anomaly.payload), {**schema, "anyOf": [{"$ref": "#/$defs/sensor"}]}
    )
