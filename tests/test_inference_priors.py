"""Fleet priors (`gateway.inference.priors`): a new sensor is scored from its first window
against the fleet's levels for its room class, only for the metrics it reports; a bundle's
priors reach the engine through the slot; bad priors are refused naming the entry."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gateway.config import GatewayConfig
from gateway.inference.priors import FleetPriors, PriorsError, seed
from gateway.inference.runtime import ModelRuntime
from gateway.inference.sensor_scoring import SensorScorer
from gateway.inference.sensors import SensorStream
from gateway.inference.settings import DEFAULT_MODELS_DIR, InferenceSettings
from gateway.inference.streams import DeviceStreams
from gateway.records import Reading
from gateway.updates.boot import boot_config
from gateway.updates.bundle import BundleError, unpack
from gateway.updates.slots import SlotState, SlotStore
from tests.updates_cloud import MODELS, make_bundle

T0 = 1_767_225_600.0


def prior(level: float, spread: float = 1.0) -> dict[str, Any]:
    row = [level - 2 * spread, level - spread, level, level + spread, level + 2 * spread]
    return {"hourly": [row] * 24, "step": 0.2, "spread": 0.1}


PRIORS = {
    "format": 1,
    "classes": {"kitchen": {"temperature": prior(21.0, 0.5), "co2": prior(600.0, 50.0)}},
}


def test_a_seeded_metric_is_warmed_up_and_its_level_is_the_fleets() -> None:
    priors = FleetPriors.parse(PRIORS)
    stream = SensorStream(300.0)
    assert seed(stream, "temperature", priors.of_class("kitchen")["temperature"], T0 + 10)
    assert not seed(stream, "temperature", priors.of_class("kitchen")["temperature"], T0 + 20)
    stream.add("temperature", T0 + 10, 21.2)
    w = stream.flush()
    assert w is not None and stream.ready(w)
    median, scale, _ = stream.level("temperature", w.start)
    assert median == pytest.approx(21.0) and 0.3 <= scale <= 1.0
    fresh = SensorStream(300.0)
    fresh.add("temperature", T0 + 10, 21.2)
    w2 = fresh.flush()
    assert w2 is not None and not fresh.ready(w2)  # without priors: a day of warm-up


def test_the_scorer_seeds_only_what_a_new_device_reports_in_a_class_with_priors() -> None:
    settings = InferenceSettings(models=["sensor_anomaly"])
    runtime = ModelRuntime.load(DEFAULT_MODELS_DIR, names=["sensor_anomaly"])
    streams = DeviceStreams(
        settings, alarm=None, priors=FleetPriors.parse(PRIORS), room_class=lambda room: room
    )
    scorer = SensorScorer(settings, runtime, streams)

    def reading(device: str, room: str, ts: float, value: float) -> Reading:
        return Reading("home-1", room, device, "temperature", ts, value, None, ts)

    results = []
    for i in range(3):  # three 5-minute windows of a thermometer in the kitchen and the hall
        for device, room in (("t-kitchen", "kitchen"), ("t-hall", "hall")):
            results += scorer.process([reading(device, room, T0 + i * 300 + 5, 21.1)])
    scored = {r.device for r in results if r.model == "sensor_anomaly"}
    assert scored == {"t-kitchen"}  # the hall has no priors: it warms up on its own
    kitchen = streams.sensors[("home-1", "t-kitchen")].stream
    assert set(kitchen.metrics) == {"temperature"}  # co2 is not 'expected' from a thermometer
    assert all(r.label == "normal" for r in results)


def kitchen(metric: str, entry: dict[str, Any]) -> dict[str, Any]:
    return {"format": 1, "classes": {"kitchen": {metric: entry}}}


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"format": 2, "classes": {}}, "format 1"),
        (kitchen("temperature", {"step": 1}), "kitchen.temperature"),
        (kitchen("temperature", {**prior(20), "hourly": [[1]]}), "kitchen.temperature.hourly"),
        (kitchen("co2", {**prior(20), "step": -1.0}), "kitchen.co2"),
    ],
)
def test_bad_priors_name_the_entry(body: dict[str, Any], where: str) -> None:
    with pytest.raises(PriorsError, match=where.replace(".", r"\.")):
        FleetPriors.parse(body)


def with_priors(version: int, priors: dict[str, Any]) -> bytes:
    import io
    import tarfile

    base = make_bundle(version)
    buf = io.BytesIO()
    data = json.dumps(priors).encode()
    with (
        tarfile.open(fileobj=io.BytesIO(base), mode="r:gz") as src,
        tarfile.open(fileobj=buf, mode="w:gz") as dst,
    ):
        for m in src.getmembers():
            body = src.extractfile(m).read()  # type: ignore[union-attr]
            if m.name == "bundle.json":
                info = json.loads(body)
                body = json.dumps({**info, "priors": "priors.json"}).encode()
                m.size = len(body)
            dst.addfile(m, io.BytesIO(body))
        ti = tarfile.TarInfo("priors.json")
        ti.size = len(data)
        dst.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def test_a_bundles_priors_reach_the_engine_settings_and_bad_ones_are_refused(
    tmp_path: Path,
) -> None:
    store = SlotStore(tmp_path / "slots")
    archive = tmp_path / "b.tar.gz"
    archive.write_bytes(with_priors(3, PRIORS))
    state, info = store.stage(archive, MODELS, SlotState())
    assert info.priors == "priors.json"
    store.write(replace(state, active="a", version=3, staged=None, staged_version=None))
    local = GatewayConfig.model_validate(
        {"gateway_id": "gw", "updates": {"enabled": True, "slots_dir": str(store.root)}}
    )
    running = boot_config(local)
    assert running.inference.priors_file == store.slot("a") / "bundle" / "priors.json"
    assert FleetPriors.load(running.inference.priors_file).of_class("kitchen")
    archive.write_bytes(with_priors(4, {"format": 1, "classes": {"kitchen": {"co2": {}}}}))
    with pytest.raises(BundleError, match="priors"):
        unpack(archive, tmp_path / "bad")


def test_fleet_wide_priors_as_the_cloud_computes_them_seed_every_room_class() -> None:
    """`cloud.fleet.priors` writes one level per metric (mean, std over the fleet)."""
    priors = FleetPriors.parse(
        {"format": 1, "metrics": {"temperature": {"mean": 21.0, "std": 1.0}, "noise": {}}}
    )
    for room_class in ("kitchen", "bedroom"):
        assert set(priors.of_class(room_class)) == {"temperature"}
    stream = SensorStream(300.0)
    assert seed(stream, "temperature", priors.of_class("office")["temperature"], T0 + 10)
    stream.add("temperature", T0 + 10, 21.3)
    w = stream.flush()
    assert w is not None and stream.ready(w)
    assert stream.level("temperature", w.start)[0] == pytest.approx(21.0)
    assert not stream.metrics["temperature"].scales_set  # learned from its own windows
    with pytest.raises(PriorsError, match=r"priors\.metrics\.co2"):
        FleetPriors.parse({"format": 1, "metrics": {"co2": {"mean": 500.0, "std": 0.0}}})
